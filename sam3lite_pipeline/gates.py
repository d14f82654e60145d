"""The pipeline's decisions, without Dagster: which checkpoint a run offers, whether the data held still while it
trained, the two mAP gates (the floor, and no regression against the incumbent on the same val set), and which
checkpoint an activation puts into service.

The assets turn a `GateRefused` into a `dg.Failure` with the same message and report the booleans as their asset
checks. Reads that only some branches need (the latest evaluation, the latest trained model, re-measuring the
incumbent) are passed in as callables and called only on the branch that needs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3lite_core.eval.coco_eval import STAT_NAMES
from sam3lite_pipeline.ops.history import Activation, History


class GateRefused(Exception):
    """The step must not go on; the message says why and what to do."""


def val_set_id(val_json: str | Path) -> str:
    """Identity of a validation set: the hash of its COCO JSON (images, boxes and categories)."""
    return hashlib.sha256(Path(val_json).read_bytes()).hexdigest()[:16]


def candidate_checkpoint(result: Mapping[str, Any]) -> str:
    """The checkpoint a finished training run (its `TrainResult` as a dict) offers: the export, else the best,
    else the last one."""
    checkpoint = result["export_checkpoint"] or result["best_checkpoint"] or result["last_checkpoint"]
    if checkpoint is None:
        raise GateRefused(f"training stopped ({result['stopped_reason']}) before writing any checkpoint")
    return checkpoint


def dataset_unchanged(converted: str, trained_on: str, now: str) -> bool:
    """True when training read the data that was converted (so evaluation sees the val set it split) and the
    data still has that signature after training."""
    return now == trained_on and trained_on == converted


def evaluation_candidate(checkpoint: str | None, latest_trained: Callable[[], Mapping[str, Any]]) -> str:
    """The checkpoint to evaluate: the one asked for (resolved), else the latest trained_model's unless its
    dataset changed while it trained. It must exist."""
    if checkpoint:
        candidate = str(Path(checkpoint).resolve())
    else:
        trained = latest_trained()
        if trained["dataset_changed"]:
            raise GateRefused("the latest trained_model saw its dataset change during training; retrain first")
        candidate = trained["checkpoint"]
    if not Path(candidate).is_file():
        raise GateRefused(f"checkpoint {candidate} does not exist")
    return candidate


@dataclass(frozen=True)
class Baseline:
    """What the candidate is compared with: the incumbent's metric on the candidate's val set (None when there
    is nothing to compare with) and a note saying where the number comes from."""

    value: float | None
    note: str


def incumbent_baseline(
    incumbent: Activation | None,
    candidate: str,
    candidate_value: float,
    val_set: str,
    metric: str,
    reevaluate: Callable[[str], float],
) -> Baseline:
    """The incumbent's `metric` on `val_set`: the number recorded at its activation when it was measured on this
    val set with this metric, else `reevaluate(incumbent checkpoint)`. A missing incumbent file is not compared;
    a candidate that is the incumbent is its own baseline."""
    if incumbent is None:
        return Baseline(None, "no incumbent: this dataset has never had a model activated")
    if not Path(incumbent.checkpoint).is_file():
        return Baseline(None, f"the incumbent {incumbent.checkpoint} no longer exists; not compared")
    if Path(incumbent.checkpoint).resolve() == Path(candidate):
        return Baseline(candidate_value, "the candidate is the incumbent")
    if incumbent.val_set == val_set and incumbent.metric == metric:
        return Baseline(incumbent.value, "measured on this val set when it was activated")
    return Baseline(reevaluate(incumbent.checkpoint), "re-evaluated: the val set changed since it was activated")


@dataclass(frozen=True)
class GateOutcome:
    """The two blocking checks of `evaluation`; the candidate may be activated when both pass."""

    floor_ok: bool
    regression_ok: bool

    @property
    def passed(self) -> bool:
        return self.floor_ok and self.regression_ok


def judge(value: float, baseline: float | None, floor: float, tolerance: float) -> GateOutcome:
    """The candidate's metric must reach `floor` and must not fall more than `tolerance` below the baseline
    (no baseline: nothing to regress against)."""
    return GateOutcome(floor_ok=value >= floor, regression_ok=baseline is None or value >= baseline - tolerance)


def activation_target(
    dataset_id: str,
    history: History,
    *,
    rollback: bool,
    checkpoint: str | None,
    label: str | None,
    run_id: str | None,
    latest_evaluation: Callable[[], Mapping[str, Any]],
) -> Activation:
    """The history entry of the activation to perform: a rollback to the previous incumbent, else the
    checkpoint asked for ("manual", no gates), else the latest evaluation's candidate when it passed the gates.
    The label defaults to the run folder's name; the entry's file must exist."""
    if rollback:
        entry = _rollback_entry(dataset_id, history)
    elif checkpoint:
        path = Path(checkpoint).resolve()
        entry = Activation(dataset=dataset_id, action="manual", checkpoint=str(path), label=path.parent.parent.name)
    else:
        entry = _gated_entry(dataset_id, latest_evaluation())
    incumbent = history.incumbent(dataset_id)
    entry = entry.model_copy(
        update={
            "label": label or entry.label,
            "run_id": run_id,
            "previous": incumbent.checkpoint if incumbent else None,
        }
    )
    if not Path(entry.checkpoint).is_file():
        raise GateRefused(f"checkpoint {entry.checkpoint} does not exist")
    return entry


def _rollback_entry(dataset_id: str, history: History) -> Activation:
    """The dataset's previous incumbent, as a rollback entry."""
    target = history.rollback_target(dataset_id)
    if target is None:
        raise GateRefused(f"dataset {dataset_id!r} has no previous incumbent to roll back to")
    return Activation(
        dataset=dataset_id,
        action="rollback",
        checkpoint=target.checkpoint,
        label=target.label,
        metric=target.metric,
        value=target.value,
        metrics=target.metrics,
        val_set=target.val_set,
    )


def _gated_entry(dataset_id: str, evaluation: Mapping[str, Any]) -> Activation:
    """The candidate of the latest evaluation (its metadata), when it passed the gates."""
    if not evaluation.get("gates_passed"):
        raise GateRefused(
            "the latest evaluation of this dataset did not pass the gates (see its checks); "
            "activate a checkpoint explicitly (config checkpoint) to override"
        )
    path = Path(evaluation["checkpoint"])
    return Activation(
        dataset=dataset_id,
        action="activate",
        checkpoint=str(path),
        label=path.parent.parent.name,
        metric=evaluation["gate_metric"],
        value=evaluation["candidate_value"],
        val_set=evaluation["val_set"],
        metrics={name: evaluation[name] for name in STAT_NAMES},
    )
