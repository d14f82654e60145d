"""`evaluation`: COCO mAP of the candidate on the dataset's val split, beside the incumbent's on the same split,
with the two blocking gates: the metric reaches the floor, and does not regress against the incumbent."""

import hashlib
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from sam3lite_core.eval.coco_eval import STAT_NAMES, EvalResult
from sam3lite_pipeline.assets.dataset import GROUP
from sam3lite_pipeline.assets.training import trained_model
from sam3lite_pipeline.ops.history import History
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_metadata
from sam3lite_pipeline.resources import Gates, StorageRoots


class EvaluationConfig(dg.Config):
    checkpoint: str | None = Field(
        default=None, description="checkpoint to evaluate (default: the dataset's latest trained_model)"
    )
    batch_size: int = Field(default=8, ge=1)


def val_set_id(val_json: str) -> str:
    """Identity of a validation set: the hash of its COCO JSON (images, boxes and categories)."""
    return hashlib.sha256(Path(val_json).read_bytes()).hexdigest()[:16]


def run_evaluation(checkpoint: str, coco: dict[str, Any], batch_size: int) -> EvalResult:
    import torch

    from sam3lite_core.eval.evaluate import evaluate

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return evaluate(checkpoint, coco["val_json"], coco["val_images_root"], batch_size=batch_size, device=device,
                    amp="bf16" if device == "cuda" else "off")


def _per_class_table(result: EvalResult) -> str:
    lines = ["| class | boxes | AP | AP50 | AP75 | AR100 |", "|---|---:|---:|---:|---:|---:|"]
    for row in result.per_class:
        lines.append(f"| {row.name} | {row.num_gt} | {row.AP:.4f} | {row.AP50:.4f} | {row.AP75:.4f} | "
                     f"{row.AR100:.4f} |")
    return "\n".join(lines)


@dg.asset(
    partitions_def=datasets, group_name=GROUP, kinds={"coco"}, deps=[trained_model],
    check_specs=[
        dg.AssetCheckSpec("map_floor", asset="evaluation", blocking=True,
                          description="the candidate's metric (Gates.metric) is at least Gates.map_floor"),
        dg.AssetCheckSpec("no_regression", asset="evaluation", blocking=True,
                          description="not below the incumbent's metric on the same val set minus the tolerance"),
    ],
)
def evaluation(
    context: dg.AssetExecutionContext, config: EvaluationConfig, storage: StorageRoots, gates: Gates
) -> dg.MaterializeResult:
    """The 12 COCO stats and per-class AP of the candidate, the incumbent's metric on the same val set (measured
    again when the val set changed since it was activated), and the gate outcomes."""
    dataset_id = context.partition_key
    coco = latest_metadata(context, "coco_dataset")
    if config.checkpoint:
        candidate = str(Path(config.checkpoint).resolve())
    else:
        trained = latest_metadata(context, "trained_model")
        if trained["dataset_changed"]:
            raise dg.Failure("the latest trained_model saw its dataset change during training; retrain first")
        candidate = trained["checkpoint"]
    if not Path(candidate).is_file():
        raise dg.Failure(f"checkpoint {candidate} does not exist")
    val_set = val_set_id(coco["val_json"])
    result = run_evaluation(candidate, coco, config.batch_size)
    value = float(getattr(result, gates.metric))

    incumbent = History(storage.runs_root).incumbent(dataset_id)
    incumbent_value: float | None = None
    incumbent_note = "no incumbent: this dataset has never had a model activated"
    if incumbent is not None and not Path(incumbent.checkpoint).is_file():
        incumbent_note = f"the incumbent {incumbent.checkpoint} no longer exists; not compared"
    elif incumbent is not None and Path(incumbent.checkpoint).resolve() == Path(candidate):
        incumbent_value, incumbent_note = value, "the candidate is the incumbent"
    elif incumbent is not None and incumbent.val_set == val_set and incumbent.metric == gates.metric:
        incumbent_value, incumbent_note = incumbent.value, "measured on this val set when it was activated"
    elif incumbent is not None:
        context.log.info(f"re-evaluating the incumbent {incumbent.checkpoint} on the current val set")
        incumbent_value = float(getattr(run_evaluation(incumbent.checkpoint, coco, config.batch_size), gates.metric))
        incumbent_note = "re-evaluated: the val set changed since it was activated"

    floor_ok = value >= gates.map_floor
    regression_ok = incumbent_value is None or value >= incumbent_value - gates.regression_tolerance
    context.log.info(f"{gates.metric} {value:.4f} (floor {gates.map_floor}); incumbent "
                     f"{'-' if incumbent_value is None else f'{incumbent_value:.4f}'} ({incumbent_note})")
    return dg.MaterializeResult(
        metadata={
            **{name: float(getattr(result, name)) for name in STAT_NAMES},
            "checkpoint": dg.MetadataValue.path(candidate),
            "gate_metric": gates.metric,
            "candidate_value": value,
            "incumbent_checkpoint": incumbent.checkpoint if incumbent else "none",
            "incumbent_value": incumbent_value if incumbent_value is not None else float("nan"),
            "incumbent_note": incumbent_note,
            "val_set": val_set,
            "val_images": result.num_images,
            "gates_passed": floor_ok and regression_ok,
            "per_class": dg.MetadataValue.md(_per_class_table(result)),
        },
        data_version=dg.DataVersion(f"{val_set}-{Path(candidate).parent.parent.name}"),
        check_results=[
            dg.AssetCheckResult(check_name="map_floor", passed=floor_ok, metadata={
                gates.metric: value, "floor": gates.map_floor}),
            dg.AssetCheckResult(check_name="no_regression", passed=regression_ok, metadata={
                gates.metric: value, "incumbent": incumbent_value if incumbent_value is not None else float("nan"),
                "tolerance": gates.regression_tolerance, "note": incumbent_note}),
        ],
    )
