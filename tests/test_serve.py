"""`sam3lite serve` as a real uvicorn process on 127.0.0.1, over real HTTP: activation of a checkpoint trained
here, text, batched and visual prompts in the backend's shapes, refused activations that leave the old model
serving, a pointer file rewritten by another process, and the active model kept across a restart."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import pytest
import torch
from serve_harness import AUTH, Server
from train_helpers import make_dataset, threads, tiny_config

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.serve.schemas import ActiveModel
from sam3lite_core.serve.state import POINTER_NAME, ModelState, write_pointer
from sam3lite_core.train.loop import train
from sam3lite_core.weights import save_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/trained: a real 1-epoch tiny training run; runs/other: a second, random tiny checkpoint."""
    root = tmp_path_factory.mktemp("serve")
    dataset = make_dataset(root / "dataset")
    with threads(1):
        train(tiny_config(dataset, root / "runs", run_name="trained", max_epochs=1))
    torch.manual_seed(1)
    save_checkpoint(root / "runs" / "other" / "checkpoints" / "last.ckpt", build_model("tiny"))
    (root / "runs" / "corrupt" / "checkpoints").mkdir(parents=True)
    (root / "runs" / "corrupt" / "checkpoints" / "last.ckpt").write_bytes(b"\x80\x02 truncated")
    save_checkpoint(root / "outside.ckpt", build_model("tiny"))
    return root / "runs"


@pytest.fixture(scope="module")
def server(runs):
    served = Server(runs)
    yield served
    served.stop()


def png_base64(seed: int = 0) -> tuple[str, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode(), pixels


def activate(server: Server, path, label=None, **extra) -> httpx.Response:
    return server.client.post(
        "/sam3/models/activate",
        headers=AUTH,
        json={"checkpoint_path": None if path is None else str(path), "label": label, **extra},
    )


def check_detections(body: dict, label: str, source: str) -> None:
    assert set(body) == {"detections", "warnings", "image_token", "masks"} and body["masks"] is None
    for det in body["detections"]:
        assert set(det) == {
            "bbox",
            "score",
            "qwen_label",
            "source",
            "mask",
            "simplify_epsilon",
            "class_id",
            "class_name",
        }
        assert len(det["bbox"]) == 4 and all(0.0 <= v <= 1.0 for v in det["bbox"])
        assert 0.0 <= det["score"] <= 1.0 and det["mask"] is None
        assert det["qwen_label"] == label and det["source"] == source
        assert det["class_id"] is None and det["class_name"] is None  # no labelmap here
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)
    plain = [w for w in body["warnings"] if not w.startswith("windowed_")]  # windowed diagnostics: their own test
    assert plain == ([] if scores else ["no_results"])


def test_activation_and_prompts(server, runs):
    health = server.client.get("/health").json()
    assert health == {
        "status": "ok",
        "model_loaded": False,
        "active": {
            "id": "default",
            "label": "no model",
            "checkpoint": None,
            "source": "none",
            "enable_segmentation": False,
        },
    }
    image, pixels = png_base64()
    assert server.client.post("/sam3/text_prompt", json={"image_base64": image, "text_prompt": "x"}).status_code == 503

    trained = runs / "trained" / "checkpoints" / "last.ckpt"
    assert server.client.post("/sam3/models/activate", json={"checkpoint_path": str(trained)}).status_code == 401
    response = activate(server, trained, "trained-v1")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "active": {
            "id": "trained-v1",
            "label": "trained-v1",
            "checkpoint": str(trained),
            "source": "custom",
            "enable_segmentation": False,
        }
    }

    body = {"image_base64": image, "text_prompt": "circle", "threshold": 0.0, "max_results": 5}
    first = server.client.post("/sam3/text_prompt", json=body).json()
    check_detections(first, "circle", "sam3_text")
    assert len(first["detections"]) == 5 and first["image_token"] == hashlib.md5(pixels.tobytes()).hexdigest()
    by_token = server.client.post(
        "/sam3/text_prompt", json={**body, "image_base64": None, "image_token": first["image_token"]}
    ).json()
    assert by_token == first
    big = server.client.post("/sam3/text_prompt", json={**body, "max_results": None, "min_size": 64 * 48 / 4}).json()
    for det in big["detections"]:
        assert det["bbox"][2] * 64 * det["bbox"][3] * 48 >= 64 * 48 / 4 - 1e-3
    none = server.client.post("/sam3/text_prompt", json={**body, "threshold": 1.0}).json()
    assert none["detections"] == [] and none["warnings"] == ["no_results"]

    batch = server.client.post("/sam3/text_prompt_batch", json={**body, "text_prompts": ["square", "circle"]}).json()
    assert batch["image_token"] == first["image_token"] and len(batch["results"]) == 2
    check_detections(batch["results"][0], "square", "sam3_text")
    assert [d["score"] for d in batch["results"][1]["detections"]] == pytest.approx(
        [d["score"] for d in first["detections"]], abs=1e-5
    )

    visual = {
        "image_token": first["image_token"],
        "bboxes": [[4, 4, 16, 20], {"left": 30, "top": 10, "width": 20, "height": 30}],
        "bbox_labels": [True, False],
        "threshold": 0.0,
        "max_results": 3,
    }
    answer = server.client.post("/sam3/visual_prompt", json=visual)
    assert answer.status_code == 200, answer.text
    check_detections(answer.json(), "visual", "sam3_text")
    single = {
        "image_token": first["image_token"],
        "bbox_left": 4,
        "bbox_top": 4,
        "bbox_width": 16,
        "bbox_height": 20,
        "text_prompt": "circle",
        "threshold": 0.0,
    }
    check_detections(server.client.post("/sam3/visual_prompt", json=single).json(), "circle", "sam3_text")


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"image_base64": "not base64!", "text_prompt": "x"}, 400, "not valid base64"),
        ({"image_base64": base64.b64encode(b"GIF89a junk").decode(), "text_prompt": "x"}, 400, "not a decodable"),
        ({"image_token": "0" * 32, "text_prompt": "x"}, 404, "unknown"),
        ({"text_prompt": "x"}, 422, "image_base64"),
        ({"image_base64": "A" * 400_000, "text_prompt": "x"}, 413, "upload limit"),  # decoded size
        ({"image_base64": "A" * 600_000, "text_prompt": "x"}, 413, "image limit"),  # body size, before parsing
    ],
)
def test_bad_images(server, runs, body, status, reason):
    activate(server, runs / "trained" / "checkpoints" / "last.ckpt")
    response = server.client.post("/sam3/text_prompt", json=body)
    assert response.status_code == status and reason in response.text


