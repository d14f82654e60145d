"""The input files of a dataset: which files define its training data, found without reading them.

Only files the layout names are inputs: the classes file, image files (jpg jpeg png bmp webp tif tiff, any
case) under the images folders, `.txt` files under the labels folders, and Qwen `annotations.jsonl`. Anything
else (COCO files the backend wrote, `labels.cache`, `dataset_meta.json`, our own outputs elsewhere) is not an
input, which keeps signatures blind to derived files. Names starting with "." (macOS `._x.jpg` forks, editor
swap files) are not inputs either.

Symlinks are followed only while they stay inside the dataset root; one that escapes is refused and reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sam3lite_core.data.layout import DatasetLayout, SplitDirs
from sam3lite_core.data.report import fatal

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
LABEL_SUFFIXES = frozenset({".txt"})


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file and the stat fields that key its cached content hash (no content read)."""

    rel: str  # POSIX path relative to the effective root
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def from_stat(cls, rel: str, path: str, st: os.stat_result) -> "FileEntry":
        return cls(rel, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass(frozen=True, slots=True)
class ImageInput:
    split: SplitDirs
    image: FileEntry
    label: FileEntry | None  # YOLO label file (None: no label file); Qwen pairs through annotations instead


@dataclass
class InputFiles:
    layout: DatasetLayout
    classes_file: FileEntry | None
    images: list[ImageInput] = field(default_factory=list)
    label_files: int = 0
    orphan_labels: list[FileEntry] = field(default_factory=list)
    annotation_files: list[FileEntry] = field(default_factory=list)  # Qwen annotations.jsonl, one per split
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (rel, code, reason): unusable symlinks


def suffix(name: str) -> str:
    """Lower-cased extension with its dot ("" for none); os.path.splitext is slower and this runs per file."""
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real + os.sep)


def walk(
    top: Path, layout: DatasetLayout, suffixes: frozenset[str], refused: list[tuple[str, str, str]]
) -> list[FileEntry]:
    """Files under `top` whose suffix (lower-cased) is in `suffixes`, sorted by path; escapes go to `refused`."""
    root_real = str(layout.root)
    out: list[FileEntry] = []
    top_rel = layout.rel(top)
    if not inside(os.path.realpath(top), root_real):
        refused.append((top_rel, "escapes_root", f"symlink to {os.path.realpath(top)}, outside the dataset root"))
        return out
    stack = [(str(top), top_rel)]
    seen_dirs: set[tuple[int, int]] = set()  # (dev, ino): a symlink loop inside the root must not recurse
    while stack:
        folder, folder_rel = stack.pop()
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = f"{folder_rel}/{entry.name}"
                is_dir = entry.is_dir()
                relevant = is_dir or suffix(entry.name) in suffixes
                if not relevant:
                    continue
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if not inside(real, root_real):
                        refused.append((rel, "escapes_root", f"symlink to {real}, outside the dataset root"))
                        continue
                if is_dir:
                    stack.append((entry.path, rel))
                elif entry.is_file():
                    out.append(FileEntry.from_stat(rel, entry.path, entry.stat()))
                elif entry.is_symlink():
                    refused.append((rel, "broken_symlink", "symlink whose target does not exist"))
    out.sort(key=lambda e: e.rel)
    return out


def _file_entry(layout: DatasetLayout, path: Path) -> FileEntry:
    real = os.path.realpath(path)
    if not inside(real, str(layout.root)):
        rel = layout.rel(path)
        reason = f"symlink to {real}, outside the dataset root"
        raise fatal(rel, "escapes_root", reason, "copy the file into the dataset")
    return FileEntry.from_stat(layout.rel(path), str(path), os.stat(path))


def _label_key(rel_in_folder: str) -> str:
    """`sub/a.jpg` and `sub/a.txt` -> `sub/a` (every input has a suffix: walk selects by it)."""
    return rel_in_folder[: rel_in_folder.rfind(".")]


def collect_inputs(layout: DatasetLayout) -> InputFiles:
    """All input files of `layout` with their stats; YOLO images paired with `labels/<same path>.txt`."""
    classes = _file_entry(layout, layout.classes_file) if layout.classes_file is not None else None
    inputs = InputFiles(layout=layout, classes_file=classes)
    for split in layout.splits:
        images = walk(split.images, layout, IMAGE_SUFFIXES, inputs.refused)
        if split.annotations is not None:
            inputs.annotation_files.append(_file_entry(layout, split.annotations))
            inputs.images.extend(ImageInput(split, image, None) for image in images)
            continue
        assert split.labels is not None
        images_prefix, labels_prefix = len(layout.rel(split.images)) + 1, len(layout.rel(split.labels)) + 1
        label_files = walk(split.labels, layout, LABEL_SUFFIXES, inputs.refused)
        labels = {_label_key(e.rel[labels_prefix:]): e for e in label_files}
        inputs.label_files += len(labels)
        claimed: set[str] = set()
        for image in images:
            key = _label_key(image.rel[images_prefix:])
            label = labels.get(key)
            if label is not None:
                claimed.add(key)
            inputs.images.append(ImageInput(split, image, label))
        inputs.orphan_labels.extend(e for key, e in labels.items() if key not in claimed)
    return inputs
