"""YOLO -> COCO conversion of 20,000 images x ~10 boxes: sam3lite (cold: no cache at all) against globox.

    .venv/bin/python bench/bench_convert.py [--images N] [--rounds R]

The dataset is generated into a temporary folder as in detection_anchors.md 2.1: real JPEG files in 8 sizes
(416^2 to 2048x1536, solid colour, bytes copied from templates so generation is fast), 5-15 boxes per image
(mean 10) over 20 classes, 6-decimal YOLO lines, flat layout with classes.txt. Each conversion runs in a fresh
child process, timed around the conversion call only; rounds alternate the tools and medians are reported.
Ours cold includes everything a first conversion does: content hashing of every file (the signature), the
scan with its validation, the split and the COCO writing. The cache-hit time (same dataset, same settings) is
printed too. Ends with one line `RESULT {...}` where ratio = globox seconds / ours seconds (speed-up).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

SIZES = [(416, 416), (640, 480), (800, 600), (1024, 768), (1280, 720), (1280, 960), (1920, 1080), (2048, 1536)]
NUM_CLASSES = 20


def generate(root: Path, images: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    templates = []
    for size in SIZES:
        buf = io.BytesIO()
        Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))).save(buf, "JPEG", quality=90)
        templates.append(buf.getvalue())
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"class_{c}\n" for c in range(NUM_CLASSES)))
    for i in range(images):
        (root / "images" / f"img_{i:06d}.jpg").write_bytes(templates[i % len(templates)])
        lines = []
        for _ in range(rng.randint(5, 15)):
            w, h = rng.uniform(0.02, 0.5), rng.uniform(0.02, 0.5)
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            lines.append(f"{rng.randrange(NUM_CLASSES)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
        (root / "labels" / f"img_{i:06d}.txt").write_text("".join(lines))


def run_globox(root: Path, out: Path) -> float:
    import globox

    start = time.perf_counter()
    annotations = globox.AnnotationSet.from_yolo_v5(folder=root / "labels", image_folder=root / "images")
    # explicit ids: globox numbers from 0 and sorts labels as strings otherwise (detection_anchors.md 2.3)
    label_to_id = {str(c): c + 1 for c in range(NUM_CLASSES)}
    imageid_to_id = {ann.image_id: i for i, ann in enumerate(sorted(annotations, key=lambda a: a.image_id), 1)}
    annotations.save_coco(out / "globox.json", label_to_id=label_to_id, imageid_to_id=imageid_to_id)
    return time.perf_counter() - start


def run_ours(root: Path, cache: Path) -> float:
    from sam3lite_core.data.convert import convert_dataset

    start = time.perf_counter()
    result = convert_dataset(root, cache)
    elapsed = time.perf_counter() - start
    assert result.report.ok and result.report.counts.images > 0
    return elapsed


def child(tool: str, root: str, work: str) -> float:
    """Run one timed conversion in a fresh interpreter; returns its seconds."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[4]); import bench_convert as b; from pathlib import Path; "
        "print(getattr(b, 'run_' + sys.argv[1])(Path(sys.argv[2]), Path(sys.argv[3])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, tool, root, work, str(Path(__file__).parent)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sam3lite-bench-convert-") as tmp:
        tmp_path = Path(tmp)
        root = tmp_path / "dataset"
        start = time.perf_counter()
        generate(root, args.images)
        boxes = sum(1 for p in (root / "labels").iterdir() for _ in p.open())
        print(f"generated {args.images} images, {boxes} boxes in {time.perf_counter() - start:.1f} s")
        ours, baseline, hits = [], [], []
        for r in range(args.rounds):
            baseline.append(child("globox", str(root), str(tmp_path)))
            cache = tmp_path / f"cache{r}"
            ours.append(child("ours", str(root), str(cache)))
            hits.append(child("ours", str(root), str(cache)))
            print(
                f"round {r + 1}: globox {baseline[-1]:.2f} s, sam3lite cold {ours[-1]:.2f} s, "
                f"cache hit {hits[-1]:.3f} s"
            )
        coco = json.loads(next((tmp_path / "cache0" / "coco").glob("*/manifest.json")).read_text())["counts"]
        print(f"sam3lite split: {coco}")
        o, b, h = statistics.median(ours), statistics.median(baseline), statistics.median(hits)
        print(f"median: globox {b:.2f} s, sam3lite cold {o:.2f} s ({b / o:.2f}x faster), cache hit {h:.3f} s")
        print("ratio = globox seconds / sam3lite cold seconds (goal >= 2); cache hit goal <= 1 s")
        print(
            "RESULT "
            + json.dumps(
                {
                    "bench": f"convert_{args.images}_images",
                    "ours": round(o, 3),
                    "baseline": round(b, 3),
                    "ratio": round(b / o, 2),
                    "unit": "s",
                }
            )
        )


if __name__ == "__main__":
    main()
