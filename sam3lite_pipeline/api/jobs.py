"""The backend's training jobs, read from Dagster: one job per run of a training job (`train`, `retrain`) and the
runs the instance retried for it.

The job id is the id of the first run (`dagster/root_run_id` of its retries). Status comes from the newest run of
the family, logs from the runs' event logs, metrics and progress from the run folder's metrics.csv and
progress.json (`metrics.py`), the result from the run folder. Nothing is kept in memory: a restart of `up` loses
no job, and the runs the sensor, the schedule or a person in the Dagster UI started are jobs too.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from sam3lite_core.serve.listing import run_checkpoint
from sam3lite_pipeline.api.metrics import job_metrics, job_progress
from sam3lite_pipeline.train_settings import RUN_NAME_TAG

TRAINING_JOBS = ("train", "retrain")
ROOT_TAG = "dagster/root_run_id"
ORIGIN_TAG = "sam3lite/origin"
NOTE_TAG = "sam3lite/request_note"
API_ORIGIN = "api"
LOG_LIMIT = 200  # log entries a job answers with, as the backend's ring
ERROR_LINES = 50  # lines after `last_logs:` in a failed job's error
LISTED_RUNS = 500  # newest runs per training job read for a listing
STATUS = {
    "QUEUED": "queued",
    "NOT_STARTED": "queued",
    "STARTING": "queued",
    "STARTED": "running",
    "MANAGED": "running",
    "CANCELING": "cancelling",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "CANCELED": "cancelled",
}
ACTIVE = frozenset({"queued", "running", "cancelling"})


@dataclass
class Job:
    """The runs of one job, oldest first."""

    runs: list[dg.RunRecord]

    @property
    def job_id(self) -> str:
        return self.runs[0].dagster_run.run_id

    @property
    def current(self) -> dg.DagsterRun:
        return self.runs[-1].dagster_run

    @property
    def status(self) -> str:
        return STATUS.get(self.current.status.value, "failed")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def run_name(self) -> str | None:
        return self.current.tags.get(RUN_NAME_TAG) or self.runs[0].dagster_run.tags.get(RUN_NAME_TAG)

    @property
    def created_at(self) -> float:
        return self.runs[0].create_timestamp.timestamp()


def list_jobs(instance: dg.DagsterInstance) -> list[Job]:
    """Every training job, newest first."""
    records: list[dg.RunRecord] = []
    for name in TRAINING_JOBS:
        records += instance.get_run_records(filters=dg.RunsFilter(job_name=name), limit=LISTED_RUNS)
    families: dict[str, list[dg.RunRecord]] = {}
    for record in sorted(records, key=lambda r: r.create_timestamp):
        root = record.dagster_run.tags.get(ROOT_TAG, record.dagster_run.run_id)
        families.setdefault(root, []).append(record)
    jobs = [Job(runs) for root, runs in families.items() if runs[0].dagster_run.run_id == root]
    return sorted(jobs, key=lambda job: job.created_at, reverse=True)


def find_job(instance: dg.DagsterInstance, job_id: str) -> Job | None:
    """The job whose first run is `job_id`, with its retries; None when there is no such training run."""
    first = instance.get_run_records(filters=dg.RunsFilter(run_ids=[job_id]), limit=1)
    if not first or first[0].dagster_run.job_name not in TRAINING_JOBS:
        return None
    retries = instance.get_run_records(filters=dg.RunsFilter(tags={ROOT_TAG: job_id}))
    return Job(sorted([*first, *retries], key=lambda r: r.create_timestamp))


def serialise(job: Job, instance: dg.DagsterInstance, runs_root: Path) -> dict[str, Any]:
    """The backend's job JSON."""
    logs = _logs(job, instance)
    run_dir = runs_root / job.run_name if job.run_name else None
    status = job.status
    updated = max(r.update_timestamp.timestamp() for r in job.runs)
    return {
        "job_id": job.job_id,
        "status": status,
        "progress": job_progress(run_dir, status),
        "message": _message(job, logs),
        "logs": logs[-LOG_LIMIT:],
        "metrics": job_metrics(run_dir, live=status == "running"),
        "result": run_result(run_dir) if status == "succeeded" and run_dir is not None else None,
        "error": _error(job, instance, logs) if status == "failed" else None,
        "created_at": job.created_at,
        "updated_at": updated,
    }


