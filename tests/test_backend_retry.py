"""The `tator` backend client against a flaky HTTP server on 127.0.0.1: 5xx answers are retried with backoff and
then succeed; a backend that keeps failing ends in one clear error; a 4xx is not retried."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sam3lite_pipeline.ops.backend import BackendError, TatorBackend
from sam3lite_pipeline.resources import Backend

LISTING = [
    {"id": "Base SAM3", "key": "base", "path": None, "active": False},
    {
        "id": "mine",
        "key": "active:/runs/r1/checkpoints/export.ckpt",
        "path": "/runs/r1/checkpoints/export.ckpt",
        "active": True,
    },
]


class Flaky(ThreadingHTTPServer):
    """Answers GET /sam3/models with `failures` x status `fail_with` first, then the listing."""

    def __init__(self, failures: int, fail_with: int) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.failures, self.fail_with, self.requests = failures, fail_with, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Flaky

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests += 1
        failing = self.server.requests <= self.server.failures
        body = json.dumps({"detail": "busy"} if failing else LISTING).encode()
        self.send_response(self.server.fail_with if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """No access log on stderr: the test's own assertions say what happened."""


@pytest.fixture
def flaky(request) -> Iterator[Flaky]:
    server = Flaky(*request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("flaky", [(2, 503)], indirect=True)
def test_5xx_answers_are_retried_then_the_answer_is_used(flaky):
    client = TatorBackend(Backend(mode="tator", url=flaky.url, retries=3, backoff_s=0.01))
    active = client.current()
    assert flaky.requests == 3
    assert active is not None and active.id == "mine" and active.checkpoint == LISTING[1]["path"]


@pytest.mark.parametrize("flaky", [(10, 502)], indirect=True)
def test_a_backend_that_keeps_failing_is_one_clear_error(flaky):
    client = TatorBackend(Backend(mode="tator", url=flaky.url, retries=2, backoff_s=0.01))
    with pytest.raises(BackendError, match=r"GET .*/sam3/models answered 502: busy"):
        client.list_models()
    assert flaky.requests == 3  # the first try and two retries


@pytest.mark.parametrize("flaky", [(1, 404)], indirect=True)
def test_a_4xx_is_not_retried(flaky):
    client = TatorBackend(Backend(mode="tator", url=flaky.url, retries=3, backoff_s=0.01))
    with pytest.raises(BackendError, match="answered 404"):
        client.list_models()
    assert flaky.requests == 1
