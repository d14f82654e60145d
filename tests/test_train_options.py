"""Each training option changes what a step does: gradient accumulation, activation checkpointing, the frozen
text encoder with cached features, EMA, autocast, denoising queries, gradient clipping, the non-finite skip and
hard-example mining. Built from the real components of a tiny run (sam3lite_core.train.components) and driven
step by step."""

from __future__ import annotations

import time

import pytest
import torch
from train_helpers import make_dataset, threads, tiny_config

from sam3lite_core.distributed import init_distributed
from sam3lite_core.train.checkpointer import TrainState
from sam3lite_core.train.components import build_components
from sam3lite_core.train.loop import Clock, forward_backward, train_one_epoch, train_step
from sam3lite_core.train.mining import HardExampleMiner
from sam3lite_core.train.stop_signal import StopSignal


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_options")
    return make_dataset(root / "synth"), root / "runs"


@pytest.fixture(autouse=True)
def one_thread():
    with threads(1):
        yield


def build(work, **fields):
    dataset, runs = work
    return build_components(tiny_config(dataset, runs, **fields), init_distributed("cpu"), None)


def batches(c, n):
    c.train_data.sampler.set_epoch(0)
    loader = iter(c.train_data.loader)
    return [next(loader)[0] for _ in range(n)]


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def weights(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_gradient_accumulation_takes_the_mean_of_micro_batch_gradients(work):
    c = build(work, train_batch_size=1, gradient_accumulation_steps=2)
    assert (c.train_data.micro_batches_per_epoch, c.train_data.steps_per_epoch) == (10, 5)
    assert build(work, train_batch_size=1).train_data.steps_per_epoch == 10
    assert (
        build(work, train_batch_size=1, gradient_accumulation_steps=2, target_epoch_size=6).train_data.steps_per_epoch
        == 3
    )
    first, second = batches(c, 2)
    forward_backward(c, [first, second])
    both = grads(c.model)
    c.optimizer.zero_grad()
    forward_backward(c, [first])
    alone_1 = grads(c.model)
    c.optimizer.zero_grad()
    forward_backward(c, [second])
    alone_2 = grads(c.model)
    assert set(both) == set(alone_1) | set(alone_2)
    zero = torch.zeros(())
    for name, grad in both.items():
        mean = (alone_1.get(name, zero) + alone_2.get(name, zero)) / 2
        torch.testing.assert_close(grad, mean.expand_as(grad), rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_recomputes_blocks_in_backward(work):
    calls = {}
    results = {}
    for enabled in (False, True):
        c = build(work, activation_checkpointing=enabled)
        block = c.model.backbone.vision_backbone.trunk.blocks[0]
        calls[enabled] = 0
        # A pre-hook: the recomputation stops early once it has what backward needs, before forward hooks.
        block.register_forward_pre_hook(lambda *args, key=enabled: calls.__setitem__(key, calls[key] + 1))
        results[enabled] = (forward_backward(c, batches(c, 1))[0], grads(c.model))
    assert calls == {False: 1, True: 2}
    assert results[True][0] == results[False][0]
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-5, atol=1e-7)


def test_frozen_text_encoder_is_untouched_and_its_features_cached(work):
    c = build(work, freeze_language_backbone=True)
    before = weights(c.model)
    train_step(c, batches(c, 1), step=5)
    after = weights(c.model)
    language = [n for n in before if n.startswith("backbone.language_backbone.")]
    assert language and all(torch.equal(before[n], after[n]) for n in language)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("transformer."))
    assert not any(g["name"].startswith("language/") for g in c.optimizer.param_groups)
    assert len(c.model._text_cache) == 4  # the four class names, encoded once
    trained = build(work)
    assert any(g["name"].startswith("language/") for g in trained.optimizer.param_groups)


def test_ema_follows_the_weights_with_its_decay(work):
    c = build(work, ema=True, ema_decay=0.9, ema_tau=2.0)
    start = weights(c.ema.module)
    train_step(c, batches(c, 1), step=5)
    assert c.ema.updates == 1
    decay = 0.9 * (1 - torch.exp(torch.tensor(-0.5)).item())
    model = weights(c.model)
    for name, value in weights(c.ema.module).items():
        torch.testing.assert_close(value, start[name] * decay + model[name] * (1 - decay))
    assert any(not torch.equal(model[n], value) for n, value in weights(c.ema.module).items())
    assert build(work, ema=False).ema is None


