"""Tiled inference: windows cover the image with the asked overlap; boxes found in windows come back in image
coordinates; a view cut by an inner window edge gives way to a whole view; duplicates across an overlap merge;
one window is the untiled answer; tiled features are cached like an image's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3lite_core.model.sam3lite import ImageFeatures, build_model
from sam3lite_core.predictor import WINDOWS_PER_ENCODE, Predictor
from sam3lite_core.tiling import MAX_WINDOWS, TileSettings, drop_cut_views, merge_windows, tile_windows
from sam3lite_core.weights import save_checkpoint

HEIGHT, WIDTH = 1500, 2000
# (x0, y0, x1, y1) px. A: far from the centre, across the inner edge x = 1733 of window column 1333..1733 (a
# 23 px sliver there) and whole in column 1600..2000. B: whole in both columns 1067..1467 and 1333..1733.
OBJECT_A = (1710, 1300, 1800, 1360)
OBJECT_B = (1400, 200, 1450, 240)
TILE = TileSettings(size=400, overlap=0.25, merge_iou=0.5)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiling") / "tiny.ckpt"
    save_checkpoint(path, build_model("tiny"))
    return Predictor.from_checkpoint(path)


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap"),
    [
        (HEIGHT, WIDTH, 400, 0.25),
        (480, 640, 256, 0.2),
        (1024, 1024, 512, 0.0),
        (300, 2000, 512, 0.5),
        (100, 80, 512, 0.2),
    ],
)
def test_windows_cover_the_image_with_the_overlap(height, width, size, overlap):
    windows = tile_windows(height, width, TileSettings(size=size, overlap=overlap))
    covered = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in windows.tolist():
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(size, width), min(size, height))
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    for axis, length in ((0, width), (1, height)):
        starts = sorted(set(windows[:, axis].tolist()))
        side = min(size, length)
        assert all(side - (b - a) >= overlap * side - 1 for a, b in zip(starts, starts[1:]))


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="overlap"):
        TileSettings(size=512, overlap=1.0)
    with pytest.raises(ValueError, match="merge_iou"):
        TileSettings(size=512, merge_iou=0.0)
    with pytest.raises(ValueError, match="at least 16"):
        TileSettings(size=4)
    with pytest.raises(ValueError, match=f"at most {MAX_WINDOWS}"):
        tile_windows(10_000, 10_000, TileSettings(size=64))


def test_merge_drops_cut_views_and_merges_duplicates():
    """Two windows side by side (0..100 and 80..180 on a 180 x 100 image), two prompts."""
    windows = torch.tensor([[0, 0, 100, 100], [80, 0, 180, 100]])
    boxes = torch.zeros(2, 2, 3, 4)
    scores = torch.zeros(2, 2, 3)
    # Prompt 0: an object at x 95..130 is a 5 px sliver in window 0 (cut at x = 100), whole in window 1.
    boxes[0, 0, 0], scores[0, 0, 0] = torch.tensor([95.0, 10, 100, 30]), 0.9
    boxes[1, 0, 0], scores[1, 0, 0] = torch.tensor([95.0, 10, 130, 30]), 0.8
    # Prompt 1: an object whole in the overlap, found by both windows; and a low score left out.
    boxes[0, 1, 0], scores[0, 1, 0] = torch.tensor([82.0, 50, 96, 70]), 0.7
    boxes[1, 1, 0], scores[1, 1, 0] = torch.tensor([82.5, 50, 96, 70.5]), 0.75
    boxes[1, 1, 1], scores[1, 1, 1] = torch.tensor([10.0, 10, 20, 20]), 0.05
    keep = drop_cut_views(boxes[:, 0, 0], torch.tensor([0, 1]), windows)
    assert keep.tolist() == [False, True]
    merged = merge_windows(boxes, scores, windows, merge_iou=0.5, min_score=0.1)
    assert [b.tolist() for b, _ in merged] == [[[95.0, 10, 130, 30]], [[82.5, 50, 96, 70.5]]]
    assert [s.tolist() for _, s in merged] == [pytest.approx([0.8]), pytest.approx([0.75])]


def test_an_object_larger_than_the_overlap_keeps_its_pieces():
    """No window holds either piece clear of its inner edges, so neither is dropped."""
    windows = torch.tensor([[0, 0, 100, 100], [80, 0, 180, 100]])
    pieces = torch.tensor([[20.0, 10, 100, 30], [80.0, 10, 160, 30]])
    assert drop_cut_views(pieces, torch.tensor([0, 1]), windows).tolist() == [True, True]


def _synthetic_image() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in (OBJECT_A, OBJECT_B):
        image[y0:y1, x0:x1] = 255
    return image


def _bright_box_model(model, monkeypatch) -> list[torch.Tensor]:
    """Replace the model's two halves by a detector whose output we know: encode_image finds the bright pixels of
    each window (normalised window xyxy, or none), ground answers that box with a high score, plus two
    low-scoring decoys. Returns the list that receives each encoded batch's per-window boxes."""
    seen: list[torch.Tensor] = []

    def encode_image(images: torch.Tensor) -> ImageFeatures:
        size = images.shape[-1]
        boxes = torch.full((len(images), 4), float("nan"))
        for t, bright in enumerate(images.mean(dim=1) > 0):  # mid-grey in [-1, 1]: the resized object's edge
            ys, xs = bright.nonzero(as_tuple=True)
            if len(xs):
                boxes[t] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() / size
        seen.append(boxes)
        # pos as the contract has it: one table broadcast over the batch (the fake needs none of its values).
        return ImageFeatures(boxes, torch.zeros(1, 1, 1, 1).expand(len(images), 1, 1, 1))

    def ground(features: ImageFeatures, batch) -> dict:
        boxes = features.features[batch.img_ids]  # [Q, 4]
        found = boxes.isfinite().all(dim=1)  # [Q]
        decoys = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]]).expand(len(boxes), 2, 4)
        pred = torch.cat([boxes.nan_to_num(0.0)[:, None], decoys], dim=1)  # [Q, 3, 4]
        logits = torch.full((len(boxes), 3, 1), -10.0)
        logits[:, 0, 0] = torch.where(found, 10.0, -10.0)
        return {"pred_logits": logits, "pred_boxes_xyxy": pred, "presence_logit_dec": torch.full((len(boxes), 1), 10.0)}

    monkeypatch.setattr(model, "encode_image", encode_image)
    monkeypatch.setattr(model, "ground", ground)
    return seen


