"""The GraphQL trigger (`sam3lite_pipeline.trigger`, `sam3lite trigger`) against a real dagster-webserver on
127.0.0.1 serving `tests/trigger_defs.py`: one server for the module, runs that take a second or two each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster_graphql.schema import create_schema
from dagster_servers import dagster_server, free_port, process_alive
from graphql import parse, validate

from sam3lite_core import cli
from sam3lite_pipeline.trigger.client import Gate, TriggerClient, TriggerError
from sam3lite_pipeline.trigger.documents import DOCUMENTS

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def graphql_schema():
    return create_schema().graphql_schema


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_documents_are_valid_for_the_pinned_dagster(graphql_schema, name):
    # Dagster's GraphQL API is not stable: a renamed field must fail here, not in a backend at run time.
    assert validate(graphql_schema, parse(DOCUMENTS[name])) == []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dagster_server(
        home=tmp_path_factory.mktemp("dagster") / "home", module="trigger_defs", working_directory=TESTS
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return TriggerClient(server.url)


@pytest.fixture(scope="module")
def finished(client):
    """One successful run of dataset `alpha`, shared by the tests that only read."""
    run_id = client.launch(
        "alpha", {"ops": {"trained_model": {"config": {"epochs": 3}}}}, tags={"backend_request_id": "req-1"}
    )
    return client.wait(run_id, poll_s=0.25, timeout_s=60)


@pytest.mark.e2e
def test_launch_wait_result(client, finished):
    assert finished.status == "SUCCESS"
    assert finished.dataset == "alpha" and finished.job == "retrain"
    assert finished.tags["backend_request_id"] == "req-1"
    result = client.result(finished.run_id)
    assert result.checkpoint == "/runs/alpha/checkpoints/export.ckpt"
    assert result.activated
    assert result.metrics["AP50"] == pytest.approx(0.62) and result.metrics["AP"] == pytest.approx(0.31)
    assert result.metrics["epochs"] == 3
    assert result.gates == [Gate("evaluation", "map_gate", True, "ERROR", None, {"AP50": 0.62, "floor": 0.5})]
    assert result.errors == []
    assert [m.asset for m in result.materializations] == [
        "staged_dataset",
        "coco_dataset",
        "trained_model",
        "evaluation",
        "active_checkpoint",
    ]


@pytest.mark.e2e
def test_logs_after_the_cursor_are_only_new_events(client, finished):
    events, cursor = client.logs(finished.run_id)
    assert "RUN_SUCCESS" in [e.event_type for e in events]
    assert client.logs(finished.run_id, cursor) == ([], cursor)


@pytest.mark.e2e
def test_invalid_run_config_names_the_field(client):
    with pytest.raises(TriggerError) as caught:
        client.launch("alpha", {"ops": {"trained_model": {"config": {"epochz": 1}}}})
    assert caught.value.kind == "RunConfigValidationInvalid"
    assert "epochz" in str(caught.value)
    assert caught.value.details[0].startswith("ops.trained_model.config: ")


@pytest.mark.e2e
def test_unknown_job_and_run_are_trigger_errors(client, server):
    with pytest.raises(TriggerError, match="nope") as caught:
        TriggerClient(server.url, job="nope").launch("alpha")
    assert caught.value.kind == "PipelineNotFoundError"
    for call in (client.status, client.result, client.logs, client.cancel):
        with pytest.raises(TriggerError, match="no-such-run") as caught:
            call("no-such-run")
        assert caught.value.kind == "RunNotFoundError"


@pytest.mark.e2e
def test_cancel_stops_the_run_and_its_process(client, tmp_path):
    pid_file = tmp_path / "pid"
    run_id = client.launch("slow", {"ops": {"trained_model": {"config": {"sleep_s": 60, "pid_file": str(pid_file)}}}})
    deadline = time.monotonic() + 60
    while not pid_file.exists():
        assert time.monotonic() < deadline, client.status(run_id)
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    before, cursor = client.logs(run_id)

    assert client.cancel(run_id).run_id == run_id
    assert client.wait(run_id, poll_s=0.25, timeout_s=60).status == "CANCELED"
    deadline = time.monotonic() + 20
    while process_alive(pid):
        assert time.monotonic() < deadline, f"run worker {pid} survived the cancel"
        time.sleep(0.1)

    after, _ = client.logs(run_id, cursor)
    assert "RUN_CANCELED" in [e.event_type for e in after]
    assert before + after == client.logs(run_id)[0]  # nothing lost, nothing repeated
    result = client.result(run_id)
    assert not result.activated and result.gates[0].passed is None
    with pytest.raises(TriggerError, match="CANCELED"):
        client.cancel(run_id)


@pytest.mark.e2e
def test_list_filters_by_dataset(client, finished):
    alpha = client.list_runs("alpha")
    assert finished.run_id in [run.run_id for run in alpha]
    assert {run.dataset for run in alpha} == {"alpha"}
    assert client.list_runs("nobody") == []


@pytest.mark.e2e
def test_cli_launch_wait_then_result_json(server, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("ops:\n  evaluation:\n    config:\n      ap50: 0.2\n")
    trigger = ["trigger", "--url", server.url]
    code = cli.main(
        [
            *trigger,
            "launch",
            "--dataset",
            "beta",
            "--config",
            str(config),
            "--tag",
            "who=test",
            "--wait",
            "--poll",
            "0.25",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, (out, err)  # the gate failed, so the run did not succeed
    run_id = out.splitlines()[0]
    assert "FAILURE" in out.splitlines()[-1]
    assert "gate map_gate on evaluation failed" in err

    assert cli.main([*trigger, "result", run_id]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["run"]["dataset"] == "beta" and result["run"]["tags"]["who"] == "test"
    assert result["gates"][0]["passed"] is False and result["metrics"]["AP50"] == 0.2
    assert result["checkpoint"] == "/runs/beta/checkpoints/export.ckpt" and result["activated"] is False

    assert cli.main([*trigger, "list", "--dataset", "beta"]) == 0
    assert capsys.readouterr().out.startswith(f"{run_id} FAILURE job=retrain dataset=beta")


def test_cli_unreachable_server_is_one_clean_line():
    env = {**os.environ, "SAM3LITE_DAGSTER_URL": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [sys.executable, "-m", "sam3lite_core.cli", "trigger", "status", "some-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"sam3lite trigger: cannot reach the Dagster webserver at {env['SAM3LITE_DAGSTER_URL']}: Connection refused"
    ]


def test_cli_usage_errors_exit_2(capsys):
    assert cli.main(["trigger", "launch", "--dataset", "x", "--tag", "no-equals-sign"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        cli.main(["trigger", "launch"])  # --dataset missing
    assert caught.value.code == 2


def test_cli_run_config_that_is_not_a_mapping_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("- max_epochs: 3\n")
    assert cli.main(["trigger", "launch", "--dataset", "x", "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"sam3lite trigger: {config} (run config): expected a mapping such as "
        "`ops: {trained_model: {config: ...}}` at the top level, got list\n"
    )


def test_help_lists_trigger():
    assert "trigger" in cli._available()
