"""PNG plots of a run from its metrics.csv (matplotlib, Agg backend: no display needed).

plots/loss.png       training loss per logged step (total, and the last layer's four terms)
plots/map.png        validation AP, AP50, AP75 per epoch
plots/pr_curve.png   precision-recall at IoU 0.5 of the best validation: the mean over classes, and each class
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TERMS = ("loss_ce", "loss_bbox", "loss_giou", "loss_presence")


def write_plots(metrics_csv: Path, out_dir: Path, pr_curve: dict[str, Any] | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(metrics_csv)
    written = [_loss_plot(table[table["phase"] == "train"], out_dir / "loss.png")]
    val = table[table["phase"] == "val"]
    if len(val):
        written.append(_map_plot(val, out_dir / "map.png"))
    if pr_curve and pr_curve.get("precision_50"):
        written.append(_pr_plot(pr_curve, out_dir / "pr_curve.png"))
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _loss_plot(train: pd.DataFrame, path: Path) -> Path:
    fig, (total, terms) = plt.subplots(1, 2, figsize=(11, 4))
    total.plot(train["step"], train["loss"], lw=1)
    total.set(title="training loss", xlabel="step", ylabel="loss")
    for term in TERMS:
        if term in train and train[term].notna().any():
            terms.plot(train["step"], train[term], lw=1, label=term)
    terms.set(title="last-layer terms (unweighted)", xlabel="step", yscale="log")
    if terms.lines:
        terms.legend(fontsize=8)
    return _save(fig, path)


def _map_plot(val: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("AP", "AP50", "AP75"):
        ax.plot(val["epoch"], val[name], marker="o", label=name)
    ax.set(title="validation COCO mAP", xlabel="epoch", ylim=(0, 1))
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _pr_plot(pr: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    recall = pr["recall_thresholds"]
    for row in pr.get("per_class", []):
        if row["precision_50"]:
            ax.plot(recall, [max(p, 0) for p in row["precision_50"]], lw=1, alpha=0.6, label=row["name"])
    ax.plot(recall, pr["precision_50"], lw=2.5, color="black", label="mean")
    ax.set(
        title=f"precision-recall @ IoU 0.5 (epoch {pr.get('epoch', '?')})",
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)
