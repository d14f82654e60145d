"""The synthetic dataset: the embedded default that tests, benchmarks and the demo train on.

A YOLO dataset in the backend's split layout (`labelmap.txt`, `{train,val}/{images,labels}`): coloured shapes
whose class names work as prompts ("red circle", ...), from small to large, anywhere in the frame, overlapping
but never hidden, on textured backgrounds, with some background-only images. Each image depends only on
(seed, index), so the dataset is deterministic by seed and a larger one extends a smaller one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel

CLASSES = ("red circle", "blue square", "green triangle", "yellow star")
_COLOURS = ((220, 30, 30), (30, 60, 220), (30, 170, 50), (240, 210, 30))
_SIZES = ((320, 240), (256, 256), (240, 320), (384, 256))  # (width, height): several aspect ratios
_VAL_EVERY = 5  # every 5th image is in val
_BACKGROUND_EVERY = 8  # every 8th image has no object
_MAX_COVER = 0.5  # a new shape may cover at most this share of an earlier shape's box


class SynthSummary(BaseModel):
    root: str
    classes: list[str]
    train_images: int
    val_images: int
    boxes: int
    backgrounds: int


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted gradient + stripes + noise, [H, W, 3] uint8: busy enough that colour alone is not the answer."""
    xx = np.arange(width, dtype=np.float32)[None, :, None]
    yy = np.arange(height, dtype=np.float32)[:, None, None]
    base = rng.uniform(60, 170, 3).astype(np.float32)
    angle, freq = rng.uniform(0, math.pi), rng.uniform(0.02, 0.15)
    stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq) * np.float32(rng.uniform(5, 25))
    gradient = xx * (rng.uniform(-40, 40, 3) / width).astype(np.float32)
    gradient = gradient + yy * (rng.uniform(-40, 40, 3) / height).astype(np.float32)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(8)
    return np.clip(base + gradient + stripes + noise, 0, 255).astype(np.uint8)


def _outline(cls: int, x: float, y: float, s: float) -> list[tuple[float, float]]:
    """Polygon of a shape of class `cls` in the s x s square at (x, y); circles use their bounding square."""
    if cls == 2:
        return [(x + s / 2, y), (x + s, y + s * 0.9), (x, y + s * 0.9)]
    if cls == 3:
        r, cx, cy = s / 2, x + s / 2, y + s / 2
        return [
            (
                cx + (r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                cy - (r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
    return [(x, y), (x + s, y + s)]


def _overlap_share(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / ((b[2] - b[0]) * (b[3] - b[1]))


def draw_image(seed: int, index: int) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """One image and its boxes (class, x1, y1, x2, y2) in pixels."""
    rng = np.random.default_rng([seed, index])
    width, height = _SIZES[int(rng.integers(len(_SIZES)))]
    image = Image.fromarray(_texture(rng, width, height))
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[int, float, float, float, float]] = []
    count = 0 if index % _BACKGROUND_EVERY == _BACKGROUND_EVERY - 1 else int(rng.integers(1, 9))
    short = min(width, height)
    for _ in range(count):
        cls = int(rng.integers(len(CLASSES)))
        side = short * math.exp(rng.uniform(math.log(0.06), math.log(0.6)))  # small to large, log-uniform
        colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in _COLOURS[cls])
        for _attempt in range(20):
            x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
            points = _outline(cls, x, y, side)
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            box = (min(xs), min(ys), max(xs), max(ys))
            if all(_overlap_share(box, earlier[1:]) <= _MAX_COVER for earlier in boxes):
                break
        else:
            continue
        if cls == 0:
            draw.ellipse(box, fill=colour)
        elif cls == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon(points, fill=colour)
        boxes.append((cls, *box))
    return image, boxes


def write_synth(out_dir: str | Path, images: int = 200, seed: int = 0) -> SynthSummary:
    """Write the dataset into `out_dir` (which must be empty or absent)."""
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root}: folder is not empty; synth writes a whole dataset, so give a new folder")
    if images < 2:
        raise ValueError(f"--images {images}: need at least 2 (one train, one val)")
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
    (root / "labelmap.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    counts = {"train": 0, "val": 0, "boxes": 0, "backgrounds": 0}
    for index in range(images):
        split = "val" if index % _VAL_EVERY == _VAL_EVERY - 1 else "train"
        image, boxes = draw_image(seed, index)
        stem = f"synth_{index:05d}"
        image.save(root / split / "images" / f"{stem}.jpg", quality=90)
        w, h = image.size
        lines = [
            f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
            for cls, x1, y1, x2, y2 in boxes
        ]
        (root / split / "labels" / f"{stem}.txt").write_text("".join(lines))
        counts[split] += 1
        counts["boxes"] += len(boxes)
        counts["backgrounds"] += not boxes
    return SynthSummary(
        root=str(root),
        classes=list(CLASSES),
        train_images=counts["train"],
        val_images=counts["val"],
        boxes=counts["boxes"],
        backgrounds=counts["backgrounds"],
    )
