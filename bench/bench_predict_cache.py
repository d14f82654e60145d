"""A repeated prompt on an image already seen (its token's backbone features and the prompt's text features
cached) against the same call cold (both caches cleared), same `Predictor`, same process.

This is what a client gets by sending an `image_token` again (e.g. asking one more class of an image it is
annotating). Each side runs `--rounds` times, alternating; medians are reported. Ends with `RESULT {...}`,
ratio = cold seconds / cached seconds (speed-up).

Run: .venv/bin/python bench/bench_predict_cache.py [--preset small] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.predictor import Predictor

PROMPT = "purple hexagon"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "sam3"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = Predictor(build_model(args.preset))
    size = predictor.model.cfg.vision.image_size
    image = np.random.default_rng(0).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    predictor.predict(image, PROMPT)  # warm-up: allocator, oneDNN kernels
    cold, cached = [], []
    for _ in range(args.rounds):
        predictor.features.clear()
        predictor.model.clear_text_cache()
        start = time.perf_counter()
        predictor.predict(image, PROMPT)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        predictor.predict(image, PROMPT)
        cached.append(time.perf_counter() - start)
    c, o = statistics.median(cold), statistics.median(cached)
    print(f"{args.preset} preset, {size} px, {args.threads} threads, median of {args.rounds}")
    print(f"  cached image token + prompt: {o:.4f} s   cold: {c:.4f} s   speed-up {c / o:.2f}x")
    print(
        "RESULT "
        + json.dumps(
            {
                "bench": f"predict_cached_image_{args.preset}",
                "ours": round(o, 4),
                "baseline": round(c, 4),
                "ratio": round(c / o, 2),
                "unit": "s",
            }
        )
    )


if __name__ == "__main__":
    main()
