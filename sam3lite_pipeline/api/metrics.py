"""A training job's `metrics` and `progress` in the dicts the backend's log parser produces, built from the run
folder's structured records: metrics.csv (one row per logged step and per validation) and progress.json (where
the run is now). No text line is parsed.

    train: {phase: "train", train_loss_batch, train_loss_avg10, batch, batches_per_epoch, epoch, total_epochs,
            step, timestamp}
    validation progress: {phase: "val", val_step, val_total, epoch, total_epochs}
    validation result: {phase: "val", epoch, coco_ap, coco_ap50, coco_ap75, coco_ar10, coco_ar100, timestamp}
"""

from __future__ import annotations

import csv
import json
import math
from collections import deque
from pathlib import Path
from typing import Any

import yaml

METRIC_LIMIT = 2000  # newest metrics a job answers with (the backend keeps a ring as well)
AVERAGED = 10  # train_loss_avg10: the mean of this many logged losses
COCO_KEYS = {"AP": "coco_ap", "AP50": "coco_ap50", "AP75": "coco_ap75", "AR10": "coco_ar10", "AR100": "coco_ar100"}
PROGRESS_FLOOR, PROGRESS_CEILING = 0.05, 0.99  # the backend's clamp while a job runs


def job_metrics(run_dir: Path | None, live: bool) -> list[dict[str, Any]]:
    """The job's metrics, oldest first; while it runs and validates, the validation's progress last."""
    if run_dir is None:
        return []
    rows = _rows(run_dir / "metrics.csv")
    total_epochs = _total_epochs(run_dir)
    metrics: list[dict[str, Any]] = []
    recent: deque[float] = deque(maxlen=AVERAGED)
    for row in rows:
        if row.get("phase") == "train":
            loss = _number(row.get("loss"))
            if loss is not None and math.isfinite(loss):
                recent.append(loss)
            metrics.append(_train_metric(row, loss, recent, total_epochs))
        elif row.get("phase") == "val":
            metrics.append(_val_metric(row))
    progress = read_progress(run_dir)
    if live and progress.get("phase") == "val" and progress.get("val_step", 0) < progress.get("val_total", 0):
        metrics.append(
            {
                "phase": "val",
                "val_step": progress["val_step"],
                "val_total": progress["val_total"],
                "epoch": progress.get("epoch"),
                "total_epochs": progress.get("total_epochs", total_epochs),
            }
        )
    return metrics[-METRIC_LIMIT:]


def job_progress(run_dir: Path | None, status: str) -> float:
    """0 while queued, 1 on success; else the run's step over its total steps, within the backend's clamp."""
    if status == "succeeded":
        return 1.0
    if status == "queued" or run_dir is None:
        return 0.0
    progress = read_progress(run_dir)
    step, total = progress.get("step"), progress.get("total_steps")
    fraction = step / total if isinstance(step, int) and isinstance(total, int) and total > 0 else 0.0
    if progress.get("phase") == "val" and progress.get("val_total"):
        # Validating: the backend's 0.9 + 0.1 * done, never below where training was.
        fraction = max(fraction, 0.9 + 0.1 * progress["val_step"] / progress["val_total"])
    return min(max(fraction, PROGRESS_FLOOR), PROGRESS_CEILING)


def read_progress(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _rows(path: Path) -> list[dict[str, str]]:
    """The file's complete rows: the trainer may be appending the last one right now."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return []
    complete = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(complete.splitlines()))


def _total_epochs(run_dir: Path) -> int | None:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    value = config.get("max_epochs") if isinstance(config, dict) else None
    return value if isinstance(value, int) else None


def _train_metric(row: dict[str, str], loss: float | None, recent: deque[float], total: int | None) -> dict[str, Any]:
    return {
        "phase": "train",
        "train_loss_batch": loss,
        "train_loss_avg10": sum(recent) / len(recent) if recent else None,
        "batch": _integer(row.get("batch")),
        "batches_per_epoch": _integer(row.get("batches_per_epoch")),
        "epoch": _integer(row.get("epoch")),
        "total_epochs": total,
        "step": _integer(row.get("step")),
        "timestamp": _number(row.get("time_s")),
    }


def _val_metric(row: dict[str, str]) -> dict[str, Any]:
    return {
        "phase": "val",
        "epoch": _integer(row.get("epoch")),
        **{theirs: _number(row.get(ours)) for ours, theirs in COCO_KEYS.items()},
        "timestamp": _number(row.get("time_s")),
    }


def _number(text: str | None) -> float | None:
    """A cell as a float; None for an empty cell, and for NaN or infinity, which JSON cannot carry."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _integer(text: str | None) -> int | None:
    value = _number(text)
    return int(value) if value is not None else None
