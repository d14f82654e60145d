"""The inference service: a FastAPI app with the annotation backend's SAM3 endpoints, box-only, answering the
backend's own UI (`ybat-master/ybat.js` of stephansturges/Tator) as the backend does.

  GET  /health                      {status, model_loaded, active}
  GET  /sam3/models (/available)    [ModelEntry] (?variant=sam3|all, ?promoted_only=false|true; listing.py)
  POST /sam3/models/activate        ActivateRequest -> {"active": ActiveModel}; bearer token when configured
  POST /sam3/text_prompt            TextPromptRequest -> PromptResponse
  POST /sam3/text_prompt_batch      TextPromptBatchRequest -> BatchPromptResponse (all prompts in one forward)
                                    both with `windowed: true`: the image seen as overlapping windows, merged,
                                    with the backend's `windowed_*` diagnostics in `warnings` (windowed.py)
  POST /sam3/visual_prompt          VisualPromptRequest -> PromptResponse
  GET  /sam_slots, POST /sam_preload, GET /sam3_runtime_options, GET /system/health_summary, /system/gpu,
       /system/storage_check        the routes the UI calls around SAM3 (system.py)

Refusals answer 4xx with {"detail": <the backend's bare code, or the reason>, "message": <the reason>}: 400 bad
input, 401 missing or wrong token, 404 unknown checkpoint or image token, 409 nothing to go back to, 413 too
large, 422 malformed body; 503 while no model is loaded.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from torchvision.ops import box_iou

from sam3lite_core.cache_budget import DEFAULT_CACHE_BYTES, CacheBudget
from sam3lite_core.inference import PromptLike
from sam3lite_core.predictor import Detection as Predicted
from sam3lite_core.serve.errors import ServiceError, check_variant
from sam3lite_core.serve.images import DEFAULT_MAX_UPLOAD_BYTES, ImageCache
from sam3lite_core.serve.limits import BodyLimit, body_limit
from sam3lite_core.serve.listing import model_entries
from sam3lite_core.serve.schemas import (
    ActivateRequest,
    ActivateResponse,
    ActiveModel,
    BatchPromptResponse,
    Detection,
    ImageRequest,
    ModelEntry,
    PromptResponse,
    TextPromptBatchRequest,
    TextPromptRequest,
    TextRequest,
    VisualPromptRequest,
)
from sam3lite_core.serve.state import ModelState
from sam3lite_core.serve.system import system_routes
from sam3lite_core.serve.windowed import answer_windowed

TOKEN_ENV = "SAM3LITE_SERVE_TOKEN"
VISUAL_TEXT = "visual"  # upstream's text for a prompt made of exemplar boxes only
SEED_IOU = 0.9  # a detection this close to a positive exemplar is the exemplar itself (the backend drops it)
SOURCE = "sam3_text"  # the backend's `source` for every SAM3 prompt detection, visual ones included
NO_MODEL_LOADED = "no model is active: activate one with POST /sam3/models/activate"
ECHO_LIMIT = 200  # characters of a refused field's value that a 422 answer repeats


def create_app(
    runs_root: str | os.PathLike,
    *,
    base_checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    on_activate: Callable[[ActiveModel], None] | None = None,
    body_limits: Mapping[str, int] | None = None,
) -> FastAPI:
    """The app over `runs_root` (activatable checkpoints and the pointer file). `token` (default: env
    SAM3LITE_SERVE_TOKEN) is then required as `Authorization: Bearer <token>` on activation. Decoded images
    and image features share `cache_bytes`. `on_activate` hears of every activation through the API (the
    pipeline records it in the activation history). `body_limits` maps path prefixes to their own request-body
    limits (the pipeline's dataset uploads)."""
    budget = CacheBudget(cache_bytes)
    state = ModelState(
        Path(runs_root),
        base_checkpoint=Path(base_checkpoint) if base_checkpoint else None,
        device=device,
        precision=precision,
        cache_budget=budget,
    )
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    images = ImageCache(budget, max_upload_bytes=max_upload_bytes)
    app = FastAPI(title="sam3lite", description="box-only SAM3 inference, backend-compatible")
    app.state.models = state
    app.add_middleware(BodyLimit, limit=body_limit(max_upload_bytes), by_prefix=body_limits)

    _error_answers(app)
    app.include_router(_model_routes(state, token, on_activate))
    app.include_router(_prompt_routes(state, images))
    app.include_router(system_routes(state, images))
    return app


def _error_answers(app: FastAPI) -> None:
    """A refused request gets the backend's shapes: a ServiceError its code and sentence, another ValueError a
    400 with its sentence, a validation error FastAPI's 422 list, but never the input back when it is large (a
    40 MB field would otherwise come back whole)."""

    @app.exception_handler(ValueError)
    async def user_error(request: Request, exc: ValueError) -> JSONResponse:
        if isinstance(exc, ServiceError):
            return JSONResponse(exc.body(), status_code=exc.status)
        return JSONResponse({"detail": str(exc), "message": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_brief(error) for error in exc.errors()]}, status_code=422)


