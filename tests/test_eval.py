"""COCO evaluation and prediction dumping: faster-coco-eval agrees with pycocotools on all 12 stats, the
per-class table and PR curves are consistent with them, edge cases do not crash, and detections are
written exactly as upstream's PostProcessImage + PredictionDumper write them."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import random
from types import SimpleNamespace

import pytest
import torch
import vendor_harness
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam3lite_core.eval.coco_eval import STAT_NAMES, evaluate_predictions
from sam3lite_core.eval.predictions import coco_detections, merge_detections

CATEGORIES = [{"id": i, "name": name} for i, name in [(1, "cat"), (2, "dog"), (5, "bird"), (9, "fish")]]


def synthetic_coco(seed: int = 0) -> tuple[dict, list[dict]]:
    """Six 640x480 images with 1-5 boxes of three sizes (fish never appears), ids from 1; detections are
    jittered copies (some with the wrong class, some missing) plus low-scoring random boxes."""
    rng = random.Random(seed)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(1, 7)]
    annotations, detections = [], []
    for image in images:
        for _ in range(rng.randint(1, 5)):
            category = rng.choice([1, 2, 5])
            w, h = rng.choice([10, 50, 200]), rng.choice([12, 60, 180])
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            if rng.random() < 0.8:
                label = category if rng.random() < 0.85 else rng.choice([1, 2, 5])
                jitter = [rng.uniform(-5, 5), rng.uniform(-5, 5), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)]
                box = [x + jitter[0], y + jitter[1], w * jitter[2], h * jitter[3]]
                detections.append(
                    {"image_id": image["id"], "category_id": label, "bbox": box, "score": round(rng.random(), 5)}
                )
        for _ in range(3):
            box = [rng.uniform(0, 500), rng.uniform(0, 400), 40, 40]
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": rng.choice([1, 2, 5, 9]),
                    "bbox": box,
                    "score": round(rng.random() * 0.5, 5),
                }
            )
    return {"images": images, "categories": CATEGORIES, "annotations": annotations}, detections


def pycocotools_stats(gt: dict, detections: list[dict], tmp_path) -> list[float]:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        coco = COCO(str(path))
        evaluator = COCOeval(coco, coco.loadRes([dict(det) for det in detections]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(value) for value in evaluator.stats]


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_matches_pycocotools(tmp_path, seed):
    gt, detections = synthetic_coco(seed)
    ours = evaluate_predictions(gt, detections)
    reference = pycocotools_stats(gt, detections, tmp_path)
    assert 0.05 < ours.AP < 0.95
    assert max(abs(a - b) for a, b in zip(ours.stats, reference)) < 1e-12
    assert evaluate_predictions(tmp_path / "gt.json", detections).stats == ours.stats  # from a JSON path too


def test_per_class_table_and_curves_are_consistent_with_the_stats():
    gt, detections = synthetic_coco(0)
    result = evaluate_predictions(gt, detections)
    rows = {row.name: row for row in result.per_class}
    assert [row.category_id for row in result.per_class] == [1, 2, 5, 9]
    assert sum(row.num_gt for row in result.per_class) == len(gt["annotations"])
    fish = rows.pop("fish")  # no ground truth: undefined, not zero
    assert (fish.AP, fish.num_gt, fish.precision_50) == (-1.0, 0, [])
    assert result.AP == pytest.approx(sum(row.AP for row in rows.values()) / 3, abs=1e-12)
    assert result.AP50 == pytest.approx(sum(row.AP50 for row in rows.values()) / 3, abs=1e-12)
    assert result.AR100 == pytest.approx(sum(row.AR100 for row in rows.values()) / 3, abs=1e-12)
    assert len(result.recall_thresholds) == len(result.precision_50) == 101
    assert result.AP50 == pytest.approx(sum(result.precision_50) / 101, abs=1e-12)
    assert result.AP == pytest.approx(sum(result.precision_50_95) / 101, abs=1e-12)
    for row in rows.values():
        assert row.AP50 == pytest.approx(sum(row.precision_50) / 101, abs=1e-12)
    assert json.loads(json.dumps(result.to_dict()))["per_class"][0]["name"] == "cat"


def test_no_detections_gives_zeros(tmp_path):
    gt, _ = synthetic_coco(0)
    result = evaluate_predictions(gt, [])
    assert result.stats == [0.0] * len(STAT_NAMES)
    assert result.num_detections == 0 and result.num_images == 6


def test_bad_ids_are_refused():
    gt, detections = synthetic_coco(0)
    gt["annotations"][0]["id"] = 0
    with pytest.raises(ValueError, match="annotation id 0"):
        evaluate_predictions(gt, detections)
    gt, detections = synthetic_coco(0)
    with pytest.raises(ValueError, match=r"image ids absent .* \[42\]"):
        evaluate_predictions(gt, [*detections, dict(detections[0], image_id=42)])


def model_outputs(seed: int, num_queries: int, num_preds: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, num_preds, 1, generator=gen)
    logits[:, : num_preds // 4] = 1.5  # ties in score, so the heap's tie-breaking matters
    return {
        "pred_logits": logits,
        "pred_boxes": torch.rand(num_queries, num_preds, 4, generator=gen) * 0.5 + 0.25,
        "presence_logit_dec": torch.randn(num_queries, 1, generator=gen),
    }


def test_detections_hand_checked():
    outputs = {
        "pred_logits": torch.tensor([[[0.0], [2.0]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.25, 0.5], [0.25, 0.25, 0.5, 0.5]]]),
        "presence_logit_dec": torch.tensor([[0.0]]),
    }
    detections = coco_detections(outputs, [7], [3], torch.tensor([[100, 200]]))  # height 100, width 200
    assert detections[0] == {"image_id": 7, "category_id": 3, "bbox": [75.0, 25.0, 50.0, 50.0], "score": 0.25}
    assert detections[1]["bbox"] == [0.0, 0.0, 100.0, 50.0]
    assert detections[1]["score"] == round(float(torch.sigmoid(torch.tensor(2.0))) * 0.5, 5)


def test_merge_keeps_top_scores_per_image_and_first_rank_per_pair():
    rank0 = [
        {"image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1], "score": s} for c, s in [(1, 0.9), (2, 0.1), (1, 0.5)]
    ]
    rank1 = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.99},  # repeat of rank 0's pair
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.3},
    ]
    merged = merge_detections([rank0, rank1], max_dets=2)
    assert sorted((d["image_id"], d["score"]) for d in merged) == [(1, 0.5), (1, 0.9), (2, 0.3)]


def test_detections_equal_vendor_dumper(vendor, tmp_path, monkeypatch):
    coco_writer = importlib.import_module("sam3.eval.coco_writer")
    postprocessor = vendor_harness.vendor_class("sam3.eval.postprocessors", "PostProcessImage")(
        max_dets_per_img=-1, use_original_ids=True, use_original_sizes_box=True, use_presence=True
    )
    sam3_output = vendor_harness.vendor_class("sam3.model.model_misc", "SAM3Output")
    # Two "ranks": image 1 has 2 categories x 60 predictions (> 100), rank 1 repeats (image 1, category 1).
    batches = [([1, 1, 2], [1, 2, 1]), ([1, 3], [1, 2])]
    ours, dumpers = [], []
    for seed, (image_ids, category_ids) in enumerate(batches):
        outputs = model_outputs(seed, len(image_ids), num_preds=60)
        sizes = torch.tensor([[480, 640], [480, 640], [375, 500]])[: len(image_ids)]
        ours.append(coco_detections(outputs, image_ids, category_ids, sizes))
        meta = SimpleNamespace(
            original_size=sizes,
            original_image_id=torch.tensor(image_ids),
            coco_image_id=torch.tensor(image_ids),
            original_category_id=torch.tensor(category_ids, dtype=torch.int),
        )
        dumper = coco_writer.PredictionDumper(
            str(tmp_path), postprocessor, maxdets=100, iou_type="bbox", merge_predictions=True
        )
        stages = sam3_output([[outputs]], iter_mode=sam3_output.IterMode.LAST_STEP_PER_STAGE)  # as the model returns
        dumper.update(find_stages=stages, find_metadatas=[meta])
        dumpers.append(dumper)
        assert ours[-1] == dumper.dump
    monkeypatch.setattr(coco_writer, "all_gather", lambda data, force_cpu=False: [d.dump for d in dumpers])
    merged = merge_detections(ours)
    assert merged == dumpers[0].gather_and_merge_predictions()
    assert sum(d["image_id"] == 1 for d in merged) == 100
