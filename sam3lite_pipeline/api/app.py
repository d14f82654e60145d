"""The app `sam3lite up` serves: the core inference service (sam3lite_core.serve) plus the backend's training-job,
dataset, upload and run-storage routes over the Dagster pipeline. An activation through the backend's UI is recorded as
the `activate` job records a manual one: in the dataset's activation history, which makes it the incumbent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sam3lite_core.serve.app import create_app
from sam3lite_core.serve.schemas import ActiveModel
from sam3lite_core.train.config import ConfigError, read_yaml_mapping
from sam3lite_pipeline.api.context import ApiContext
from sam3lite_pipeline.api.datasets import dataset_routes
from sam3lite_pipeline.api.staging import UploadLimits, recover
from sam3lite_pipeline.api.storage import storage_routes
from sam3lite_pipeline.api.training import training_routes
from sam3lite_pipeline.api.uploads import Uploads, upload_routes
from sam3lite_pipeline.ops.history import Activation, History
from sam3lite_pipeline.resources import StorageRoots

log = logging.getLogger("sam3lite.up")
ZIP_FORM_OVERHEAD = 2**20  # the multipart framing and form fields around an uploaded zip
START_BODY_BYTES = 16 * 2**20  # an upload session's start: the class list and a few fields


@dataclass(frozen=True)
class ServiceSettings:
    storage: StorageRoots
    dagster_url: str
    base_checkpoint: Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    cache_bytes: int | None = None
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call (the page the backend's UI is served from)
    upload_limits: UploadLimits = UploadLimits()


def create_up_app(settings: ServiceSettings, instance: dg.DagsterInstance) -> FastAPI:
    runs_root = settings.storage.runs_root
    history = History(runs_root)
    extra = {"cache_bytes": settings.cache_bytes} if settings.cache_bytes is not None else {}
    limits = settings.upload_limits
    app = create_app(
        runs_root,
        base_checkpoint=settings.base_checkpoint,
        device=settings.device,
        precision=settings.precision,
        on_activate=lambda active: record_activation(history, active),
        body_limits={
            "/datasets/upload_session/start": START_BODY_BYTES,
            "/datasets/upload_session/": limits.batch_max_bytes,
            "/datasets/upload": limits.zip_max_bytes + ZIP_FORM_OVERHEAD,
        },
        **extra,
    )
    ctx = ApiContext(
        storage=settings.storage,
        instance=instance,
        dagster_url=settings.dagster_url,
        models=app.state.models,
        base_checkpoint=settings.base_checkpoint,
    )
    app.include_router(training_routes(ctx))
    app.include_router(dataset_routes(ctx))
    app.include_router(storage_routes(ctx))
    datasets_root = Path(settings.storage.datasets).resolve()
    datasets_root.mkdir(parents=True, exist_ok=True)
    recover(datasets_root)  # uploads of a previous start: staging removed, an interrupted swap made whole
    app.include_router(upload_routes(Uploads(ctx, limits)))
    app.state.api = ctx
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )
    return app


def record_activation(history: History, active: ActiveModel) -> None:
    """A run checkpoint activated by hand becomes its dataset's incumbent (action "manual"); the base weights
    and checkpoints of runs that name no dataset are not any dataset's incumbent."""
    if active.source != "custom" or not active.checkpoint:
        return
    checkpoint = Path(active.checkpoint)
    try:
        dataset = read_yaml_mapping(checkpoint.parent.parent / "config.yaml").get("dataset")
    except ConfigError:
        dataset = None
    if not isinstance(dataset, str) or not dataset:
        log.info("activated %s: its run names no dataset, so no activation history was written", checkpoint)
        return
    dataset_id = Path(dataset).name
    incumbent = history.incumbent(dataset_id)
    history.record(
        Activation(
            dataset=dataset_id,
            action="manual",
            checkpoint=str(checkpoint),
            label=active.label,
            previous=incumbent.checkpoint if incumbent else None,
        )
    )
