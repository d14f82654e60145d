"""Box conversions, inverse_sigmoid and IoU: round trips, known values, and upstream parity."""

from __future__ import annotations

import importlib

import pytest
import torch

from sam3lite_core import box_ops


def _random_cxcywh(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    size = torch.rand(n, 2, generator=g) * 0.3 + 0.01
    return torch.cat([centre, size], dim=-1)


def test_cxcywh_xyxy_round_trip_and_known_value():
    boxes = _random_cxcywh(50)
    assert torch.allclose(box_ops.box_xyxy_to_cxcywh(box_ops.box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)
    xyxy = box_ops.box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4]))
    assert torch.allclose(xyxy, torch.tensor([0.4, 0.3, 0.6, 0.7]))
    # Leading dims are kept.
    assert box_ops.box_cxcywh_to_xyxy(boxes.view(5, 10, 4)).shape == (5, 10, 4)


def test_inverse_sigmoid_inverts_and_is_bounded():
    x = torch.linspace(0.01, 0.99, 99)
    assert torch.allclose(box_ops.inverse_sigmoid(x).sigmoid(), x, atol=1e-5)
    bound = torch.log(torch.tensor(1 / 1e-3))  # x = 1: log(1 / eps)
    extremes = box_ops.inverse_sigmoid(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    assert torch.allclose(extremes, torch.stack([-bound, -bound, bound, bound]))


def test_iou_and_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 5.0, 5.0]])
    assert torch.allclose(box_ops.box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    # Disjoint boxes: IoU 0, enclosing box 5x5 = 25, union 4 + 1 = 5 -> GIoU = -(25 - 5) / 25.
    assert torch.allclose(box_ops.generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 1.0, -0.8]]))


def test_matches_upstream(vendor):
    upstream = importlib.import_module("sam3.model.box_ops")
    misc = importlib.import_module("sam3.model.model_misc")
    boxes = _random_cxcywh(40, seed=1)
    other = _random_cxcywh(30, seed=2)
    xyxy, other_xyxy = box_ops.box_cxcywh_to_xyxy(boxes), box_ops.box_cxcywh_to_xyxy(other)
    assert torch.equal(xyxy, upstream.box_cxcywh_to_xyxy(boxes))
    assert torch.equal(box_ops.box_xyxy_to_cxcywh(xyxy), upstream.box_xyxy_to_cxcywh(xyxy))
    x = torch.linspace(-0.2, 1.2, 141)
    assert torch.equal(box_ops.inverse_sigmoid(x), misc.inverse_sigmoid(x))
    iou, _ = upstream.box_iou(xyxy, other_xyxy)
    assert box_ops.box_iou(xyxy, other_xyxy) == pytest.approx(iou, abs=1e-6)
    giou = upstream.generalized_box_iou(xyxy, other_xyxy)
    assert box_ops.generalized_box_iou(xyxy, other_xyxy) == pytest.approx(giou, abs=1e-6)
