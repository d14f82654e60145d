"""`GET /sam3/datasets`, `POST /sam3/datasets/{id}/convert`, `GET /sam3/datasets/{id}/classes`: the datasets under
the datasets root in the backend's fields, the conversion as a Dagster run of the `convert` job.

A dataset is a folder of the datasets root (its name is the id and the partition key); a request may also name
it by its content signature, as the backend allows. Listing scans each dataset (cached by signature under the
cache root) and reads Dagster's records; it never writes into a dataset folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from sam3lite_core.data.report import ScanReport
from sam3lite_core.data.scan import scan_dataset
from sam3lite_core.serve.errors import ServiceError
from sam3lite_pipeline.api.context import ApiContext, is_plain_name
from sam3lite_pipeline.records import latest_values

# Our scan's fatal problem codes -> the backend's refusals; any other fatal problem: sam3_dataset_invalid.
REFUSALS = {
    "labelmap_missing": "sam3_labelmap_missing",
    "train_split_missing": "sam3_yolo_split_missing",
    "no_valid_images": "sam3_training_no_images",
}
POLL_S = 0.5


def resolve_dataset(ctx: ApiContext, dataset_id: str) -> Path:
    """The dataset folder named `dataset_id` (its folder name, or its signature); 404 sam3_dataset_not_found."""
    root = ctx.datasets_root
    if is_plain_name(dataset_id) and (root / dataset_id).is_dir() and not (root / dataset_id).is_symlink():
        return root / dataset_id
    for folder in dataset_folders(ctx):
        if scan(ctx, folder).signature == dataset_id:
            return folder
    raise ServiceError(f"no dataset {dataset_id[:200]!r} under {root}", 404, "sam3_dataset_not_found")


def dataset_folders(ctx: ApiContext) -> list[Path]:
    root = ctx.datasets_root
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and not p.is_symlink())


def scan(ctx: ApiContext, folder: Path) -> ScanReport:
    return scan_dataset(folder, cache_dir=ctx.storage.cache_dir)


def refusal(report: ScanReport) -> ServiceError | None:
    """The backend's 400 for a dataset that cannot be converted or trained; None when it can."""
    if report.ok:
        return None
    first = report.fatal[0]
    code = REFUSALS.get(first.code, "sam3_dataset_invalid")
    return ServiceError(f"dataset {report.dataset_id!r} cannot be used:\n{report.text()}", 400, code)


def list_entries(ctx: ApiContext) -> list[dict[str, Any]]:
    """Every dataset, newest first."""
    entries = [entry(ctx, folder, scan(ctx, folder)) for folder in dataset_folders(ctx)]
    return sorted(entries, key=lambda e: e["created_at"], reverse=True)


def entry(ctx: ApiContext, folder: Path, report: ScanReport) -> dict[str, Any]:
    """One dataset in the backend's listing fields (segmentation always false: the datasets are box-only)."""
    coco = _converted(ctx, folder.name, report)
    stat = folder.stat()
    return {
        "id": folder.name,
        "label": folder.name,
        "dataset_root": str(folder),
        "created_at": stat.st_mtime,
        "image_count": report.counts.images,
        "train_count": coco["train_images"] if coco else None,
        "val_count": coco["val_images"] if coco else None,
        "classes": report.classes,
        "context": "",
        "signature": report.signature or "",
        "source": report.format,
        "format": report.format,
        "type": "bbox",
        "storage_mode": "managed",
        "coco_ready": coco is not None,
        "coco_seg_ready": False,
        "coco_train_json": coco["train_json"] if coco else None,
        "coco_val_json": coco["val_json"] if coco else None,
        "yolo_ready": report.ok and report.format == "yolo",
        "yolo_seg_ready": False,
        "yolo_layout": report.arrangement if report.format == "yolo" else None,
        "qwen_ready": report.ok and report.format == "qwen",
        "problems": len(report.problems),
        "error": None if report.ok else str(report.fatal[0]),
    }


def _converted(ctx: ApiContext, dataset_id: str, report: ScanReport) -> dict[str, Any] | None:
    """coco_dataset's latest record for the dataset when it converted the current content and its files exist."""
    values = latest_values(ctx.instance, "coco_dataset", dataset_id)
    if not values or not report.signature or values.get("signature") != report.signature:
        return None
    if not (Path(values["train_json"]).is_file() and Path(values["val_json"]).is_file()):
        return None  # the cache was purged
    return values


def convert(ctx: ApiContext, folder: Path) -> dict[str, Any]:
    """Run the `convert` job for the dataset and wait for it; the backend's sam3 metadata dict."""
    report = scan(ctx, folder)
    refused = refusal(report)
    if refused is not None:
        raise refused
    run_id = ctx.client("convert").launch(folder.name, tags={"sam3lite/origin": "api"})
    deadline = time.monotonic() + ctx.convert_timeout_s
    while True:
        run = ctx.instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            break
        if time.monotonic() > deadline:
            raise ServiceError(f"conversion run {run_id} did not finish in time", 504, "sam3_convert_timeout")
        time.sleep(POLL_S)
    if run.status.value != "SUCCESS":
        raise ServiceError(
            f"conversion run {run_id} ended {run.status.value}: see it in the Dagster UI", 400, "sam3_convert_failed"
        )
    coco = _converted(ctx, folder.name, scan(ctx, folder))
    if coco is None:
        raise ServiceError("the dataset changed while it was converted: convert it again", 409, "sam3_dataset_changed")
    return _meta(folder, report, coco)


def _meta(folder: Path, report: ScanReport, coco: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": folder.name,
        "label": folder.name,
        "source": report.format,
        "type": "bbox",
        "dataset_root": str(folder),
        "signature": report.signature,
        "classes": report.classes,
        "context": "",
        "image_count": coco["train_images"] + coco["val_images"],
        "train_count": coco["train_images"],
        "val_count": coco["val_images"],
        "coco_train_json": coco["train_json"],
        "coco_val_json": coco["val_json"],
        "converted_at": time.time(),
    }


def dataset_routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()

    @router.get("/sam3/datasets")
    def list_datasets() -> list[dict[str, Any]]:
        return list_entries(ctx)

    @router.post("/sam3/datasets/{dataset_id}/convert")
    def convert_dataset(dataset_id: str) -> dict[str, Any]:
        return convert(ctx, resolve_dataset(ctx, dataset_id))

    @router.get("/sam3/datasets/{dataset_id}/classes")
    def classes(dataset_id: str) -> dict[str, Any]:
        return {"classes": scan(ctx, resolve_dataset(ctx, dataset_id)).classes}

    return router
