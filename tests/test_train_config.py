"""TrainConfig: YAML in, typed `key=value` overrides, errors that name the field and the allowed values, the
box-only refusals, the backend's names and aliases, the resolved hash, and the settings derived from it."""

from __future__ import annotations

import pytest

from sam3lite_core.train.components import detector_config
from sam3lite_core.train.config import ConfigError, TrainConfig, read_yaml_mapping
from sam3lite_core.train.denoising import denoising_settings
from sam3lite_core.train.loader import balance_settings, convert_settings, loader_settings
from sam3lite_core.train.losses import loss_settings
from sam3lite_core.train.optim import optim_settings
from sam3lite_core.train.schedule import schedule_settings


def test_yaml_then_overrides_with_yaml_typed_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nmax_epochs: 5\nlr_scale: 0.5\nprompt_variants:\n  red circle: [disc, round]\n")
    cfg = TrainConfig.from_yaml(
        path,
        ["max_epochs=7", "hflip_prob=0.5", "early_stopping_patience=3", "balance_classes=true", "resolution=null"],
        dataset="/data/x",
    )
    assert (cfg.preset, cfg.max_epochs, cfg.lr_scale, cfg.hflip_prob) == ("tiny", 7, 0.5, 0.5)
    assert cfg.early_stopping_patience == 3 and cfg.balance_classes is True and cfg.dataset == "/data/x"
    assert cfg.prompt_variants == {"red circle": ["disc", "round"]}
    assert TrainConfig.from_yaml(None).preset == "small"


def test_backend_request_fields_and_alias_are_accepted():
    request = {
        "max_epochs": 20,
        "train_batch_size": 1,
        "val_batch_size": 1,
        "num_train_workers": 4,
        "num_val_workers": 2,
        "resolution": 1008,
        "lr_scale": 0.1,
        "gradient_accumulation_steps": 1,
        "val_epoch_freq": 10,
        "target_epoch_size": 1500,
        "scheduler_warmup": 20,
        "scheduler_timescale": 20,
        "num_gpus": 1,
        "enable_inst_interactivity": False,
        "log_freq": 10,
        "log_every_batch": False,
        "enable_segmentation_head": False,
        "train_segmentation": False,
        "language_backbone_lr": 1e-5,
        "freeze_language_backbone": True,
        "prompt_variants": {"1": "a, b"},
        "prompt_randomize": True,
        "balance_strategy": "inv_sqrt",
        "balance_classes": True,
        "balance_power": 0.5,
        "balance_clip": 10.0,
        "balance_beta": 0.99,
        "balance_gamma": 0.5,
        "val_max_dets": 100,
        "val_percent": 0.3,
        "split_seed": 42,
        "run_name": "sam3_ds_202601011200",
        "train_limit": 50,
        "val_limit": 20,
    }
    cfg = TrainConfig.parse(request)
    assert cfg.lr_language_backbone == 1e-5
    assert TrainConfig().apply_overrides(["language_backbone_lr=2e-6"]).lr_language_backbone == 2e-6


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"preset": "big"}, ["preset", "'sam3', 'small' or 'tiny'", "'big'"]),
        ({"amp": "fp8"}, ["amp", "'auto', 'bf16', 'fp16' or 'off'"]),
        ({"max_epoch": 3}, ["unknown field 'max_epoch'", "max_epochs"]),
        ({"max_epochs": 0}, ["max_epochs", "greater than or equal to 1"]),
        ({"resolution": 300}, ["resolution", "multiple of the patch size 14", "294 or 308"]),
        ({"init_checkpoint": "https://x/sam3.pt"}, ["init_checkpoint", "local file"]),
        ({"balance_strategy": "sqrt"}, ["balance_strategy", "'inv_sqrt'"]),
    ],
)
def test_errors_name_the_field_and_what_is_allowed(data, expected):
    with pytest.raises(ConfigError) as info:
        TrainConfig.parse(data, "run.yaml")
    assert str(info.value).startswith("run.yaml: ")
    for text in expected:
        assert text in str(info.value)


@pytest.mark.parametrize(
    "field", ["enable_segmentation", "enable_segmentation_head", "train_segmentation", "enable_inst_interactivity"]
)
def test_mask_and_interactive_options_are_refused(field):
    assert not getattr(TrainConfig.parse({field: False}), field)
    with pytest.raises(ConfigError, match=f"{field}: sam3lite trains the box-only SAM3 detector"):
        TrainConfig.parse({field: True})


