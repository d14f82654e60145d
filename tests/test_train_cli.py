"""The commands: `sam3lite train` (a real subprocess: the lines a backend or a pipeline reads), its config
errors, `python -m sam3lite_core.train`, `sam3lite eval` on a dataset folder and on a COCO JSON, `sam3lite
export`, and `evaluate` on a model and on a checkpoint file agreeing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from train_helpers import TINY, make_dataset, threads

from sam3lite_core import cli
from sam3lite_core.eval.evaluate import evaluate
from sam3lite_core.train import __main__ as train_main
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.weights import load_model


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_cli")
    dataset = make_dataset(root / "synth")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY, "runs_root": str(root / "runs"), "cache_dir": str(root / "cache")}))
    argv = [
        sys.executable,
        "-m",
        "sam3lite_core.cli",
        "train",
        "--config",
        str(config),
        "--dataset",
        str(dataset),
        "--set",
        "max_epochs=1",
        "--set",
        "run_name=cli",
        "--set",
        "upstream_log_lines=true",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return root, dataset, done


def test_train_command_prints_machine_and_upstream_lines(cli_run):
    root, _, done = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("[sam3lite-progress ") for line in lines)
    assert any(line.startswith("[sam3lite-metric]{") for line in lines)
    assert any(line.startswith("Train Epoch: [0][") and "Losses/train_all_loss:" in line for line in lines)
    assert any(line.startswith("Meters: {") and "np.float64(" in line for line in lines)
    result = json.loads(lines[-1].removeprefix("[sam3lite-result]"))
    assert result["stopped_reason"] == "completed" and result["run_dir"] == str(root / "runs" / "cli")
    assert "\x1b[" not in done.stdout  # no progress bar off a terminal


def test_config_errors_exit_2_and_name_the_field(capsys, tmp_path):
    assert cli.main(["train", "--dataset", str(tmp_path), "--set", "max_epoch=3"]) == 2
    assert "unknown field 'max_epoch'; did you mean max_epochs" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", str(tmp_path), "--set", "enable_segmentation=true"]) == 2
    assert "box-only" in capsys.readouterr().err
    assert train_main.main(["--help-config"]) == 0
    assert "max_epochs = 20" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        train_main.main(["--help"])
    assert info.value.code == 0


def test_eval_command_on_a_folder_and_on_a_coco_json(cli_run, capsys):
    root, dataset, _ = cli_run
    export = root / "runs" / "cli" / "checkpoints" / "export.ckpt"
    with threads(1):
        assert (
            cli.main(
                [
                    "eval",
                    "--checkpoint",
                    str(export),
                    "--dataset",
                    str(dataset),
                    "--cache-dir",
                    str(root / "cache"),
                    "--json",
                ]
            )
            == 0
        )
        from_folder = json.loads(capsys.readouterr().out)
        val_json = next((root / "cache" / "coco").glob("*/val.json"))
        images = dataset / "val"
        assert (
            cli.main(["eval", "--checkpoint", str(export), "--dataset", str(val_json), "--images-root", str(images)])
            == 0
        )
        table = capsys.readouterr().out
        direct = evaluate(load_model(export), val_json, images)
    assert from_folder["AP"] == direct.AP and from_folder["num_images"] == 2
    assert f"AP {direct.AP:.4f}" in table and "red circle" in table


def test_export_command(cli_run, capsys, tmp_path):
    root, _, _ = cli_run
    run = root / "runs" / "cli"
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "ema.ckpt")]) == 0
    assert (
        cli.main(
            [
                "export",
                "--checkpoint",
                str(run / "checkpoints" / "best.ckpt"),
                "--out",
                str(tmp_path / "raw.ckpt"),
                "--no-ema",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    ema, raw = (torch.load(tmp_path / name, weights_only=True) for name in ("ema.ckpt", "raw.ckpt"))
    active = torch.load(run / "checkpoints" / "export.ckpt", weights_only=True)
    key = "detector.dot_prod_scoring.prompt_proj.weight"
    assert torch.equal(ema["model"][key], active["model"][key])
    assert not torch.equal(raw["model"][key], ema["model"][key])
    assert cli.main(["export", "--checkpoint", str(tmp_path)]) == 2


def test_evaluate_a_model_equals_evaluating_its_checkpoint(cli_run):
    root, _, _ = cli_run
    best = root / "runs" / "cli" / "checkpoints" / "best.ckpt"
    val_json = next((root / "cache" / "coco").glob("*/val.json"))
    images = root / "synth" / "val"
    with threads(1):
        from_file = evaluate(best, val_json, images, use_ema=False)
        model = load_model(best, use_ema=False).train()
        in_memory = evaluate(model, val_json, images, batch_size=2)
    assert from_file.stats == in_memory.stats and model.training  # mode restored


def test_sigterm_saves_last_checkpoint_at_the_current_step(tmp_path):
    """A signal mid-epoch: training stops at the end of that step, saves last.ckpt there, exits 130, and
    `--resume` continues from it."""
    dataset = make_dataset(tmp_path / "data")
    args = [
        "--dataset",
        str(dataset),
        "--set",
        f"runs_root={tmp_path / 'runs'}",
        "--set",
        "run_name=stopped",
        "--set",
        "max_epochs=200",
        "--set",
        "preset=tiny",
        "--set",
        "train_batch_size=2",
        "--set",
        "num_train_workers=0",
        "--set",
        "log_freq=1",
        "--set",
        "skip_first_val=true",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "sam3lite_core.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    steps = 0
    for line in process.stdout:
        if line.startswith("[sam3lite-metric]") and '"phase": "train"' in line:
            steps += 1
            if steps == 7:  # mid-epoch 2 (5 steps an epoch)
                process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130
    result = json.loads((tmp_path / "runs" / "stopped" / "result.json").read_text())
    assert result["stopped_reason"] == "cancelled" and result["export_checkpoint"] is None
    saved = torch.load(tmp_path / "runs" / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["train_state"]["step"] == result["steps_done"] >= 7
    resumed = subprocess.run(
        [sys.executable, "-m", "sam3lite_core.cli", "train", *args, "--set", "max_epochs=3", "--resume"],
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    finished = json.loads((tmp_path / "runs" / "stopped" / "result.json").read_text())
    assert finished["resumed_from_step"] == result["steps_done"] and finished["steps_done"] == 15


def test_a_recipe_is_the_base_the_config_and_set_override(capsys, tmp_path):
    from sam3lite_core.train.recipes import recipe_fields

    assert cli.main(["train", "--recipe", "sam3-16gb-gpu", "--dataset", str(tmp_path)]) == 2
    assert "the sam3-16gb-gpu recipe needs init_checkpoint (the released sam3.pt" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("gradient_accumulation_steps: 4\n")
    layered = TrainConfig.from_yaml(
        tmp_path / "run.yaml", ["amp=bf16"], base=recipe_fields("sam3-16gb-gpu"), init_checkpoint="sam3.pt"
    )
    assert (layered.preset, layered.train_batch_size, layered.freeze_language_backbone) == ("sam3", 1, True)
    assert (layered.gradient_accumulation_steps, layered.amp, layered.ema) == (4, "bf16", False)
    with pytest.raises(SystemExit):
        cli.main(["train", "--recipe", "sam3-on-a-toaster"])
    assert "invalid choice: 'sam3-on-a-toaster'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_fields("sam3-on-a-toaster")


def test_a_recipe_reaches_every_torchrun_process(monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(os, "execv", lambda path, argv: launched.append(argv))
    argv = ["train", "--recipe", "cpu-from-scratch", "--dataset", str(tmp_path), "--nproc-per-node", "2"]
    assert cli.main(argv) == 0
    (command,) = launched
    assert command[command.index("--recipe") + 1] == "cpu-from-scratch" and "sam3lite_core.train" in command
