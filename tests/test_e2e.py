"""End to end as a backend sees it: the Dagster webserver and daemon on 127.0.0.1 serving the real code location
(with deploy/dagster.yaml), a retrain launched through the GraphQL trigger, its log followed live, polled to
SUCCESS and its result read; a second retrain, launched while the first trains and queued behind it, cancelled
mid-training. Afterwards no training process and no server process is left."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from dagster_servers import dagster_server
from pipeline_harness import DATASET, TINY_RUN, stage, training_processes

from sam3lite_pipeline.trigger.client import TriggerClient

ROOT = Path(__file__).resolve().parents[1]
GATES = {"coco_valid", "dataset_unchanged", "map_floor", "no_regression", "inference_confirmed"}


def _run_config(in_process: bool = False, **fields) -> dict:
    config = {
        "ops": {"trained_model": {"config": {**TINY_RUN, **fields}}},
        "resources": {"gates": {"config": {"map_floor": 0.0}}},
    }
    # The default multiprocess executor spawns a process per step (seconds each on 2 cores); the cancelled run
    # keeps it, so cancellation is shown through the executor a production run uses.
    return config | ({"execution": {"config": {"in_process": {}}}} if in_process else {})


@pytest.mark.e2e
def test_backend_launches_follows_reads_and_cancels(tmp_path):
    home = tmp_path / "home"
    stage(home)
    mark = uuid.uuid4().hex
    marker = f"SAM3LITE_TEST_MARK={mark}"
    env = {"SAM3LITE_HOME": str(home), "OMP_NUM_THREADS": "1", "SAM3LITE_TEST_MARK": mark}
    with dagster_server(
        home=tmp_path / "dagster_home",
        module="sam3lite_pipeline.definitions",
        daemon=True,
        instance_config=(ROOT / "deploy" / "dagster.yaml").read_text(),
        working_directory=ROOT,
        env=env,
    ) as server:
        client = TriggerClient(server.url)
        run_id = client.launch(DATASET, _run_config(in_process=True), tags={"backend_request_id": "req-1"})
        messages, long_run = [], None
        for event in client.follow(run_id, poll_s=0.25):
            messages.append(event.message)
            if long_run is None and event.message.startswith("training started"):
                # Launched once the first run holds the one slot of pool "gpu": its training queues behind the
                # first one's while its run worker and step processes start (seconds each on 2 cores).
                long_run = client.launch(DATASET, _run_config(max_epochs=1000))
        assert long_run is not None and any(m.startswith("validation after epoch 1/1") for m in messages), (
            server.log_tail()
        )
        assert client.wait(run_id, poll_s=0.25, timeout_s=60).status == "SUCCESS"
        result = client.result(run_id)
        assert result.activated and result.checkpoint.endswith("checkpoints/export.ckpt")
        assert {g.check for g in result.gates} == GATES and all(g.passed for g in result.gates)
        assert "AP50" in result.metrics and result.run.tags["backend_request_id"] == "req-1"
        assert (home / "runs" / "active_model.json").read_text().count(result.checkpoint) == 1

        deadline = time.monotonic() + 180
        while not training_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert training_processes(marker), server.log_tail()
        client.cancel(long_run)
        assert client.wait(long_run, poll_s=0.25, timeout_s=90).status == "CANCELED"
        deadline = time.monotonic() + 30
        while training_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not training_processes(marker)
        assert [r.run_id for r in client.list_runs(dataset=DATASET)][:2] == [long_run, run_id]
    assert not training_processes(marker)  # and dagster_server asserted that no server process is left
