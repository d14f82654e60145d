"""One-to-many matching for the DAC-DETR auxiliary queries (upstream's `BinaryOneToManyMatcher`).

The one-to-many queries learn from several positives per ground-truth box, which speeds up training; they
are dropped at inference. Matching is greedy and fully vectorised: no assignment problem to solve.
"""

from __future__ import annotations

import torch

from sam3lite_core import box_ops
from sam3lite_core.train.matcher import Match, Matcher, MatchInputs

# Pairwise IoU over a leading batch dimension, independent of the torchvision version.
_batched_box_iou = torch.vmap(box_ops.box_iou)


class OneToManyMatcher(Matcher):
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

    def _assign(self, inputs: MatchInputs) -> Match:
        """Pairs come in (query, pred, target) order."""
        num_preds, num_targets = inputs.boxes.shape[1], inputs.targets.shape[1]
        if num_targets == 0:
            return Match.empty(inputs.logits.device)
        prob = inputs.logits.sigmoid()  # [Q, N]
        iou = _batched_box_iou(inputs.boxes_xyxy, inputs.targets_xyxy)  # [Q, N, Tmax]
        score = self.alpha * prob.unsqueeze(-1) + (1 - self.alpha) * iou
        cutoff = torch.quantile(score, 1 - self.topk / num_preds, dim=1, keepdim=True)  # [Q, 1, Tmax]
        num_boxes = inputs.num_boxes.to(score.device)
        valid = torch.arange(num_targets, device=score.device) < num_boxes[:, None]  # [Q, Tmax]
        matches = (score > cutoff) & (score > self.threshold) & valid.unsqueeze(1)
        return Match(*torch.nonzero(matches, as_tuple=True))
