"""One image, K = 20 text prompts: `Predictor.predict` with the K prompts batched (chunks of 16 prompts per
forward, the backbone run once) against K calls of the plain `predict(model, image, prompt)` (K backbone
runs), same model, same process. The feature cache is cleared before every batched call, so both sides start
from the image; the text cache (frozen text encoder) serves both sides alike.

Each side runs `--rounds` times, alternating; medians are reported. Ends with `RESULT {...}`,
ratio = single-call seconds / batched seconds (speed-up; goal >= 5).

Run: .venv/bin/python bench/bench_predict.py [--preset small] [--threads 1]
     .venv/bin/python bench/bench_predict.py --preset sam3 --threads 2 --rounds 1 --singles 2
     .venv/bin/python bench/bench_predict.py --preset sam3 --device cuda
With `--singles N` only N of the K single-prompt calls are timed and the sum scaled by K / N: every single call
does the same work (one backbone, one prompt), and 20 full-size CPU forwards would take a quarter of an hour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from sam3lite_core.distributed import pick_device
from sam3lite_core.inference import predict
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.predictor import Predictor

PROMPTS = [
    f"{color} {shape}"
    for color in ("red", "blue", "green", "yellow", "white")
    for shape in ("circle", "square", "triangle", "star")
]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "sam3"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    parser.add_argument(
        "--singles",
        type=int,
        default=None,
        metavar="N",
        help="time N single-prompt calls and scale to K (for the sam3 preset on a CPU)",
    )
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="both sides run on it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = pick_device(args.device)
    predictor = Predictor(build_model(args.preset, device=device))
    size = predictor.model.cfg.vision.image_size
    image = np.random.default_rng(0).integers(0, 255, size=(size, size, 3), dtype=np.uint8)

    def batched() -> None:
        predictor.features.clear()
        predictor.predict(image, PROMPTS, chunk_size=16)

    timed_singles = PROMPTS[: args.singles or len(PROMPTS)]
    scale = len(PROMPTS) / len(timed_singles)

    def singles() -> None:
        for prompt in timed_singles:
            predict(predictor.model, image, [prompt])

    batched()  # warm-up: allocator, oneDNN kernels, text cache for every prompt
    ours, base = [], []
    for _ in range(args.rounds):
        ours.append(timed(batched))
        base.append(timed(singles) * scale)
    o, b = statistics.median(ours), statistics.median(base)
    print(
        f"{args.preset} preset, {size} px, K={len(PROMPTS)} prompts, {device}, {args.threads} threads, "
        f"median of {args.rounds}"
    )
    measured = f" ({len(timed_singles)} timed, scaled x{scale:g})" if scale != 1 else ""
    print(f"  batched (chunks of 16): {o:.3f} s   single calls{measured}: {b:.3f} s   speed-up {b / o:.2f}x")
    print(
        "RESULT "
        + json.dumps(
            {
                "bench": f"predict_k{len(PROMPTS)}_{args.preset}",
                "ours": round(o, 4),
                "baseline": round(b, 4),
                "ratio": round(b / o, 2),
                "unit": "s",
            }
        )
    )


if __name__ == "__main__":
    main()
