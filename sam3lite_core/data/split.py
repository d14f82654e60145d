"""Train/val membership of each kept image.

A dataset with a `val/` split keeps it. Otherwise an image goes to val when a hash of its relative path and
the seed falls below the val fraction: the decision depends on nothing but that image, so adding images never
moves existing ones between splits (the backend's shuffle-then-cut split reshuffles everything instead).
"""

from __future__ import annotations

import hashlib
from typing import Literal

from sam3lite_core.data.scan import ImageRecord

SplitMethod = Literal["folders", "hash"]


def split_score(rel: str, seed: int) -> float:
    """Uniform in [0, 1), a fixed function of (seed, path)."""
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    records: list[ImageRecord], val_fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord], SplitMethod]:
    """(train, val, method). With folders the on-disk split wins. By hash, a dataset of at least two images
    that would leave a side empty gets its lowest-scoring image in val (or its highest in train), so both
    splits exist; only such tiny datasets can see that one image move when images are added."""
    if any(r.split.name == "val" for r in records):
        return [r for r in records if r.split.name != "val"], [r for r in records if r.split.name == "val"], "folders"
    if val_fraction <= 0:
        return list(records), [], "hash"
    scores = [split_score(r.rel, seed) for r in records]
    in_val = [score < val_fraction for score in scores]
    if len(records) >= 2 and not any(in_val):
        in_val[scores.index(min(scores))] = True
    if len(records) >= 2 and all(in_val):
        in_val[scores.index(max(scores))] = False
    train = [r for r, v in zip(records, in_val) if not v]
    return train, [r for r, v in zip(records, in_val) if v], "hash"
