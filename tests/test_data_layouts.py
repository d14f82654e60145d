"""The backend's other layouts: Qwen datasets (pixel boxes, points, conversations) and linked datasets, both
read in place."""

from __future__ import annotations

import json

from data_builders import image_bytes, snapshot, write_files, yolo_dataset

from sam3lite_core.data.convert import convert_dataset
from sam3lite_core.data.scan import scan_dataset
from sam3lite_core.data.signature import dataset_signature


def _jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _qwen(root):
    jpeg = image_bytes(100, 50)
    answer = json.dumps({"detections": [{"label": "dog", "bbox": [10, 10, 30, 20]}]})
    return write_files(
        root,
        {
            "metadata.json": json.dumps({"classes": ["cat", "dog"], "signature": "backend-mtime-hash"}),
            "dataset_meta.json": json.dumps({"id": "qwen-ds"}),
            "train/a.jpg": jpeg,
            "train/b.jpg": jpeg,
            "train/sub/c.jpg": jpeg,
            "train/d.jpg": jpeg,
            "train/annotations.jsonl": _jsonl(
                {
                    "image": "a.jpg",
                    "detections": [
                        {"label": "cat", "bbox": [10, 5, 60, 45]},
                        {"label": "Dog", "point": [50, 25]},
                        {"label": "fish", "bbox": [0, 0, 5, 5]},
                        {"label": "cat", "bbox": [10, 5, 60, 45]},
                        {"label": "cat", "bbox": [0, 0, 500, 5]},
                    ],
                },
                {
                    "image": "sub/c.jpg",
                    "conversations": [{"from": "human", "value": "find"}, {"from": "gpt", "value": answer}],
                },
                "{not json",
                {"image": "missing.jpg", "detections": []},
                {"image": "../../etc/passwd", "detections": []},
                {"image": "a.jpg", "detections": []},
                {"image": "d.jpg", "detections": []},
            ),
            "val/v.jpg": jpeg,
            "val/annotations.jsonl": _jsonl(
                {"image": "v.jpg", "detections": [{"label": "cat", "bbox": [0, 0, 50, 50]}]}
            ),
        },
    )


def test_qwen_dataset_scan_and_convert(tmp_path):
    root = _qwen(tmp_path / "qwen")
    before = snapshot(root)
    report = scan_dataset(root)
    assert report.ok and report.format == "qwen" and report.classes == ["cat", "dog"] and report.dataset_id == "qwen-ds"
    codes = {(p.code, p.line, p.action) for p in report.problems}
    assert {
        ("class_id", 1, "box dropped"),
        ("duplicate", 1, "duplicate removed"),
        ("out_of_bounds", 1, "box dropped"),
        ("bad_json", 3, "line dropped"),
        ("orphan_label", 4, "line dropped"),
        ("escapes_root", 5, "refused"),
        ("duplicate_entry", 6, "line dropped"),
    } <= codes
    assert [p.file for p in report.problems if p.code == "missing_label"] == ["train/b.jpg"]
    c = report.counts
    assert (c.images, c.backgrounds, c.boxes) == (
        5,
        2,
        4,
    ) and c.annotations_read == c.boxes + c.dropped + c.duplicates_removed

    result = convert_dataset(root, tmp_path / "cache")
    assert snapshot(root) == before
    train = json.loads(open(result.train_json).read())
    names = {im["id"]: im["file_name"] for im in train["images"]}
    boxes = sorted((names[a["image_id"]], a["category_id"], a["bbox"]) for a in train["annotations"])
    assert boxes == [
        ("a.jpg", 1, [10.0, 5.0, 50.0, 40.0]),
        ("a.jpg", 2, [49.0, 24.0, 2.0, 2.0]),  # a point becomes a 2 x 2 px box
        ("sub/c.jpg", 2, [10.0, 10.0, 20.0, 10.0]),  # from the conversation's gpt turn
    ]
    assert result.train_images_root == str(root / "train") and result.counts.val_images == 1


def test_qwen_signature_ignores_the_backends_own_signature_field(tmp_path):
    root = _qwen(tmp_path / "qwen")
    before = dataset_signature(root)
    (root / "metadata.json").write_text(json.dumps({"classes": ["cat", "dog"], "signature": "changed"}))
    assert dataset_signature(root) == before
    (root / "metadata.json").write_text(json.dumps({"classes": ["cat", "wolf"]}))
    assert dataset_signature(root) != before


def test_linked_dataset_is_read_in_place(tmp_path):
    tree = yolo_dataset(tmp_path / "user" / "tree", {"a": "0 0.5 0.5 0.2 0.2\n"}, {"b": "1 0.5 0.5 0.2 0.2\n"})
    entry = write_files(
        tmp_path / "registry" / "linked-ds",
        {
            "dataset_meta.json": json.dumps({"id": "linked-ds", "storage_mode": "linked", "linked_root": str(tree)}),
        },
    )
    tree_before, entry_before = snapshot(tree), snapshot(entry)
    report = scan_dataset(entry)
    assert report.ok and report.dataset_id == "linked-ds" and report.counts.images == 2
    assert dataset_signature(entry) == dataset_signature(tree)
    result = convert_dataset(entry, tmp_path / "cache")
    assert result.train_images_root == str(tree / "train") and result.val_images_root == str(tree / "val")
    assert snapshot(tree) == tree_before and snapshot(entry) == entry_before
