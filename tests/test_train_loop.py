"""`train(config, on_event)` end to end on the tiny preset: the run folder and result, checkpoints that load
with weights_only, the export, validation cadence, the empty-val fallback, early stopping, the time limit, the
non-finite abort and the refusal to overwrite a run."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import Recorder, make_dataset, threads, tiny_config

from sam3lite_core.eval.coco_eval import STAT_NAMES
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.train.loader import cpu_threads, worker_count
from sam3lite_core.train.loop import train
from sam3lite_core.weights import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_loop")
    return make_dataset(root / "synth"), root / "runs"


@pytest.fixture(scope="module")
def finished(work):
    """3 epochs, validation every 2 (so after epochs 2 and 3), EMA on, upstream lines on."""
    dataset, runs = work
    recorder = Recorder()
    with threads(1):
        result = train(
            tiny_config(dataset, runs, run_name="full", max_epochs=3, val_epoch_freq=2, upstream_log_lines=True),
            recorder,
        )
    return result, recorder


def test_run_folder_contents(finished):
    result, _ = finished
    run = Path(result.run_dir)
    assert run.name == "full"
    for rel in (
        "config.yaml",
        "metrics.csv",
        "result.json",
        "train.log",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "checkpoints/export.ckpt",
        "plots/loss.png",
        "plots/map.png",
        "plots/pr_curve.png",
    ):
        assert (run / rel).is_file(), rel
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert json.loads((run / "result.json").read_text()) == json.loads(result.model_dump_json())
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    phases = [row["phase"] for row in rows]
    assert phases.count("train") == 15 and phases.count("epoch") == 3 and phases.count("val") == 2
    times = [float(row["time_s"]) for row in rows if row["time_s"]]
    assert times == sorted(times) and len(set(times)) > len(times) / 2  # to the ms, not 6 digits of a unix time
    log = (run / "train.log").read_text()
    assert "[sam3lite-result]" in log and "Train Epoch: [2][" in log and "Meters: {" in log


def test_result_and_events(finished):
    result, recorder = finished
    assert result.stopped_reason == "completed"
    assert (result.epochs_done, result.steps_done, result.train_images, result.val_images) == (3, 15, 10, 2)
    assert set(result.best_metrics) == set(STAT_NAMES) and result.best_epoch in (2, 3)
    assert len(result.config_hash) == 16 and len(result.dataset_signature) == 64
    assert [m["epoch"] for m in recorder.val_metrics()] == [2, 3]  # val_epoch_freq 2, and after the last epoch
    assert [m["step"] for m in recorder.train_metrics()] == list(range(1, 16))
    progress = [e.progress for e in recorder.events if e.kind == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert recorder.events[-1].kind == "result" and recorder.events[-1].data == result.model_dump(mode="json")


def test_checkpoints_load_weights_only_and_export_is_the_ema(finished):
    result, _ = finished
    last = torch.load(result.last_checkpoint, weights_only=True)
    for key in (
        "model",
        "model_config",
        "optimizer",
        "scheduler",
        "scaler",
        "ema",
        "miner",
        "rng",
        "train_state",
        "config",
        "dataset_signature",
        "metrics",
    ):
        assert key in last, key
    assert last["train_state"]["step"] == 15 and last["train_state"]["epoch"] == 3
    assert all(k.startswith("detector.") for k in last["model"])
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["train_state"]["best_epoch"] == result.best_epoch
    export = torch.load(result.export_checkpoint, weights_only=True)
    assert set(export) == {"format", "model", "model_config"}
    assert all(torch.equal(export["model"][k], best["ema"]["model"][k]) for k in export["model"])
    assert not all(torch.equal(export["model"][k], best["model"][k]) for k in export["model"])
    model = build_model("tiny")
    assert load_checkpoint(model, result.export_checkpoint).matched_fraction == 1.0


def test_an_existing_run_is_never_overwritten(finished, work):
    dataset, runs = work
    with pytest.raises(ValueError, match="exists already; pass --resume"):
        train(tiny_config(dataset, runs, run_name="full"))
    with pytest.raises(ValueError, match="resume: no checkpoints/last.ckpt"):
        train(tiny_config(dataset, runs, run_name="never-ran", resume=True))


def test_empty_val_split_falls_back_to_last(work, tmp_path):
    dataset, _ = work
    no_val = tmp_path / "no_val"
    shutil.copytree(dataset / "train", no_val / "train")
    shutil.copy(dataset / "labelmap.txt", no_val)
    recorder = Recorder()
    with threads(1):
        result = train(tiny_config(no_val, tmp_path / "runs", max_epochs=1, val_percent=0.0), recorder)
    assert any("validation split is empty" in line for line in recorder.logs())
    assert result.best_metrics == {} and result.val_images == 0 and not recorder.val_metrics()
    assert Path(result.best_checkpoint).stat().st_ino == Path(result.last_checkpoint).stat().st_ino
    assert Path(result.export_checkpoint).is_file()
    assert Path(result.run_dir).name.startswith("no_val-")  # <dataset-id>-<yyyymmdd-HHMMSS>


def test_early_stopping_on_val_map(work):
    dataset, runs = work
    recorder = Recorder()
    with threads(1):  # lr 0: the weights and hence the AP never change, so it never improves
        result = train(tiny_config(dataset, runs, max_epochs=5, lr_scale=0.0, early_stopping_patience=2), recorder)
    assert result.stopped_reason == "early_stopping" and result.epochs_done == 3 and result.best_epoch == 1
    assert any("early stopping" in line for line in recorder.logs())


def test_time_limit_stops_cleanly_with_checkpoints(work):
    dataset, runs = work
    with threads(1):
        result = train(tiny_config(dataset, runs, max_epochs=50, time_limit_minutes=1e-4))
    assert result.stopped_reason == "time_limit" and result.steps_done == 1 and result.epochs_done == 0
    state = torch.load(result.last_checkpoint, weights_only=True)["train_state"]
    assert state["micro_batches_done"] == 1 and state["validations"] == 1  # validated at the stop
    assert Path(result.export_checkpoint).is_file() and result.best_metrics


@pytest.mark.parametrize(
    ("cpus", "device", "requested", "workers", "threads_left"),
    [
        (2, "cpu", 4, 0, 2),
        (2, "cpu", 1, 1, 1),
        (1, "cpu", 1, 0, 1),
        (16, "cpu", 4, 4, 12),
        (8, "cpu", 8, 2, 6),
        (4, "cuda", 4, 3, 1),
    ],
)
def test_loader_workers_take_whole_cores_from_the_training_threads(
    monkeypatch, cpus, device, requested, workers, threads_left
):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert worker_count(requested, torch.device(device)) == workers
    assert cpu_threads(workers) == threads_left


def test_a_loader_worker_changes_nothing_but_the_threads(work, monkeypatch):
    """On 2 CPUs one worker loads next to one training thread; the samples, hence the losses, are the same."""
    dataset, runs = work
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    seen = {}

    def during_training(event):
        if event.kind == "metric" and event.data["phase"] == "train":
            seen.setdefault("threads", torch.get_num_threads())
            seen.setdefault("workers", len(multiprocessing.active_children()))

    losses = {}
    for workers in (0, 1):
        recorder = Recorder()
        with threads(2):
            train(
                tiny_config(
                    dataset,
                    runs,
                    run_name=f"workers-{workers}",
                    max_epochs=1,
                    num_train_workers=workers,
                    log_every_batch=True,
                ),
                lambda e: (recorder(e), workers and during_training(e)),  # noqa: B023 (called in this iteration)
            )
            assert torch.get_num_threads() == 2  # given back
        losses[workers] = [m["loss"] for m in recorder.train_metrics()]
    assert seen == {"threads": 1, "workers": 1}
    assert len(losses[0]) == 5 and losses[1] == pytest.approx(losses[0], rel=1e-3)  # threads sum in another order


def test_nonfinite_losses_are_skipped_then_abort(work, tmp_path):
    dataset, runs = work
    broken = build_model("tiny")
    with torch.no_grad():
        broken.transformer.decoder.bbox_embed.layers[0].weight.fill_(float("nan"))
    save_checkpoint(tmp_path / "nan.ckpt", broken)
    recorder = Recorder()
    with threads(1):
        result = train(
            tiny_config(dataset, runs, init_checkpoint=str(tmp_path / "nan.ckpt"), max_nonfinite_steps=2), recorder
        )
    assert result.stopped_reason == "nonfinite_abort" and result.nonfinite_steps == 3 and result.steps_done == 3
    assert result.export_checkpoint is None
    assert sum("non-finite loss or gradient" in line for line in recorder.logs()) == 3
    assert all(m["skipped"] for m in recorder.train_metrics())
