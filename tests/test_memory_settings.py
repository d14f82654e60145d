"""Every memory setting of full-size training leaves the step's loss and gradients as they are: the frozen text
encoder released (its weights read back from the init checkpoint), bf16 autocast without its weight cache and a
frozen vision trunk, each against the plain step on the same weights and batch (activation checkpointing:
test_train_options.py; the chunked attention, inside and outside the layers' checkpoints:
test_model_attention.py; lean host memory changes only how glibc hands memory back). What is released still
reaches every checkpoint with the init file's exact values, and a changed init file or a mismatching resume is
refused."""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
from train_helpers import make_dataset, threads, tiny_config

from sam3lite_core.distributed import DistInfo, init_distributed, wrap_ddp
from sam3lite_core.model.sam3lite import TEXT_PREFIX, build_model
from sam3lite_core.precision import autocast
from sam3lite_core.train import loop
from sam3lite_core.train.components import build_components
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.loop import forward_backward, train_step
from sam3lite_core.weights import load_checkpoint, read_checkpoint, save_checkpoint, state_dict_for_export


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_settings")
    torch.manual_seed(3)
    init = save_checkpoint(root / "init.ckpt", build_model("tiny"))
    return make_dataset(root / "synth"), root / "runs", init


@pytest.fixture(autouse=True)
def one_thread():
    with threads(1):
        yield


def build(work, **fields):
    dataset, runs, init = work
    fields = {"init_checkpoint": str(init), **fields}
    return build_components(tiny_config(dataset, runs, **fields), init_distributed("cpu"), None)


def step(c, batch):
    """The loss and gradients of one forward and backward, from the same random state (dropout, denoising)."""
    c.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss = forward_backward(c, [batch])[0]
    return loss, {name: p.grad.clone() for name, p in c.model.named_parameters() if p.grad is not None}


def assert_same_step(ours, plain, rtol=1.3e-6, atol=1e-5):
    torch.testing.assert_close(ours[0], plain[0], rtol=rtol, atol=atol)
    assert ours[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        torch.testing.assert_close(ours[1][name], grad, rtol=rtol, atol=atol, msg=name)


def first_batch(c):
    c.train_data.sampler.set_epoch(0)
    return next(iter(c.train_data.loader))[0]


def test_released_text_encoder_steps_and_saves_as_the_kept_one(work):
    c = build(work, freeze_language_backbone=True)
    model = c.model
    assert model.text_encoder_released
    assert all(p.is_meta for p in model.backbone.language_backbone.parameters())
    batch = first_batch(c)
    released = step(c, batch)
    assert all(p.is_meta for p in model.backbone.language_backbone.parameters())  # loaded for the encoding only
    exported = state_dict_for_export(model)
    model.freeze_text_encoder(False)  # reads the weights back and keeps them
    model.freeze_text_encoder(True)
    assert not model.text_encoder_released
    assert_same_step(released, step(c, batch), rtol=0, atol=0)
    init = read_checkpoint(work[2])["model"]
    assert list(exported) == list(init)
    text = [k for k in init if k.startswith("detector." + TEXT_PREFIX)]
    assert text and all(torch.equal(exported[k], init[k]) for k in text)


def test_autocast_without_its_weight_cache_is_the_same_step(work, monkeypatch):
    c = build(work, amp="bf16")
    batch = first_batch(c)
    uncached = step(c, batch)
    # The plain step: autocast keeping its bf16 weight copies, torch's default.
    monkeypatch.setattr(loop, "autocast", lambda device, amp, cache_weights: autocast(device, amp, True))
    cached = step(c, batch)
    assert uncached[0] == cached[0]  # the forward is the same computation
    # A weight used by every decoder layer (the box head) sums its gradients in fp32 per use without the cache,
    # in bf16 on the one cached copy with it: equal to bf16's precision.
    assert_same_step(uncached, cached, rtol=1.6e-2, atol=1e-5)


def test_frozen_trunk_leaves_the_other_gradients_as_they_are(work):
    plain = build(work)
    batch = first_batch(plain)
    everything = step(plain, batch)
    frozen = step(build(work, freeze_vision_trunk=True), batch)
    trunk = "backbone.vision_backbone.trunk."
    assert not any(name.startswith(trunk) for name in frozen[1])
    assert_same_step(frozen, (everything[0], {k: v for k, v in everything[1].items() if not k.startswith(trunk)}))


def test_a_changed_init_file_is_refused_not_read_as_the_runs_weights(work, tmp_path):
    init = tmp_path / "init.ckpt"
    init.write_bytes(work[2].read_bytes())
    c = build((work[0], work[1], init), freeze_language_backbone=True)
    state_dict_for_export(c.model)  # reads back fine while the file is the one loaded
    torch.manual_seed(9)
    save_checkpoint(init, build_model("tiny"))  # another model's weights under the same name
    with pytest.raises(ValueError, match="changed while in use.*Put the original file back"):
        state_dict_for_export(c.model)
    with pytest.raises(ValueError, match="changed while in use"):
        c.model.encode_prompts(["a prompt not cached yet"])
    with pytest.raises(RuntimeError, match="cannot be moved"):
        c.model.to(torch.float64)


def test_resuming_with_other_text_weights_is_refused(work, tmp_path):
    c = build(work, freeze_language_backbone=True)
    own = state_dict_for_export(c.model)
    assert load_checkpoint(c.model, own, min_fraction=1.0).matched_fraction == 1.0
    other = dict(own)
    key = next(k for k in own if k.startswith("detector." + TEXT_PREFIX) and own[k].is_floating_point())
    other[key] = own[key] + 1
    with pytest.raises(ValueError, match="differs from the frozen text encoder's weights"):
        load_checkpoint(c.model, other, min_fraction=1.0)


def test_a_released_text_encoder_trains_with_an_ema_and_resumes(work):
    c = build(work, freeze_language_backbone=True, ema=True)
    train_step(c, [first_batch(c)], step=1)
    assert c.ema is not None and c.ema.module.text_encoder_released
    state = c.ema.state_dict()
    init = read_checkpoint(work[2])["model"]
    text = [k for k in init if k.startswith("detector." + TEXT_PREFIX)]
    assert all(torch.equal(state["model"][k], init[k]) for k in text)
    c.ema.load_state_dict(state)


def test_lean_host_memory_is_the_sam3_default_and_sets_glibc_in_its_own_process():
    assert TrainConfig(preset="sam3").use_lean_host_memory and not TrainConfig(preset="tiny").use_lean_host_memory
    assert TrainConfig(preset="tiny", lean_host_memory=True).use_lean_host_memory
    # A child process: the setting is process-wide and would slow the rest of this test session.
    code = "from sam3lite_core.train.host_memory import map_large_blocks; print(map_large_blocks())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


def test_ddp_leaves_the_released_weights_alone_and_steps_the_same(work, tmp_path):
    c = build(work, freeze_language_backbone=True)
    batch = first_batch(c)
    plain = step(c, batch)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        # DDP refuses a module with meta parameters unless told to leave them alone (one process stands for many).
        ddp = wrap_ddp(c.model, DistInfo(rank=0, local_rank=0, world_size=2, device=c.info.device, owns_group=False))
        assert ddp is not c.model
        assert_same_step(step(replace(c, ddp=ddp), batch), plain)
    finally:
        dist.destroy_process_group()
