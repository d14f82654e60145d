"""Mixed precision: the one autocast helper for training, evaluation and inference.

Inside the core a precision is an amp mode, "off" | "bf16" | "fp16". The user-facing spellings stay where users
know them: training's `amp` and `eval --amp` take the modes themselves, `predict`/`serve --precision` take "fp32"
(upstream's numerics, the parity reference) or "bf16", mapped by `amp_of_precision`.

Under bf16 autocast the matmuls and convolutions run in bfloat16 (oneDNN on a CPU: about 2.2x the fp32
throughput with AVX512-BF16; the trunk's linear layers are most of a full-size forward) while the weights, residual
sums, normalisations, softmax and RoPE stay fp32, so outputs differ from fp32 by bf16 rounding
(bench/bench_model_forward.py). Upstream hard-codes its autocast to device "cuda", so on a CPU it always runs fp32.
"""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("off", "bf16", "fp16")
# `--precision` of predict and serve -> the amp mode.
PRECISIONS = {"fp32": "off", "bf16": "bf16"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """The config's `amp` on `device`: "auto" is off on a CPU, bf16 on a GPU that computes it natively (compute
    capability 8.0 and later: A100, L4, H100, RTX 30xx/40xx), else fp16 with a GradScaler (V100, T4, RTX 20xx).
    `torch.cuda.is_bf16_supported()` is not asked: it counts emulated bf16, which those older GPUs run slowly."""
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


def amp_of_precision(precision: str) -> str:
    """A `--precision` value ("fp32", "bf16") -> its amp mode; ValueError naming the allowed values otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def autocast(device: torch.device | str, amp: str, cache_weights: bool = True) -> contextlib.AbstractContextManager:
    """Autocast at `amp` (one of AMP_MODES) on the device's type ("cpu", "cuda"); "off" is a no-op.

    `cache_weights=False` casts a trainable weight at each use instead of keeping its low-precision copy until
    the context exits: for training, where each weight is used once per forward and the copy backward needs is
    saved by autograd anyway, so the cache only adds memory when activation checkpointing saves nothing else
    (0.8 GiB for the sam3 trunk)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[amp], cache_enabled=cache_weights)
