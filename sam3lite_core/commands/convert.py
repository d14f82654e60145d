"""`sam3lite convert DATASET_DIR --cache-dir DIR [--val-fraction F] [--seed S] [--json]`.

Validates the dataset, prints its scan report and writes (or reuses) the COCO train/val JSON in the cache.
Exit status 0 on success, 1 when the dataset has a fatal problem (the report says what and what to do).
"""

from __future__ import annotations

import argparse
import json

from sam3lite_core.data.convert import ConvertSettings, convert_dataset
from sam3lite_core.data.report import DatasetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ConvertSettings()
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="YOLO or Qwen dataset folder (read only)")
    parser.add_argument("--cache-dir", required=True, metavar="DIR", help="where converted datasets are kept")
    parser.add_argument(
        "--val-fraction", type=float, default=defaults.val_fraction,
        help=f"share of images hashed into val when there is no val/ split (default {defaults.val_fraction})",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed of that split (default {defaults.seed})")
    parser.add_argument("--missing-labels", choices=("background", "skip"), default=defaults.missing_labels,
                        help="images without a label file: background images (default) or skipped")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    parser.add_argument("--all-problems", action="store_true", help="list every problem in the text report")


def run(args: argparse.Namespace) -> int:
    try:
        settings = ConvertSettings(val_fraction=args.val_fraction, seed=args.seed, missing_labels=args.missing_labels)
    except ValueError as exc:
        print(f"sam3lite convert: invalid settings: {exc}")
        return 2
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
