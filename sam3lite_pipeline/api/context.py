"""What the backend's training, dataset and run-storage routes share: the storage roots of the code location,
the Dagster instance they read runs and events from, the webserver they launch and cancel runs through, and the
inference service's model state."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from sam3lite_core.serve.errors import ServiceError
from sam3lite_core.serve.state import ModelState
from sam3lite_pipeline.api.stack import LOCATION
from sam3lite_pipeline.resources import StorageRoots
from sam3lite_pipeline.trigger.client import TriggerClient


@dataclass
class ApiContext:
    storage: StorageRoots
    instance: dg.DagsterInstance
    dagster_url: str
    models: ModelState
    base_checkpoint: Path | None = None
    convert_timeout_s: float = 900.0
    launch_lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, job: str) -> TriggerClient:
        return TriggerClient(self.dagster_url, location=LOCATION, job=job)

    @property
    def runs_root(self) -> Path:
        return self.storage.runs_root

    @property
    def datasets_root(self) -> Path:
        return Path(self.storage.datasets).resolve()


def tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (symlinks not followed); 0 when it does not exist."""
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for child in path.rglob("*") if path.is_dir() else ():
        try:
            if child.is_file() and not child.is_symlink():
                total += child.stat().st_size
        except OSError:
            continue  # removed while we counted
    return total


def remove(path: Path) -> None:
    """Delete a file, a symlink (never its target) or a folder tree."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def is_plain_name(value: str) -> bool:
    """Whether `value` is one visible path component: no separator, no NUL, not "." or "..", not hidden."""
    return bool(value) and not value.startswith(".") and not any(c in value for c in "/\\\0")


def plain_name(value: str, code: str, what: str) -> str:
    """`value` when `is_plain_name`; else ServiceError 400 `code`."""
    if not is_plain_name(value):
        raise ServiceError(f"{what} {value[:200]!r} is not a plain folder name", 400, code)
    return value
