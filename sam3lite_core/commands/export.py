"""`sam3lite export --checkpoint PATH|RUN_DIR [--out PATH] [--no-ema]`: the weights-only file that gets activated.

From a training checkpoint (or a run folder: its best.ckpt, else last.ckpt) write `{"format", "model_config",
"model"}`: the EMA weights when the checkpoint has them (unless --no-ema), in the vendor-compatible `detector.`
layout, with the 1008-px RoPE tables for the sam3 preset. Default output: `export.ckpt` beside the checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sam3lite_core.commands.errors import explain_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH|RUN_DIR", help="training checkpoint or run folder")
    parser.add_argument("--out", metavar="PATH", help="output file (default: export.ckpt beside the checkpoint)")
    parser.add_argument("--no-ema", action="store_true", help="export the trained weights, not their average")


def _source(path: Path) -> Path:
    if path.is_dir():
        for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                return path / name
        raise ValueError(f"{path}: no checkpoints/best.ckpt or last.ckpt in this folder")
    return path


def run(args: argparse.Namespace) -> int:
    return explain_errors("sam3lite export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    from sam3lite_core.train.checkpointer import export_training_checkpoint

    source = _source(Path(args.checkpoint))
    out = Path(args.out) if args.out else source.with_name("export.ckpt")
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the checkpoint itself; choose another file")
    written = export_training_checkpoint(source, out, use_ema=not args.no_ema)
    print(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB) from {source}")
    return 0
