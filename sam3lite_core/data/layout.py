"""Where a staged dataset keeps its classes, splits, images and labels, in the backend's layouts.

- YOLO, split: `labelmap.txt` (or `classes.txt`, `labels.txt`; line index = class id), `train/{images,labels}`,
  optional `val/{images,labels}`.
- YOLO, flat: the labelmap plus `images/` and `labels/` at the root (one pool, split by hash at conversion).
- Qwen: `{train,val}/<image>` with `{train,val}/annotations.jsonl`, classes in `metadata.json`.
- Linked: `dataset_meta.json` with `linked_root` points at the tree that holds one of the above; it is read
  in place.

Nothing here writes anything. Problems that make the folder unusable raise `DatasetError` (fatal), naming the
file and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sam3lite_core.data.report import fatal

LABELMAP_NAMES = ("labelmap.txt", "classes.txt", "labels.txt")  # the backend's discovery order
META_NAME = "dataset_meta.json"
QWEN_ANNOTATIONS = "annotations.jsonl"
QWEN_METADATA = "metadata.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SplitDirs:
    """One split on disk. COCO `file_name`s are relative to `base`."""

    name: Literal["train", "val", ""]  # "" = the flat layout's unsplit pool
    base: Path
    images: Path  # YOLO images folder, or the Qwen split folder (images anywhere below it)
    labels: Path | None = None  # YOLO labels folder
    annotations: Path | None = None  # Qwen annotations.jsonl


@dataclass(frozen=True)
class DatasetLayout:
    given_root: Path
    root: Path  # effective root: the linked tree for linked datasets, resolved
    dataset_id: str
    format: Literal["yolo", "qwen"]
    arrangement: Literal["split", "flat"]
    classes_file: Path | None  # YOLO labelmap, or Qwen metadata.json (None: Qwen classes from the labels)
    splits: tuple[SplitDirs, ...]

    def rel(self, path: Path | str) -> str:
        """`path` relative to the effective root, in POSIX form (how reports and signatures name files)."""
        return Path(path).relative_to(self.root).as_posix()


def _read_meta(root: Path) -> dict:
    meta_path = root / META_NAME
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fatal(META_NAME, "meta_unreadable", f"not valid JSON ({exc})", "fix or remove the file") from exc
    if not isinstance(meta, dict):
        raise fatal(META_NAME, "meta_unreadable", "not a JSON object", "fix or remove the file")
    return meta


def _effective_root(given: Path, meta: dict) -> Path:
    linked = meta.get("linked_root")
    if not linked:
        return given
    target = Path(str(linked)).expanduser()
    target = target if target.is_absolute() else given / target
    if not target.is_dir():
        raise fatal(
            META_NAME,
            "linked_root_missing",
            f"linked_root {str(linked)!r} is not a folder",
            "restore the linked tree or register the dataset again",
        )
    return target.resolve()


def _yolo_split(root: Path, name: Literal["train", "val"]) -> SplitDirs | None:
    base = root / name
    images, labels = base / "images", base / "labels"
    if not images.is_dir() and not labels.is_dir():
        return None
    if not (images.is_dir() and labels.is_dir()):
        missing = "labels" if images.is_dir() else "images"
        raise fatal(
            f"{name}/{missing}",
            f"{name}_split_incomplete",
            f"{name}/ has {'images' if missing == 'labels' else 'labels'}/ but no {missing}/ folder",
            f"add {name}/{missing}/ or remove {name}/",
        )
    return SplitDirs(name=name, base=base, images=images, labels=labels)


def _find_yolo(root: Path) -> tuple[Path, Literal["split", "flat"], tuple[SplitDirs, ...]]:
    labelmap = next((root / n for n in LABELMAP_NAMES if (root / n).is_file()), None)
    if labelmap is None:
        raise fatal(
            "",
            "labelmap_missing",
            f"no labelmap: none of {', '.join(LABELMAP_NAMES)} at the dataset root",
            "write labelmap.txt with one class name per line (line 1 = class 0)",
        )
    train = _yolo_split(root, "train")
    if train is not None:
        val = _yolo_split(root, "val")
        return labelmap, "split", (train,) if val is None else (train, val)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return labelmap, "flat", (SplitDirs(name="", base=root, images=root / "images", labels=root / "labels"),)
    raise fatal(
        "",
        "train_split_missing",
        "no train split: neither train/images + train/labels nor images/ + labels/ exist",
        "put the images in train/images and their YOLO .txt labels in train/labels",
    )


def _find_qwen(root: Path) -> tuple[Path | None, tuple[SplitDirs, ...]]:
    splits = tuple(
        SplitDirs(name=name, base=root / name, images=root / name, annotations=root / name / QWEN_ANNOTATIONS)
        for name in SPLITS
        if (root / name / QWEN_ANNOTATIONS).is_file()
    )
    if not splits or splits[0].name != "train":
        raise fatal(
            f"train/{QWEN_ANNOTATIONS}",
            "train_split_missing",
            "Qwen dataset without a train split",
            f"put the training images and their {QWEN_ANNOTATIONS} in train/",
        )
    metadata = root / QWEN_METADATA
    return (metadata if metadata.is_file() else None), splits


def is_qwen(root: Path) -> bool:
    return any((root / name / QWEN_ANNOTATIONS).is_file() for name in SPLITS)


def find_layout(root: str | Path) -> DatasetLayout:
    """Recognise the dataset at `root` (following a linked dataset to its tree). Raises DatasetError."""
    given = Path(root).expanduser()
    if given.is_file():
        raise fatal(
            str(given),
            "root_is_file",
            "this is a file, not a dataset folder",
            "give the folder that holds the dataset (train/, val/, the labelmap)",
        )
    if not given.is_dir():
        raise fatal(str(given), "root_missing", "the dataset folder does not exist", "check the path")
    given = given.resolve()
    meta = _read_meta(given)
    effective = _effective_root(given, meta)
    dataset_id = str(meta.get("id") or given.name)
    if is_qwen(effective):
        metadata, splits = _find_qwen(effective)
        return DatasetLayout(given, effective, dataset_id, "qwen", "split", metadata, splits)
    labelmap, arrangement, splits = _find_yolo(effective)
    return DatasetLayout(given, effective, dataset_id, "yolo", arrangement, labelmap, splits)
