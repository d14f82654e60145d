"""Every user-input failure of the CLI is a message (which file or field, what is wrong, what to do) and exit
status 1 or 2, never a traceback, and nothing is written or lost on the way. Run in-process through `cli.main`;
broken inputs are generated here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from data_builders import bomb_png, image_bytes, snapshot, write_files, yolo_dataset

from sam3lite_core.cli import main
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.weights import save_checkpoint

LINE = "0 0.5 0.5 0.2 0.2\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def argparse_refuses(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([str(a) for a in argv])
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_errors")
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.ckpt", build_model("tiny"))
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "a.png")
    (root / "blocker").write_text("a file where a folder is expected")
    yolo_dataset(root / "ds", {"a": LINE, "b": LINE}, {"v": LINE})
    return root


# convert
def test_convert_unwritable_cache_dir(files, capsys, tmp_path):
    before = snapshot(files / "ds")
    status, _, err = run(capsys, "convert", files / "ds", "--cache-dir", files / "blocker" / "cache")
    assert status == 2 and f"is under {files / 'blocker'}, which is a file, not a folder" in err
    if Path("/proc").is_dir() and sys.platform == "linux":  # unwritable even for root
        status, _, err = run(capsys, "convert", files / "ds", "--cache-dir", "/proc/sam3lite-cache")
        assert status == 2 and "/proc/sam3lite-cache (its nearest existing folder /proc) cannot be written" in err
    assert snapshot(files / "ds") == before


def test_convert_on_a_file_says_so(files, capsys):
    status, out, _ = run(capsys, "convert", files / "a.png", "--cache-dir", files / "cache")
    assert status == 1 and "this is a file, not a dataset folder" in out and "does not exist" not in out


def test_convert_skips_an_image_over_the_budget_and_caps_boxes(capsys, tmp_path):
    crowded = "".join(f"0 {0.1 + i / 50:.3f} 0.5 0.02 0.02\n" for i in range(30))  # 30 distinct boxes
    root = yolo_dataset(tmp_path / "ds", {"a": LINE, "b": crowded}, {"v": LINE})
    write_files(root, {"train/images/bomb.png": bomb_png(60000, 60000), "train/labels/bomb.txt": LINE})
    status, out, _ = run(
        capsys, "convert", root, "--cache-dir", tmp_path / "cache", "--max-boxes-per-image", "5", "--json"
    )
    assert status == 0
    result = json.loads(out)
    c, problems = result["report"]["counts"], result["report"]["problems"]
    assert [p for p in problems if p["code"] == "over_budget"] == [
        {
            "file": "train/images/bomb.png",
            "line": None,
            "code": "over_budget",
            "action": "image skipped",
            "hint": None,
            "reason": "60000 x 60000 = 3600.0 MP is over the decode budget of 100.0 MP; downscale the image or "
            "raise the budget (--max-pixels, SAM3LITE_MAX_PIXELS)",
        }
    ]
    (capped,) = [p for p in problems if p["code"] == "too_many_boxes"]
    assert capped["file"] == "train/labels/b.txt" and "30 boxes on one image" in capped["reason"]
    assert c["images_found"] == c["images"] + c["skipped"] == 4 and c["skipped"] == 1
    assert c["annotations_read"] == c["boxes"] + c["dropped"] + c["duplicates_removed"] and c["boxes"] == 5 + 1 + 1
    train = json.loads(Path(result["train_json"]).read_text())
    assert "bomb.png" not in {Path(im["file_name"]).name for im in train["images"]}


def test_convert_into_a_closed_pipe_ends_quietly(files, capsys, monkeypatch, tmp_path):
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["convert", str(files / "ds"), "--cache-dir", str(tmp_path / "cache")]) == 141
    monkeypatch.undo()
    assert capsys.readouterr().err == ""


# eval
def coco(**change) -> dict:
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 56, "height": 40},
            {"id": 2, "file_name": "a.png", "width": 56, "height": 40},
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0}],
    }
    data.update(change)
    return data


BAD_COCO = {
    "unknown image_id": (
        coco(annotations=[{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}]),
        "annotations[0] refers to image_id 7, which is not in 'images'",
    ),
    "duplicate image ids": (
        coco(images=[{"id": 1, "file_name": "a.png", "width": 56, "height": 40}] * 2),
        "images[1] repeats id 1",
    ),
    "no annotations": ({k: v for k, v in coco().items() if k != "annotations"}, "no 'annotations' list"),
    "category mismatch": (
        coco(categories=[{"id": 5, "name": "thing"}]),
        "annotations[0] has category_id 1, which is not in 'categories' (listed: [5])",
    ),
    "top-level list": ([coco()], "the top level is a list, not a COCO object"),
}


@pytest.mark.parametrize("case", list(BAD_COCO))
def test_eval_refuses_a_malformed_coco_json(files, capsys, tmp_path, case):
    data, message = BAD_COCO[case]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    status, _, err = run(
        capsys,
        "eval",
        "--checkpoint",
        files / "tiny.ckpt",
        "--dataset",
        path,
        "--images-root",
        files,
        "--device",
        "cpu",
    )
    assert status == 2 and err.startswith(f"sam3lite eval: {path}: {message}")


def test_eval_empty_images_and_resolution_zero(files, capsys, tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco(images=[], annotations=[])))
    status, _, err = run(capsys, "eval", "--checkpoint", files / "tiny.ckpt", "--dataset", path, "--device", "cpu")
    assert status == 2 and f"{path}: the split has no images to evaluate on" in err
    err = argparse_refuses(capsys, "eval", "--checkpoint", files / "tiny.ckpt", "--dataset", path, "--resolution", "0")
    assert "--resolution: must be >= 1, got 0" in err


# predict
def test_predict_json_into_an_unwritable_folder_is_checked_first(files, capsys):
    out = files / "blocker" / "out.json"
    status, _, err = run(
        capsys, "predict", files / "a.png", "--prompt", "x", "--checkpoint", files / "missing.ckpt", "--json", out
    )
    assert status == 1 and f"--json {out}: its folder" in err and "not a folder" in err  # before the checkpoint


def test_predict_reports_a_bad_image_and_keeps_the_good(files, capsys, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(image_bytes()[:40])
    out = tmp_path / "out.json"
    status, _, err = run(
        capsys,
        "predict",
        tmp_path / "broken.jpg",
        files / "a.png",
        tmp_path / "gone.png",
        "--prompt",
        "x",
        "--checkpoint",
        files / "tiny.ckpt",
        "--threshold",
        "0",
        "--json",
        out,
        "--device",
        "cpu",
    )
    assert status == 1
    assert f"sam3lite predict: image {tmp_path / 'broken.jpg'}: the image cannot be decoded" in err
    assert f"sam3lite predict: image {tmp_path / 'gone.png'} does not exist" in err
    assert "2 of 3 images could not be read" in err
    (record,) = json.loads(out.read_text())
    assert record["image"] == str(files / "a.png") and record["detections"]
    for d in record["detections"]:  # clipped to the 56 x 40 image, as the service clips
        x0, y0, x1, y1 = d["box_xyxy"]
        assert 0 <= x0 <= x1 <= 56 and 0 <= y0 <= y1 <= 40
        assert all(0 <= v <= 1 for v in d["box_cxcywh"])


@pytest.mark.parametrize("prompt", ["", "   "])
def test_predict_refuses_a_blank_prompt(files, capsys, prompt):
    err = argparse_refuses(capsys, "predict", files / "a.png", "--prompt", prompt, "--checkpoint", files / "tiny.ckpt")
    assert "--prompt: blank; a prompt names the objects to find" in err


# train
@pytest.mark.parametrize(
    "setting, message",
    [
        ("run_name=../x", "run_name: must be a plain folder name inside runs_root"),
        ("run_name=/tmp/elsewhere", "run_name: must be a plain folder name inside runs_root"),
        ("lr_scale=.inf", "lr_scale: Input should be a finite number (got inf)"),
        ("o2m_weight=.nan", "o2m_weight: Input should be a finite number (got nan)"),
    ],
)
def test_train_config_refusals(files, capsys, tmp_path, setting, message):
    status, _, err = run(
        capsys, "train", "--dataset", files / "ds", "--set", f"runs_root={tmp_path / 'runs'}", "--set", setting
    )
    assert status == 2 and message in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_train_config_not_utf8(files, capsys, tmp_path):
    (tmp_path / "run.yaml").write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    status, _, err = run(capsys, "train", "--config", tmp_path / "run.yaml", "--dataset", files / "ds")
    assert status == 2 and f"{tmp_path / 'run.yaml'}: not UTF-8 text (byte 13); save the file as UTF-8" in err


def test_train_unwritable_runs_root_is_checked_before_the_conversion(files, capsys, tmp_path):
    runs = files / "blocker" / "runs"
    status, _, err = run(
        capsys,
        "train",
        "--dataset",
        files / "ds",
        "--set",
        f"runs_root={runs}",
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--set",
        "preset=tiny",
        "--set",
        "device=cpu",
    )
    assert status == 2 and f"runs_root {runs} is under {files / 'blocker'}, which is a file" in err
    assert not (tmp_path / "cache").exists()  # nothing was converted