def test_tiled_boxes_come_back_in_image_coordinates(predictor, monkeypatch):
    seen = _bright_box_model(predictor.model, monkeypatch)
    predictor.features.clear()
    found = predictor.predict(_synthetic_image(), ["bright", "also bright"], threshold=0.5, tile=TILE)[0]
    windows = tile_windows(HEIGHT, WIDTH, TILE)
    # Every window encoded once, WINDOWS_PER_ENCODE at a time (a trunk batch of all 35 would not fit a GPU at 1008 px).
    assert [len(batch) for batch in seen] == [8, 8, 8, 8, 3] and len(windows) == 35 == WINDOWS_PER_ENCODE * 4 + 3
    assert int(torch.cat(seen).isfinite().all(dim=1).sum()) == 4  # A: sliver + whole; B: whole twice
    for dets in found:
        assert len(dets) == 2  # one box per object: the sliver dropped, B's duplicate merged
        by_x = sorted(dets, key=lambda d: d.box_xyxy[0])
        for det, expected in zip(by_x, (OBJECT_B, OBJECT_A)):
            assert det.box_xyxy == pytest.approx(expected, abs=400 / 112 + 1)  # one model-input pixel
            cx, cy, w, h = det.box_cxcywh
            assert cx == pytest.approx((expected[0] + expected[2]) / 2 / WIDTH, abs=2e-3)
            assert cy == pytest.approx((expected[1] + expected[3]) / 2 / HEIGHT, abs=2e-3)
    # The same image untiled: one model input for 2000 px, the objects shrink to a few pixels.
    untiled = predictor.predict(_synthetic_image(), "bright", threshold=0.5)[0][0]
    assert len(untiled) == 1  # the fake sees both objects as one bright region spanning them


def test_one_window_is_the_untiled_answer(predictor):
    image = np.random.default_rng(0).integers(0, 255, size=(90, 120, 3), dtype=np.uint8)
    tiled = predictor.predict(image, ["red circle", "blue square"], tile=TileSettings(size=512, merge_iou=0.6))[0]
    plain = predictor.predict(image, ["red circle", "blue square"], nms_iou=0.6)[0]
    for a, b in zip(tiled, plain):
        assert [d.score for d in a] == pytest.approx([d.score for d in b], abs=1e-6)
        assert np.allclose([d.box_xyxy for d in a], [d.box_xyxy for d in b], atol=1e-4)


def test_tiled_features_are_cached_and_exemplars_refused(predictor):
    image = np.random.default_rng(1).integers(0, 255, size=(200, 300, 3), dtype=np.uint8)
    tile = TileSettings(size=128, overlap=0.2)
    calls = []
    hook = predictor.model.backbone.vision_backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = predictor.predict(image, ["a", "b", "c"], tile=tile, chunk_size=4)
        again = predictor.predict(image, ["a", "b", "c"], tile=tile, chunk_size=64)
        predictor.predict(image, ["a"])  # the whole image is another entry
    finally:
        hook.remove()
    assert len(calls) == 2
    for dets_first, dets_again in zip(first[0], again[0]):
        assert [d.score for d in dets_again] == pytest.approx([d.score for d in dets_first], abs=1e-5)
    with pytest.raises(ValueError, match="text prompts only"):
        predictor.predict(image, [{"text": "a", "boxes": [[1, 2, 30, 40]]}], tile=tile)
