"""The backend's training-job routes over Dagster runs:

POST /sam3/train/jobs                 Sam3TrainRequest -> {"job_id"}: a queued run of `train` (`retrain` with
                                      auto_activate) for the dataset's partition
GET  /sam3/train/jobs                 every training job, newest first
GET  /sam3/train/jobs/{id}            one job (404 sam3_job_not_found)
POST /sam3/train/jobs/{id}/cancel     {"status"}; 428 job_not_cancellable once it has ended
GET  /sam3/train/cache_size           {"bytes"} of the conversion cache
POST /sam3/train/cache/purge          {"status", "deleted_bytes", "deleted_entries"}; 409 while a job is active
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from sam3lite_core.serve.errors import ServiceError
from sam3lite_pipeline.api.context import ApiContext, remove, tree_size
from sam3lite_pipeline.api.datasets import refusal, resolve_dataset, scan
from sam3lite_pipeline.api.jobs import API_ORIGIN, NOTE_TAG, ORIGIN_TAG, STATUS, find_job, list_jobs, serialise
from sam3lite_pipeline.api.request import Sam3TrainRequest, plan_job
from sam3lite_pipeline.train_settings import RUN_NAME_TAG
from sam3lite_pipeline.trigger.client import TriggerError

LISTED_JOBS = 100  # jobs GET /sam3/train/jobs answers with, newest first


def create_job(ctx: ApiContext, request: Sam3TrainRequest) -> dict[str, str]:
    folder = resolve_dataset(ctx, request.dataset_id)
    report = scan(ctx, folder)
    refused = refusal(report)
    if refused is not None:
        raise refused
    if report.counts.images < 2:
        raise ServiceError(
            f"dataset {folder.name!r} has {report.counts.images} usable image(s): a train and a val split need at "
            f"least two",
            400,
            "sam3_training_split_empty",
        )
    plan = plan_job(
        request,
        ctx.runs_root,
        folder,
        ctx.storage.train_defaults_file,
        ctx.base_checkpoint,
        f"sam3_run_{uuid.uuid4().hex}",
    )
    tags = {ORIGIN_TAG: API_ORIGIN, RUN_NAME_TAG: plan.run_name}
    if plan.notes:
        tags[NOTE_TAG] = "request: " + "; ".join(plan.notes)
    with ctx.launch_lock:  # the name check and the launch together: two requests cannot take one name
        taken = (ctx.runs_root / plan.run_name).exists() or any(
            job.active and job.run_name == plan.run_name for job in list_jobs(ctx.instance)
        )
        if taken:
            raise ServiceError(f"run {plan.run_name!r} exists already: choose another run_name", 409, "run_name_exists")
        job = "retrain" if request.auto_activate else "train"
        run_id = _dagster(lambda: ctx.client(job).launch(folder.name, plan.run_config(), tags))
    return {"job_id": run_id}


def cancel_job(ctx: ApiContext, job_id: str) -> dict[str, str]:
    job = _job(ctx, job_id)
    if not job.active:
        raise ServiceError(f"job {job_id} has ended ({job.status}): nothing to cancel", 428, "job_not_cancellable")
    info = _dagster(lambda: ctx.client(job.current.job_name).cancel(job.current.run_id))
    status = STATUS.get(info.status, "cancelling")
    return {"status": "cancelling" if status in ("running", "queued") else status}


def purge_cache(ctx: ApiContext) -> dict[str, Any]:
    """Delete the conversion and scan caches; the next conversion runs again whatever Dagster recorded."""
    if any(job.active for job in list_jobs(ctx.instance)):
        raise ServiceError(
            "a training job is queued or running and reads the cache: purge after it ends",
            409,
            "sam3_cache_purge_blocked_active_jobs",
        )
    cache = ctx.storage.cache_dir
    entries = sorted(cache.iterdir()) if cache.is_dir() and not cache.is_symlink() else []
    freed = 0
    for child in entries:
        freed += tree_size(child)
        remove(child)
    return {"status": "ok", "deleted_bytes": freed, "deleted_entries": len(entries)}


def _job(ctx: ApiContext, job_id: str) -> Any:
    job = find_job(ctx.instance, job_id) if len(job_id) <= 64 else None
    if job is None:
        raise ServiceError(f"no training job {job_id[:200]!r}", 404, "sam3_job_not_found")
    return job


def _dagster(call: Any) -> Any:
    try:
        return call()
    except TriggerError as exc:
        raise ServiceError(f"Dagster refused or could not be reached: {exc}", 503, "sam3_dagster_unavailable") from None


def training_routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()

    @router.post("/sam3/train/jobs")
    def start(request: Sam3TrainRequest) -> dict[str, str]:
        return create_job(ctx, request)

    @router.get("/sam3/train/jobs")
    def jobs() -> list[dict[str, Any]]:
        return [serialise(job, ctx.instance, ctx.runs_root) for job in list_jobs(ctx.instance)[:LISTED_JOBS]]

    @router.get("/sam3/train/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return serialise(_job(ctx, job_id), ctx.instance, ctx.runs_root)

    @router.post("/sam3/train/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, str]:
        return cancel_job(ctx, job_id)

    @router.get("/sam3/train/cache_size")
    def cache_size() -> dict[str, int]:
        return {"bytes": tree_size(ctx.storage.cache_dir)}

    @router.post("/sam3/train/cache/purge")
    def purge() -> dict[str, Any]:
        return purge_cache(ctx)

    return router
