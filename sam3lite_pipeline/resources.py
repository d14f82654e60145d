"""What the assets are configured with: where things live, how training is launched, the gates, the backend.

Every field is settable in the launchpad, in `dagster job execute -c run.yaml` (`resources: <name>: config:`)
and in GraphQL `runConfigData`; `definitions.py` sets the defaults from the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field


class StorageRoots(dg.ConfigurableResource):
    """Datasets are read from `datasets`/<id>; conversions cached under `cache`; run folders and the backend's
    pointer file under `runs` (set it to the backend's `uploads/sam3_runs` in `tator` mode)."""

    datasets: str = Field(description="folder holding one dataset folder per partition key")
    cache: str = Field(description="converted COCO and signature caches")
    runs: str = Field(description="run folders, active_model.json and activation_history.json")
    train_defaults: str | None = Field(
        default=None, description="YAML of pipeline-wide training defaults (below <dataset>/sam3lite.yaml)"
    )

    def dataset_dir(self, dataset_id: str) -> Path:
        return Path(self.datasets).resolve() / dataset_id

    @property
    def runs_root(self) -> Path:
        return Path(self.runs).resolve()

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache).resolve()

    @property
    def train_defaults_file(self) -> Path | None:
        return Path(self.train_defaults).resolve() if self.train_defaults else None


def storage_from_env(env: Mapping[str, str]) -> StorageRoots:
    """The storage roots the code location uses: SAM3LITE_HOME and the per-root overrides (definitions.py)."""
    home = Path(env.get("SAM3LITE_HOME", "sam3lite_home"))
    return StorageRoots(
        datasets=env.get("SAM3LITE_DATASETS", str(home / "datasets")),
        cache=env.get("SAM3LITE_CACHE", str(home / "cache")),
        runs=env.get("SAM3LITE_RUNS", str(home / "runs")),
        train_defaults=env.get("SAM3LITE_TRAIN_DEFAULTS"),
    )


class TrainLauncher(dg.ConfigurableResource):
    """How the training step starts its processes (torchrun when more than one), and its hard limits."""

    nproc_per_node: int = Field(default=1, ge=1, description="training processes on this machine (one per GPU)")
    nnodes: int = Field(default=1, ge=1, description="machines taking part (torchrun --nnodes)")
    node_rank: int = Field(default=0, ge=0, description="this machine's rank when nnodes > 1")
    master_addr: str = Field(default="127.0.0.1", description="rendezvous host when nnodes > 1")
    master_port: int = Field(default=29500, description="rendezvous port when nnodes > 1")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="overrides the config's device")
    wall_clock_limit_minutes: float | None = Field(
        default=None,
        gt=0,
        description="kill the training processes after this long (a hard limit; the config's "
        "time_limit_minutes ends training gracefully before it)",
    )
    termination_grace_s: float = Field(
        default=20.0, gt=0, description="after SIGTERM to the process group, SIGKILL what is left after this long"
    )


class Gates(dg.ConfigurableResource):
    """When a candidate may replace the dataset's incumbent."""

    metric: Literal["AP", "AP50", "AP75"] = Field(default="AP50", description="the COCO stat the gates compare")
    map_floor: float = Field(default=0.1, ge=0.0, le=1.0, description="the candidate's metric must reach this")
    regression_tolerance: float = Field(
        default=0.01, ge=0.0, description="the candidate may fall this far below the incumbent on the same val set"
    )
    confirm_prompt: str | None = Field(
        default=None, description="prompt of the confirming inference (default: the dataset's first class)"
    )


class Backend(dg.ConfigurableResource):
    """The service that serves the active model: `local` (the pointer file `sam3lite serve` watches, in the
    runs root) or `tator` (its HTTP API). Either way an activation is confirmed by one real inference."""

    mode: Literal["local", "tator"] = "local"
    url: str | None = Field(default=None, description="tator mode: base URL, e.g. http://127.0.0.1:8000")
    token: str | None = Field(
        default=None, description="tator mode: bearer token; pass it as an EnvVar so it never shows in config"
    )
    timeout_s: float = Field(default=120.0, gt=0, description="per request; the first inference loads the model")
    retries: int = Field(default=3, ge=0, description="on connection errors and 5xx answers")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles each time")