def test_override_errors():
    cfg = TrainConfig()
    with pytest.raises(ConfigError, match="expected key=value"):
        cfg.apply_overrides(["max_epochs"])
    with pytest.raises(ConfigError, match="unknown field 'lr_scal'; did you mean lr_scale"):
        cfg.apply_overrides(["lr_scal=1"])
    with pytest.raises(ConfigError, match="--set: max_epochs: Input should be a valid integer"):
        cfg.apply_overrides(["max_epochs=many"])


def test_resolved_hash_covers_what_is_trained_only():
    base = TrainConfig(dataset="/a", runs_root="/r")
    assert (
        base.resolved_hash()
        == TrainConfig(
            dataset="/b", runs_root="/s", run_name="x", upstream_log_lines=True, num_train_workers=0
        ).resolved_hash()
    )
    assert base.resolved_hash() == TrainConfig(resolution=336).resolved_hash()  # the small preset's own
    assert base.resolved_hash() != TrainConfig(lr_scale=0.2).resolved_hash()
    assert base.resolved_hash() != TrainConfig(preset="tiny").resolved_hash()


def test_derived_settings():
    cfg = TrainConfig(
        preset="tiny",
        val_percent=0.3,
        split_seed=7,
        balance_classes=True,
        background_weight=0.5,
        target_epoch_size=9,
        prompt_variants={"red circle": "disc, round"},
        prompt_randomize=False,
        hflip_prob=0.5,
        lr_scale=2.0,
        language_backbone_lr=1e-5,
        o2m_weight=1.0,
        scheduler_cooldown=5,
    )
    assert convert_settings(cfg).val_fraction == 0.3 and convert_settings(cfg).seed == 7
    balance = balance_settings(cfg)
    assert (balance.strategy, balance.background_weight, balance.target_epoch_size) == ("inv_sqrt", 0.5, 9)
    assert balance_settings(TrainConfig(balance_strategy="focal", balance_classes=False)).strategy == "none"
    loader = loader_settings(cfg)
    assert loader.resolution == 112 and loader.hflip_prob == 0.5
    assert loader.prompt_variants == {"red circle": ["disc"]}  # prompt_randomize false: the first variant only
    optim = optim_settings(cfg)
    assert (optim.lr_scale, optim.lr_language, optim.grad_clip) == (2.0, 1e-5, 0.1)
    assert loss_settings(cfg).o2m_weight == 1.0 and schedule_settings(cfg).cooldown_steps == 5
    assert loss_settings(cfg).pad_num_queries == 200  # upstream's default
    assert loss_settings(TrainConfig(loss_pad_num_queries=None)).pad_num_queries is None
    denoising = denoising_settings(TrainConfig(denoising_groups=3, denoising_box_noise=0.2))
    assert (denoising.groups, denoising.box_noise) == (3, 0.2)
    assert detector_config(cfg).vision.image_size == 112
    assert detector_config(TrainConfig(preset="tiny", resolution=224)).vision.image_size == 224
    assert TrainConfig(preset="sam3").use_activation_checkpointing and not TrainConfig().use_activation_checkpointing


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_recipe_is_a_valid_config_with_the_same_global_batch(processes):
    from sam3lite_core.train.recipes import GLOBAL_BATCH, cpu_from_scratch

    cfg = TrainConfig.parse(cpu_from_scratch(processes))
    assert cfg.train_batch_size * processes == GLOBAL_BATCH
    with pytest.raises(ValueError, match="must divide"):
        cpu_from_scratch(3)


def test_yaml_files_are_read_as_one_mapping_and_errors_name_the_file_and_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("# only a comment\n")
    assert read_yaml_mapping(path) == {} and TrainConfig.from_yaml(path) == TrainConfig()
    path.write_text("max_epochs: 3\n")
    assert read_yaml_mapping(path) == {"max_epochs": 3}
    cases = [
        ("max_epochs: 3\n  lr_scale: [1\n", f"{path} (what it is): not valid YAML at line 2, column 11: "),
        ("- max_epochs\n", f"{path} (what it is): expected a mapping of field: value at the top level, got list"),
    ]
    for text, expected in cases:
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            read_yaml_mapping(path, "what it is")
        assert str(info.value).startswith(expected), str(info.value)
    with pytest.raises(ConfigError, match="expected a mapping such as `a: 1` at the top level, got list"):
        read_yaml_mapping(path, expected="a mapping such as `a: 1`")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=f"^{missing}: cannot read the file \\(No such file or directory\\)$"):
        TrainConfig.from_yaml(missing)
