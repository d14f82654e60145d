"""The backbone against upstream: trunk, neck level, sine encoding, text encoder and RoPE tables.

Vendor modules are built at small dims with the arguments `sam3.model_builder` uses for the real model, and their
weights are copied into ours with load_state_dict(strict=True): identical key names are part of the proof.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from reference_keys import reference_keys
from vendor_detector import vendor_vit
from vendor_harness import vendor_class, vendor_tokenizer

from sam3lite_core.model import chunked
from sam3lite_core.model.backbone import Backbone
from sam3lite_core.model.config import PRESETS, VisionConfig
from sam3lite_core.model.neck import VisionBackbone
from sam3lite_core.model.position_encoding import PositionEmbeddingSine
from sam3lite_core.model.rope import block_rope
from sam3lite_core.model.text_encoder import LanguageBackbone
from sam3lite_core.model.vit import ViT
from sam3lite_core.tokenizer import Tokenizer

TOL = 1e-5
TINY = PRESETS["tiny"]
# A grid that is a multiple of neither the window (9 vs 4: padded windows) nor the pretraining grid (9 vs 4: the
# tiled table is cropped), a window block after the last global block, mlp_ratio and drop_path as in sam3.
UNEVEN = replace(TINY.vision, image_size=126, depth=3, global_blocks=(1,), mlp_ratio=4.625, drop_path=0.2)


def vendor_sine(dim: int) -> torch.nn.Module:
    return vendor_class("sam3.model.position_encoding", "PositionEmbeddingSine")(
        num_pos_feats=dim, normalize=True, scale=None, temperature=10000
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize("vision", [TINY.vision, UNEVEN], ids=["tiny", "uneven"])
def test_trunk_matches_vendor(vendor, vision: VisionConfig) -> None:
    torch.manual_seed(0)
    theirs = vendor_vit(vision).eval()
    ours = ViT(vision).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for i, block in enumerate(theirs.blocks):
        assert torch.equal(ours.blocks[i].attn.freqs_cis, block.attn.freqs_cis)
    # A fresh trunk computes the same tables on its own (they are not just the copied buffers).
    assert all(torch.equal(a.attn.freqs_cis, b.attn.freqs_cis) for a, b in zip(ViT(vision).blocks, theirs.blocks))

    images = torch.randn(2, 3, vision.image_size, vision.image_size)
    with torch.no_grad():
        assert max_diff(ours(images), theirs(images)[-1]) <= TOL

    # Training mode: drop_path draws the same random numbers in the same order.
    ours.train(), theirs.train()
    torch.manual_seed(1)
    expected = theirs(images)[-1]
    torch.manual_seed(1)
    assert max_diff(ours(images), expected) <= TOL


def test_trunk_matches_vendor_with_chunked_mlps(vendor, monkeypatch) -> None:
    """The MLPs' chunked path (taken on CPU at full size, chunked.py) forced at small dims: 5 tokens per chunk."""
    monkeypatch.setattr(chunked, "HIDDEN_BYTES", 4 * int(UNEVEN.width * UNEVEN.mlp_ratio) * 5)
    torch.manual_seed(0)
    theirs = vendor_vit(UNEVEN).eval()
    ours = ViT(UNEVEN).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    images = torch.randn(2, 3, UNEVEN.image_size, UNEVEN.image_size, requires_grad=True)
    out = ours(images)
    with torch.no_grad():
        assert max_diff(out, theirs(images)[-1]) <= TOL
    (grad,) = torch.autograd.grad(out.square().sum(), images)
    (expected,) = torch.autograd.grad(theirs(images)[-1].square().sum(), images)
    assert max_diff(grad, expected) <= 1e-4


def test_neck_level_and_position_encoding_match_vendor(vendor) -> None:
    torch.manual_seed(0)
    d_model = TINY.transformer.d_model
    neck = vendor_class("sam3.model.necks", "Sam3DualViTDetNeck")(
        trunk=vendor_vit(TINY.vision),
        position_encoding=vendor_sine(d_model),
        d_model=d_model,
        scale_factors=list(TINY.vision.neck_scales),
        add_sam2_neck=False,
    ).eval()
    ours = VisionBackbone(TINY).eval()
    ours.load_state_dict(neck.state_dict(), strict=True)
    images = torch.randn(2, 3, TINY.vision.image_size, TINY.vision.image_size)
    with torch.no_grad():
        features, pos = ours(images)
        their_features, their_pos, _, _ = neck(images)
    assert features.shape == (2, d_model, TINY.vision.grid_size, TINY.vision.grid_size)
    assert max_diff(features, their_features[2]) <= TOL
    assert max_diff(pos, their_pos[2]) <= TOL


