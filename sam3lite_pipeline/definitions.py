"""The `sam3lite` code location (workspace.yaml): assembles assets, checks, jobs, sensors, schedules and
resources into `defs`, and nothing else.

Resource defaults come from the environment, so one code location serves a laptop and a GPU host alike:
  SAM3LITE_HOME            root of the three storage folders below (default ./sam3lite_home)
  SAM3LITE_DATASETS        datasets root, one folder per dataset id (default $SAM3LITE_HOME/datasets)
  SAM3LITE_CACHE           conversion and signature caches (default $SAM3LITE_HOME/cache)
  SAM3LITE_RUNS            run folders and the active-model pointer (default $SAM3LITE_HOME/runs); in tator mode
                           the backend's uploads/sam3_runs
  SAM3LITE_TRAIN_DEFAULTS  YAML of pipeline-wide training defaults (optional)
  SAM3LITE_BACKEND         local | tator (default local); SAM3LITE_BACKEND_URL, SAM3LITE_BACKEND_TOKEN (tator)
  SAM3LITE_NPROC_PER_NODE  training processes per machine (default 1)
  SAM3LITE_NNODES, SAM3LITE_NODE_RANK, SAM3LITE_MASTER_ADDR, SAM3LITE_MASTER_PORT: torchrun across machines
  SAM3LITE_SENSOR_INTERVAL seconds between dataset_sensor ticks (default 60)
  SAM3LITE_RETRAIN_CRON    cron of nightly_retrain (default "0 2 * * *")
Every value can also be changed per run in the launchpad (resources: <name>: config:).
"""

import os

import dagster as dg

from sam3lite_pipeline.assets.activation import active_checkpoint
from sam3lite_pipeline.assets.dataset import coco_dataset, staged_dataset
from sam3lite_pipeline.assets.evaluation import evaluation
from sam3lite_pipeline.assets.training import trained_model
from sam3lite_pipeline.jobs import activate, convert, evaluate, retrain, train
from sam3lite_pipeline.resources import Backend, Gates, TrainLauncher, storage_from_env
from sam3lite_pipeline.schedules import nightly_retrain
from sam3lite_pipeline.sensors import dataset_sensor


def _resources() -> dict[str, dg.ConfigurableResource]:
    env = os.environ
    backend = Backend(
        mode=env.get("SAM3LITE_BACKEND", "local"),
        url=env.get("SAM3LITE_BACKEND_URL"),
        # An EnvVar is resolved when the run starts and shown by name, never by value, in the UI.
        token=dg.EnvVar("SAM3LITE_BACKEND_TOKEN") if env.get("SAM3LITE_BACKEND_TOKEN") else None,
    )
    return {
        "storage": storage_from_env(env),
        "launcher": TrainLauncher(
            nproc_per_node=int(env.get("SAM3LITE_NPROC_PER_NODE", "1")),
            nnodes=int(env.get("SAM3LITE_NNODES", "1")),
            node_rank=int(env.get("SAM3LITE_NODE_RANK", "0")),
            master_addr=env.get("SAM3LITE_MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("SAM3LITE_MASTER_PORT", "29500")),
        ),
        "gates": Gates(),
        "backend": backend,
    }


defs = dg.Definitions(
    assets=[staged_dataset, coco_dataset, trained_model, evaluation, active_checkpoint],
    jobs=[retrain, train, convert, evaluate, activate],
    sensors=[dataset_sensor],
    schedules=[nightly_retrain],
    resources=_resources(),
)
