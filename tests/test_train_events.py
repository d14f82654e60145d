"""Progress lines for machines and people: the `[sam3lite-...]` lines, the upstream-style lines the backend
parses (its regexes, reference/tator_contract.md section 2.5, copied here) and the terminal-only progress bar."""

from __future__ import annotations

import io
import json
import re

from sam3lite_core.train.events import (
    ConsolePrinter,
    event_lines,
    log_event,
    metric_event,
    progress_event,
    result_event,
)

NUM = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
TRAIN_RE = re.compile(r"Train Epoch:\s*\[(\d+)\]\[\s*(\d+)\s*/\s*(\d+)\]")
LOSS_RE = re.compile(
    rf"Losses/train_all_loss:\s*(?:(?:last|batch)=)?({NUM})(?:.*?(?:avg\d*=?\s*({NUM})|\(\s*({NUM})\s*\)))?"
)
VAL_RE = re.compile(r"Val Epoch:\s*\[(\d+)\]\[\s*(\d+)\s*/\s*(\d+)\]")
PAIR_RE = re.compile(rf"'([^']+)':\s*np\.float64\(({NUM})\)")
EPOCH_RE = re.compile(r"'Trainer/epoch':\s*(\d+)")

TRAIN = {
    "phase": "train",
    "epoch": 3,
    "step": 47,
    "batch": 7,
    "batches_per_epoch": 20,
    "loss": 123.456789,
    "loss_avg10": 130.5,
    "lr": 8e-5,
    "step_time": 0.5,
}
VAL = {"phase": "val", "epoch": 3, "step": 60, "AP": 0.25, "AP50": 0.5, "AP75": 0.2, "AR10": 0.3, "AR100": 0.4}


def test_machine_lines():
    assert event_lines(progress_event(0.45123, "epoch 3/20")) == ["[sam3lite-progress 0.4512] epoch 3/20"]
    assert event_lines(progress_event(1.7, "x"))[0].startswith("[sam3lite-progress 1.0000]")
    line = event_lines(metric_event(TRAIN))[0]
    assert line.startswith("[sam3lite-metric]") and json.loads(line[len("[sam3lite-metric]") :]) == TRAIN
    line = event_lines(result_event({"steps_done": 3}))[0]
    assert json.loads(line.removeprefix("[sam3lite-result]")) == {"steps_done": 3}
    assert event_lines(log_event("hello")) == ["hello"]


def test_upstream_lines_parse_with_the_backend_regexes():
    train_line = event_lines(metric_event(TRAIN), upstream=True)[1]
    match = TRAIN_RE.search(train_line)
    assert match and match.groups() == ("2", "7", "20")  # 0-based epoch, as upstream prints it
    loss = LOSS_RE.search(train_line)
    assert float(loss.group(1)) == round(123.456789, 4) and float(loss.group(3)) == 130.5

    val_line = event_lines(metric_event(VAL), upstream=True)[1]
    assert "Meters:" in val_line and "coco_eval_bbox_AP" in val_line
    pairs = dict(PAIR_RE.findall(val_line))
    by_suffix = {
        suffix: float(next(v for k, v in pairs.items() if k.endswith("coco_eval_bbox_" + suffix)))
        for suffix in ("AP", "AP_50", "AP_75", "AR_maxDets@10", "AR_maxDets@100")
    }
    assert by_suffix == {"AP": 0.25, "AP_50": 0.5, "AP_75": 0.2, "AR_maxDets@10": 0.3, "AR_maxDets@100": 0.4}
    assert int(EPOCH_RE.search(val_line).group(1)) + 1 == 3  # the backend adds 1

    progress = progress_event(0.9, "validating", phase="val", epoch=3, val_step=4, val_total=10)
    assert VAL_RE.search(event_lines(progress, upstream=True)[1]).groups() == ("2", "4", "10")
    assert event_lines(metric_event(TRAIN)) == event_lines(metric_event(TRAIN), upstream=False)[:1]


def test_printer_lines_off_a_terminal_and_a_bar_on_one():
    events = [
        progress_event(0.1, "epoch 1/2 step 1/5 loss 3.0", phase="train", epoch=1, step=1, total_steps=10),
        metric_event(TRAIN),
        log_event("saved"),
        metric_event(VAL),
        result_event({"stopped_reason": "completed", "best_metrics": {"AP": 0.25, "AP50": 0.5}, "steps_done": 10}),
    ]
    plain = io.StringIO()
    printer = ConsolePrinter(upstream=True, stream=plain, tty=False)
    for event in events:
        printer(event)
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("[sam3lite-progress 0.1000]") and any(TRAIN_RE.search(x) for x in lines)
    assert lines[-1].startswith("[sam3lite-result]")

    terminal = io.StringIO()
    printer = ConsolePrinter(stream=terminal, tty=True)
    for event in events:
        printer(event)
    text = terminal.getvalue()
    assert "[sam3lite-" not in text  # people get a bar and summaries
    assert "1/10" in text and "saved" in text and "AP50 0.5000" in text and "done (completed)" in text


def test_non_finite_values_leave_the_rest_of_the_line_parseable():
    nan_loss = event_lines(metric_event(TRAIN | {"loss": float("nan")}), upstream=True)[1]
    assert TRAIN_RE.search(nan_loss) and not LOSS_RE.search(nan_loss)  # progress moves, no loss is invented
    assert nan_loss.endswith("| not finite: loss=nan")
    inf_mean = event_lines(metric_event(TRAIN | {"loss_avg10": float("inf")}), upstream=True)[1]
    loss = LOSS_RE.search(inf_mean)
    assert float(loss.group(1)) == round(123.456789, 4) and loss.group(2) is None and loss.group(3) is None
    assert inf_mean.endswith("| not finite: loss_mean10=inf")

    val_line = event_lines(metric_event(VAL | {"AP50": float("nan")}), upstream=True)[1]
    pairs = dict(PAIR_RE.findall(val_line))
    assert "coco_eval_bbox_AP" in val_line and len(pairs) == 4 and not any(k.endswith("AP_50") for k in pairs)
    assert all(float(v) == float(v) for v in pairs.values()) and val_line.endswith("| not finite: AP50=nan")
    assert int(EPOCH_RE.search(val_line).group(1)) == 2
