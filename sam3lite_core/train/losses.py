"""The detection loss: matching plus IoU-aware classification, presence, L1 and GIoU terms, on every decoder
layer and on the one-to-many branch (upstream `Sam3LossWrapper` with `IABCEMdetr` and `Boxes`, configured as
the roboflow fine-tune; reference/sam3_facts.md section 3), and on the denoising queries when there are any
(ours, train/denoising.py).

Unlike upstream, the model runs no matcher: this criterion matches every layer itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sam3lite_core import box_ops
from sam3lite_core.distributed import all_reduce, rank_and_world
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.denoising import DenoisingQueries
from sam3lite_core.train.matcher import HungarianMatcher, Match
from sam3lite_core.train.o2m_matcher import OneToManyMatcher

# IoU / GIoU of M paired boxes [M, 4] -> [M]: a batch of M one-by-one pairwise problems.
_paired_iou = torch.vmap(lambda a, b: box_ops.box_iou(a[None], b[None])[0, 0])
_paired_generalized_iou = torch.vmap(lambda a, b: box_ops.generalized_box_iou(a[None], b[None])[0, 0])


@dataclass(frozen=True)
class LossSettings:
    """Loss weights and shapes; the defaults are upstream's roboflow fine-tune."""

    weight_ce: float = 20.0
    weight_presence: float = 20.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    pos_weight: float = 10.0  # extra weight of the positive (matched) classification terms
    alpha: float = 0.25  # soft positive target t = p^alpha * IoU^(1 - alpha)
    gamma: float = 2.0  # negatives are down-weighted by p^gamma
    presence_alpha: float = 0.5
    presence_gamma: float = 0.0
    o2m_weight: float = 2.0
    # The classification mean is taken as if each query had at least this many predictions, so the CE scale
    # does not grow when a small preset predicts fewer boxes. None: plain mean.
    pad_num_queries: int | None = 200
    scale_by_sqrt_queries: bool = True  # total x sqrt(Q), Q = find queries on this rank


def loss_settings(cfg: TrainConfig) -> LossSettings:
    """The run's loss: its one-to-many weight and classification padding, upstream's weights otherwise."""
    return LossSettings(o2m_weight=cfg.o2m_weight, pad_num_queries=cfg.loss_pad_num_queries)


class _Targets(NamedTuple):
    boxes: torch.Tensor  # [Q, Tmax, 4] cxcywh
    boxes_xyxy: torch.Tensor  # [Q, Tmax, 4]
    present: torch.Tensor  # [Q, 1] float: 1 where the query has a visible ground-truth box
    num_boxes: torch.Tensor  # [Q]
    normaliser: torch.Tensor  # scalar: ground-truth boxes per rank, averaged over ranks, >= 1


