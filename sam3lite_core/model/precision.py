"""Inference precision: "fp32" (the default, and the reference for parity with upstream) or "bf16" autocast.

Upstream hard-codes its autocast to device "cuda", so on a CPU it always runs fp32. Under bf16 autocast the
matmuls and convolutions run in bfloat16 (oneDNN; about 2.2x the fp32 throughput on a CPU with AVX512-BF16, and
the trunk's linear layers are most of a full-size forward) while the weights, residual sums, normalisations,
softmax and RoPE stay fp32. Outputs then differ from fp32 by bf16 rounding (see bench/bench_model_forward.py).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16")


def inference_autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """A context manager that runs a forward on `device_type` ("cpu", "cuda") at `precision` (one of PRECISIONS)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)
