"""`evaluation`: COCO mAP of the candidate on the dataset's val split, beside the incumbent's on the same split,
with the two blocking gates: the metric reaches the floor, and does not regress against the incumbent."""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from sam3lite_core.distributed import pick_device
from sam3lite_core.eval.coco_eval import STAT_NAMES, EvalResult
from sam3lite_core.precision import resolve_amp
from sam3lite_core.train.config import ConfigError, read_yaml_mapping
from sam3lite_pipeline.assets.dataset import GROUP
from sam3lite_pipeline.assets.training import trained_model
from sam3lite_pipeline.gates import (
    Baseline,
    GateOutcome,
    GateRefused,
    evaluation_candidate,
    incumbent_baseline,
    judge,
    val_set_id,
)
from sam3lite_pipeline.jobs import ADVISORY_GATES
from sam3lite_pipeline.ops.history import History
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_metadata
from sam3lite_pipeline.render import per_class_table
from sam3lite_pipeline.resources import Gates, StorageRoots


class EvaluationConfig(dg.Config):
    checkpoint: str | None = Field(
        default=None, description="checkpoint to evaluate (default: the dataset's latest trained_model)"
    )
    batch_size: int = Field(default=8, ge=1)


def run_evaluation(checkpoint: str, coco: dict[str, Any], batch_size: int) -> EvalResult:
    """COCO stats of `checkpoint` on the val split of `coco` (coco_dataset's metadata), on the GPU when there
    is one, at the amp its run trained with (`run_amp`)."""
    from sam3lite_core.eval.evaluate import evaluate

    device = pick_device("auto")
    return evaluate(
        checkpoint,
        coco["val_json"],
        coco["val_images_root"],
        batch_size=batch_size,
        device=device,
        amp=resolve_amp(run_amp(checkpoint), device),
    )


def run_amp(checkpoint: str) -> str:
    """The `amp` of the run a checkpoint belongs to (`<run>/checkpoints/<file>` beside `<run>/config.yaml`), so
    a candidate is measured at the precision its run validated with; "auto" for a checkpoint outside a run."""
    config = Path(checkpoint).parent.parent / "config.yaml"
    try:
        return str(read_yaml_mapping(config).get("amp", "auto"))
    except ConfigError:
        return "auto"


@dg.asset(
    partitions_def=datasets,
    group_name=GROUP,
    kinds={"coco"},
    deps=[trained_model],
    check_specs=[
        dg.AssetCheckSpec(
            "map_floor",
            asset="evaluation",
            blocking=True,
            description="the candidate's metric (Gates.metric) is at least Gates.map_floor",
        ),
        dg.AssetCheckSpec(
            "no_regression",
            asset="evaluation",
            blocking=True,
            description="not below the incumbent's metric on the same val set minus the tolerance",
        ),
    ],
)
def evaluation(
    context: dg.AssetExecutionContext, config: EvaluationConfig, storage: StorageRoots, gates: Gates
) -> dg.MaterializeResult:
    """The 12 COCO stats and per-class AP of the candidate, the incumbent's metric on the same val set (measured
    again when the val set changed since it was activated), and the gate outcomes."""
    coco = latest_metadata(context, "coco_dataset")
    try:
        candidate = evaluation_candidate(config.checkpoint, lambda: latest_metadata(context, "trained_model"))
    except GateRefused as exc:
        raise dg.Failure(str(exc)) from None
    val_set = val_set_id(coco["val_json"])
    result = run_evaluation(candidate, coco, config.batch_size)
    value = float(getattr(result, gates.metric))

    def reevaluate(checkpoint: str) -> float:
        context.log.info(f"re-evaluating the incumbent {checkpoint} on the current val set")
        return float(getattr(run_evaluation(checkpoint, coco, config.batch_size), gates.metric))

    incumbent = History(storage.runs_root).incumbent(context.partition_key)
    baseline = incumbent_baseline(incumbent, candidate, value, val_set, gates.metric, reevaluate)
    outcome = judge(value, baseline.value, gates.map_floor, gates.regression_tolerance)
    context.log.info(
        f"{gates.metric} {value:.4f} (floor {gates.map_floor}); incumbent "
        f"{'-' if baseline.value is None else f'{baseline.value:.4f}'} ({baseline.note})"
    )
    metadata = {
        **{name: float(getattr(result, name)) for name in STAT_NAMES},
        "checkpoint": dg.MetadataValue.path(candidate),
        "gate_metric": gates.metric,
        "candidate_value": value,
        "incumbent_checkpoint": incumbent.checkpoint if incumbent else "none",
        "incumbent_value": _or_nan(baseline.value),
        "incumbent_note": baseline.note,
        "val_set": val_set,
        "val_images": result.num_images,
        "gates_passed": outcome.passed,
        "per_class": dg.MetadataValue.md(per_class_table(result)),
    }
    version = dg.DataVersion(f"{val_set}-{Path(candidate).parent.parent.name}")
    # In a job that activates nothing a failed gate is news, not a failed run (ERROR severity fails the step).
    severity = dg.AssetCheckSeverity.WARN if context.run.job_name in ADVISORY_GATES else dg.AssetCheckSeverity.ERROR
    checks = _gate_checks(value, baseline, outcome, gates, severity)
    return dg.MaterializeResult(metadata=metadata, data_version=version, check_results=checks)


def _gate_checks(
    value: float, baseline: Baseline, outcome: GateOutcome, gates: Gates, severity: dg.AssetCheckSeverity
) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(
            check_name="map_floor",
            passed=outcome.floor_ok,
            severity=severity,
            metadata={gates.metric: value, "floor": gates.map_floor},
        ),
        dg.AssetCheckResult(
            check_name="no_regression",
            passed=outcome.regression_ok,
            severity=severity,
            metadata={
                gates.metric: value,
                "incumbent": _or_nan(baseline.value),
                "tolerance": gates.regression_tolerance,
                "note": baseline.note,
            },
        ),
    ]


def _or_nan(value: float | None) -> float:
    """Metadata has no None for a number: NaN stands for "no value"."""
    return value if value is not None else float("nan")
