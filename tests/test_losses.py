"""The detection criterion: term names, the zero-ground-truth query, sqrt(Q) scaling, and every term, the
total and the input gradients equal to upstream's Sam3LossWrapper (IABCEMdetr + Boxes, roboflow settings)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.distributed as dist
import vendor_harness
from test_matcher import random_problem

from sam3lite_core import box_ops
from sam3lite_core.train.losses import LossSettings, SetCriterion

NUM_AUX = 5
TOLERANCE = 1e-5


def random_outputs(seed: int, num_preds: int, o2m: bool = True) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Main + 5 aux layers (+ one-to-many) of leaf tensors; queries have 3, 0, 7, 1, 12 targets."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for layer in range(1 + NUM_AUX):
        logits, boxes, target_boxes, num_boxes = random_problem(seed * 10 + layer, num_preds=num_preds)
        out = {"pred_logits": logits, "pred_boxes": boxes, "presence_logit_dec": torch.randn(5, 1, generator=gen)}
        if o2m:
            o2m_logits, o2m_boxes, _, _ = random_problem(seed * 10 + layer + 100, num_preds=num_preds)
            out.update(pred_logits_o2m=o2m_logits, pred_boxes_o2m=o2m_boxes)
        layers.append({key: value.clone().requires_grad_() for key, value in out.items()})
    # Every layer's problem draws its own targets; keep those of the main layer.
    _, _, target_boxes, num_boxes = random_problem(seed * 10, num_preds=num_preds)
    outputs = dict(layers[0], aux_outputs=layers[1:])
    return outputs, target_boxes, num_boxes


def leaves(outputs: dict) -> list[torch.Tensor]:
    layers = [outputs, *outputs["aux_outputs"]]
    return [value for layer in layers for key, value in layer.items() if key != "aux_outputs"]


def test_term_names_and_total():
    outputs, target_boxes, num_boxes = random_outputs(0, num_preds=30)
    losses = SetCriterion()(outputs, target_boxes, num_boxes)
    bases = ["loss_ce", "loss_bbox", "loss_giou", "loss_presence"]
    expected = set(bases) | {f"{key}_{i}" for key in bases for i in range(NUM_AUX)}
    expected |= {f"{key}_o2m" for key in bases[:3]} | {f"{key}_{i}_o2m" for key in bases[:3] for i in range(NUM_AUX)}
    assert set(losses) == expected | {"loss"}
    weights = SetCriterion().weight_dict
    # "loss_giou_3_o2m" -> weight of "loss_giou"; o2m terms already include the o2m weight.
    weighted = sum(weights["_".join(key.split("_")[:2])] * value for key, value in losses.items() if key != "loss")
    assert losses["loss"].item() == pytest.approx(math.sqrt(5) * weighted.item(), rel=1e-5)
    assert all(not value.requires_grad for key, value in losses.items() if key != "loss")
    losses["loss"].backward()
    assert outputs["aux_outputs"][2]["pred_boxes_o2m"].grad is not None


def test_query_without_ground_truth_gets_presence_but_no_box_terms():
    outputs, target_boxes, num_boxes = random_outputs(1, num_preds=30, o2m=False)
    losses = SetCriterion()(outputs, target_boxes, num_boxes)
    assert set(losses) == {
        f"{key}{suffix}"
        for key in ("loss_ce", "loss_bbox", "loss_giou", "loss_presence")
        for suffix in ["", *(f"_{i}" for i in range(NUM_AUX))]
    } | {"loss"}
    losses["loss"].backward()
    # Query 1 has no target: its per-prediction logits get no gradient, its presence logit does.
    assert torch.all(outputs["pred_logits"].grad[1] == 0)
    assert torch.all(outputs["pred_boxes"].grad[1] == 0)
    assert outputs["presence_logit_dec"].grad[1].abs().item() > 0


def test_batch_without_any_ground_truth():
    outputs, target_boxes, _ = random_outputs(2, num_preds=30)
    losses = SetCriterion()(outputs, target_boxes[:, :0], torch.zeros(5, dtype=torch.long))
    assert losses["loss_bbox"].item() == 0 and losses["loss_ce"].item() == 0
    assert losses["loss_presence"].item() > 0 and torch.isfinite(losses["loss"])


def test_sqrt_queries_scaling_is_optional():
    outputs, target_boxes, num_boxes = random_outputs(3, num_preds=30)
    scaled = SetCriterion()(outputs, target_boxes, num_boxes)["loss"]
    plain = SetCriterion(LossSettings(scale_by_sqrt_queries=False))(outputs, target_boxes, num_boxes)["loss"]
    assert scaled.item() == pytest.approx(math.sqrt(5) * plain.item(), rel=1e-6)


@pytest.fixture
def single_process_group(tmp_path):
    """A 1-process gloo group, so upstream's "global" normalisation (an all_reduce) runs as configured."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def vendor_criterion(monkeypatch):
    loss_fns = importlib.import_module("sam3.train.loss.loss_fns")

    # The presence loss calls a Triton kernel (CUDA only); upstream's own torch formula replaces it.
    def focal_reduce_in_torch(inputs, targets, alpha, gamma):
        return loss_fns.sigmoid_focal_loss(inputs, targets, 1, alpha, gamma, reduce=False, triton=False).sum()

    monkeypatch.setattr(loss_fns, "triton_sigmoid_focal_loss_reduce", focal_reduce_in_torch)
    matcher_cls = vendor_harness.vendor_class("sam3.train.matcher", "BinaryHungarianMatcherV2")
    matcher = matcher_cls(focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2, stable=False)
    o2m_matcher = vendor_harness.vendor_class("sam3.train.matcher", "BinaryOneToManyMatcher")(
        alpha=0.3, threshold=0.4, topk=4
    )
    boxes = loss_fns.Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0})
    iabce = loss_fns.IABCEMdetr(
        weak_loss=False,
        weight_dict={"loss_ce": 20.0, "presence_loss": 20.0},
        pos_weight=10.0,
        alpha=0.25,
        gamma=2,
        use_presence=True,
        pos_focal=False,
        pad_n_queries=200,
        pad_scale_pos=1.0,
    )
    wrapper = vendor_harness.vendor_class("sam3.train.loss.sam3_loss", "Sam3LossWrapper")(
        loss_fns_find=[boxes, iabce],
        normalization="global",
        matcher=matcher,
        o2m_matcher=o2m_matcher,
        o2m_weight=2.0,
        use_o2m_matcher_on_o2m_aux=False,
        scale_by_find_batch_size=True,
    )
    return wrapper, matcher


