"""The backend's dataset upload routes, as its UI drives them (ybat.js, the chunked upload):

    POST /datasets/upload_session/start            {dataset_id, dataset_type, context, classes, total_images,
                                                    replace (ours)} -> {session_id, ...}
    POST /datasets/upload_session/{id}/batch       multipart: manifest {"rows": [{filename, split, label_text}]}
                                                   and `files` (at most 96) -> the session's counts
    POST /datasets/upload_session/{id}/finalize    the new dataset's entry (or the existing one, `duplicate_of`)
    POST /datasets/upload_session/{id}/cancel      the session and everything it wrote removed
    GET  /datasets/upload_session/{id}, GET /datasets/upload_sessions
    POST /datasets/upload                          multipart: file (a zip), dataset_id, dataset_type, context
    GET  /datasets                                 what GET /sam3/datasets lists

Sessions live in memory (they do not survive a restart; `staging.recover` empties their folders at start). A
finalize scans the staged dataset first: fatal problems answer 400 with the report and move nothing. Content
that an existing dataset already has (same content signature) is not stored twice. A finalized dataset is
registered as a partition of `datasets`; it starts no run by itself.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, File, Form, UploadFile

from sam3lite_core.serve.errors import ServiceError
from sam3lite_pipeline.api.context import ApiContext, remove
from sam3lite_pipeline.api.datasets import dataset_folders, entry, list_entries, scan
from sam3lite_pipeline.api.request import safe_run_name
from sam3lite_pipeline.api.staging import (
    SPLITS,
    UploadLimits,
    copy_bounded,
    dataset_root_in,
    extract_zip,
    image_name,
    install,
    staging_folder,
    write_labelmap,
)
from sam3lite_pipeline.partitions import datasets as datasets_partitions

LABEL_TEXT_LIMIT = 2**20  # characters of one image's label_text
CLASSES_LIMIT = 10_000


@dataclass
class Session:
    session_id: str
    dataset_id: str
    classes: list[str]
    total_images: int
    replace: bool
    folder: Path
    context: str = ""
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    stems: set[tuple[str, str]] = field(default_factory=set)  # (split, file stem): one label file each
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False  # finalized, cancelled or expired: a batch still in flight must not write

    @property
    def received(self) -> int:
        return sum(self.counts.values())

    def view(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "dataset_id": self.dataset_id,
            "status": "open",
            "total_images": self.total_images,
            "received": self.received,
            "train_count": self.counts["train"],
            "val_count": self.counts["val"],
            "classes": self.classes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class Uploads:
    ctx: ApiContext
    limits: UploadLimits
    sessions: dict[str, Session] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the registry, and finalizes

    def start(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.expire()
        dataset_id, classes, total, replace = _start_fields(payload, self.limits)
        if (self.ctx.datasets_root / dataset_id).exists() and not replace:
            raise ServiceError(
                f"dataset {dataset_id!r} exists: choose another dataset_id or send replace: true", 409, "dataset_exists"
            )
        session_id = uuid.uuid4().hex
        with self.lock:
            if len(self.sessions) >= self.limits.max_sessions:
                raise ServiceError(
                    f"{len(self.sessions)} upload sessions are open already: finish or cancel one first",
                    429,
                    "upload_sessions_exhausted",
                )
            folder = staging_folder(self.ctx.datasets_root, session_id)
            write_labelmap(folder, classes)
            context = str(payload.get("context") or "")[:10_000]
            session = Session(session_id, dataset_id, classes, total, replace, folder, context)
            self.sessions[session_id] = session
        return session.view()

    def batch(self, session_id: str, manifest: str, files: list[UploadFile]) -> dict[str, Any]:
        session = self.get(session_id)
        rows = _manifest_rows(manifest, self.limits)
        by_name = {f.filename: f for f in files}
        if len(by_name) != len(files) or set(by_name) != {row["filename"] for row in rows}:
            raise ServiceError(
                "the batch's files and its manifest rows must name the same files, each once",
                400,
                "upload_files_mismatch",
            )
        with session.lock:
            if session.closed:
                raise _no_session(session_id)
            if session.received + len(rows) > session.total_images:
                raise ServiceError(
                    f"this batch would bring the upload to {session.received + len(rows)} images, more than the "
                    f"{session.total_images} total_images the session was started with",
                    400,
                    "upload_too_many_images",
                )
            _write_rows(session, rows, by_name, self.limits)
            session.updated_at = time.time()
            return session.view()

    def finalize(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id)
        with session.lock, self.lock:
            if session.closed:
                raise _no_session(session_id)
            answer = self._land(session.folder, session.folder, session.dataset_id, session.replace)
            self.sessions.pop(session_id, None)
            session.closed = True
        return answer

    def cancel(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            session = self.sessions.pop(session_id, None)
        if session is None:
            raise _no_session(session_id)
        with session.lock:
            session.closed = True
            remove(session.folder)
        return {"session_id": session_id, "status": "cancelled"}

    def get(self, session_id: str) -> Session:
        self.expire()
        session = self.sessions.get(session_id)
        if session is None:
            raise _no_session(session_id)
        return session

    def zip_upload(self, file: UploadFile, dataset_id: str | None, dataset_type: str | None) -> dict[str, Any]:
        _check_type(dataset_type)
        stem = Path(file.filename or "dataset.zip").stem
        name = _dataset_id(dataset_id or stem)
        folder = staging_folder(self.ctx.datasets_root, uuid.uuid4().hex)
        try:
            archive = folder / "upload.zip"
            copy_bounded(file.file, archive, self.limits.zip_max_bytes, "the zip")
            extract_zip(archive, folder / "content", self.limits)
            archive.unlink()
            with self.lock:
                return self._land(folder, dataset_root_in(folder / "content"), name, replace=False)
        finally:
            remove(folder)

    def _land(self, staging: Path, staged: Path, dataset_id: str, replace: bool) -> dict[str, Any]:
        """Scan, then: 400 with the report, or the existing dataset of the same content, or the new one moved
        into place and registered."""
        report = scan(self.ctx, staged)
        if not report.ok:
            raise ServiceError(
                f"the uploaded dataset cannot be used (nothing was stored):\n{report.text(20)}", 400, "upload_invalid"
            )
        for folder in dataset_folders(self.ctx):
            existing = scan(self.ctx, folder) if folder.name != dataset_id else None
            if existing is not None and existing.signature == report.signature:
                remove(staging)
                return {**entry(self.ctx, folder, existing), "duplicate_of": folder.name}
        target = install(self.ctx.datasets_root, staged, dataset_id, replace)
        remove(staging)
        self.ctx.instance.add_dynamic_partitions(datasets_partitions.name, [dataset_id])
        return {**entry(self.ctx, target, scan(self.ctx, target)), "duplicate_of": None}

    def expire(self) -> None:
        """Remove sessions with no batch for longer than the limit (abandoned by a closed browser tab)."""
        cutoff = time.time() - self.limits.session_ttl_s
        with self.lock:
            stale = [s for s in self.sessions.values() if s.updated_at < cutoff]
            for session in stale:
                self.sessions.pop(session.session_id, None)
        for session in stale:
            with session.lock:
                session.closed = True
                remove(session.folder)


def _start_fields(payload: dict[str, Any], limits: UploadLimits) -> tuple[str, list[str], int, bool]:
    _check_type(payload.get("dataset_type"))
    dataset_id = _dataset_id(str(payload.get("dataset_id") or ""))
    classes = payload.get("classes")
    if (
        not isinstance(classes, list)
        or not 0 < len(classes) <= CLASSES_LIMIT
        or not all(isinstance(c, str) and c.strip() and "\n" not in c and "\r" not in c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ServiceError(
            "classes must be a list of distinct, non-empty class names on one line each (line 1 = class 0)",
            400,
            "upload_classes_invalid",
        )
    total = payload.get("total_images")
    if not isinstance(total, int) or isinstance(total, bool) or not 0 < total <= limits.max_images:
        raise ServiceError(
            f"total_images must be a whole number from 1 to {limits.max_images}", 400, "upload_total_invalid"
        )
    return dataset_id, [c.strip() for c in classes], total, payload.get("replace") is True


def _dataset_id(value: str) -> str:
    """The backend's sanitising of a dataset id; 400 when nothing usable is left."""
    name = safe_run_name(value, "")
    if not name or name.startswith(".") or len(name) > 128:
        raise ServiceError(
            f"dataset_id {value[:200]!r} is not usable: use letters, digits, '.', '_' and '-'",
            400,
            "upload_dataset_id_invalid",
        )
    return name


