"""`sam3lite up` end to end, driven as the backend's UI drives its own API (ybat.js, the dataset upload and the
SAM3 training panel): upload the synthetic dataset in the UI's batches of 48, list datasets, convert, start a job
with the panel's fields, poll it every 1.5 s until it succeeds, activate its checkpoint, prompt it. A duplicate
run name gets 409; a run its job trains cannot be deleted; a second job is cancelled mid-training and leaves no
training process. Stopping `up` leaves no process at all."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from dagster_servers import free_port
from PIL import Image
from pipeline_harness import DATASET, training_processes
from upload_client import upload

from sam3lite_core.data.synth import write_synth

TRAIN_DEFAULTS = "preset: tiny\nlr_scale: 1.0\nema_tau: 5.0\nskip_first_val: false\nlog_freq: 1\n"
UPLOADED = 60  # images: two batches of 48 and 12, as the UI sends them
POLL_S = 1.5  # the UI's polling interval


def ui_payload(run_name: str, **changed) -> dict:
    """Every field the training panel sends (tator.html defaults) with a CPU-sized schedule typed in."""
    payload = {
        "dataset_id": DATASET,
        "random_split": True,
        "val_percent": 0.2,
        "split_seed": 42,
        "run_name": run_name,
        "train_batch_size": 2,
        "val_batch_size": 2,
        "num_train_workers": 0,
        "num_val_workers": 0,
        "max_epochs": 2,
        "resolution": 112,
        "lr_scale": 0.1,
        "gradient_accumulation_steps": 1,
        "val_epoch_freq": 1,
        "scheduler_warmup": 20,
        "scheduler_timescale": 20,
        "target_epoch_size": 3,
        "num_gpus": 1,
        "balance_classes": False,
        "val_score_thresh": 0.2,
        "val_max_dets": 1000,
        "enable_segmentation_head": True,
    }
    return payload | changed


class Up:
    """`sam3lite up` in a subprocess (its own session) on free loopback ports."""

    def __init__(self, home: Path, mark: str, env: dict[str, str]) -> None:
        self.home = home
        self.port, dagster_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / "up.log"
        env = os.environ | env | {"OMP_NUM_THREADS": "1", "SAM3LITE_TEST_MARK": mark}
        env.pop("SAM3_CHECKPOINT_PATH", None)
        argv = ["up", "--home", str(home), "--port", str(self.port), "--dagster-port", str(dagster_port)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sam3lite_core.cli", *argv, "--device", "cpu"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.client = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.monotonic() + 120
        while not self._answers():
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.5)

    def _answers(self) -> bool:
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> float:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=90) == 0, self.log.read_text()
        return time.monotonic() - started


def ours(marker: str) -> list[int]:
    """Live processes that inherited the test's marker (the stack, its run workers, training)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def poll(up: Up, job_id: str, until: set[str], timeout_s: float = 120) -> list[dict]:
    """The job as the UI sees it every 1.5 s, until its status is in `until`."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(up.client.get(f"/sam3/train/jobs/{job_id}").json())
        if seen[-1]["status"] in until:
            return seen
        time.sleep(POLL_S)
    raise AssertionError(f"job {job_id} still {seen[-1]['status']}: {seen[-1]['logs'][-10:]}")


def jpeg_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def train_and_use(up: Up, dataset: Path) -> None:
    landed = upload(up.client, dataset, DATASET)
    assert landed.status_code == 200 and landed.json()["image_count"] == UPLOADED, landed.text
    listed = up.client.get("/sam3/datasets").json()
    assert [(d["id"], d["coco_ready"], d["type"]) for d in listed] == [(DATASET, False, "bbox")]
    converted = up.client.post(f"/sam3/datasets/{DATASET}/convert").json()
    assert converted["train_count"] + converted["val_count"] == converted["image_count"] == UPLOADED
    assert up.client.get("/sam3/datasets").json()[0]["coco_ready"] is True

    job_id = up.client.post("/sam3/train/jobs", json=ui_payload("sam3_synth_first")).json()["job_id"]
    seen = poll(up, job_id, {"succeeded", "failed", "cancelled"})
    job = seen[-1]
    assert job["status"] == "succeeded", job["error"]
    assert {"queued", "running"} & {s["status"] for s in seen}
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert "enable_segmentation_head: true was coerced" in job["logs"][0]["message"]
    train = [m for m in job["metrics"] if m["phase"] == "train"]
    val = [m for m in job["metrics"] if m["phase"] == "val" and "coco_ap50" in m]
    assert train and set(train[0]) == {
        "phase", "train_loss_batch", "train_loss_avg10", "batch", "batches_per_epoch", "epoch", "total_epochs",
        "step", "timestamp",
    }  # fmt: skip
    assert train[-1]["total_epochs"] == 2 and train[-1]["batches_per_epoch"] == 3
    assert [m["epoch"] for m in val] == [1, 2]
    result = job["result"]
    assert result["checkpoint"].endswith("sam3_synth_first/checkpoints/export.ckpt")
    assert result["enable_segmentation"] is False

    again = up.client.post("/sam3/train/jobs", json=ui_payload("sam3_synth_first"))
    assert again.status_code == 409 and "run_name_exists" in again.text
    activated = up.client.post(
        "/sam3/models/activate",
        json={"checkpoint_path": result["checkpoint"], "label": "first", "enable_segmentation": False},
    )
    assert activated.status_code == 200, activated.text
    prompt = {"text_prompt": "red circle", "image_base64": jpeg_base64(), "sam_variant": "sam3"}
    answer = up.client.post("/sam3/text_prompt", json=prompt)
    assert answer.status_code == 200 and isinstance(answer.json()["detections"], list), answer.text
    history = (up.home / "runs" / "activation_history.json").read_text()
    assert '"action": "manual"' in history and result["checkpoint"] in history


def cancel_mid_training(up: Up, marker: str) -> None:
    job_id = up.client.post("/sam3/train/jobs", json=ui_payload("sam3_synth_long", max_epochs=500)).json()["job_id"]
    deadline = time.monotonic() + 90
    while not [m for m in up.client.get(f"/sam3/train/jobs/{job_id}").json()["metrics"] if m["phase"] == "train"]:
        assert time.monotonic() < deadline, up.client.get(f"/sam3/train/jobs/{job_id}").json()["logs"][-10:]
        time.sleep(0.5)
    assert training_processes(marker)
    listed = {row["id"]: row for row in up.client.get("/sam3/storage/runs").json()}
    assert listed["sam3_synth_long"]["active"] is True and listed["sam3_synth_first"]["active"] is False
    refused = up.client.delete("/sam3/storage/runs/sam3_synth_long")
    assert (refused.status_code, refused.json()["detail"]) == (409, "sam3_run_active")
    assert up.client.post(f"/sam3/train/jobs/{job_id}/cancel").json() == {"status": "cancelling"}
    assert poll(up, job_id, {"cancelled", "failed", "succeeded"}, timeout_s=60)[-1]["status"] == "cancelled"
    assert not training_processes(marker)
    again = up.client.post(f"/sam3/train/jobs/{job_id}/cancel")
    assert (again.status_code, again.json()["detail"]) == (428, "job_not_cancellable")
    jobs = up.client.get("/sam3/train/jobs").json()
    assert [(j["job_id"], j["status"]) for j in jobs][0] == (job_id, "cancelled")


@pytest.mark.e2e
def test_the_ui_uploads_trains_activates_and_cancels_through_up(tmp_path):
    dataset = tmp_path / "synth"
    write_synth(dataset, images=UPLOADED, seed=0)
    defaults = tmp_path / "defaults.yaml"  # an uploaded dataset has no sam3lite.yaml: the pipeline's defaults
    defaults.write_text(TRAIN_DEFAULTS)
    mark = uuid.uuid4().hex
    marker = f"SAM3LITE_TEST_MARK={mark}"
    up = Up(tmp_path / "home", mark, {"SAM3LITE_TRAIN_DEFAULTS": str(defaults)})
    try:
        train_and_use(up, dataset)
        cancel_mid_training(up, marker)
        # The activated model's run may go, as in the backend: the service falls back to its base (none here).
        deleted = up.client.delete("/sam3/storage/runs/sam3_synth_first").json()
        assert deleted["freed_bytes"] > 0 and up.client.get("/health").json()["model_loaded"] is False
    finally:
        up.stop()
    assert not ours(marker)
