"""convert_dataset: the backend's COCO conventions, the stable hash split, the cache (hit, miss on settings),
nothing written into the dataset, and the `sam3lite convert` CLI."""

from __future__ import annotations

import json

import pytest
from data_builders import image_bytes, snapshot, write_files, yolo_dataset

import sam3lite_core.data.convert as convert_module
from sam3lite_core.cli import main as cli_main
from sam3lite_core.data.convert import ConvertSettings, convert_dataset
from sam3lite_core.data.report import DatasetError
from sam3lite_core.data.split import split_score


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_coco_follows_the_backend_conventions(tmp_path):
    root = yolo_dataset(
        tmp_path / "ds",
        {
            "a": "0 0.5 0.5 0.5 0.25\n2 0.25 0.25 0.1 0.1\n",
            "empty": "",
        },
        {"v": "1 0.5 0.5 1 1\n"},
        size=(200, 100),
    )
    write_files(root, {"train/images/broken.jpg": b"broken", "train/labels/broken.txt": "0 0.5 0.5 0.1 0.1\n"})
    before = snapshot(root)
    result = convert_dataset(root, tmp_path / "cache")
    assert snapshot(root) == before, "conversion must never write into the dataset"
    train, val = _load(result.train_json), _load(result.val_json)
    assert (
        [c.model_dump() for c in result.categories]
        == train["categories"]
        == [
            {"id": 1, "name": "cat", "supercategory": "object"},
            {"id": 2, "name": "dog", "supercategory": "object"},
            {"id": 3, "name": "bird", "supercategory": "object"},
        ]
    )
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in train["images"]] == [
        (1, "images/a.jpg", 200, 100),
        (2, "images/empty.jpg", 200, 100),  # broken.jpg skipped, empty kept
    ]
    assert val["images"] == [{"id": 3, "file_name": "images/v.jpg", "width": 200, "height": 100}]
    assert train["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [50.0, 37.5, 100.0, 25.0], "area": 2500.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [40.0, 20.0, 20.0, 10.0], "area": 200.0, "iscrowd": 0},
    ]
    assert val["annotations"][0]["id"] == 3 and val["annotations"][0]["category_id"] == 2
    assert result.split_method == "folders"
    assert result.train_images_root == str(root / "train") and result.val_images_root == str(root / "val")
    assert (result.counts.train_images, result.counts.val_boxes) == (2, 1)


def test_cache_hit_does_no_work_and_settings_miss(tmp_path, monkeypatch):
    root = yolo_dataset(tmp_path / "ds", {f"i{k}": "0 0.5 0.5 0.2 0.2\n" for k in range(12)})
    cache = tmp_path / "cache"
    first = convert_dataset(root, cache)
    assert not first.cache_hit

    def no_scan(*args, **kwargs):
        raise AssertionError("a cache hit must not scan")

    monkeypatch.setattr(convert_module, "scan_inputs", no_scan)
    again = convert_dataset(root, cache)
    assert again.cache_hit and again.train_json == first.train_json and again.report == first.report
    monkeypatch.undo()
    keys = {first.cache_key}
    for settings in (
        ConvertSettings(val_fraction=0.5),
        ConvertSettings(seed=7),
        ConvertSettings(missing_labels="skip"),
    ):
        other = convert_dataset(root, cache, settings)
        assert not other.cache_hit and other.cache_key not in keys
        keys.add(other.cache_key)
    (root / "train/labels/i0.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert not convert_dataset(root, cache).cache_hit
    assert not [p.name for p in (cache / "coco").iterdir() if p.name.startswith(".")], "no temporary entry left"


def test_hash_split_is_stable_when_images_are_added(tmp_path):
    root = yolo_dataset(tmp_path / "ds", {f"i{k:03d}": "0 0.5 0.5 0.2 0.2\n" for k in range(60)})
    cache = tmp_path / "cache"
    before = convert_dataset(root, cache)
    assert before.split_method == "hash" and 4 <= before.counts.val_images <= 24
    val_before = {im["file_name"] for im in _load(before.val_json)["images"]}
    assert val_before == {
        f"images/i{k:03d}.jpg" for k in range(60) if split_score(f"train/images/i{k:03d}.jpg", 42) < 0.2
    }
    write_files(root, {f"train/images/n{k}.jpg": image_bytes() for k in range(30)})
    after = convert_dataset(root, cache)
    val_after = {im["file_name"] for im in _load(after.val_json)["images"]}
    train_after = {im["file_name"] for im in _load(after.train_json)["images"]}
    assert val_before <= val_after and not val_before & train_after


def test_tiny_hash_split_keeps_both_sides(tmp_path):
    root = yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n"})
    result = convert_dataset(root, tmp_path / "cache")
    assert (result.counts.train_images, result.counts.val_images) == (1, 1)


def test_fatal_dataset_raises_with_its_report(tmp_path):
    root = write_files(tmp_path / "ds", {"labelmap.txt": "cat\n", "train/images/a.jpg": b"x", "train/labels/a.txt": ""})
    with pytest.raises(DatasetError) as info:
        convert_dataset(root, tmp_path / "cache")
    assert info.value.report is not None and info.value.report.fatal[0].code == "no_valid_images"
    assert not (tmp_path / "cache" / "coco").exists()


def test_cli_json_and_exit_codes(tmp_path, capsys):
    root = yolo_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.1 0.1\n", "b": ""})
    assert (
        cli_main(["convert", str(root), "--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0.5", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    for key in ("signature", "cache_hit", "train_json", "val_json", "categories", "report"):
        assert key in out
    assert out["report"]["counts"]["dropped"] == 1 and out["report"]["problems"][0]["code"] == "class_id"
    assert out["settings"]["val_fraction"] == 0.5

    assert cli_main(["convert", str(root), "--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0.5"]) == 0
    assert "cache hit" in capsys.readouterr().out
    (root / "labelmap.txt").unlink()
    assert cli_main(["convert", str(root), "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "FATAL" in capsys.readouterr().out
    assert cli_main(["convert", str(root), "--cache-dir", str(tmp_path / "cache"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["report"]["problems"][0]["code"] == "labelmap_missing"