def test_refused_activations_keep_the_old_model(server, runs):
    trained = runs / "trained" / "checkpoints" / "last.ckpt"
    assert activate(server, trained, "keep").status_code == 200
    link = runs / "trained" / "checkpoints" / "link.ckpt"
    link.unlink(missing_ok=True)
    link.symlink_to(runs.parent / "outside.ckpt")
    refused = [
        (
            activate(server, runs / "corrupt" / "checkpoints" / "last.ckpt"),
            400,
            "sam3_checkpoint_invalid",
            "not a readable PyTorch checkpoint",
        ),
        (activate(server, runs.parent / "outside.ckpt"), 400, "sam3_checkpoint_path_invalid", "inside the runs root"),
        (
            activate(server, runs / "trained" / "../../outside.ckpt"),
            400,
            "sam3_checkpoint_path_invalid",
            "inside the runs root",
        ),
        (activate(server, link), 400, "sam3_checkpoint_path_invalid", "symlink"),
        (activate(server, runs / "nope.ckpt"), 404, "sam3_checkpoint_not_found", "does not exist"),
        (activate(server, trained, enable_segmentation=True), 400, "sam3_segmentation_unsupported", "box-only"),
        (activate(server, None), 409, "sam3_base_checkpoint_missing", "no base weights"),
    ]
    for response, status, code, reason in refused:
        body = response.json()
        assert response.status_code == status and body["detail"] == code and reason in body["message"], response.text
    assert server.client.get("/health").json()["active"]["id"] == "keep"
    image, _ = png_base64(1)
    assert server.client.post("/sam3/text_prompt", json={"image_base64": image, "text_prompt": "x"}).status_code == 200


def test_model_listing(server, runs):
    trained = runs / "trained" / "checkpoints" / "last.ckpt"
    activate(server, trained, "listed")
    for url in ("/sam3/models", "/sam3/models/available"):
        entries = server.client.get(url).json()
        assert entries[0] == {
            "id": "Base SAM3",
            "key": "base",
            "path": None,
            "active": False,
            "source": "env",
            "variant": "sam3",
            "size_bytes": None,
            "promoted": None,
            "promoted_at": None,
            "run_path": None,
            "enable_segmentation": False,
        }
        assert entries[1] | {"key": None} == {
            "id": "listed",
            "key": None,
            "path": str(trained),
            "active": True,
            "source": "custom",
            "variant": "sam3",
            "size_bytes": None,
            "promoted": None,
            "promoted_at": None,
            "run_path": None,
            "enable_segmentation": False,
        }
        runs_listed = {e["id"]: e for e in entries[2:]}
        assert set(runs_listed) == {"corrupt", "other", "trained"}
        assert runs_listed["other"]["path"] == str(runs / "other" / "checkpoints" / "last.ckpt")
        assert runs_listed["other"]["size_bytes"] > 0 and runs_listed["other"]["run_path"] == str(runs / "other")


