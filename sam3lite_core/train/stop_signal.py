"""Stopping a run from outside without losing it: the first SIGTERM or SIGINT asks training to stop at the end
of the current optimiser step, where last.ckpt is saved (stopped_reason "cancelled"); a second signal acts as
it would have without us (the previous handlers are back in place after the first).

This is how a cancelled Dagster run (the launcher signals the training process; torchrun forwards to its
workers), `kill`, or Ctrl-C ends a run. Handlers can only be installed from the main thread; elsewhere (a
training started from a worker thread) signals keep their usual meaning.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
