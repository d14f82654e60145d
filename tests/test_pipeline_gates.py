"""The pipeline's decisions without Dagster (sam3lite_pipeline/gates.py): the candidate checkpoint of a run, the
dataset-unchanged gate, the floor and regression gates with the incumbent's baseline, and the activation target
(rollback, manual, gated)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sam3lite_core.eval.coco_eval import STAT_NAMES
from sam3lite_pipeline.gates import (
    GateRefused,
    activation_target,
    candidate_checkpoint,
    dataset_unchanged,
    evaluation_candidate,
    incumbent_baseline,
    judge,
    val_set_id,
)
from sam3lite_pipeline.ops.history import Activation, History

DATASET = "ds"


def _checkpoint(root: Path, run: str) -> str:
    """A checkpoint file where training writes it: <runs>/<run>/checkpoints/export.ckpt."""
    path = root / run / "checkpoints" / "export.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return str(path)


def _never() -> dict:
    raise AssertionError("this branch must not read the latest record")


def test_val_set_id_is_the_content_hash(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"images": [1]}')
    b.write_text('{"images": [1]}')
    assert val_set_id(a) == val_set_id(str(b)) and len(val_set_id(a)) == 16
    b.write_text('{"images": [2]}')
    assert val_set_id(a) != val_set_id(b)


def test_candidate_checkpoint_prefers_export_then_best_then_last():
    result = {"export_checkpoint": "e", "best_checkpoint": "b", "last_checkpoint": "l", "stopped_reason": "done"}
    assert candidate_checkpoint(result) == "e"
    assert candidate_checkpoint({**result, "export_checkpoint": None}) == "b"
    assert candidate_checkpoint({**result, "export_checkpoint": None, "best_checkpoint": None}) == "l"
    nothing = dict.fromkeys(("export_checkpoint", "best_checkpoint", "last_checkpoint"))
    with pytest.raises(GateRefused, match=r"training stopped \(cancelled\) before writing any checkpoint"):
        candidate_checkpoint({**nothing, "stopped_reason": "cancelled"})


def test_dataset_unchanged_needs_all_three_signatures_equal():
    assert dataset_unchanged("s", "s", "s")
    assert not dataset_unchanged("converted", "s", "s")  # trained on other data than was converted
    assert not dataset_unchanged("s", "s", "edited")  # edited during training


def test_evaluation_candidate(tmp_path):
    chosen = _checkpoint(tmp_path, "r1")
    assert evaluation_candidate(chosen, _never) == chosen
    trained = {"checkpoint": chosen, "dataset_changed": False}
    assert evaluation_candidate(None, lambda: trained) == chosen
    with pytest.raises(GateRefused, match="saw its dataset change during training; retrain first"):
        evaluation_candidate(None, lambda: {**trained, "dataset_changed": True})
    with pytest.raises(GateRefused, match="missing.ckpt does not exist"):
        evaluation_candidate(str(tmp_path / "missing.ckpt"), _never)


def _incumbent(checkpoint: str, **fields) -> Activation:
    return Activation(
        dataset=DATASET,
        action="activate",
        checkpoint=checkpoint,
        **{"label": "inc", "metric": "AP50", "value": 0.75, "val_set": "v1", **fields},
    )


def test_incumbent_baseline(tmp_path):
    candidate, current = _checkpoint(tmp_path, "cand"), _checkpoint(tmp_path, "inc")
    measured: list[str] = []

    def reevaluate(checkpoint: str) -> float:
        measured.append(checkpoint)
        return 0.25

    def baseline(incumbent, val_set="v1", metric="AP50"):
        return incumbent_baseline(incumbent, candidate, 0.5, val_set, metric, reevaluate)

    assert baseline(None).value is None and "never had a model activated" in baseline(None).note
    gone = baseline(_incumbent(str(tmp_path / "gone.ckpt")))
    assert gone.value is None and "no longer exists; not compared" in gone.note
    itself = baseline(_incumbent(candidate))
    assert (itself.value, itself.note) == (0.5, "the candidate is the incumbent")
    recorded = baseline(_incumbent(current))
    assert (recorded.value, recorded.note) == (0.75, "measured on this val set when it was activated")
    assert measured == []
    for changed in (baseline(_incumbent(current), val_set="v2"), baseline(_incumbent(current), metric="AP")):
        assert (changed.value, changed.note) == (0.25, "re-evaluated: the val set changed since it was activated")
    assert measured == [current, current]


def test_judge_floor_and_tolerance_boundaries():
    assert judge(0.5, None, floor=0.5, tolerance=0.0).passed  # reaching the floor is enough; no incumbent
    below = judge(0.25, None, floor=0.5, tolerance=0.0)
    assert (below.floor_ok, below.regression_ok, below.passed) == (False, True, False)
    assert judge(0.5, 0.75, floor=0.0, tolerance=0.25).passed  # exactly the tolerance below
    worse = judge(0.4375, 0.75, floor=0.0, tolerance=0.25)
    assert (worse.floor_ok, worse.regression_ok, worse.passed) == (True, False, False)
    assert judge(1.0, 0.75, floor=0.0, tolerance=0.0).passed


def _target(history: History, **choice):
    options = {"rollback": False, "checkpoint": None, "label": None, "run_id": "run-1", "latest_evaluation": _never}
    return activation_target(DATASET, history, **{**options, **choice})


def test_activation_target_rollback(tmp_path):
    history = History(tmp_path)
    with pytest.raises(GateRefused, match="has no previous incumbent to roll back to"):
        _target(history, rollback=True)
    first, second = _checkpoint(tmp_path, "r1"), _checkpoint(tmp_path, "r2")
    history.record(_incumbent(first, label="one", value=0.5))
    history.record(_incumbent(second, label="two"))
    entry = _target(history, rollback=True)
    assert (entry.action, entry.checkpoint, entry.label, entry.value) == ("rollback", first, "one", 0.5)
    assert (entry.previous, entry.run_id) == (second, "run-1")


def test_activation_target_manual_skips_the_gates(tmp_path):
    history = History(tmp_path)
    chosen = _checkpoint(tmp_path, "r1")
    entry = _target(history, checkpoint=chosen)
    assert (entry.action, entry.checkpoint, entry.label, entry.previous) == ("manual", chosen, "r1", None)
    assert _target(history, checkpoint=chosen, label="picked").label == "picked"
    with pytest.raises(GateRefused, match="does not exist"):
        _target(history, checkpoint=str(tmp_path / "nope" / "checkpoints" / "x.ckpt"))


def test_activation_target_follows_the_latest_evaluation(tmp_path):
    history = History(tmp_path)
    chosen = _checkpoint(tmp_path, "r1")
    evaluation = {
        "checkpoint": chosen,
        "gates_passed": True,
        "gate_metric": "AP50",
        "candidate_value": 0.5,
        "val_set": "v1",
        **{name: 0.25 for name in STAT_NAMES},
    }
    entry = _target(history, latest_evaluation=lambda: evaluation)
    assert (entry.action, entry.checkpoint, entry.label) == ("activate", chosen, "r1")
    assert (entry.metric, entry.value, entry.val_set) == ("AP50", 0.5, "v1")
    assert entry.metrics == {name: 0.25 for name in STAT_NAMES}
    with pytest.raises(GateRefused, match="did not pass the gates"):
        _target(history, latest_evaluation=lambda: {**evaluation, "gates_passed": False})
