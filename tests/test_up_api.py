"""The backend's training-job, dataset and run-storage routes of `sam3lite up`, in process (FastAPI TestClient over
a real Dagster instance on disk): what a careless or hostile request gets, a failed job's error shape, a job read
again by a fresh service (as after a restart of `up`), run storage, the cache, and the request mapping.
`test_up_e2e.py` drives the same routes through a running stack."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest
import torch
from fastapi.testclient import TestClient
from pipeline_harness import DATASET, pipeline_defs, stage

from sam3lite_core.train.run_folder import COLUMNS
from sam3lite_pipeline.api.app import ServiceSettings, create_up_app
from sam3lite_pipeline.api.metrics import job_metrics, job_progress
from sam3lite_pipeline.api.request import Sam3TrainRequest, plan_job
from sam3lite_pipeline.resources import StorageRoots

NOWHERE = "http://127.0.0.1:9"  # no Dagster webserver: a route that reached it would fail with 503


@pytest.fixture()
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    stage(home)
    (home / "datasets" / DATASET / "sam3lite.yaml").write_text("preset: tiny\n")
    (home / "runs").mkdir()
    (home / "dagster_home").mkdir()
    (home / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def service(
    home: Path, cors: tuple[str, ...] = (), instance: dg.DagsterInstance | None = None
) -> tuple[TestClient, dg.DagsterInstance]:
    instance = instance or dg.DagsterInstance.from_config(str(home / "dagster_home"))
    storage = StorageRoots(datasets=str(home / "datasets"), cache=str(home / "cache"), runs=str(home / "runs"))
    app = create_up_app(ServiceSettings(storage=storage, dagster_url=NOWHERE, cors_origins=cors), instance)
    return TestClient(app), instance


def refused(answer, status: int, code: str) -> None:
    assert (answer.status_code, answer.json().get("detail")) == (status, code), answer.text
    assert len(answer.text) < 2000  # a hostile value is never echoed whole


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"dataset_id": "nope"}, 404, "sam3_dataset_not_found"),
        ({"dataset_id": ".."}, 404, "sam3_dataset_not_found"),
        ({"dataset_id": "../home/datasets/synth"}, 404, "sam3_dataset_not_found"),
        ({"dataset_id": DATASET, "run_name": ".."}, 400, "sam3_run_path_invalid"),
        ({"dataset_id": DATASET, "run_name": "x" * 5000}, 400, "sam3_run_path_invalid"),
        ({"dataset_id": DATASET, "run_name": "datasets"}, 400, "sam3_run_path_invalid"),
        ({"dataset_id": DATASET, "experiment_log_dir": "/etc"}, 400, "sam3_run_path_invalid"),
        ({"dataset_id": DATASET, "experiment_log_dir": "../elsewhere"}, 400, "sam3_run_path_invalid"),
        ({"dataset_id": DATASET, "run_name": "taken"}, 409, "run_name_exists"),
        ({"dataset_id": DATASET, "max_epochs": 0}, 400, "sam3_training_config_invalid"),
        ({"dataset_id": DATASET, "balance_strategy": "bogus"}, 400, "sam3_training_config_invalid"),
        ({"dataset_id": DATASET, "prompt_variants": {"red circle": 7}}, 400, "sam3_training_config_invalid"),
    ],
)
def test_bad_job_requests_are_refused_with_the_backend_codes(home, body, status, code):
    (home / "runs" / "taken").mkdir()
    client, _ = service(home)
    refused(client.post("/sam3/train/jobs", json=body), status, code)
    assert sorted(p.name for p in (home / "runs").iterdir()) == ["taken"]  # nothing written


def test_wrong_types_and_datasets_that_cannot_train(home):
    client, _ = service(home)
    assert client.post("/sam3/train/jobs", json={"dataset_id": DATASET, "max_epochs": "lots"}).status_code == 422
    garbled = client.post("/sam3/train/jobs", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert garbled.status_code == 400 and garbled.json()["detail"], garbled.text
    (home / "datasets" / DATASET / "labelmap.txt").unlink()
    refused(client.post("/sam3/train/jobs", json={"dataset_id": DATASET}), 400, "sam3_labelmap_missing")
    refused(client.post(f"/sam3/datasets/{DATASET}/convert"), 400, "sam3_labelmap_missing")
    (home / "datasets" / "empty").mkdir()
    (home / "datasets" / "empty" / "labelmap.txt").write_text("a\n")
    refused(client.post("/sam3/train/jobs", json={"dataset_id": "empty"}), 400, "sam3_yolo_split_missing")


def test_the_full_size_default_needs_base_weights(home, tmp_path):
    (home / "datasets" / DATASET / "sam3lite.yaml").unlink()
    client, _ = service(home)
    answer = client.post("/sam3/train/jobs", json={"dataset_id": DATASET})
    refused(answer, 400, "sam3_base_checkpoint_missing")
    assert "--base-checkpoint" in answer.json()["message"]
    base = tmp_path / "sam3.pt"
    plan = plan_job(Sam3TrainRequest(dataset_id=DATASET), home / "runs", home / "datasets" / DATASET, None, base, "x")
    assert plan.tunables == {"preset": "sam3", "init_checkpoint": str(base)}


def test_request_fields_map_onto_the_run_config(home):
    request = Sam3TrainRequest.model_validate(
        {
            "dataset_id": DATASET,
            "run_name": "my run/../x",
            "language_backbone_lr": 0.0,
            "val_percent": 0.95,
            "num_gpus": 2,
            "train_segmentation": True,
            "random_split": True,
            "made_up": 1,
        }
    )
    plan = plan_job(request, home / "runs", home / "datasets" / DATASET, None, None, "fallback")
    assert plan.run_name == "my_run_.._x"
    assert plan.tunables == {"lr_language_backbone": 0.0}  # the dataset's file chose the preset
    assert plan.split == {"val_percent": 0.9}
    config = plan.run_config()
    assert config["resources"] == {"launcher": {"config": {"nproc_per_node": 2}}}
    assert config["ops"]["trained_model"]["config"]["run_name"] == "my_run_.._x"
    notes = " ".join(plan.notes)
    assert "train_segmentation: true was coerced" in notes and "random_split" in notes and "made_up" in notes


def test_datasets_listing_reads_and_never_writes(home):
    client, _ = service(home)
    (home / "datasets" / ".hidden").mkdir()
    before = {p: p.stat().st_mtime_ns for p in (home / "datasets").rglob("*")}
    listed = client.get("/sam3/datasets").json()
    assert [d["id"] for d in listed] == [DATASET]
    entry = listed[0]
    assert entry["coco_ready"] is False and entry["image_count"] == 12 and entry["coco_seg_ready"] is False
    classes = client.get(f"/sam3/datasets/{entry['signature']}/classes").json()["classes"]
    assert classes == entry["classes"] == client.get(f"/sam3/datasets/{DATASET}/classes").json()["classes"]
    refused(client.get("/sam3/datasets/%2e%2e/classes"), 404, "sam3_dataset_not_found")
    assert {p: p.stat().st_mtime_ns for p in (home / "datasets").rglob("*")} == before


def test_a_failed_job_has_the_backend_error_and_survives_a_restart(home):
    # Entered, the instance is the one Dagster's definitions loading sees (a context variable).
    with dg.DagsterInstance.from_config(str(home / "dagster_home")) as instance:
        client, _ = service(home, instance=instance)
        instance.add_dynamic_partitions("datasets", ["gone"])
        train = pipeline_defs(home).resolve_job_def("train")
        result = train.execute_in_process(instance=instance, partition_key="gone", raise_on_error=False)
    job = client.get(f"/sam3/train/jobs/{result.run_id}").json()
    assert job["status"] == "failed" and job["progress"] == 0.0 and job["result"] is None
    assert job["error"].startswith("exit_code:1\nlast_logs:\n") and "does not exist" in job["error"]
    assert job["message"].startswith("[Dagster UI or CLI]")
    assert [entry["seq"] for entry in job["logs"]] == list(range(1, len(job["logs"]) + 1))
    refused(client.post(f"/sam3/train/jobs/{result.run_id}/cancel"), 428, "job_not_cancellable")
    refused(client.get("/sam3/train/jobs/" + "f" * 300), 404, "sam3_job_not_found")
    again, _ = service(home)  # a new service on the same instance: `up` restarted
    assert again.get(f"/sam3/train/jobs/{result.run_id}").json() == job
    assert [j["job_id"] for j in again.get("/sam3/train/jobs").json()] == [result.run_id]


def _run(home: Path, name: str) -> Path:
    folder = home / "runs" / name / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(4)}}, folder / "export.ckpt")
    torch.save({"model": {"w": torch.zeros(4)}, "optimizer": {"state": torch.zeros(1000)}}, folder / "last.ckpt")
    torch.save({"model": {"w": torch.zeros(4)}}, folder / "best.ckpt")
    (home / "runs" / name / "tensorboard").mkdir()
    (home / "runs" / name / "tensorboard" / "events").write_bytes(b"x" * 100)
    return folder.parent


def test_run_storage_lists_deletes_and_promotes(home, tmp_path):
    client, _ = service(home)
    run = _run(home, "r1")
    (home / "runs" / "escape").symlink_to(tmp_path)
    rows = client.get("/sam3/storage/runs").json()
    assert [r["id"] for r in rows] == ["r1"] and rows[0]["tensorboard_size_bytes"] == 100
    assert {c["file"] for c in rows[0]["checkpoints"]} == {"export.ckpt", "last.ckpt", "best.ckpt"}
    for bad in ("..", ".hidden", "escape", "a\\b"):
        refused(client.delete("/sam3/storage/runs/" + quote(bad, safe="").replace(".", "%2E")), 400, "invalid_run_id")
    refused(client.delete("/sam3/storage/runs/none"), 404, "sam3_run_not_found")
    refused(client.post("/sam3/storage/runs/none/promote"), 404, "sam3_run_not_found")
    assert client.get("/sam3/storage/runs", params={"variant": "x" * 100}).status_code == 422
    refused(client.delete("/sam3/storage/runs/r1?scope=../../"), 400, "invalid_scope")
    gone = client.delete("/sam3/storage/runs/r1?scope=tensorboard").json()
    assert gone == {"deleted": [str(run / "tensorboard")], "freed_bytes": 100} and tmp_path.exists()
    promoted = client.post("/sam3/storage/runs/r1/promote").json()
    assert promoted["promoted"] is True and promoted["kept"] == str(run / "checkpoints" / "export.ckpt")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["export.ckpt"] and promoted["freed_bytes"] > 4000
    assert json.loads((run / ".promoted").read_text())["keep"] == promoted["kept"]
    assert client.get("/sam3/storage/runs").json()[0]["promoted"] is True
    (run / "checkpoints" / "export.ckpt").unlink()
    refused(client.post("/sam3/storage/runs/r1/promote"), 404, "sam3_checkpoints_missing")
    assert client.delete("/sam3/storage/runs/r1").json()["deleted"] == [str(run)]


def test_cache_size_and_purge(home):
    client, _ = service(home)
    (home / "cache" / "coco").mkdir(parents=True)
    (home / "cache" / "coco" / "a.json").write_bytes(b"x" * 300)
    (home / "cache" / "b").write_bytes(b"y" * 20)
    assert client.get("/sam3/train/cache_size").json() == {"bytes": 320}
    purged = client.post("/sam3/train/cache/purge").json()
    assert purged == {"status": "ok", "deleted_bytes": 320, "deleted_entries": 2}
    assert list((home / "cache").iterdir()) == []


def test_metrics_come_from_the_run_folder_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("max_epochs: 3\n")
    rows = [
        {"phase": "train", "epoch": 1, "step": 1, "batch": 1, "batches_per_epoch": 2, "loss": 4.0, "time_s": 10.5},
        {"phase": "train", "epoch": 1, "step": 2, "batch": 2, "batches_per_epoch": 2, "loss": "nan", "time_s": 11},
        {"phase": "epoch", "epoch": 1, "step": 2, "loss": 3.0},
        {"phase": "val", "epoch": 1, "step": 2, "AP": 0.25, "AP50": 0.5, "AR100": 0.75, "time_s": 12},
    ]
    with open(run / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        handle.write("train,2,3,1")  # a row the trainer is writing right now
    (run / "progress.json").write_text(
        json.dumps(
            {"phase": "val", "epoch": 1, "total_epochs": 3, "step": 2, "total_steps": 6, "val_step": 1, "val_total": 4}
        )
    )
    metrics = job_metrics(run, live=True)
    assert metrics[0] == {
        "phase": "train", "train_loss_batch": 4.0, "train_loss_avg10": 4.0, "batch": 1, "batches_per_epoch": 2,
        "epoch": 1, "total_epochs": 3, "step": 1, "timestamp": 10.5,
    }  # fmt: skip
    assert metrics[1]["train_loss_batch"] is None and metrics[1]["train_loss_avg10"] == 4.0
    assert metrics[2] == {
        "phase": "val", "epoch": 1, "coco_ap": 0.25, "coco_ap50": 0.5, "coco_ap75": None, "coco_ar10": None,
        "coco_ar100": 0.75, "timestamp": 12.0,
    }  # fmt: skip
    assert metrics[3] == {"phase": "val", "val_step": 1, "val_total": 4, "epoch": 1, "total_epochs": 3}
    assert len(job_metrics(run, live=False)) == 3
    assert job_progress(run, "running") == pytest.approx(0.925)
    assert (job_progress(run, "queued"), job_progress(run, "succeeded"), job_progress(None, "running")) == (0, 1, 0)


def test_activation_through_the_ui_records_the_incumbent(home):
    from sam3lite_core.serve.schemas import ActiveModel
    from sam3lite_pipeline.api.app import record_activation
    from sam3lite_pipeline.ops.history import History

    run = _run(home, "r2")
    (run / "config.yaml").write_text(f"dataset: {home / 'datasets' / DATASET}\n")
    history = History(home / "runs")
    checkpoint = str(run / "checkpoints" / "export.ckpt")
    record_activation(history, ActiveModel(id="x", label="x", checkpoint=checkpoint, source="custom"))
    record_activation(history, ActiveModel(id="b", label="Base SAM3", checkpoint=None, source="env"))
    assert history.incumbent(DATASET).checkpoint == checkpoint
    assert [e.action for e in history.entries()] == ["manual"]


def test_the_ui_page_origin_may_call_when_allowed(home):
    client, _ = service(home, cors=("http://localhost:8000",))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = client.options("/sam3/train/jobs", headers={"Origin": "http://localhost:8000", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:8000"
    other = client.get("/sam3/datasets", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_balanced_run_reports_its_balance_line(tmp_path):
    from train_helpers import make_dataset, threads, tiny_config

    from sam3lite_core.train.loop import train
    from sam3lite_pipeline.api.jobs import run_result

    runs = tmp_path / "runs"
    config = tiny_config(
        make_dataset(tmp_path / "synth"), runs, run_name="b", max_epochs=1, balance_strategy="inv_sqrt"
    )
    with threads(1):
        train(config)
    result = run_result(runs / "b")
    assert "[sam3-balance] strategy=inv_sqrt" in result["balance_info"]
    assert result["checkpoint"] == str(runs / "b" / "checkpoints" / "export.ckpt")


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--port", "0"], "port 0 is not between 1 and 65535"),
        (["--dagster-port", "70000"], "port 70000"),
        (["--upload-max-file-mb", "0"], "must be > 0"),
        (["--upload-zip-max-ratio", "-1"], "must be > 0"),
        (["--base-checkpoint", "missing.pt"], "is not a file"),
        (["--port", "many"], "invalid int value"),
    ],
)
def test_up_refuses_bad_options_before_starting_anything(tmp_path, capsys, option, says):
    from sam3lite_core.cli import main

    home = tmp_path / "home"
    with pytest.raises(SystemExit) if option == ["--port", "many"] else contextlib.nullcontext():
        assert main(["up", "--home", str(home), *option]) != 0
    assert says in capsys.readouterr().err and not home.exists()
