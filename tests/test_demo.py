"""`make demo` is the main job: its driver, shrunk (20 images, a 3-second training budget, floor 0), runs the
whole retrain through `dagster job execute` on a persistent instance and ends with an active checkpoint that
answers a prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_driver_end_to_end(tmp_path):
    env = os.environ | {
        "DEMO_DIR": str(tmp_path / "demo"),
        "DEMO_IMAGES": "20",
        "DEMO_MINUTES": "0.05",
        "DEMO_FLOOR": "0",
        "OMP_NUM_THREADS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "sam3lite_pipeline.demo"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert ": SUCCESS after" in out and "val mAP50" in out and "prediction on datasets/synthetic/val" in out
    assert "validation after epoch" in out  # the Pipes log lines reached Dagster's console
    pointer = json.loads((tmp_path / "demo" / "runs" / "active_model.json").read_text())
    assert pointer["checkpoint"].endswith("checkpoints/export.ckpt") and Path(pointer["checkpoint"]).is_file()
    assert (tmp_path / "demo" / "dagster_home" / "dagster.yaml").read_text() == (
        ROOT / "deploy" / "dagster.yaml"
    ).read_text()
    history = json.loads((tmp_path / "demo" / "runs" / "activation_history.json").read_text())["entries"]
    assert [e["dataset"] for e in history] == ["synthetic"]
