"""Training: `train(config, on_event) -> TrainResult`, `TrainConfig`, `evaluate(...)`, and the parts they use
(matching, losses, optimiser groups, schedule, checkpoints, run folder).

The public names are imported on first use, so `python -m sam3lite_core.train` and light callers (reading a
config) stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam3lite_core.train.config import ConfigError, TrainConfig
    from sam3lite_core.train.evaluate import evaluate
    from sam3lite_core.train.events import ConsolePrinter, Event
    from sam3lite_core.train.loop import TrainResult, train

_LAZY = {
    "ConfigError": "sam3lite_core.train.config",
    "TrainConfig": "sam3lite_core.train.config",
    "evaluate": "sam3lite_core.train.evaluate",
    "ConsolePrinter": "sam3lite_core.train.events",
    "Event": "sam3lite_core.train.events",
    "TrainResult": "sam3lite_core.train.loop",
    "train": "sam3lite_core.train.loop",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
