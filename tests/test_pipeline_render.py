"""The markdown the assets show (sam3lite_pipeline/render.py), without Dagster."""

from __future__ import annotations

from sam3lite_pipeline.ops.history import Activation
from sam3lite_pipeline.render import (
    HISTORY_ROWS,
    bullet_list,
    class_table,
    code_block,
    epochs_table,
    history_table,
    plots_markdown,
)


def test_blocks_lists_and_the_class_table():
    assert code_block("a\nb") == "```\na\nb\n```"
    assert bullet_list(["x", "y"]) == "- x\n- y" and bullet_list([]) == "none"
    assert class_table(["cat", "dog"], [3, 0]).splitlines() == [
        "| id | class | boxes |",
        "|---:|---|---:|",
        "| 0 | cat | 3 |",
        "| 1 | dog | 0 |",
    ]


def test_epochs_table_merges_epoch_and_val_rows(tmp_path):
    assert epochs_table(tmp_path / "metrics.csv") == "no metrics.csv"
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "phase,epoch,step,loss,AP,AP50\ntrain,1,1,2.5,,\nepoch,1,5,1.23456,,\nval,1,5,,0.125,0.5\nepoch,2,10,1.0,,\n"
    )
    assert epochs_table(csv).splitlines() == [
        "| epoch | step | loss | AP | AP50 |",
        "|---:|---:|---:|---:|---:|",
        "| 1 | 5 | 1.2346 | 0.1250 | 0.5000 |",
        "| 2 | 10 | 1 |  |  |",
    ]


def test_history_table_shows_the_newest_rows_first(tmp_path):
    entries = [
        Activation(dataset="d", action="activate", checkpoint=f"c{i}", label="l", value=i / 4, at=f"t{i}")
        for i in range(HISTORY_ROWS + 2)
    ]
    entries.append(Activation(dataset="d", action="manual", checkpoint="m", label="l", at="tm"))
    lines = history_table(entries, "AP50").splitlines()
    assert lines[:3] == ["| when | action | checkpoint | AP50 |", "|---|---|---|---:|", "| tm | manual | m |  |"]
    assert lines[3] == f"| t{HISTORY_ROWS + 1} | activate | c{HISTORY_ROWS + 1} | {(HISTORY_ROWS + 1) / 4:.4f} |"
    assert len(lines) == 2 + HISTORY_ROWS


def test_plots_inline_as_data_uris(tmp_path):
    assert plots_markdown(tmp_path) == "no plots"
    (tmp_path / "loss.png").write_bytes(b"\x89PNG")
    assert plots_markdown(tmp_path) == "**loss**\n\n![loss](data:image/png;base64,iVBORw==)"