def test_sine_encoding_matches_vendor(vendor) -> None:
    ours, theirs = PositionEmbeddingSine(64), vendor_sine(64)
    feature_map = torch.zeros(3, 5, 7, 11)
    assert max_diff(ours(feature_map), theirs(feature_map)) <= TOL
    assert ours(feature_map.double()).dtype == torch.float64  # cached per dtype, in the input's dtype
    cx, cy, w, h = torch.rand(4, 6)
    assert max_diff(ours.encode_boxes(cx, cy, w, h), theirs.encode_boxes(cx, cy, w, h)) <= TOL


def test_text_encoder_matches_vendor(vendor) -> None:
    torch.manual_seed(0)
    # VETextEncoder fixes mlp_ratio 4 and the projection width 512.
    text = replace(TINY.text, layers=2, mlp_width=4 * TINY.text.width, projection_dim=512)
    cfg = replace(TINY, text=text)
    theirs = vendor_class("sam3.model.text_encoder_ve", "VETextEncoder")(
        d_model=cfg.transformer.d_model,
        tokenizer=vendor_tokenizer(),
        width=text.width,
        heads=text.heads,
        layers=text.layers,
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        use_act_checkpoint=False,
    ).eval()
    with torch.no_grad():  # upstream leaves these torch.empty
        theirs.encoder.positional_embedding.normal_(std=0.01)
        theirs.encoder.text_projection.normal_(std=0.01)
    ours = LanguageBackbone(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)

    captions = ["a cat", "traffic light", "", "a person riding a red bicycle " * 6]
    with torch.no_grad():
        features, mask = ours(Tokenizer()(captions, context_length=text.context_length))
        their_mask, their_features, _ = theirs(captions, device="cpu")
    assert features.shape == (text.context_length, len(captions), cfg.transformer.d_model)
    assert torch.equal(mask, their_mask)
    assert max_diff(features, their_features) <= TOL


def test_rope_tables_at_1008_equal_vendor_buffers(vendor) -> None:
    vision = PRESETS["sam3"].vision
    attention = vendor_class("sam3.model.vitdet", "Attention")
    window = (vision.window_size, vision.window_size)
    for block, size in ((0, window), (vision.global_blocks[0], (vision.grid_size, vision.grid_size))):
        theirs = attention(
            vision.width,
            num_heads=vision.heads,
            use_rope=True,
            input_size=size,
            rope_pt_size=window,
            rope_interp=True,
        ).freqs_cis
        ours = block_rope(vision, block)
        assert ours.shape == (size[0] * size[1], vision.width // vision.heads // 2)
        assert torch.equal(ours, theirs)


def test_sam3_backbone_keys_and_shapes_equal_reference() -> None:
    with torch.device("meta"):
        model = torch.nn.Module()
        model.backbone = Backbone(PRESETS["sam3"])
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    reference = [(k, shape) for k, shape in reference_keys("sam3_boxonly_state_dict.tsv") if k.startswith("backbone.")]
    assert ours == reference
    assert sum(k.endswith("attn.freqs_cis") for k, _ in ours) == 32


def test_backbone_outputs_and_activation_checkpointing() -> None:
    torch.manual_seed(0)
    backbone = Backbone(TINY).train()
    images = torch.randn(2, 3, TINY.vision.image_size, TINY.vision.image_size)
    tokens = Tokenizer()(["a cat", "dog"], context_length=TINY.text.context_length)

    def grads() -> list[torch.Tensor]:
        backbone.zero_grad()
        features, pos = backbone.forward_image(images)
        text, mask = backbone.forward_text(tokens)
        (features.square().sum() + text[~mask.T].sum()).backward()
        return [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    plain = grads()
    backbone.set_activation_checkpointing(True)
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    assert max(max_diff(a, b) for a, b in zip(plain, checkpointed)) <= TOL

    g = TINY.vision.grid_size
    features, pos = backbone.forward_image(images)
    assert features.shape == pos.shape == (2, TINY.transformer.d_model, g, g)
    text, mask = backbone.forward_text(tokens)
    assert text.shape == (TINY.text.context_length, 2, TINY.transformer.d_model)
    assert mask.tolist()[0][:5] == [False] * 4 + [True]  # SOT a cat EOT, then padding
    assert not any(math.isnan(p.sum().item()) for p in backbone.parameters())


def test_backbone_rejects_bad_inputs() -> None:
    backbone = Backbone(TINY)
    with pytest.raises(ValueError, match="context_length=32"):
        backbone.forward_text(torch.ones(1, 40, dtype=torch.long))
    with pytest.raises(ValueError, match="built for 112x112"):
        backbone.forward_image(torch.zeros(1, 3, 140, 140))
    with pytest.raises(ValueError, match="must contain 1.0"):
        Backbone(replace(TINY, vision=replace(TINY.vision, neck_scales=(2.0, 0.5))))
    with pytest.raises(ValueError, match="divisible by 4"):
        Backbone(replace(TINY, vision=replace(TINY.vision, width=36, heads=2)))
