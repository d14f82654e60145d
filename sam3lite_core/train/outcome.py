"""How a training run ended: its stop reason, its `TrainResult`, and the exit status each reason maps to."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

StopReason = Literal["completed", "early_stopping", "time_limit", "nonfinite_abort", "cancelled"]


class TrainResult(BaseModel):
    """What a run produced; also written to `<run>/result.json` and sent as the result event."""

    run_dir: str
    last_checkpoint: str | None
    best_checkpoint: str | None
    export_checkpoint: str | None
    best_metrics: dict[str, float]  # the 12 COCO stats (AP, AP50, ... ARl) of the best validation; {} if none
    best_epoch: int | None
    epochs_done: int
    steps_done: int
    dataset_signature: str
    config_hash: str
    stopped_reason: StopReason
    wall_time_s: float
    nonfinite_steps: int
    train_images: int
    val_images: int
    resumed_from_step: int | None


# Training ended normally otherwise; a signal-stopped run exits like an interrupted shell command (128 + SIGINT).
EXIT_CODES: dict[str, int] = {"nonfinite_abort": 1, "cancelled": 130}


def exit_code(reason: StopReason) -> int:
    """The process exit status of a run that stopped for `reason` (0 for a normal end)."""
    return EXIT_CODES.get(reason, 0)
