"""The batch contract between the data collate (producer) and the model (consumer), per DESIGN.md.

A batch holds B images and Q find queries. A find query is one (image, prompt) pair: the model answers
"where are the objects this prompt names in that image". Training makes one query per (image, category).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class Batch:
    """Tensors and their shapes:

    images            float [B, 3, H, W]   normalised with mean = std = 0.5 (so in [-1, 1]), padded canvas
    img_ids           long  [Q]            index into `images` of each query's image
    prompts           list[str]            the unique prompt strings of this batch (encoded once each)
    prompt_ids        long  [Q]            index into `prompts` of each query's text
    box_prompts       float [Q, Nb, 4]     optional exemplar boxes, cxcywh in [0, 1] of the canvas
    box_labels        long  [Q, Nb]        1 = positive exemplar, 0 = negative
    box_padding       bool  [Q, Nb]        True where the slot is padding (no box)
    target_boxes      float [Q, Tmax, 4]   ground truth, cxcywh in [0, 1] of the canvas; zero-padded
    num_boxes         long  [Q]            valid rows of target_boxes per query (0 = absent category)
    image_ids         list[int]  [Q]       dataset image id of each query (COCO id)
    category_ids      list[int]  [Q]       dataset category id of each query (COCO id)
    orig_sizes        long  [Q, 2]         original (height, width) of each query's image, in pixels
    """

    images: torch.Tensor
    img_ids: torch.Tensor
    prompts: list[str]
    prompt_ids: torch.Tensor
    box_prompts: torch.Tensor | None = None
    box_labels: torch.Tensor | None = None
    box_padding: torch.Tensor | None = None
    target_boxes: torch.Tensor | None = None
    num_boxes: torch.Tensor | None = None
    image_ids: list[int] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    orig_sizes: torch.Tensor | None = None

    @property
    def num_queries(self) -> int:
        return int(self.img_ids.shape[0])

    @property
    def query_prompts(self) -> list[str]:
        """The prompt string of every query, [Q]."""
        return [self.prompts[i] for i in self.prompt_ids.tolist()]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map_tensors(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def select_queries(self, queries: slice) -> "Batch":
        """The same images and prompt strings with only the find queries `queries` (and their targets)."""
        per_query = {
            f.name: value[queries]
            for f in fields(self)
            if f.name not in ("images", "prompts") and (value := getattr(self, f.name)) is not None
        }
        return replace(self, **per_query)

    def pin_memory(self) -> "Batch":
        """The batch in page-locked memory, so that `to(cuda, non_blocking=True)` overlaps the copy with compute.
        DataLoader(pin_memory=True) calls this on every batch of a custom type that has it, and silently leaves
        a type without it in pageable memory."""
        return self._map_tensors(torch.Tensor.pin_memory)

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        return replace(
            self,
            **{f.name: fn(value) for f in fields(self) if isinstance(value := getattr(self, f.name), torch.Tensor)},
        )
