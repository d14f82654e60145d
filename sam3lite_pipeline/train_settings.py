"""The training configuration of a run, in three layers: pipeline defaults (`StorageRoots.train_defaults`, a
YAML file), then the dataset's own `<dataset>/sam3lite.yaml`, then the run config of `trained_model`.

`TrainingConfig` is the run config the launchpad, `dagster job execute -c run.yaml` and GraphQL `runConfigData`
accept under `ops: {trained_model: {config: ...}}`: every tunable of `TrainConfig`, each optional (unset = the
layer below decides). It is generated from `TrainConfig`, so a new tunable appears here without a second list.
Dagster checks names and types when the run is launched; `resolve_train_config` then validates values with
`TrainConfig`'s own rules and names the layer a bad value came from.
"""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from sam3lite_core.train.config import ConfigError, TrainConfig, read_yaml_mapping

DATASET_CONFIG = "sam3lite.yaml"
# Where the run goes and what it reads: the pipeline decides, not a config layer.
PIPELINE_OWNED = ("dataset", "runs_root", "run_name", "resume", "cache_dir")
# The train/val split: `coco_dataset` converts with it before training, so training and evaluation see the same
# val set; settable in the defaults file, the dataset's sam3lite.yaml and coco_dataset's run config, not in
# trained_model's.
SPLIT_FIELDS = ("val_percent", "split_seed")
# A run's folder name: the tag trained_model puts on its Dagster run, and what a run config may choose.
RUN_NAME_TAG = "sam3lite/run_name"
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _dagster_type(name: str, annotation: Any) -> Any:
    """A Dagster-config-compatible annotation. A Literal becomes an Enum of its choices, so the launchpad offers
    them and Dagster refuses another value when the run is launched."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return enum.Enum(name, {str(c): c for c in choices}, module=__name__)
    if typing.get_origin(annotation) is dict:
        return dict[str, Any]
    if len(args) == 1 and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _dagster_type(name, args[0])
    return annotation


def _config_fields() -> dict[str, Any]:
    fields = {}
    for name, info in TrainConfig.model_fields.items():
        if name in PIPELINE_OWNED or name in SPLIT_FIELDS:
            continue
        text = info.description or ""
        default = info.get_default(call_default_factory=True)
        text = f"{text}; default {default!r}" if text else f"default {default!r}"
        fields[name] = (_dagster_type(name, info.annotation) | None, Field(default=None, description=text))
    return fields


TrainingConfig = create_model(
    "TrainingConfig",
    __base__=dg.Config,
    __doc__="Training tunables for this run; unset fields come from the dataset's sam3lite.yaml, then the "
    "pipeline defaults, then TrainConfig's defaults.",
    run_name=(
        str | None,
        Field(
            default=None,
            pattern=RUN_NAME_PATTERN,
            description="the run folder's name under the runs root (must not exist); default <dataset>-<time>",
        ),
    ),
    **_config_fields(),
)


def read_layer(path: Path | None, what: str) -> dict[str, Any]:
    """A YAML mapping of TrainConfig fields ({} when `path` is None or missing); ConfigError names the file."""
    if path is None or not path.is_file():
        return {}
    data = read_yaml_mapping(path, what)
    owned = sorted(set(data) & set(PIPELINE_OWNED))
    if owned:
        raise ConfigError(f"{path} ({what}): {', '.join(owned)} cannot be set here: the pipeline sets them")
    return data


def file_layers(defaults_file: Path | None, dataset_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(source, fields) of the pipeline defaults file and the dataset's sam3lite.yaml."""
    if defaults_file is not None and not defaults_file.is_file():
        raise ConfigError(
            f"{defaults_file}: the pipeline training defaults file (StorageRoots.train_defaults) "
            f"does not exist; create it or unset train_defaults"
        )
    return [
        (str(defaults_file), read_layer(defaults_file, "pipeline training defaults")),
        (str(dataset_dir / DATASET_CONFIG), read_layer(dataset_dir / DATASET_CONFIG, "the dataset's overrides")),
    ]


def split_settings(defaults_file: Path | None, dataset_dir: Path) -> dict[str, Any]:
    """`val_percent` / `split_seed` as the files set them ({} where they do not)."""
    return {k: v for _, layer in file_layers(defaults_file, dataset_dir) for k, v in layer.items() if k in SPLIT_FIELDS}


def resolve_train_config(
    defaults_file: Path | None, dataset_dir: Path, run_config: dict[str, Any], owned: dict[str, Any]
) -> TrainConfig:
    """defaults file < `<dataset>/sam3lite.yaml` < run config < what the pipeline owns; each layer is checked
    alone first so an error names the layer it came from."""
    layers = file_layers(defaults_file, dataset_dir)
    layers.append(
        (
            "run config ops.trained_model.config",
            {k: v.value if isinstance(v, enum.Enum) else v for k, v in run_config.items() if v is not None},
        )
    )
    merged: dict[str, Any] = {}
    for source, layer in layers:
        TrainConfig.parse(layer, source=source)
        merged.update(layer)
    return TrainConfig.parse({**merged, **owned}, source="resolved training config")
