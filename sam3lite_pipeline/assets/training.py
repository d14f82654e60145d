"""`trained_model`: training through Dagster Pipes (torchrun for several processes) in pool `gpu`, with the
blocking gate that the dataset did not change while it trained."""

import base64
import csv
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from sam3lite_core.data.signature import dataset_signature
from sam3lite_core.train.config import ConfigError
from sam3lite_core.train.run_folder import new_run_name
from sam3lite_pipeline.assets.dataset import GROUP, coco_dataset
from sam3lite_pipeline.ops.launcher import launch_training, training_command
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_metadata
from sam3lite_pipeline.resources import StorageRoots, TrainLauncher
from sam3lite_pipeline.train_settings import TrainingConfig, resolve_train_config

EPOCH_COLUMNS = ("epoch", "step", "loss", "AP", "AP50")


@dg.asset(
    partitions_def=datasets, group_name=GROUP, kinds={"pytorch"}, deps=[coco_dataset], pool="gpu",
    check_specs=[dg.AssetCheckSpec("dataset_unchanged", asset="trained_model", blocking=True,
                                   description="the dataset's signature after training equals the one trained on")],
)
def trained_model(
    context: dg.AssetExecutionContext, config: TrainingConfig, storage: StorageRoots, launcher: TrainLauncher
) -> dg.MaterializeResult:
    """A training run on the dataset's converted COCO: run folder, checkpoints (last, best, export), metrics,
    plots. Config: pipeline defaults < the dataset's sam3lite.yaml < this run config."""
    coco = latest_metadata(context, "coco_dataset")
    dataset_id = context.partition_key
    dataset_dir = storage.dataset_dir(dataset_id)
    runs_root = storage.runs_root
    run_name = new_run_name(dataset_id, runs_root)
    owned: dict[str, Any] = {
        "dataset": str(dataset_dir), "runs_root": str(runs_root), "cache_dir": str(storage.cache_dir),
        "run_name": run_name, "val_percent": coco["val_percent"], "split_seed": coco["split_seed"],
        "num_gpus": launcher.nproc_per_node * launcher.nnodes,
    }
    if launcher.device != "auto":
        owned["device"] = launcher.device
    try:
        cfg = resolve_train_config(storage.train_defaults_file, dataset_dir, config.model_dump(), owned)
    except ConfigError as exc:
        raise dg.Failure(f"invalid training configuration:\n{exc}") from None
    config_file = storage.cache_dir / "launch" / f"{run_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False))
    context.log.info(f"training {dataset_id} into {runs_root / run_name} (config hash {cfg.resolved_hash()})")

    launched = launch_training(context, launcher, training_command(launcher, str(config_file)),
                               extras={"dataset": dataset_id, "run_name": run_name})
    results = [m["train_result"] for m in launched.custom_messages if isinstance(m, dict) and "train_result" in m]
    if not results:
        raise dg.Failure("training exited cleanly but sent no result over Pipes; see the step's stdout")
    result = results[-1]
    checkpoint = result["export_checkpoint"] or result["best_checkpoint"] or result["last_checkpoint"]
    if checkpoint is None:
        raise dg.Failure(f"training stopped ({result['stopped_reason']}) before writing any checkpoint")

    # Re-sign after training: an edit during the run (or between the conversion and the start of training, which
    # would leave evaluation on a different val set) must not pass as the data that was trained on.
    trained_on = result["dataset_signature"]
    now = dataset_signature(dataset_dir, cache_dir=storage.cache_dir)
    changed = now != trained_on or trained_on != coco["signature"]
    if changed:
        context.log.warning(f"the dataset changed after its conversion (converted {coco['signature'][:12]}, trained "
                            f"on {trained_on[:12]}, now {now[:12]}): this result is marked and will not be "
                            f"activated; retrain on the new data")
    run_dir = Path(result["run_dir"])
    best = result["best_metrics"] or {}
    metadata: dict[str, Any] = {
        "run_dir": dg.MetadataValue.path(str(run_dir)),
        "checkpoint": dg.MetadataValue.path(checkpoint),
        "last_checkpoint": dg.MetadataValue.path(result["last_checkpoint"] or ""),
        "best_checkpoint": dg.MetadataValue.path(result["best_checkpoint"] or ""),
        "config_hash": result["config_hash"],
        "dataset_signature": "changed during training" if changed else trained_on,
        "dataset_changed": changed,
        "stopped_reason": result["stopped_reason"], "epochs": result["epochs_done"], "steps": result["steps_done"],
        "train_wall_s": round(result["wall_time_s"], 1), "best_epoch": result["best_epoch"] or 0,
        "train_images": result["train_images"], "val_images": result["val_images"],
        **{f"val_{name}": float(best[name]) for name in ("AP", "AP50") if name in best},
        "epochs_table": dg.MetadataValue.md(_epochs_table(run_dir / "metrics.csv")),
        **{f"plot_{p.stem}": dg.MetadataValue.path(str(p)) for p in sorted((run_dir / "plots").glob("*.png"))},
        "plots": dg.MetadataValue.md(_plots_markdown(run_dir / "plots")),
        "training_pid": launched.pid,
    }
    version = f"changed-during-{run_name}" if changed else f"{trained_on[:16]}-{result['config_hash']}"
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(version),
        check_results=[dg.AssetCheckResult(
            check_name="dataset_unchanged", passed=not changed,
            metadata={"converted": coco["signature"], "trained_on": trained_on, "after_training": now},
        )],
    )


def _plots_markdown(plots: Path) -> str:
    """The run's PNG plots inline (base64 data URIs), so the UI shows the curves, not file paths on the host
    that trained."""
    images = [f"**{p.stem}**\n\n![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})"
              for p in sorted(plots.glob("*.png"))]
    return "\n\n".join(images) or "no plots"


def _epochs_table(metrics_csv: Path) -> str:
    """Per-epoch mean loss and the validations, as a markdown table."""
    if not metrics_csv.exists():
        return "no metrics.csv"
    rows: dict[int, dict[str, str]] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["phase"] in ("epoch", "val"):
                merged = rows.setdefault(int(row["epoch"]), {"epoch": row["epoch"]})
                merged.update({k: v for k, v in row.items() if k in EPOCH_COLUMNS and v != ""})
    lines = ["| " + " | ".join(EPOCH_COLUMNS) + " |", "|" + "---:|" * len(EPOCH_COLUMNS)]
    for epoch in sorted(rows):
        lines.append("| " + " | ".join(_fmt(rows[epoch].get(c, "")) for c in EPOCH_COLUMNS) + " |")
    return "\n".join(lines)


def _fmt(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4f}" if not number.is_integer() else str(int(number))