def _check_type(dataset_type: Any) -> None:
    if dataset_type not in (None, "", "bbox"):
        raise ServiceError(
            f"dataset_type {str(dataset_type)[:50]!r} is not served: sam3lite trains box-only datasets ('bbox')",
            400,
            "sam3_dataset_type_unsupported",
        )


def _manifest_rows(manifest: str, limits: UploadLimits) -> list[dict[str, str]]:
    try:
        rows = json.loads(manifest)["rows"]
    except (ValueError, KeyError, TypeError):
        raise ServiceError(
            'manifest must be JSON {"rows": [{"filename", "split", "label_text"}, ...]}', 400, "upload_manifest_invalid"
        ) from None
    if not isinstance(rows, list) or not 0 < len(rows) <= limits.batch_max_rows:
        raise ServiceError(f"a batch holds 1 to {limits.batch_max_rows} rows", 400, "upload_manifest_invalid")
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("filename"), str):
            raise ServiceError("every manifest row needs a filename", 400, "upload_manifest_invalid")
        if row.get("split") not in SPLITS:
            raise ServiceError(
                f"split {str(row.get('split'))[:50]!r} of {row['filename'][:200]!r} is not train or val",
                400,
                "upload_split_invalid",
            )
        text = row.get("label_text") or ""
        if not isinstance(text, str) or len(text) > LABEL_TEXT_LIMIT:
            raise ServiceError(
                f"label_text of {row['filename'][:200]!r} is not text under 1 MiB", 400, "upload_label_invalid"
            )
        image_name(row["filename"])
    return rows