def _logs(job: Job, instance: dg.DagsterInstance) -> list[dict[str, Any]]:
    """The request's notes first, then every event with a message of every run of the job."""
    lines: list[tuple[float, str]] = []
    note = job.runs[0].dagster_run.tags.get(NOTE_TAG)
    if note:
        lines.append((job.created_at, note))
    for record in job.runs:
        for entry in instance.all_logs(record.dagster_run.run_id):
            text = _entry_text(entry)
            if text:
                lines.append((entry.timestamp, text))
    return [{"timestamp": ts, "message": text, "seq": seq} for seq, (ts, text) in enumerate(lines, start=1)]


def _entry_text(entry: dg.EventLogEntry) -> str:
    text = entry.user_message or ""
    event = entry.dagster_event
    if event is not None and event.event_specific_data is not None:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None and getattr(error, "message", None):
            text = f"{text}: {error.message.strip()}" if text else error.message.strip()
    step = entry.step_key
    return f"[{step}] {text}" if text and step else text


def _message(job: Job, logs: list[dict[str, Any]]) -> str:
    """The last log line (200 characters), prefixed with who started the run when it was not this API."""
    last = logs[-1]["message"][-200:] if logs else ""
    origin = _origin(job.runs[0].dagster_run.tags)
    return last if origin is None else f"[{origin}] {last}"[:200]


def _origin(tags: dict[str, str]) -> str | None:
    if tags.get(ORIGIN_TAG) == API_ORIGIN:
        return None
    if "dagster/sensor_name" in tags:
        return f"sensor {tags['dagster/sensor_name']}"
    if "dagster/schedule_name" in tags:
        return f"schedule {tags['dagster/schedule_name']}"
    return "Dagster UI or CLI"


def run_result(run_dir: Path) -> dict[str, Any] | None:
    """The backend's success result, from the run folder."""
    checkpoint = run_checkpoint(run_dir)
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "experiment_log_dir": str(run_dir),
        "config_path": str(run_dir / "config.yaml"),
        "enable_segmentation": False,
        "enable_segmentation_head": False,
        "load_segmentation": False,
        "balance_info": _balance_info(run_dir),
    }


def _balance_info(run_dir: Path) -> str | None:
    """The trainer's `[sam3-balance]` summary, which the backend copies into the result."""
    try:
        lines = (run_dir / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found = [line for line in lines if "sam3-balance" in line]
    return found[-1] if found else None


def _error(job: Job, instance: dg.DagsterInstance, logs: list[dict[str, Any]]) -> str:
    """`exit_code:<rc>[ (signal n: name)]` then `last_logs:` and the last lines, as the backend writes it."""
    code = _exit_code(job, instance)
    head = f"exit_code:{code}"
    if code < 0:
        try:
            head += f" (signal {-code}: {signal.Signals(-code).name})"
        except ValueError:
            head += f" (signal {-code})"
    tail = "\n".join(entry["message"] for entry in logs[-ERROR_LINES:])
    return f"{head}\nlast_logs:\n{tail}"


def _exit_code(job: Job, instance: dg.DagsterInstance) -> int:
    """The training processes' exit code when the launcher reported one (step failure metadata), else 1."""
    failures = instance.all_logs(job.current.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    for entry in reversed(failures):
        data = entry.dagster_event.step_failure_data if entry.dagster_event else None
        metadata = getattr(getattr(data, "user_failure_data", None), "metadata", None) or {}
        value = metadata.get("exit_code")
        if value is not None and isinstance(value.value, int):
            return value.value
    return 1
