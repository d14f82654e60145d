"""`sam3lite synth OUT_DIR [--images N] [--seed S]`: write the synthetic YOLO dataset (the embedded default)."""

from __future__ import annotations

import argparse
import json

from sam3lite_core.commands.errors import explain_errors
from sam3lite_core.data.synth import write_synth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder to write the dataset into")
    parser.add_argument("--images", type=int, default=200, help="number of images, train and val (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of the seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    return explain_errors("sam3lite synth", lambda: _synth(args))


def _synth(args: argparse.Namespace) -> int:
    summary = write_synth(args.out_dir, images=args.images, seed=args.seed)
    if args.json:
        print(json.dumps(summary.model_dump()))
    else:
        print(
            f"wrote {summary.root}: {summary.train_images} train + {summary.val_images} val images, "
            f"{summary.boxes} boxes, {summary.backgrounds} backgrounds; classes: {', '.join(summary.classes)}"
        )
    return 0
