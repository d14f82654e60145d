"""`nightly_retrain`: retrain the datasets whose data or training configuration changed since their last
successful trained_model (cron configurable, nightly by default).

"Configuration" is what the files say (the pipeline defaults and the dataset's sam3lite.yaml), compared by
`TrainConfig.resolved_hash()`; a one-off run config given to a manual run is not a standing change.
"""

import os

import dagster as dg

from sam3lite_core.data.report import DatasetError
from sam3lite_core.data.signature import dataset_signature
from sam3lite_core.train.config import ConfigError
from sam3lite_pipeline.jobs import retrain
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_values
from sam3lite_pipeline.resources import StorageRoots
from sam3lite_pipeline.train_settings import resolve_train_config, split_settings

CRON = os.environ.get("SAM3LITE_RETRAIN_CRON", "0 2 * * *")


def standing_config_hash(storage: StorageRoots, dataset_id: str) -> str:
    """The config hash a retrain of the dataset would record, run config aside."""
    dataset_dir = storage.dataset_dir(dataset_id)
    owned = {
        "dataset": str(dataset_dir),
        "runs_root": str(storage.runs_root),
        "run_name": "scheduled",
        **split_settings(storage.train_defaults_file, dataset_dir),
    }
    return resolve_train_config(storage.train_defaults_file, dataset_dir, {}, owned).resolved_hash()


def last_trained(instance: dg.DagsterInstance, dataset_id: str) -> dict[str, str] | None:
    """The data signature and config hash the dataset's latest trained_model recorded; None when never trained."""
    values = latest_values(instance, "trained_model", dataset_id)
    if values is None:
        return None
    return {key: values[key] for key in ("dataset_signature", "config_hash") if key in values}


@dg.schedule(
    job=retrain,
    cron_schedule=CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="retrain datasets whose data signature or training-config hash changed",
)
def nightly_retrain(context: dg.ScheduleEvaluationContext, storage: StorageRoots):
    requests, unchanged, problems = [], [], []
    for dataset_id in sorted(context.instance.get_dynamic_partitions(datasets.name)):
        folder = storage.dataset_dir(dataset_id)
        if not folder.is_dir():
            problems.append(f"{dataset_id} (folder {folder} is gone)")
            continue
        try:
            signature = dataset_signature(folder, cache_dir=storage.cache_dir)
            config_hash = standing_config_hash(storage, dataset_id)
        except (DatasetError, ConfigError) as exc:
            problems.append(f"{dataset_id} ({exc})")
            continue
        last = last_trained(context.instance, dataset_id)
        if last == {"dataset_signature": signature, "config_hash": config_hash}:
            unchanged.append(dataset_id)
            continue
        now = {"data": ("dataset_signature", signature), "config": ("config_hash", config_hash)}
        why = (
            "never trained"
            if last is None
            else ", ".join(what for what, (key, value) in now.items() if last.get(key) != value)
        )
        requests.append(
            dg.RunRequest(
                partition_key=dataset_id,
                run_key=f"{dataset_id}:{signature}:{config_hash}",
                tags={"sam3lite/trigger": "nightly_retrain", "sam3lite/changed": why},
            )
        )
    if problems:
        context.log.warning("skipped: " + "; ".join(problems))
    if requests and unchanged:
        context.log.info(f"unchanged since their last training: {', '.join(unchanged)}")
    if not requests:
        return dg.SkipReason(
            f"unchanged since their last training: {', '.join(unchanged) or 'no datasets'}"
            + (f"; skipped: {'; '.join(problems)}" if problems else "")
        )
    return requests