def vendor_losses(monkeypatch, outputs: dict, target_boxes: torch.Tensor, num_boxes: torch.Tensor) -> dict:
    """Upstream's loss on the same tensors: its model adds xyxy boxes and the o2o matches to each layer."""
    wrapper, matcher = vendor_criterion(monkeypatch)
    valid = torch.arange(target_boxes.shape[1]) < num_boxes[:, None]
    packed = target_boxes[valid]
    targets = {
        "boxes": packed,
        "boxes_xyxy": box_ops.box_cxcywh_to_xyxy(packed),
        "boxes_padded": target_boxes,
        "num_boxes": num_boxes,
        "object_ids_padded": torch.where(valid, torch.arange(valid.numel()).view_as(valid), -1),
    }
    layers = []
    for layer in [outputs, *outputs["aux_outputs"]]:
        out = {key: value for key, value in layer.items() if key != "aux_outputs"}
        out["pred_boxes_xyxy"] = box_ops.box_cxcywh_to_xyxy(out["pred_boxes"])
        out["pred_boxes_xyxy_o2m"] = box_ops.box_cxcywh_to_xyxy(out["pred_boxes_o2m"])
        out["indices"] = matcher(out, targets)
        layers.append(out)
    nested = dict(layers[0], aux_outputs=layers[1:])
    sam3_output = vendor_harness.vendor_class("sam3.model.model_misc", "SAM3Output")([[nested]])
    return wrapper(sam3_output, [targets])


def our_name(vendor_key: str) -> str:
    if vendor_key == "core_loss":
        return "loss"
    return vendor_key.replace("presence_loss", "loss_presence").replace("_aux_", "_")


@pytest.mark.parametrize("num_preds", [30, 200])  # below and at upstream's pad_n_queries
def test_loss_equals_vendor(vendor, monkeypatch, single_process_group, num_preds):
    ours_in, target_boxes, num_boxes = random_outputs(4, num_preds=num_preds)
    theirs_in = {key: value for key, value in ours_in.items() if key != "aux_outputs"}
    theirs_in = {key: value.detach().clone().requires_grad_() for key, value in theirs_in.items()}
    theirs_in["aux_outputs"] = [
        {key: value.detach().clone().requires_grad_() for key, value in aux.items()} for aux in ours_in["aux_outputs"]
    ]

    ours = SetCriterion()(ours_in, target_boxes, num_boxes)
    theirs = vendor_losses(monkeypatch, theirs_in, target_boxes, num_boxes)
    term_diffs = {}
    for key, value in theirs.items():
        if key.startswith(("ce_f1", "presence_dec_acc")):  # logged metrics, not loss terms
            continue
        if key.startswith("presence_loss") and key.endswith("_o2m"):  # upstream logs a constant 0
            assert value.item() == 0
            continue
        term_diffs[our_name(key)] = abs(ours[our_name(key)].item() - value.item())
    assert set(term_diffs) == set(ours)
    assert ours["loss_ce_o2m"].item() > 0
    # The total (~600-1200) sits where a float32 ulp is 6e-5..1.2e-4 and both sides sum in their own order,
    # so it is compared relatively; each term (~0.1-5) absolutely.
    total_diff = term_diffs.pop("loss") / abs(theirs["core_loss"].item())
    assert total_diff < TOLERANCE
    assert max(term_diffs.values()) < TOLERANCE, sorted(term_diffs.items(), key=lambda kv: -kv[1])[:3]

    ours["loss"].backward()
    theirs["core_loss"].backward()
    grad_diff = max((a.grad - b.grad).abs().max().item() for a, b in zip(leaves(ours_in), leaves(theirs_in)))
    assert grad_diff < TOLERANCE
