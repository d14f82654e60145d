"""sam3lite core: the box-only SAM3 detector in plain PyTorch, its data, training, evaluation and serving.

This package never imports dagster, dagster_pipes or the upstream `sam3` package.
"""

from sam3lite_core.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
