"""The training launcher: runs the training entry (torchrun for more than one process) under Dagster Pipes, in a
process group of its own, so that the whole tree can be stopped.

Dagster's PipesSubprocessClient forwards a cancellation to its direct child only; torchrun's workers would be
left running with the GPU (reference/dagster_facts.md section 6). Here the child starts a new session, and a
cancellation, the wall-clock limit or any error on our side sends SIGTERM to the child (training saves last.ckpt
at the end of its step and exits; torchrun forwards the signal to its workers), then SIGKILL to whatever of the
group is left. Checkpoints are never torn: they are written to a temporary file and renamed. The child's
stdout/stderr go to the step's captured logs as they come; the last lines are kept for the error message when it
exits non-zero.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from sam3lite_core.distributed import LaunchSettings, launch_command
from sam3lite_pipeline.render import code_block
from sam3lite_pipeline.resources import TrainLauncher

LAUNCH_ID_ENV = "SAM3LITE_LAUNCH_ID"  # set in every training process; tests and operators find the tree by it
ENTRY = ("-m", "sam3lite_pipeline.ops.train_entry")
TAIL_LINES = 40


@dataclass(frozen=True)
class Launched:
    """What came back from a finished training process tree."""

    launch_id: str
    pid: int
    wall_s: float
    custom_messages: list[Any]


def training_command(launcher: TrainLauncher, config_file: str) -> list[str]:
    """The command line of the training entry for `config_file`, torchrun when there is more than one process."""
    layout = LaunchSettings(
        nproc_per_node=launcher.nproc_per_node,
        nnodes=launcher.nnodes,
        node_rank=launcher.node_rank,
        master_addr=launcher.master_addr,
        master_port=launcher.master_port,
    )
    return launch_command(layout, [*ENTRY, "--config", config_file])


def stop_group(pgid: int, process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the leader, SIGKILL to whatever of the group is left once it is gone or after `grace_s`.

    The leader is the training process (it saves last.ckpt at the end of the step and exits) or torchrun, which
    forwards SIGTERM to its workers and waits for them. Signalling the whole group at once would also kill the
    data-loader workers under a training process before it reaches the end of its step.
    """
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=grace_s)
    _signal_group(pgid, signal.SIGKILL)
    process.wait()  # reap the leader, or it stays in the group as a zombie


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _pump(stream: Any, tail: collections.deque[str]) -> None:
    """Copy the child's output to our stdout (the step's captured logs) and keep the last lines."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        tail.append(line.rstrip("\n"))


def launch_training(
    context: dg.AssetExecutionContext,
    launcher: TrainLauncher,
    command: Sequence[str],
    *,
    extras: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Launched:
    """Run `command` in its own process group inside a Pipes session; raise dg.Failure when it exits non-zero
    or passes the wall-clock limit, and stop the whole group on cancellation or any error here."""
    launch_id = uuid.uuid4().hex
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with dg.open_pipes_session(
        context=context,
        context_injector=dg.PipesEnvContextInjector(),
        message_reader=dg.PipesTempFileMessageReader(),
        extras=dict(extras or {}),
    ) as session:
        started = time.monotonic()
        process = subprocess.Popen(
            list(command),
            env={**os.environ, **(env or {}), **session.get_bootstrap_env_vars(), LAUNCH_ID_ENV: launch_id},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: torchrun and its workers go down together
        )
        pgid = process.pid
        context.log.info(
            f"training started: pid {process.pid} (process group {pgid}), {LAUNCH_ID_ENV}={launch_id}: "
            f"{' '.join(command)}"
        )
        pump = threading.Thread(target=_pump, args=(process.stdout, tail), daemon=True)
        pump.start()
        try:
            _supervise(process, pgid, launcher, started, tail)
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
            context.log.warning(f"run cancelled: stopping training process group {pgid}")
            stop_group(pgid, process, launcher.termination_grace_s)
            raise
        finally:
            if process.poll() is None:
                stop_group(pgid, process, launcher.termination_grace_s)
            pump.join(timeout=5)
        wall_s = time.monotonic() - started
        _check_exit(process, pgid, launcher, wall_s, tail)
    return Launched(launch_id, process.pid, wall_s, list(session.get_custom_messages()))


def _supervise(
    process: subprocess.Popen, pgid: int, launcher: TrainLauncher, started: float, tail: collections.deque[str]
) -> None:
    """Wait for the leader to exit; past the wall-clock limit, stop the group and raise dg.Failure."""
    limit_s = launcher.wall_clock_limit_minutes * 60 if launcher.wall_clock_limit_minutes else None
    while process.poll() is None:
        if limit_s is not None and time.monotonic() - started > limit_s:
            stop_group(pgid, process, launcher.termination_grace_s)
            raise dg.Failure(
                description=f"training passed the launcher's wall-clock limit of "
                f"{launcher.wall_clock_limit_minutes:g} min and was stopped; the last complete checkpoint "
                f"is kept. Raise TrainLauncher.wall_clock_limit_minutes or lower time_limit_minutes.",
                metadata={"last_lines": dg.MetadataValue.md(code_block("\n".join(tail)))},
            )
        time.sleep(0.5)  # short sleeps: a cancellation interrupts us between them


def _check_exit(
    process: subprocess.Popen, pgid: int, launcher: TrainLauncher, wall_s: float, tail: collections.deque[str]
) -> None:
    """dg.Failure with the last lines for a non-zero exit; after a clean exit, stop what is left of the group."""
    if process.returncode != 0:
        raise dg.Failure(
            description=f"training exited with code {process.returncode} after {wall_s:.0f} s; last lines:\n"
            + "\n".join(list(tail)[-15:]),
            metadata={"last_lines": dg.MetadataValue.md(code_block("\n".join(tail))), "exit_code": process.returncode},
        )
    # Stragglers after a clean exit (a worker that ignored torchrun's teardown) must not outlive the step.
    if _group_alive(pgid):
        stop_group(pgid, process, launcher.termination_grace_s)
