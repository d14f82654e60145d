"""Shared pieces of the pipeline tests: storage under a temp folder, the definitions with test resources, the
tiny training recipe as run config, and finding training processes by the launcher's marker."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from train_helpers import TINY, make_dataset

from sam3lite_pipeline.definitions import defs
from sam3lite_pipeline.ops.launcher import LAUNCH_ID_ENV
from sam3lite_pipeline.resources import Backend, Gates, StorageRoots, TrainLauncher

DATASET = "synth"
# One epoch of the tiny preset on 10 images: a few seconds of training.
TINY_RUN = {**TINY, "max_epochs": 1, "log_every_batch": False, "log_freq": 1}


def storage(home: Path) -> StorageRoots:
    return StorageRoots(datasets=str(home / "datasets"), cache=str(home / "cache"), runs=str(home / "runs"))


def stage(home: Path, dataset: str = DATASET, images: int = 12) -> Path:
    return make_dataset(home / "datasets" / dataset, images=images)


def pipeline_defs(home: Path, **resources: Any) -> dg.Definitions:
    """The real assets and jobs with resources rooted at `home` (gates: floor 0, so a tiny model passes)."""
    base = {"storage": storage(home), "launcher": TrainLauncher(), "gates": Gates(map_floor=0.0), "backend": Backend()}
    return dg.Definitions(assets=defs.assets, jobs=defs.jobs, resources={**base, **resources})


def run_job(
    definitions: dg.Definitions,
    job: str,
    instance: dg.DagsterInstance,
    run_config: dict | None = None,
    dataset: str = DATASET,
) -> dg.ExecuteInProcessResult:
    return definitions.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=dataset, run_config=run_config or {}, raise_on_error=False
    )


def train_config(**fields: Any) -> dict:
    return {"ops": {"trained_model": {"config": {**TINY_RUN, **fields}}}}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        if event.asset_key.path == [asset]:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise KeyError(f"{asset} was not materialised")


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def training_processes(marker_env: str | None = None) -> list[int]:
    """PIDs of live processes started by the training launcher (optionally only those whose environment also
    holds `marker_env`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or f"{LAUNCH_ID_ENV}=".encode() not in env:
            continue
        if marker_env is None or marker_env.encode() in env.split(b"\0"):
            found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid()]