def _brief(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as FastAPI reports it (type, loc, msg, input), its input kept only when short."""
    brief = {key: error[key] for key in ("type", "loc", "msg") if key in error}
    value = error.get("input")
    text = value if isinstance(value, str) else repr(value)
    brief["input"] = (
        jsonable_encoder(value) if len(text) <= ECHO_LIMIT else f"<{type(value).__name__} of {len(text)} characters>"
    )
    return brief


def _model_routes(state: ModelState, token: str | None, on_activate: Callable[[ActiveModel], None] | None) -> APIRouter:
    """GET /health, GET /sam3/models (/available) and POST /sam3/models/activate (needs `token` when set)."""
    router = APIRouter()

    @router.get("/health")
    def health() -> dict:
        serving = state.current()
        return {"status": "ok", "model_loaded": serving.predictor is not None, "active": serving.active.model_dump()}

    @router.get("/sam3/models", response_model=list[ModelEntry])
    @router.get("/sam3/models/available", response_model=list[ModelEntry])
    def models(variant: str = Query("sam3", max_length=64), promoted_only: bool = Query(False)) -> list[ModelEntry]:
        return list_models(state, variant, promoted_only)

    @router.post("/sam3/models/activate", response_model=ActivateResponse)
    def activate(body: ActivateRequest, authorization: str | None = Header(default=None)) -> ActivateResponse:
        if token is not None and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise ServiceError(
                "activation needs the header 'Authorization: Bearer <SAM3LITE_SERVE_TOKEN>'", 401, code="unauthorized"
            )
        active = state.activate(body.checkpoint_path, body.label, body.enable_segmentation)
        if on_activate is not None:
            on_activate(active)
        return ActivateResponse(active=active)

    return router


def _prompt_routes(state: ModelState, images: ImageCache) -> APIRouter:
    """POST /sam3/text_prompt, /sam3/text_prompt_batch and /sam3/visual_prompt, answered by the active model."""
    router = APIRouter()

    @router.post("/sam3/text_prompt", response_model=PromptResponse)
    def text_prompt(body: TextPromptRequest) -> PromptResponse:
        return answer(state, images, body, [body.text_prompt])[0]

    @router.post("/sam3/text_prompt_batch", response_model=BatchPromptResponse)
    def text_prompt_batch(body: TextPromptBatchRequest) -> BatchPromptResponse:
        results = answer(state, images, body, body.text_prompts)
        return BatchPromptResponse(image_token=results[0].image_token, results=results)

    @router.post("/sam3/visual_prompt", response_model=PromptResponse)
    def visual_prompt(body: VisualPromptRequest) -> PromptResponse:
        boxes, labels = body.exemplars()
        prompt = {"text": body.text_prompt or body.prompt or VISUAL_TEXT, "boxes": boxes, "labels": labels}
        seeds = torch.tensor([box for box, label in zip(boxes, labels) if label == 1]).reshape(-1, 4)
        return answer(state, images, body, [prompt], seeds=seeds)[0]

    return router


def answer(
    state: ModelState,
    images: ImageCache,
    body: ImageRequest,
    prompts: list[PromptLike],
    seeds: torch.Tensor | None = None,
) -> list[PromptResponse]:
    """One PromptResponse per prompt: score >= threshold, boxes of at least min_size px^2, no detection that
    repeats a seed box (xyxy px [S, 4]), at most max_results, best first; windowed when a text request asks."""
    check_variant(body.sam_variant)
    serving = state.current()
    if serving.predictor is None:
        raise ServiceError(NO_MODEL_LOADED, 503, code="sam3_model_not_loaded")
    pixels, token = images.resolve(body.image_base64, body.image_token)
    with serving.lock:
        if isinstance(body, TextRequest) and body.windowed:
            windowed = answer_windowed(serving.predictor, pixels, [str(p) for p in prompts], body)
            return [_response(found.detections, token, body, seeds, notes) for found, notes in windowed]
        found = serving.predictor.predict(pixels, prompts, threshold=body.threshold)[0]
    return [_response(kept, token, body, seeds, None) for kept in found]


def _response(
    found: list[Predicted], token: str, body: ImageRequest, seeds: torch.Tensor | None, notes: list[str] | None
) -> PromptResponse:
    """`notes`: the windowed diagnostics (None when not windowed); the final count is added here, after the
    filters."""
    if body.min_size:
        found = [d for d in found if (d.box_xyxy[2] - d.box_xyxy[0]) * (d.box_xyxy[3] - d.box_xyxy[1]) >= body.min_size]
    if seeds is not None and len(seeds) and found:
        overlap = box_iou(torch.tensor([d.box_xyxy for d in found]), seeds).amax(dim=1)
        found = [d for d, iou in zip(found, overlap.tolist()) if iou <= SEED_IOU]
    found = found[: body.max_results]
    detections = [
        Detection(
            bbox=[float(np.clip(v, 0.0, 1.0)) for v in d.box_cxcywh],
            score=d.score,
            qwen_label=d.prompt,
            source=SOURCE,
            simplify_epsilon=body.simplify_epsilon,
        )
        for d in found
    ]
    warnings = [] if detections else ["no_results"]
    if notes is not None:
        warnings += [*notes, f"windowed_final_detections:{len(detections)}"]
    return PromptResponse(detections=detections, warnings=warnings, image_token=token)


def list_models(state: ModelState, variant: str = "sam3", promoted_only: bool = False) -> list[ModelEntry]:
    """The backend's listing (listing.py). An active custom checkpoint that is gone (or left the runs root) is
    dropped first, as the backend does."""
    state.drop_missing_checkpoint()
    return model_entries(state.current().active, state.base_checkpoint, state.runs_root, variant, promoted_only)
