"""The Dagster half of `sam3lite up`: the webserver and the daemon on the instance under `<home>/dagster_home`,
started so that they can be stopped, and stopped so that nothing is left.

Each process starts in a session of its own with SIGINT/SIGTERM at their defaults (a process started from a
non-interactive shell inherits SIGINT ignored, and Dagster maps SIGTERM onto its SIGINT handler: both would be
ignored, reference/dagster_facts.md s.4). Every process `up` starts, and everything they start, inherits
SAM3LITE_UP_ID; training runs in a session of its own (ops/launcher.py), so the last step of a stop is a sweep
of every process that carries this `up`'s id. Runs the stop cut off are then marked failed in the instance, so a
job never reads `running` forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import requests
import yaml

UP_ID_ENV = "SAM3LITE_UP_ID"
LOCATION = "sam3lite"
_EXEC_WITH_DEFAULT_SIGNALS = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)
DEPLOY_INSTANCE = Path(__file__).resolve().parents[2] / "deploy" / "dagster.yaml"
# Used when the package is installed without the repository's deploy/ folder: the queue, one `gpu` slot.
FALLBACK_INSTANCE = {"concurrency": {"pools": {"default_limit": 1}}, "telemetry": {"enabled": False}}
CUT_OFF = ("STARTING", "STARTED", "CANCELING")
_WORKSPACE_STATUS = """
query { workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } ... on PythonError { message } } }
"""


@dataclass(frozen=True)
class StackSettings:
    home: Path
    host: str
    dagster_port: int
    up_id: str
    start_timeout_s: float = 300.0
    stop_grace_s: float = 45.0  # longer than the launcher's termination grace: training saves, then exits

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.dagster_port}"


def prepare_home(settings: StackSettings) -> Path:
    """The home's folders, instance config and workspace; returns the workspace file."""
    for sub in ("datasets", "runs", "cache", "dagster_home"):
        (settings.home / sub).mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        text = DEPLOY_INSTANCE.read_text() if DEPLOY_INSTANCE.is_file() else yaml.safe_dump(FALLBACK_INSTANCE)
        config.write_text(text)
    workspace = settings.dagster_home / "workspace.yaml"
    entry = {"module_name": "sam3lite_pipeline.definitions", "attribute": "defs", "location_name": LOCATION}
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": entry}]}, sort_keys=False))
    # Migrate the SQLite storages once here: a webserver and a daemon that both find them missing race.
    dg.DagsterInstance.from_config(str(settings.dagster_home)).dispose()
    return workspace


@contextmanager
def dagster_stack(settings: StackSettings, env: Mapping[str, str]) -> Iterator[None]:
    """The webserver and the daemon, running until the block ends; then everything stopped (see the docstring)."""
    workspace = prepare_home(settings)
    mark_cut_off_runs(settings.dagster_home, "a previous `sam3lite up` stopped while it ran")
    child_env = {**env, "DAGSTER_HOME": str(settings.dagster_home), UP_ID_ENV: settings.up_id}
    logs = settings.home / "logs"
    logs.mkdir(exist_ok=True)
    started: list[subprocess.Popen] = []
    try:
        webserver = ["dagster-webserver", "-w", str(workspace), "-h", settings.host, "-p", str(settings.dagster_port)]
        started.append(start(webserver, child_env, logs / "dagster-webserver.log"))
        started.append(start(["dagster-daemon", "run", "-w", str(workspace)], child_env, logs / "dagster-daemon.log"))
        wait_until_loaded(settings.url, started[0], logs / "dagster-webserver.log", settings.start_timeout_s)
        yield
    finally:
        stop_groups(started, settings.stop_grace_s)
        sweep(settings.up_id)
        mark_cut_off_runs(settings.dagster_home, "`sam3lite up` was stopped while this run was going")


def start(argv: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    script = Path(sys.executable).parent / argv[0]  # this environment's console script, not one on PATH
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_DEFAULT_SIGNALS, str(script), *argv[1:]],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_until_loaded(
    url: str, webserver: subprocess.Popen, log_path: Path, timeout_s: float, location: str = LOCATION
) -> None:
    """Until the webserver at `url` answers with `location` loaded; RuntimeError with the log's tail when it exits
    or times out, and at once when the workspace or the location failed to load or the location is missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        if webserver.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {webserver.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"code location {location!r} not loaded after {timeout_s:.0f} s:\n{_tail(log_path)}")
        if _loaded(url, location):
            return
        time.sleep(0.25)


def _loaded(url: str, location: str) -> bool:
    try:
        answer = requests.post(f"{url}/graphql", json={"query": _WORKSPACE_STATUS}, timeout=30).json()
    except (requests.RequestException, ValueError):
        return False  # not listening yet
    workspace = answer["data"]["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        raise RuntimeError(f"workspace failed to load: {workspace['message']}")
    entries = workspace["locationEntries"]
    names = [entry["name"] for entry in entries]
    if location not in names and all(entry["loadStatus"] == "LOADED" for entry in entries):
        raise RuntimeError(f"the workspace has no location {location!r}, only {names}")
    for entry in entries:
        if entry["name"] != location or entry["loadStatus"] != "LOADED":
            continue
        loaded = entry["locationOrLoadError"]
        if loaded is not None and loaded["__typename"] == "PythonError":
            raise RuntimeError(f"code location {location!r} failed to load: {loaded['message']}")
        return loaded is not None
    return False


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def stop_groups(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to every group at once (run workers stop their training), SIGKILL what is left after `grace_s`."""
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(group_members(proc.pid) for proc in procs) and time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap an exited leader, or it stays in its group as a zombie
        time.sleep(0.2)
    for proc in procs:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def sweep(up_id: str) -> list[int]:
    """SIGKILL every process whose environment carries `up_id` (Linux /proc); the pids killed."""
    killed = []
    needle = f"{UP_ID_ENV}={up_id}".encode()
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if needle in environ.split(b"\0") and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def mark_cut_off_runs(dagster_home: Path, why: str) -> None:
    """Runs the instance still has as starting, started or cancelling, with no `up` left to run them: failed
    (cancelling ones: cancelled)."""
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        statuses = [dg.DagsterRunStatus(status) for status in CUT_OFF]
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=statuses)):
            if run.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, message=why)
            else:
                instance.report_run_failed(run, message=why)
    finally:
        instance.dispose()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def _pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []  # no /proc: nothing to sweep


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(pid)
    return members
