"""`evaluate(model | checkpoint, coco_json, images_root) -> EvalResult`: COCO bbox mAP of a detector on a split.

The vendor's validation recipe (reference/sam3_facts.md section 7): every category of the dataset is a find query
on every image (absent ones included), images resized to the model resolution, every query's boxes scored
sigmoid(logit) * sigmoid(presence), the best `max_dets` per image kept across categories, then COCOeval.
Under DDP each rank takes every world_size-th image and the detections are gathered, so all ranks return the
same result.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from sam3lite_core.batch import Batch
from sam3lite_core.data.collator import collate
from sam3lite_core.data.dataset import CocoQueryDataset, LoaderSettings
from sam3lite_core.distributed import all_gather_objects, rank_and_world, unwrap
from sam3lite_core.eval.coco_eval import EvalResult, evaluate_predictions
from sam3lite_core.eval.predictions import MAX_DETS_PER_IMAGE, coco_detections, merge_detections
from sam3lite_core.precision import autocast
from sam3lite_core.weights import load_model

ProgressFn = Callable[[int, int], None]  # (batches done, batches in all) on this rank
# Find queries grounded per forward. One query's box bias alone is heads x (1 + queries) x HW floats (33 MB in
# fp32 at 1008 px), so grounding every class of a batch at once (80 classes x 8 images) would want about 21 GB a
# decoder layer; in chunks the peak is bounded, and the images are still encoded once.
QUERIES_PER_FORWARD = 64
_EVAL_OUTPUTS = ("pred_logits", "pred_boxes", "presence_logit_dec")


# no_grad rather than inference_mode: text features cached by a frozen encoder here are reused in training.
@torch.no_grad()
def evaluate(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    coco_json: str | os.PathLike,
    images_root: str | os.PathLike,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    max_dets: int = MAX_DETS_PER_IMAGE,
    score_thresh: float = 0.0,
    amp: str = "off",
    device: torch.device | str | None = None,
    resolution: int | None = None,
    use_ema: bool = True,
    prompt_variants: dict[str, Any] | None = None,
    max_pixels: int | None = None,
    on_progress: ProgressFn | None = None,
) -> EvalResult:
    """COCO bbox metrics of the model on the images of `coco_json` (file_names relative to `images_root`).

    A checkpoint path is loaded with `load_model` onto `device` (default CPU); a model is evaluated where it
    is, in eval mode, and put back in its previous mode. Images are decoded under `max_pixels` (default
    data/decode.py `default_max_pixels`). Raises ValueError for a split without images or a malformed COCO JSON
    (data/coco_json.py: the file and the first bad record).
    """
    if isinstance(model_or_checkpoint, nn.Module):
        model = unwrap(model_or_checkpoint)
    else:
        model = load_model(model_or_checkpoint, device or "cpu", resolution, use_ema)
    settings = LoaderSettings(
        resolution=model.cfg.vision.image_size, prompt_variants=prompt_variants or {}, max_pixels=max_pixels
    )
    dataset = CocoQueryDataset(coco_json, images_root, settings, train=False)
    if len(dataset) == 0:
        raise ValueError(f"{coco_json}: the split has no images to evaluate on")
    rank, world = rank_and_world()
    loader = DataLoader(
        Subset(dataset, range(rank, len(dataset), world)),
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=next(model.parameters()).device.type == "cuda",
    )
    detections = _detect(model, loader, amp, score_thresh, max_dets, on_progress)
    merged = merge_detections(all_gather_objects(detections), max_dets)
    return evaluate_predictions(Path(coco_json), merged)


def _detect(
    model: nn.Module,
    loader: DataLoader,
    amp: str,
    score_thresh: float,
    max_dets: int,
    on_progress: ProgressFn | None,
) -> list[dict[str, Any]]:
    """COCO detections of this rank's images (the best `max_dets` per image, scored >= score_thresh), the model
    in eval mode meanwhile and then back in its previous mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    detections: list[dict[str, Any]] = []
    try:
        for done, batch in enumerate(loader, 1):
            with autocast(device, amp):
                out = ground_in_chunks(model, batch.to(device, non_blocking=True), QUERIES_PER_FORWARD)
            found = coco_detections(out, batch.image_ids, batch.category_ids, batch.orig_sizes)
            # Every image lies wholly in one batch, so its top max_dets can be taken here already.
            detections += merge_detections([[d for d in found if d["score"] >= score_thresh]], max_dets)
            if on_progress is not None:
                on_progress(done, len(loader))
    finally:
        model.train(was_training)
    return detections


def ground_in_chunks(model: nn.Module, batch: Batch, queries_per_forward: int) -> dict[str, torch.Tensor]:
    """The eval outputs of every find query of `batch` ("pred_logits" [Q, N, 1], "pred_boxes" [Q, N, 4],
    "presence_logit_dec" [Q, 1]): the images encoded once, then at most `queries_per_forward` queries grounded
    per forward (in eval mode queries do not see each other, so the chunks change nothing but the peak)."""
    features = model.encode_image(batch.images)
    parts = [
        model.ground(features, batch.select_queries(slice(start, start + queries_per_forward)))
        for start in range(0, batch.num_queries, queries_per_forward)
    ]
    return {key: torch.cat([part[key] for part in parts]) for key in _EVAL_OUTPUTS}
