"""Activation history: per dataset, which checkpoint is its incumbent, which came before, with their mAP.

One JSON file beside the backend's pointer file, `<runs_root>/activation_history.json`, append-only: every
activation, rollback and manual activation is an entry. A dataset's incumbents form a stack replayed from its
entries (activations push, a rollback pops back to the one before), so a second rollback goes one further back
and the whole story stays readable. Writers hold an exclusive lock and replace the file atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

HISTORY_NAME = "activation_history.json"


class Activation(BaseModel):
    dataset: str
    action: Literal["activate", "manual", "rollback"]
    checkpoint: str
    label: str
    metric: str | None = None  # the gate's metric name, e.g. "AP50"
    value: float | None = None  # its value on `val_set`
    metrics: dict[str, float] = Field(default_factory=dict)  # the 12 COCO stats when known
    val_set: str | None = None  # id of the validation set the metrics were measured on
    previous: str | None = None  # the dataset's incumbent checkpoint before this entry
    run_id: str | None = None  # the Dagster run that made the change
    at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class History:
    def __init__(self, runs_root: Path) -> None:
        self.path = Path(runs_root) / HISTORY_NAME

    def entries(self, dataset: str | None = None) -> list[Activation]:
        if not self.path.exists():
            return []
        try:
            raw = json.loads(self.path.read_text())
            items = [Activation.model_validate(item) for item in raw["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{self.path}: the activation history is unreadable ({exc}); fix or move the file (nothing was changed)"
            ) from exc
        return [e for e in items if dataset is None or e.dataset == dataset]

    def stack(self, dataset: str) -> list[Activation]:
        """The dataset's incumbents, oldest first; the last one is the current incumbent."""
        stack: list[Activation] = []
        for entry in self.entries(dataset):
            if entry.action == "rollback":
                stack = stack[:-1]
                if stack:  # the rolled-back-to entry now carries the rollback's (re-measured) numbers
                    stack[-1] = entry
            else:
                stack.append(entry)
        return stack

    def incumbent(self, dataset: str) -> Activation | None:
        stack = self.stack(dataset)
        return stack[-1] if stack else None

    def rollback_target(self, dataset: str) -> Activation | None:
        stack = self.stack(dataset)
        return stack[-2] if len(stack) > 1 else None

    def record(self, entry: Activation) -> None:
        with self._locked():
            entries = [e.model_dump() for e in self.entries()] + [entry.model_dump()]
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump({"version": 1, "entries": entries}, handle, indent=2)
                handle.write("\n")
            os.replace(tmp, self.path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{HISTORY_NAME}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
