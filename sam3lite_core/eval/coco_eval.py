"""COCO bbox mAP with faster-coco-eval: the 12 standard stats, a per-class AP table and PR-curve data.

faster-coco-eval gives the same 12 stats as pycocotools (upstream's evaluator) to every decimal, 3-5x faster
(reference/detection_anchors.md section 2); tests/test_eval.py cross-checks the two.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from sam3lite_core.data.coco_json import check_coco, read_coco

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class ClassAP:
    """One row of the per-class table; -1 (COCO's "undefined") where the class has no ground truth."""

    category_id: int
    name: str
    num_gt: int  # ground-truth boxes, crowd ones excluded
    AP: float  # IoU 0.50:0.95
    AP50: float
    AP75: float
    AR100: float
    precision_50: list[float]  # precision at each recall threshold, IoU 0.5; [] without ground truth
    precision_50_95: list[float]  # the same averaged over IoU 0.50:0.95


@dataclass
class EvalResult:
    """COCO bbox metrics (all areas, 100 detections per image unless the name says otherwise). The 12 stats
    are COCOeval.stats in order; -1 means COCO found nothing to average (e.g. no small objects)."""

    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float
    AR1: float
    AR10: float
    AR100: float
    ARs: float
    ARm: float
    ARl: float
    per_class: list[ClassAP]
    recall_thresholds: list[float]  # x axis of every PR curve: 0.00, 0.01, ..., 1.00
    precision_50: list[float]  # PR curve over all classes with ground truth (their mean), IoU 0.5
    precision_50_95: list[float]  # the same averaged over IoU 0.50:0.95
    num_images: int
    num_detections: int

    @property
    def stats(self) -> list[float]:
        """The 12 stats in COCOeval order."""
        return [getattr(self, name) for name in STAT_NAMES]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (floats, ints, strings and lists)."""
        return asdict(self)


def load_coco(coco_gt: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A checked COCO ground-truth dict from a JSON path, or a deep copy of a dict (the COCO API annotates in
    place); CocoError (a ValueError naming the file and the first bad record) when it is not usable."""
    if isinstance(coco_gt, Mapping):
        return check_coco(copy.deepcopy(dict(coco_gt)), "the ground truth")
    return read_coco(coco_gt)


def evaluate_predictions(
    coco_gt: str | Path | Mapping[str, Any], detections: Sequence[Mapping[str, Any]]
) -> EvalResult:
    """COCO bbox evaluation of `detections` ({"image_id", "category_id", "bbox": xywh pixels, "score"}, as
    from `predictions.merge_detections`) against the ground truth (a COCO JSON path or dict)."""
    dataset = load_coco(coco_gt)
    _check_ids(dataset, detections, source="the ground truth" if isinstance(coco_gt, Mapping) else str(coco_gt))
    gt = COCO(dataset, print_function=logger.debug)
    evaluator = _cocoeval(gt, detections)

    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]  # [T, R, K], area all, 100 dets
    recall = np.asarray(evaluator.eval["recall"])[:, :, 0, -1]  # [T, K]
    iou_50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    iou_75 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.75)))
    num_gt = _count_gt(dataset, params.catIds)

    per_class = []
    for k, cat_id in enumerate(params.catIds):
        # COCO marks every entry of a class without (non-crowd) ground truth with -1.
        has_gt = bool((precision[:, :, k] > -1).any())
        per_class.append(
            ClassAP(
                category_id=int(cat_id),
                name=str(gt.cats[cat_id].get("name", cat_id)),
                num_gt=num_gt[cat_id],
                AP=_mean_defined(precision[:, :, k]),
                AP50=_mean_defined(precision[iou_50, :, k]),
                AP75=_mean_defined(precision[iou_75, :, k]),
                AR100=_mean_defined(recall[:, k]),
                precision_50=precision[iou_50, :, k].tolist() if has_gt else [],
                precision_50_95=precision[:, :, k].mean(axis=0).tolist() if has_gt else [],
            )
        )
    with_gt = [k for k, row in enumerate(per_class) if row.precision_50]
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)])}
    return EvalResult(
        **stats,
        per_class=per_class,
        recall_thresholds=[round(float(r), 2) for r in params.recThrs],
        precision_50=precision[iou_50][:, with_gt].mean(axis=1).tolist() if with_gt else [],
        precision_50_95=precision[:, :, with_gt].mean(axis=(0, 2)).tolist() if with_gt else [],
        num_images=len(dataset.get("images", [])),
        num_detections=len(detections),
    )


def _cocoeval(gt: COCO, detections: Sequence[Mapping[str, Any]]) -> COCOeval_faster:
    """The bbox COCOeval of `detections` on `gt`, evaluated, accumulated and summarised (stats filled in)."""
    # loadRes writes "id", "area" and "segmentation" into each result dict: hand it copies.
    dt = gt.loadRes([dict(det) for det in detections])
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=logger.debug)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def _count_gt(dataset: Mapping[str, Any], cat_ids: Sequence[int]) -> dict[int, int]:
    """Ground-truth boxes per category of `cat_ids`, crowd ones excluded (those COCO ignores)."""
    num_gt = {cat_id: 0 for cat_id in cat_ids}
    for ann in dataset.get("annotations", []):
        if not ann.get("iscrowd", 0) and ann["category_id"] in num_gt:
            num_gt[ann["category_id"]] += 1
    return num_gt


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def _check_ids(dataset: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], source: str) -> None:
    zero_ids = [ann for ann in dataset.get("annotations", []) if ann.get("id") == 0]
    if zero_ids:
        # COCOeval reads a matched ground-truth id of 0 as "unmatched", silently lowering AP.
        raise ValueError(f"{source}: annotation id 0 found; number annotation ids from 1 and re-run")
    image_ids = {image["id"] for image in dataset.get("images", [])}
    unknown = sorted({det["image_id"] for det in detections} - image_ids)
    if unknown:
        raise ValueError(
            f"{source}: detections refer to image ids absent from the ground truth, e.g. {unknown[:5]}; "
            "evaluate against the same split the detections were made on"
        )
