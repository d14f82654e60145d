"""`paused_gc()`: scanning, signing and converting a large dataset build about a million small objects that all
stay alive. The cyclic garbage collector would walk them again and again (a third of a 20k-image conversion)
and find nothing to free, so it is paused while they are built; reference counting still frees everything."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
