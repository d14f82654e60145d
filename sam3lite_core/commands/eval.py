"""`sam3lite eval --checkpoint PATH --dataset DIR|COCO_JSON [--images-root DIR] [--split val|train] [--json]`.

COCO bbox mAP of a checkpoint (ours, with EMA weights when it has them unless --no-ema; or an upstream file) on
a dataset folder (converted into the cache, its val split by default) or on a COCO JSON (file_names relative to
--images-root, default the JSON's folder). Prints the 12 COCO stats and per-class AP, or one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sam3lite_core.commands.errors import explain_errors, positive_int
from sam3lite_core.data.decode import default_max_pixels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint to evaluate")
    parser.add_argument("--dataset", required=True, metavar="DIR|COCO_JSON", help="dataset folder or COCO JSON")
    parser.add_argument("--images-root", metavar="DIR", help="folder of a COCO JSON's file_names")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="split of a dataset folder")
    parser.add_argument("--cache-dir", default="runs/.cache", metavar="DIR", help="where converted datasets are kept")
    parser.add_argument("--val-percent", type=float, default=0.2, help="val share for datasets without val/")
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument("--resolution", type=positive_int, help="input side in px (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--max-dets", type=positive_int, default=100, help="detections kept per image")
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=default_max_pixels(),
        metavar="N",
        help="decode budget: images over N pixels are skipped in conversion and refused in loading",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--no-ema", action="store_true", help="the trained weights even when EMA weights exist")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _split(args: argparse.Namespace) -> tuple[str, str]:
    source = Path(args.dataset)
    if source.is_file():
        return str(source), args.images_root or str(source.parent)
    from sam3lite_core.data.convert import ConvertSettings, convert_dataset

    settings = ConvertSettings(val_fraction=args.val_percent, seed=args.split_seed, max_pixels=args.max_pixels)
    result = convert_dataset(source, args.cache_dir, settings)
    if args.split == "val":
        return result.val_json, result.val_images_root
    return result.train_json, result.train_images_root


def run(args: argparse.Namespace) -> int:
    return explain_errors("sam3lite eval", lambda: _evaluate_and_print(args))


def _evaluate_and_print(args: argparse.Namespace) -> int:
    from sam3lite_core.data.coco_json import read_coco
    from sam3lite_core.distributed import pick_device
    from sam3lite_core.eval.coco_eval import STAT_NAMES
    from sam3lite_core.eval.evaluate import evaluate

    coco_json, images_root = _split(args)
    read_coco(coco_json)  # a malformed file is refused before the checkpoint loads
    result = evaluate(
        args.checkpoint,
        coco_json,
        images_root,
        batch_size=args.batch_size,
        num_workers=args.workers,
        max_dets=args.max_dets,
        amp=args.amp,
        device=pick_device(args.device),
        resolution=args.resolution,
        use_ema=not args.no_ema,
        max_pixels=args.max_pixels,
    )
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{result.num_images} images, {result.num_detections} detections ({coco_json})")
    print("  ".join(f"{name} {value:.4f}" for name, value in zip(STAT_NAMES, result.stats)))
    width = max((len(row.name) for row in result.per_class), default=5)
    print(f"{'class':<{width}}  {'gt':>6}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}")
    for row in result.per_class:
        print(f"{row.name:<{width}}  {row.num_gt:>6}  {row.AP:>6.3f}  {row.AP50:>6.3f}  {row.AP75:>6.3f}")
    return 0
