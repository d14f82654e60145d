"""Model outputs to COCO detections, exactly as upstream's `PostProcessImage` + `PredictionDumper` write
`coco_predictions_bbox.json` for the roboflow evaluation (reference/sam3_facts.md sections 2 and 7).

Per find query every one of the N predictions becomes a detection (no threshold, no NMS) labelled with the
query's category; `merge_detections` then keeps the 100 best per image across categories.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sam3lite_core import box_ops

MAX_DETS_PER_IMAGE = 100
DECIMALS = 5


@torch.no_grad()
def coco_detections(
    outputs: Mapping[str, torch.Tensor],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    orig_sizes: torch.Tensor,
    use_presence: bool = True,
) -> list[dict[str, Any]]:
    """COCO result dicts {"image_id", "category_id", "bbox": [x, y, w, h], "score"} for one batch.

    outputs: "pred_logits" [Q, N, 1], "pred_boxes" [Q, N, 4] cxcywh in [0, 1], "presence_logit_dec" [Q, 1].
    image_ids, category_ids: the dataset (COCO) ids of each query's image and category, length Q.
    orig_sizes [Q, 2]: (height, width) of each query's original image; boxes come out in its pixels.

    score = sigmoid(logit) * sigmoid(presence); bbox and score rounded to 5 decimals. Detections are grouped
    by image in order of first appearance, then by query, then by prediction index, as upstream emits them.
    """
    probs = outputs["pred_logits"].float().sigmoid()
    if use_presence:
        probs = probs * outputs["presence_logit_dec"].float().sigmoid().unsqueeze(1)
    scores = probs.max(-1).values.cpu()  # [Q, N]
    height, width = orig_sizes.unbind(1)
    scale = torch.stack([width, height, width, height], dim=1)  # [Q, 4]
    boxes = box_ops.box_cxcywh_to_xyxy(outputs["pred_boxes"].float()) * scale.to(probs.device)[:, None, :]
    x0, y0, x1, y1 = boxes.cpu().unbind(-1)
    boxes_xywh = torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)  # [Q, N, 4]

    queries_of_image: dict[int, list[int]] = {}
    for query, image_id in enumerate(image_ids):
        queries_of_image.setdefault(int(image_id), []).append(query)
    detections = []
    for image_id, queries in queries_of_image.items():
        for query in queries:
            category_id = int(category_ids[query])
            for box, score in zip(boxes_xywh[query].tolist(), scores[query].tolist()):
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [round(coord, DECIMALS) for coord in box],
                        "score": round(score, DECIMALS),
                    }
                )
    return detections


class _ByScore:
    """Heap entry ordered by score only, so ties keep the detection that arrived first (upstream's heap)."""

    __slots__ = ("detection",)

    def __init__(self, detection: dict[str, Any]) -> None:
        self.detection = detection

    def __lt__(self, other: "_ByScore") -> bool:
        return self.detection["score"] < other.detection["score"]


def merge_detections(
    per_rank: Sequence[Sequence[dict[str, Any]]], max_dets: int = MAX_DETS_PER_IMAGE
) -> list[dict[str, Any]]:
    """Merge the detections of all ranks (a single-process run passes [detections]): keep the `max_dets`
    highest scores per image across categories, and take each (image, category) pair from the first rank
    that has it, since a distributed sampler pads the last batches with repeated samples."""
    best: dict[int, list[_ByScore]] = {}
    seen: set[tuple[int, int]] = set()
    for detections in per_rank:
        seen_here: set[tuple[int, int]] = set()
        for detection in detections:
            key = (detection["image_id"], detection["category_id"])
            if key in seen:
                continue
            seen_here.add(key)
            heap = best.setdefault(detection["image_id"], [])
            if len(heap) < max_dets:
                heapq.heappush(heap, _ByScore(detection))
            else:
                heapq.heappushpop(heap, _ByScore(detection))
        seen |= seen_here
    return [entry.detection for heap in best.values() for entry in heap]
