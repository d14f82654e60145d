"""Tiled inference for large images: overlapping square windows, and the merge of their detections.

The model sees every image resized to its input side (1008 px for sam3), so an object of 20 px in a
4000 px image shrinks to 5 px. Cutting the image into windows of about the model's side keeps objects at
their size. Windows overlap so that an object up to the overlap's width lies whole in at least one window;
the same object is then found by several windows, and the merge keeps one box:

1. A box that touches an inner window edge (one that is not the image border) is a cut-off view of an object
   reaching past that edge. It is dropped when another window holds it clear of that window's own inner
   edges: that window saw past the cut, so its box for the object is at least as complete. An object larger
   than any window's view keeps its pieces (no window holds them clear).
2. What remains is suppressed per prompt at `merge_iou` (torchvision `batched_nms`): the whole views of one
   object in two overlapping windows are near-identical boxes.
Dropping cut views first matters: a piece and the whole object overlap by their area ratio, often under any
useful IoU threshold, so NMS alone would keep both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torchvision.ops import batched_nms

# A box edge this close to a window edge (fraction of the window side) counts as touching it: a cut-off
# object's box ends at the edge up to the model's box error.
EDGE_MARGIN = 0.02
# More windows than this is a misconfiguration (a tiny window on a large image), not a workload.
MAX_WINDOWS = 256
MIN_WINDOW = 16  # px; a smaller window holds too little of any object to be worth a forward


@dataclass(frozen=True)
class TileSettings:
    """Windowed inference (the annotation backend's `window_size`, `window_overlap`, `merge_iou`).

    size      window side in pixels of the input image (each window is then resized to the model's input)
    overlap   least fraction of `size` that neighbouring windows share, in [0, 1)
    merge_iou boxes of one prompt from different windows overlapping above this IoU are one object, in (0, 1]
    """

    size: int
    overlap: float = 0.2
    merge_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.size < MIN_WINDOW:
            raise ValueError(f"the window size must be at least {MIN_WINDOW} px, got {self.size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"the window overlap is a fraction of the window in [0, 1), got {self.overlap}")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ValueError(f"merge_iou must be in (0, 1], got {self.merge_iou}")


def _starts(length: int, size: int, overlap: float) -> list[int]:
    """Window starts along one axis: evenly spread from 0 to length - size, with at least the overlap."""
    if length <= size:
        return [0]
    count = math.ceil((length - size) / (size * (1.0 - overlap))) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def tile_windows(height: int, width: int, settings: TileSettings) -> torch.Tensor:
    """The windows covering a height x width image -> long [T, 4] (x0, y0, x1, y1) px, row by row.

    Windows are `size` square; along an axis shorter than `size` a window spans the whole axis.
    """
    rows, cols = _starts(height, settings.size, settings.overlap), _starts(width, settings.size, settings.overlap)
    if len(rows) * len(cols) > MAX_WINDOWS:
        raise ValueError(
            f"a {settings.size} px window cuts a {width}x{height} image into {len(rows) * len(cols)} windows "
            f"(at most {MAX_WINDOWS}); use a larger window"
        )
    side_y, side_x = min(settings.size, height), min(settings.size, width)
    return torch.tensor([[x, y, x + side_x, y + side_y] for y in rows for x in cols], dtype=torch.long)


def window_count(height: int, width: int, settings: TileSettings) -> int:
    """How many windows `tile_windows` cuts a height x width image into."""
    return len(_starts(height, settings.size, settings.overlap)) * len(_starts(width, settings.size, settings.overlap))


def fit_windows(height: int, width: int, settings: TileSettings) -> TileSettings:
    """`settings` with the smallest window side >= its own that cuts the image into at most MAX_WINDOWS windows
    (the count only falls as the side grows, so a bisection finds it); `settings` itself when it fits."""
    if window_count(height, width, settings) <= MAX_WINDOWS:
        return settings
    low, high = settings.size, max(height, width, settings.size)  # one window of the longer side always fits
    while low + 1 < high:
        middle = (low + high) // 2
        if window_count(height, width, replace(settings, size=middle)) <= MAX_WINDOWS:
            high = middle
        else:
            low = middle
    return replace(settings, size=high)


def _touches_inner_edge(boxes: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """boxes float [N, 4], windows [T, 4] (xyxy px) -> bool [N, T]: the box reaches an edge of the window that
    is not on the image border."""
    windows = windows.float()
    width, height = windows[:, 2].max(), windows[:, 3].max()  # the windows cover the image
    margin = EDGE_MARGIN * (windows[:, 2:] - windows[:, :2]).amax(dim=1)  # [T]
    x0, y0, x1, y1 = (boxes[:, None, i] for i in range(4))  # [N, 1] each
    wx0, wy0, wx1, wy1 = windows.unbind(dim=1)  # [T] each
    return (
        ((wx0 > 0) & (x0 <= wx0 + margin))
        | ((wy0 > 0) & (y0 <= wy0 + margin))
        | ((wx1 < width) & (x1 >= wx1 - margin))
        | ((wy1 < height) & (y1 >= wy1 - margin))
    )


def _inside(boxes: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """boxes float [N, 4], windows [T, 4] (xyxy px) -> bool [N, T]: the box lies within the window."""
    windows = windows.float()
    after_start = (boxes[:, None, :2] >= windows[None, :, :2]).all(dim=2)
    before_end = (boxes[:, None, 2:] <= windows[None, :, 2:]).all(dim=2)
    return after_start & before_end


def drop_cut_views(boxes: torch.Tensor, window_ids: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """boxes float [N, 4] (xyxy px of the image), window_ids long [N] (the window each box came from),
    windows [T, 4] -> bool [N], True for the boxes to keep (rule 1 of the module docstring)."""
    touches = _touches_inner_edge(boxes, windows)  # [N, T]
    clear_elsewhere = (_inside(boxes, windows) & ~touches).any(dim=1)
    cut_here = touches.gather(1, window_ids[:, None]).squeeze(1)
    return ~(cut_here & clear_elsewhere)


def merge_windows(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    windows: torch.Tensor,
    merge_iou: float,
    min_score: float = 0.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Detections of K prompts in T windows -> per prompt, the merged (boxes [M, 4], scores [M]), best first.

    boxes   float [T, K, N, 4]  xyxy in pixels of the whole image
    scores  float [T, K, N]
    windows long  [T, 4]        from `tile_windows`
    Boxes scoring under `min_score` are left out before merging (they would be thresholded away after it, and
    NMS cost grows with the square of the boxes).
    """
    num_windows, num_prompts, num_boxes = scores.shape
    window_ids = torch.arange(num_windows).repeat_interleave(num_prompts * num_boxes)
    prompt_ids = torch.arange(num_prompts).repeat_interleave(num_boxes).repeat(num_windows)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    kept = (scores >= min_score).nonzero().squeeze(1)
    kept = kept[drop_cut_views(boxes[kept], window_ids[kept], windows)]
    boxes, scores, prompt_ids = boxes[kept], scores[kept], prompt_ids[kept]
    order = batched_nms(boxes, scores, prompt_ids, merge_iou)  # decreasing score
    boxes, scores, prompt_ids = boxes[order], scores[order], prompt_ids[order]
    return [(boxes[prompt_ids == k], scores[prompt_ids == k]) for k in range(num_prompts)]
