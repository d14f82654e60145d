"""Launch, follow, inspect and cancel `retrain` runs on a Dagster webserver over its GraphQL API.

A backend needs no GraphQL knowledge: `TriggerClient(url).launch("my_dataset")` registers the dataset as a
partition of `datasets` and launches the job with that partition; `follow`, `wait`, `result` and `cancel` take
the run id it returns. Only `requests` is needed (no dagster import), so a backend can vendor this file.

The GraphQL it sends is in `documents.py` (a backend vendoring the client copies both files). Anything
that kept a request from doing what was asked raises `TriggerError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

from sam3lite_pipeline.trigger.documents import (
    ADD_DYNAMIC_PARTITION,
    LAUNCH_RUN,
    LIST_RUNS,
    RUN_LOGS,
    RUN_OUTCOME_EVENTS,
    RUN_RESULT,
    RUN_STATUS,
    TERMINATE_RUN,
)

PARTITION_TAG = "dagster/partition"
ACTIVATION_ASSET = "active_checkpoint"  # its materialisation in a run means the candidate went into service
TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
_PAGE = 1000  # events per logsForRun request


class TriggerError(RuntimeError):
    """The server refused or could not be reached. `kind` is the GraphQL error type (RunConfigValidationInvalid,
    RunNotFoundError, PipelineNotFoundError, PythonError, ...) or ConnectionError / Timeout / HTTPError /
    GraphQLError; `details` lists one line per problem where there are several (invalid run config)."""

    def __init__(self, message: str, kind: str = "", details: Sequence[str] = ()):
        super().__init__(message)
        self.kind = kind
        self.details = tuple(details)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str  # Dagster's RunStatus: QUEUED, STARTING, STARTED, ..., SUCCESS, FAILURE, CANCELED
    job: str
    dataset: str | None  # the partition key
    created: float  # seconds since the epoch
    started: float | None
    ended: float | None
    tags: dict[str, str]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class LogEvent:
    kind: str  # GraphQL event type, e.g. LogMessageEvent, ExecutionStepFailureEvent
    event_type: str | None  # Dagster's event type, e.g. STEP_START; None for log messages
    level: str
    message: str
    step: str | None
    timestamp: float  # seconds since the epoch
    error: str | None = None


@dataclass(frozen=True)
class Materialization:
    asset: str  # asset key path joined by "/"
    partition: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Gate:
    asset: str
    check: str
    passed: bool | None  # None: planned but not evaluated (an upstream step failed or the run was cancelled)
    severity: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunResult:
    run: RunInfo
    checkpoint: str | None  # `checkpoint` metadata of the most downstream materialisation that has one
    activated: bool  # whether `active_checkpoint` was materialised by this run
    metrics: dict[str, float]  # numeric metadata of every materialisation by label, downstream values win
    gates: list[Gate]
    materializations: list[Materialization]
    errors: list[str]  # why the run failed: step errors, then the run failure message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TriggerClient:
    """GraphQL client for the `retrain` job of one code location. `url` is the webserver root, path prefix
    included (e.g. http://127.0.0.1:3000 or https://host/dagster); `timeout` is per HTTP request in seconds;
    `headers` go with every request (e.g. the credentials of an authenticating proxy)."""

    def __init__(
        self,
        url: str,
        location: str = "sam3lite",
        repository: str = "__repository__",
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        job: str = "retrain",
        partitions_def: str = "datasets",
    ):
        self.url = url.rstrip("/")
        self.repository_selector = {"repositoryLocationName": location, "repositoryName": repository}
        self.timeout = timeout
        self.job = job
        self.partitions_def = partitions_def
        self._session = requests.Session()
        self._session.headers.update(headers or {})

    def add_dataset(self, dataset: str) -> bool:
        """Register `dataset` as a partition; False when it already was one."""
        answer = self._execute(
            ADD_DYNAMIC_PARTITION,
            {
                "partitionKey": dataset,
                "partitionsDefName": self.partitions_def,
                "repositorySelector": self.repository_selector,
            },
        )["addDynamicPartition"]
        if answer["__typename"] == "DuplicateDynamicPartitionError":
            return False
        _raise_unless(
            answer,
            "AddDynamicPartitionSuccess",
            f"cannot add dataset {dataset!r} to partitions "
            f"{self.partitions_def!r} of location {self.repository_selector['repositoryLocationName']!r}",
        )
        return True

    def launch(
        self, dataset: str, run_config: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Launch the job on partition `dataset` and return the run id. `run_config` is Dagster run config,
        e.g. {"ops": {"trained_model": {"config": {...}}}}."""
        # A partition key the instance does not know is accepted at launch and fails the run seconds later.
        self.add_dataset(dataset)
        all_tags = {**(tags or {}), PARTITION_TAG: dataset}
        answer = self._execute(
            LAUNCH_RUN,
            {
                "executionParams": {
                    "selector": {**self.repository_selector, "jobName": self.job},
                    "runConfigData": dict(run_config or {}),
                    "executionMetadata": {"tags": [{"key": k, "value": str(v)} for k, v in all_tags.items()]},
                }
            },
        )["launchRun"]
        _raise_unless(answer, "LaunchRunSuccess", f"cannot launch job {self.job!r} on dataset {dataset!r}")
        return answer["run"]["runId"]

    def status(self, run_id: str) -> RunInfo:
        run = self._execute(RUN_STATUS, {"runId": run_id})["runOrError"]
        _raise_unless(run, "Run", f"run {run_id}")
        return _run_info(run)

    def logs(self, run_id: str, after_cursor: str | None = None) -> tuple[list[LogEvent], str | None]:
        """The run's events after `after_cursor` (all of them when None) and the cursor to pass next time."""
        events, cursor = [], after_cursor
        for page in self._event_pages(RUN_LOGS, run_id, after_cursor):
            events += [_log_event(event) for event in page["events"]]
            cursor = page["cursor"]
        return events, cursor

    def follow(self, run_id: str, poll_s: float = 2.0, after_cursor: str | None = None) -> Iterator[LogEvent]:
        """Yield the run's events as they arrive, until the run has ended and its log is drained."""
        cursor = after_cursor
        while True:
            # Status first: events written before a terminal status are then sure to be in the next read.
            ended = self.status(run_id).terminal
            events, cursor = self.logs(run_id, cursor)
            yield from events
            if ended:
                return
            time.sleep(poll_s)

    def wait(self, run_id: str, poll_s: float = 2.0, timeout_s: float | None = None) -> RunInfo:
        """Poll until the run ends; TriggerError (kind Timeout) after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = self.status(run_id)
            if run.terminal:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TriggerError(f"run {run_id} is still {run.status} after {timeout_s:g} s", "Timeout")
            time.sleep(poll_s)

    def result(self, run_id: str) -> RunResult:
        """Checkpoint, metrics, gate outcomes and failure reasons of a run (complete once it has ended)."""
        run = self._execute(RUN_RESULT, {"runId": run_id})["runOrError"]
        _raise_unless(run, "Run", f"run {run_id}")
        materializations = [
            Materialization("/".join(m["assetKey"]["path"]), m["partition"], _metadata(m["metadataEntries"]))
            for m in run["assetMaterializations"]
        ]
        evaluated: dict[tuple[str, str], Gate] = {}
        errors: list[str] = []
        for page in self._event_pages(RUN_OUTCOME_EVENTS, run_id, None):
            for event in page["events"]:
                if event["__typename"] == "AssetCheckEvaluationEvent":
                    e = event["evaluation"]
                    gate = Gate(
                        "/".join(e["assetKey"]["path"]),
                        e["checkName"],
                        e["success"],
                        e["severity"],
                        e["description"],
                        _metadata(e["metadataEntries"]),
                    )
                    evaluated[(gate.asset, gate.check)] = gate
                elif event["__typename"] == "ExecutionStepFailureEvent" and event["error"]:
                    error = event["error"]
                    cause = f" ({error['cause']['message'].strip()})" if error["cause"] else ""
                    errors.append(f"{event['stepKey']}: {error['message'].strip()}{cause}")
                elif event["__typename"] == "RunFailureEvent":
                    errors.append(event["message"])
        planned = [("/".join(c["assetKey"]["path"]), c["name"]) for c in run["assetChecks"] or []]
        gates = [evaluated.pop(key, Gate(*key, passed=None)) for key in planned] + list(evaluated.values())
        metrics: dict[str, float] = {}
        checkpoint = None
        for m in materializations:
            metrics.update({k: v for k, v in m.metadata.items() if _is_number(v)})
            checkpoint = m.metadata.get("checkpoint", checkpoint)
        return RunResult(
            _run_info(run),
            checkpoint,
            any(m.asset == ACTIVATION_ASSET for m in materializations),
            metrics,
            gates,
            materializations,
            errors,
        )

    def list_runs(self, dataset: str | None = None, limit: int = 20) -> list[RunInfo]:
        """The newest runs of this location's job first, optionally only those of one dataset."""
        runs_filter: dict[str, Any] = {"pipelineName": self.job}
        if dataset is not None:
            runs_filter["tags"] = [{"key": PARTITION_TAG, "value": dataset}]
        runs = self._execute(LIST_RUNS, {"filter": runs_filter, "limit": limit})["runsOrError"]
        _raise_unless(runs, "Runs", "cannot list runs")
        return [_run_info(run) for run in runs["results"]]

    def cancel(self, run_id: str) -> RunInfo:
        """Ask Dagster to terminate the run; the returned status is usually CANCELING (`wait` for CANCELED)."""
        answer = self._execute(TERMINATE_RUN, {"runId": run_id})["terminateRun"]
        _raise_unless(answer, "TerminateRunSuccess", f"cannot cancel run {run_id}")
        return _run_info(answer["run"])

    def _event_pages(self, document: str, run_id: str, after_cursor: str | None) -> Iterator[dict[str, Any]]:
        cursor = after_cursor
        while True:
            page = self._execute(document, {"runId": run_id, "afterCursor": cursor, "limit": _PAGE})["logsForRun"]
            _raise_unless(page, "EventConnection", f"events of run {run_id}")
            yield page
            cursor = page["cursor"]
            if not page["hasMore"]:
                return

    def _execute(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        endpoint = f"{self.url}/graphql"
        try:
            response = self._session.post(
                endpoint, json={"query": document, "variables": variables}, timeout=self.timeout
            )
        except requests.Timeout:
            raise TriggerError(f"{endpoint} did not answer within {self.timeout:g} s", "Timeout") from None
        except requests.RequestException as exc:
            raise TriggerError(
                f"cannot reach the Dagster webserver at {self.url}: {_reason(exc)}", "ConnectionError"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("errors"):
            # The schema of this server does not match the documents (another Dagster version?).
            messages = "; ".join(error.get("message", str(error)) for error in body["errors"])
            raise TriggerError(f"{endpoint} rejected the request: {messages}", "GraphQLError")
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise TriggerError(
                f"{endpoint} answered HTTP {response.status_code} without GraphQL data; is the URL "
                "a Dagster webserver, path prefix included?",
                "HTTPError",
            )
        return body["data"]


def _raise_unless(answer: dict[str, Any], expected: str, doing: str) -> None:
    kind = answer["__typename"]
    if kind == expected:
        return
    details: list[str] = []
    if kind == "RunConfigValidationInvalid":
        for error in answer["errors"]:
            path = ".".join(_stack_step(entry) for entry in error["stack"]["entries"])
            details.append(f"{path}: {error['message']}" if path else error["message"])
        reason = "invalid run config:\n  " + "\n  ".join(details)
    elif kind == "PythonError":
        # The message is "module.ExceptionClass: text"; the server-side stack trace stays on the server.
        reason = f"server error: {answer['message'].strip()}"
    else:
        reason = answer.get("message") or kind
    raise TriggerError(f"{doing}: {reason}", kind, details)


def _stack_step(entry: dict[str, Any]) -> str:
    return entry["fieldName"] if "fieldName" in entry else f"[{entry['listIndex']}]"


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason (e.g. 'Connection refused') instead of urllib3's wrapper chain."""
    reason, seen = str(exc), exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        seen = seen.__cause__ or seen.__context__
    return reason


def _run_info(run: dict[str, Any]) -> RunInfo:
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    return RunInfo(
        run["runId"],
        run["status"],
        run["jobName"],
        tags.get(PARTITION_TAG),
        run["creationTime"],
        run["startTime"],
        run["endTime"],
        tags,
    )


def _log_event(event: dict[str, Any]) -> LogEvent:
    error = (event.get("error") or {}).get("message")
    return LogEvent(
        event["__typename"],
        event["eventType"],
        event["level"],
        event["message"],
        event["stepKey"],
        int(event["timestamp"]) / 1000,
        error.strip() if error else None,
    )


def _metadata(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {entry["label"]: _metadata_value(entry) for entry in entries}


def _metadata_value(entry: dict[str, Any]) -> Any:
    kind = entry["__typename"]
    if kind == "FloatMetadataEntry":
        # floatValue is null for nan/inf, which only floatRepr carries.
        return entry["floatValue"] if entry["floatValue"] is not None else float(entry["floatRepr"])
    if kind == "IntMetadataEntry":
        return int(entry["intRepr"])  # intValue is null beyond 32 bits
    if kind == "JsonMetadataEntry":
        return json.loads(entry["jsonString"])
    for key in ("boolValue", "text", "path", "url", "mdStr", "timestamp"):
        if key in entry:
            return entry[key]
    return None  # tables, schemas, code references...: label only


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
