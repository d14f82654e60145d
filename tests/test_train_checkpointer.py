"""Training checkpoints: a process killed again and again while writing never leaves a truncated last.ckpt;
RNG and TrainState round trips; the export picks the EMA weights."""

from __future__ import annotations

import multiprocessing
import random
import time

import numpy as np
import torch

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.train.checkpointer import (
    Checkpointer,
    TrainState,
    capture_rng,
    export_training_checkpoint,
    restore_rng,
)
from sam3lite_core.train.ema import ModelEMA
from sam3lite_core.weights import save_checkpoint

BLOB = 4_000_000  # 16 MB per file, so a write takes long enough to be interrupted


def _write_forever(directory: str, ready) -> None:
    torch.set_num_threads(1)
    model = build_model("tiny")
    checkpointer = Checkpointer(directory, is_main=True)
    ready.set()
    step = 0
    while True:
        step += 1
        blob = torch.full((BLOB,), float(step))
        checkpointer.save(model, {"train_state": {"step": step}, "blob": blob}, best=step % 2 == 0)


def test_killed_while_writing_never_leaves_a_truncated_checkpoint(tmp_path):
    context = multiprocessing.get_context("fork")
    rng = random.Random(0)
    seen, interrupted_writes = [], 0
    for _ in range(6):
        ready = context.Event()
        writer = context.Process(target=_write_forever, args=(str(tmp_path), ready))
        writer.start()
        assert ready.wait(60)
        time.sleep(rng.uniform(0.05, 0.6))
        writer.kill()  # SIGKILL: no cleanup, possibly mid-write
        writer.join()
        interrupted_writes += bool(list(tmp_path.glob(".*.tmp")))
        for name in ("last.ckpt", "best.ckpt"):
            if (tmp_path / name).exists():
                data = torch.load(tmp_path / name, weights_only=True)
                step = data["train_state"]["step"]
                assert data["blob"].shape == (BLOB,) and bool((data["blob"] == step).all())
                seen.append(step)
    assert seen  # at least some rounds got as far as a complete file
    assert interrupted_writes  # and some kills did land in the middle of a write
    Checkpointer(tmp_path, is_main=True)  # a new run cleans the temp files killed writers left
    assert not list(tmp_path.glob(".*.tmp"))


def test_rng_state_round_trip():
    state = capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore_rng(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_train_state_round_trip():
    state = TrainState(step=7, epoch=1, micro_batches_done=2, best_metrics={"AP": 0.5}, recent_losses=[1.0, 2.0])
    assert TrainState.from_dict(state.to_dict()) == state
    assert TrainState.from_dict({**state.to_dict(), "unknown_later_field": 1}) == state


def test_export_takes_the_ema_weights(tmp_path):
    model = build_model("tiny")
    ema = ModelEMA(model, decay=0.5, tau=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    save_checkpoint(tmp_path / "best.ckpt", model, ema=ema.state_dict(), optimizer={"state": {}})
    with_ema = torch.load(export_training_checkpoint(tmp_path / "best.ckpt", tmp_path / "a.ckpt"), weights_only=True)
    plain = torch.load(
        export_training_checkpoint(tmp_path / "best.ckpt", tmp_path / "b.ckpt", use_ema=False), weights_only=True
    )
    assert set(with_ema) == set(plain) == {"format", "model_config", "model"}
    key = "detector.transformer.decoder.bbox_embed.layers.0.weight"
    assert torch.equal(with_ema["model"][key], ema.state_dict()["model"][key])
    assert not torch.equal(with_ema["model"][key], plain["model"][key])
