"""Tiny on-disk datasets for the data tests (test_data_*.py): real image files, YOLO and Qwen layouts."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

from PIL import Image


def image_bytes(width: int = 64, height: int = 48, fmt: str = "JPEG", colour=(120, 130, 140)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of a few bytes whose header declares width x height (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def noisy_jpeg(width: int = 160, height: int = 120) -> bytes:
    """A JPEG whose body is much larger than its header, so cutting it in half leaves a valid header."""
    buf = io.BytesIO()
    Image.effect_noise((width, height), 60).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_files(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create `root/<rel>` for each entry; str content is written as UTF-8 text."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def yolo_dataset(
    root: Path,
    train: dict[str, str],
    val: dict[str, str] | None = None,
    classes: tuple[str, ...] = ("cat", "dog", "bird"),
    size: tuple[int, int] = (64, 48),
) -> Path:
    """A split-layout YOLO dataset: `train`/`val` map an image stem to its label text."""
    files: dict[str, bytes | str] = {"labelmap.txt": "".join(f"{c}\n" for c in classes)}
    for split, items in (("train", train), ("val", val or {})):
        for stem, label in items.items():
            files[f"{split}/images/{stem}.jpg"] = image_bytes(*size)
            files[f"{split}/labels/{stem}.txt"] = label
    return write_files(root, files)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under `root`: proof that nothing was written into a dataset."""
    out = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            out[os.path.relpath(os.path.join(folder, name), root)] = (st.st_size, st.st_mtime_ns)
    return out
