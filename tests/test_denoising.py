"""Denoising queries: the noised boxes, their isolation from the matching queries, and their loss terms."""

from __future__ import annotations

import pytest
import torch

from sam3lite_core import box_ops
from sam3lite_core.batch import Batch
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.train.denoising import DenoisingSettings, make_denoising_queries
from sam3lite_core.train.losses import LossSettings, SetCriterion

# 3 find queries: two boxes, none, one; Tmax = 2.
TARGETS = torch.tensor(
    [
        [[0.30, 0.30, 0.20, 0.20], [0.60, 0.55, 0.10, 0.30]],
        [[0.00, 0.00, 0.00, 0.00], [0.00, 0.00, 0.00, 0.00]],
        [[0.50, 0.50, 0.40, 0.40], [0.00, 0.00, 0.00, 0.00]],
    ]
)
NUM_BOXES = torch.tensor([2, 0, 1])


def test_off_or_without_boxes_there_are_no_queries():
    assert make_denoising_queries(TARGETS, NUM_BOXES, DenoisingSettings(groups=0)) is None
    assert (
        make_denoising_queries(torch.zeros(3, 2, 4), torch.zeros(3, dtype=torch.long), DenoisingSettings(groups=2))
        is None
    )


@pytest.mark.parametrize("noise", [0.1, 0.4, 1.0])
def test_every_edge_moves_within_the_noise_bound(noise):
    torch.manual_seed(0)
    targets = torch.rand(50, 4, 4) * 0.5 + torch.tensor([0.25, 0.25, 0.0, 0.0])
    num_boxes = torch.randint(0, 5, (50,))
    dn = make_denoising_queries(targets, num_boxes, DenoisingSettings(groups=3, box_noise=noise))
    assert dn.anchors.shape == (12, 50, 4)
    assert dn.target_idx.tolist() == [0, 1, 2, 3] * 3
    assert torch.equal(dn.valid, (torch.arange(4).repeat(3)[None] < num_boxes[:, None]))
    query, slot = dn.valid.nonzero(as_tuple=True)
    noised = box_ops.box_cxcywh_to_xyxy(dn.anchors[slot, query])
    source = targets[query, dn.target_idx[slot]]
    bound = noise * source[:, 2:].repeat(1, 2) / 2
    assert ((noised - box_ops.box_cxcywh_to_xyxy(source)).abs() <= bound + 1e-6).all()
    assert (noised >= 0).all() and (noised <= 1).all()
    assert (dn.anchors[..., 2:] > 0).all()  # padding slots too: the decoder takes logits of every anchor
    # The copies differ: each group draws its own noise.
    assert not torch.equal(dn.anchors[:4], dn.anchors[4:8])


def _batch() -> Batch:
    return Batch(
        images=torch.randn(2, 3, 112, 112),
        img_ids=torch.tensor([0, 0, 1]),
        prompts=["red circle", "blue square"],
        prompt_ids=torch.tensor([0, 1, 0]),
        target_boxes=TARGETS,
        num_boxes=NUM_BOXES,
    )


def test_denoising_queries_are_invisible_to_the_matching_queries():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    keys = set(model.state_dict())
    batch = _batch()
    dn = make_denoising_queries(TARGETS, NUM_BOXES, DenoisingSettings(groups=2))
    with_dn, without = model(batch, dn.anchors), model(batch)
    assert with_dn["pred_boxes_dn"].shape == (3, 4, 4) and with_dn["pred_logits_dn"].shape == (3, 4, 1)
    assert "pred_boxes_dn" not in without
    for key in ("pred_logits", "pred_boxes", "presence_logit_dec", "pred_logits_o2m", "pred_boxes_o2m"):
        torch.testing.assert_close(with_dn[key], without[key], rtol=0, atol=1e-6)
        torch.testing.assert_close(with_dn["aux_outputs"][0][key], without["aux_outputs"][0][key], rtol=0, atol=1e-6)
    assert "pred_boxes_dn" in with_dn["aux_outputs"][0]
    assert set(model.state_dict()) == keys  # no parameter of its own: checkpoints are unchanged
    with pytest.raises(ValueError, match="training"):
        model.eval()(batch, dn.anchors)


def _outputs(dn_boxes: torch.Tensor, dn_logits: torch.Tensor) -> dict:
    gen = torch.Generator().manual_seed(1)
    layer = {
        "pred_logits": torch.randn(3, 5, 1, generator=gen),
        "pred_boxes": torch.rand(3, 5, 4, generator=gen) * 0.5 + 0.1,
        "presence_logit_dec": torch.randn(3, 1, generator=gen),
        "pred_logits_dn": dn_logits,
        "pred_boxes_dn": dn_boxes,
    }
    return dict(layer, aux_outputs=[dict(layer)])


def test_each_denoising_query_is_scored_against_its_own_box_only():
    dn = make_denoising_queries(TARGETS, NUM_BOXES, DenoisingSettings(groups=2))
    exact = TARGETS[:, dn.target_idx].clone()  # [Q, Ndn, 4]: every slot predicts the box it came from
    exact[~dn.valid] = torch.tensor([0.5, 0.5, 0.2, 0.2])
    logits = torch.full((3, 4, 1), 3.0)
    criterion = SetCriterion(LossSettings(pad_num_queries=None))
    base = criterion(_outputs(exact, logits), TARGETS, NUM_BOXES)
    losses = criterion(_outputs(exact, logits), TARGETS, NUM_BOXES, dn)
    for suffix in ("_dn", "_0_dn"):
        assert losses[f"loss_bbox{suffix}"].item() == pytest.approx(0.0, abs=1e-6)
        assert losses[f"loss_giou{suffix}"].item() == pytest.approx(0.0, abs=1e-6)
        assert losses[f"loss_ce{suffix}"].item() > 0  # the soft target is p^0.25 at IoU 1, below p
    assert set(losses) - set(base) == {
        f"{key}{suffix}" for key in ("loss_ce", "loss_bbox", "loss_giou") for suffix in ("_dn", "_0_dn")
    }
    assert losses["loss"] > base["loss"]

    # Swapping two valid slots' predictions costs box loss (no matching), moving padding slots costs nothing.
    swapped = exact.clone()
    swapped[0, [0, 1]] = exact[0, [1, 0]]
    assert criterion(_outputs(swapped, logits), TARGETS, NUM_BOXES, dn)["loss_bbox_dn"] > 0.01
    moved, moved_logits = exact.clone(), logits.clone()
    moved[~dn.valid], moved_logits[~dn.valid] = torch.tensor([0.1, 0.9, 0.05, 0.05]), -5.0
    again = criterion(_outputs(moved, moved_logits), TARGETS, NUM_BOXES, dn)
    torch.testing.assert_close(again["loss"], losses["loss"])

    # The box terms are per copy: two groups weigh what one does.
    one = make_denoising_queries(TARGETS, NUM_BOXES, DenoisingSettings(groups=1))
    shifted = TARGETS[:, one.target_idx] + 0.05
    doubled = torch.cat([shifted, shifted], dim=1)
    l1_one = criterion(_outputs(shifted, logits[:, :2]), TARGETS, NUM_BOXES, one)["loss_bbox_dn"]
    l1_two = criterion(_outputs(doubled, logits), TARGETS, NUM_BOXES, dn)["loss_bbox_dn"]
    torch.testing.assert_close(l1_one, l1_two)
