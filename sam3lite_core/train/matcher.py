"""Matching of predicted boxes to ground truth, per find query: the `Matcher` contract (inputs once, in float32)
and its one-to-one (Hungarian) implementation; the one-to-many one is in o2m_matcher.py.

The Hungarian one is upstream's `BinaryHungarianMatcherV2` with the roboflow fine-tune settings (focal class
cost, no `stable` rescaling, queries without ground truth skipped), solved with scipy's `linear_sum_assignment`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam3lite_core import box_ops

# Pairwise GIoU over a leading batch dimension; vmap keeps it independent of the torchvision version
# (batched box ops only arrived in torchvision 0.24).
_batched_generalized_box_iou = torch.vmap(box_ops.generalized_box_iou)


class Match(NamedTuple):
    """M matched pairs: prediction `pred_idx[m]` of query `query_idx[m]` is assigned the ground-truth row
    `target_idx[m]` of that query (a row of the padded `target_boxes [Q, Tmax, 4]`). All long [M]."""

    query_idx: torch.Tensor
    pred_idx: torch.Tensor
    target_idx: torch.Tensor

    @classmethod
    def empty(cls, device: torch.device) -> "Match":
        none = torch.zeros(0, dtype=torch.long, device=device)
        return cls(none, none, none)


class MatchInputs(NamedTuple):
    """One batch of Q find queries to match, in float32 (shapes as in `Matcher.__call__`)."""

    logits: torch.Tensor  # [Q, N] classification logits
    boxes: torch.Tensor  # [Q, N, 4] predicted cxcywh
    boxes_xyxy: torch.Tensor  # [Q, N, 4] the same as xyxy
    targets: torch.Tensor  # [Q, Tmax, 4] ground-truth cxcywh, zero-padded
    targets_xyxy: torch.Tensor  # [Q, Tmax, 4] the same as xyxy
    num_boxes: torch.Tensor  # [Q] valid ground-truth rows per query


class Matcher(ABC):
    """Assigns predictions to ground-truth boxes, per find query; subclasses say how in `_assign`."""

    @torch.no_grad()
    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        target_boxes: torch.Tensor,
        num_boxes: torch.Tensor,
    ) -> Match:
        """Match every query in one batched computation.

        pred_logits   [Q, N, 1]     classification logits
        pred_boxes    [Q, N, 4]     cxcywh in [0, 1]
        target_boxes  [Q, Tmax, 4]  cxcywh in [0, 1]; rows >= num_boxes[q] are padding
        num_boxes     [Q]           valid ground-truth rows per query
        """
        boxes, targets = pred_boxes.float(), target_boxes.float()
        inputs = MatchInputs(
            logits=pred_logits.squeeze(-1).float(),
            boxes=boxes,
            boxes_xyxy=box_ops.box_cxcywh_to_xyxy(boxes),
            targets=targets,
            targets_xyxy=box_ops.box_cxcywh_to_xyxy(targets),
            num_boxes=num_boxes,
        )
        return self._assign(inputs)

    @abstractmethod
    def _assign(self, inputs: MatchInputs) -> Match:
        """The matched pairs of one batch."""


class HungarianMatcher(Matcher):
    """Minimum-cost one-to-one assignment between the N predictions and the T ground-truth boxes of each query.

    cost = cost_bbox * L1(cxcywh) + cost_class * focal(p) - cost_giou * GIoU(xyxy), where the focal class
    cost -alpha (1-p)^gamma log p + (1-alpha) p^gamma log(1-p) depends on the prediction only (one class).
    Each query with T > 0 gets min(N, T) pairs; queries with T = 0 get none.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        assert cost_class or cost_bbox or cost_giou, "at least one matching cost must be non-zero"
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma

    def _assign(self, inputs: MatchInputs) -> Match:
        """Solves each query with ground truth on its own cost matrix [N, T]."""
        num_boxes = inputs.num_boxes
        device = inputs.logits.device
        queries = torch.nonzero(num_boxes > 0).squeeze(1)
        if queries.numel() == 0:
            return Match.empty(device)
        logits = inputs.logits[queries]  # [K, N]
        boxes = inputs.boxes[queries]  # [K, N, 4]
        targets = inputs.targets[queries]  # [K, Tmax, 4]

        cost_bbox = torch.cdist(boxes, targets, p=1)  # [K, N, Tmax]
        cost_giou = -_batched_generalized_box_iou(inputs.boxes_xyxy[queries], inputs.targets_xyxy[queries])
        prob = logits.sigmoid()
        # logsigmoid of the raw logit rather than log(p): finite for saturated logits.
        cost_class = -self.alpha * (1 - prob) ** self.gamma * F.logsigmoid(logits) + (
            1 - self.alpha
        ) * prob**self.gamma * F.logsigmoid(-logits)
        cost = (
            self.cost_bbox * cost_bbox
            + self.cost_class * cost_class.unsqueeze(-1).expand_as(cost_bbox)
            + self.cost_giou * cost_giou
        )
        # Non-finite predictions (a diverged step) must reach the loss as a non-finite value the training loop
        # skips; scipy would raise on them instead.
        cost_np = np.nan_to_num(cost.cpu().numpy(), nan=1e9, posinf=1e9, neginf=-1e9)

        query_idx, pred_idx, target_idx = [], [], []
        for k, (query, count) in enumerate(zip(queries.tolist(), num_boxes[queries].tolist())):
            rows, cols = linear_sum_assignment(cost_np[k, :, :count])
            query_idx.append(np.full(len(rows), query, dtype=np.int64))
            pred_idx.append(rows)
            target_idx.append(cols)
        return Match(
            *(torch.from_numpy(np.concatenate(idx)).long().to(device) for idx in (query_idx, pred_idx, target_idx))
        )
