"""`convert_dataset`: a staged dataset to cached COCO JSON, in the backend's conventions (contract 1.5).

COCO as the backend writes it: category id = class + 1 with the labelmap names (supercategory "object"),
image and annotation ids from 1, continuing from train into val (an annotation id 0 silently lowers COCO AP),
bbox `[x, y, w, h]` in pixels, `area`, `iscrowd` 0, `file_name` relative to the split folder, sizes from the
image headers. Images without boxes are kept (negatives); skipped images are not written.

Output goes to `<cache_dir>/coco/<key>/{train.json, val.json, manifest.json}`, never into the dataset; the key
covers the content signature and the settings, so an unchanged dataset converted with unchanged settings is a
cache hit that reads nothing but file stats. An entry is built in a temporary folder and renamed into place, so
a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from sam3lite_core.data.files import InputFiles, collect_inputs
from sam3lite_core.data.gcpause import paused_gc
from sam3lite_core.data.layout import DatasetLayout, find_layout
from sam3lite_core.data.outputs import check_writable_folder
from sam3lite_core.data.report import DatasetError, ScanReport
from sam3lite_core.data.scan import ImageRecord, ScanSettings, failed_report, scan_inputs
from sam3lite_core.data.signature import FactsCache, signature_of
from sam3lite_core.data.split import assign_splits

CONVERTER_VERSION = 1  # bump when the COCO output for the same input and settings changes
_DECIMALS = 3  # pixel coordinates to 1/1000 px: exact enough, and smaller, faster JSON


class ConvertSettings(ScanSettings):
    """Conversion settings; every field is part of the cache key."""

    val_fraction: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="share of images hashed into val (datasets without a val/ split)"
    )
    seed: int = Field(default=42, description="seed of the hash split (the backend's split_seed default)")


class Category(BaseModel):
    id: int
    name: str
    supercategory: str = "object"


class SplitCounts(BaseModel):
    train_images: int
    val_images: int
    train_boxes: int
    val_boxes: int


class ConvertResult(BaseModel):
    """Where the COCO files are and what went into them. COCO `file_name`s are relative to the images roots."""

    signature: str
    cache_hit: bool
    cache_key: str
    out_dir: str
    train_json: str
    val_json: str
    train_images_root: str
    val_images_root: str
    categories: list[Category]
    split_method: Literal["folders", "hash"]
    counts: SplitCounts
    settings: ConvertSettings
    report: ScanReport


def cache_key(signature: str, settings: ConvertSettings) -> str:
    blob = json.dumps({"v": CONVERTER_VERSION, "settings": settings.model_dump()}, sort_keys=True)
    return f"{signature[:24]}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _coco(
    records: list[ImageRecord], categories: list[Category], first_image: int, first_ann: int, about: dict
) -> dict:
    """COCO dict of `records`, image ids from `first_image`, annotation ids from `first_ann`."""
    images = [
        {"id": i, "file_name": r.file_name, "width": r.width, "height": r.height}
        for i, r in enumerate(records, first_image)
    ]
    # Pixel arithmetic and rounding for all boxes at once: per-box Python rounding dominated the conversion.
    counts = np.array([len(r.boxes) for r in records], dtype=np.int64)
    boxes = np.array([b for r in records for b in r.boxes], dtype=np.float64).reshape(-1, 5)  # [A, 5] cls x1 y1 x2 y2
    wh = np.repeat(np.array([(r.width, r.height) for r in records], dtype=np.float64).reshape(-1, 2), counts, axis=0)
    xy = boxes[:, 1:3] * wh
    size = (boxes[:, 3:5] - boxes[:, 1:3]) * wh
    xywh = np.round(np.concatenate([xy, size], axis=1), _DECIMALS).tolist()
    area = np.round(size[:, 0] * size[:, 1], _DECIMALS).tolist()
    category = (boxes[:, 0].astype(np.int64) + 1).tolist()
    owner = np.repeat(np.arange(first_image, first_image + len(records)), counts).tolist()
    annotations = [
        {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": a, "iscrowd": 0}
        for ann_id, image_id, cat, bbox, a in zip(itertools.count(first_ann), owner, category, xywh, area)
    ]
    return {
        "info": about,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [c.model_dump() for c in categories],
    }


def _images_root(layout: DatasetLayout, records: list[ImageRecord], fallback: str) -> str:
    """The folder the split's file_names are relative to, relative to the dataset root."""
    return layout.rel(records[0].split.base) if records else fallback


