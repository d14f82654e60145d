"""`make demo`: the main job end to end on the embedded synthetic dataset, in a local workspace.

synthetic YOLO dataset -> validation + cached COCO conversion -> training the `small` preset on a wall-clock
budget -> COCO mAP on the val split -> weights-only export -> one prediction with the exported checkpoint.
(The Dagster asset graph runs the same plain functions; until it lands, this drives them directly.)

Environment: DEMO_DIR (workspace, default .sam3lite-demo), DEMO_IMAGES (default 400), DEMO_MINUTES (training
budget, default 8). Re-running reuses the dataset and its conversion (a cache hit) and trains a new run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from PIL import Image

from sam3lite_core.data import SYNTH_CLASSES, convert_dataset, write_synth
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.events import ConsolePrinter
from sam3lite_core.train.recipes import CPU_FROM_SCRATCH


def main() -> int:
    started = time.monotonic()
    workspace = Path(os.environ.get("DEMO_DIR", ".sam3lite-demo")).resolve()
    images = int(os.environ.get("DEMO_IMAGES", "400"))
    minutes = float(os.environ.get("DEMO_MINUTES", "8"))
    dataset = workspace / "datasets" / "synthetic"
    cache = workspace / "cache"

    if not (dataset / "labelmap.txt").exists():
        summary = write_synth(dataset, images=images, seed=0)
        print(f"[demo] wrote the synthetic dataset: {summary}")
    converted = convert_dataset(dataset, cache)
    print(converted.report.text(lines_per_code=3))
    print(f"[demo] COCO {'cache hit' if converted.cache_hit else 'converted'}: {converted.out_dir}")

    from sam3lite_core.train.loop import train

    config = TrainConfig.parse(
        {**CPU_FROM_SCRATCH, "dataset": str(dataset), "runs_root": str(workspace / "runs"), "cache_dir": str(cache),
         "time_limit_minutes": minutes},
        source="demo recipe",
    )
    result = train(config, on_event=ConsolePrinter())
    checkpoint = result.export_checkpoint or result.best_checkpoint or result.last_checkpoint
    if checkpoint is None:
        print("[demo] training produced no checkpoint", file=sys.stderr)
        return 1

    from sam3lite_core.predict import predict
    from sam3lite_core.train.evaluate import load_for_eval

    model = load_for_eval(checkpoint)
    sample = sorted((dataset / "val" / "images").iterdir())[0]
    answers = predict(model, Image.open(sample).convert("RGB"), list(SYNTH_CLASSES))
    print(f"\n[demo] prediction with the exported checkpoint on {sample.relative_to(workspace)} (score >= 0.3):")
    for prompt, answer in zip(SYNTH_CLASSES, answers):
        order = answer["scores"].argsort(descending=True)
        scores, boxes = answer["scores"][order], answer["boxes"][order]
        kept = int((scores >= 0.3).sum())
        shown = ", ".join(
            f"{score:.2f}@[{', '.join(f'{v:.0f}' for v in box)}]"
            for score, box in zip(scores[: min(kept, 4)].tolist(), boxes.tolist())
        )
        print(f"  {prompt:15s} {kept:2d} found  {shown}")

    best = result.best_metrics
    print(
        f"\n[demo] done in {time.monotonic() - started:.0f} s\n"
        f"  val mAP50 {best.get('AP50', 0.0):.3f}, mAP {best.get('AP', 0.0):.3f} (best validation, epoch {result.best_epoch}; "
        f"{result.stopped_reason} after {result.epochs_done} epochs)\n"
        f"  checkpoint  {checkpoint}\n"
        f"  run folder  {result.run_dir} (metrics.csv, plots/, tensorboard/, result.json)\n"
        f"  dataset     {dataset}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