def test_bf16_autocast_changes_the_numerics(work):
    losses = {}
    for amp in ("off", "bf16"):
        c = build(work, amp=amp)
        assert c.amp == amp
        losses[amp] = forward_backward(c, batches(c, 1))[0].item()
    assert losses["off"] != losses["bf16"] and losses["bf16"] == pytest.approx(losses["off"], rel=0.05)
    assert build(work).amp == "off"  # auto on a CPU


def test_denoising_queries_add_a_loss_and_change_the_gradient(work, monkeypatch):
    given = []
    off, on = build(work), build(work, denoising_groups=2, denoising_box_noise=0.3)
    assert (on.denoising.groups, on.denoising.box_noise) == (2, 0.3)
    (batch,) = batches(off, 1)
    decoder = on.model.transformer.decoder
    forward = decoder.forward
    monkeypatch.setattr(decoder, "forward", lambda *args: given.append(args[-1]) or forward(*args))
    torch.manual_seed(0)
    loss_off = forward_backward(off, [batch])[0].item()
    torch.manual_seed(0)
    loss_on = forward_backward(on, [batch])[0].item()
    (anchors,) = given
    assert anchors.shape == (2 * batch.target_boxes.shape[1], batch.num_queries, 4)
    assert loss_on > loss_off  # the same matching terms plus the denoising ones
    changed = grads(on.model)
    assert any(not torch.equal(changed[name], grad) for name, grad in grads(off.model).items())


def test_gradient_clipping(work):
    clipped = build(work, grad_clip=0.05)
    out = train_step(clipped, batches(clipped, 1), step=5)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads(clipped.model).values()]))
    assert out.grad_norm > 0.05 and norm.item() == pytest.approx(0.05, rel=1e-4)
    free = build(work, grad_clip=0.0)
    out = train_step(free, batches(free, 1), step=5)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads(free.model).values()]))
    assert norm.item() == pytest.approx(out.grad_norm, rel=1e-4)


def test_nonfinite_step_is_skipped_without_touching_the_weights(work):
    c = build(work, ema=True)
    (batch,) = batches(c, 1)
    query = int(torch.nonzero(batch.num_boxes)[0])
    batch.target_boxes[query, 0, 0] = float("nan")
    before, ema_before = weights(c.model), weights(c.ema.module)
    out = train_step(c, [batch], step=5)
    assert out.skipped and not torch.isfinite(torch.tensor(out.loss))
    assert all(torch.equal(before[n], v) for n, v in weights(c.model).items())
    assert all(torch.equal(ema_before[n], v) for n, v in weights(c.ema.module).items()) and c.ema.updates == 0
    assert all(not g.any() for g in grads(c.model).values())
    assert not c.optimizer.state  # AdamW never stepped
    good = train_step(c, batches(c, 1), step=6)
    assert not good.skipped and c.optimizer.state


def test_hard_example_miner_replays_the_highest_losses():
    miner = HardExampleMiner(10, fraction=0.3, burn_in=1)
    for index in range(10):
        miner.record([index], float(index))
    assert miner.plan(0, list(range(10))) == list(range(10))  # burn-in
    miner.end_epoch()
    assert miner.plan(1, list(range(10))) == [0, 1, 2, 3, 4, 5, 6, 9, 8, 7]
    rank0, rank1 = miner.plan(1, list(range(10)), 0, 2), miner.plan(1, list(range(10)), 1, 2)
    assert rank0[-3:] == [9, 7, 5] and rank1[-3:] == [8, 6, 4]  # disjoint shares of one ranking
    restored = HardExampleMiner(10, fraction=0.3, burn_in=1)
    restored.load_state_dict(miner.state_dict())
    assert restored.plan(1, list(range(10))) == miner.plan(1, list(range(10)))
    off = HardExampleMiner(10, fraction=0.3, burn_in=1, enabled=False)
    off.record([3], 5.0)
    off.end_epoch()
    assert off.plan(1, list(range(10))) == list(range(10))


def test_hard_example_mining_changes_the_next_epochs_samples(work):
    plans = {}
    for enabled in (False, True):
        c = build(work, hard_example_mining=enabled, hard_example_fraction=0.4)
        state = TrainState(total_steps=c.planned_steps)
        train_one_epoch(c, state, Clock(time.monotonic(), 0.0), StopSignal())
        c.miner.end_epoch()
        c.train_data.sampler.set_epoch(1)
        plans[enabled] = c.train_data.sampler.indices()
        if enabled:
            scores = c.miner.scores
            assert torch.isfinite(scores).all()  # every train image was seen in epoch 1
            hardest = torch.argsort(scores, descending=True, stable=True)[:4].tolist()
    assert plans[True][:6] == plans[False][:6] and plans[True][6:] == hardest != plans[False][6:]