class SetCriterion(nn.Module):
    """Matches predictions to ground truth and returns the named loss terms and their weighted total."""

    def __init__(
        self,
        config: LossSettings = LossSettings(),
        matcher: HungarianMatcher | None = None,
        o2m_matcher: OneToManyMatcher | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.matcher = matcher or HungarianMatcher()
        self.o2m_matcher = o2m_matcher or OneToManyMatcher()
        self.weight_dict = {
            "loss_ce": config.weight_ce,
            "loss_presence": config.weight_presence,
            "loss_bbox": config.weight_bbox,
            "loss_giou": config.weight_giou,
        }

    def forward(
        self,
        outputs: Mapping[str, Any],
        target_boxes: torch.Tensor,
        num_boxes: torch.Tensor,
        denoising: DenoisingQueries | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss of one batch of Q find queries.

        outputs: "pred_logits" [Q, N, 1], "pred_boxes" [Q, N, 4] cxcywh in [0, 1], "presence_logit_dec" [Q, 1];
            optional "aux_outputs" (one dict per earlier decoder layer, same keys) and one-to-many predictions
            "pred_logits_o2m" [Q, No, 1], "pred_boxes_o2m" [Q, No, 4] (in the main and every aux dict); with
            `denoising` (the queries the model was given) also "pred_logits_dn", "pred_boxes_dn" in every dict.
        target_boxes [Q, Tmax, 4] cxcywh in [0, 1], zero-padded; num_boxes [Q] valid rows per query.

        Returns the terms loss_ce, loss_bbox, loss_giou, loss_presence of the last layer, the same suffixed
        `_{i}` for aux layer i, `_o2m` for the one-to-many branch (already times o2m_weight; no presence term)
        and `_dn` for the denoising queries (each is matched to the box it was noised from, box terms per copy,
        only its own prediction is scored), all detached for logging; and
        "loss" = [sqrt(Q) *] sum of weight_dict[term] * term, to backprop.
        """
        targets = self._targets(target_boxes, num_boxes)
        layers = [outputs, *outputs.get("aux_outputs", [])]
        suffixes = ["", *(f"_{i}" for i in range(len(layers) - 1))]
        named_terms = self._one_to_one(layers, suffixes, targets)
        if "pred_logits_o2m" in outputs:
            named_terms += self._one_to_many(layers, suffixes, targets)

        losses: dict[str, torch.Tensor] = {}
        total = target_boxes.new_zeros((), dtype=torch.float32)
        for suffix, terms in named_terms:
            total = total + self._weighted_sum(terms)
            losses.update({f"{key}{suffix}": value for key, value in terms.items()})

        if denoising is not None:
            total = total + self._denoising(layers, suffixes, denoising, targets, losses)

        if self.config.scale_by_sqrt_queries:
            total = total * target_boxes.shape[0] ** 0.5
        losses = {key: value.detach() for key, value in losses.items()}
        losses["loss"] = total
        return losses

    @staticmethod
    def _targets(target_boxes: torch.Tensor, num_boxes: torch.Tensor) -> _Targets:
        """Float targets, which queries have a visible box, and the (all-reduced under DDP) box count."""
        num_targets = target_boxes.shape[1]
        valid = torch.arange(num_targets, device=num_boxes.device) < num_boxes[:, None]  # [Q, Tmax]
        visible = valid & (target_boxes[..., 2] > 0) & (target_boxes[..., 3] > 0)
        # "global" normalisation: every rank divides by the same mean box count.
        normaliser = all_reduce(num_boxes.sum().float()) / rank_and_world()[1]
        return _Targets(
            boxes=target_boxes.float(),
            boxes_xyxy=box_ops.box_cxcywh_to_xyxy(target_boxes.float()),
            present=visible.any(dim=-1, keepdim=True).float(),
            num_boxes=num_boxes,
            normaliser=normaliser.clamp(min=1),
        )

    def _one_to_one(
        self, layers: list[Mapping[str, Any]], suffixes: list[str], targets: _Targets
    ) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """(suffix, unweighted terms) of the one-to-one queries of every layer, Hungarian-matched."""
        matches = self._match_layers(self.matcher, layers, "", targets)
        named_terms = []
        for out, suffix, match in zip(layers, suffixes, matches):
            presence = out.get("presence_logit_dec")
            terms = self._layer_terms(out["pred_logits"], out["pred_boxes"], presence, match, targets)
            named_terms.append((suffix, terms))
        return named_terms

    def _one_to_many(
        self, layers: list[Mapping[str, Any]], suffixes: list[str], targets: _Targets
    ) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """(suffix + "_o2m", terms times o2m_weight) of the one-to-many queries of every layer that has them."""
        outputs = layers[0]
        aux_o2m = [(out, suffix) for out, suffix in zip(layers[1:], suffixes[1:]) if "pred_logits_o2m" in out]
        # The last layer's one-to-many queries use the one-to-many matcher, the aux layers' use Hungarian
        # (upstream `use_o2m_matcher_on_o2m_aux: false`).
        o2m_matches = [
            self.o2m_matcher(outputs["pred_logits_o2m"], outputs["pred_boxes_o2m"], targets.boxes, targets.num_boxes),
            *self._match_layers(self.matcher, [out for out, _ in aux_o2m], "_o2m", targets),
        ]
        named_terms = []
        for (out, suffix), match in zip([(outputs, ""), *aux_o2m], o2m_matches):
            terms = self._layer_terms(out["pred_logits_o2m"], out["pred_boxes_o2m"], None, match, targets)
            weighted = {key: value * self.config.o2m_weight for key, value in terms.items()}
            named_terms.append((f"{suffix}_o2m", weighted))
        return named_terms

    @staticmethod
    @torch.no_grad()
    def _match_layers(
        matcher: HungarianMatcher, layers: list[Mapping[str, Any]], key_suffix: str, targets: _Targets
    ) -> list[Match]:
        """Hungarian matches of L layers from one batched cost computation: layers stacked along the query axis."""
        if not layers:
            return []
        num_queries = targets.boxes.shape[0]
        match = matcher(
            torch.cat([out[f"pred_logits{key_suffix}"] for out in layers]),
            torch.cat([out[f"pred_boxes{key_suffix}"] for out in layers]),
            targets.boxes.repeat(len(layers), 1, 1),
            targets.num_boxes.repeat(len(layers)),
        )
        layer_of_pair = match.query_idx // num_queries
        per_layer = []
        for layer in range(len(layers)):
            pairs = layer_of_pair == layer
            query_idx = match.query_idx[pairs] - layer * num_queries
            per_layer.append(Match(query_idx, match.pred_idx[pairs], match.target_idx[pairs]))
        return per_layer

    def _denoising(
        self,
        layers: list[Mapping[str, Any]],
        suffixes: list[str],
        denoising: DenoisingQueries,
        targets: _Targets,
        losses: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Weighted sum of the denoising terms of every layer; the terms go into `losses` with suffix `_dn`."""
        query, slot = denoising.valid.nonzero(as_tuple=True)
        match = Match(query, slot, denoising.target_idx[slot])
        copies = denoising.anchors.shape[0] // targets.boxes.shape[1]
        scored = denoising.valid.float()
        total = targets.normaliser.new_zeros(())
        for out, suffix in zip(layers, suffixes):
            terms = self._layer_terms(out["pred_logits_dn"], out["pred_boxes_dn"], None, match, targets, scored)
            terms["loss_bbox"] = terms["loss_bbox"] / copies
            terms["loss_giou"] = terms["loss_giou"] / copies
            total = total + self._weighted_sum(terms)
            losses.update({f"{key}{suffix}_dn": value for key, value in terms.items()})
        return total

    def _layer_terms(
        self,
        pred_logits: torch.Tensor,
        pred_boxes: torch.Tensor,
        presence_logits: torch.Tensor | None,
        match: Match,
        targets: _Targets,
        scored: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Unweighted terms of one layer; shapes as in `forward`. scored [Q, N]: which predictions take part in
        the classification term (default: all of the queries with a visible ground-truth box)."""
        logits = pred_logits.squeeze(-1).float()  # [Q, N]
        query, pred, target = match
        matched = pred_boxes.float()[query, pred]  # [M, 4]
        matched_xyxy = box_ops.box_cxcywh_to_xyxy(matched)
        target_xyxy = targets.boxes_xyxy[query, target]
        l1 = F.l1_loss(matched, targets.boxes[query, target], reduction="none")
        giou = _paired_generalized_iou(matched_xyxy, target_xyxy)
        terms = {
            "loss_ce": self._classification(
                logits, match, matched_xyxy, target_xyxy, targets.present if scored is None else scored
            ),
            "loss_bbox": l1.sum() / targets.normaliser,
            "loss_giou": (1 - giou).sum() / targets.normaliser,
        }
        if presence_logits is not None:
            presence = presence_logits.float().view_as(targets.present)
            terms["loss_presence"] = _sigmoid_focal(
                presence, targets.present, self.config.presence_alpha, self.config.presence_gamma
            ).sum() / len(presence)
        return terms

    def _classification(
        self,
        logits: torch.Tensor,
        match: Match,
        matched_xyxy: torch.Tensor,
        target_xyxy: torch.Tensor,
        scored: torch.Tensor,
    ) -> torch.Tensor:
        """IoU-aware BCE: matched predictions regress to the soft target t = clamp(p^alpha IoU^(1-alpha), 0.01)
        with weight pos_weight; unmatched ones go to 0, weighted by p^gamma. Only predictions where
        scored ([Q, 1] or [Q, N]) is 1 count: queries without a visible ground-truth box get no per-prediction
        term (the presence head covers them)."""
        cfg = self.config
        query, pred, _ = match
        prob = logits.sigmoid()
        with torch.no_grad():
            positive = torch.zeros_like(logits)
            positive[query, pred] = 1.0
            iou = _paired_iou(matched_xyxy, target_xyxy)
            soft_target = positive.clone()
            soft_target[query, pred] = (prob[query, pred] ** cfg.alpha * iou ** (1 - cfg.alpha)).clamp(min=0.01)
        positive_loss = F.binary_cross_entropy_with_logits(logits, soft_target, reduction="none") * positive
        negative_loss = F.binary_cross_entropy_with_logits(logits, positive, reduction="none") * (1 - positive)
        loss = (positive_loss * cfg.pos_weight + negative_loss * prob**cfg.gamma) * scored  # [Q, N]
        num_queries, num_preds = logits.shape
        return loss.sum() / (num_queries * max(num_preds, cfg.pad_num_queries or 0))

    def _weighted_sum(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weight_dict[key] * value for key, value in terms.items())  # type: ignore[return-value]


def _sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise sigmoid focal loss alpha_t * BCE * (1 - p_t)^gamma (RetinaNet)."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * bce * (1 - p_t) ** gamma
