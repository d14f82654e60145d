"""The service's active model: which checkpoint serves, how it is swapped, and how it survives restarts.

The active checkpoint is recorded in a pointer file (JSON, `<runs_root>/active_model.json` by default, written
atomically). Every request stats the file (one syscall): when another process rewrote it (the pipeline's
`local` backend mode, or a second `sam3lite serve` sharing the runs root), the new checkpoint is loaded before
the request is answered, and a restarted service starts with it. A checkpoint is always loaded *before* it is
swapped in under a lock, so a bad file leaves the previous model serving, and requests already running keep
the `Serving` record they started with (its model and its lock) until they finish.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from sam3lite_core.cache_budget import CacheBudget
from sam3lite_core.predictor import Predictor
from sam3lite_core.serve.errors import ServiceError
from sam3lite_core.serve.schemas import ActiveModel

POINTER_NAME = "active_model.json"
SEGMENTATION_UNSUPPORTED = (
    "enable_segmentation=true is not supported: sam3lite serves box-only SAM3 checkpoints (no mask head); "
    "activate with enable_segmentation false"
)
NO_BASE = (
    "no base weights are configured, so there is nothing to go back to: start `sam3lite serve` with "
    "--base-checkpoint PATH (or set SAM3_CHECKPOINT_PATH), or activate a run's checkpoint"
)
log = logging.getLogger(__name__)


class ActivationError(ServiceError):
    """A refused activation: HTTP `status`, the backend's bare `code`, the sentence."""

    def __init__(self, message: str, status: int = 400, code: str = "sam3_checkpoint_path_invalid") -> None:
        super().__init__(message, status, code)


@dataclass
class Serving:
    """One loaded model and its description. Inference on it holds `lock`: the model's prompt cache is not
    thread-safe, and one CPU forward at a time is also the fastest way to share the cores."""

    active: ActiveModel
    predictor: Predictor | None
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_pointer(path: Path) -> ActiveModel | None:
    """The active model a pointer file records; None when there is no pointer file."""
    try:
        return ActiveModel.model_validate_json(path.read_text())
    except FileNotFoundError:
        return None


