"""`sam3lite train [--recipe NAME] [--config run.yaml] --dataset DIR [--set key=value ...] [--resume]
[--nproc-per-node N]`.

A recipe (sam3lite_core/train/recipes.py) is a set of fields that go together, e.g. `sam3-16gb-gpu` to fine-tune the
released sam3.pt on one 16 GB GPU; the config file and --set override it.

Prints `[sam3lite-progress p]`, `[sam3lite-metric]{json}` and `[sam3lite-result]{json}` lines (a progress bar
on a terminal; upstream's `Train Epoch:` / `Meters:` lines too with `--set upstream_log_lines=true`).
`--nproc-per-node N` re-launches itself under torchrun (`torchrun --nproc-per-node N -m sam3lite_core.train`).
Exit status: 0 when training ended normally (completed, early stopping, time limit), 1 when it aborted on
non-finite losses or the dataset is unusable, 2 for a configuration error, 130 when SIGTERM or SIGINT stopped it
(last.ckpt saved at that step; `--resume` continues it).
"""

from __future__ import annotations

import argparse
import os
import sys

from sam3lite_core.commands.errors import explain_errors
from sam3lite_core.distributed import LaunchSettings, launch_command, pick_device
from sam3lite_core.train.config import ConfigError, TrainConfig, describe_fields
from sam3lite_core.train.recipes import RECIPES, missing_for_recipe, recipe_fields


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=RECIPES, help="start from a recipe's fields (train/recipes.py)")
    parser.add_argument("--config", metavar="YAML", help="training config (run.yaml); fields as in --help-config")
    parser.add_argument("--dataset", metavar="DIR", help="YOLO/Qwen dataset folder (overrides the config's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, value read as YAML (repeatable): --set max_epochs=30",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run (run_name, else the newest)")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="data-parallel processes on this machine (one per GPU); runs torchrun",
    )
    parser.add_argument("--help-config", action="store_true", help="list every config field and exit")


def run(args: argparse.Namespace) -> int:
    if args.help_config:
        print(describe_fields())
        return 0
    try:
        base = recipe_fields(args.recipe) if args.recipe else {}
        cfg = TrainConfig.from_yaml(
            args.config, args.overrides, base=base, dataset=args.dataset, resume=args.resume or None
        )
        missing = missing_for_recipe(args.recipe, cfg.model_dump()) if args.recipe else []
        if missing:
            raise ConfigError(f"the {args.recipe} recipe needs " + "; ".join(missing))
    except ConfigError as exc:
        print(f"sam3lite train: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return explain_errors("sam3lite train", lambda: _relaunch(cfg, args))
    from sam3lite_core.train.events import ConsolePrinter
    from sam3lite_core.train.loop import train
    from sam3lite_core.train.outcome import exit_code

    return explain_errors(
        "sam3lite train", lambda: exit_code(train(cfg, ConsolePrinter(upstream=cfg.upstream_log_lines)).stopped_reason)
    )


def _relaunch(cfg: TrainConfig, args: argparse.Namespace) -> int:
    pick_device(cfg.device, args.nproc_per_node - 1)  # more processes than GPUs: refused before any starts
    target = ["-m", "sam3lite_core.train"]
    for flag, value in (("--recipe", args.recipe), ("--config", args.config), ("--dataset", args.dataset)):
        if value:
            target += [flag, value]
    target += [item for override in args.overrides for item in ("--set", override)]
    target += ["--resume"] if args.resume else []
    argv = launch_command(LaunchSettings(nproc_per_node=args.nproc_per_node), target)
    os.execv(argv[0], argv)
    return 0  # not reached
