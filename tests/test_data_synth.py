"""The synthetic dataset: backend layout, prompt-like class names, varied sizes and overlaps, backgrounds,
train and val, deterministic by seed; and `sam3lite synth`."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from sam3lite_core.cli import main as cli_main
from sam3lite_core.data.convert import convert_dataset
from sam3lite_core.data.scan import scan_dataset
from sam3lite_core.data.synth import CLASSES as SYNTH_CLASSES
from sam3lite_core.data.synth import write_synth


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _boxes(root):
    out = []
    for label in sorted(root.glob("*/labels/*.txt")):
        rows = [tuple(map(float, line.split())) for line in label.read_text().splitlines()]
        out.append((label.stem, rows))
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    summary = write_synth(root, images=24, seed=5)
    return root, summary


def test_layout_classes_and_a_clean_scan(synth, tmp_path):
    root, summary = synth
    assert len(SYNTH_CLASSES) >= 4 and all(" " in name for name in SYNTH_CLASSES)  # "red circle": colour + shape
    assert (root / "labelmap.txt").read_text().splitlines() == list(SYNTH_CLASSES)
    assert summary.train_images > 0 and summary.val_images > 0 and summary.backgrounds > 0
    report = scan_dataset(root)
    assert report.ok and not report.problems, report.text()
    assert report.counts.boxes == summary.boxes and report.counts.backgrounds == summary.backgrounds
    assert all(n > 0 for n in report.counts.boxes_per_class)
    assert convert_dataset(root, tmp_path / "cache").split_method == "folders"


def test_sizes_positions_and_overlaps_vary(synth):
    root, _ = synth
    rows = [r for _, image_rows in _boxes(root) for r in image_rows]
    areas = [w * h for _, _, _, w, h in rows]
    assert min(areas) < 0.01 and max(areas) > 0.1, "small to large"
    centres = [(cx, cy) for _, cx, cy, _, _ in rows]
    assert min(c[0] for c in centres) < 0.25 < 0.75 < max(c[0] for c in centres)
    overlapping = 0
    for _, image_rows in _boxes(root):
        for a, b in itertools.combinations(image_rows, 2):
            overlapping += abs(a[1] - b[1]) < (a[3] + b[3]) / 2 and abs(a[2] - b[2]) < (a[4] + b[4]) / 2
    assert overlapping > 0


def test_deterministic_by_seed_and_extends_by_index(tmp_path, synth):
    root, _ = synth
    again = tmp_path / "again"
    write_synth(again, images=24, seed=5)
    assert _digests(again) == _digests(root)
    other = tmp_path / "other"
    write_synth(other, images=24, seed=6)
    assert _digests(other) != _digests(root)
    small = tmp_path / "small"
    write_synth(small, images=6, seed=5)
    big = _digests(root)
    assert all(big[rel] == digest for rel, digest in _digests(small).items())


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["synth", str(out), "--images", "5", "--seed", "1"]) == 0
    assert "4 train + 1 val images" in capsys.readouterr().out
    assert cli_main(["synth", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
