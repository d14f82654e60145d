"""Parity of every module after the backbone with upstream, module by module, at small dims.

Each test builds the upstream module (tests/vendor_detector.py), gives it distinct random weights, copies them
into ours with load_state_dict(strict=True) (identical key names are part of the proof), feeds both the same
inputs and compares outputs: max abs diff <= 1e-5 in fp32.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
import torch
import vendor_detector as vd

from sam3lite_core.model import chunked
from sam3lite_core.model.config import PRESETS
from sam3lite_core.model.decoder import BoxDecoder
from sam3lite_core.model.fusion_encoder import FusionEncoder
from sam3lite_core.model.geometry_encoder import SequenceGeometryEncoder
from sam3lite_core.model.mlp import MLP
from sam3lite_core.model.position_encoding import PositionEmbeddingSine
from sam3lite_core.model.scoring import DotProductScoring

TOL = 1e-5
CFG = PRESETS["tiny"]
T = replace(
    CFG.transformer,
    d_model=32,
    heads=4,
    ffn_dim=48,
    dropout=0.0,
    geometry_layers=2,
    encoder_layers=2,
    decoder_layers=3,
    num_queries=6,
    num_o2m_queries=6,
    scoring_mlp_dim=40,
)
MODEL_CFG = replace(CFG, transformer=T)
Q = 3  # find queries


def _copy(vendor_module: torch.nn.Module, ours: torch.nn.Module, seed: int) -> None:
    vd.randomize_(vendor_module, seed)
    ours.load_state_dict(vendor_module.state_dict(), strict=True)
    vendor_module.eval()
    ours.eval()


def _image(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tokens and their sine encoding, both [HW, Q, D] seq-first."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(h * w, Q, T.d_model, generator=g)
    pos = PositionEmbeddingSine(T.d_model)(torch.zeros(Q, 1, h, w)).flatten(2).permute(2, 0, 1)
    return image, pos


def _prompt(seed: int, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens [P, Q, D] and a right-padding mask [Q, P] with 7, 4 and 1 valid tokens."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randn(length, Q, T.d_model, generator=g)
    valid = torch.tensor([7, 4, 1])
    return prompt, torch.arange(length)[None, :] >= valid[:, None]


def _box_prompts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """boxes [Q, 3, 4] cxcywh, labels [Q, 3] mixing positives and negatives, padding [Q, 3] (3, 2, 0 valid)."""
    g = torch.Generator().manual_seed(5)
    boxes = torch.cat([torch.rand(Q, 3, 2, generator=g) * 0.6 + 0.2, torch.rand(Q, 3, 2, generator=g) * 0.3 + 0.05], -1)
    labels = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1]])
    padding = torch.tensor([[False, False, False], [False, False, True], [True, True, True]])
    return boxes, labels, padding


def test_mlp_matches_upstream(vendor):
    theirs = vd.V("sam3.model.model_misc", "MLP")(8, 16, 8, 3, residual=True, out_norm=torch.nn.LayerNorm(8))
    ours = MLP(8, 16, 8, 3, residual=True, out_norm=torch.nn.LayerNorm(8))
    _copy(theirs, ours, seed=1)
    x = torch.randn(5, 4, 8)
    assert vd.max_abs_diff(ours(x), theirs(x)) <= TOL


def _geometry_pair() -> tuple[torch.nn.Module, SequenceGeometryEncoder]:
    theirs, ours = vd.geometry_encoder(T), SequenceGeometryEncoder(T)
    _copy(theirs, ours, seed=2)
    return theirs, ours


@torch.no_grad()
def test_geometry_encoder_text_only_gives_one_token(vendor):
    prompt_cls = importlib.import_module("sam3.model.geometry_encoders").Prompt
    theirs, ours = _geometry_pair()
    h, w = 6, 5
    image, pos = _image(h, w, seed=3)
    tokens, mask = ours(image, pos, (h, w))
    empty = prompt_cls(box_embeddings=torch.zeros(0, Q, 4), box_mask=torch.zeros(Q, 0, dtype=torch.bool))
    ref_tokens, ref_mask = theirs(empty, [image], [(h, w)], [pos])
    assert tokens.shape == (1, Q, T.d_model) and not mask.any()
    assert torch.equal(mask, ref_mask)
    assert vd.max_abs_diff(tokens, ref_tokens) <= TOL


@torch.no_grad()
def test_geometry_encoder_with_positive_and_negative_boxes(vendor):
    prompt_cls = importlib.import_module("sam3.model.geometry_encoders").Prompt
    theirs, ours = _geometry_pair()
    h, w = 6, 5
    image, pos = _image(h, w, seed=4)
    boxes, labels, padding = _box_prompts()
    tokens, mask = ours(image, pos, (h, w), boxes, labels, padding)
    geo = prompt_cls(box_embeddings=boxes.transpose(0, 1), box_mask=padding, box_labels=labels.transpose(0, 1))
    ref_tokens, ref_mask = theirs(geo, [image], [(h, w)], [pos])
    assert tokens.shape == (4, Q, T.d_model)
    assert torch.equal(mask, ref_mask)
    assert vd.max_abs_diff(tokens, ref_tokens) <= TOL

    # Left padding works too: the valid boxes are moved to the front, in order, before encoding.
    order = (~padding).long().argsort(dim=1, stable=True)
    left = ours(
        image,
        pos,
        (h, w),
        boxes.gather(1, order[..., None].expand(-1, -1, 4)),
        labels.gather(1, order),
        padding.gather(1, order),
    )
    valid = ~mask.T
    assert torch.equal(left[1], mask)
    assert vd.max_abs_diff(left[0][valid], tokens[valid]) <= TOL


def test_geometry_encoder_refuses_points():
    ours = SequenceGeometryEncoder(T)
    image, pos = _image(2, 2, seed=0)
    with pytest.raises(ValueError, match="point prompts are not supported"):
        ours(image, pos, (2, 2), points=torch.rand(Q, 1, 2))


@torch.no_grad()
@pytest.mark.parametrize("chunk_rows", [None, 7], ids=["whole", "ffn_in_chunks"])
def test_fusion_encoder_matches_upstream(vendor, monkeypatch, chunk_rows):
    if chunk_rows:  # the FFN's chunked path (taken on CPU at full size, chunked.py)
        monkeypatch.setattr(chunked, "HIDDEN_BYTES", 4 * T.ffn_dim * chunk_rows)
    theirs, ours = vd.fusion_encoder(T), FusionEncoder(T)
    _copy(theirs, ours, seed=6)
    h, w = 6, 5
    image, pos = _image(h, w, seed=7)  # three images; the last two queries share image 2, image 1 is unused
    img_ids = torch.tensor([0, 2, 2])
    prompt, prompt_mask = _prompt(seed=8)
    memory = ours(image, pos, img_ids, prompt, prompt_mask)
    ref = theirs(
        src=[image[:, img_ids]],
        prompt=prompt,
        src_pos=[pos[:, img_ids]],
        prompt_key_padding_mask=prompt_mask,
        prompt_pos=torch.zeros_like(prompt),
        feat_sizes=[(h, w)],
    )
    assert memory.shape == (h * w, Q, T.d_model)
    assert vd.max_abs_diff(memory, ref["memory"]) <= TOL


def _vendor_decode(theirs: torch.nn.Module, memory, pos, prompt, prompt_mask, feat_size, train: bool):
    """Upstream `Sam3Image._run_decoder` + `_update_scores_and_boxes` (boxes part): hs [L, Q, N, D],
    boxes [L, Q, N, 4], presence [L, Q, 1]."""
    inverse_sigmoid = importlib.import_module("sam3.model.model_misc").inverse_sigmoid
    tgt = theirs.query_embed.weight.unsqueeze(1).repeat(1, memory.shape[1], 1)
    hs, refs, presence, _ = theirs(
        tgt=tgt,
        memory=memory,
        memory_key_padding_mask=None,
        pos=pos,
        reference_boxes=None,
        level_start_index=torch.zeros(1, dtype=torch.long),
        spatial_shapes=torch.tensor([feat_size]),
        valid_ratios=torch.ones(memory.shape[1], 1, 2),
        tgt_mask=None,
        memory_text=prompt,
        text_attention_mask=prompt_mask,
        apply_dac=train,
    )
    hs, refs = hs.transpose(1, 2), refs.transpose(1, 2)
    boxes = (inverse_sigmoid(refs) + theirs.bbox_embed(hs)).sigmoid()
    return hs, boxes, presence.transpose(1, 2)


def _decoder_pair(train: bool) -> tuple[torch.nn.Module, BoxDecoder]:
    theirs, ours = vd.decoder(MODEL_CFG), BoxDecoder(T)
    _copy(theirs, ours, seed=9)
    theirs.train(train)
    ours.train(train)
    return theirs, ours


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train_dac"])
def test_decoder_matches_upstream(vendor, train):
    theirs, ours = _decoder_pair(train)
    feat_size = (CFG.vision.grid_size, CFG.vision.grid_size)
    image, pos = _image(*feat_size, seed=10)
    prompt, prompt_mask = _prompt(seed=11)
    hs, boxes, presence = ours(image, pos, feat_size, prompt, prompt_mask)
    ref_hs, ref_boxes, ref_presence = _vendor_decode(theirs, image, pos, prompt, prompt_mask, feat_size, train)
    n = T.num_queries * (2 if train else 1)  # DAC appends the one-to-many queries in training
    assert hs.shape == (T.decoder_layers, Q, n, T.d_model)
    assert boxes.shape == (T.decoder_layers, Q, n, 4) and presence.shape == (T.decoder_layers, Q, 1)
    assert vd.max_abs_diff(hs, ref_hs) <= TOL
    assert vd.max_abs_diff(boxes, ref_boxes) <= TOL
    assert vd.max_abs_diff(presence, ref_presence) <= TOL
    if not train:
        return
    # Same gradients too: anchors are detached per layer, the returned boxes look forward twice.
    weights = torch.randn_like(boxes)
    ((boxes * weights).sum() + hs.sum() + presence.sum()).backward()
    ((ref_boxes * weights).sum() + ref_hs.sum() + ref_presence.sum()).backward()
    grads = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        assert vd.max_abs_diff(param.grad, grads[name].grad) <= 1e-4, name


@torch.no_grad()
def test_scoring_matches_upstream(vendor):
    theirs, ours = vd.scoring(T), DotProductScoring(T)
    _copy(theirs, ours, seed=12)
    prompt, prompt_mask = _prompt(seed=13)
    g = torch.Generator().manual_seed(14)
    hs = torch.randn(2, Q, T.num_queries, T.d_model, generator=g) * 30  # some logits hit the +-12 clamp
    logits = ours(hs, prompt, prompt_mask)
    ref = theirs(hs, prompt, prompt_mask)
    assert logits.shape == (2, Q, T.num_queries, 1)
    assert (logits.abs() == T.logit_clamp).any()
    assert vd.max_abs_diff(logits, ref) <= TOL


def test_decoder_rejects_unequal_one_to_many_count():
    with pytest.raises(ValueError, match="num_o2m_queries"):
        BoxDecoder(replace(T, num_o2m_queries=T.num_queries + 1))
