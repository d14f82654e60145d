"""Optimiser groups: families, layer decay and weight-decay exemptions, and group-by-group equality with
upstream's construct_optimizer + layer_decay_param_modifier as the roboflow config wires them."""

from __future__ import annotations

import importlib
import types

import pytest
import torch
import vendor_harness
from torch import nn

from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.train.optim import OptimSettings, build_optimizer, clip_gradients, param_groups, trunk_layer_id

WIDTH = 8


class SubclassedNorm(nn.LayerNorm):
    """Upstream exempts modules of exactly type nn.LayerNorm; a subclass keeps weight decay on its weight."""


def _block(rel_pos: bool) -> nn.Module:
    block = nn.Module()
    block.norm1 = nn.LayerNorm(WIDTH)
    block.attn = nn.Module()
    block.attn.qkv = nn.Linear(WIDTH, 3 * WIDTH)
    block.attn.proj = nn.Linear(WIDTH, WIDTH)
    if rel_pos:
        block.attn.rel_pos_h = nn.Parameter(torch.zeros(3, WIDTH))
    block.norm2 = nn.LayerNorm(WIDTH)
    block.mlp = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))
    return block


def vendor_style_model() -> nn.Module:
    """A small module tree with upstream's parameter names, one of each kind the grouping rules care about."""
    trunk = nn.Module()
    trunk.patch_embed = nn.Module()
    trunk.patch_embed.proj = nn.Conv2d(3, WIDTH, 2, 2, bias=False)
    trunk.pos_embed = nn.Parameter(torch.zeros(1, 5, WIDTH))
    trunk.blocks = nn.ModuleList([_block(rel_pos=i == 1) for i in range(3)])
    trunk.ln_pre = nn.LayerNorm(WIDTH)
    vision = nn.Module()
    vision.trunk = trunk
    vision.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(WIDTH, 4, 1), nn.Conv2d(4, 4, 3, padding=1))])
    text = nn.Module()
    text.token_embedding = nn.Embedding(11, WIDTH)
    text.positional_embedding = nn.Parameter(torch.zeros(4, WIDTH))
    text.resblocks = nn.ModuleList([nn.MultiheadAttention(WIDTH, 2)])
    text.ln_final = nn.LayerNorm(WIDTH)
    language = nn.Module()
    language.encoder = text
    language.resizer = nn.Linear(WIDTH, WIDTH)
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.vision_backbone = vision
    model.backbone.language_backbone = language
    model.transformer = nn.Module()
    model.transformer.decoder = nn.Module()
    model.transformer.decoder.query_embed = nn.Embedding(5, WIDTH)
    model.transformer.decoder.norm = nn.LayerNorm(WIDTH)
    model.transformer.decoder.bbox_embed = nn.Linear(WIDTH, 4)
    model.geometry_encoder = nn.Module()
    model.geometry_encoder.norm = SubclassedNorm(WIDTH)
    model.dot_prod_scoring = nn.Linear(WIDTH, WIDTH)
    return model