def _write_rows(
    session: Session, rows: list[dict[str, str]], files: dict[str, UploadFile], limits: UploadLimits
) -> None:
    """Each row's image and label file into the session's folder; on any refusal, this batch's files are removed
    and the session's counts are as before."""
    written: list[Path] = []
    done: list[tuple[str, str]] = []
    try:
        for row in rows:
            split, name = row["split"], row["filename"]
            stem = Path(name).stem
            if (split, stem) in session.stems:
                raise ServiceError(
                    f"{split}/{name}: an image named {stem}.* was uploaded already", 400, "upload_duplicate_file"
                )
            images, labels = session.folder / split / "images", session.folder / split / "labels"
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            written.append(images / name)
            copy_bounded(files[name].file, images / name, limits.max_file_bytes, f"{split}/{name}")
            written.append(labels / f"{stem}.txt")
            (labels / f"{stem}.txt").write_text(row.get("label_text") or "", encoding="utf-8")
            session.stems.add((split, stem))
            session.counts[split] += 1
            done.append((split, stem))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for split, stem in done:
            session.stems.discard((split, stem))
            session.counts[split] -= 1
        raise


def _no_session(session_id: str) -> ServiceError:
    return ServiceError(
        f"no upload session {session_id[:200]!r} (finished, cancelled or expired)", 404, "upload_session_not_found"
    )


def upload_routes(uploads: Uploads) -> APIRouter:
    router = APIRouter()

    @router.get("/datasets")
    def list_datasets() -> list[dict[str, Any]]:
        return list_entries(uploads.ctx)

    @router.post("/datasets/upload_session/start")
    def start(payload: dict = Body(...)) -> dict[str, Any]:
        return uploads.start(payload)

    @router.post("/datasets/upload_session/{session_id}/batch")
    def batch(session_id: str, manifest: str = Form(...), files: list[UploadFile] = File(...)) -> dict[str, Any]:
        return uploads.batch(session_id, manifest, files)

    @router.post("/datasets/upload_session/{session_id}/finalize")
    def finalize(session_id: str) -> dict[str, Any]:
        return uploads.finalize(session_id)

    @router.post("/datasets/upload_session/{session_id}/cancel")
    def cancel(session_id: str) -> dict[str, Any]:
        return uploads.cancel(session_id)

    @router.get("/datasets/upload_session/{session_id}")
    def session(session_id: str) -> dict[str, Any]:
        return uploads.get(session_id).view()

    @router.get("/datasets/upload_sessions")
    def sessions() -> list[dict[str, Any]]:
        uploads.expire()
        return [s.view() for s in list(uploads.sessions.values())]

    @router.post("/datasets/upload")
    def zip_upload(
        file: UploadFile = File(...),
        dataset_id: str | None = Form(None),
        dataset_type: str | None = Form(None),
        context: str | None = Form(None),
    ) -> dict[str, Any]:
        return uploads.zip_upload(file, dataset_id, dataset_type)

    return router
