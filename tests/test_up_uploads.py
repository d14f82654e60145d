"""Datasets uploaded over HTTP to the `up` service (a real uvicorn on 127.0.0.1): the backend UI's chunked session
and the zip upload land whole in one rename, are registered as partitions, are never stored twice, and every
careless or hostile upload is refused with nothing written outside the hidden staging folder. A service killed
between batches leaves no partial dataset. `test_up_e2e.py` then trains on an uploaded dataset."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import dagster as dg
import httpx
import pytest
import uvicorn
from dagster_servers import free_port
from upload_client import dataset_rows, send_batch, start, upload

from sam3lite_core.data.synth import write_synth
from sam3lite_pipeline.api.app import ServiceSettings, create_up_app
from sam3lite_pipeline.api.staging import REPLACED, STAGING, UploadLimits, recover
from sam3lite_pipeline.resources import StorageRoots

SMALL = UploadLimits(max_file_bytes=64 * 2**10, zip_max_bytes=4 * 2**20, zip_max_ratio=100.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "synth"
    write_synth(root, images=60, seed=0)
    return root


@contextmanager
def service(home: Path, limits: UploadLimits = SMALL) -> Iterator[tuple[httpx.Client, dg.DagsterInstance]]:
    """The up app on a free 127.0.0.1 port (uvicorn in a thread), over an instance in `home`."""
    (home / "dagster_home").mkdir(parents=True, exist_ok=True)
    (home / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    storage = StorageRoots(datasets=str(home / "datasets"), cache=str(home / "cache"), runs=str(home / "runs"))
    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    settings = ServiceSettings(storage=storage, dagster_url="http://127.0.0.1:9", upload_limits=limits)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_up_app(settings, instance), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client, instance
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        instance.dispose()


def visible(home: Path) -> list[str]:
    """What the datasets root shows (the listing and the sensor skip hidden folders)."""
    root = home / "datasets"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def staged(home: Path) -> list[Path]:
    return sorted((home / "datasets" / STAGING).rglob("*")) if (home / "datasets" / STAGING).exists() else []


def test_chunked_upload_lands_whole_and_is_never_stored_twice(tmp_path, synth):
    home = tmp_path / "home"
    with service(home) as (client, instance):
        answer = upload(client, synth, "parts")
        assert answer.status_code == 200, answer.text
        landed = answer.json()
        assert (landed["id"], landed["image_count"], landed["duplicate_of"]) == ("parts", 60, None)
        assert visible(home) == ["parts"] and not staged(home)
        assert instance.get_dynamic_partitions("datasets") == ["parts"]
        assert [d["id"] for d in client.get("/datasets").json()] == ["parts"]
        assert client.get("/sam3/datasets").json() == client.get("/datasets").json()
        landed_files = home / "datasets" / "parts"
        original = sorted(p.relative_to(synth) for p in synth.rglob("*") if p.is_file())
        assert sorted(p.relative_to(landed_files) for p in landed_files.rglob("*") if p.is_file()) == original

        again = upload(client, synth, "parts-again")
        assert again.status_code == 200 and again.json()["duplicate_of"] == "parts" and again.json()["id"] == "parts"
        assert visible(home) == ["parts"] and not staged(home)
        refused = upload(client, synth, "parts")
        assert (refused.status_code, refused.json()["detail"]) == (409, "dataset_exists")


def test_cancel_and_expiry_leave_nothing(tmp_path, synth):
    home = tmp_path / "home"
    classes, rows = dataset_rows(synth)
    with service(home, replace(SMALL, session_ttl_s=0.5)) as (client, _):
        session = start(client, "gone", classes, len(rows)).json()["session_id"]
        assert send_batch(client, session, rows[:48]).json()["received"] == 48
        assert client.get(f"/datasets/upload_session/{session}").json()["train_count"] == 48
        assert client.post(f"/datasets/upload_session/{session}/cancel").json()["status"] == "cancelled"
        assert not staged(home) and visible(home) == []
        idle = start(client, "idle", classes, len(rows)).json()["session_id"]
        send_batch(client, idle, rows[:2])
        time.sleep(0.7)
        assert client.get("/datasets/upload_sessions").json() == []
        assert client.get(f"/datasets/upload_session/{idle}").json()["detail"] == "upload_session_not_found"
        assert not staged(home)


def _manifest_case(synth: Path, case: str, outside: Path) -> tuple[list[dict], list[tuple]]:
    _, rows = dataset_rows(synth)
    row = rows[0]
    manifest = [{"filename": row["path"].name, "split": row["split"], "label_text": row["label_text"]}]
    name = {"traversal": "../evil.jpg", "absolute": str(outside), "folder": "a/b.jpg", "hidden": ".x.jpg"}
    if case in name:
        manifest[0]["filename"] = name[case]
    if case == "not_image":
        manifest[0]["filename"] = "run.sh"
    if case == "split":
        manifest[0]["split"] = "test"
    files = [("files", (manifest[0]["filename"], row["path"].read_bytes(), "image/jpeg"))]
    if case == "mismatch":
        files[0] = ("files", ("other.jpg", b"x", "image/jpeg"))
    if case == "too_large":
        files[0] = ("files", (manifest[0]["filename"], b"\xff" * (SMALL.max_file_bytes + 1), "image/jpeg"))
    return manifest, files


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("traversal", 400, "upload_filename_invalid"),
        ("absolute", 400, "upload_filename_invalid"),
        ("folder", 400, "upload_filename_invalid"),
        ("hidden", 400, "upload_filename_invalid"),
        ("not_image", 400, "upload_filename_invalid"),
        ("split", 400, "upload_split_invalid"),
        ("mismatch", 400, "upload_files_mismatch"),
        ("too_large", 413, "upload_file_too_large"),
    ],
)
def test_hostile_batches_write_nothing(tmp_path, synth, case, status, code):
    home = tmp_path / "home"
    classes, _ = dataset_rows(synth)
    with service(home) as (client, _):
        session = start(client, "h", classes, 5).json()["session_id"]
        manifest, files = _manifest_case(synth, case, tmp_path / "evil.jpg")
        answer = client.post(
            f"/datasets/upload_session/{session}/batch", data={"manifest": json.dumps({"rows": manifest})}, files=files
        )
        assert (answer.status_code, answer.json()["detail"]) == (status, code), answer.text
        assert [p.name for p in staged(home) if p.is_file()] == ["labelmap.txt"]  # only what start wrote
        assert client.get(f"/datasets/upload_session/{session}").json()["received"] == 0
        assert not any(tmp_path.glob("evil*"))  # neither the absolute nor the escaping name landed


def test_careless_sessions_are_refused(tmp_path, synth):
    home = tmp_path / "home"
    classes, rows = dataset_rows(synth)
    with service(home) as (client, _):
        cases = [
            (start(client, "x", classes, 1, dataset_type="seg"), "sam3_dataset_type_unsupported"),
            (start(client, "..", classes, 1), "upload_dataset_id_invalid"),
            (start(client, "x", [], 1), "upload_classes_invalid"),
            (start(client, "x", ["a\nb"], 1), "upload_classes_invalid"),
            (start(client, "x", classes, 0), "upload_total_invalid"),
            (start(client, "x", classes, "many"), "upload_total_invalid"),
        ]
        for answer, code in cases:
            assert (answer.status_code, answer.json()["detail"]) == (400, code), answer.text
        session = start(client, "few", classes, 3).json()["session_id"]
        over = send_batch(client, session, rows[:4])
        assert (over.status_code, over.json()["detail"]) == (400, "upload_too_many_images")
        garbled = client.post(f"/datasets/upload_session/{session}/batch", data={"manifest": "{"}, files=[])
        assert garbled.status_code in (400, 422)
        empty = client.post(f"/datasets/upload_session/{session}/finalize")
        assert (empty.status_code, empty.json()["detail"]) == (400, "upload_invalid")
        assert "no" in empty.json()["message"] and visible(home) == []
        assert client.post("/datasets/upload_session/nope/finalize").json()["detail"] == "upload_session_not_found"
        assert client.post("/datasets/upload", data={"dataset_id": "nofile"}).status_code == 422
        assert (
            client.post(
                "/datasets/upload_session/start", content=b"\xff{", headers={"content-type": "application/json"}
            ).status_code
            == 400
        )
        huge = client.post(
            "/datasets/upload_session/start", content=b" " * 17 * 2**20, headers={"content-type": "application/json"}
        )
        assert huge.status_code == 413
        flood = [start(client, f"f{i}", classes, 1) for i in range(SMALL.max_sessions)]
        assert flood[-1].json()["detail"] == "upload_sessions_exhausted" and flood[-1].status_code == 429
        assert len(client.get("/datasets/upload_sessions").json()) == SMALL.max_sessions


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symlink
            bundle.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def _zip_of(root: Path, wrap: str = "") -> dict[str, bytes]:
    return {f"{wrap}{p.relative_to(root).as_posix()}": p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_zip_uploads_and_hostile_zips(tmp_path, synth):
    home = tmp_path / "home"
    good = _zip_of(synth, "synth/")
    hostile = {
        "traversal": _zip({**good, "../../evil.txt": b"x"}),
        "absolute": _zip({**good, str(tmp_path / "evil.txt"): b"x"}),
        "symlink": _zip(good, links=("synth/train/images/link.jpg",)),
        "ratio": _zip({**good, "synth/zeros.bin": bytes(2 * 2**20)}),
        "too_big": _zip({**good, "synth/big.jpg": os.urandom(SMALL.max_file_bytes + 1)}),
        "not_a_zip": b"PK\x03\x04 truncated",
    }
    with service(home) as (client, _):
        for case, data in hostile.items():
            answer = client.post("/datasets/upload", files={"file": (f"{case}.zip", data)}, data={"dataset_id": case})
            assert answer.status_code == 400 and answer.json()["detail"].startswith("upload_zip"), (case, answer.text)
            assert visible(home) == [] and not staged(home), case
        assert not (tmp_path / "evil.txt").exists()
        landed = client.post("/datasets/upload", files={"file": ("mine.zip", _zip(good))})
        assert landed.status_code == 200, landed.text
        assert landed.json()["id"] == "mine" and landed.json()["image_count"] == 60
        assert visible(home) == ["mine"] and not staged(home)


def test_replace_swaps_and_a_cut_off_swap_recovers(tmp_path, synth):
    home = tmp_path / "home"
    smaller = tmp_path / "smaller"
    write_synth(smaller, images=10, seed=1)
    with service(home) as (client, _):
        assert upload(client, synth, "d").status_code == 200
        swapped = upload(client, smaller, "d", replace=True)
        assert swapped.status_code == 200 and swapped.json()["image_count"] == 10
        assert visible(home) == ["d"] and not (home / "datasets" / REPLACED).exists()
    root = home / "datasets"
    (root / REPLACED).mkdir()
    os.rename(root / "d", root / REPLACED / "d")  # a crash between the two renames: only the old one exists
    recover(root)
    assert visible(home) == ["d"] and len(list((root / "d" / "train" / "images").iterdir())) == 8
    (root / REPLACED).mkdir()
    (root / REPLACED / "d").mkdir()  # a crash after both renames: the new one is in place
    recover(root)
    assert not (root / REPLACED).exists() and len(list((root / "d" / "train" / "images").iterdir())) == 8


SERVE_ONLY_UPLOADS = textwrap.dedent(
    """
    import sys, dagster as dg, uvicorn
    from sam3lite_pipeline.api.app import ServiceSettings, create_up_app
    from sam3lite_pipeline.resources import StorageRoots
    home, port = sys.argv[1], int(sys.argv[2])
    storage = StorageRoots(datasets=f"{home}/datasets", cache=f"{home}/cache", runs=f"{home}/runs")
    instance = dg.DagsterInstance.from_config(f"{home}/dagster_home")
    app = create_up_app(ServiceSettings(storage=storage, dagster_url="http://127.0.0.1:9"), instance)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)


def test_a_service_killed_between_batches_leaves_no_partial_dataset(tmp_path, synth):
    home = tmp_path / "home"
    (home / "dagster_home").mkdir(parents=True)
    (home / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVE_ONLY_UPLOADS, str(home), str(port)])
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.get("/datasets")
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        classes, rows = dataset_rows(synth)
        session = start(client, "cut", classes, len(rows)).json()["session_id"]
        assert send_batch(client, session, rows[:48]).status_code == 200
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert visible(home) == [] and staged(home)  # the batch sits in staging only
    with service(home) as (client, _):  # a new start cleans it
        assert not staged(home) and client.get("/datasets/upload_sessions").json() == []
