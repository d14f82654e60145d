"""`sam3lite convert DATASET_DIR --cache-dir DIR [--val-fraction F] [--seed S] [--max-pixels N] [--json]`.

Validates the dataset, prints its scan report and writes (or reuses) the COCO train/val JSON in the cache.
Exit status 0 on success, 1 when the dataset has a fatal problem (the report says what and what to do).
"""

from __future__ import annotations

import argparse
import json

from sam3lite_core.commands.errors import explain_errors, positive_int
from sam3lite_core.data.convert import ConvertSettings, convert_dataset
from sam3lite_core.data.report import DatasetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ConvertSettings()
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="YOLO or Qwen dataset folder (read only)")
    parser.add_argument("--cache-dir", required=True, metavar="DIR", help="where converted datasets are kept")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help=f"share of images hashed into val when there is no val/ split (default {defaults.val_fraction})",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed of that split (default {defaults.seed})")
    parser.add_argument(
        "--missing-labels",
        choices=("background", "skip"),
        default=defaults.missing_labels,
        help="images without a label file: background images (default) or skipped",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=defaults.max_pixels,
        metavar="N",
        help=f"decode budget: images over N pixels are skipped (default {defaults.max_pixels})",
    )
    parser.add_argument(
        "--max-boxes-per-image",
        type=positive_int,
        default=defaults.max_boxes_per_image,
        metavar="N",
        help=f"boxes kept per image (default {defaults.max_boxes_per_image})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--all-problems", action="store_true", help="list every problem in the text report")


def run(args: argparse.Namespace) -> int:
    try:
        settings = ConvertSettings(
            val_fraction=args.val_fraction,
            seed=args.seed,
            missing_labels=args.missing_labels,
            max_pixels=args.max_pixels,
            max_boxes_per_image=args.max_boxes_per_image,
        )
    except ValueError as exc:
        print(f"sam3lite convert: invalid settings: {exc}")
        return 2
    return explain_errors("sam3lite convert", lambda: _convert(args, settings))


def _convert(args: argparse.Namespace, settings: ConvertSettings) -> int:
    lines_per_code = None if args.all_problems else 10
    try:
        result = convert_dataset(args.dataset_dir, args.cache_dir, settings)
    except DatasetError as exc:
        if args.json:
            report = exc.report.model_dump(mode="json") if exc.report is not None else None
            print(json.dumps({"ok": False, "error": str(exc), "report": report}))
        else:
            print(exc.report.text(lines_per_code) if exc.report is not None else f"sam3lite convert: {exc}")
        return 1
    if args.json:
        print(json.dumps({"ok": True, **result.model_dump(mode="json")}))
        return 0
    c = result.counts
    print(result.report.text(lines_per_code))
    print(f"signature {result.signature} ({'cache hit' if result.cache_hit else 'converted'})")
    print(f"train: {c.train_images} images, {c.train_boxes} boxes -> {result.train_json}")
    print(f"val:   {c.val_images} images, {c.val_boxes} boxes -> {result.val_json} (split by {result.split_method})")
    print(f"categories: {', '.join(f'{cat.id}={cat.name}' for cat in result.categories)}")
    return 0
