"""The pipeline's training config layers: the defaults file and the dataset's sam3lite.yaml are read with the
core's YAML reader, errors name the file and the layer, and the pipeline's own fields are refused there."""

from __future__ import annotations

import pytest

from sam3lite_core.train.config import ConfigError
from sam3lite_pipeline.train_settings import DATASET_CONFIG, file_layers, read_layer, resolve_train_config


def test_layers_are_read_in_order_and_a_missing_dataset_file_is_empty(tmp_path):
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text("max_epochs: 3\nhflip_prob: 0.5\n")
    dataset = tmp_path / "ds"
    dataset.mkdir()
    assert file_layers(defaults, dataset) == [
        (str(defaults), {"max_epochs": 3, "hflip_prob": 0.5}),
        (str(dataset / DATASET_CONFIG), {}),
    ]
    (dataset / DATASET_CONFIG).write_text("max_epochs: 5\n")
    cfg = resolve_train_config(defaults, dataset, {"hflip_prob": 0.25}, {"dataset": str(dataset)})
    assert (cfg.max_epochs, cfg.hflip_prob, cfg.dataset) == (5, 0.25, str(dataset))


@pytest.mark.parametrize(
    "text, problem",
    [
        ("max_epochs: [3\n", "not valid YAML at line 2, column 1: "),
        ("- max_epochs\n", "expected a mapping of field: value at the top level, got list"),
        ("run_name: mine\nresume: true\n", "resume, run_name cannot be set here: the pipeline sets them"),
    ],
)
def test_layer_errors_name_the_file_and_the_layer(tmp_path, text, problem):
    path = tmp_path / DATASET_CONFIG
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_layer(path, "the dataset's overrides")
    assert str(info.value).startswith(f"{path} (the dataset's overrides): {problem}"), str(info.value)


def test_a_named_defaults_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="the pipeline training defaults file .* does not exist"):
        file_layers(tmp_path / "nope.yaml", tmp_path)
