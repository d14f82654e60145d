"""Requests per second of `sam3lite serve` (a real uvicorn process on 127.0.0.1) answering `/sam3/text_prompt`
by image token, with 4 concurrent clients against 1 client, same server, same image and prompts.

The server holds one forward at a time per model (the CPU cores are shared by the forward's threads), so
concurrency buys the overlap of HTTP, JSON and post-processing with the next forward, not parallel forwards.
Also printed: the same calls made in-process on a `Predictor` (the ceiling without HTTP).

Alternating rounds of 1 and 4 clients; medians. Ends with `RESULT {...}`, ours = 4-client requests/s,
baseline = 1-client requests/s, ratio = ours / baseline.

Run: .venv/bin/python bench/bench_serve.py [--preset small] [--seconds 10]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import torch

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.predictor import Predictor
from sam3lite_core.weights import save_checkpoint

PROMPTS = ["red circle", "blue square", "green triangle", "yellow star"]


def start_server(runs: Path, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam3lite_core.cli",
            "serve",
            "--runs-root",
            str(runs),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/health")
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the server did not start in 60 s")


def requests_per_second(url: str, token: str, clients: int, seconds: float) -> float:
    """Each client posts text prompts (cycling PROMPTS) back to back for `seconds`; total answers / seconds."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < stop:
                body = {"image_token": token, "text_prompt": PROMPTS[done[index] % len(PROMPTS)], "threshold": 0.3}
                http.post("/sam3/text_prompt", json=body).raise_for_status()
                done[index] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and in-process")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.preset)
    size = model.cfg.vision.image_size
    pixels = np.random.default_rng(0).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "run" / "checkpoints" / "last.ckpt"
        save_checkpoint(checkpoint, model)
        process, url = start_server(Path(tmp), args.threads)
        try:
            httpx.post(f"{url}/sam3/models/activate", json={"checkpoint_path": str(checkpoint)}).raise_for_status()
            first = httpx.post(
                f"{url}/sam3/text_prompt",
                timeout=60,
                json={"image_base64": base64.b64encode(buffer.getvalue()).decode(), "text_prompt": PROMPTS[0]},
            )
            token = first.json()["image_token"]
            requests_per_second(url, token, 1, 1.0)  # warm-up: every prompt's text features, kernels
            # Alternating short rounds, medians: the machine is shared, and its load drifts.
            rounds = [
                (
                    requests_per_second(url, token, 1, args.seconds / 3),
                    requests_per_second(url, token, 4, args.seconds / 3),
                )
                for _ in range(3)
            ]
            baseline = statistics.median(one for one, _ in rounds)
            ours = statistics.median(four for _, four in rounds)
        finally:
            process.terminate()
            process.wait(timeout=30)
    torch.set_num_threads(args.threads)
    predictor = Predictor(model)
    predictor.predict(pixels, PROMPTS)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        predictor.predict(pixels, PROMPTS[calls % len(PROMPTS)], threshold=0.3)
        calls += 1
    in_process = calls / (time.perf_counter() - start)
    print(f"{args.preset} preset, {size} px, {args.threads} server threads, {args.seconds:.0f} s each")
    print(f"  4 clients: {ours:.1f} req/s   1 client: {baseline:.1f} req/s   in-process calls: {in_process:.1f}/s")
    print(
        "RESULT "
        + json.dumps(
            {
                "bench": f"serve_text_prompt_4_clients_{args.preset}",
                "ours": round(ours, 2),
                "baseline": round(baseline, 2),
                "ratio": round(ours / baseline, 2),
                "unit": "requests/s",
            }
        )
    )


if __name__ == "__main__":
    main()
