"""The deployment files parse and mean what they say: every dagster.yaml validates against the installed
Dagster's instance schema, the workspaces name the `sam3lite` location, the multi-node settings reach the
launcher, and the training pod runs our entry."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema

from sam3lite_pipeline.ops.launcher import ENTRY, training_command
from sam3lite_pipeline.resources import TrainLauncher

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.mark.parametrize("name", ["dagster.yaml", "scale-out/dagster.yaml", "scale-out/dagster-k8s.yaml"])
def test_instance_configs_validate(name):
    config = yaml.safe_load((DEPLOY / name).read_text())
    result = validate_config(dagster_instance_config_schema(), config)
    assert result.success, [e.message for e in result.errors]
    assert config["telemetry"] == {"enabled": False}
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert config["concurrency"]["pools"]["default_limit"] >= 1


def test_the_one_machine_config_serialises_training():
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1 and "storage" not in config  # sqlite
    assert yaml.safe_load((DEPLOY / "scale-out" / "dagster.yaml").read_text())["storage"]["postgres"]


def test_grpc_workspace_names_the_location():
    entry = yaml.safe_load((DEPLOY / "scale-out" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert entry["location_name"] == "sam3lite" and entry["port"] == 4000


def test_multinode_settings_reach_the_launcher(tmp_path):
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "scale-out" / "multinode.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    script = (
        "import json; from sam3lite_pipeline.definitions import defs; "
        "print(json.dumps(defs.resources['launcher'].model_dump()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=os.environ | env, capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    launcher = TrainLauncher(**json.loads(out.strip().splitlines()[-1]))
    assert (launcher.nproc_per_node, launcher.nnodes, launcher.master_addr) == (8, 2, "10.0.0.10")
    command = training_command(launcher, "run.yaml")
    assert "--nnodes=2" in command and "--node-rank=0" in command and "--master-addr=10.0.0.10" in command
    assert command[-4:] == [*ENTRY, "--config", "run.yaml"]


def test_training_pod_runs_our_entry():
    pod = yaml.safe_load((DEPLOY / "scale-out" / "training-pod.yaml").read_text())
    command = pod["spec"]["containers"][0]["command"]
    module = command[command.index("-m", 3) + 1]
    assert module == ENTRY[1] and importlib.util.find_spec(module) is not None
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
