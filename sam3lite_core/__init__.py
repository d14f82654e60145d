"""sam3lite core: the box-only SAM3 detector in plain PyTorch, its data, training, evaluation and serving.

This package never imports dagster, dagster_pipes or the upstream `sam3` package.
"""

from sam3lite_core.batch import Batch
from sam3lite_core.checkpoint import export_weights, load_checkpoint, save_checkpoint
from sam3lite_core.model.config import PRESETS, ModelConfig
from sam3lite_core.model.sam3lite import Sam3Lite, build_model
from sam3lite_core.predict import predict
from sam3lite_core.tokenizer import Tokenizer

__all__ = [
    "PRESETS",
    "Batch",
    "ModelConfig",
    "Sam3Lite",
    "Tokenizer",
    "build_model",
    "export_weights",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
]
