"""The backend's run-storage routes over the runs root:

    GET    /sam3/storage/runs                         one row per run folder, newest first
    DELETE /sam3/storage/runs/{run}?scope=all|checkpoints|logs|dumps|tensorboard   {"deleted", "freed_bytes"}
    POST   /sam3/storage/runs/{run}/promote           {"promoted", "kept", "freed_bytes"}

A run is `active` while a queued or running job uses it, and then refuses deletion and promotion (409
sam3_run_active). Deleting the activated model's run is allowed, as in the backend: the service falls back to
its base weights. Symlinks are never followed: a symlinked run, folder or checkpoint is refused or skipped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Query

from sam3lite_core.serve.errors import ServiceError
from sam3lite_core.serve.listing import SKIPPED_RUN_NAMES, promotion, run_checkpoint
from sam3lite_pipeline.api.context import ApiContext, is_plain_name, remove, tree_size
from sam3lite_pipeline.api.jobs import list_jobs

# What each scope deletes inside a run folder. `logs` also takes our train.log; metrics.csv stays, it is the
# run's record (and the loss chart of its job).
SCOPES = {
    "checkpoints": ("checkpoints",),
    "logs": ("logs", "train.log"),
    "dumps": ("dumps",),
    "tensorboard": ("tensorboard",),
}
ACTIVE_CODE = "sam3_run_active"
TRAINER_STATE = ("optimizer", "optimizers", "lr_schedulers", "schedulers", "trainer", "scaler")


def active_runs(ctx: ApiContext) -> set[str]:
    return {job.run_name for job in list_jobs(ctx.instance) if job.active and job.run_name}


def run_rows(ctx: ApiContext) -> list[dict[str, Any]]:
    root = ctx.runs_root
    if root.is_symlink() or not root.is_dir():
        return []
    active = active_runs(ctx)
    runs = [
        run
        for run in root.iterdir()
        if run.name not in SKIPPED_RUN_NAMES and not run.name.startswith(".") and not run.is_symlink() and run.is_dir()
    ]
    runs.sort(key=lambda run: run.stat().st_mtime, reverse=True)
    return [_row(run, run.name in active) for run in runs]


def _row(run: Path, active: bool) -> dict[str, Any]:
    stat = run.stat()
    promoted, promoted_at = promotion(run)
    return {
        "id": run.name,
        "variant": "sam3",
        "path": str(run),
        "created_at": stat.st_ctime,
        "updated_at": stat.st_mtime,
        "size_bytes": tree_size(run),
        "checkpoints_size_bytes": tree_size(run / "checkpoints"),
        "logs_size_bytes": sum(tree_size(run / name) for name in SCOPES["logs"]),
        "tensorboard_size_bytes": tree_size(run / "tensorboard"),
        "dumps_size_bytes": tree_size(run / "dumps"),
        "checkpoints": _checkpoints(run),
        "active": active,
        "promoted": promoted,
        "promoted_at": promoted_at,
    }


def _checkpoints(run: Path) -> list[dict[str, Any]]:
    folder = run / "checkpoints"
    if folder.is_symlink() or not folder.is_dir():
        return []
    files = [(p, p.stat()) for p in folder.iterdir() if not p.is_symlink() and p.is_file()]
    files.sort(key=lambda item: item[1].st_mtime, reverse=True)
    return [{"file": p.name, "path": str(p), "size_bytes": st.st_size, "updated_at": st.st_mtime} for p, st in files]


def run_folder(ctx: ApiContext, run_id: str) -> Path:
    """The run folder `run_id` names; 400 invalid_run_id, 404 sam3_run_not_found, 409 sam3_run_active."""
    root = ctx.runs_root
    if not is_plain_name(run_id) or run_id in SKIPPED_RUN_NAMES or root.is_symlink() or (root / run_id).is_symlink():
        raise ServiceError(f"{run_id[:200]!r} does not name a run folder", 400, "invalid_run_id")
    run = root / run_id
    if not run.is_dir():
        raise ServiceError(f"no run {run_id!r} under {root}", 404, "sam3_run_not_found")
    if run_id in active_runs(ctx):
        raise ServiceError(
            f"run {run_id!r} is in use by a queued or running job: cancel it first", 409, "sam3_run_active"
        )
    return run


def delete_run(ctx: ApiContext, run_id: str, scope: str) -> dict[str, Any]:
    if scope != "all" and scope not in SCOPES:
        raise ServiceError(f"scope {scope[:50]!r} is not one of all, {', '.join(SCOPES)}", 400, "invalid_scope")
    run = run_folder(ctx, run_id)
    targets = [run] if scope == "all" else [run / name for name in SCOPES[scope]]
    deleted, freed = [], 0
    for target in targets:
        if target.exists() or target.is_symlink():
            freed += tree_size(target)
            remove(target)
            deleted.append(str(target))
    ctx.models.drop_missing_checkpoint()  # the active model's file may be gone: back to the base weights
    return {"deleted": deleted, "freed_bytes": freed}


def promote_run(ctx: ApiContext, run_id: str) -> dict[str, Any]:
    """Keep the checkpoint activation uses (the active model's, when it is in this run), without trainer state;
    delete the other checkpoints; write the `.promoted` marker."""
    run = run_folder(ctx, run_id)
    folder = run / "checkpoints"
    if folder.is_symlink() or not folder.is_dir():
        raise ServiceError(f"run {run_id!r} has no checkpoints folder", 404, "sam3_checkpoint_dir_missing")
    active = ctx.models.current().active.checkpoint
    keep = Path(active) if active and Path(active).parent == folder else run_checkpoint(run)
    if keep is None or not keep.is_file():
        raise ServiceError(f"run {run_id!r} has no checkpoint to keep", 404, "sam3_checkpoints_missing")
    freed = _strip_trainer_state(keep)
    for other in folder.iterdir():
        if other != keep:
            freed += tree_size(other)
            remove(other)
    marker = run / ".promoted"
    if marker.is_symlink():
        marker.unlink()
    _write_atomic(marker, json.dumps({"keep": str(keep), "timestamp": time.time()}))
    return {"promoted": True, "kept": str(keep), "freed_bytes": freed}


def _strip_trainer_state(path: Path) -> int:
    """Rewrite `path` without optimiser, scheduler and trainer entries (atomically); the bytes saved."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not any(key in state for key in TRAINER_STATE):
        return 0
    before = path.stat().st_size
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v for k, v in state.items() if k not in TRAINER_STATE}, tmp)
    os.replace(tmp, path)
    return max(before - path.stat().st_size, 0)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def storage_routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()

    @router.get("/sam3/storage/runs")
    def runs(variant: str = Query("sam3", max_length=64)) -> list[dict[str, Any]]:
        return run_rows(ctx)

    @router.delete("/sam3/storage/runs/{run_id}")
    def delete(
        run_id: str, variant: str = Query("sam3", max_length=64), scope: str = Query("all", max_length=64)
    ) -> dict[str, Any]:
        return delete_run(ctx, run_id, scope)

    @router.post("/sam3/storage/runs/{run_id}/promote")
    def promote(run_id: str, variant: str = Query("sam3", max_length=64)) -> dict[str, Any]:
        return promote_run(ctx, run_id)

    return router
