"""The fusion encoder's attention in chunks of queries (model/attention.py, a memory setting of full-size CPU
training) gives the plain attention's outputs and gradients: for one module, and for a whole model's step.

The chunked path runs only with attention dropout; a dropout of 1e-9 takes it (and the plain path torch's math
kernel, as 0.1 does) while dropping nothing in practice, so the two paths can be compared exactly."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from sam3lite_core.batch import Batch
from sam3lite_core.model.attention import MultiheadAttention
from sam3lite_core.model.config import PRESETS
from sam3lite_core.model.sam3lite import build_model

NEARLY_NO_DROPOUT = 1e-9


def test_chunks_of_queries_equal_the_whole_attention():
    torch.manual_seed(0)
    chunked = MultiheadAttention(32, 4, dropout=NEARLY_NO_DROPOUT, query_chunk=16).train()
    plain = nn.MultiheadAttention(32, 4, dropout=NEARLY_NO_DROPOUT).train()
    plain.load_state_dict(chunked.state_dict())
    query, memory = torch.randn(50, 3, 32), torch.randn(20, 3, 32)
    padding = torch.zeros(3, 20, dtype=torch.bool)
    padding[0, -5:] = True
    bias = torch.rand(3 * 4, 50, 20) > 0.8  # True: not attended, as the padding mask (one mask type for both)
    bias[..., 0] = False
    answers = []
    for module in (chunked, plain):
        q = query.clone().requires_grad_()
        out = module(q, memory, memory, key_padding_mask=padding, attn_mask=bias, need_weights=False)[0]
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        answers.append((out, q.grad, module.in_proj_weight.grad, module.out_proj.weight.grad))
    assert chunked.chunks(query)
    for ours, theirs in zip(*answers):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)  # sums over chunks: fp32 rounding


def _step(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = out["pred_logits"].float().square().mean() + out["pred_boxes"].float().sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_training_step_is_the_same_with_chunked_attention():
    cfg = PRESETS["tiny"]
    cfg = replace(cfg, transformer=replace(cfg.transformer, dropout=NEARLY_NO_DROPOUT))
    torch.manual_seed(1)
    model = build_model(cfg).train()
    model.set_activation_checkpointing(True)  # the chunks run inside the layers' own checkpointing, as in training
    size = cfg.vision.image_size
    batch = Batch(torch.rand(1, 3, size, size), torch.zeros(2, dtype=torch.long), ["a", "b"], torch.arange(2))
    chunked_modules = [m for m in model.transformer.encoder.modules() if isinstance(m, MultiheadAttention)]
    assert chunked_modules
    for module in chunked_modules:
        module.query_chunk = 16  # tiny has 8 x 8 image tokens at 112 px
    torch.manual_seed(2)
    chunked = _step(model, batch)
    for module in chunked_modules:
        module.query_chunk = None
    torch.manual_seed(2)
    plain = _step(model, batch)
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-5, atol=1e-6)
    assert chunked[1].keys() == plain[1].keys()
    for name in plain[1]:
        torch.testing.assert_close(chunked[1][name], plain[1][name], rtol=1e-4, atol=1e-5, msg=name)
