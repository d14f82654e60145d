"""Backbone outputs kept by image token, so an image asked about again (more prompts, another chunk of prompts,
a later request naming its token) skips the vision trunk, which is most of a forward.

`Sam3Lite.forward` calls `backbone.forward_image(batch.images)` once per batch. `ImageFeatureCache.use` shadows
that method on the backbone *instance* for the duration of one call about one image, and restores it after;
the model's code is unchanged and a model outside `use` behaves as always.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sam3lite_core.model.backbone import Backbone

# sam3 at 1008 px: features [1, 256, 72, 72] fp32 = 5.3 MB per image (pos is a view of one shared table).
DEFAULT_CACHED_FEATURES = 16


class ImageFeatureCache:
    """(features [1, D, G, G], pos [1, D, G, G]) of the last `capacity` images, least recently used evicted.

    Valid for one model with fixed weights, device and precision (a Predictor owns one). Not thread-safe: one
    call at a time per model (the service holds the model's lock around every call).
    """

    def __init__(self, capacity: int = DEFAULT_CACHED_FEATURES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, token: str) -> bool:
        return token in self._entries

    def clear(self) -> None:
        self._entries.clear()

    @contextmanager
    def use(self, backbone: Backbone, token: str) -> Iterator[None]:
        """Within this block, `backbone.forward_image` of a one-image batch answers from the cache for `token`."""
        original = backbone.forward_image

        def forward_image(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            assert images.shape[0] == 1, "the feature cache serves one-image batches"
            hit = self._entries.get(token)
            if hit is not None:
                self._entries.move_to_end(token)
                return hit
            out = original(images)
            if self.capacity > 0:
                self._entries[token] = out
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            return out

        backbone.forward_image = forward_image  # type: ignore[method-assign]
        try:
            yield
        finally:
            del backbone.forward_image  # the class's method again
