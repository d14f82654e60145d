"""Box denoising queries (DN-DETR, with DINO's edge noise): extra decoder queries that start from noised copies
of the ground-truth boxes and are trained to reconstruct them, in training only.

A detector from scratch spends most of its early steps on unstable Hungarian matches, so the box head learns
slowly (reference: DN-DETR, Li et al. 2022). A denoising query needs no matching: its target is the box it was
made from. Here the class is the prompt's, so a query carries only its noised box (its content starts at zero),
and like the one-to-many queries it skips self-attention, so it can neither leak its box to the matching queries
nor see the other copies. The model gains no parameter: checkpoints are the same with or without denoising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from sam3lite_core import box_ops
from sam3lite_core.train.config import TrainConfig

MIN_SIDE = 1e-3  # a noised box keeps at least this width and height (normalised)


@dataclass(frozen=True)
class DenoisingSettings:
    groups: int = 0  # noised copies of every ground-truth box; 0 = off
    box_noise: float = 0.4  # each edge moves by up to box_noise x half the box's side (DINO's default)

    def __post_init__(self) -> None:
        if self.groups < 0 or not 0 < self.box_noise <= 1:
            raise ValueError(f"denoising needs groups >= 0 and 0 < box_noise <= 1; got {self}")


def denoising_settings(cfg: TrainConfig) -> DenoisingSettings:
    """The run's denoising queries: `denoising_groups` noised copies with `denoising_box_noise`."""
    return DenoisingSettings(groups=cfg.denoising_groups, box_noise=cfg.denoising_box_noise)


class DenoisingQueries(NamedTuple):
    """G groups of Tmax slots per find query; slot g * Tmax + t holds the g-th noised copy of box t.

    anchors     [G * Tmax, Q, 4]  cxcywh in [0, 1], the decoder's input boxes (padding slots hold a valid dummy)
    target_idx  [G * Tmax]        row of target_boxes each slot reconstructs
    valid       [Q, G * Tmax]     False at the slots of padding rows (t >= num_boxes[q]) and of empty boxes
    """

    anchors: torch.Tensor
    target_idx: torch.Tensor
    valid: torch.Tensor


def make_denoising_queries(
    target_boxes: torch.Tensor, num_boxes: torch.Tensor, config: DenoisingSettings
) -> DenoisingQueries | None:
    """Noised copies of target_boxes [Q, Tmax, 4] (cxcywh, zero-padded; num_boxes [Q] valid rows), drawn from
    the global torch RNG (seeded per rank, saved in checkpoints); None when off or no query has a box."""
    num_targets = target_boxes.shape[1]
    if config.groups == 0 or num_targets == 0 or int(num_boxes.max()) == 0:
        return None
    boxes = target_boxes.float().repeat(1, config.groups, 1)  # [Q, G * Tmax, 4]
    xyxy = box_ops.box_cxcywh_to_xyxy(boxes)
    half = boxes[..., 2:].repeat(1, 1, 2) / 2  # (w/2, h/2, w/2, h/2)
    shift = (torch.rand(xyxy.shape, device=xyxy.device) * 2 - 1) * config.box_noise * half
    # With box_noise <= 1 an edge moves at most to the centre, so edges never cross; a side that collapsed
    # there grows back to MIN_SIDE.
    x0, y0, x1, y1 = (xyxy + shift).clamp(0, 1).unbind(-1)
    width, height = (x1 - x0).clamp(min=MIN_SIDE), (y1 - y0).clamp(min=MIN_SIDE)
    anchors = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, width, height], dim=-1)
    target_idx = torch.arange(num_targets, device=target_boxes.device).repeat(config.groups)
    valid = (target_idx[None, :] < num_boxes[:, None]) & (boxes[..., 2:] > 0).all(-1)
    # Padding rows are zero boxes: give their slots a harmless centred box (their outputs are never scored).
    anchors = torch.where(valid[..., None], anchors, anchors.new_tensor([0.5, 0.5, 0.1, 0.1]))
    return DenoisingQueries(anchors.transpose(0, 1).contiguous(), target_idx, valid)
