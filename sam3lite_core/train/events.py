"""What training reports, and the lines it becomes on stdout.

`train(config, on_event)` calls `on_event(Event)` on rank 0 only. Event kinds:
  progress  fraction done in [0, 1] and a short message (also validation progress, data phase "val")
  metric    a dict of numbers: data["phase"] "train" (per logged step) or "val" (the 12 COCO stats per validation)
  log       a line for people (what was loaded, skipped steps, why training stopped)
  result    the TrainResult as a dict, once, at the end

`ConsolePrinter` turns events into stdout: machine-readable lines when stdout is not a terminal
    [sam3lite-progress 0.4512] epoch 3/20 step 45/100 loss 12.3456
    [sam3lite-metric]{"phase": "train", ...}
    [sam3lite-result]{...}
and a tqdm bar when it is. With `upstream_lines` it adds the upstream trainer's lines, which the backend already
parses (reference/tator_contract.md section 2.5):
    Train Epoch: [0][  10/50] | Batch Time: 0.52 | Losses/train_all_loss: 123.4567 (145.1234)
    Val Epoch: [0][  3/20]
    Meters: {'Trainer/epoch': 0, 'Meters_train/val/detection/coco_eval_bbox_AP': np.float64(0.1234), ...}
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

EventKind = Literal["progress", "metric", "log", "result"]
EventHandler = Callable[["Event"], None]

PROGRESS_TAG = "[sam3lite-progress"
METRIC_TAG = "[sam3lite-metric]"
RESULT_TAG = "[sam3lite-result]"
# Our stat names -> the upstream meter suffixes the backend matches (coco_eval_bbox_<suffix>).
UPSTREAM_STATS = {
    "AP": "AP",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "AR1": "AR_maxDets@1",
    "AR10": "AR_maxDets@10",
    "AR100": "AR_maxDets@100",
    "ARs": "AR_small",
    "ARm": "AR_medium",
    "ARl": "AR_large",
}


@dataclass(frozen=True)
class Event:
    kind: EventKind
    message: str = ""
    progress: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


def progress_event(fraction: float, message: str, **data: Any) -> Event:
    return Event("progress", message, min(max(fraction, 0.0), 1.0), data)


def metric_event(data: dict[str, Any]) -> Event:
    return Event("metric", data=data)


def log_event(message: str, **data: Any) -> Event:
    return Event("log", message, data=data)


def result_event(data: dict[str, Any]) -> Event:
    return Event("result", data=data)


def machine_lines(event: Event) -> list[str]:
    """The `[sam3lite-...]` lines of an event (log events are plain text)."""
    if event.kind == "progress":
        return [f"{PROGRESS_TAG} {event.progress:.4f}] {event.message}"]
    if event.kind == "metric":
        return [METRIC_TAG + json.dumps(event.data, sort_keys=True)]
    if event.kind == "result":
        return [RESULT_TAG + json.dumps(event.data, sort_keys=True)]
    return [event.message]


def _not_finite(values: dict[str, float]) -> str:
    """' | not finite: a=nan, b=inf' for the values that are not finite, '' when all are. Worded so that none
    of the backend's regexes reads a number out of it."""
    bad = [f"{name}={value}" for name, value in values.items() if not math.isfinite(value)]
    return f" | not finite: {', '.join(bad)}" if bad else ""


def _train_line(data: dict[str, Any]) -> str:
    """A non-finite loss leaves out the loss field (the backend's regex would drop the line); a non-finite
    mean leaves out the `(mean)` part. The step itself always prints, so progress still moves."""
    loss, mean = float(data["loss"]), float(data["loss_avg10"])
    line = (
        f"Train Epoch: [{data['epoch'] - 1}][{data['batch']:>4}/{data['batches_per_epoch']}] | "
        f"Batch Time: {data.get('step_time', 0.0):.2f} | LR: {data.get('lr', 0.0):.3e}"
    )
    if math.isfinite(loss):
        line += f" | Losses/train_all_loss: {loss:.4f}" + (f" ({mean:.4f})" if math.isfinite(mean) else "")
    return line + _not_finite({"loss": loss, "loss_mean10": mean})


def upstream_lines(event: Event) -> list[str]:
    """Upstream-trainer lines for the events that have one (train steps, val progress, val metrics). A value
    that is not finite is left out of what the backend parses and named at the end of the line."""
    data = event.data
    if event.kind == "metric" and data.get("phase") == "train":
        return [_train_line(data)]
    if event.kind == "metric" and data.get("phase") == "val":
        stats = {name: float(data[name]) for name in UPSTREAM_STATS if name in data}
        meters = [f"'Trainer/epoch': {data['epoch'] - 1}"]
        meters += [
            f"'Meters_train/val/detection/coco_eval_bbox_{UPSTREAM_STATS[name]}': np.float64({value:.6f})"
            for name, value in stats.items()
            if math.isfinite(value)
        ]
        return ["Meters: {" + ", ".join(meters) + "}" + _not_finite(stats)]
    if event.kind == "progress" and data.get("phase") == "val":
        return [f"Val Epoch: [{data['epoch'] - 1}][{data['val_step']:>4}/{data['val_total']}]"]
    return []


def event_lines(event: Event, upstream: bool = False) -> list[str]:
    return machine_lines(event) + (upstream_lines(event) if upstream else [])


class ConsolePrinter:
    """An `on_event` handler for stdout: lines for machines, a progress bar only on a terminal."""

    def __init__(self, upstream: bool = False, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.upstream = upstream
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar: Any = None

    def __call__(self, event: Event) -> None:
        if not self.tty:
            for line in event_lines(event, self.upstream):
                print(line, file=self.stream, flush=True)
            return
        if event.kind == "progress" and event.data.get("phase") == "train":
            self._advance(event)
            return
        text = self._human(event)
        if text:
            self._write(text)
        if event.kind == "result" and self._bar is not None:
            self._bar.close()

    def _advance(self, event: Event) -> None:
        from tqdm import tqdm

        total, step = event.data.get("total_steps"), event.data.get("step", 0)
        if self._bar is None:
            self._bar = tqdm(total=total, initial=step, file=self.stream, unit="step", dynamic_ncols=True)
        if total and self._bar.total != total:  # the time budget can shorten the plan
            self._bar.total = total
        self._bar.set_description(f"epoch {event.data.get('epoch', '?')}")
        self._bar.set_postfix_str(event.message)
        self._bar.update(step - self._bar.n)

    def _human(self, event: Event) -> str:
        data = event.data
        if event.kind == "log":
            return event.message
        if event.kind == "metric" and data.get("phase") == "val":
            stats = "  ".join(f"{name} {data[name]:.4f}" for name in ("AP", "AP50", "AP75", "AR100") if name in data)
            return f"val epoch {data['epoch']}: {stats}"
        if event.kind == "result":
            best = data.get("best_metrics") or {}
            return (
                f"done ({data.get('stopped_reason')}): {data.get('epochs_done')} epochs, {data.get('steps_done')} "
                f"steps in {data.get('wall_time_s', 0):.0f} s; best AP {best.get('AP', float('nan')):.4f} AP50 "
                f"{best.get('AP50', float('nan')):.4f}; export {data.get('export_checkpoint')}"
            )
        return ""

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
