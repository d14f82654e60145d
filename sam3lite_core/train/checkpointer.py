"""Training checkpoints: `last.ckpt`, `best.ckpt` and the activated `export.ckpt` of a run folder.

Rank 0 writes them through `sam3lite_core.weights.save_checkpoint` (temp file, fsync, rename), so a reader
or a process killed mid-write never sees a truncated file, and every file loads with
`torch.load(weights_only=True)`: weights in the vendor-compatible `detector.` layout under "model", and the
resumable state beside them as tensors and plain types only:
    train_state  TrainState (step, epoch, micro-batches done in the epoch, best metrics, counters)
    optimizer, scheduler, scaler, ema, miner, rng (one entry per rank), config, config_hash,
    dataset_signature, metrics (the latest validation), world_size
`best.ckpt` is a hard link to the `last.ckpt` written at the same moment (no second write of a large file).
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sam3lite_core.weights import export_weights, read_checkpoint, save_checkpoint

LAST, BEST, EXPORT = "last.ckpt", "best.ckpt", "export.ckpt"


@dataclass
class TrainState:
    """Where a run is; everything a resumed run needs besides the modules' own state."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # the epoch in progress (0-based)
    micro_batches_done: int = 0  # of that epoch, per process
    total_steps: int = 0  # the schedule's horizon (shortened to fit a time limit)
    best_ap: float = -1.0
    best_epoch: int = -1  # 1-based epoch of best.ckpt; -1 before any validation
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_val_step: int = -1
    validations: int = 0
    nonfinite_steps: int = 0
    elapsed_s: float = 0.0  # training wall time up to the checkpoint
    epoch_loss_sum: float = 0.0  # of the epoch in progress, for its metrics.csv row
    epoch_loss_count: int = 0
    recent_losses: list[float] = field(default_factory=list)  # the last 10 steps' losses (loss_avg10)
    best_pr: dict[str, Any] = field(default_factory=dict)  # PR curve of the best validation, for the plot

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch, numpy, random, and its current GPU's) as tensors and plain types.

    Only the process's own GPU: one process trains on one GPU, and a resume on a machine with another number of
    GPUs must not depend on how many the saver saw."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints kept every visible GPU's state
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


class Checkpointer:
    """Owns the checkpoints folder of a run and decides when a step checkpoint is due."""

    def __init__(self, directory: Path, is_main: bool, every_steps: int | None = None) -> None:
        self.directory = Path(directory)
        self.is_main = is_main
        self.every_steps = every_steps
        if is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(".*.tmp"):  # left by a process killed while writing
                stale.unlink(missing_ok=True)

    @property
    def last(self) -> Path:
        return self.directory / LAST

    @property
    def best(self) -> Path:
        return self.directory / BEST

    @property
    def export(self) -> Path:
        return self.directory / EXPORT

    def step_due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def save(self, model: nn.Module, state: dict[str, Any], *, best: bool = False) -> None:
        """Write last.ckpt (and make best.ckpt the same file); a no-op on ranks other than 0."""
        if not self.is_main:
            return
        save_checkpoint(self.last, model, **state)
        if best:
            _replace_with_link(self.last, self.best)

    def copy_last_to_best(self) -> None:
        if self.is_main and self.last.is_file():
            _replace_with_link(self.last, self.best)

    def write_export(self, source: Path, use_ema: bool = True) -> Path | None:
        """export.ckpt from `source` (best.ckpt); rank 0 only."""
        if not self.is_main:
            return None
        return export_training_checkpoint(source, self.export, use_ema=use_ema)


def export_training_checkpoint(source: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True) -> Path:
    """The weights-only file that gets activated: the EMA weights when the checkpoint has them (and `use_ema`),
    else the trained weights, with the model config; 1008-px RoPE tables for the sam3 preset as saved."""
    checkpoint = read_checkpoint(source)
    ema = checkpoint.get("ema")
    weights = ema["model"] if use_ema and isinstance(ema, dict) else checkpoint.get("model")
    return export_weights({**checkpoint, "model": weights}, out)


def _replace_with_link(source: Path, target: Path) -> None:
    """Make `target` the same content as `source` atomically: a hard link when the file system allows it."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, target)
