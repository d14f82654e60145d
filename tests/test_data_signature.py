"""dataset_signature: content-defined (labelmap, label bytes, image bytes, split membership), blind to mtimes,
paths and derived files, cached by stat; stat_fingerprint: cheap and sensitive to any touch."""

from __future__ import annotations

import os
import shutil

import pytest
from data_builders import image_bytes, write_files, yolo_dataset

import sam3lite_core.data.signature as signature_module
from sam3lite_core.data.report import DatasetError
from sam3lite_core.data.signature import dataset_signature, stat_fingerprint

LABEL = "0 0.5 0.5 0.2 0.2\n"


@pytest.fixture
def ds(tmp_path):
    return yolo_dataset(tmp_path / "ds", {"a": LABEL, "b": "1 0.3 0.3 0.1 0.1\n"}, {"c": LABEL})


def test_a_copy_elsewhere_signs_the_same(ds, tmp_path):
    copy = tmp_path / "somewhere" / "else"
    shutil.copytree(ds, copy, copy_function=shutil.copy)  # new paths and new mtimes
    assert dataset_signature(copy) == dataset_signature(ds)
    assert len(dataset_signature(ds)) == 64


def test_mtimes_do_not_matter_but_the_fingerprint_sees_them(ds):
    sig, fp = dataset_signature(ds), stat_fingerprint(ds)
    os.utime(ds / "train/images/a.jpg", ns=(1, 1))
    assert dataset_signature(ds) == sig
    assert stat_fingerprint(ds) != fp


@pytest.mark.parametrize(
    "change",
    [
        lambda d: (d / "train/labels/a.txt").write_text("0 0.5 0.5 0.2 0.21\n"),  # one label byte
        lambda d: (d / "train/images/a.jpg").write_bytes(image_bytes(colour=(1, 2, 3))),  # replaced image
        lambda d: (d / "labelmap.txt").write_text("cat\ndog\nfish\n"),  # a class renamed
        lambda d: shutil.move(d / "train/images/b.jpg", d / "val/images/b.jpg"),  # split membership
        lambda d: write_files(d, {"train/images/new.jpg": image_bytes()}),  # an added image
        lambda d: (d / "val/labels/c.txt").unlink(),  # a label file removed
    ],
    ids=["label-byte", "replaced-image", "labelmap", "split-membership", "added-image", "removed-label"],
)
def test_content_changes_change_the_signature(ds, change):
    before = dataset_signature(ds)
    change(ds)
    assert dataset_signature(ds) != before


def test_derived_files_and_orphans_are_invisible(ds):
    before = dataset_signature(ds)
    write_files(
        ds,
        {
            "train/_annotations.coco.json": "{}",
            "val/_annotations.coco.json": "{}",  # the backend's COCO output
            "sam3_dataset.json": "{}",
            "dataset_meta.json": '{"id": "ds"}',
            "train/labels.cache": "x",
            "train/images/notes.txt": "not an image",
            "train/labels/lonely.txt": LABEL,
            "sam3lite.yaml": "a: 1",
        },
    )
    assert dataset_signature(ds) == before


def test_the_labelmap_file_name_does_not_matter(ds):
    before = dataset_signature(ds)
    (ds / "labelmap.txt").rename(ds / "classes.txt")
    assert dataset_signature(ds) == before


def test_warm_resigning_reads_no_file(ds, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cold = dataset_signature(ds, cache_dir=cache)

    def no_reading(*args, **kwargs):
        raise AssertionError(f"read {args[0]} although its stat key is unchanged")

    monkeypatch.setattr(signature_module, "open", no_reading, raising=False)
    assert dataset_signature(ds, cache_dir=cache) == cold
    monkeypatch.undo()
    (ds / "train/labels/a.txt").write_text("0 0.5 0.5 0.2 0.3\n")  # same size, new content and mtime
    assert dataset_signature(ds, cache_dir=cache) == dataset_signature(ds) != cold


def test_not_a_dataset_raises_with_the_reason(tmp_path):
    with pytest.raises(DatasetError, match="labelmap"):
        dataset_signature(write_files(tmp_path / "x", {"train/images/a.jpg": image_bytes()}))
    with pytest.raises(ValueError, match="does not exist"):
        stat_fingerprint(tmp_path / "missing")
