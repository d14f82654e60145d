"""One-to-many matching for the DAC-DETR auxiliary queries (upstream's `BinaryOneToManyMatcher`).

The one-to-many queries learn from several positives per ground-truth box, which speeds up training; they
are dropped at inference. Matching is greedy and fully vectorised: no assignment problem to solve.
"""

from __future__ import annotations

import torch

from sam3lite_core import box_ops
from sam3lite_core.train.matcher import Match

# Pairwise IoU over a leading batch dimension, independent of the torchvision version.
_batched_box_iou = torch.vmap(box_ops.box_iou)


class OneToManyMatcher:
    """Pair every prediction whose quality score is high enough with a ground-truth box.

    score = alpha * p + (1 - alpha) * IoU, with p = sigmoid(logit). A (prediction, box) pair matches when its
    score exceeds both `threshold` and the (1 - topk / N) quantile of that box's scores over the N predictions,
    so each box gets about `topk` predictions at most. There is no deduplication: a prediction may match
    several boxes of its query.
    """

    def __init__(self, alpha: float = 0.3, threshold: float = 0.4, topk: int = 4) -> None:
        self.alpha = alpha
        self.threshold = threshold
        self.topk = topk

    @torch.no_grad()
    def __call__(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        target_boxes: torch.Tensor,
        num_boxes: torch.Tensor,
    ) -> Match:
        """Same inputs and output as `HungarianMatcher.__call__`; pairs come in (query, pred, target) order."""
        num_preds, num_targets = pred_boxes.shape[1], target_boxes.shape[1]
        if num_targets == 0:
            return Match.empty(pred_logits.device)
        prob = pred_logits.float().sigmoid().squeeze(-1)  # [Q, N]
        iou = _batched_box_iou(
            box_ops.box_cxcywh_to_xyxy(pred_boxes.float()), box_ops.box_cxcywh_to_xyxy(target_boxes.float())
        )  # [Q, N, Tmax]
        score = self.alpha * prob.unsqueeze(-1) + (1 - self.alpha) * iou
        cutoff = torch.quantile(score, 1 - self.topk / num_preds, dim=1, keepdim=True)  # [Q, 1, Tmax]
        valid = torch.arange(num_targets, device=score.device) < num_boxes.to(score.device)[:, None]  # [Q, Tmax]
        matches = (score > cutoff) & (score > self.threshold) & valid.unsqueeze(1)
        return Match(*torch.nonzero(matches, as_tuple=True))
