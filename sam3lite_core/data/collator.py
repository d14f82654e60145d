"""Samples -> the Batch of DESIGN.md (sam3lite_core.batch), the one contract between data and model."""

from __future__ import annotations

import torch

from sam3lite_core.batch import Batch
from sam3lite_core.data.dataset import Sample


def collate(samples: list[Sample]) -> Batch:
    """Stack B samples into one batch of Q = sum of their queries.

    images [B, 3, R, R]; per query: img_ids [Q] (row in images), prompt_ids [Q] into the unique `prompts` (in
    order of first use), target_boxes [Q, Tmax, 4] cxcywh in [0, 1] of the canvas, zero-padded, with
    Tmax = max(1, largest num_boxes) so the tensor is never empty, num_boxes [Q], image_ids and category_ids
    (COCO ids), orig_sizes [Q, 2] (height, width). No exemplar box prompts: box_prompts, box_labels and
    box_padding stay None.
    """
    prompts: dict[str, int] = {}
    img_ids, prompt_ids, image_ids, category_ids, sizes, boxes = [], [], [], [], [], []
    for row, sample in enumerate(samples):
        for query in sample.queries:
            img_ids.append(row)
            prompt_ids.append(prompts.setdefault(query.prompt, len(prompts)))
            image_ids.append(sample.image_id)
            category_ids.append(query.category_id)
            sizes.append(sample.orig_size)
            boxes.append(query.boxes)
    num_boxes = torch.tensor([len(b) for b in boxes], dtype=torch.long)
    t_max = max(1, int(num_boxes.max())) if boxes else 1
    target = torch.zeros(len(boxes), t_max, 4)
    for q, query_boxes in enumerate(boxes):
        target[q, : len(query_boxes)] = query_boxes
    return Batch(
        images=torch.stack([s.image for s in samples]),
        img_ids=torch.tensor(img_ids, dtype=torch.long),
        prompts=list(prompts),
        prompt_ids=torch.tensor(prompt_ids, dtype=torch.long),
        target_boxes=target,
        num_boxes=num_boxes,
        image_ids=image_ids,
        category_ids=category_ids,
        orig_sizes=torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
    )
