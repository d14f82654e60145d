"""The serving backend as the pipeline sees it: what is active, activate a checkpoint, list, and confirm an
activation by one real inference (DESIGN.md "Backend modes").

`local`: the pointer file `<runs_root>/active_model.json` that `sam3lite serve` follows. Activation writes it;
confirmation reads it back through the service's own `ModelState` (what a running or restarted service does)
and runs one inference with the model it loads.
`tator`: the backend's HTTP API (`POST /sam3/models/activate`, `GET /sam3/models`, `POST /sam3/text_prompt`),
which `sam3lite serve` implements too. Connection errors and 5xx answers are retried with exponential backoff;
the bearer token is sent as a header and never appears in a message. Any answer that is not what the backend
gives (status, JSON, shape; an HTML error page) is a `BackendError` quoting it. A restore puts the previous
model back with the `enable_segmentation` it had: the listing's value when the backend reports it, else the
backend's default (on, for its base and for runs it trained itself), else off for a checkpoint our activation
history shows we activated (we always activate box-only).
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
from pydantic import ValidationError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sam3lite_core.serve.listing import model_entries
from sam3lite_core.serve.schemas import ActiveModel
from sam3lite_core.serve.state import NO_MODEL, POINTER_NAME, ModelState, read_pointer, write_pointer
from sam3lite_pipeline.ops.history import History
from sam3lite_pipeline.resources import Backend

ACTIVE_KEY = "active:"  # the backend's key of the active custom checkpoint's listing row
BACKEND_SEGMENTATION_DEFAULT = True  # the backend's enable_segmentation when nobody said otherwise
QUOTED = 500  # characters of an unexpected answer quoted in an error


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
        return Confirmation(
            serving.active.id,
            str(serving.active.checkpoint),
            len(found),
            max((d.score for d in found), default=None),
            time.monotonic() - started,
        )


class TatorBackend:
    def __init__(self, settings: Backend, runs_root: Path | None = None) -> None:
        if not settings.url:
            raise BackendError("Backend.mode is 'tator' but Backend.url is not set (e.g. http://127.0.0.1:8000)")
        self.url = settings.url.rstrip("/")
        self.timeout = settings.timeout_s
        self.history = History(runs_root) if runs_root is not None else None
        self.session = requests.Session()
        retry = Retry(
            total=settings.retries,
            connect=settings.retries,
            read=settings.retries,
            status=settings.retries,
            backoff_factor=settings.backoff_s,
            allowed_methods=None,
            status_forcelist=(500, 502, 503, 504),
            raise_on_status=False,
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if settings.token:
            self.session.headers["Authorization"] = f"Bearer {settings.token}"

    def current(self) -> ActiveModel | None:
        """The active model from the listing: the `active:` row (identified by its path when it has no `id`),
        else the active base row (source "env"); None when neither is listed."""
        rows = [row for row in self.list_models() if isinstance(row, dict)]
        try:
            return self._active(rows)
        except (ValidationError, TypeError):
            raise BackendError(
                f"GET {self.url}/sam3/models lists an active model this client cannot read: {str(rows)[:QUOTED]}"
            ) from None

    def _active(self, rows: list[dict[str, Any]]) -> ActiveModel | None:
        for row in rows:
            key = str(row.get("key") or "")
            if key.startswith(ACTIVE_KEY):
                checkpoint = row.get("path") or key[len(ACTIVE_KEY) :]
                name = str(row.get("id") or Path(checkpoint).parent.parent.name or checkpoint)
                return ActiveModel(
                    id=name,
                    label=name,
                    checkpoint=checkpoint,
                    source="custom",
                    enable_segmentation=self._segmentation(row, checkpoint),
                )
        for row in rows:
            if row.get("key") == "base" and row.get("active"):
                name = str(row.get("id") or "Base SAM3")
                return ActiveModel(
                    id=name,
                    label=name,
                    checkpoint=row.get("path"),
                    source="env",
                    enable_segmentation=self._segmentation(row, None),
                )
        return None

    def _segmentation(self, row: dict[str, Any], checkpoint: str | None) -> bool:
        if isinstance(row.get("enable_segmentation"), bool):
            return row["enable_segmentation"]
        if checkpoint is not None and self.history is not None:
            try:
                ours = any(entry.checkpoint == checkpoint for entry in self.history.entries())
            except ValueError:  # an unreadable history says nothing about who activated what
                ours = False
            if ours:
                return False
        return BACKEND_SEGMENTATION_DEFAULT

    def activate(self, checkpoint: Path, label: str) -> ActiveModel:
        body = {"checkpoint_path": str(checkpoint), "label": label, "enable_segmentation": False}
        answer = self._call("POST", "/sam3/models/activate", json=body)
        try:
            return ActiveModel.model_validate(answer["active"])
        except (KeyError, TypeError, ValidationError):
            raise BackendError(
                f"POST {self.url}/sam3/models/activate answered {str(answer)[:QUOTED]!r}, not "
                "{'active': {id, label, checkpoint, source, ...}}"
            ) from None

    def restore(self, previous: ActiveModel | None) -> None:
        """Put `previous` back (its base weights when it was the base); None: the base with the backend's own
        default segmentation setting."""
        custom = previous is not None and previous.source == "custom"
        body = {
            "checkpoint_path": previous.checkpoint if custom else None,  # type: ignore[union-attr]
            "label": previous.label if previous else None,
            "enable_segmentation": previous.enable_segmentation if previous else None,
        }
        self._call("POST", "/sam3/models/activate", json=body)

    def list_models(self) -> list[dict[str, Any]]:
        rows = self._call("GET", "/sam3/models")
        if not isinstance(rows, list):
            raise BackendError(f"GET {self.url}/sam3/models answered {str(rows)[:QUOTED]!r}, not a list of models")
        return rows

    def confirm(self, checkpoint: Path, image: Path, prompt: str) -> Confirmation:
        started = time.monotonic()
        active = self.current()
        if active is None or Path(active.checkpoint or "").resolve() != Path(checkpoint).resolve():
            raise BackendError(
                f"{self.url} lists {active.checkpoint if active else 'no custom model'} as active, not {checkpoint}"
            )
        buffer = io.BytesIO()
        Image.open(image).convert("RGB").save(buffer, format="PNG")
        answer = self._call(
            "POST",
            "/sam3/text_prompt",
            json={
                "image_base64": base64.b64encode(buffer.getvalue()).decode(),
                "text_prompt": prompt,
                "threshold": 0.5,
            },
        )
        detections = answer.get("detections") if isinstance(answer, dict) else None
        if not isinstance(detections, list):
            raise BackendError(
                f"POST {self.url}/sam3/text_prompt answered {str(answer)[:QUOTED]!r}, not {{'detections': [...]}}"
            )
        # A detection without a score (the backend's score is optional) is not a confirmed detection.
        scores = [d["score"] for d in detections if isinstance(d, dict) and _is_number(d.get("score"))]
        return Confirmation(
            active.id, str(active.checkpoint), len(scores), max(scores, default=None), time.monotonic() - started
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        where = f"{method} {self.url}{path}"
        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise BackendError(
                f"{where}: the backend cannot be reached ({type(exc).__name__}); "
                f"check Backend.url and that the service is running"
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400:
            detail = answer.get("detail", answer) if isinstance(answer, dict) else response.text
            raise BackendError(f"{where} answered {response.status_code}: {str(detail)[:QUOTED]}")
        if answer is None:
            raise BackendError(f"{where} answered {response.status_code} with no JSON: {response.text[:QUOTED]!r}")
        return answer


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def backend_client(settings: Backend, runs_root: Path) -> BackendClient:
    return TatorBackend(settings, runs_root) if settings.mode == "tator" else LocalBackend(runs_root)
