"""`sam3lite serve [--host 127.0.0.1] [--port 8000] [--runs-root DIR] [--base-checkpoint PATH]`.

Serves the backend-compatible SAM3 endpoints (sam3lite_core/serve/app.py) with uvicorn. The active checkpoint
is the one recorded in `<runs-root>/active_model.json` (kept across restarts, and followed when another process
rewrites it), else --base-checkpoint (default: env SAM3_CHECKPOINT_PATH), which activation also accepts by its
path or as `checkpoint_path: null`. SAM3LITE_SERVE_TOKEN, when set, requires `Authorization: Bearer <token>` on
activation; the backend's UI sends no such header, so set it only where the service is reachable beyond the
UI's users (the pipeline's `tator` backend mode sends it).
"""

from __future__ import annotations

import argparse
import os

from sam3lite_core.cache_budget import DEFAULT_CACHE_BYTES
from sam3lite_core.commands.errors import explain_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--runs-root", default="runs", metavar="DIR", help="run folders that may be activated")
    parser.add_argument(
        "--base-checkpoint",
        default=os.environ.get("SAM3_CHECKPOINT_PATH"),
        metavar="PATH",
        help="weights served when no run is active (default: env SAM3_CHECKPOINT_PATH)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=100.0,
        help="largest accepted image (MiB; default 100, the backend's limit)",
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=DEFAULT_CACHE_BYTES / 2**20,
        help="memory for decoded images and image features together (MiB; default 1024): bounds the service's "
        "memory whatever the requests",
    )


def run(args: argparse.Namespace) -> int:
    return explain_errors("sam3lite serve", lambda: _serve(args), invalid_exit=1)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sam3lite_core.distributed import pick_device
    from sam3lite_core.serve.app import create_app

    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if not args.cache_mb >= 0:
        raise ValueError(f"--cache-mb must be >= 0, got {args.cache_mb}")
    app = create_app(
        args.runs_root,
        base_checkpoint=args.base_checkpoint,
        device=str(pick_device(args.device)),
        precision=args.precision,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        cache_bytes=int(args.cache_mb * 2**20),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