def settings_by_name(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    names = {id(param): name for name, param in model.named_parameters()}
    return {names[id(p)]: (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}


def test_families_layer_decay_and_exemptions():
    model = vendor_style_model()
    settings = settings_by_name(model, param_groups(model))
    assert len(settings) == len(list(model.parameters()))
    trunk = "backbone.vision_backbone.trunk."
    # 3 blocks: block i has scale 0.9^(3 - i), the stem 0.9^4, pos_embed and rel_pos 1.
    assert settings[trunk + "blocks.2.attn.qkv.weight"] == pytest.approx((2.5e-5 * 0.9, 0.1))
    assert settings[trunk + "blocks.0.mlp.0.bias"] == pytest.approx((2.5e-5 * 0.9**3, 0.0))
    assert settings[trunk + "patch_embed.proj.weight"] == pytest.approx((2.5e-5 * 0.9**4, 0.1))
    assert settings[trunk + "ln_pre.weight"] == pytest.approx((2.5e-5 * 0.9**4, 0.0))
    assert settings[trunk + "pos_embed"] == pytest.approx((2.5e-5, 0.1))
    assert settings[trunk + "blocks.1.attn.rel_pos_h"] == pytest.approx((2.5e-5, 0.1))
    assert settings["backbone.vision_backbone.convs.0.1.weight"] == pytest.approx((2.5e-5, 0.1))
    assert settings["backbone.language_backbone.encoder.resblocks.0.in_proj_bias"] == pytest.approx((5e-6, 0.0))
    assert settings["backbone.language_backbone.encoder.positional_embedding"] == pytest.approx((5e-6, 0.1))
    assert settings["transformer.decoder.query_embed.weight"] == pytest.approx((8e-5, 0.1))
    assert settings["transformer.decoder.norm.weight"] == pytest.approx((8e-5, 0.0))
    assert settings["geometry_encoder.norm.weight"] == pytest.approx((8e-5, 0.1))
    assert settings["geometry_encoder.norm.bias"] == pytest.approx((8e-5, 0.0))


def test_trunk_layer_ids():
    assert trunk_layer_id("backbone.vision_backbone.trunk.blocks.31.attn.qkv.weight", 32) == 32
    assert trunk_layer_id("backbone.vision_backbone.trunk.ln_pre.bias", 32) == 0
    assert trunk_layer_id("backbone.vision_backbone.trunk.blocks.4.attn.rel_pos_w", 32) == 33


def test_frozen_parameters_are_left_out_and_optimizer_builds():
    model = vendor_style_model()
    model.backbone.language_backbone.requires_grad_(False)
    optimizer = build_optimizer(model, OptimSettings(lr_scale=1.0))
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert max(group["lr"] for group in optimizer.param_groups) == pytest.approx(8e-4)


def test_clip_gradients_returns_the_norm_before_clipping():
    layer = nn.Linear(3, 1, bias=False)
    layer.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    assert clip_gradients(layer).item() == pytest.approx(5.0)
    assert layer.weight.grad.norm().item() == pytest.approx(0.1, rel=1e-4)


def vendor_groups(model: nn.Module, trunk: nn.Module) -> list[dict]:
    """Upstream's optimizer, configured as roboflow_v100_full_ft_100_images.yaml, lr read at the warmup end."""
    omegaconf = pytest.importorskip("omegaconf")
    vendor_optim = importlib.import_module("sam3.train.optim.optimizer")
    vit = vendor_harness.vendor_class("sam3.model.vitdet", "ViT")
    # Upstream's layer ids come from its ViT; bind them to this trunk (they only read the names and len(blocks)).
    trunk.get_layer_id = types.MethodType(vit.get_layer_id, trunk)
    trunk.get_num_layers = types.MethodType(vit.get_num_layers, trunk)

    def lr(base: float, names: list[str] | None = None) -> dict:
        scheduler = {
            "_target_": "sam3.train.optim.schedulers.InverseSquareRootParamScheduler",
            "base_lr": base,
            "timescale": 20,
            "warmup_steps": 20,
            "cooldown_steps": 20,
        }
        return {"scheduler": scheduler, **({"param_names": names} if names else {})}

    constant = "fvcore.common.param_scheduler.ConstantParamScheduler"
    options = omegaconf.OmegaConf.create(
        {
            "lr": [
                lr(8e-4 * 0.1),
                lr(2.5e-4 * 0.1, ["backbone.vision_backbone.*"]),
                lr(5e-5 * 0.1, ["backbone.language_backbone.*"]),
            ],
            "weight_decay": [
                {"scheduler": {"_target_": constant, "value": 0.1}},
                {
                    "scheduler": {"_target_": constant, "value": 0.0},
                    "param_names": ["*bias*"],
                    "module_cls_names": ["torch.nn.LayerNorm"],
                },
            ],
        }
    )
    modifiers = [
        omegaconf.OmegaConf.create(
            {
                "_target_": "sam3.train.optim.optimizer.layer_decay_param_modifier",
                "_partial_": True,
                "layer_decay_value": 0.9,
                "apply_to": "backbone.vision_backbone.trunk",
                "overrides": [{"pattern": "*pos_embed*", "value": 1.0}],
            }
        )
    ]
    optimizer = vendor_optim.construct_optimizer(
        model, omegaconf.OmegaConf.create({"_target_": "torch.optim.AdamW"}), options, modifiers
    )
    optimizer.step_schedulers(where=20 / 1000, step=20)  # end of warmup: every factor is 1
    return optimizer.optimizer.param_groups


@pytest.mark.parametrize("which", ["vendor_style_tree", "tiny", "sam3"])
def test_groups_equal_vendor(vendor, which):
    # The full-size preset on the meta device: real names and 32 trunk blocks, no memory.
    model = vendor_style_model() if which == "vendor_style_tree" else build_model(which, device="meta")
    theirs = vendor_groups(model, model.backbone.vision_backbone.trunk)
    ours = param_groups(model)
    assert len(ours) == len(theirs) == {"vendor_style_tree": 15, "tiny": 13, "sam3": 73}[which]
    for mine, upstream in zip(ours, theirs):
        assert [id(p) for p in mine["params"]] == [id(p) for p in upstream["params"]], mine["name"]
        assert mine["lr"] == pytest.approx(upstream["lr"], rel=1e-12), mine["name"]
        assert mine["weight_decay"] == upstream["weight_decay"], mine["name"]