def test_pointer_from_another_process_and_restart(server, runs):
    """Two services share the runs root: one follows the other's activations, and a restart keeps them."""
    activate(server, runs / "trained" / "checkpoints" / "last.ckpt", "before")
    second = Server(runs)
    try:
        assert second.client.get("/health").json()["active"]["id"] == "before"
        other = runs / "other" / "checkpoints" / "last.ckpt"
        script = (
            "import sys; from pathlib import Path; from sam3lite_core.serve.state import write_pointer; "
            "from sam3lite_core.serve.schemas import ActiveModel; "
            "write_pointer(Path(sys.argv[1]), ActiveModel(id='elsewhere', label='elsewhere', checkpoint=sys.argv[2], "
            "source='custom'))"
        )
        subprocess.run([sys.executable, "-c", script, str(runs / POINTER_NAME), str(other)], check=True)
        for served in (server, second):
            health = served.client.get("/health").json()
            assert health["model_loaded"] and health["active"]["id"] == "elsewhere"
            assert health["active"]["checkpoint"] == str(other)

        # A pointer naming a file outside the runs root is ignored: the current model keeps serving.
        outside = ActiveModel(id="bad", label="bad", checkpoint=str(runs.parent / "outside.ckpt"), source="custom")
        write_pointer(runs / POINTER_NAME, outside)
        assert second.client.get("/health").json()["active"]["id"] == "elsewhere"

        assert activate(second, other, "persisted").status_code == 200
        assert server.client.get("/health").json()["active"]["id"] == "persisted"
    finally:
        second.stop()
    restarted = Server(runs)
    try:
        health = restarted.client.get("/health").json()
        assert health["model_loaded"] and health["active"]["id"] == "persisted"
        image, _ = png_base64(2)
        response = restarted.client.post("/sam3/text_prompt", json={"image_base64": image, "text_prompt": "x"})
        assert response.status_code == 200
    finally:
        restarted.stop()


def test_swap_leaves_requests_in_flight_on_the_old_model(runs, tmp_path):
    """A request holds the Serving record it started with; activation swaps in a new record, never mutates it."""
    state = ModelState(runs, pointer=tmp_path / POINTER_NAME)
    state.activate(str(runs / "trained" / "checkpoints" / "last.ckpt"), "old", None)
    in_flight = state.current()
    with in_flight.lock:  # as a request mid-forward holds it
        state.activate(str(runs / "other" / "checkpoints" / "last.ckpt"), "new", False)
    assert state.current().active.id == "new" and in_flight.active.id == "old"
    assert state.current().predictor is not in_flight.predictor
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    assert len(in_flight.predictor.predict(image, "x")[0][0]) == in_flight.predictor.model.cfg.transformer.num_queries


def test_windowed_text_prompts(server, runs):
    """The backend's windowed fields are honoured: the image is seen as windows, and the answer keeps its shape."""
    activate(server, runs / "trained" / "checkpoints" / "last.ckpt", "windowed")
    image, _ = png_base64(3)
    body = {
        "image_base64": image,
        "text_prompt": "circle",
        "threshold": 0.0,
        "windowed": True,
        "window_size": 32,
        "window_overlap": 0.25,
        "merge_iou": 0.5,
    }
    response = server.client.post("/sam3/text_prompt", json=body)
    assert response.status_code == 200, response.text
    check_detections(response.json(), "circle", "sam3_text")
    assert "windowed_tiles:6" in response.json()["warnings"]
    whole = server.client.post("/sam3/text_prompt", json={**body, "windowed": False}).json()
    assert response.json()["detections"] != whole["detections"]  # 6 windows of 32 px, not one 64 x 48 image
    batch = server.client.post(
        "/sam3/text_prompt_batch",
        json={**body, "image_base64": None, "text_prompts": ["square", "circle"], "image_token": whole["image_token"]},
    )
    assert batch.status_code == 200, batch.text
    assert [d["score"] for d in batch.json()["results"][1]["detections"]] == pytest.approx(
        [d["score"] for d in response.json()["detections"]], abs=1e-5
    )
    default_window = server.client.post("/sam3/text_prompt", json={**body, "window_size": None})
    assert default_window.status_code == 200  # the model's input side: one window for this small image
    for bad in ({"window_overlap": 1.0}, {"merge_iou": 0.0}, {"window_size": "big"}):
        assert server.client.post("/sam3/text_prompt", json={**body, **bad}).status_code == 422


@pytest.mark.parametrize("how", ["deleted", "symlinked_out"])
def test_listing_drops_a_missing_active_checkpoint(server, runs, how):
    """Listing models resets an active custom checkpoint that is gone or now outside the runs root (no base
    weights here, so to no model), rewrites the pointer file, and says so in the log."""
    doomed = runs / "doomed" / "checkpoints" / "last.ckpt"
    save_checkpoint(doomed, build_model("tiny"))
    assert activate(server, doomed, "doomed").status_code == 200
    try:
        doomed.unlink()
        if how == "symlinked_out":
            doomed.symlink_to(runs.parent / "outside.ckpt")
        assert server.client.get("/health").json()["active"]["id"] == "doomed"  # only listing checks
        entries = server.client.get("/sam3/models").json()
        assert [e["key"] for e in entries if e["active"]] == ["base"]  # the backend's base row: no custom model
        assert not any(str(e.get("key")).startswith("active:") for e in entries)
        health = server.client.get("/health").json()
        assert health["active"]["source"] == "none" and not health["model_loaded"]
        assert ActiveModel.model_validate_json((runs / POINTER_NAME).read_text()).source == "none"
        assert "last.ckpt is missing or outside the runs root" in server.log.read_text()
        image, _ = png_base64(4)
        assert (
            server.client.post("/sam3/text_prompt", json={"image_base64": image, "text_prompt": "x"}).status_code == 503
        )
    finally:
        shutil.rmtree(runs / "doomed")
