"""sam3lite core: the box-only SAM3 detector in plain PyTorch, its data, training, evaluation and serving.

This package never imports dagster, dagster_pipes or the upstream `sam3` package. Its public names are
imported on first use, so commands that never touch torch (`sam3lite convert`, `sam3lite synth`, the Dagster
sensors that fingerprint datasets) start without paying for importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam3lite_core.batch import Batch
    from sam3lite_core.checkpoint import export_weights, load_checkpoint, save_checkpoint
    from sam3lite_core.model.config import PRESETS, ModelConfig
    from sam3lite_core.model.sam3lite import Sam3Lite, build_model
    from sam3lite_core.predict import predict
    from sam3lite_core.tokenizer import Tokenizer

_LAZY = {
    "Batch": "sam3lite_core.batch",
    "export_weights": "sam3lite_core.checkpoint",
    "load_checkpoint": "sam3lite_core.checkpoint",
    "save_checkpoint": "sam3lite_core.checkpoint",
    "PRESETS": "sam3lite_core.model.config",
    "ModelConfig": "sam3lite_core.model.config",
    "Sam3Lite": "sam3lite_core.model.sam3lite",
    "build_model": "sam3lite_core.model.sam3lite",
    "predict": "sam3lite_core.predict",
    "Tokenizer": "sam3lite_core.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
