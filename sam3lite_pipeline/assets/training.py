"""`trained_model`: training through Dagster Pipes (torchrun for several processes) in pool `gpu`, with the
blocking gate that the dataset did not change while it trained."""

from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from sam3lite_core.data.signature import dataset_signature
from sam3lite_core.train.config import ConfigError
from sam3lite_core.train.run_folder import new_run_name
from sam3lite_pipeline.assets.dataset import GROUP, coco_dataset
from sam3lite_pipeline.gates import GateRefused, candidate_checkpoint, dataset_unchanged
from sam3lite_pipeline.ops.launcher import Launched, launch_training, training_command
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_metadata
from sam3lite_pipeline.render import epochs_table, plots_markdown
from sam3lite_pipeline.resources import StorageRoots, TrainLauncher
from sam3lite_pipeline.train_settings import RUN_NAME_TAG, TrainingConfig, resolve_train_config


@dg.asset(
    partitions_def=datasets,
    group_name=GROUP,
    kinds={"pytorch"},
    deps=[coco_dataset],
    pool="gpu",
    check_specs=[
        dg.AssetCheckSpec(
            "dataset_unchanged",
            asset="trained_model",
            blocking=True,
            description="the dataset's signature after training equals the one trained on",
        )
    ],
)
def trained_model(
    context: dg.AssetExecutionContext, config: TrainingConfig, storage: StorageRoots, launcher: TrainLauncher
) -> dg.MaterializeResult:
    """A training run on the dataset's converted COCO: run folder, checkpoints (last, best, export), metrics,
    plots. Config: pipeline defaults < the dataset's sam3lite.yaml < this run config."""
    coco = latest_metadata(context, "coco_dataset")
    dataset_id = context.partition_key
    run_name = config.run_name or new_run_name(dataset_id, storage.runs_root)
    resume = _resumes(context, storage.runs_root / run_name) if config.run_name else False
    # Whoever follows the run (the backend's job API, a person in the UI) finds its run folder by this tag.
    context.instance.add_run_tags(context.run_id, {RUN_NAME_TAG: run_name})
    config_file = _write_run_config(context, config, storage, launcher, coco, run_name, resume)
    launched = launch_training(
        context,
        launcher,
        training_command(launcher, str(config_file)),
        extras={"dataset": dataset_id, "run_name": run_name},
    )
    result = _train_result(launched)
    try:
        checkpoint = candidate_checkpoint(result)
    except GateRefused as exc:
        raise dg.Failure(str(exc)) from None

    # Re-sign after training: an edit during the run (or between the conversion and the start of training, which
    # would leave evaluation on a different val set) must not pass as the data that was trained on.
    trained_on = result["dataset_signature"]
    now = dataset_signature(storage.dataset_dir(dataset_id), cache_dir=storage.cache_dir)
    changed = not dataset_unchanged(coco["signature"], trained_on, now)
    if changed:
        context.log.warning(
            f"the dataset changed after its conversion (converted {coco['signature'][:12]}, trained "
            f"on {trained_on[:12]}, now {now[:12]}): this result is marked and will not be "
            f"activated; retrain on the new data"
        )
    version = f"changed-during-{run_name}" if changed else f"{trained_on[:16]}-{result['config_hash']}"
    return dg.MaterializeResult(
        metadata=_run_metadata(result, checkpoint, changed, launched.pid),
        data_version=dg.DataVersion(version),
        check_results=[
            dg.AssetCheckResult(
                check_name="dataset_unchanged",
                passed=not changed,
                metadata={"converted": coco["signature"], "trained_on": trained_on, "after_training": now},
            )
        ],
    )


def _resumes(context: dg.AssetExecutionContext, run_dir: Path) -> bool:
    """Whether a run config's run_name continues its folder: only a retry by the instance (a crashed worker, an
    `up` stopped mid-run) does, from the folder's last.ckpt; otherwise an existing folder is refused."""
    if not run_dir.exists():
        return False
    retry = context.run.tags.get("dagster/parent_run_id") is not None
    if not retry:
        raise dg.Failure(f"run folder {run_dir} exists already: choose another run_name")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise dg.Failure(f"{run_dir} was cut off before its first checkpoint: start a new job with another run_name")
    context.log.info(f"retry of run {context.run.tags['dagster/parent_run_id']}: resuming {run_dir}")
    return True


def _write_run_config(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    storage: StorageRoots,
    launcher: TrainLauncher,
    coco: dict[str, Any],
    run_name: str,
    resume: bool,
) -> Path:
    """The run's resolved training config as the YAML file the training entry reads. The pipeline owns where
    the run goes, the split coco_dataset converted with, and the process count; dg.Failure for a bad value."""
    dataset_dir = storage.dataset_dir(context.partition_key)
    owned: dict[str, Any] = {
        "dataset": str(dataset_dir),
        "runs_root": str(storage.runs_root),
        "cache_dir": str(storage.cache_dir),
        "run_name": run_name,
        "resume": resume,
        "val_percent": coco["val_percent"],
        "split_seed": coco["split_seed"],
        "num_gpus": launcher.nproc_per_node * launcher.nnodes,
    }
    if launcher.device != "auto":
        owned["device"] = launcher.device
    try:
        tunables = config.model_dump(exclude={"run_name"})
        cfg = resolve_train_config(storage.train_defaults_file, dataset_dir, tunables, owned)
    except ConfigError as exc:
        raise dg.Failure(f"invalid training configuration:\n{exc}") from None
    config_file = storage.cache_dir / "launch" / f"{run_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False))
    context.log.info(
        f"training {context.partition_key} into {storage.runs_root / run_name} (config hash {cfg.resolved_hash()})"
    )
    return config_file


def _train_result(launched: Launched) -> dict[str, Any]:
    """The `TrainResult` (as a dict) the training entry sent last over Pipes."""
    results = [m["train_result"] for m in launched.custom_messages if isinstance(m, dict) and "train_result" in m]
    if not results:
        raise dg.Failure("training exited cleanly but sent no result over Pipes; see the step's stdout")
    return results[-1]


def _run_metadata(result: dict[str, Any], checkpoint: str, changed: bool, pid: int) -> dict[str, Any]:
    """What the UI shows of the run and what evaluation reads: checkpoints, provenance, numbers, table, plots."""
    run_dir = Path(result["run_dir"])
    best = result["best_metrics"] or {}
    return {
        "run_dir": dg.MetadataValue.path(str(run_dir)),
        "checkpoint": dg.MetadataValue.path(checkpoint),
        "last_checkpoint": dg.MetadataValue.path(result["last_checkpoint"] or ""),
        "best_checkpoint": dg.MetadataValue.path(result["best_checkpoint"] or ""),
        "config_hash": result["config_hash"],
        "dataset_signature": "changed during training" if changed else result["dataset_signature"],
        "dataset_changed": changed,
        "stopped_reason": result["stopped_reason"],
        "epochs": result["epochs_done"],
        "steps": result["steps_done"],
        "train_wall_s": round(result["wall_time_s"], 1),
        "best_epoch": result["best_epoch"] or 0,
        "train_images": result["train_images"],
        "val_images": result["val_images"],
        **{f"val_{name}": float(best[name]) for name in ("AP", "AP50") if name in best},
        "epochs_table": dg.MetadataValue.md(epochs_table(run_dir / "metrics.csv")),
        **{f"plot_{p.stem}": dg.MetadataValue.path(str(p)) for p in sorted((run_dir / "plots").glob("*.png"))},
        "plots": dg.MetadataValue.md(plots_markdown(run_dir / "plots")),
        "training_pid": pid,
    }
