"""The run folder: `<runs_root>/<run_name>/{config.yaml, checkpoints/, metrics.csv, progress.json, tensorboard/,
plots/, result.json, train.log}` (DESIGN.md). Only rank 0 writes; on other ranks every method is a no-op.

metrics.csv has one row per logged training step (phase "train", with its batch of the epoch), per epoch (phase
"epoch": the epoch's mean loss) and per validation (phase "val": the 12 COCO stats), with a fixed header. A
resumed run first drops the rows written after its checkpoint, so the file never holds a step twice; a file
written with an older header is rewritten with the current one before a row is added. progress.json holds where
the run is now (step of total, or validation batch of total), replaced atomically, for pollers such as the
backend's training-job API.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from sam3lite_core.eval.coco_eval import STAT_NAMES

LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_presence")
POSITION = ("phase", "epoch", "step", "batch", "batches_per_epoch")  # where a row is, not a scalar to plot
COLUMNS = (
    "phase",
    "epoch",
    "step",
    "batch",
    "batches_per_epoch",
    "time_s",
    "lr",
    "loss",
    *LOSS_TERMS,
    "grad_norm",
    "images_per_s",
    *STAT_NAMES,
)


def new_run_name(dataset_id: str, runs_root: Path) -> str:
    """`<dataset-id>-<yyyymmdd-HHMMSS>`, with a numeric suffix if that folder exists already."""
    base = f"{dataset_id}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 2
    while (runs_root / name).exists():
        name, n = f"{base}-{n}", n + 1
    return name


def latest_run(runs_root: Path, dataset_id: str) -> str | None:
    """The newest run of `dataset_id` that has a last.ckpt (what `resume: true` without a run_name continues)."""
    runs = [p for p in runs_root.glob(f"{dataset_id}-*") if (p / "checkpoints" / "last.ckpt").is_file()]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime).name if runs else None


class RunFolder:
    def __init__(self, path: Path, is_main: bool) -> None:
        self.path = Path(path)
        self.is_main = is_main
        self._tensorboard: Any = None
        if is_main:
            for sub in ("checkpoints", "plots", "tensorboard"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    def write_config(self, config: dict[str, Any]) -> None:
        if self.is_main:
            _atomic_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def log(self, line: str) -> None:
        if self.is_main:
            with open(self.path / "train.log", "a", encoding="utf-8") as handle:
                handle.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        new = not self.metrics_csv.is_file()
        if not new:
            self._upgrade_header()
        with open(self.metrics_csv, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({key: _cell(key, value) for key, value in row.items()})
        self._scalars(row)

    def write_progress(self, progress: dict[str, Any]) -> None:
        """Where the run is now: phase, epoch, total_epochs, step, total_steps and, while validating, val_step and
        val_total."""
        if self.is_main:
            _atomic_text(self.path / "progress.json", json.dumps({**progress, "time_s": round(time.time(), 3)}))

    def truncate_metrics(self, step: int) -> None:
        """Drop rows of steps after `step` (resume: the checkpoint is older than the last rows)."""
        if not self.is_main or not self.metrics_csv.is_file():
            return
        self._rewrite(lambda row: int(row["step"] or 0) <= step)

    def _upgrade_header(self) -> None:
        with open(self.metrics_csv, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
        if header is not None and tuple(header) != COLUMNS:
            self._rewrite(lambda row: True)

    def _rewrite(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """metrics.csv again, with the current header, holding the rows `keep(row)` accepts."""
        with open(self.metrics_csv, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if keep(row)]
        tmp = self.metrics_csv.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_csv)

    def _scalars(self, row: dict[str, Any]) -> None:
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.path / "tensorboard"))
        phase, step = row.get("phase"), int(row.get("step", 0))
        for key, value in row.items():
            if key not in POSITION and isinstance(value, (int, float)) and math.isfinite(value):
                self._tensorboard.add_scalar(f"{phase}/{key}", value, step)
        self._tensorboard.flush()

    def write_plots(self, pr_curve: dict[str, Any] | None = None) -> None:
        if self.is_main and self.metrics_csv.is_file():
            from sam3lite_core.train.plots import write_plots

            write_plots(self.metrics_csv, self.path / "plots", pr_curve)

    def write_result(self, result: dict[str, Any]) -> None:
        if self.is_main:
            _atomic_text(self.path / "result.json", json.dumps(result, indent=2, sort_keys=True))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _cell(key: str, value: Any) -> Any:
    # 6 significant digits for metrics; a unix time needs all of its digits (to the ms it was rounded to).
    return f"{value:.6g}" if isinstance(value, float) and key != "time_s" else value


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
