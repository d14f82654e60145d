"""The serving backend as the pipeline sees it: what is active, activate a checkpoint, list, and confirm an
activation by one real inference (DESIGN.md "Backend modes").

`local`: the pointer file `<runs_root>/active_model.json` that `sam3lite serve` follows. Activation writes it;
confirmation reads it back through the service's own `ModelState` (what a running or restarted service does)
and runs one inference with the model it loads.
`tator`: the backend's HTTP API (`POST /sam3/models/activate`, `GET /sam3/models`, `POST /sam3/text_prompt`),
which `sam3lite serve` implements too. Connection errors and 5xx answers are retried with exponential backoff;
the bearer token is sent as a header and never appears in a message.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sam3lite_core.serve.schemas import ActiveModel
from sam3lite_core.serve.state import (
    NO_MODEL, POINTER_NAME, ModelState, model_entries, read_pointer, write_pointer,
)
from sam3lite_pipeline.resources import Backend


class BackendError(RuntimeError):
    """The backend refused or could not be reached; the message says which and what to do."""


@dataclass(frozen=True)
class Confirmation:
    active_id: str
    checkpoint: str
    detections: int
    top_score: float | None
    latency_s: float


class BackendClient(Protocol):
    def current(self) -> ActiveModel | None: ...
    def activate(self, checkpoint: Path, label: str) -> ActiveModel: ...
    def restore(self, previous: ActiveModel | None) -> None: ...
    def list_models(self) -> list[dict[str, Any]]: ...
    def confirm(self, checkpoint: Path, image: Path, prompt: str) -> Confirmation: ...


class LocalBackend:
    def __init__(self, runs_root: Path) -> None:
        self.runs_root = Path(runs_root).resolve()
        self.pointer = self.runs_root / POINTER_NAME

    def current(self) -> ActiveModel | None:
        return read_pointer(self.pointer)

    def activate(self, checkpoint: Path, label: str) -> ActiveModel:
        path = Path(checkpoint).resolve()
        if path.is_symlink() or not path.is_file() or not path.is_relative_to(self.runs_root):
            raise BackendError(f"{checkpoint} must be a regular file inside the runs root {self.runs_root}")
        active = ActiveModel(id=label, label=label, checkpoint=str(path), source="custom")
        write_pointer(self.pointer, active)
        return active

    def restore(self, previous: ActiveModel | None) -> None:
        # Written, not deleted: a running service reads a missing pointer as "no change" and would keep serving
        # the unconfirmed checkpoint; NO_MODEL sends it back to its base weights, as before any activation.
        write_pointer(self.pointer, previous or NO_MODEL)

    def list_models(self) -> list[dict[str, Any]]:
        return [entry.model_dump() for entry in model_entries(self.current() or NO_MODEL, None, self.runs_root)]

    def confirm(self, checkpoint: Path, image: Path, prompt: str) -> Confirmation:
        started = time.monotonic()
        serving = ModelState(self.runs_root).current()  # what a (re)started `sam3lite serve` would load
        if serving.active.checkpoint != str(Path(checkpoint).resolve()) or serving.predictor is None:
            raise BackendError(
                f"the pointer file {self.pointer} did not make the service load {checkpoint} (it serves "
                f"{serving.active.checkpoint}); see the service log for why"
            )
        with serving.lock:
            found = serving.predictor.predict(Image.open(image).convert("RGB"), [prompt], threshold=0.5)[0][0]
        return Confirmation(serving.active.id, str(serving.active.checkpoint), len(found),
                            max((d.score for d in found), default=None), time.monotonic() - started)


class TatorBackend:
    def __init__(self, settings: Backend) -> None:
        if not settings.url:
            raise BackendError("Backend.mode is 'tator' but Backend.url is not set (e.g. http://127.0.0.1:8000)")
        self.url = settings.url.rstrip("/")
        self.timeout = settings.timeout_s
        self.session = requests.Session()
        retry = Retry(total=settings.retries, connect=settings.retries, read=settings.retries,
                      status=settings.retries, backoff_factor=settings.backoff_s, allowed_methods=None,
                      status_forcelist=(500, 502, 503, 504), raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if settings.token:
            self.session.headers["Authorization"] = f"Bearer {settings.token}"

    def current(self) -> ActiveModel | None:
        for entry in self.list_models():
            if str(entry.get("key", "")).startswith("active:"):
                return ActiveModel(id=entry["id"], label=entry["id"], checkpoint=entry["path"], source="custom")
        return None

    def activate(self, checkpoint: Path, label: str) -> ActiveModel:
        body = {"checkpoint_path": str(checkpoint), "label": label, "enable_segmentation": False}
        return ActiveModel.model_validate(self._call("POST", "/sam3/models/activate", json=body)["active"])

    def restore(self, previous: ActiveModel | None) -> None:
        body = {"checkpoint_path": previous.checkpoint if previous else None,
                "label": previous.label if previous else None, "enable_segmentation": False}
        self._call("POST", "/sam3/models/activate", json=body)

    def list_models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/sam3/models")

    def confirm(self, checkpoint: Path, image: Path, prompt: str) -> Confirmation:
        started = time.monotonic()
        active = self.current()
        if active is None or Path(active.checkpoint or "").resolve() != Path(checkpoint).resolve():
            raise BackendError(f"{self.url} lists {active.checkpoint if active else 'no custom model'} as active, "
                               f"not {checkpoint}")
        buffer = io.BytesIO()
        Image.open(image).convert("RGB").save(buffer, format="PNG")
        answer = self._call("POST", "/sam3/text_prompt", json={
            "image_base64": base64.b64encode(buffer.getvalue()).decode(), "text_prompt": prompt, "threshold": 0.5,
        })
        detections = answer.get("detections", [])
        return Confirmation(active.id, str(active.checkpoint), len(detections),
                            max((d["score"] for d in detections), default=None), time.monotonic() - started)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise BackendError(f"{method} {self.url}{path}: the backend cannot be reached ({type(exc).__name__}); "
                               f"check Backend.url and that the service is running") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise BackendError(f"{method} {self.url}{path} answered {response.status_code}: {str(detail)[:500]}")
        return response.json()


def backend_client(settings: Backend, runs_root: Path) -> BackendClient:
    return TatorBackend(settings) if settings.mode == "tator" else LocalBackend(runs_root)
