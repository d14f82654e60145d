"""`CacheBudget`: the bytes several caches may hold together (the service's decoded images and each model's image
features), so no stream of requests can grow them past a known bound.

Each cache charges what it keeps and releases what it evicts or drops, and after an insert evicts its own least
recently used entries while the total is over the limit; a cache always keeps its newest entry, so the bound is
the limit plus one entry per cache. Counting by entries instead would not bound anything: one decoded
12000 x 12000 image is 412 MiB.
"""

from __future__ import annotations

import threading

DEFAULT_CACHE_BYTES = 2**30


class CacheBudget:
    def __init__(self, limit_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if limit_bytes < 0:
            raise ValueError(f"a cache budget cannot be negative, got {limit_bytes} bytes")
        self.limit = limit_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    @property
    def over(self) -> bool:
        return self._used > self.limit

    def charge(self, nbytes: int) -> None:
        with self._lock:
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
