"""Position-wise layers (MLPs, FFNs) run over chunks of rows, to keep their wide hidden activations small on CPU.

A CPU tensor is plain malloc'd memory. glibc serves blocks below its mmap threshold (at most 32 MB) from the
heap, reusing memory freed by the previous call; larger blocks are mapped fresh and every page is faulted in and
zeroed by the kernel on first touch. At 1008 px a whole-grid hidden activation is 98 MB (trunk MLP) or 170 MB
(fusion-encoder FFN, 4 queries), so each call paid for ~25-40k page faults. Chunks whose hidden activation stays
under HIDDEN_BYTES avoid that: about 10% off the trunk MLP, fp32 and bf16. The rows are independent, so the
result is the same (up to the matmul's rounding, which may depend on the row count).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

HIDDEN_BYTES = 24 << 20


def map_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, hidden_width: int) -> torch.Tensor:
    """fn(x) for a row-wise fn (each output row depends on its input row alone): x [..., C] -> [..., C'].

    On CPU, fn runs on chunks of rows small enough that a [rows, hidden_width] fp32 activation fits in
    HIDDEN_BYTES; elsewhere (GPU allocators cache blocks) it runs once on all rows.
    """
    rows = max(1, HIDDEN_BYTES // (4 * hidden_width))
    flat = x.reshape(-1, x.shape[-1])
    if x.device.type != "cpu" or flat.shape[0] <= rows:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in flat.split(rows)]).view(*x.shape[:-1], -1)
