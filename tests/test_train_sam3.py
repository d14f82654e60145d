"""The full-size `sam3` preset's training path on a CPU: one optimiser step at 336 px with the ViT trunk and
the text encoder frozen (activation checkpointing on, as for sam3 by default). Slow: building the 838M-parameter
model takes about a minute and ~5 GiB."""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import make_dataset, tiny_config

from sam3lite_core.distributed import init_distributed
from sam3lite_core.train.components import build_components
from sam3lite_core.train.loop import train_step


@pytest.mark.slow
def test_sam3_preset_takes_an_optimiser_step_at_336_px(tmp_path):
    dataset = make_dataset(tmp_path / "synth", images=4)
    cfg = tiny_config(
        dataset,
        tmp_path / "runs",
        preset="sam3",
        resolution=336,
        train_batch_size=1,
        ema=False,
        freeze_vision_trunk=True,
        freeze_language_backbone=True,
        lean_host_memory=False,  # process-wide: it would slow every later test in this process
    )
    c = build_components(cfg, init_distributed("cpu"), None)
    assert c.model.cfg.vision.image_size == 336 and cfg.use_activation_checkpointing
    trunk = c.model.backbone.vision_backbone.trunk
    assert not any(p.requires_grad for p in trunk.parameters())
    assert not any(p.requires_grad for p in c.model.backbone.language_backbone.parameters())
    neck = c.model.backbone.vision_backbone
    watched = {
        "trunk": trunk.blocks[0].attn.qkv.weight,
        "neck": next(neck.convs[neck.detection_level].parameters()),  # the level the detector reads
        "decoder": c.model.transformer.decoder.bbox_embed.layers[0].weight,
    }
    before = {name: p.detach().clone() for name, p in watched.items()}
    c.train_data.sampler.set_epoch(0)
    batch, _ = next(iter(c.train_data.loader))
    out = train_step(c, [batch], step=2)  # inside the 6-step schedule: the lr is not 0
    assert not out.skipped and math.isfinite(out.loss) and out.grad_norm > 0
    assert torch.equal(watched["trunk"], before["trunk"])
    assert not torch.equal(watched["neck"], before["neck"])
    assert not torch.equal(watched["decoder"], before["decoder"])
