"""`sam3lite up [--home DIR] [--host 127.0.0.1] [--port 8000] [--dagster-port 3000] [--base-checkpoint PATH]`:
the local stack in one command.

The Dagster webserver and daemon run on the instance under DIR/dagster_home with the sam3lite code location
(SAM3LITE_HOME=DIR: datasets DIR/datasets, runs DIR/runs, cache DIR/cache); the service answers the backend's
SAM3 routes (inference, models, training jobs, datasets, run storage) on --port. The backend's UI can point its
API root here. Ctrl-C or SIGTERM stops all of it, training included. The base checkpoint is the service's base
model and the weights the backend's training jobs start from.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sam3lite_core.commands.errors import explain_errors

if TYPE_CHECKING:
    from sam3lite_pipeline.api.staging import UploadLimits

HELP = "the local stack: Dagster webserver + daemon and the backend-compatible service (training jobs included)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home", default="sam3lite_home", metavar="DIR", help="datasets/, runs/, cache/, dagster_home/"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface both servers listen on (default loopback)")
    parser.add_argument("--port", type=int, default=8000, help="the service (the backend's API root)")
    parser.add_argument("--dagster-port", type=int, default=3000, help="the Dagster UI")
    parser.add_argument(
        "--base-checkpoint",
        default=os.environ.get("SAM3_CHECKPOINT_PATH"),
        metavar="PATH",
        help="base weights: served when no run is active, and where training jobs start (default: env "
        "SAM3_CHECKPOINT_PATH)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="the service's device")
    parser.add_argument("--upload-max-file-mb", type=float, default=100.0, help="largest uploaded file (MiB)")
    parser.add_argument("--upload-zip-max-gb", type=float, default=4.0, help="largest zip content, uncompressed (GiB)")
    parser.add_argument(
        "--upload-zip-max-ratio", type=float, default=100.0, help="largest expansion of a zip or of one entry"
    )
    parser.add_argument(
        "--upload-session-ttl-min",
        type=float,
        default=60.0,
        help="minutes after which an upload session with no batch is removed",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[o.strip() for o in os.environ.get("CORS_ALLOW_ORIGINS", "").split(",") if o.strip()],
        metavar="ORIGIN",
        help="a browser origin the backend's UI is served from, e.g. http://localhost:8000 (repeatable; default: "
        "env CORS_ALLOW_ORIGINS, comma-separated, as the backend reads it)",
    )


def run(args: argparse.Namespace) -> int:
    return explain_errors("sam3lite up", lambda: _up(args), invalid_exit=1)


class Stop(Exception):
    """SIGTERM: leave the way Ctrl-C does, through every `finally`."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stop()


def _upload_limits(args: argparse.Namespace) -> UploadLimits:
    from sam3lite_pipeline.api.staging import UploadLimits

    values = (args.upload_max_file_mb, args.upload_zip_max_gb, args.upload_zip_max_ratio, args.upload_session_ttl_min)
    if not all(value > 0 for value in values):
        raise ValueError(
            "--upload-max-file-mb, --upload-zip-max-gb, --upload-zip-max-ratio and --upload-session-ttl-min must be > 0"
        )
    return UploadLimits(
        max_file_bytes=int(args.upload_max_file_mb * 2**20),
        zip_max_bytes=int(args.upload_zip_max_gb * 2**30),
        zip_max_ratio=args.upload_zip_max_ratio,
        session_ttl_s=args.upload_session_ttl_min * 60,
    )


def _up(args: argparse.Namespace) -> int:
    import dagster as dg
    import uvicorn

    from sam3lite_core.distributed import pick_device
    from sam3lite_pipeline.api.app import ServiceSettings, create_up_app
    from sam3lite_pipeline.api.stack import StackSettings, dagster_stack
    from sam3lite_pipeline.resources import storage_from_env

    limits = _upload_limits(args)
    for port in (args.port, args.dagster_port):
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not between 1 and 65535")
    base = Path(args.base_checkpoint).resolve() if args.base_checkpoint else None
    if base is not None and not base.is_file():
        raise ValueError(f"--base-checkpoint {base} is not a file: give the path of sam3.pt or a sam3lite export")
    home = Path(args.home).resolve()
    stack = StackSettings(home=home, host=args.host, dagster_port=args.dagster_port, up_id=uuid.uuid4().hex)
    env = {**os.environ, "SAM3LITE_HOME": str(home)}
    for name in ("SAM3LITE_DATASETS", "SAM3LITE_RUNS", "SAM3LITE_CACHE"):
        env.pop(name, None)  # one home: the service and the code location must see the same roots
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        # Ctrl-C or SIGTERM ends the service; leaving the stack's block stops the rest.
        with contextlib.suppress(KeyboardInterrupt, Stop), dagster_stack(stack, env):
            instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
            settings = ServiceSettings(
                storage=storage_from_env(env),
                dagster_url=stack.url,
                base_checkpoint=base,
                device=str(pick_device(args.device)),
                cors_origins=tuple(args.cors_origin),
                upload_limits=limits,
            )
            app = create_up_app(settings, instance)
            print(
                f"sam3lite up: service http://{args.host}:{args.port} (the backend UI's API root), Dagster UI "
                f"{stack.url}, home {home}; Ctrl-C stops everything",
                flush=True,
            )
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except RuntimeError as exc:  # the code location did not load, or a server exited at its start
        print(f"sam3lite up: {exc}", file=sys.stderr)
        return 1
    print("sam3lite up: stopped", flush=True)
    return 0
