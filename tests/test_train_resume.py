"""Resume: a run stopped mid-epoch and resumed from its last.ckpt continues at the exact step, with per-step
losses, validation metrics and final weights bit-identical to the uninterrupted run (num_workers=0; random
augmentation, EMA and hard-example mining on, so every piece of state has to come back)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from train_helpers import Interrupted, Recorder, make_dataset, threads, tiny_config

from sam3lite_core.train.loop import train

RUN = {
    "max_epochs": 3,
    "checkpoint_every_steps": 3,
    "val_epoch_freq": 2,
    "hflip_prob": 0.5,
    "box_jitter": 0.05,
    "ema": True,
    "hard_example_mining": True,
    "hard_example_fraction": 0.4,
    "denoising_groups": 2,
    "prompt_variants": {"red circle": "disc, round"},
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_resume")
    return make_dataset(root / "synth"), root / "runs"


def test_resume_mid_epoch_is_bit_identical(work):
    dataset, runs = work
    with threads(1):
        full = Recorder()
        expected = train(tiny_config(dataset, runs, run_name="synth-full", **RUN), full)
        cut = Recorder(fail_at_step=8)  # dies after step 8; its last.ckpt is from step 6 (epoch 2, batch 1)
        with pytest.raises(Interrupted):
            train(tiny_config(dataset, runs, run_name="synth-cut", **RUN), cut)
        resumed = Recorder()
        # resume: true without a run_name continues the newest run of the dataset: synth-cut
        result = train(tiny_config(dataset, runs, resume=True, **RUN), resumed)

    assert Path(result.run_dir).name == "synth-cut" and result.resumed_from_step == 6
    losses = {m["step"]: m["loss"] for m in full.train_metrics()}
    before = {m["step"]: m["loss"] for m in cut.train_metrics()}
    after = {m["step"]: m["loss"] for m in resumed.train_metrics()}
    assert list(before) == list(range(1, 9)) and list(after) == list(range(7, 16))
    assert all(before[step] == losses[step] for step in before)
    mismatched = {step: (after[step], losses[step]) for step in after if after[step] != losses[step]}
    assert not mismatched  # exact float equality, step by step
    assert resumed.val_metrics() == full.val_metrics()[-len(resumed.val_metrics()) :]
    assert result.best_metrics == expected.best_metrics and result.steps_done == expected.steps_done

    ours = torch.load(result.last_checkpoint, weights_only=True)
    reference = torch.load(expected.last_checkpoint, weights_only=True)
    for part in ("model",):
        assert all(torch.equal(ours[part][k], reference[part][k]) for k in reference[part])
    assert all(torch.equal(ours["ema"]["model"][k], reference["ema"]["model"][k]) for k in reference["ema"]["model"])
    assert torch.equal(ours["miner"]["scores"], reference["miner"]["scores"])

    with open(Path(result.run_dir) / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["phase"] == "train"]
    assert steps == list(range(1, 16))  # rows the cut run wrote after its checkpoint were dropped
    assert any("resumed" in line and "at step 6" in line for line in resumed.logs())


def test_metrics_written_by_an_older_version_get_the_current_header(tmp_path):
    from sam3lite_core.train.run_folder import COLUMNS, RunFolder

    run = RunFolder(tmp_path / "run", is_main=True)
    run.metrics_csv.write_text("phase,epoch,step,time_s,lr,loss\ntrain,1,1,10.0,0.1,2.5\n")
    run.append_metrics({"phase": "train", "epoch": 1, "step": 2, "batch": 2, "batches_per_epoch": 4, "loss": 2.0})
    run.close()
    with open(run.metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["step"], r["loss"], r["batch"]) for r in rows] == [("1", "2.5", ""), ("2", "2", "2")]
