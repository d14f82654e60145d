"""Host memory of CPU training: what glibc keeps of the memory a step frees.

A CPU tensor is malloc'd memory. glibc maps blocks above its mmap threshold and unmaps them when freed, and serves
smaller ones from its heap, where freed memory stays for reuse. The threshold starts at 128 KiB and rises (up to
32 MiB) each time a mapped block is freed, so within a few steps nearly every activation of a full-size step (10-25
MiB each at 1008 px) comes from the heap, and holes the next step's layout does not fit stay resident: at 1008 px
the frozen-text step held about 1 GiB more after its first optimiser step than its weights, gradients and AdamW
state. Fixing the threshold (mallopt M_MMAP_THRESHOLD, which also stops it rising) hands such blocks back at once,
at the price of mapping and zeroing them afresh each time: measured on the sam3 preset at 504 px
(`bench/bench_train_memory.py --setting train_memory_frozen_text --resolution 504`, 2 steps), 8.05 GiB against 9.02
and 47.5 / 40.7 s a step against 44.2 / 33.5; at 1008 px 8.72 GiB against 10.32 (frozen text encoder) and 13.61
against 15.49 (everything training), 10-20% slower. `malloc_trim` after each step gained nothing (9.08 GiB at 504
px): the waste builds up within a step. Small models pay the mapping cost on every tensor and gain nothing, hence
the `sam3` preset only (TrainConfig.lean_host_memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD_BYTES = 128 << 10  # glibc's own starting value


def map_large_blocks(threshold: int = THRESHOLD_BYTES) -> bool:
    """From now on, this process's blocks of `threshold` bytes and more are mapped and unmapped on their own;
    False where the C library has no such setting (not Linux glibc: macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
