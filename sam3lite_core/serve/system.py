"""The routes the backend's UI calls around SAM3, in the shapes it reads (ybat.js), each true of this service.

  GET  /sam_slots              the UI's connection test: [{slot, image_name, token, variant, width, height, busy,
                               last_loaded, enabled}], one per preload slot
  POST /sam_preload            {slot, sam_variant, image_name, image_token | image_base64, preload_generation}:
                               the image decoded into the token cache -> {status, width, height, token}
  GET  /sam3_runtime_options   {options: [{id, label, available, guidance, setup_command, ...}]}: PyTorch only
                               (the UI then disables its MLX runtimes, which this service does not have)
  GET  /system/health_summary  {ok, gpu, storage, datasets: {count}, models: {...}, errors}
  GET  /system/gpu, /system/storage_check   the parts of the summary, as the UI's self-test calls them

Nothing here writes: storage is checked with access(2), not a probe file.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any

import torch
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, model_validator

from sam3lite_core.serve.errors import ServiceError, check_variant
from sam3lite_core.serve.images import ImageCache
from sam3lite_core.serve.listing import run_entries
from sam3lite_core.serve.state import ModelState

SLOTS = ("current", "next", "previous")  # the backend's preload slots
RUNTIME = {
    "id": "torch",
    "label": "PyTorch (sam3lite, box-only)",
    "available": True,
    "installed": True,
    "reason": None,
    "guidance": "sam3lite runs SAM3 with PyTorch on this service's device; boxes only, no masks.",
    "setup_command": "pip install 'sam3lite[serve]'",
    "benchmark": {},
}


class PreloadRequest(BaseModel):
    """`POST /sam_preload`, the backend's SamPreloadRequest."""

    model_config = ConfigDict(extra="ignore")

    image_base64: str | None = None
    image_token: str | None = None
    sam_variant: str | None = None
    preload_generation: int | None = None
    image_name: str | None = None
    slot: str | None = "current"

    @model_validator(mode="after")
    def _payload(self) -> "PreloadRequest":
        if not self.image_base64 and not self.image_token:
            raise ValueError("image_payload_missing: send image_base64, or the image_token of an image sent before")
        if self.slot and self.slot != "current" and not self.image_name:
            raise ValueError("image_name_required_for_slot: a slot other than 'current' needs image_name")
        return self


class SlotBoard:
    """What each preload slot holds (the image, its token and size, when); thread-safe."""

    def __init__(self) -> None:
        self._slots: dict[str, dict[str, Any]] = {name: self._empty(name) for name in SLOTS}
        self._lock = threading.Lock()

    @staticmethod
    def _empty(name: str) -> dict[str, Any]:
        return {
            "slot": name,
            "image_name": None,
            "token": None,
            "variant": None,
            "width": None,
            "height": None,
            "busy": False,
            "last_loaded": 0.0,
            "enabled": True,
        }

    def hold(self, slot: str, image_name: str | None, token: str, width: int, height: int) -> None:
        with self._lock:
            self._slots[slot] = self._empty(slot) | {
                "image_name": image_name,
                "token": token,
                "variant": "sam3",
                "width": width,
                "height": height,
                "last_loaded": time.time(),
            }

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._slots.values()]


def gpu_payload() -> dict[str, Any]:
    """The CUDA devices this process sees (none: `available` false and an empty list)."""
    available = torch.cuda.is_available()
    devices = (
        [
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "total_mb": round(torch.cuda.get_device_properties(i).total_memory / 2**20),
            }
            for i in range(torch.cuda.device_count())
        ]
        if available
        else []
    )
    return {"available": available, "device_count": len(devices), "devices": devices}


def storage_payload(state: ModelState) -> dict[str, Any]:
    """The runs root: whether it exists and is writable (access(2), nothing written), and its free bytes."""
    root = state.runs_root
    exists = root.is_dir()
    writable = exists and os.access(root, os.W_OK | os.X_OK)
    free = shutil.disk_usage(root).free if exists else None
    return {
        "ok": bool(writable),
        "roots": [
            {"name": "sam3_runs", "path": str(root), "exists": exists, "writable": bool(writable), "free_bytes": free}
        ],
    }


def health_summary(state: ModelState) -> dict[str, Any]:
    """The backend's `/system/health_summary` shape; only SAM3 has models here."""
    serving = state.current()
    storage = storage_payload(state)
    errors = [] if storage["ok"] else ["storage_not_writable"]
    return {
        "ok": not errors,
        "gpu": gpu_payload(),
        "storage": storage,
        "datasets": {"count": 0},
        "models": {
            "qwen": {"loaded": False},
            "sam3_runs": len(run_entries(state.runs_root, serving.active)),
            "qwen_models": 0,
            "clip_classifiers": 0,
            "yolo_variants": 0,
            "rfdetr_variants": 0,
            "sam3": {"loaded": serving.predictor is not None, "active": serving.active.model_dump()},
        },
        "errors": errors,
    }


def system_routes(state: ModelState, images: ImageCache) -> APIRouter:
    """The routes of the module docstring over the service's model state and image cache."""
    router, slots = APIRouter(), SlotBoard()

    @router.get("/sam_slots")
    def sam_slots() -> list[dict[str, Any]]:
        return slots.rows()

    @router.post("/sam_preload")
    def sam_preload(body: PreloadRequest) -> dict[str, Any]:
        slot = body.slot or "current"
        if slot not in SLOTS:
            raise ServiceError(
                f"slot {slot!r} does not exist; use one of {', '.join(SLOTS)}", 409, code=f"slot_invalid:{slot}"
            )
        check_variant(body.sam_variant)
        pixels, token = images.resolve(body.image_base64, body.image_token)
        height, width = pixels.shape[:2]
        slots.hold(slot, body.image_name, token, width, height)
        return {
            "status": "ready",
            "width": width,
            "height": height,
            "token": token,
            "backend": "torch",
            "device": state.device,
            "image_cache_hit": not body.image_base64,
        }

    @router.get("/sam3_runtime_options")
    def sam3_runtime_options() -> dict[str, Any]:
        return {"options": [RUNTIME]}

    @router.get("/system/health_summary")
    def system_health_summary() -> dict[str, Any]:
        return health_summary(state)

    @router.get("/system/gpu")
    def system_gpu() -> dict[str, Any]:
        return gpu_payload()

    @router.get("/system/storage_check")
    def system_storage_check() -> dict[str, Any]:
        return storage_payload(state)

    return router
