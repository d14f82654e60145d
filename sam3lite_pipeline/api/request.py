"""The backend's `Sam3TrainRequest` and how each of its fields maps onto the pipeline's run config.

Every field but `dataset_id` is optional, as in the backend. `plan_job` turns a request into what a Dagster run
of the `train` (or, with our `auto_activate`, `retrain`) job needs: the trained_model tunables, the split of
coco_dataset, the launcher's process count, the run folder's name, and the notes that open the job's log (a
field with no counterpart here, a value coerced to box-only). The table in README ("Using sam3lite from Tator")
is this module in prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sam3lite_core.serve.errors import ServiceError
from sam3lite_core.serve.listing import SKIPPED_RUN_NAMES
from sam3lite_core.train.config import ConfigError, TrainConfig
from sam3lite_pipeline.train_settings import RUN_NAME_PATTERN, file_layers

# Fields whose meaning is ours as well: they go to TrainConfig under the same name.
SAME_NAME = (
    "train_batch_size",
    "val_batch_size",
    "num_train_workers",
    "num_val_workers",
    "max_epochs",
    "resolution",
    "lr_scale",
    "gradient_accumulation_steps",
    "val_epoch_freq",
    "target_epoch_size",
    "scheduler_warmup",
    "scheduler_timescale",
    "balance_classes",
    "balance_strategy",
    "balance_power",
    "balance_clip",
    "balance_beta",
    "balance_gamma",
    "train_limit",
    "val_limit",
    "log_freq",
    "log_every_batch",
    "freeze_language_backbone",
    "prompt_variants",
    "prompt_randomize",
    "val_score_thresh",
    "val_max_dets",
)
RENAMED = {"language_backbone_lr": "lr_language_backbone"}
SPLIT = ("val_percent", "split_seed")
BOX_ONLY = ("enable_segmentation_head", "train_segmentation", "enable_inst_interactivity")
VAL_PERCENT_MAX = 0.9  # the backend clamps val_percent to this


class Sam3TrainRequest(BaseModel):
    """The backend's request body (models/schemas.py), plus `auto_activate` (ours: run the gates and activate)."""

    model_config = ConfigDict(extra="allow")

    dataset_id: str
    run_name: str | None = None
    experiment_log_dir: str | None = None
    train_batch_size: int | None = None
    val_batch_size: int | None = None
    num_train_workers: int | None = None
    num_val_workers: int | None = None
    max_epochs: int | None = None
    resolution: int | None = None
    lr_scale: float | None = None
    gradient_accumulation_steps: int | None = None
    val_epoch_freq: int | None = None
    target_epoch_size: int | None = None
    scheduler_warmup: int | None = None
    scheduler_timescale: int | None = None
    num_gpus: int | None = None
    enable_inst_interactivity: bool | None = None
    balance_classes: bool | None = None
    balance_strategy: str | None = None
    balance_power: float | None = None
    balance_clip: float | None = None
    balance_beta: float | None = None
    balance_gamma: float | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    log_freq: int | None = None
    log_every_batch: bool | None = None
    enable_segmentation_head: bool | None = None
    train_segmentation: bool | None = None
    freeze_language_backbone: bool | None = None
    language_backbone_lr: float | None = None
    prompt_variants: dict[str, Any] | None = None
    prompt_randomize: bool | None = None
    val_score_thresh: float | None = None
    val_max_dets: int | None = None
    random_split: bool | None = None
    val_percent: float | None = None
    split_seed: int | None = None
    auto_activate: bool = False


@dataclass
class JobPlan:
    """What one Dagster run needs for a request."""

    run_name: str
    tunables: dict[str, Any]  # ops.trained_model.config
    split: dict[str, Any]  # ops.coco_dataset.config
    processes: int | None  # resources.launcher.config.nproc_per_node
    notes: list[str] = field(default_factory=list)  # the job's first log line, joined

    def run_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "ops": {
                "coco_dataset": {"config": self.split},
                "trained_model": {"config": {**self.tunables, "run_name": self.run_name}},
            }
        }
        if self.processes is not None:
            config["resources"] = {"launcher": {"config": {"nproc_per_node": self.processes}}}
        return config


def safe_run_name(desired: str | None, fallback: str) -> str:
    """The backend's sanitiser: anything outside [A-Za-z0-9._-] becomes "_", then "_" is stripped from the ends."""
    name = desired or fallback
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("_") or fallback


