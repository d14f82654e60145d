"""The service's memory is bounded whatever the requests: decoded images and image features share one byte budget,
a refused request's answer never repeats a large input, and a pointer file the service refuses does not stay on
disk saying what is not served."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_harness import Server

from sam3lite_core.cache_budget import CacheBudget
from sam3lite_core.feature_cache import ImageFeatureCache
from sam3lite_core.model.sam3lite import ImageFeatures, build_model
from sam3lite_core.serve.images import ImageCache
from sam3lite_core.serve.state import ModelState, read_pointer
from sam3lite_core.weights import save_checkpoint

MIB = 2**20


def _png_base64(side: int, seed: int) -> str:
    """A side x side RGB PNG that compresses to a few KB (flat, with one seeded patch), so each is distinct."""
    pixels = np.full((side, side, 3), 90, dtype=np.uint8)
    pixels[:64, :64] = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_memory")
    torch.manual_seed(0)
    return save_checkpoint(root / "tiny.ckpt", build_model("tiny"))


def test_ten_large_images_stay_within_the_cache_budget(tiny, tmp_path):
    """Ten distinct 4096 x 4096 images (48 MiB each decoded) through a service with a 64 MiB budget: its resident
    memory grows by the budget plus a margin, not by the 480 MiB a count-bounded cache would keep."""
    server = Server(tmp_path / "runs", base_checkpoint=tiny, token=None, args=("--cache-mb", "64"))
    try:
        warm = {"text_prompt": "red circle", "image_base64": _png_base64(256, 99), "sam_variant": "sam3"}
        assert server.client.post("/sam3/text_prompt", json=warm).status_code == 200
        before = _rss_mib(server.process.pid)
        tokens = []
        for seed in range(10):
            body = {"text_prompt": "red circle", "image_base64": _png_base64(4096, seed), "sam_variant": "sam3"}
            answer = server.client.post("/sam3/text_prompt", json=body)
            assert answer.status_code == 200, answer.text
            tokens.append(answer.json()["image_token"])
        grown = _rss_mib(server.process.pid) - before
        print(f"resident memory grew by {grown:.0f} MiB over ten 48 MiB images (budget 64 MiB)")
        assert grown < 64 + 128, f"{grown:.0f} MiB: the caches are not bounded by the 64 MiB budget"
        assert len(set(tokens)) == 10
        # The newest image is kept; the oldest were evicted and must be sent again.
        latest = server.client.post("/sam3/text_prompt", json={"text_prompt": "x", "image_token": tokens[-1]})
        oldest = server.client.post("/sam3/text_prompt", json={"text_prompt": "x", "image_token": tokens[0]})
        assert latest.status_code == 200 and oldest.status_code == 404
    finally:
        server.stop()


def test_a_refused_field_is_not_echoed_back(tiny, tmp_path):
    server = Server(tmp_path / "runs", base_checkpoint=tiny, token=None)
    try:
        huge = "9" * 200_000
        answer = server.client.post("/sam3/text_prompt", json={"text_prompt": "x", "threshold": huge + "x"})
        assert answer.status_code == 422
        assert len(answer.content) < 2_000 and huge not in answer.text
        (error,) = [e for e in answer.json()["detail"] if e["loc"][-1] == "threshold"]
        assert error["input"] == "<str of 200001 characters>" and error["msg"]
        small = server.client.post("/sam3/text_prompt", json={"text_prompt": "x", "threshold": "high"})
        assert small.status_code == 422 and small.json()["detail"][0]["input"] == "high"  # short inputs stay
    finally:
        server.stop()


def test_caches_sharing_a_budget_keep_their_newest_entry_only_when_over():
    budget = CacheBudget(100 * MIB)
    images = ImageCache(budget)
    features = ImageFeatureCache(capacity=1000, budget=budget)
    for seed in range(4):  # 48 MiB each: two fit, the third pushes the oldest out
        images.resolve(_png_base64(4096, seed), None)
    assert budget.used == 2 * 48 * MIB
    big = ImageFeatures(torch.zeros(1, 256, 72, 72 * 8), torch.zeros(1, 256, 72, 72 * 8))  # 40.5 MiB
    features.get_or_compute("a", lambda: big)
    assert len(features) == 1 and budget.over  # the newest entry is always kept
    images.resolve(_png_base64(4096, 7), None)
    assert budget.used <= budget.limit + 48 * MIB
    features.clear()
    assert budget.used == len(images._images) * 48 * MIB


def test_a_refused_pointer_file_is_rewritten_with_what_is_served(tiny, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    state = ModelState(runs, base_checkpoint=tiny)
    serving = state.current().active
    state.pointer.write_bytes(b"\x00garbage{")
    assert state.current().active == serving  # still serving the base
    assert read_pointer(state.pointer) == serving  # and the file says so again
    state.pointer.write_text(json.dumps({**serving.model_dump(), "source": "custom", "checkpoint": "/etc/passwd"}))
    assert state.current().active == serving and read_pointer(state.pointer) == serving
