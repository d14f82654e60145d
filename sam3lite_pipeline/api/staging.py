"""Datasets that arrive over HTTP are assembled in a hidden staging folder under the datasets root and become a
dataset in one rename, so nothing (the listing, the sensor, a training run) ever sees half of one.

    <datasets>/.staging/<session>/     what a session or a zip upload has written so far (emptied at start)
    <datasets>/.replaced/<id>/         the old dataset while `replace` swaps it (recovered at start)

A swap is two renames, old -> .replaced/<id> then staging -> <id>; whichever of them a crash interrupts,
`recover` leaves one whole dataset under <id>: the new one if it took its place, else the old one back. Every
write is bounded (`UploadLimits`) and every name is checked before it touches the disk; a refused request
removes what it wrote.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from sam3lite_core.data.files import IMAGE_SUFFIXES
from sam3lite_core.serve.errors import ServiceError
from sam3lite_pipeline.api.context import is_plain_name, remove

STAGING = ".staging"
REPLACED = ".replaced"
SPLITS = ("train", "val")
CHUNK = 2**20


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold; `sam3lite up --upload-*` sets them (README lists the defaults)."""

    max_file_bytes: int = 100 * 2**20  # one image, one label text, one zip entry
    zip_max_bytes: int = 4 * 2**30  # a zip's content, uncompressed (and the zip itself)
    zip_max_ratio: float = 100.0  # uncompressed over compressed size, per entry and in total
    batch_max_rows: int = 96  # the backend UI's largest batch
    batch_max_bytes: int = 2 * 2**30  # one batch request's body
    max_images: int = 1_000_000  # total_images a session may promise
    session_ttl_s: float = 3600.0  # a session with no batch for this long is removed
    max_sessions: int = 32  # open sessions at once (a flood of starts is refused, not stored)


def recover(datasets_root: Path) -> None:
    """At start: staging from before is removed (sessions do not survive a restart) and any interrupted swap is
    finished or undone."""
    remove(datasets_root / STAGING)
    replaced = datasets_root / REPLACED
    for old in sorted(replaced.iterdir()) if replaced.is_dir() else []:
        target = datasets_root / old.name
        if target.exists():
            remove(old)  # the new dataset took its place
        else:
            os.rename(old, target)  # the new one never arrived: the old one comes back whole
    if replaced.is_dir():
        replaced.rmdir()


def staging_folder(datasets_root: Path, key: str) -> Path:
    folder = datasets_root / STAGING / key
    folder.mkdir(parents=True)
    return folder


def write_labelmap(folder: Path, classes: list[str]) -> None:
    (folder / "labelmap.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")


def image_name(filename: str) -> str:
    """`filename` when it is a plain image file name; else ServiceError 400 upload_filename_invalid."""
    if not is_plain_name(filename) or len(filename) > 255 or Path(filename).suffix.lower() not in IMAGE_SUFFIXES:
        raise ServiceError(
            f"file name {filename[:200]!r} is not a plain image file name ({', '.join(sorted(IMAGE_SUFFIXES))}, "
            f"no folder, not hidden)",
            400,
            "upload_filename_invalid",
        )
    return filename


def copy_bounded(source: BinaryIO, target: Path, limit: int, what: str) -> int:
    """Stream `source` into `target` (a new file), at most `limit` bytes; ServiceError 413 past it (the partial
    file is removed)."""
    written = 0
    with open(target, "xb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > limit:
                out.close()
                target.unlink()
                raise ServiceError(f"{what} is over the {limit}-byte limit", 413, "upload_file_too_large")
            out.write(chunk)
    return written


def install(datasets_root: Path, staged: Path, dataset_id: str, replace: bool) -> Path:
    """Move the staged dataset to `<datasets_root>/<dataset_id>` in one rename (two with `replace`, see the
    module docstring); 409 dataset_exists when the id is taken and `replace` is not set."""
    target = datasets_root / dataset_id
    if target.exists() or target.is_symlink():
        if not replace:
            raise ServiceError(
                f"dataset {dataset_id!r} exists: choose another dataset_id or send replace: true",
                409,
                "dataset_exists",
            )
        parked = datasets_root / REPLACED / dataset_id
        parked.parent.mkdir(exist_ok=True)
        remove(parked)
        os.rename(target, parked)
        os.rename(staged, target)
        remove(parked)
        parked.parent.rmdir()
    else:
        os.rename(staged, target)
    return target


def extract_zip(archive: Path, dest: Path, limits: UploadLimits) -> None:
    """Extract a dataset zip into `dest`, refusing (400, nothing kept) absolute or escaping names, links and
    special files, and content over the size or compression-ratio limits; sizes are counted as bytes come out,
    so a header that lies about them gains nothing."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            entries = [_checked_entry(info, limits) for info in bundle.infolist()]
            total = sum(info.file_size for info, _ in entries)
            if total > limits.zip_max_bytes:
                raise _zip_refused(f"its content is {total} bytes, over the {limits.zip_max_bytes}-byte limit")
            if total > limits.zip_max_ratio * max(archive.stat().st_size, 1):
                raise _zip_refused(f"it expands {total / archive.stat().st_size:.0f} times, over the limit")
            for info, name in entries:
                _extract_entry(bundle, info, dest / name, limits)
    except zipfile.BadZipFile as exc:
        raise ServiceError(f"the upload is not a readable zip file ({exc})", 400, "upload_zip_invalid") from None


def _checked_entry(info: zipfile.ZipInfo, limits: UploadLimits) -> tuple[zipfile.ZipInfo, PurePosixPath]:
    name = PurePosixPath(info.filename.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or info.filename.startswith(("/", "\\")) or ":" in name.parts[0]:
        raise _zip_refused(f"entry {info.filename[:200]!r} points outside the dataset")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip recorded no Unix file type
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _zip_refused(f"entry {info.filename[:200]!r} is a link or special file")
    if info.file_size > limits.max_file_bytes:
        raise _zip_refused(f"entry {info.filename[:200]!r} is {info.file_size} bytes, over the per-file limit")
    if info.file_size > limits.zip_max_ratio * max(info.compress_size, 1) and info.file_size > CHUNK:
        raise _zip_refused(f"entry {info.filename[:200]!r} expands more than {limits.zip_max_ratio:.0f} times")
    return info, name


def _extract_entry(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: UploadLimits) -> None:
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with bundle.open(info) as source:
        copy_bounded(source, target, min(limits.max_file_bytes, info.file_size), f"zip entry {info.filename[:200]!r}")


def _zip_refused(why: str) -> ServiceError:
    return ServiceError(f"the zip was refused: {why}; nothing was stored", 400, "upload_zip_refused")


def dataset_root_in(folder: Path) -> Path:
    """Where the dataset starts inside an extracted zip: the folder itself, or its one top-level folder when the
    zip wraps the dataset in one (as zipping a folder does)."""
    children = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(children) == 1 and children[0].is_dir() and not any(folder.glob("labelmap.txt")):
        return children[0]
    return folder
