"""Joint image + box transforms (torchvision.transforms.v2 with tv_tensors), the vendor recipe.

Train: square resize to s x s (aspect ratio ignored) with s uniform over {480, 512, ..., 992} at 1008 px (scaled
for other resolutions; `min_scale` moves the smallest, down in the same steps or up), zero padding to
resolution x resolution at a random offset, degenerate boxes dropped, then normalisation with mean = std = 0.5
(padded pixels become -1, as in the vendor pipeline).
Validation: resize to resolution x resolution, normalise.
Optional and off by default: horizontal flip, box jitter (the vendor uses neither).

Input: `(tv_tensors.Image uint8 [3, h, w], {"boxes": BoundingBoxes XYXY px, "labels": long [N]})`.
Output: the same structure, image float [3, R, R] in [-1, 1], boxes in canvas pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

VENDOR_RESOLUTION = 1008
# The vendor's multi-scale train sizes at 1008 px: 480, 512, ..., 992.
VENDOR_LARGEST_SIZE = 992
VENDOR_SIZE_STEP = 32
VENDOR_MIN_SCALE = 480 / VENDOR_RESOLUTION


def train_sizes(resolution: int, min_scale: float = VENDOR_MIN_SCALE) -> list[int]:
    """The vendor's multi-scale square sizes 992, 960, ... at 1008 px, down to `min_scale` x 1008 (480 by
    default), scaled to `resolution`; just `resolution` (no padding) when `min_scale` is above 992 / 1008."""
    smallest = min_scale * VENDOR_RESOLUTION - 1e-6  # 480 / 1008 * 1008 may round above 480
    kept = [s for s in range(VENDOR_LARGEST_SIZE, 0, -VENDOR_SIZE_STEP) if s >= smallest]
    return sorted({max(1, round(s * resolution / VENDOR_RESOLUTION)) for s in kept}) or [resolution]


class RandomPadToSize(v2.Transform):
    """Zero-pad to size x size with the content at a random offset (vendor PadToSizeAPI)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        left = int(torch.randint(0, self.size - width + 1, ()))
        top = int(torch.randint(0, self.size - height + 1, ()))
        return {"padding": [left, top, self.size - width - left, self.size - height - top]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=0)


class BoxJitter(v2.Transform):
    """Move each box edge by Gaussian noise of `std` times the box side (labels that are a little loose)."""

    _transformed_types = (tv_tensors.BoundingBoxes,)

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        xyxy = inpt.as_subclass(torch.Tensor)
        side = (xyxy[:, 2:] - xyxy[:, :2]).repeat(1, 2)  # [N, 4]: (w, h, w, h)
        jittered = xyxy + torch.randn_like(xyxy) * self.std * side
        return tv_tensors.wrap(jittered, like=inpt)


def build_transforms(
    resolution: int,
    train: bool,
    hflip_prob: float = 0.0,
    box_jitter: float = 0.0,
    min_scale: float = VENDOR_MIN_SCALE,
) -> v2.Compose:
    """The train or validation pipeline for square canvases of `resolution` px."""
    finish = [
        v2.ClampBoundingBoxes(),
        # Drops boxes under 1 px a side or 1 px^2: the vendor drops those under 1e-6 of the canvas, 1 px^2 at 1008.
        v2.SanitizeBoundingBoxes(min_size=1.0, min_area=1.0),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
    ]
    if not train:
        return v2.Compose([v2.Resize((resolution, resolution)), *finish])
    steps: list[v2.Transform] = [v2.RandomChoice([v2.Resize((s, s)) for s in train_sizes(resolution, min_scale)])]
    if hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
    if box_jitter > 0:
        steps += [BoxJitter(box_jitter), v2.ClampBoundingBoxes()]  # clamp to the image before padding grows it
    return v2.Compose([*steps, RandomPadToSize(resolution), *finish])
