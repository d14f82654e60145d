"""Training-sample throughput per worker against the bare decode + resize ceiling, in the same run.

    .venv/bin/python bench/bench_loader.py [--seconds S] [--rounds R] [--resolution R]

One core (torch and PIL single-threaded, as in one DataLoader worker). Images: photo-like 1280x720 JPEGs
(gradients, rectangles, noise sigma 12, quality 90), 10 boxes each over 4 classes, as detection_anchors.md 2.5.
- ceiling: PIL open + convert RGB + resize to R x R bilinear + float32 CHW tensor + normalise (the anchor's
  "PIL + BILINEAR + tensor + normalize", 63 images/s per core at 1008 px on the reference machine);
- ours: `CocoQueryDataset(train=True)[i]`, everything a worker does per sample: decode, EXIF orientation,
  the vendor train transforms (random square resize, random pad, box sanitising, normalise) and the per-category
  queries. The validation pipeline is printed too.
Rounds alternate the two; medians are reported. Ends with `RESULT {...}`, ratio = ours / ceiling (goal >= 0.85).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam3lite_core.data.convert import ConvertSettings, convert_dataset
from sam3lite_core.data.dataset import CocoQueryDataset, LoaderSettings

CLASSES = ("red circle", "blue square", "green triangle", "yellow star")


def photo_like(rng: np.random.Generator, width: int = 1280, height: int = 720) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1).astype(
        np.float32
    )
    for _ in range(30):
        x0, y0 = rng.integers(0, width - 100), rng.integers(0, height - 100)
        pixels[y0 : y0 + rng.integers(20, 300), x0 : x0 + rng.integers(20, 300)] = rng.integers(0, 255, 3)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def make_dataset(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "labelmap.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    for i in range(images):
        photo_like(rng).save(root / "images" / f"photo_{i:03d}.jpg", quality=90)
        lines = [
            f"{rng.integers(len(CLASSES))} {rng.uniform(0.2, 0.8):.6f} {rng.uniform(0.2, 0.8):.6f} "
            f"{rng.uniform(0.02, 0.3):.6f} {rng.uniform(0.02, 0.3):.6f}\n"
            for _ in range(10)
        ]
        (root / "labels" / f"photo_{i:03d}.txt").write_text("".join(lines))


def ceiling_sample(path: str, resolution: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    return (tensor - 0.5) / 0.5


def rate(fn, count: int, seconds: float) -> float:
    """Calls per second of fn(i), cycling i over range(count), for at least `seconds`."""
    fn(0)  # warm-up (lazy imports, first allocation)
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(done % count)
        done += 1
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=1008)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="sam3lite-bench-loader-") as tmp:
        root = Path(tmp) / "photos"
        make_dataset(root, args.images)
        result = convert_dataset(root, Path(tmp) / "cache", ConvertSettings(val_fraction=0.0))
        settings = LoaderSettings(resolution=args.resolution)
        train = CocoQueryDataset(result.train_json, result.train_images_root, settings, train=True)
        val = CocoQueryDataset(result.train_json, result.train_images_root, settings, train=False)
        paths = train.paths
        size = Path(paths[0]).stat().st_size
        print(f"{len(paths)} JPEGs 1280x720 (~{size // 1024} KB), resolution {args.resolution}, 1 thread")
        ceiling, ours, ours_val = [], [], []
        for r in range(args.rounds):
            ceiling.append(rate(lambda i: ceiling_sample(paths[i], args.resolution), len(paths), args.seconds))
            ours.append(rate(lambda i: train[i], len(train), args.seconds))
            ours_val.append(rate(lambda i: val[i], len(val), args.seconds))
            print(
                f"round {r + 1}: ceiling {ceiling[-1]:.1f}/s, ours train {ours[-1]:.1f}/s, "
                f"ours val {ours_val[-1]:.1f}/s"
            )
        c, o, v = statistics.median(ceiling), statistics.median(ours), statistics.median(ours_val)
        print(
            f"median: ceiling {c:.1f} images/s, ours train {o:.1f} samples/s ({o / c:.2f}), val {v:.1f} ({v / c:.2f})"
        )
        print("ratio = ours (train samples/s, one worker) / ceiling (PIL decode + resize + normalise), goal >= 0.85")
        print(
            "RESULT "
            + json.dumps(
                {
                    "bench": f"loader_{args.resolution}px",
                    "ours": round(o, 1),
                    "baseline": round(c, 1),
                    "ratio": round(o / c, 2),
                    "unit": "samples/s/worker",
                }
            )
        )


if __name__ == "__main__":
    main()
