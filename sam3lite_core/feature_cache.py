"""Image features kept by key (the image token, and the windows when tiled), so an image asked about again (more
prompts, another chunk of prompts, a later request naming its token) skips the vision trunk, which is most of a
forward: `Sam3Lite.ground` then runs on the cached `ImageFeatures`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from sam3lite_core.cache_budget import CacheBudget
from sam3lite_core.model.sam3lite import ImageFeatures

# sam3 at 1008 px: features [1, 256, 72, 72] fp32 = 5.3 MB per image or window (pos is a view of one shared table).
DEFAULT_CACHED_FEATURES = 16


class ImageFeatureCache:
    """The ImageFeatures of the last images, least recently used evicted once they hold more than `capacity`
    images (a tiled image counts one per window), or, with a `budget`, once the caches sharing it hold more
    bytes than it allows; the newest entry is always kept.

    Valid for one model with fixed weights, device and precision (a Predictor owns one). Not thread-safe: one
    call at a time per model (the service holds the model's lock around every call).
    """

    def __init__(self, capacity: int = DEFAULT_CACHED_FEATURES, budget: CacheBudget | None = None) -> None:
        self.capacity = capacity
        self.budget = budget
        self._entries: OrderedDict[Hashable, ImageFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def clear(self) -> None:
        while self._entries:
            self._evict_oldest()

    def get_or_compute(self, key: Hashable, compute: Callable[[], ImageFeatures]) -> ImageFeatures:
        """The cached features for `key`, or `compute()`'s, cached."""
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit
        features = compute()
        if self.capacity > 0:
            self._entries[key] = features
            if self.budget is not None:
                self.budget.charge(_nbytes(features))
            while len(self._entries) > 1 and (self._images() > self.capacity or (self.budget and self.budget.over)):
                self._evict_oldest()
        return features

    def _images(self) -> int:
        return sum(len(f.features) for f in self._entries.values())

    def _evict_oldest(self) -> None:
        _, features = self._entries.popitem(last=False)
        if self.budget is not None:
            self.budget.release(_nbytes(features))


def _nbytes(features: ImageFeatures) -> int:
    """What an entry holds: its features (pos is a view of one table the model keeps anyway)."""
    return features.features.nelement() * features.features.element_size()
