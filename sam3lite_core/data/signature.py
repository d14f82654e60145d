"""Dataset identity: a content signature for caching, and a cheap stat fingerprint for polling.

`dataset_signature` hashes exactly what defines the training data: the class names, every input image's
bytes, every paired label file's bytes (or Qwen annotations), each under its path relative to the dataset root
(which carries split membership). No mtime and no absolute path enters it, so a copy elsewhere signs the same,
and derived files are not inputs (files.py), so writing them never changes it. (The backend's signature hashes
mtimes and covers its own COCO output, so its conversion cache never hits.)

Re-reading every image on each call would cost seconds, so per-file facts (content digest, and for images the
upright size and integrity) are cached under `<cache_dir>/filefacts/`, keyed by path and (size, mtime_ns,
ctime_ns, inode): an unchanged file is never read again, and any write changes its key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from sam3lite_core.data.files import FileEntry, InputFiles, collect_inputs
from sam3lite_core.data.gcpause import paused_gc
from sam3lite_core.data.images import inspect_image
from sam3lite_core.data.layout import find_layout
from sam3lite_core.data.qwen import read_qwen_classes

SIGNATURE_VERSION = "sam3lite-signature-v1"
_FACTS_VERSION = 1


class FileFacts(NamedTuple):
    digest: str  # first 128 bits of the SHA-256 of the bytes, hex
    width: int  # upright size, images only (0 otherwise)
    height: int
    error: str  # why the image is unusable ("" when fine)


class FactsCache:
    """Content facts per input file, persisted per dataset root when `cache_dir` is given."""

    def __init__(self, root: Path, cache_dir: str | Path | None) -> None:
        self._root = str(root)
        self._path: Path | None = None
        self._old: dict[str, list] = {}
        self._new: dict[str, list] = {}
        self._kept: dict[str, bytes] = {}  # bytes of text files read for hashing, until the scan parses them
        if cache_dir is None:
            return
        key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        self._path = Path(cache_dir) / "filefacts" / f"{key}.json"
        try:
            stored = json.loads(self._path.read_text())
            if stored.get("version") == _FACTS_VERSION and stored.get("root") == self._root:
                self._old = stored["files"]
        except (OSError, ValueError, KeyError, AttributeError):
            self._old = {}  # a missing or damaged cache only costs re-reading

    def get(self, entry: FileEntry, image: bool) -> FileFacts:
        stat_key = [entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino]
        old = self._new.get(entry.rel) or self._old.get(entry.rel)
        if old is not None and old[:4] == stat_key:
            facts = FileFacts(*old[4:])
        else:
            with open(entry.path, "rb") as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()[:32]
            if image:
                facts = FileFacts(digest, *inspect_image(data))
            else:
                facts = FileFacts(digest, 0, 0, "")
                self._kept[entry.rel] = data
        self._new[entry.rel] = stat_key + list(facts)
        return facts

    def content(self, entry: FileEntry) -> bytes:
        """The bytes of a text input: kept from hashing in this run (read once, cold), or read now."""
        data = self._kept.pop(entry.rel, None)
        if data is None:
            with open(entry.path, "rb") as f:
                data = f.read()
        return data

    def save(self) -> None:
        """Keep the facts of the files seen in this run (so deleted files drop out), atomically."""
        if self._path is None or self._new == self._old:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        payload = {"version": _FACTS_VERSION, "root": self._root, "files": self._new}
        tmp.write_text(json.dumps(payload, separators=(",", ":")))
        os.replace(tmp, self._path)
        self._old = dict(self._new)


def _classes_digest(inputs: InputFiles, facts: FactsCache) -> str:
    layout = inputs.layout
    if inputs.classes_file is None:
        return "from-annotations"  # Qwen without metadata.json: the classes follow from the annotation bytes
    if layout.format == "qwen":
        # metadata.json also carries the backend's own (mtime-based) signature; only the classes define data.
        classes = read_qwen_classes(Path(inputs.classes_file.path))
        return hashlib.sha256(json.dumps(classes).encode()).hexdigest()[:32]
    return facts.get(inputs.classes_file, image=False).digest


def signature_of(inputs: InputFiles, facts: FactsCache) -> str:
    """The content signature of collected inputs (64 hex chars); reads only files whose stat key changed."""
    h = hashlib.sha256(f"{SIGNATURE_VERSION}\nclasses\t{_classes_digest(inputs, facts)}\n".encode())
    lines = []
    for item in inputs.images:
        lines.append(f"image\t{item.image.rel}\t{facts.get(item.image, image=True).digest}\n")
        if item.label is not None:
            lines.append(f"label\t{item.label.rel}\t{facts.get(item.label, image=False).digest}\n")
    for entry in inputs.annotation_files:
        lines.append(f"annotations\t{entry.rel}\t{facts.get(entry, image=False).digest}\n")
    h.update("".join(lines).encode())
    return h.hexdigest()


def dataset_signature(root: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """Content signature of the dataset at `root` (64 hex chars). With `cache_dir`, unchanged files are not
    re-read (an unchanged 20k-image dataset re-signs in well under a second). Raises DatasetError when `root`
    is not a usable dataset layout."""
    with paused_gc():
        inputs = collect_inputs(find_layout(root))
        facts = FactsCache(inputs.layout.root, cache_dir)
        signature = signature_of(inputs, facts)
        facts.save()
    return signature


def stat_fingerprint(root: str | Path) -> str:
    """Cheap change detector for sensors that poll many datasets: input names, sizes and mtimes, no reading.
    It changes whenever the signature could (and also on a mere touch). Raises DatasetError like the above."""
    with paused_gc():
        inputs = collect_inputs(find_layout(root))
    entries = [e for e in (inputs.classes_file,) if e is not None]
    entries += [item.image for item in inputs.images]
    entries += [item.label for item in inputs.images if item.label is not None]
    entries += inputs.orphan_labels + inputs.annotation_files
    text = "".join(f"{e.rel}:{e.size}:{e.mtime_ns}\n" for e in entries)
    text += "".join(f"refused:{rel}\n" for rel, _, _ in inputs.refused)
    return hashlib.sha256(text.encode()).hexdigest()
