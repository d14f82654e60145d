"""`staged_dataset` (validate and sign the staged YOLO folder) and `coco_dataset` (its cached COCO conversion,
with the blocking COCO-validity gate)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from sam3lite_core.data.convert import ConvertSettings, convert_dataset
from sam3lite_core.data.report import DatasetError
from sam3lite_core.data.scan import scan_dataset
from sam3lite_pipeline.ops.coco_check import coco_problems
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_metadata
from sam3lite_pipeline.render import bullet_list, class_table, code_block
from sam3lite_pipeline.resources import StorageRoots
from sam3lite_pipeline.train_settings import split_settings

GROUP = "sam3lite"


class SplitConfig(dg.Config):
    """The train/val split of datasets without a val/ folder; unset = the files' values, then 20 % and seed 42."""

    val_percent: float | None = Field(default=None, ge=0.0, le=0.9, description="share of images put in val")
    split_seed: int | None = Field(default=None, description="seed of the split")


@dg.asset(partitions_def=datasets, group_name=GROUP, kinds={"yolo"})
def staged_dataset(context: dg.AssetExecutionContext, storage: StorageRoots) -> dg.MaterializeResult:
    """The staged YOLO dataset `<datasets root>/<partition key>`: scanned (every problem with file, line and what
    to do), signed by content. A fatal problem fails the run before anything is converted or trained."""
    root = storage.dataset_dir(context.partition_key)
    if not root.is_dir():
        raise dg.Failure(
            f"dataset {context.partition_key!r}: {root} does not exist; stage the YOLO dataset there "
            f"(labelmap.txt, train/ and val/ or images/ and labels/)"
        )
    report = scan_dataset(root, cache_dir=storage.cache_dir)
    text = report.text()
    if not report.ok:
        raise dg.Failure(description=text, metadata={"scan_report": dg.MetadataValue.md(code_block(text))})
    c = report.counts
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(root)),
            "signature": report.signature,
            "images": c.images,
            "backgrounds": c.backgrounds,
            "boxes": c.boxes,
            "skipped": c.skipped,
            "dropped": c.dropped,
            "problems": len(report.problems),
            "classes": dg.MetadataValue.json(report.classes),
            "per_class": dg.MetadataValue.md(class_table(report.classes, c.boxes_per_class)),
            "scan_report": dg.MetadataValue.md(code_block(text)),
        },
        data_version=dg.DataVersion(report.signature or ""),
    )


@dg.asset(
    partitions_def=datasets,
    group_name=GROUP,
    kinds={"json"},
    deps=[staged_dataset],
    check_specs=[
        dg.AssetCheckSpec(
            "coco_valid",
            asset="coco_dataset",
            blocking=True,
            description="ids, references, boxes inside images, categories = labelmap",
        )
    ],
)
def coco_dataset(context: dg.AssetExecutionContext, config: SplitConfig, storage: StorageRoots) -> dg.MaterializeResult:
    """COCO train/val JSON of the dataset, cached under the cache root by content signature and split settings
    (an unchanged dataset is a cache hit). The split (val_percent, split_seed) comes from this run config, else
    the dataset's sam3lite.yaml, else the defaults file."""
    staged = latest_metadata(context, "staged_dataset")
    root = storage.dataset_dir(context.partition_key)
    split = split_settings(storage.train_defaults_file, root)
    split.update({k: v for k, v in config.model_dump().items() if v is not None})
    settings = ConvertSettings(val_fraction=split.get("val_percent", 0.2), seed=split.get("split_seed", 42))
    try:
        result = convert_dataset(root, storage.cache_dir, settings)
    except DatasetError as exc:
        raise dg.Failure(exc.report.text() if exc.report else str(exc)) from None
    if result.signature != staged["signature"]:
        context.log.warning(
            f"the dataset changed since staged_dataset signed it ({staged['signature'][:12]} -> "
            f"{result.signature[:12]}); converted the current content"
        )
    problems = coco_problems(Path(result.train_json), Path(result.val_json), [c.name for c in result.categories])
    counts = result.counts
    return dg.MaterializeResult(
        metadata={
            "signature": result.signature,
            "cache_hit": result.cache_hit,
            "cache_key": result.cache_key,
            "train_json": dg.MetadataValue.path(result.train_json),
            "val_json": dg.MetadataValue.path(result.val_json),
            "train_images_root": dg.MetadataValue.path(result.train_images_root),
            "val_images_root": dg.MetadataValue.path(result.val_images_root),
            "train_images": counts.train_images,
            "val_images": counts.val_images,
            "train_boxes": counts.train_boxes,
            "val_boxes": counts.val_boxes,
            "split_method": result.split_method,
            "val_percent": settings.val_fraction,
            "split_seed": settings.seed,
            "categories": dg.MetadataValue.json([c.name for c in result.categories]),
        },
        data_version=dg.DataVersion(result.cache_key),
        check_results=[
            dg.AssetCheckResult(
                check_name="coco_valid",
                passed=not problems,
                metadata={"problems": dg.MetadataValue.md(bullet_list(problems))},
            )
        ],
    )
