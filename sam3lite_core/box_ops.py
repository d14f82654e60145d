"""Pure box functions. Boxes are [..., 4] tensors; cxcywh = (centre x, centre y, width, height), xyxy = corners.

The model predicts normalised cxcywh in [0, 1]; losses, IoU and the outputs users see are xyxy.
"""

from __future__ import annotations

import torch
import torchvision


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """logit(x) with x clamped to [0, 1] and both x and 1 - x floored at eps.

    The eps of 1e-3 (not 1e-5) is upstream's: it bounds the result to about +-6.9, which keeps refined
    boxes from saturating the sigmoid, and every checkpoint was trained with it.
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes [N, 4] and [M, 4] -> [N, M]."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU of xyxy boxes [N, 4] and [M, 4] -> [N, M], in [-1, 1]."""
    return torchvision.ops.generalized_box_iou(boxes1, boxes2)
