"""`sam3lite trigger [--url URL] ACTION ...`: launch and follow `retrain` runs on a Dagster webserver.

    sam3lite trigger launch --dataset ID [--config run_config.yaml] [--tag k=v ...] [--wait]
    sam3lite trigger status RUN | logs RUN [--follow] | result RUN | list [--dataset ID] | cancel RUN

`launch` prints the run id (with `--wait`, then the run's progress and its final status); `result` prints one
JSON object. Exit status: 0 done, 1 the server refused or could not be reached, or the awaited run did not
succeed (`launch --wait`, `logs --follow`), 2 usage. Errors go to stderr as one `sam3lite trigger: ...` line
(an invalid run config adds one line per problem), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam3lite_core.train.config import ConfigError, read_yaml_mapping
from sam3lite_pipeline.trigger.client import LogEvent, RunInfo, TriggerClient, TriggerError

HELP = "launch and follow retrains on a Dagster webserver over GraphQL"
URL_ENV = "SAM3LITE_DAGSTER_URL"
DEFAULT_URL = "http://127.0.0.1:3000"
# What `launch --wait` shows besides INFO-and-above events (Dagster logs these step milestones at DEBUG).
_MILESTONES = frozenset({"STEP_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"})


class UsageError(ValueError):
    """A bad argument value that argparse cannot check (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"Dagster webserver root, path prefix included (default ${URL_ENV} or {DEFAULT_URL})",
    )
    parser.add_argument("--location", default="sam3lite", help="code location name (default sam3lite)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    launch = actions.add_parser("launch", help="register a dataset and launch its retrain")
    launch.add_argument("--dataset", required=True, metavar="ID", help="dataset id (the partition key)")
    launch.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="training config (run.yaml: max_epochs: 30 ...) or a whole Dagster run config "
        "(ops: {trained_model: {config: {...}}}, resources: ...), YAML or JSON",
    )
    launch.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="run tag (repeatable)")
    launch.add_argument("--wait", action="store_true", help="follow the run; exit 1 unless it succeeds")
    _add_poll(launch)

    actions.add_parser("status", help="one line: run id, status, job, dataset, times").add_argument("run_id")
    logs = actions.add_parser("logs", help="the run's event log")
    logs.add_argument("run_id")
    logs.add_argument("--follow", action="store_true", help="print until the run ends; exit 1 unless it succeeds")
    _add_poll(logs)
    actions.add_parser("result", help="checkpoint, metrics, gates, errors as JSON").add_argument("run_id")
    listing = actions.add_parser("list", help="recent runs, newest first")
    listing.add_argument("--dataset", metavar="ID", help="only this dataset's runs")
    listing.add_argument("--limit", type=int, default=20)
    actions.add_parser("cancel", help="terminate a run").add_argument("run_id")


def _add_poll(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between polls (default 2)")


def run(args: argparse.Namespace) -> int:
    client = TriggerClient(args.url, location=args.location, timeout=args.timeout)
    try:
        return _ACTIONS[args.action](client, args)
    except UsageError as exc:
        print(f"sam3lite trigger: {exc}", file=sys.stderr)
        return 2
    except TriggerError as exc:
        print(f"sam3lite trigger: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `sam3lite trigger logs RUN | head`: the reader is gone, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
        return 0
    except KeyboardInterrupt:
        print(
            "sam3lite trigger: stopped following; the run goes on (`sam3lite trigger cancel RUN` stops it)",
            file=sys.stderr,
        )
        return 130


def _launch(client: TriggerClient, args: argparse.Namespace) -> int:
    run_config = _read_run_config(args.config) if args.config else None
    run_id = client.launch(args.dataset, run_config, _parse_tags(args.tag))
    print(run_id, flush=True)
    return _follow(client, run_id, args.poll, progress_only=True) if args.wait else 0


def _status(client: TriggerClient, args: argparse.Namespace) -> int:
    print(_run_line(client.status(args.run_id)))
    return 0


def _logs(client: TriggerClient, args: argparse.Namespace) -> int:
    if args.follow:
        return _follow(client, args.run_id, args.poll, progress_only=False)
    for event in client.logs(args.run_id)[0]:
        print(_event_line(event))
    return 0


def _result(client: TriggerClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.result(args.run_id).to_dict(), indent=2))
    return 0


def _list(client: TriggerClient, args: argparse.Namespace) -> int:
    for info in client.list_runs(args.dataset, args.limit):
        print(_run_line(info))
    return 0


def _cancel(client: TriggerClient, args: argparse.Namespace) -> int:
    print(_run_line(client.cancel(args.run_id)))
    return 0


_ACTIONS: dict[str, Callable[[TriggerClient, argparse.Namespace], int]] = {
    "launch": _launch,
    "status": _status,
    "logs": _logs,
    "result": _result,
    "list": _list,
    "cancel": _cancel,
}


def _follow(client: TriggerClient, run_id: str, poll_s: float, progress_only: bool) -> int:
    for event in client.follow(run_id, poll_s=poll_s):
        if not progress_only or event.level != "DEBUG" or event.event_type in _MILESTONES:
            print(_event_line(event), flush=True)
    info = client.status(run_id)
    print(_run_line(info), flush=True)
    if info.status == "SUCCESS":
        return 0
    outcome = client.result(run_id)
    for gate in outcome.gates:
        if gate.passed is not True:
            state = "failed" if gate.passed is False else "not evaluated"
            print(f"gate {gate.check} on {gate.asset} {state}", file=sys.stderr)
    for error in outcome.errors:
        print(f"error: {_one_line(error)}", file=sys.stderr)
    return 1


DAGSTER_SECTIONS = {"ops", "resources", "execution", "loggers"}


def _read_run_config(path: Path) -> dict[str, Any]:
    try:
        config = read_yaml_mapping(path, "run config", "a mapping such as `ops: {trained_model: {config: ...}}`")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    # A training config (run.yaml, as `sam3lite train --config` reads it) goes under the training asset; a file
    # with Dagster's own top-level sections is passed as it is.
    if config and not set(config) & DAGSTER_SECTIONS:
        return {"ops": {"trained_model": {"config": config}}}
    return config


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {pair!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def _clock(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds)) if seconds is not None else "-"


def _run_line(info: RunInfo) -> str:
    return (
        f"{info.run_id} {info.status} job={info.job} dataset={info.dataset or '-'} "
        f"created={_clock(info.created)} started={_clock(info.started)} ended={_clock(info.ended)}"
    )


def _event_line(event: LogEvent) -> str:
    where = f" {event.step}:" if event.step else ""
    text = event.message or event.event_type or event.kind
    error = f" -- {_one_line(event.error)}" if event.error else ""
    return f"{_clock(event.timestamp)} {event.level}{where} {text}{error}"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
