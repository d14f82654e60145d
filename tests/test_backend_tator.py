"""The `tator` backend client against a small HTTP server on 127.0.0.1 that answers as the backend does: an
active row without `id`, the base (segmentation on by default) restored as it was, null scores in the
confirming inference, and answers that are not the backend's (5xx, HTML error pages, wrong shapes) as one
`BackendError` quoting them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from sam3lite_pipeline.ops.backend import BackendError, TatorBackend
from sam3lite_pipeline.ops.history import Activation, History
from sam3lite_pipeline.resources import Backend

RUN = "/uploads/sam3_runs/r1/checkpoints/checkpoint.pt"


class FakeTator(ThreadingHTTPServer):
    """Answers each route with `answers[path]` = (status, body: JSON value or raw str); records POST bodies."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answers: dict[str, tuple[int, object]] = {}
        self.posted: list[tuple[str, dict]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeTator

    def _answer(self) -> None:
        status, body = self.server.answers.get(self.path, (404, {"detail": "Not Found"}))
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self.server.posted.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
        self._answer()

    def log_message(self, *args: object) -> None:
        """No access log on stderr."""


@pytest.fixture
def tator() -> Iterator[FakeTator]:
    server = FakeTator()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client(server: FakeTator, runs_root: Path | None = None) -> TatorBackend:
    return TatorBackend(Backend(mode="tator", url=server.url, retries=0, backoff_s=0.01), runs_root)


def test_active_row_without_id_and_seg_defaults_on_restore(tator, tmp_path):
    tator.answers["/sam3/models"] = (
        200,
        [
            {"id": "Base SAM3", "key": "base", "path": None, "active": False},
            {"key": f"active:{RUN}", "path": RUN, "active": True, "source": "custom"},
        ],
    )
    tator.answers["/sam3/models/activate"] = (
        200,
        {"active": {"id": "x", "label": "x", "checkpoint": RUN, "source": "custom", "enable_segmentation": True}},
    )
    active = client(tator).current()
    assert (active.id, active.checkpoint, active.source) == ("r1", RUN, "custom")
    assert active.enable_segmentation is True  # trained by the backend: its default, segmentation on
    client(tator).restore(active)
    assert tator.posted[-1] == (
        "/sam3/models/activate",
        {"checkpoint_path": RUN, "label": "r1", "enable_segmentation": True},
    )

    History(tmp_path).record(Activation(dataset="d", action="manual", checkpoint=RUN, label="ours"))
    assert client(tator, tmp_path).current().enable_segmentation is False  # we activated it: box-only

    tator.answers["/sam3/models"] = (200, [{"id": "Base SAM3", "key": "base", "path": "/w/sam3.pt", "active": True}])
    base = client(tator, tmp_path).current()
    assert (base.source, base.checkpoint, base.enable_segmentation) == ("env", "/w/sam3.pt", True)
    client(tator).restore(base)
    assert tator.posted[-1][1] == {"checkpoint_path": None, "label": "Base SAM3", "enable_segmentation": True}

    tator.answers["/sam3/models"] = (
        200,
        [{"id": "Base SAM3", "key": "base", "path": None, "active": True, "enable_segmentation": False}],
    )  # sam3lite serve reports it
    assert client(tator).current().enable_segmentation is False
    client(tator).restore(None)
    assert tator.posted[-1][1] == {"checkpoint_path": None, "label": None, "enable_segmentation": None}


def test_confirm_counts_null_scores_as_no_detection(tator, tmp_path):
    image = tmp_path / "a.png"
    PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    tator.answers["/sam3/models"] = (200, [{"id": "mine", "key": f"active:{RUN}", "path": RUN, "active": True}])
    tator.answers["/sam3/text_prompt"] = (
        200,
        {
            "detections": [
                {"bbox": [0.5, 0.5, 0.1, 0.1], "score": None, "source": "sam3_text"},
                {"bbox": [0.2, 0.2, 0.1, 0.1], "score": 0.75, "source": "sam3_text"},
            ],
            "warnings": [],
        },
    )
    confirmed = client(tator).confirm(Path(RUN), image, "car")
    assert (confirmed.detections, confirmed.top_score, confirmed.active_id) == (1, 0.75, "mine")
    tator.answers["/sam3/text_prompt"] = (200, {"detections": [{"score": None}]})
    assert client(tator).confirm(Path(RUN), image, "car").top_score is None
    tator.answers["/sam3/text_prompt"] = (200, {"detections": "none"})
    with pytest.raises(BackendError, match="not {'detections'"):
        client(tator).confirm(Path(RUN), image, "car")


@pytest.mark.parametrize(
    ("route", "answer", "match"),
    [
        ("/sam3/models", (500, "<html><body><h1>500 Internal Server Error</h1></body></html>"), "answered 500: <html>"),
        ("/sam3/models", (502, {"detail": "bad gateway"}), "answered 502: bad gateway"),
        ("/sam3/models", (200, "<html>login page</html>"), "with no JSON: '<html>login page"),
        ("/sam3/models", (200, {"models": []}), "not a list of models"),
        ("/sam3/models", (200, [{"key": "active:", "path": 5, "active": True}]), "cannot read"),
        ("/sam3/models/activate", (200, {"ok": True}), "not {'active'"),
        ("/sam3/models/activate", (200, {"active": {"id": 1}}), "not {'active'"),
        ("/sam3/models/activate", (400, {"detail": "sam3_checkpoint_path_invalid"}), "400: sam3_checkpoint_path_inv"),
    ],
)
def test_unexpected_answers_are_one_backend_error(tator, route, answer, match):
    tator.answers[route] = answer
    backend = client(tator)
    with pytest.raises(BackendError, match=match):
        backend.activate(Path(RUN), "x") if route.endswith("activate") else backend.current()