def _write_entry(out_dir: Path, files: dict[str, dict]) -> None:
    """Write `files` as JSON into a temporary sibling of `out_dir`, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the entry is read by other users of the cache too
    try:
        for name, payload in files.items():  # the manifest last: its presence marks a complete entry
            (tmp / name).write_text(json.dumps(payload, separators=(",", ":")))
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / "manifest.json").is_file():
            raise
        # another process finished the same entry first; its content is identical
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _result(layout: DatasetLayout, out_dir: Path, manifest: dict, report: ScanReport, hit: bool) -> ConvertResult:
    roots = manifest["images_roots"]
    return ConvertResult(
        signature=manifest["signature"],
        cache_hit=hit,
        cache_key=out_dir.name,
        out_dir=str(out_dir),
        train_json=str(out_dir / "train.json"),
        val_json=str(out_dir / "val.json"),
        train_images_root=str((layout.root / roots["train"]).resolve()),
        val_images_root=str((layout.root / roots["val"]).resolve()),
        categories=manifest["categories"],
        split_method=manifest["split"]["method"],
        counts=manifest["counts"],
        settings=manifest["settings"],
        report=report,
    )


def convert_dataset(root: str | Path, cache_dir: str | Path, settings: ConvertSettings | None = None) -> ConvertResult:
    """Validate `root` and write (or reuse) its COCO train/val JSON under `cache_dir`.
    Raises DatasetError (a ValueError, with `.report`) when the dataset has a fatal problem."""
    settings = settings or ConvertSettings()
    cache_dir = Path(cache_dir).expanduser().resolve()
    with paused_gc():
        try:
            inputs = collect_inputs(find_layout(root))
        except DatasetError as exc:
            raise DatasetError(exc.problem, failed_report(root, exc)) from None
        return _convert(inputs, cache_dir, settings)


def _convert(inputs: InputFiles, cache_dir: Path, settings: ConvertSettings) -> ConvertResult:
    layout = inputs.layout
    facts = FactsCache(layout.root, cache_dir)
    signature = signature_of(inputs, facts)
    out_dir = cache_dir / "coco" / cache_key(signature, settings)
    if (out_dir / "manifest.json").is_file():
        facts.save()
        manifest = json.loads((out_dir / "manifest.json").read_text())
        report = ScanReport.model_validate(manifest["report"]).model_copy(update={"root": str(layout.given_root)})
        return _result(layout, out_dir, manifest, report, hit=True)

    check_writable_folder(cache_dir, "the cache folder (--cache-dir, cache_dir)")  # before the scan and the writes
    scan = scan_inputs(inputs, facts, settings, signature)
    facts.save()
    report = scan.report
    if not report.ok:
        raise DatasetError(report.fatal[0], report)
    categories = [Category(id=i + 1, name=name) for i, name in enumerate(report.classes)]
    train, val, method = assign_splits(scan.records, settings.val_fraction, settings.seed)
    about = {"description": f"{layout.dataset_id} generated by sam3lite", "signature": signature}
    train_coco = _coco(train, categories, 1, 1, about)
    val_coco = _coco(val, categories, len(train) + 1, len(train_coco["annotations"]) + 1, about)
    train_root = _images_root(layout, train, layout.rel(layout.splits[0].base))
    manifest = {
        "converter_version": CONVERTER_VERSION,
        "signature": signature,
        "settings": settings.model_dump(),
        "categories": [c.model_dump() for c in categories],
        "images_roots": {"train": train_root, "val": _images_root(layout, val, train_root)},
        "counts": SplitCounts(
            train_images=len(train),
            val_images=len(val),
            train_boxes=len(train_coco["annotations"]),
            val_boxes=len(val_coco["annotations"]),
        ).model_dump(),
        "split": {"method": method, "train": [r.rel for r in train], "val": [r.rel for r in val]},
        "report": report.model_dump(mode="json"),
    }
    _write_entry(out_dir, {"train.json": train_coco, "val.json": val_coco, "manifest.json": manifest})
    return _result(layout, out_dir, manifest, report, hit=False)
