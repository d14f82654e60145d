"""The model's image/prompt seam: `forward(batch)` is `ground(encode_image(batch.images), batch)` bit for bit, in
eval and in training mode, with text and exemplar-box prompts, and features encoded once serve any prompts."""

from __future__ import annotations

import pytest
import torch

from sam3lite_core.batch import Batch
from sam3lite_core.model.sam3lite import ImageFeatures, build_model


def _batch(with_boxes: bool) -> Batch:
    """Two images, three find queries over two prompts; optional exemplar boxes (one padded slot)."""
    g = torch.Generator().manual_seed(0)
    boxes = labels = padding = None
    if with_boxes:
        boxes = torch.tensor([[[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]] * 3)
        labels = torch.tensor([[1, 0], [1, 1], [0, 0]])
        padding = torch.tensor([[False, False], [False, True], [False, True]])
    return Batch(
        images=torch.rand(2, 3, 112, 112, generator=g) * 2 - 1,
        img_ids=torch.tensor([0, 1, 1]),
        prompts=["a cat", "dog"],
        prompt_ids=torch.tensor([0, 0, 1]),
        box_prompts=boxes,
        box_labels=labels,
        box_padding=padding,
    )


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key == "aux_outputs":
            for layer_a, layer_b in zip(value, b[key], strict=True):
                _assert_identical(layer_a, layer_b)
        else:
            assert torch.equal(value, b[key]), key


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("with_boxes", [False, True], ids=["text", "boxes"])
def test_ground_on_encoded_features_is_forward(training, with_boxes):
    torch.manual_seed(0)
    model = build_model("tiny").train(training)
    batch = _batch(with_boxes)
    with torch.no_grad():
        torch.manual_seed(1)  # the same dropout draws on both sides in training mode
        plain = model(batch)
        torch.manual_seed(1)
        features = model.encode_image(batch.images)
        seam = model.ground(features, batch)
    assert isinstance(features, ImageFeatures) and features.features.shape[0] == 2
    _assert_identical(plain, seam)


def test_features_encoded_once_serve_other_prompts():
    """Features of the batch's images grounded against a second set of queries equal a fresh forward of them."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    first, second = _batch(False), _batch(True)
    second.prompts = ["a red bird"]
    second.prompt_ids = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        features = model.encode_image(first.images)
        model.ground(features, first)
        _assert_identical(model.ground(features, second), model(second))
