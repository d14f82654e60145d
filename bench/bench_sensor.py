"""The dataset sensor's tick time over hundreds of datasets, against a naive sensor that signs every dataset
on every tick.

    .venv/bin/python bench/bench_sensor.py [--datasets 300] [--images 20]

One synthetic dataset is copied N times under a datasets root. Ticks of `dataset_sensor` on a real Dagster
instance: the first (every dataset new: stat fingerprints only), the second (all settled: every dataset signed
once), then a steady tick (nothing changed), and a tick after one dataset was edited. Baseline: one tick of a
sensor that computes `dataset_signature` of every dataset without a cache (what a sensor without the cheap
fingerprint would do each tick). RESULT compares the steady tick with the baseline tick (seconds; Dagster's
sensor timeout is 60 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

from sam3lite_core.data.signature import dataset_signature
from sam3lite_core.data.synth import write_synth
from sam3lite_pipeline.resources import StorageRoots
from sam3lite_pipeline.sensors import dataset_sensor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=300)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        root = Path(tmp) / "datasets"
        write_synth(Path(tmp) / "template", images=args.images, seed=0)
        for i in range(args.datasets):
            shutil.copytree(Path(tmp) / "template", root / f"ds{i:04d}")
        storage = StorageRoots(datasets=str(root), cache=str(Path(tmp) / "cache"), runs=str(Path(tmp) / "runs"))

        def tick(cursor: str | None) -> tuple[float, dg.SensorResult]:
            started = time.perf_counter()
            result = dataset_sensor(
                dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage})
            )
            return time.perf_counter() - started, result

        first_s, first = tick(None)
        settle_s, settled = tick(first.cursor)
        steady_s, steady = tick(settled.cursor)
        (root / "ds0007" / "train" / "labels").joinpath("extra.txt").write_text("0 0.5 0.5 0.1 0.1\n")
        edit_s, edited = tick(steady.cursor)
        started = time.perf_counter()
        for folder in sorted(root.iterdir()):
            dataset_signature(folder)
        naive_s = time.perf_counter() - started
    print(
        f"{args.datasets} datasets x {args.images} images: first tick {first_s:.2f} s, settling tick "
        f"{settle_s:.2f} s ({len(settled.run_requests)} run requests, signed within the "
        f"budget), steady tick {steady_s:.2f} s, tick after an edit {edit_s:.2f} s; naive tick {naive_s:.2f} s"
    )
    print(
        "RESULT "
        + json.dumps(
            {
                "bench": "sensor_tick",
                "ours": round(steady_s, 3),
                "baseline": round(naive_s, 3),
                "ratio": round(steady_s / naive_s, 4),
                "unit": "s",
            }
        )
    )


if __name__ == "__main__":
    main()
