"""scan_dataset on deliberately broken YOLO datasets: every bad-input case is reported with its file, line,
reason and action, the counts add up, and fatal problems say what to do."""

from __future__ import annotations

import json
import os

import pytest
from data_builders import image_bytes, noisy_jpeg, snapshot, write_files, yolo_dataset

from sam3lite_core.data.files import collect_inputs
from sam3lite_core.data.layout import find_layout
from sam3lite_core.data.scan import ScanSettings, scan_dataset, scan_inputs
from sam3lite_core.data.signature import FactsCache, signature_of

GOOD = "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"


def _broken(root, outside):
    jpeg = image_bytes()
    write_files(outside, {"outside.jpg": jpeg})
    write_files(
        root,
        {
            "labelmap.txt": b"\xef\xbb\xbfcat\r\ndog\r\nbird\r\n",
            "train/images/good.jpg": jpeg,
            "train/labels/good.txt": GOOD,
            "train/images/truncated.jpg": noisy_jpeg()[:4000],
            "train/labels/truncated.txt": GOOD,
            "train/images/garbage.png": b"not an image at all",
            "train/labels/garbage.txt": GOOD,
            "train/images/nolabel.jpg": jpeg,
            "train/labels/orphan.txt": GOOD,
            "train/images/bad_lines.jpg": jpeg,
            "train/labels/bad_lines.txt": (
                "0 0.5 0.5 0.2\n"  # 1 columns
                "0 a 0.5 0.2 0.2\n"  # 2 not numeric
                "0 nan 0.5 0.2 0.2\n"  # 3 NaN
                "0 0.5 inf 0.2 0.2\n"  # 4 inf
                "-1 0.5 0.5 0.1 0.1\n"  # 5 negative class
                "3 0.5 0.5 0.1 0.1\n"  # 6 class not in the labelmap
                "1.5 0.5 0.5 0.1 0.1\n"  # 7 fractional class
                "0 1.2 0.5 0.2 0.2\n"  # 8 far outside: dropped
                "0 0.905 0.5 0.2 0.2\n"  # 9 slightly outside: clipped
                "0 0.5 0.5 0 0.1\n"  # 10 zero area
                "2 0.2 0.2 0.1 0.1\n"  # 11 fine
                "2 0.2 0.2 0.1 0.1\n"  # 12 duplicate
            ),
            "train/images/crlf.jpg": jpeg,
            "train/labels/crlf.txt": b"\xef\xbb\xbf0 0.5 0.5 0.2 0.2 \r\n\r\n",
            "train/images/seg.jpg": jpeg,
            "train/labels/seg.txt": "1 0.1 0.2 0.4 0.2 0.4 0.6\n2 0.5 0.5 0.2 0.2 0.4 0.4 0.6 0.4 0.6 0.6 0.4 0.6\n",
            "train/images/UPPER.JPG": jpeg,
            "train/labels/UPPER.txt": GOOD,
            "train/images/sub/nested.jpeg": jpeg,
            "train/labels/sub/nested.txt": GOOD,
            "train/images/formats.webp": image_bytes(fmt="WEBP"),
            "train/labels/formats.txt": GOOD,
            "train/images/formats2.bmp": image_bytes(fmt="BMP"),
            "train/labels/formats2.txt": GOOD,
            "train/images/formats3.tiff": image_bytes(fmt="TIFF"),
            "train/labels/formats3.txt": GOOD,
            "train/images/binary.jpg": jpeg,
            "train/labels/binary.txt": b"\xff\xfe\x00\x81 garbage",
            "train/images/empty.jpg": jpeg,
            "train/labels/empty.txt": "",
            "train/images/_annotations.coco.json": "{}",  # derived by the backend: not an input
        },
    )
    os.symlink(outside / "outside.jpg", root / "train/images/escape.jpg")
    os.symlink(root / "train/images/gone.jpg", root / "train/images/dangling.jpg")
    return root