def write_pointer(path: Path, active: ActiveModel) -> None:
    """Write the pointer file atomically (temporary file in the same folder, then rename)."""
    record = active.model_dump() | {"activated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


NO_MODEL = ActiveModel(id="default", label="no model", checkpoint=None, source="none")


class ModelState:
    """The active model of one service process; thread-safe."""

    def __init__(
        self,
        runs_root: Path,
        *,
        base_checkpoint: Path | None = None,
        pointer: Path | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        cache_budget: CacheBudget | None = None,
    ) -> None:
        self.runs_root = runs_root.resolve()
        self.cache_budget = cache_budget
        self.base_checkpoint = base_checkpoint
        self.pointer = pointer or self.runs_root / POINTER_NAME
        self.device, self.precision = device, precision
        self._swap_lock = threading.Lock()  # guards _serving and _stamp
        self._load_lock = threading.Lock()  # one load at a time (activation or pointer reload)
        self._stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the pointer file last read
        self._serving = Serving(self._base_description(), None)
        if base_checkpoint is not None and not self.pointer.exists():
            self._serving = Serving(self._base_description(), self._load(base_checkpoint))
        self.refresh()

    def current(self) -> Serving:
        """The model to answer a request with, after picking up a pointer file another process rewrote."""
        self.refresh()
        with self._swap_lock:
            return self._serving

    def activate(self, checkpoint_path: str | None, label: str | None, enable_segmentation: bool | None) -> ActiveModel:
        """Load, swap in and record a run's checkpoint; None or the base checkpoint's own path: the base weights
        (source "env"). Raises ActivationError."""
        if enable_segmentation:
            raise ActivationError(SEGMENTATION_UNSUPPORTED, code="sam3_segmentation_unsupported")
        if checkpoint_path is None or self.is_base(checkpoint_path):
            if self.base_checkpoint is None:
                raise ActivationError(NO_BASE, status=409, code="sam3_base_checkpoint_missing")
            path, active = self.base_checkpoint, self._base_description(label)
        else:
            path = self.resolve_checkpoint(checkpoint_path)
            active = ActiveModel(id=label or path.stem, label=label or path.stem, checkpoint=str(path), source="custom")
        with self._load_lock:
            predictor = self._load(path)
            with self._swap_lock:
                old, self._serving = self._serving, Serving(active, predictor)
                write_pointer(self.pointer, active)
                self._stamp = self._stat()
        self._release_replaced(old)
        log.info("activated %s (%s)", active.id, active.checkpoint)
        return active

    def drop_missing_checkpoint(self) -> None:
        """Back to the base weights (no model when there are none, or they fail to load) when the active custom
        checkpoint is gone, or no longer a regular file inside the runs root; the pointer file says so too.
        The backend does this when models are listed, so a listing never offers a checkpoint that cannot load."""
        active = self.current().active
        if active.source != "custom" or self._within_runs_root(active.checkpoint):
            return
        with self._load_lock:
            with self._swap_lock:
                if self._serving.active != active:  # activated or reloaded meanwhile
                    return
            fallback, predictor = self._base_description(), None
            if self.base_checkpoint is not None:
                try:
                    predictor = self._load(self.base_checkpoint)
                except ActivationError as exc:
                    log.error("the base weights do not load either (%s); no model is active", exc)
                    fallback = NO_MODEL
            with self._swap_lock:
                old, self._serving = self._serving, Serving(fallback, predictor)
                write_pointer(self.pointer, fallback)
                self._stamp = self._stat()
        self._release_replaced(old)
        log.warning(
            "the active checkpoint %s is missing or outside the runs root %s: back to %s",
            active.checkpoint,
            self.runs_root,
            fallback.label,
        )

    def _within_runs_root(self, checkpoint: str | None) -> bool:
        try:
            self.resolve_checkpoint(checkpoint or "")
        except ActivationError:
            return False
        return True

    def is_base(self, checkpoint_path: str) -> bool:
        """Whether `checkpoint_path` names the configured base checkpoint (as given, or as an absolute path)."""
        base = self.base_checkpoint
        if base is None:
            return False
        return checkpoint_path == str(base) or Path(checkpoint_path).absolute() == base.absolute()

    def resolve_checkpoint(self, checkpoint_path: str) -> Path:
        """The checkpoint as a regular file inside the runs root, reached through no symlink; ActivationError
        otherwise. Containment is decided on the path as written before anything is looked up, so a path outside
        the root is 400 whether it exists or not, and 404 means a missing path inside it."""
        given = Path(checkpoint_path)
        path = Path(os.path.normpath(given if given.is_absolute() else self.runs_root / given))
        invalid = ActivationError(
            f"{checkpoint_path} must be a regular file (not a symlink) inside the runs root {self.runs_root}, "
            "e.g. <run>/checkpoints/export.ckpt"
        )
        if not checkpoint_path or "\x00" in checkpoint_path or not path.is_relative_to(self.runs_root):
            raise invalid
        steps = path.relative_to(self.runs_root).parts
        try:
            linked = any(self.runs_root.joinpath(*steps[: i + 1]).is_symlink() for i in range(len(steps)))
            exists, regular = path.exists(), path.is_file()
        except OSError:  # a name too long for the file system, say
            raise invalid from None
        if linked or (exists and not regular):
            raise invalid
        if not exists:
            raise ActivationError(
                f"{checkpoint_path} does not exist inside the runs root {self.runs_root}",
                status=404,
                code="sam3_checkpoint_not_found",
            )
        return path

    def refresh(self) -> None:
        """Follow the pointer file when it changed since it was last read (written here or elsewhere)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return
        with self._load_lock:
            stamp = self._stat()
            if stamp == self._stamp or stamp is None:
                self._stamp = stamp
                return
            try:
                active = read_pointer(self.pointer)
                if active is None:
                    raise FileNotFoundError(f"{self.pointer} disappeared")
                # Another process's pointer obeys the same rule as an activation: a file inside the runs root.
                path = self.base_checkpoint
                if active.source == "custom":
                    path = self.resolve_checkpoint(active.checkpoint or "")
                serving = Serving(active, self._load(path) if path is not None else None)
            except (OSError, ValueError) as exc:
                # A bad pointer must not take the service down, nor stay on disk saying what is not served.
                log.error(
                    "refused pointer file %s: %s; the previous model keeps serving, and the file says so again",
                    self.pointer,
                    exc,
                )
                serving = None
            with self._swap_lock:
                old = self._serving
                if serving is not None:
                    self._serving, self._stamp = serving, stamp
                else:
                    write_pointer(self.pointer, old.active)
                    self._stamp = self._stat()
        if serving is not None:
            self._release_replaced(old)

    def _release_replaced(self, old: Serving) -> None:
        """Give back what the replaced model held: its cached image features (their share of the cache budget),
        once the requests still running on it are done, and its GPU memory: the new model is loaded before the
        swap, so the caching allocator would otherwise keep two models' worth reserved after every activation."""
        if old.predictor is not None:
            if old.lock.acquire(blocking=False):
                _drop_features(old, locked=True)
            else:  # a request still runs on it: drop them when it is done, without making the activation wait
                threading.Thread(target=_drop_features, args=(old,), daemon=True).start()
        if torch.device(self.device).type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def _stat(self) -> tuple[int, int, int] | None:
        # The inode changes at every atomic rewrite, even one within the file system's mtime granularity.
        try:
            info = self.pointer.stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _load(self, path: Path) -> Predictor:
        try:
            return Predictor.from_checkpoint(
                path, device=self.device, precision=self.precision, cache_budget=self.cache_budget
            )
        except FileNotFoundError as exc:
            raise ActivationError(str(exc), status=404, code="sam3_checkpoint_not_found") from exc
        except ValueError as exc:
            raise ActivationError(f"checkpoint {path} cannot be served: {exc}", code="sam3_checkpoint_invalid") from exc

    def _base_description(self, label: str | None = None) -> ActiveModel:
        if self.base_checkpoint is None:
            return NO_MODEL
        return ActiveModel(
            id=label or "Base SAM3", label=label or "Base SAM3", checkpoint=str(self.base_checkpoint), source="env"
        )


def _drop_features(serving: Serving, locked: bool = False) -> None:
    """Clear a replaced model's image features under its lock (already held when `locked`), releasing them."""
    if not locked:
        serving.lock.acquire()
    try:
        serving.predictor.features.clear()
    finally:
        serving.lock.release()
