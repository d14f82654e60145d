"""The backend's own UI (`ybat-master/ybat.js` of stephansturges/Tator) against `sam3lite serve` as a real uvicorn
process on 127.0.0.1: each request is built as ybat.js builds it (reference/tator_ui_audit.md quotes them), and
each test asserts the fields the UI reads. No activation token: the UI sends no header. Checkpoints are
tiny-preset files in our layout, including a run the backend trained itself (`checkpoint.pt`)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from serve_harness import Server

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.serve.state import POINTER_NAME
from sam3lite_core.serve.windowed import window_limit_pair
from sam3lite_core.tiling import MAX_WINDOWS, TileSettings, fit_windows, window_count
from sam3lite_core.weights import save_checkpoint

UI_FIELDS = {
    "threshold": 0.0,
    "mask_threshold": 0.5,
    "min_size": 0,
    "simplify_epsilon": 1.5,
    "max_results": 0,
    "windowed": False,
    "window_size": 672,
    "window_overlap": 0.1,
    "merge_iou": 0.5,
}  # ybat.js 43528ff
PICKER = "/sam3/models/available?variant=all&promoted_only=true"  # ybat.js 10465


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """base.ckpt outside the runs root; runs: ours (export + last, promoted with a time), tator_run (the
    backend's own `checkpoint.pt`, an empty marker), plain (not promoted), and what listing must skip."""
    root = tmp_path_factory.mktemp("tator_ui")
    torch.manual_seed(0)
    save_checkpoint(root / "base.ckpt", build_model("tiny"))
    runs = root / "runs"
    for run, names in {
        "ours": ("last.ckpt", "export.ckpt"),
        "tator_run": ("epoch_1.pth", "checkpoint.pt"),
        "plain": ("last.ckpt",),
        "linked_ckpt": (),
    }.items():
        (runs / run / "checkpoints").mkdir(parents=True)
        for i, name in enumerate(names):
            shutil.copy(root / "base.ckpt", runs / run / "checkpoints" / name)
            os.utime(runs / run / "checkpoints" / name, (1_000_000 + i, 1_000_000 + i))
    (runs / "ours" / ".promoted").write_text(json.dumps({"timestamp": 1700000000.5, "keep": "export.ckpt"}))
    (runs / "tator_run" / ".promoted").write_text("")
    (runs / "linked_ckpt" / "checkpoints" / "last.ckpt").symlink_to(root / "base.ckpt")
    (runs / "linked_ckpt" / ".promoted").write_text("{}")
    shutil.copytree(runs / "ours", root / "outside_run")
    (runs / "linked_run").symlink_to(root / "outside_run", target_is_directory=True)
    (runs / "datasets" / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "base.ckpt", runs / "datasets" / "checkpoints" / "last.ckpt")
    return root


@pytest.fixture(scope="module")
def server(home):
    served = Server(home / "runs", base_checkpoint=home / "base.ckpt", token=None)
    yield served
    served.stop()


def jpeg_base64(seed: int = 0, size: tuple[int, int] = (48, 64)) -> str:
    """A JPEG as the UI sends it: bare base64, no `data:` prefix (ybat.js 80237)."""
    pixels = np.random.default_rng(seed).integers(0, 255, size=(*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def picker_activate(server: Server, entry: dict, segmentation: bool = False):
    """The picker's activation (ybat.js 10576): path or null, segmentation off, label prompt:<id>."""
    payload = {
        "checkpoint_path": entry.get("path") or None,
        "enable_segmentation": segmentation,
        "label": f"prompt:{str(entry.get('id') or entry.get('path') or 'sam3').split('/')[-1]}",
    }
    return server.client.post("/sam3/models/activate", json=payload)


def test_picker_lists_promoted_runs_and_activates_them(server, home):
    runs = home / "runs"
    rows = server.client.get(PICKER).json()
    for row in rows:
        assert {"key", "path", "id", "variant", "promoted", "active", "size_bytes", "run_path"} <= set(row)
        assert row["variant"] == "sam3"
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {"Base SAM3", "ours", "tator_run"}  # plain is not promoted; symlinks, datasets skipped
    assert by_id["Base SAM3"] | {} == by_id["Base SAM3"] and by_id["Base SAM3"]["key"] == "base"
    assert by_id["Base SAM3"]["path"] == str(home / "base.ckpt") and by_id["Base SAM3"]["active"] is True
    assert by_id["ours"]["path"] == str(runs / "ours" / "checkpoints" / "export.ckpt")
    assert by_id["ours"]["promoted"] is True and by_id["ours"]["promoted_at"] == 1700000000.5
    assert by_id["tator_run"]["path"] == str(runs / "tator_run" / "checkpoints" / "checkpoint.pt")  # newest
    assert by_id["tator_run"]["promoted"] is True and by_id["tator_run"]["promoted_at"] is None
    assert by_id["tator_run"]["size_bytes"] == (runs / "tator_run" / "checkpoints" / "checkpoint.pt").stat().st_size
    everything = {row["id"] for row in server.client.get("/sam3/models").json()}
    assert everything == {"Base SAM3", "ours", "tator_run", "plain"}
    assert server.client.get("/sam3/models?variant=sam1").json() == []

    answer = picker_activate(server, by_id["tator_run"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["active"] | {"enable_segmentation": None} == {
        "id": "prompt:tator_run",
        "label": "prompt:tator_run",
        "source": "custom",
        "enable_segmentation": None,
        "checkpoint": str(runs / "tator_run" / "checkpoints" / "checkpoint.pt"),
    }
    rows = server.client.get(PICKER).json()
    assert [row["id"] for row in rows if row["active"]] == ["prompt:tator_run", "tator_run"]
    assert rows[1]["key"] == f"active:{runs / 'tator_run' / 'checkpoints' / 'checkpoint.pt'}"

    base = picker_activate(server, by_id["Base SAM3"])  # the "Base SAM3" button: the base's own path
    assert base.status_code == 200 and base.json()["active"]["source"] == "env"
    assert base.json()["active"]["checkpoint"] == str(home / "base.ckpt")
    assert (
        server.client.post("/sam3/models/activate", json={"checkpoint_path": None}).json()["active"]["source"] == "env"
    )


def test_refused_activations_answer_bare_codes_and_write_nothing(server, home):
    assert picker_activate(server, {"id": "Base SAM3", "path": str(home / "base.ckpt")}).status_code == 200
    pointer = home / "runs" / POINTER_NAME
    before = pointer.read_bytes()
    refused = [
        ({"path": str(home / "base.ckpt") + ".missing"}, 400, "sam3_checkpoint_path_invalid"),  # outside, missing
        ({"path": "/etc/hostname"}, 400, "sam3_checkpoint_path_invalid"),  # outside, exists
        ({"path": str(home / "runs" / "ours" / "../../base.ckpt")}, 400, "sam3_checkpoint_path_invalid"),
        (
            {"path": str(home / "runs" / "linked_run" / "checkpoints" / "export.ckpt")},
            400,
            "sam3_checkpoint_path_invalid",
        ),
        ({"path": str(home / "runs" / "ours" / "checkpoints")}, 400, "sam3_checkpoint_path_invalid"),
        ({"path": str(home / "runs" / "ours" / "nope.pt")}, 404, "sam3_checkpoint_not_found"),
        ({"path": "x" * 5000}, 400, "sam3_checkpoint_path_invalid"),  # a name no file system holds
        ({"path": str(home / "runs") + "/a\x00b"}, 400, "sam3_checkpoint_path_invalid"),
    ]
    for entry, status, code in refused:
        answer = picker_activate(server, entry)
        assert (answer.status_code, answer.json()["detail"]) == (status, code), answer.text
        assert answer.json()["message"]
    trained = {
        "checkpoint_path": str(home / "runs" / "ours" / "checkpoints" / "export.ckpt"),
        "enable_segmentation": True,
        "label": "run",
    }  # after training (ybat.js 17658), seg on by default
    answer = server.client.post("/sam3/models/activate", json=trained)
    assert (answer.status_code, answer.json()["detail"]) == (400, "sam3_segmentation_unsupported")
    for body in ({"checkpoint_path": 5}, {"checkpoint_path": ["a"]}, {"enable_segmentation": "maybe"}):
        assert server.client.post("/sam3/models/activate", json=body).status_code == 422
    assert (
        server.client.post(
            "/sam3/models/activate", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 422
    )
    assert pointer.read_bytes() == before
    assert server.client.get("/health").json()["active"]["source"] == "env"


def test_text_prompts_as_the_ui_sends_them(server, home):
    picker_activate(server, {"id": "ours", "path": str(home / "runs" / "ours" / "checkpoints" / "export.ckpt")})
    image = jpeg_base64(1)
    request = {
        **UI_FIELDS,
        "text_prompt": "circle",
        "image_name": "a.jpg",
        "sam_variant": "sam3",
        "image_token": "f" * 32,
    }
    first = server.client.post("/sam3/text_prompt", json=request)
    assert first.status_code == 404  # unknown token: the UI resends with base64 (ybat.js 44710)
    answer = server.client.post("/sam3/text_prompt", json={**request, "image_token": None, "image_base64": image})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    num_queries = build_model("tiny").cfg.transformer.num_queries
    assert len(body["detections"]) == num_queries  # max_results 0: unlimited, threshold 0 keeps every query
    for det in body["detections"]:
        assert det["source"] == "sam3_text" and det["qwen_label"] == "circle" and det["simplify_epsilon"] == 1.5
        assert det["mask"] is None and len(det["bbox"]) == 4 and det["score"] is not None
    assert body["masks"] is None and body["warnings"] == []
    lenient = {
        **request,
        "image_token": body["image_token"],
        "sam_variant": None,
        "min_size": -5,
        "max_results": -1,
        "simplify_epsilon": -2,
        "window_overlap": None,
        "merge_iou": None,
    }
    again = server.client.post("/sam3/text_prompt", json=lenient).json()
    assert [d["score"] for d in again["detections"]] == [d["score"] for d in body["detections"]]
    assert {d["simplify_epsilon"] for d in again["detections"]} == {0.0}
    refused = [
        ({"max_results": "many"}, 422),
        ({"threshold": 2}, 422),
        ({"text_prompt": ""}, 422),
        ({"window_overlap": 1.0}, 422),
        ({"sam_variant": "sam1"}, 400),
        ({"image_token": None}, 422),
    ]
    for change, status in refused:
        assert server.client.post("/sam3/text_prompt", json={**lenient, **change}).status_code == status, change
    answer = server.client.post("/sam3/text_prompt", json={**lenient, "sam_variant": "sam2"}).json()
    assert answer["detail"] == "sam_variant_unavailable:sam2" and "sam3" in answer["message"]


def test_windowed_with_the_ui_smallest_window(server, home):
    picker_activate(server, {"id": "ours", "path": str(home / "runs" / "ours" / "checkpoints" / "export.ckpt")})
    request = {
        **UI_FIELDS,
        "text_prompt": "circle",
        "image_base64": jpeg_base64(2),
        "windowed": True,
        "window_size": 1,
        "max_results": 4,
        "sam_variant": "sam3",
    }  # ybat.js allows any size > 0
    answer = server.client.post("/sam3/text_prompt", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    notes = dict(w.split(":", 1) for w in body["warnings"] if ":" in w)
    assert notes["windowed_window_size_clamped"] == "1->16" and notes["windowed_tiles"] == "20"  # 48 x 64 px
    assert notes["windowed_image_size"] == "64x48" and notes["windowed_coverage_bounds"] == "0,0,64,48"
    assert notes["windowed_coverage_fraction"] == "1.0000" and notes["windowed_uncovered_pixels"] == "0"
    assert "windowed_incomplete_coverage" not in body["warnings"]
    assert (notes["windowed_per_window_limit"], notes["windowed_final_limit"]) == ("50", "4")
    raw, fused, final = (int(notes[f"windowed_{k}_detections"]) for k in ("raw", "fused", "final"))
    assert raw >= fused >= final == len(body["detections"]) and 0 < final <= 4
    unlimited = server.client.post(
        "/sam3/text_prompt",
        json={**request, "image_base64": None, "max_results": 0, "image_token": body["image_token"]},
    ).json()
    assert not any(w.startswith(("windowed_per_window_limit", "windowed_final_limit")) for w in unlimited["warnings"])


def test_window_rules():
    assert window_limit_pair(4) == (50, 4) and window_limit_pair(80) == (80, 80)
    assert window_limit_pair(0) == window_limit_pair(None) == (None, None)
    fitted = fit_windows(4000, 3000, TileSettings(size=16, overlap=0.1))
    smaller = TileSettings(fitted.size - 1, 0.1)
    assert window_count(4000, 3000, fitted) <= MAX_WINDOWS < window_count(4000, 3000, smaller)
    assert fit_windows(48, 64, TileSettings(size=672)) == TileSettings(size=672)


def test_visual_prompts_coerced_as_the_backend_does(server, home):
    picker_activate(server, {"id": "ours", "path": str(home / "runs" / "ours" / "checkpoints" / "export.ckpt")})
    token = server.client.post(
        "/sam_preload",
        json={"slot": "current", "sam_variant": "sam3", "image_name": "v.jpg", "image_base64": jpeg_base64(3)},
    ).json()["token"]
    base = {
        "image_token": token,
        "threshold": 0.0,
        "mask_threshold": 0.2,
        "min_size": 0,
        "simplify_epsilon": 0,
        "max_results": 0,
        "image_name": "v.jpg",
        "sam_variant": "sam3",
    }  # ybat.js 44479
    clean = server.client.post(
        "/sam3/visual_prompt", json={**base, "bboxes": [[4, 4, 16, 20], [30, 10, 20, 30]], "bbox_labels": [True, False]}
    )
    assert clean.status_code == 200, clean.text
    expected = clean.json()["detections"]
    assert expected and {d["source"] for d in expected} == {"sam3_text"}
    coerced = [
        {
            "bboxes": [[4, 4, 16, 20], [1, 1, 0, 5], {"left": 30, "top": 10, "width": 20, "height": 30}],
            "bbox_labels": [True, "no", True, False],
        },  # zero-width dropped, labels truncated
        {
            "bboxes": [[4, 4, 16, 20], [30, 10, 20, 30], "junk"],
            "bbox_labels": [1, 0],
            "bbox_left": 0,
            "bbox_top": 0,
            "bbox_width": 5,
            "bbox_height": 5,
        },  # the list wins over the single box
    ]
    for change in coerced:
        answer = server.client.post("/sam3/visual_prompt", json={**base, **change})
        assert answer.status_code == 200 and answer.json()["detections"] == expected, change
    padded = server.client.post(
        "/sam3/visual_prompt", json={**base, "bboxes": [[4, 4, 16, 20], [30, 10, 20, 30]], "bbox_labels": [True]}
    ).json()
    both = server.client.post("/sam3/visual_prompt", json={**base, "bboxes": [[4, 4, 16, 20], [30, 10, 20, 30]]})
    assert padded["detections"] == both.json()["detections"]  # labels padded with True
    for bad in (
        {"bboxes": [[1, 1, 0, 0]]},
        {"bboxes": [[1, 1, 0, 0]], "bbox_left": 1, "bbox_top": 1, "bbox_width": 0, "bbox_height": 4},
        {"bboxes": "lots"},
        {"bbox_left": "x"},
    ):
        assert server.client.post("/sam3/visual_prompt", json={**base, **bad}).status_code == 422, bad


def test_health_and_connection_routes(server, home):
    slots = server.client.get("/sam_slots")  # the UI's connection test (ybat.js 45347)
    assert slots.status_code == 200 and isinstance(slots.json(), list)
    for row in slots.json():
        assert {"slot", "image_name", "variant"} <= set(row)
    preload = {"slot": "next", "sam_variant": "sam3", "image_name": "n.jpg", "image_base64": jpeg_base64(4)}
    loaded = server.client.post("/sam_preload", json=preload).json()
    assert loaded["status"] == "ready" and (loaded["width"], loaded["height"]) == (64, 48)
    assert len(loaded["token"]) == 32
    held = {row["slot"]: row for row in server.client.get("/sam_slots").json()}["next"]
    assert (held["image_name"], held["variant"], held["token"]) == ("n.jpg", "sam3", loaded["token"])
    by_token = server.client.post("/sam_preload", json={"slot": "current", "image_token": loaded["token"]}).json()
    assert by_token["token"] == loaded["token"]
    refused = [
        ({**preload, "slot": "nxt"}, 409, "slot_invalid:nxt"),
        ({**preload, "sam_variant": "sam1"}, 400, "sam_variant_unavailable:sam1"),
        ({"slot": "current", "image_token": "0" * 32}, 404, None),
        ({"slot": "next", "image_token": loaded["token"]}, 422, None),
        ({"slot": "current"}, 422, None),
        ({**preload, "image_base64": "%%%"}, 400, None),
        ({**preload, "preload_generation": "x"}, 422, None),
    ]
    for body, status, code in refused:
        answer = server.client.post("/sam_preload", json=body)
        assert answer.status_code == status and (code is None or answer.json()["detail"] == code), answer.text

    options = server.client.get("/sam3_runtime_options").json()["options"]  # ybat.js 45575
    assert options and all({"id", "available", "guidance", "setup_command"} <= set(o) for o in options)
    summary = server.client.get("/system/health_summary").json()  # the self-test (ybat.js 24422)
    assert {"ok", "gpu", "storage", "datasets", "models", "errors"} <= set(summary) and summary["ok"] is True
    assert summary["gpu"]["available"] is torch.cuda.is_available() and summary["datasets"] == {"count": 0}
    assert summary["models"]["sam3_runs"] == 3 and summary["models"]["sam3"]["loaded"] is True
    assert server.client.get("/system/gpu").status_code == server.client.get("/system/storage_check").status_code == 200


def test_bodies_over_the_limit_are_refused_while_read(server):
    limit = int(0.25 * 2**20) * 4 // 3 + 2**16  # the harness's --max-upload-mb 0.25

    def chunks():
        yield b'{"image_base64": "'
        for _ in range(limit // 2**16 + 2):
            yield b"A" * 2**16
        yield b'", "text_prompt": "x"}'

    answer = server.client.post("/sam3/text_prompt", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    declared = server.client.post(
        "/sam_preload", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413