@pytest.fixture
def broken(tmp_path):
    return _broken(tmp_path / "ds", tmp_path / "elsewhere")


def _find(report, code, file=None, line=None):
    hits = [
        p
        for p in report.problems
        if p.code == code and (file is None or p.file == file) and (line is None or p.line == line)
    ]
    assert hits, f"no {code} problem for {file}:{line} in\n{report.text(None)}"
    return hits[0]


def test_every_bad_input_case_is_reported_with_its_action(broken):
    before = snapshot(broken)
    report = scan_dataset(broken)
    assert snapshot(broken) == before, "the scan must never write into the dataset"
    expect = [
        ("text_format", "labelmap.txt", None, "normalised"),
        ("bad_image", "train/images/truncated.jpg", None, "image skipped"),
        ("bad_image", "train/images/garbage.png", None, "image skipped"),
        ("missing_label", "train/images/nolabel.jpg", None, "kept as background"),
        ("orphan_label", "train/labels/orphan.txt", None, "file ignored"),
        ("columns", "train/labels/bad_lines.txt", 1, "line dropped"),
        ("not_numeric", "train/labels/bad_lines.txt", 2, "line dropped"),
        ("not_finite", "train/labels/bad_lines.txt", 3, "line dropped"),
        ("not_finite", "train/labels/bad_lines.txt", 4, "line dropped"),
        ("class_id", "train/labels/bad_lines.txt", 5, "line dropped"),
        ("class_id", "train/labels/bad_lines.txt", 6, "line dropped"),
        ("class_id", "train/labels/bad_lines.txt", 7, "line dropped"),
        ("out_of_bounds", "train/labels/bad_lines.txt", 8, "line dropped"),
        ("clipped", "train/labels/bad_lines.txt", 9, "box clipped"),
        ("zero_area", "train/labels/bad_lines.txt", 10, "line dropped"),
        ("duplicate", "train/labels/bad_lines.txt", 12, "duplicate removed"),
        ("text_format", "train/labels/crlf.txt", None, "normalised"),
        ("label_unreadable", "train/labels/binary.txt", None, "image skipped"),
        ("escapes_root", "train/images/escape.jpg", None, "refused"),
        ("broken_symlink", "train/images/dangling.jpg", None, "refused"),
    ]
    for code, file, line, action in expect:
        assert _find(report, code, file, line).action == action
    assert "truncated" in _find(report, "bad_image", "train/images/truncated.jpg").reason
    fmt = _find(report, "text_format", "train/labels/crlf.txt").reason
    assert all(word in fmt for word in ("byte-order mark", "CRLF", "blank lines", "whitespace"))
    assert report.ok and report.classes == ["cat", "dog", "bird"]


def test_counts_add_up_to_the_input(broken):
    c = scan_dataset(broken).counts
    assert c.images_found == 16  # 14 image files + 2 refused symlinks; the COCO json is not an input
    assert c.images_found == c.images + c.skipped
    assert c.skipped == 5  # truncated, garbage, binary label, escaping symlink, broken symlink
    assert c.annotations_read == c.boxes + c.dropped + c.duplicates_removed
    assert (c.dropped, c.duplicates_removed, c.clipped) == (9, 1, 1)
    assert c.backgrounds == 2  # nolabel (no file) and empty (empty file)
    assert c.polygon_lines == 2
    assert c.orphan_labels == 1 and sum(c.boxes_per_class) == c.boxes


def test_polygon_lines_become_their_extent(tmp_path):
    root = yolo_dataset(
        tmp_path / "ds", {"a": "1 0.1 0.2 0.4 0.2 0.4 0.6\n2 0.5 0.5 0.2 0.2 0.4 0.4 0.6 0.4 0.6 0.6 0.4 0.6\n"}
    )
    inputs = collect_inputs(find_layout(root))
    facts = FactsCache(inputs.layout.root, None)
    (record,) = scan_inputs(inputs, facts, ScanSettings(), signature_of(inputs, facts)).records
    assert record.boxes[0] == pytest.approx((1, 0.1, 0.2, 0.4, 0.6))
    assert record.boxes[1] == pytest.approx((2, 0.4, 0.4, 0.6, 0.6))  # box + polygon: the polygon wins


