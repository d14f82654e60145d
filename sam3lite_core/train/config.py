"""`TrainConfig`: every training tunable in one pydantic model, the schema of a run.

Field names are the backend's where it has one (reference/tator_contract.md sections 2.2 and 5: `max_epochs`,
`train_batch_size`, `lr_scale`, `language_backbone_lr` as an alias, ...), so a backend request maps onto it
key for key. YAML in (`from_yaml`), `key=value` overrides with YAML-typed values (`apply_overrides`), and every
error names the field, what was given and what is allowed. `read_yaml_mapping` is the one reader of YAML files
for the CLI, the pipeline's config layers and the trigger.

This module is the schema only: each part's settings are derived from it beside the part, by one function
`<part>_settings(cfg)` each (`loss_settings` in losses.py, `optim_settings` in optim.py, `schedule_settings` in
schedule.py, `denoising_settings` in denoising.py, the data's in loader.py, the model's in components.py).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from sam3lite_core.model.config import PRESETS

Strategy = Literal["none", "inv_sqrt", "inv_pow", "clipped_inv", "effective_num", "focal", "log_inv"]
PRESET_NAMES = ("sam3", "small", "tiny")
BOX_ONLY = (
    "sam3lite trains the box-only SAM3 detector: there is no mask head, mask loss or interactive (tracker) "
    "predictor; set it to false (the backend's bbox-only mode sends false too)"
)
_REFUSED = ("enable_segmentation", "enable_segmentation_head", "train_segmentation", "enable_inst_interactivity")
# Fields that say where a run goes and how it is displayed, not what it trains: left out of resolved_hash().
_NOT_HASHED = frozenset(
    {
        "dataset",
        "runs_root",
        "run_name",
        "resume",
        "cache_dir",
        "num_train_workers",
        "num_val_workers",
        "device",
        "log_freq",
        "log_every_batch",
        "upstream_log_lines",
        "num_gpus",
    }
)


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message names the field and what is allowed."""


