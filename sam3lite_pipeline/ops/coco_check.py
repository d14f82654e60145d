"""The COCO-validity gate: what must hold of the converted JSON before training is worth starting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_LISTED = 10


def coco_problems(train_json: Path, val_json: Path, classes: list[str]) -> list[str]:
    """Readable problems of the train/val COCO pair ([] when both are usable): ids, references, boxes inside
    their image, categories equal to the labelmap, and a train split that has boxes."""
    problems: list[str] = []
    for split, path in (("train", train_json), ("val", val_json)):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: cannot be read as JSON ({exc})")
            continue
        problems += [f"{path}: {p}" for p in _split_problems(data, classes)[:MAX_LISTED]]
        if split == "train" and not data.get("annotations"):
            problems.append(f"{path}: the train split has no boxes; label some images before training")
        if split == "val" and not data.get("images"):
            problems.append(f"{path}: the val split has no images; add a val/ folder or raise val_percent")
    return problems


def _split_problems(data: dict[str, Any], classes: list[str]) -> list[str]:
    out: list[str] = []
    names = [c["name"] for c in sorted(data.get("categories", []), key=lambda c: c["id"])]
    if names != classes:
        out.append(f"categories {names} differ from the labelmap {classes}")
    images = {img["id"]: img for img in data.get("images", [])}
    if len(images) != len(data.get("images", [])):
        out.append("image ids are not unique")
    category_ids = {c["id"] for c in data.get("categories", [])}
    seen: set[int] = set()
    for ann in data.get("annotations", []):
        if ann["id"] in seen or ann["id"] < 1:
            out.append(f"annotation id {ann['id']} is repeated or below 1 (COCO skips id 0)")
        seen.add(ann["id"])
        image = images.get(ann["image_id"])
        if image is None:
            out.append(f"annotation {ann['id']} refers to the missing image {ann['image_id']}")
            continue
        if ann["category_id"] not in category_ids:
            out.append(f"annotation {ann['id']} has the unknown category {ann['category_id']}")
        x, y, w, h = ann["bbox"]
        slack = 0.01  # px: the converter rounds coordinates to 1/1000 px
        inside = -slack <= x and -slack <= y and x + w <= image["width"] + slack and y + h <= image["height"] + slack
        if w <= 0 or h <= 0 or not inside:
            out.append(
                f"annotation {ann['id']}: bbox {ann['bbox']} is empty or outside its "
                f"{image['width']}x{image['height']} image {image['file_name']}"
            )
    return out