def test_report_is_json_and_readable_text(broken):
    report = scan_dataset(broken)
    data = json.loads(report.model_dump_json())
    assert data["counts"]["images"] == report.counts.images and len(data["problems"]) == len(report.problems)
    json.dumps(report.to_metadata(max_problems=3))
    text = str(report)
    assert f"{report.counts.images} images, 2 backgrounds, 5 skipped" in text
    assert "train/labels/bad_lines.txt:6: class id 3 is not in the labelmap (0..2) -> line dropped" in text


def test_missing_label_policy_skip(broken):
    report = scan_dataset(broken, ScanSettings(missing_labels="skip"))
    assert _find(report, "missing_label", "train/images/nolabel.jpg").action == "image skipped"
    assert report.counts.backgrounds == 1 and report.counts.skipped == 6


@pytest.mark.parametrize(
    "files, code",
    [
        ({"train/images/a.jpg": "x", "train/labels/a.txt": ""}, "labelmap_missing"),
        ({"labelmap.txt": "cat\n", "val/images/a.jpg": "x", "val/labels/a.txt": ""}, "train_split_missing"),
        ({"labelmap.txt": "cat\n", "train/images/a.jpg": "x"}, "train_split_incomplete"),
        (
            {"labelmap.txt": "cat\n", "train/images/a.jpg": "x", "train/labels/a.txt": "", "val/labels/b.txt": ""},
            "val_split_incomplete",
        ),
        (
            {"labelmap.txt": "cat\n\ndog\n", "train/images/a.jpg": "j", "train/labels/a.txt": GOOD},
            "labelmap_blank_name",
        ),
        (
            {"labelmap.txt": "cat\nCat \n", "train/images/a.jpg": "j", "train/labels/a.txt": GOOD},
            "labelmap_duplicate_name",
        ),
        ({"labelmap.txt": "\n\n", "train/images/a.jpg": "j", "train/labels/a.txt": GOOD}, "labelmap_empty"),
        ({"labelmap.txt": "cat\n", "train/images/a.jpg": "broken", "train/labels/a.txt": GOOD}, "no_valid_images"),
        ({"labelmap.txt": "cat\n", "train/images/a.jpg": "j", "train/labels/a.txt": "5 0.5 0.5 0.1 0.1\n"}, "no_boxes"),
        (
            {"dataset_meta.json": '{"storage_mode": "linked", "linked_root": "/nonexistent/tree"}'},
            "linked_root_missing",
        ),
    ],
)
def test_fatal_problems_say_what_to_do(tmp_path, files, code):
    jpeg = image_bytes()
    files = {rel: jpeg if content == "j" else content for rel, content in files.items()}
    report = scan_dataset(write_files(tmp_path / "ds", files))
    assert not report.ok
    problem = next(p for p in report.fatal if p.code == code)
    assert problem.hint, "a fatal problem must say what to do"
    assert "FATAL" in str(report) and problem.hint in str(report)


def test_flat_layout_and_alternative_labelmap_names(tmp_path):
    jpeg = image_bytes()
    root = write_files(tmp_path / "flat", {"classes.txt": "cat\n", "images/a.jpg": jpeg, "labels/a.txt": GOOD[:18]})
    report = scan_dataset(root)
    assert report.ok and report.arrangement == "flat" and report.counts.boxes == 1


def test_symlinks_inside_the_root_are_followed(tmp_path):
    root = yolo_dataset(tmp_path / "ds", {"a": GOOD})
    os.symlink(root / "train/images/a.jpg", root / "train/images/b.jpg")
    os.symlink(root / "train/labels/a.txt", root / "train/labels/b.txt")
    report = scan_dataset(root)
    assert report.counts.images == 2 and not report.problems
