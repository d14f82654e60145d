"""`sam3lite serve` as a real uvicorn process on a free 127.0.0.1 port (test_serve.py, test_pipeline*.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Server:
    """`sam3lite serve` in a subprocess on a free loopback port."""

    def __init__(
        self, runs: Path, base_checkpoint: Path | None = None, token: str | None = TOKEN, args: tuple[str, ...] = ()
    ) -> None:
        """`token` None: no activation token (the backend's UI sends none); `args`: more `sam3lite serve` options."""
        self.url = ""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = os.environ | {"OMP_NUM_THREADS": "1"} | ({"SAM3LITE_SERVE_TOKEN": token} if token else {})
        env.pop("SAM3_CHECKPOINT_PATH", None)
        if not token:
            env.pop("SAM3LITE_SERVE_TOKEN", None)
        base = ["--base-checkpoint", str(base_checkpoint)] if base_checkpoint else []
        # Logs go to a file: a full pipe nobody reads would block the server.
        self.log = runs.parent / f"serve-{port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sam3lite_core.cli",
                    "serve",
                    "--runs-root",
                    str(runs),
                    "--port",
                    str(port),
                    "--device",
                    "cpu",
                    "--max-upload-mb",
                    "0.25",
                    *base,
                    *args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                self.client.get("/health")
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in 60 s")

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)