def plan_job(
    request: Sam3TrainRequest,
    runs_root: Path,
    dataset_dir: Path,
    defaults_file: Path | None,
    base_checkpoint: Path | None,
    fallback_name: str,
) -> JobPlan:
    """The run config for `request` on `dataset_dir`; ServiceError (400) for a value that cannot be used."""
    notes: list[str] = []
    names = {**{name: name for name in SAME_NAME}, **RENAMED}
    tunables = {ours: getattr(request, key) for key, ours in names.items() if getattr(request, key) is not None}
    for name in BOX_ONLY:
        if getattr(request, name):
            notes.append(f"{name}: true was coerced to false (sam3lite trains box-only)")
    split = {name: getattr(request, name) for name in SPLIT if getattr(request, name) is not None}
    if "val_percent" in split:
        split["val_percent"] = min(max(float(split["val_percent"]), 0.0), VAL_PERCENT_MAX)
    if request.random_split is not None:
        notes.append(
            f"random_split: {str(request.random_split).lower()} has no counterpart: a dataset's own val/ folder "
            f"is kept, one without val/ is split by content hash with val_percent and split_seed"
        )
    extra = sorted(request.model_extra or {})
    if extra:
        notes.append(f"fields with no counterpart, ignored: {', '.join(extra)}")
    tunables |= _built_in_layer(tunables, dataset_dir, defaults_file, base_checkpoint)
    _check_tunables(tunables)
    return JobPlan(
        run_name=_run_name(request, runs_root, fallback_name),
        tunables=tunables,
        split=split,
        processes=request.num_gpus,
        notes=notes,
    )


def _built_in_layer(
    tunables: dict[str, Any], dataset_dir: Path, defaults_file: Path | None, base_checkpoint: Path | None
) -> dict[str, Any]:
    """The layer under the files: the full-size `sam3` preset from the base checkpoint. Where neither the files
    nor the request choose a preset or weights and there is no base checkpoint, the job cannot start."""
    try:
        layers = file_layers(defaults_file, dataset_dir)
    except ConfigError as exc:
        raise ServiceError(str(exc), 400, "sam3_training_config_invalid") from None
    chosen = {key for _, layer in layers for key in layer} | set(tunables)
    built_in: dict[str, Any] = {}
    if "preset" not in chosen:
        built_in["preset"] = "sam3"
        if "init_checkpoint" not in chosen:
            if base_checkpoint is None:
                raise ServiceError(
                    "training the full-size sam3 preset needs its weights: start `sam3lite up --base-checkpoint "
                    "/path/to/sam3.pt`, or set preset (and init_checkpoint) in the dataset's sam3lite.yaml",
                    400,
                    "sam3_base_checkpoint_missing",
                )
            built_in["init_checkpoint"] = str(base_checkpoint)
    return built_in


def _check_tunables(tunables: dict[str, Any]) -> None:
    try:
        TrainConfig.parse(dict(tunables), source="request")
    except ConfigError as exc:
        raise ServiceError(str(exc), 400, "sam3_training_config_invalid") from None


def _run_name(request: Sam3TrainRequest, runs_root: Path, fallback: str) -> str:
    """The run folder's name: `experiment_log_dir` when it names a folder directly inside the runs root, else
    the sanitised `run_name`, else `sam3_run_<job>` as in the backend."""
    given = request.run_name
    if request.experiment_log_dir:
        wanted = Path(request.experiment_log_dir)
        wanted = wanted if wanted.is_absolute() else runs_root / wanted
        if wanted.resolve().parent != runs_root.resolve() or wanted.is_symlink():
            raise ServiceError(
                f"experiment_log_dir must be a folder directly inside the runs root {runs_root}; "
                f"got {request.experiment_log_dir[:200]!r}",
                400,
                "sam3_run_path_invalid",
            )
        given = wanted.resolve().name
    name = safe_run_name(given, fallback)
    if not re.fullmatch(RUN_NAME_PATTERN, name) or name in SKIPPED_RUN_NAMES:
        raise ServiceError(
            f"run name {name[:200]!r} cannot name a run folder: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, other than {', '.join(sorted(SKIPPED_RUN_NAMES))}",
            400,
            "sam3_run_path_invalid",
        )
    return name
