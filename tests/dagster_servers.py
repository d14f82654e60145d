"""A real `dagster-webserver` (and optionally `dagster-daemon run`) on 127.0.0.1 for tests.

    with dagster_server(home=tmp_path / "home", module="trigger_defs", working_directory=TESTS) as server:
        requests.post(server.graphql_url, json={"query": ...})
    # the real location, its production instance settings, the daemon's run queue:
    with dagster_server(home=..., workspace=ROOT / "workspace.yaml", daemon=True,
                        instance_config=(ROOT / "deploy" / "dagster.yaml").read_text()) as server: ...

Each process starts in its own session with SIGINT/SIGTERM at their defaults: a process started from a
non-interactive shell inherits SIGINT=ignored, and Dagster maps SIGTERM onto its SIGINT handler, so both would be
ignored and the server could not be stopped (reference/dagster_facts.md s.4). Stopping sends SIGTERM to each
process group (webserver, code server, run workers alike) at once, SIGKILLs what is left after a grace period and
asserts that nothing of the groups survives. A process that run code starts in a session of its own (the training
launcher's process group) is outside these groups: stopping it is that code's job. Linux only: group
membership is read from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from sam3lite_pipeline.api.stack import group_members, start, wait_until_loaded


def instance_yaml(daemon: bool) -> str:
    """dagster.yaml for a test instance: without a daemon nothing would dequeue runs, so launch them directly."""
    config: dict = {"telemetry": {"enabled": False}}
    if not daemon:
        config["run_coordinator"] = {
            "module": "dagster._core.run_coordinator",
            "class": "DefaultRunCoordinator",
        }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class DagsterServer:
    url: str
    home: Path
    location: str
    log_path: Path

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def dagster_server(
    *,
    home: Path,
    workspace: Path | None = None,
    module: str | None = None,
    attribute: str = "defs",
    location: str = "sam3lite",
    working_directory: Path | None = None,
    daemon: bool = False,
    instance_config: str | None = None,
    env: dict[str, str] | None = None,
    start_timeout_s: float = 120.0,
    stop_timeout_s: float = 20.0,
) -> Iterator[DagsterServer]:
    """Serve `workspace` (a workspace.yaml) or `module`.`attribute` as location `location` from DAGSTER_HOME
    `home`, which gets `instance_config` (default: `instance_yaml(daemon)`) as its dagster.yaml."""
    if (workspace is None) == (module is None):
        raise ValueError("pass exactly one of workspace= or module=")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_config if instance_config is not None else instance_yaml(daemon))
    # Create the instance's SQLite storages here: a webserver and a daemon that both find them missing migrate
    # them at once and can fail with "Version table 'alembic_version' has more than one head present".
    dg.DagsterInstance.from_config(str(home)).dispose()
    if workspace is None:
        entry = {"module_name": module, "attribute": attribute, "location_name": location}
        if working_directory is not None:
            entry["working_directory"] = str(working_directory)
        workspace = home / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": entry}]}, sort_keys=False))
    child_env = {**os.environ, "DAGSTER_HOME": str(home), **(env or {})}
    port = free_port()
    server = DagsterServer(f"http://127.0.0.1:{port}", home, location, home / "webserver.log")
    started: list[subprocess.Popen] = []
    try:
        webserver = start(
            ["dagster-webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)], child_env, server.log_path
        )
        started.append(webserver)
        if daemon:
            started.append(start(["dagster-daemon", "run", "-w", str(workspace)], child_env, home / "daemon.log"))
        wait_until_loaded(server.url, webserver, server.log_path, start_timeout_s, location=server.location)
        yield server
    finally:
        _stop_groups(started, stop_timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_groups(procs: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every group first, then wait: the servers shut down side by side, not one after the other."""
    groups = [proc.pid for proc in procs]  # a session leader leads its own process group
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    while any(group_members(pgid) for pgid in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    if any(group_members(pgid) for pgid in groups):
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=10)
        time.sleep(0.5)
    left = {pgid: members for pgid in groups if (members := group_members(pgid))}
    assert not left, f"processes of the servers' groups survived SIGKILL: {left}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def process_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead child its parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