class TrainConfig(BaseModel):
    """One training run. Defaults are the backend's (upstream roboflow fine-tune) unless the comment says."""

    # allow_inf_nan: lr_scale=.inf or a nan weight would pass ge=0 and end in a non-finite abort steps later.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    # What to train, from what, and where the run goes.
    dataset: str | None = Field(default=None, description="YOLO/Qwen dataset folder (read only)")
    preset: Literal["sam3", "small", "tiny"] = Field(default="small", description="model size")
    init_checkpoint: str | None = Field(default=None, description="local weights to start from (sam3.pt, ours)")
    runs_root: str = Field(default="runs", description="run folders go to <runs_root>/<run_name>")
    run_name: str | None = Field(default=None, description="default <dataset-id>-<yyyymmdd-HHMMSS>")
    resume: bool = Field(default=False, description="continue <run_name> (default: the newest run) at last.ckpt")
    cache_dir: str | None = Field(default=None, description="converted datasets; default <runs_root>/.cache")

    # Length, batches, data loading.
    max_epochs: int = Field(default=20, ge=1)
    train_batch_size: int = Field(default=1, ge=1, description="images per process per micro-batch")
    val_batch_size: int = Field(default=1, ge=1)
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="micro-batches per optimiser step (upstream splits one batch instead)"
    )
    num_train_workers: int = Field(
        default=4,
        ge=0,
        description="capped at the CPU count minus one; on a CPU, more than half the CPU count becomes a quarter",
    )
    num_val_workers: int = Field(default=2, ge=0)
    num_gpus: int = Field(default=1, ge=1, description="processes the launcher starts (torchrun); read by launchers")
    resolution: int | None = Field(default=None, ge=28, description="input side in px; None = the preset's")
    target_epoch_size: int | None = Field(default=None, ge=1, description="micro-batches per epoch per process")
    train_limit: int | None = Field(default=None, ge=1, description="use at most this many train images")
    val_limit: int | None = Field(default=None, ge=1, description="use at most this many val images")
    time_limit_minutes: float | None = Field(
        default=None, gt=0, description="stop cleanly after this wall time (ours); the lr cooldown is fitted to it"
    )

    # Validation, best checkpoint, early stopping.
    val_epoch_freq: int = Field(default=10, ge=1, description="validate every N epochs and after the last")
    skip_first_val: bool = Field(default=True, description="no validation after the first epoch")
    val_max_dets: int = Field(default=100, ge=1, description="detections kept per image for COCO mAP")
    val_score_thresh: float = Field(default=0.0, ge=0.0, le=1.0, description="drop detections scored below")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="stop after this many epochs without a better val AP (ours); None = off"
    )
    early_stopping_min_delta: float = Field(default=0.0, ge=0.0, description="AP gain that counts as better")

    # Optimiser and schedule.
    lr_scale: float = Field(default=0.1, ge=0.0)
    lr_transformer: float = Field(default=8e-4, ge=0.0)
    lr_vision_backbone: float = Field(default=2.5e-4, ge=0.0)
    lr_language_backbone: float = Field(
        default=5e-5, ge=0.0, validation_alias=AliasChoices("lr_language_backbone", "language_backbone_lr")
    )
    lrd_vision_backbone: float = Field(default=0.9, gt=0.0, le=1.0, description="layer-wise lr decay of the trunk")
    weight_decay: float = Field(default=0.1, ge=0.0)
    grad_clip: float = Field(default=0.1, ge=0.0, description="max L2 norm of all gradients; 0 = no clipping")
    scheduler_warmup: int = Field(default=20, ge=0)
    scheduler_timescale: int = Field(default=20, ge=1)
    scheduler_cooldown: int = Field(default=20, ge=0)
    o2m_weight: float = Field(default=2.0, ge=0.0, description="weight of the one-to-many loss")
    denoising_groups: int = Field(
        default=0,
        ge=0,
        le=16,
        description="noised copies of every ground-truth box fed to the decoder as extra training queries "
        "(DN-DETR; ours); 0 = off",
    )
    denoising_box_noise: float = Field(
        default=0.4, gt=0.0, le=1.0, description="each edge of a denoising box moves by up to this x half its side"
    )
    loss_pad_num_queries: int | None = Field(
        default=200,
        ge=1,
        description="classification loss averaged as if over at least this many box queries (upstream 200); "
        "None = over the preset's own num_queries, so a small preset's classification term is not diluted",
    )

    # Model, precision, memory (ours).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        default="auto",
        description="autocast: auto = bf16 on GPUs that compute it natively (compute capability 8.0+), else fp16 "
        "with a GradScaler; off on CPU",
    )
    activation_checkpointing: bool | None = Field(default=None, description="None = on for the sam3 preset only")
    freeze_language_backbone: bool = Field(default=False, description="frozen text encoder, features cached")
    freeze_vision_trunk: bool = Field(default=False, description="frozen ViT trunk (ours; neck still trains)")
    lean_host_memory: bool | None = Field(
        default=None,
        description="CPU on Linux: freed blocks go back to the OS at once (1.6-1.9 GiB less for sam3 at 1008 px, "
        "10-20% slower steps); None = on for the sam3 preset only",
    )
    ema: bool = Field(default=True, description="evaluate and export an exponential moving average of the weights")
    ema_decay: float = Field(default=0.999, gt=0.0, lt=1.0)
    ema_tau: float = Field(default=200.0, gt=0.0, description="EMA warm-up: decay x (1 - exp(-updates / tau))")

    # Robustness and checkpoints (ours).
    max_nonfinite_steps: int = Field(default=10, ge=0, description="abort after more skipped non-finite steps")
    checkpoint_every_steps: int | None = Field(default=None, ge=1, description="also save last.ckpt every N steps")
    hard_example_mining: bool = Field(default=False, description="replay the highest-loss images after burn-in")
    hard_example_burn_in: int = Field(default=1, ge=1, description="epochs before mining starts")
    hard_example_fraction: float = Field(default=0.25, gt=0.0, lt=1.0, description="share of an epoch replayed")

    # Logging.
    log_freq: int = Field(default=10, ge=1, description="log every N optimiser steps")
    log_every_batch: bool = Field(default=False, description="log_freq = 1")
    upstream_log_lines: bool = Field(default=False, description="also print upstream's Train Epoch / Meters lines")

    # Data: split, prompts, balance, augmentation.
    val_percent: float = Field(default=0.2, ge=0.0, le=0.9, description="val share for datasets without val/")
    split_seed: int = 42
    prompt_variants: dict[str, list[str] | str] = Field(default_factory=dict)
    prompt_randomize: bool = Field(default=True, description="draw a prompt variant per sample (else the first)")
    balance_strategy: Strategy = "none"
    balance_classes: bool | None = Field(default=None, description="overrides balance_strategy on/off")
    balance_power: float = Field(default=0.5, ge=0.0)
    balance_clip: float = Field(default=10.0, gt=0.0)
    balance_beta: float = Field(default=0.99, gt=0.0, lt=1.0)
    balance_gamma: float = Field(default=0.5, ge=0.0)
    background_weight: float = Field(default=1.0, gt=0.0, description="weight of images without boxes (x mean)")
    hflip_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    box_jitter: float = Field(default=0.0, ge=0.0, le=0.5)
    train_min_scale: float = Field(
        default=480 / 1008,
        gt=0.0,
        le=1.0,  # transforms.VENDOR_MIN_SCALE (this module stays free of torch)
        description="multi-scale training: each image is resized to a square of at least this share of the "
        "resolution and zero-padded to it (upstream 480/1008 = 0.476); 1 = always the full resolution (ours)",
    )
    seed: int = 123

    # Refused: box-only.
    enable_segmentation: bool = False
    enable_segmentation_head: bool = False
    train_segmentation: bool = False
    enable_inst_interactivity: bool = False

    @field_validator(*_REFUSED)
    @classmethod
    def _box_only(cls, value: bool) -> bool:
        if value:
            raise ValueError(BOX_ONLY)
        return value

    @field_validator("init_checkpoint")
    @classmethod
    def _local_only(cls, value: str | None) -> str | None:
        if value and "://" in value:
            raise ValueError(f"{value!r} is a URL; give a local file path (sam3lite downloads nothing)")
        return value

    @field_validator("run_name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.startswith(".") or "/" in value or "\\" in value):
            raise ValueError(
                "must be a plain folder name inside runs_root (no '/', no leading '.' as in '..' or '.cache', "
                "no absolute path), e.g. birds-v2"
            )
        return value

    @field_validator("resolution")
    @classmethod
    def _resolution_fits(cls, value: int | None) -> int | None:
        if value is not None and value % 14:
            low = value // 14 * 14
            raise ValueError(f"must be a multiple of the patch size 14; use {low} or {low + 14}")
        return value

    # Loading.
    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Validate a plain dict; a ConfigError lists every problem as `source: field: what (allowed)`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of field: value, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError("\n".join(_describe(err, source) for err in exc.errors())) from None

    @classmethod
    def from_yaml(
        cls, path: str | Path | None, overrides: list[str] = (), base: Mapping[str, Any] | None = None, **fields: Any
    ) -> "TrainConfig":
        """`base` (a recipe's fields), then `path` (None: defaults), then `fields` (e.g. dataset=...), then
        `key=value` overrides."""
        data: dict[str, Any] = dict(base or {})
        source = "defaults"
        if path is not None:
            source = str(path)
            data.update(read_yaml_mapping(path))
        data.update({k: v for k, v in fields.items() if v is not None})
        return cls.parse(data, source).apply_overrides(overrides)

    def apply_overrides(self, overrides: list[str] | tuple[str, ...]) -> "TrainConfig":
        """A copy with `key=value` strings applied; values are read as YAML (`3`, `1e-4`, `true`, `[a, b]`)."""
        data = self.model_dump(exclude_unset=True)
        for item in overrides:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set max_epochs=30")
            if key not in _known_names():
                raise ConfigError(f"--set {item!r}: {_unknown_field(key)}")
            try:
                data[_canonical(key)] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
        return TrainConfig.parse(data, "--set") if overrides else self

    # Resolved values.
    @property
    def image_size(self) -> int:
        return self.resolution or PRESETS[self.preset].vision.image_size

    @property
    def use_lean_host_memory(self) -> bool:
        return self.preset == "sam3" if self.lean_host_memory is None else self.lean_host_memory

    @property
    def use_activation_checkpointing(self) -> bool:
        return self.preset == "sam3" if self.activation_checkpointing is None else self.activation_checkpointing

    @property
    def effective_log_freq(self) -> int:
        return 1 if self.log_every_batch else self.log_freq

    def resolved(self) -> "TrainConfig":
        """A copy with the automatic choices filled in (resolution, activation checkpointing)."""
        return self.model_copy(
            update={"resolution": self.image_size, "activation_checkpointing": self.use_activation_checkpointing}
        )

    def resolved_hash(self) -> str:
        """Stable hash of what the run trains (resolved; where it goes and how it logs left out)."""
        data = self.resolved().model_dump(mode="json", exclude=set(_NOT_HASHED))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def cache_path(self) -> Path:
        """Where converted datasets and subsets go: `cache_dir`, by default `<runs_root>/.cache`."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.runs_root) / ".cache"


def read_yaml_mapping(path: str | Path, what: str = "", expected: str = "a mapping of field: value") -> dict[str, Any]:
    """The top-level mapping of the YAML (or JSON) file at `path`; {} when it holds nothing (empty, comments only).

    A ConfigError starts with the file (and `what` it is, when given) and says the problem: the file cannot be
    read, its YAML is not valid (at which line and column, and what the parser found), or its top level is not
    `expected`.
    """
    where = f"{path} ({what})" if what else str(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected {expected} at the top level, got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`not valid YAML at line L, column C: what the parser found`; the parser's own text when it gives no place."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"not valid YAML ({exc})"
    found = "; ".join(part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {found}"


def _known_names() -> set[str]:
    names = set(TrainConfig.model_fields)
    names.add("language_backbone_lr")
    return names


def _canonical(key: str) -> str:
    return "lr_language_backbone" if key == "language_backbone_lr" else key


def _unknown_field(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(_known_names()), n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else "see `sam3lite train --help-config` for the fields"
    return f"unknown field {key!r}; {hint}"


def _describe(err: dict[str, Any], source: str) -> str:
    """One pydantic error as `source: field: message (got ...)`."""
    field = ".".join(str(part) for part in err.get("loc", ())) or "(top level)"
    if err.get("type") == "extra_forbidden":
        return f"{source}: {_unknown_field(field)}"
    message = err.get("msg", "invalid").removeprefix("Value error, ")
    given = err.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{source}: {field}: {message}{shown}"


def describe_fields() -> str:
    """Every field with its default and description, for `--help-config`."""
    lines = []
    for name, info in TrainConfig.model_fields.items():
        default = info.get_default(call_default_factory=True)
        text = f"  {name} = {default!r}"
        if info.description:
            text += f"  # {info.description}"
        lines.append(text)
    return "\n".join(lines)
