"""`sam3lite predict IMAGE... --prompt TEXT [--prompt TEXT ...] --checkpoint PATH [--threshold T] [--json OUT]
[--viz OUT_DIR] [--tile SIZE [--tile-overlap F] [--tile-merge-iou F]]`: detect the prompted objects in each image.
`sam3lite predict IMAGE --box X,Y,W,H[:neg] [--box ...] [--prompt TEXT ...] --checkpoint PATH`: also (or only)
find what the exemplar boxes show.

`--tile SIZE` looks at a large image through overlapping SIZE px windows, each at the model's resolution, and
merges their detections (small objects stay visible that a whole-image resize would shrink away).
`--box` gives exemplar boxes in pixels of that one image (x, y of the top-left corner, width, height; `:neg` for
a negative exemplar); together they are one prompt (text "visual"), the exemplar path of the service's
`/sam3/visual_prompt`. It takes one image and no `--tile` (a box names a region of one whole image).

Prints one table row per kept detection, then the peak memory (resident set of this process; the CUDA peak too
on a GPU). `--json OUT` writes every detection ("-" prints the JSON instead of the table); `--viz OUT_DIR` saves
each image with its labelled boxes as OUT_DIR/<image stem>.png. Boxes are clipped to the image. An image that
cannot be read (or is over the `--max-pixels` decode budget) is reported on stderr and the others still get
their output; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam3lite_core.commands.errors import explain_errors, positive_int, prompt_text
from sam3lite_core.data.decode import default_max_pixels
from sam3lite_core.data.outputs import check_writable_file, check_writable_folder

if TYPE_CHECKING:
    from sam3lite_core.inference import PromptLike

EXEMPLAR_TEXT = "visual"  # upstream's text for a prompt made of exemplar boxes only, as the service sends


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--prompt", action="append", default=[], metavar="TEXT", type=prompt_text, help="text prompt (repeatable)"
    )
    parser.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="X,Y,W,H[:neg]",
        help="exemplar box in pixels of the one image (repeatable; ':neg' = negative)",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="our checkpoint or an upstream sam3.pt")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score kept (default 0.5)")
    parser.add_argument("--max-detections", type=int, default=100, help="best detections kept per prompt")
    parser.add_argument("--nms-iou", type=float, help="suppress boxes overlapping a better one above this IoU")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--json", metavar="OUT", help="write the detections as JSON to OUT ('-' = stdout)")
    parser.add_argument("--viz", metavar="OUT_DIR", help="save each image with its boxes drawn into OUT_DIR")
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=default_max_pixels(),
        metavar="N",
        help="decode budget: an image over N pixels is reported and skipped",
    )
    parser.add_argument("--tile", type=int, metavar="SIZE", help="run on overlapping SIZE px windows, then merge")
    parser.add_argument(
        "--tile-overlap",
        type=float,
        default=0.2,
        metavar="F",
        help="least fraction of a window its neighbours share (default 0.2)",
    )
    parser.add_argument(
        "--tile-merge-iou",
        type=float,
        default=0.5,
        metavar="F",
        help="boxes from different windows overlapping above this IoU are one object (default 0.5)",
    )


def parse_box(text: str) -> tuple[list[float], int]:
    """'X,Y,W,H[:neg|:pos]' -> ([x0, y0, x1, y1] px, label 1 | 0); ValueError saying the expected form."""
    spec, _, sign = text.partition(":")
    try:
        x, y, w, h = (float(v) for v in spec.split(","))
    except ValueError:
        raise ValueError(f"--box {text!r}: give X,Y,W,H in pixels (four numbers), optionally ending in :neg") from None
    if not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0 or sign not in ("", "neg", "pos"):
        raise ValueError(f"--box {text!r}: W and H must be > 0 pixels, all finite, and the suffix :neg or :pos")
    return [x, y, x + w, y + h], 0 if sign == "neg" else 1


def _prompts(args: argparse.Namespace) -> list[PromptLike]:
    """The text prompts, then the exemplar boxes as one prompt; ValueError for a combination that cannot run."""
    if not args.prompt and not args.box:
        raise ValueError("give at least one --prompt TEXT or --box X,Y,W,H")
    if not args.box:
        return list(args.prompt)
    if args.tile is not None:
        raise ValueError("--box cannot be combined with --tile: a box names a region of the whole image")
    if len(args.images) != 1:
        raise ValueError(f"--box takes exactly one image (its boxes are pixels of that image); got {len(args.images)}")
    boxes, labels = zip(*map(parse_box, args.box))
    return [*args.prompt, {"text": EXEMPLAR_TEXT, "boxes": list(boxes), "labels": list(labels)}]


def _record(image: str, per_image: list[list[Any]], size: tuple[int, int]) -> dict[str, Any]:
    """The JSON-ready dict of one image: {"image", "detections": [{prompt, score, box_xyxy, box_cxcywh}]}, the
    boxes clipped to the image of (height, width) pixels (as the service clips them)."""
    height, width = size
    detections = []
    for d in (d for per_prompt in per_image for d in per_prompt):
        x0, y0, x1, y1 = (min(max(v, 0.0), side) for v, side in zip(d.box_xyxy, (width, height, width, height)))
        cxcywh = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
        detections.append(
            {
                "prompt": d.prompt,
                "score": round(d.score, 5),
                "box_xyxy": [round(v, 2) for v in (x0, y0, x1, y1)],
                "box_cxcywh": [round(v, 5) for v in cxcywh],
            }
        )
    return {"image": image, "detections": detections}


def _print_table(records: list[dict[str, Any]]) -> None:
    print(f"{'image':<28} {'prompt':<20} {'score':>6}  box_xyxy (px)")
    for record in records:
        if not record["detections"]:
            print(f"{Path(record['image']).name:<28} {'-':<20} {'-':>6}  no detection above the threshold")
        for d in record["detections"]:
            box = " ".join(f"{v:7.1f}" for v in d["box_xyxy"])
            print(f"{Path(record['image']).name:<28} {d['prompt'][:20]:<20} {d['score']:6.3f}  {box}")


def _draw(image_path: str, pixels: Any, detections: list[dict[str, Any]], out_dir: Path) -> Path:
    """Save the decoded (upright) uint8 [H, W, 3] `pixels` with the detections drawn as OUT_DIR/<stem>.png."""
    from PIL import Image, ImageDraw

    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    prompts = list(dict.fromkeys(d["prompt"] for d in detections))
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    for d in detections:
        color = palette[prompts.index(d["prompt"]) % len(palette)]
        draw.rectangle(d["box_xyxy"], outline=color, width=2)
        draw.text((d["box_xyxy"][0] + 2, d["box_xyxy"][1] + 1), f"{d['prompt']} {d['score']:.2f}", fill=color)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{Path(image_path).stem}.png"
    canvas.save(out)
    return out


def _peak_memory(device: str) -> str:
    import torch

    # ru_maxrss is in KiB on Linux.
    text = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", CUDA peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return text


def run(args: argparse.Namespace) -> int:
    return explain_errors("sam3lite predict", lambda: _predict(args), invalid_exit=1)


def _predict(args: argparse.Namespace) -> int:
    from sam3lite_core.distributed import pick_device
    from sam3lite_core.predictor import Predictor, load_rgb
    from sam3lite_core.tiling import TileSettings

    prompts = _prompts(args)
    if args.json and args.json != "-":
        check_writable_file(args.json, "--json")
    if args.viz:
        check_writable_folder(args.viz, "--viz")
    tile = None
    if args.tile is not None:
        tile = TileSettings(size=args.tile, overlap=args.tile_overlap, merge_iou=args.tile_merge_iou)
    device = str(pick_device(args.device))
    predictor = Predictor.from_checkpoint(args.checkpoint, device=device, precision=args.precision)
    records, drawn, failed = [], [], 0
    for image in args.images:  # one unreadable image is reported; the others still get their detections
        try:
            pixels = load_rgb(image, args.max_pixels)
        except ValueError as exc:
            print(f"sam3lite predict: {exc}", file=sys.stderr)
            failed += 1
            continue
        found = predictor.predict(
            pixels,
            prompts,
            threshold=args.threshold,
            max_detections=args.max_detections,
            nms_iou=args.nms_iou,
            tile=tile,
        )[0]
        records.append(_record(image, found, pixels.shape[:2]))
        if args.viz:
            drawn.append(_draw(image, pixels, records[-1]["detections"], Path(args.viz)))
    if args.json == "-":
        print(json.dumps(records, indent=2))
    else:
        _print_table(records)
        if args.json:
            Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
            print(f"wrote {args.json}")
    for out in drawn:
        print(f"drew {out}", file=sys.stderr)
    if failed:
        print(f"sam3lite predict: {failed} of {len(args.images)} images could not be read (above)", file=sys.stderr)
    print(_peak_memory(device), file=sys.stderr)
    return 1 if failed else 0
