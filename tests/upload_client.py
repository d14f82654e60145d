"""The backend UI's chunked dataset upload (ybat.js `uploadCurrentDatasetToCacheChunked`), replayed against a
service: start a session, send batches of 48 rows (`manifest` JSON plus `files`), finalize; cancel on error."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

UI_BATCH = 48


def dataset_rows(root: Path) -> tuple[list[str], list[dict]]:
    """(classes, rows) of a YOLO folder as the UI holds them: one row per image with its split and label text."""
    classes = (root / "labelmap.txt").read_text().split("\n")[:-1]
    rows = []
    for split in ("train", "val"):
        for image in sorted((root / split / "images").iterdir()):
            label = root / split / "labels" / f"{image.stem}.txt"
            rows.append({"path": image, "split": split, "label_text": label.read_text() if label.exists() else ""})
    return classes, rows


def start(client: httpx.Client, dataset_id: str, classes: list[str], total: int, **extra) -> httpx.Response:
    body = {"dataset_id": dataset_id, "dataset_type": "bbox", "context": "", "classes": classes, "total_images": total}
    return client.post("/datasets/upload_session/start", json=body | extra)


def send_batch(client: httpx.Client, session_id: str, rows: list[dict]) -> httpx.Response:
    manifest = {
        "rows": [{"filename": r["path"].name, "split": r["split"], "label_text": r["label_text"]} for r in rows]
    }
    files = [("files", (r["path"].name, r["path"].read_bytes(), "image/jpeg")) for r in rows]
    return client.post(
        f"/datasets/upload_session/{session_id}/batch", data={"manifest": json.dumps(manifest)}, files=files
    )


def upload(client: httpx.Client, root: Path, dataset_id: str, **extra) -> httpx.Response:
    """The whole flow; the finalize answer (or the first refusal, after the UI's cancel)."""
    classes, rows = dataset_rows(root)
    started = start(client, dataset_id, classes, len(rows), **extra)
    if started.status_code != 200:
        return started
    session_id = started.json()["session_id"]
    for first in range(0, len(rows), UI_BATCH):
        answer = send_batch(client, session_id, rows[first : first + UI_BATCH])
        if answer.status_code != 200:
            client.post(f"/datasets/upload_session/{session_id}/cancel")
            return answer
    answer = client.post(f"/datasets/upload_session/{session_id}/finalize")
    if answer.status_code != 200:
        client.post(f"/datasets/upload_session/{session_id}/cancel")
    return answer
