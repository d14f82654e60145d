"""`sam3lite predict`: table, JSON file, drawn boxes and peak memory for real image files and a real checkpoint;
a bad image or checkpoint is a one-line error and exit status 1, not a traceback."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from sam3lite_core.checkpoint import save_checkpoint
from sam3lite_core.cli import main
from sam3lite_core.model.sam3lite import build_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_cli")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.ckpt", build_model("tiny"))
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.jpg"):
        PIL.Image.fromarray(rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)).save(root / name)
    return root


def test_table_json_and_viz(files, capsys):
    out_json, viz = files / "out.json", files / "viz"
    status = main([
        "predict", str(files / "a.png"), str(files / "b.jpg"), "--prompt", "red circle", "--prompt", "blue square",
        "--checkpoint", str(files / "tiny.ckpt"), "--threshold", "0", "--max-detections", "2", "--device", "cpu",
        "--json", str(out_json), "--viz", str(viz),
    ])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.splitlines()[0].split()[:3] == ["image", "prompt", "score"]
    assert sum("a.png" in line for line in captured.out.splitlines()) == 4  # 2 prompts x 2 detections
    assert "peak RSS" in captured.err and "MiB" in captured.err
    records = json.loads(out_json.read_text())
    assert [r["image"] for r in records] == [str(files / "a.png"), str(files / "b.jpg")]
    for record in records:
        assert [d["prompt"] for d in record["detections"]] == ["red circle"] * 2 + ["blue square"] * 2
        for d in record["detections"]:
            assert set(d) == {"prompt", "score", "box_xyxy", "box_cxcywh"} and 0 <= d["score"] <= 1
            assert len(d["box_xyxy"]) == 4 and len(d["box_cxcywh"]) == 4
    for stem in ("a", "b"):
        with PIL.Image.open(viz / f"{stem}.png") as drawn:
            assert drawn.size == (56, 40)


def test_json_to_stdout(files, capsys):
    status = main(["predict", str(files / "a.png"), "--prompt", "x", "--checkpoint", str(files / "tiny.ckpt"),
                   "--threshold", "1", "--json", "-", "--device", "cpu"])
    assert status == 0
    assert json.loads(capsys.readouterr().out) == [{"image": str(files / "a.png"), "detections": []}]


@pytest.mark.parametrize("bad", ["image", "checkpoint"])
def test_errors_are_one_line(files, capsys, bad):
    broken = files / f"broken_{bad}"
    broken.write_bytes(b"garbage")
    image = broken if bad == "image" else files / "a.png"
    checkpoint = broken if bad == "checkpoint" else files / "tiny.ckpt"
    status = main(["predict", str(image), "--prompt", "x", "--checkpoint", str(checkpoint), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("sam3lite predict: ") and "Traceback" not in err
