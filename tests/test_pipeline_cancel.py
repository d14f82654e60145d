"""Cancelling a real `dagster job execute` of `retrain` while torchrun trains with two gloo workers: every
training process is gone within seconds, and the workers saved last.ckpt at the step they stopped at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import torch
import yaml
from pipeline_harness import DATASET, TINY_RUN, stage, training_processes

ROOT = Path(__file__).resolve().parents[1]


def _wait(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; dagster output:\n{log.read_text()[-4000:]}")


def test_cancel_kills_every_training_process(tmp_path):
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    stage(home)
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.add_dynamic_partitions("datasets", [DATASET])
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        yaml.safe_dump(
            {
                "ops": {"trained_model": {"config": {**TINY_RUN, "max_epochs": 1000}}},
                "execution": {"config": {"in_process": {}}},
            }
        )
    )
    mark = uuid.uuid4().hex
    marker = f"SAM3LITE_TEST_MARK={mark}"
    env = os.environ | {
        "DAGSTER_HOME": str(dagster_home),
        "SAM3LITE_HOME": str(home),
        "SAM3LITE_NPROC_PER_NODE": "2",
        "OMP_NUM_THREADS": "1",
        "SAM3LITE_TEST_MARK": mark,
    }
    log = tmp_path / "dagster.log"
    with log.open("wb") as out:
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "job",
                "execute",
                "-m",
                "sam3lite_pipeline.definitions",
                "-j",
                "retrain",
                "-c",
                str(run_yaml),
                "--tags",
                f'{{"dagster/partition": "{DATASET}"}}',
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # torchrun and its two workers, and a finished epoch's checkpoint.
        _wait(lambda: len(training_processes(marker)) >= 3, 180, "torchrun and two workers", log)
        _wait(lambda: list((home / "runs").glob("*/checkpoints/last.ckpt")), 180, "a first last.ckpt", log)
        assert job.poll() is None
        job.send_signal(signal.SIGINT)  # what Ctrl-C (and Dagster's own termination) delivers
        started = time.monotonic()
        _wait(lambda: not training_processes(marker), 30, "every training process to exit", log)
        stopped_in = time.monotonic() - started
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for pid in training_processes(marker):
            os.kill(pid, signal.SIGKILL)
    assert stopped_in < 25
    text = log.read_text()
    assert "stopping training process group" in text
    (last,) = (home / "runs").glob("*/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=True)
    # torchrun forwarded the SIGTERM: the workers stopped together at one step and saved it.
    result = json.loads((last.parent.parent / "result.json").read_text())
    assert result["stopped_reason"] == "cancelled" and saved["train_state"]["step"] == result["steps_done"]
