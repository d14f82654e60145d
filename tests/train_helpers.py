"""Shared pieces of the training tests (test_train_*.py): a tiny synthetic dataset and tiny-preset configs.

The tiny preset at 112 px on 12 synthetic images (10 train, 2 val) makes a training step take ~50 ms, so a
whole run with validation, checkpoints and plots takes a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sam3lite_core.data.synth import write_synth
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.events import Event

TINY: dict[str, Any] = {
    "preset": "tiny",
    "train_batch_size": 2,
    "val_batch_size": 2,
    "num_train_workers": 0,
    "num_val_workers": 0,
    "lr_scale": 1.0,
    "max_epochs": 2,
    "val_epoch_freq": 1,
    "skip_first_val": False,
    "log_every_batch": True,
    "ema_tau": 5.0,
}


def make_dataset(root: Path, images: int = 12) -> Path:
    if not root.exists():
        write_synth(root, images=images, seed=0)
    return root


def tiny_config(dataset: Path, runs: Path, **fields: Any) -> TrainConfig:
    return TrainConfig.parse(
        {**TINY, "dataset": str(dataset), "runs_root": str(runs), "cache_dir": str(runs.parent / "cache"), **fields}
    )


class Interrupted(Exception):
    """Raised by Recorder to stop a run from the outside."""


class Recorder:
    """An on_event handler that keeps every event; `fail_at_step` raises from the metric event of that step
    (a process killed right after the step, for the resume test)."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.events: list[Event] = []
        self.fail_at_step = fail_at_step

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == "metric" and event.data.get("step") == self.fail_at_step and event.data["phase"] == "train":
            raise Interrupted(f"stopped at step {self.fail_at_step}")

    def train_metrics(self) -> list[dict]:
        return [e.data for e in self.events if e.kind == "metric" and e.data["phase"] == "train"]

    def val_metrics(self) -> list[dict]:
        return [e.data for e in self.events if e.kind == "metric" and e.data["phase"] == "val"]

    def logs(self) -> list[str]:
        return [e.message for e in self.events if e.kind == "log"]


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Tiny models run fastest single-threaded, and a busy shared machine slows multi-threaded ones a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
