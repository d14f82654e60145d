"""`sam3lite predict`: table, JSON file, drawn boxes and peak memory for real image files and a real checkpoint;
a bad image or checkpoint is a one-line error and exit status 1, not a traceback."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from sam3lite_core.cli import main
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.weights import save_checkpoint


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
    status = main(
        [
            "predict",
            str(files / "a.png"),
            str(files / "b.jpg"),
            "--prompt",
            "red circle",
            "--prompt",
            "blue square",
            "--checkpoint",
            str(files / "tiny.ckpt"),
            "--threshold",
            "0",
            "--max-detections",
            "2",
            "--device",
            "cpu",
            "--json",
            str(out_json),
            "--viz",
            str(viz),
        ]
    )
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
    status = main(
        [
            "predict",
            str(files / "a.png"),
            "--prompt",
            "x",
            "--checkpoint",
            str(files / "tiny.ckpt"),
            "--threshold",
            "1",
            "--json",
            "-",
            "--device",
            "cpu",
        ]
    )
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


def test_tiled(files, capsys):
    """--tile cuts the 56 x 40 images into 24 px windows; the boxes come back in image coordinates."""
    out_json = files / "tiled.json"
    status = main(
        [
            "predict",
            str(files / "a.png"),
            "--prompt",
            "x",
            "--checkpoint",
            str(files / "tiny.ckpt"),
            "--threshold",
            "0",
            "--tile",
            "24",
            "--tile-overlap",
            "0.25",
            "--json",
            str(out_json),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, capsys.readouterr().err
    capsys.readouterr()
    detections = json.loads(out_json.read_text())[0]["detections"]
    centres = [
        ((d["box_xyxy"][0] + d["box_xyxy"][2]) / 2, (d["box_xyxy"][1] + d["box_xyxy"][3]) / 2) for d in detections
    ]
    assert centres and all(0 <= x <= 56 and 0 <= y <= 40 for x, y in centres)
    assert any(x > 24 or y > 24 for x, y in centres)  # found in windows other than the first
    whole = main(
        [
            "predict",
            str(files / "a.png"),
            "--prompt",
            "x",
            "--checkpoint",
            str(files / "tiny.ckpt"),
            "--threshold",
            "0",
            "--json",
            "-",
            "--device",
            "cpu",
        ]
    )
    assert whole == 0 and json.loads(capsys.readouterr().out)[0]["detections"] != detections
    assert (
        main(
            [
                "predict",
                str(files / "a.png"),
                "--prompt",
                "x",
                "--checkpoint",
                str(files / "tiny.ckpt"),
                "--tile",
                "24",
                "--tile-overlap",
                "1.5",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    assert "window overlap" in capsys.readouterr().err


def test_box_prompts(files, capsys):
    """--box runs the exemplar path of /sam3/visual_prompt beside a text prompt, on one image, memory reported."""
    status = main(
        [
            "predict",
            str(files / "a.png"),
            "--prompt",
            "x",
            "--box",
            "4,4,16,12",
            "--box",
            "30,10,20,20:neg",
            "--checkpoint",
            str(files / "tiny.ckpt"),
            "--threshold",
            "0",
            "--max-detections",
            "3",
            "--json",
            "-",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    prompts = [d["prompt"] for d in json.loads(captured.out)[0]["detections"]]
    assert prompts == ["x"] * 3 + ["visual"] * 3 and "peak RSS" in captured.err
    alone = main(
        [
            "predict",
            str(files / "a.png"),
            "--box",
            "4,4,16,12",
            "--checkpoint",
            str(files / "tiny.ckpt"),
            "--threshold",
            "0",
            "--max-detections",
            "3",
            "--json",
            "-",
            "--device",
            "cpu",
        ]
    )
    assert alone == 0 and [d["prompt"] for d in json.loads(capsys.readouterr().out)[0]["detections"]] == ["visual"] * 3


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--box", "1,2,3"], "X,Y,W,H"),
        (["--box", "1,2,0,4"], "> 0"),
        (["--box", "1,2,3,4:maybe"], ":neg"),
        (["--box", "a,b,c,d"], "X,Y,W,H"),
        (["--box", "1,2,nan,4"], "finite"),
        (["--box", "1,2,3,4", "--tile", "24"], "--tile"),
        (["SECOND", "--box", "1,2,3,4"], "exactly one image"),
        ([], "--prompt TEXT or --box"),
    ],
)
def test_box_refusals(files, capsys, extra, reason):
    extra = [str(files / "b.jpg") if part == "SECOND" else part for part in extra]
    status = main(
        ["predict", str(files / "a.png"), *extra, "--checkpoint", str(files / "tiny.ckpt"), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert status == 1 and reason in err and "Traceback" not in err
