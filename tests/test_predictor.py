"""Predictor: loads a real checkpoint file, answers K prompts per image like K single calls, thresholds, sorts,
suppresses and caps detections, converts boxes consistently, and refuses what box-only SAM3 cannot do."""

from __future__ import annotations

import hashlib

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision.ops import box_iou

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.predictor import Detection, Predictor, image_token, load_rgb
from sam3lite_core.weights import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    save_checkpoint(path, build_model("tiny"))
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)  # H=48, W=64: not square on purpose


def test_shapes_fields_and_order(predictor, image):
    out = predictor.predict([image, PIL.Image.fromarray(image)], ["red circle", "blue square"])
    num_queries = predictor.model.cfg.transformer.num_queries
    assert len(out) == 2 and all(len(per_image) == 2 for per_image in out)
    for per_image in out:
        for dets, text in zip(per_image, ["red circle", "blue square"]):
            assert len(dets) == num_queries  # threshold 0 keeps every query
            assert all(isinstance(d, Detection) and d.prompt == text for d in dets)
            scores = [d.score for d in dets]
            assert scores == sorted(scores, reverse=True) and 0.0 <= min(scores) and max(scores) <= 1.0
            for d in dets[:5]:
                x0, y0, x1, y1 = d.box_xyxy
                cx, cy, w, h = d.box_cxcywh
                assert cx == pytest.approx((x0 + x1) / 2 / 64, abs=1e-5)
                assert cy == pytest.approx((y0 + y1) / 2 / 48, abs=1e-5)
                assert w == pytest.approx((x1 - x0) / 64, abs=1e-5)
                assert h == pytest.approx((y1 - y0) / 48, abs=1e-5)
    # The PIL image and the array are the same pixels, so the same answer.
    assert out[0][0][0] == out[1][0][0]


def test_batched_prompts_match_single_calls(predictor, image):
    prompts = ["red circle", "blue square", "green triangle", "red circle", "yellow star"]
    together = predictor.predict(image, prompts, chunk_size=2)[0]
    for text, dets in zip(prompts, together):
        alone = predictor.predict(image, text)[0][0]
        assert [d.score for d in dets] == pytest.approx([d.score for d in alone], abs=1e-5)
        assert np.allclose([d.box_xyxy for d in dets], [d.box_xyxy for d in alone], atol=1e-3)


def test_threshold_max_detections_and_nms(predictor, image):
    everything = predictor.predict(image, "red circle")[0][0]
    middle = everything[len(everything) // 2].score
    kept = predictor.predict(image, "red circle", threshold=middle)[0][0]
    assert kept == [d for d in everything if d.score >= middle]
    assert predictor.predict(image, "red circle", max_detections=3)[0][0] == everything[:3]
    suppressed = predictor.predict(image, "red circle", nms_iou=0.5)[0][0]
    assert 0 < len(suppressed) <= len(everything)
    assert suppressed[0] == everything[0]
    boxes = torch.tensor([d.box_xyxy for d in suppressed])
    overlap = box_iou(boxes, boxes).fill_diagonal_(0)
    assert float(overlap.max()) <= 0.5 + 1e-6
    assert predictor.predict(image, "red circle", threshold=1.0)[0][0] == []


def test_exemplar_boxes(predictor, image):
    prompt = {"text": "red circle", "boxes": [[4, 4, 20, 30], [30, 10, 60, 40]], "labels": [1, 0]}
    with_boxes = predictor.predict(image, [prompt, "red circle"])[0]
    assert with_boxes[0][0].prompt == "red circle"
    assert [d.score for d in with_boxes[0]] != [d.score for d in with_boxes[1]]  # the exemplars are read
    positive = predictor.predict(image, [{**prompt, "labels": [1, 1]}])[0][0]
    assert [d.score for d in positive] != [d.score for d in with_boxes[0]]  # and so are their labels
    moved = predictor.predict(image, [{**prompt, "boxes": [[40, 40, 60, 60], [30, 10, 60, 40]]}])[0][0]
    assert [d.score for d in moved] != [d.score for d in with_boxes[0]]  # and where they are


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"text": "a", "points": [[1, 2]]}, "point"),
        ({"text": "a", "masks": [[0]]}, "mask"),
        (3, "string or a mapping"),
        ({"text": "a", "boxes": [[1, 2, 3]]}, "x0, y0, x1, y1"),
    ],
)
def test_refused_prompts(predictor, image, prompt, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(image, [prompt])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"nms_iou": 0.0}, "nms_iou"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_refused_options(predictor, image, option, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(image, "a", **option)


def test_bad_inputs(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError):
        Predictor.from_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        Predictor.from_checkpoint(garbage)
    with pytest.raises(ValueError, match="precision"):
        Predictor.from_checkpoint(checkpoint, precision="fp8")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot be decoded"):
        load_rgb(broken)
    with pytest.raises(ValueError, match="an image must be"):
        load_rgb(np.zeros((4, 4, 3), dtype=np.float32))


def test_image_token_is_md5_of_rgb_pixels(tmp_path, image):
    path = tmp_path / "x.png"
    PIL.Image.fromarray(image).save(path)
    pixels = load_rgb(path)
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert image_token(pixels) == hashlib.md5(image.tobytes()).hexdigest()
    assert image_token(load_rgb(torch.from_numpy(image).permute(2, 0, 1))) == image_token(image)


def test_backbone_runs_once_per_image(checkpoint, image):
    predictor = Predictor.from_checkpoint(checkpoint)
    calls = []
    hook = predictor.model.backbone.vision_backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = predictor.predict(image, ["a", "b", "c", "d", "e"], chunk_size=2)  # 3 chunks
        assert len(calls) == 1 and len(predictor.features) == 1
        again = predictor.predict(image, ["a", "b", "c", "d", "e"], chunk_size=5)
        assert len(calls) == 1  # cached features give the same answer (up to the chunking's float rounding)
        for dets_first, dets_again in zip(first[0], again[0]):
            assert [d.score for d in dets_again] == pytest.approx([d.score for d in dets_first], abs=1e-5)
        predictor.predict(image[::-1].copy(), "a")  # another image: a miss
        assert len(calls) == 2 and len(predictor.features) == 2
    finally:
        hook.remove()
