"""The markdown the assets show in the UI as metadata: per-class tables, the per-epoch table, the run's plots
inline, the activation history, code blocks and lists. Plain strings, no Dagster: the assets wrap them in
`dg.MetadataValue.md`."""

from __future__ import annotations

import base64
import csv
from collections.abc import Sequence
from pathlib import Path

from sam3lite_core.eval.coco_eval import EvalResult
from sam3lite_pipeline.ops.history import Activation

HISTORY_ROWS = 10
EPOCH_COLUMNS = ("epoch", "step", "loss", "AP", "AP50")


def code_block(text: str) -> str:
    """`text` verbatim in a fenced block (scan reports, the last lines of a failed training)."""
    return f"```\n{text}\n```"


def bullet_list(items: Sequence[str]) -> str:
    """One bullet per item; "none" for no items."""
    return "\n".join(f"- {item}" for item in items) or "none"


def class_table(classes: Sequence[str], boxes: Sequence[int]) -> str:
    """The labelmap with the number of boxes per class."""
    rows = "\n".join(f"| {i} | {name} | {n} |" for i, (name, n) in enumerate(zip(classes, boxes)))
    return "| id | class | boxes |\n|---:|---|---:|\n" + rows


def per_class_table(result: EvalResult) -> str:
    """AP, AP50, AP75 and AR100 per class of an evaluation."""
    lines = ["| class | boxes | AP | AP50 | AP75 | AR100 |", "|---|---:|---:|---:|---:|---:|"]
    for row in result.per_class:
        lines.append(
            f"| {row.name} | {row.num_gt} | {row.AP:.4f} | {row.AP50:.4f} | {row.AP75:.4f} | {row.AR100:.4f} |"
        )
    return "\n".join(lines)


def history_table(entries: Sequence[Activation], metric: str) -> str:
    """The last `HISTORY_ROWS` activations of a dataset, newest first."""
    lines = [f"| when | action | checkpoint | {metric} |", "|---|---|---|---:|"]
    for e in list(entries)[-HISTORY_ROWS:][::-1]:
        value = "" if e.value is None else f"{e.value:.4f}"
        lines.append(f"| {e.at} | {e.action} | {e.checkpoint} | {value} |")
    return "\n".join(lines)


def plots_markdown(plots: Path) -> str:
    """The run's PNG plots inline (base64 data URIs), so the UI shows the curves, not file paths on the host
    that trained."""
    images = [
        f"**{p.stem}**\n\n![{p.stem}](data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()})"
        for p in sorted(plots.glob("*.png"))
    ]
    return "\n\n".join(images) or "no plots"


def epochs_table(metrics_csv: Path) -> str:
    """Per-epoch mean loss and the validations of a run's metrics.csv."""
    if not metrics_csv.exists():
        return "no metrics.csv"
    rows: dict[int, dict[str, str]] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["phase"] in ("epoch", "val"):
                merged = rows.setdefault(int(row["epoch"]), {"epoch": row["epoch"]})
                merged.update({k: v for k, v in row.items() if k in EPOCH_COLUMNS and v != ""})
    lines = ["| " + " | ".join(EPOCH_COLUMNS) + " |", "|" + "---:|" * len(EPOCH_COLUMNS)]
    for epoch in sorted(rows):
        lines.append("| " + " | ".join(_number(rows[epoch].get(c, "")) for c in EPOCH_COLUMNS) + " |")
    return "\n".join(lines)


def _number(value: str) -> str:
    """Integers as integers, other numbers to 4 decimals, anything else as it is."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4f}" if not number.is_integer() else str(int(number))
