"""nn.MultiheadAttention (same parameters, same results) whose training forward on the CPU computes attention
in chunks of queries when its attention drops out.

torch's CPU `scaled_dot_product_attention` has no fused kernel with dropout: with `dropout_p > 0` it falls back
to the math kernel, which materialises the whole [batch x heads, queries, keys] matrix, its softmax and its
dropout mask, and keeps them for the backward. For the fusion encoder's self-attention at 1008 px (5184 image
tokens, 4 prompts, 8 heads, upstream's dropout 0.1) one layer's forward and backward took 12.9 GiB more and 18 s,
against 0.14 GiB and 3 s without dropout (issue 21; `bench/bench_train_memory.py` measures the whole step).

`ChunkedAttention` computes a chunk of query rows at a time and keeps only q, k and v: its backward computes each
chunk again (with the same dropout mask, drawn from a seed of its own) and takes that chunk's gradients, so one
chunk's matrix is alive at a time. A query's output row depends on its own row of the matrix alone, so the result
is the plain attention's. An autograd Function rather than torch.utils.checkpoint, which cannot be nested inside
the layers' own activation checkpointing here (the recompute's saved tensors did not match). The fusion encoder
calls its stages (`project`, `attend`, `combine`) itself so that the attention sits between two checkpoints
rather than inside one, where the recomputation would run its whole forward a third time. CUDA has fused
kernels with dropout and takes the plain path, as does everything without dropout or not training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

QUERY_CHUNK = 256  # queries per chunk: [4 prompts x 8 heads, 256, 5184] fp32 is 170 MB


class ChunkedAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + bias) with dropout p, times v; q [N, L, d], k and v [N, S, d], bias broadcasting
    to [N, L, S] (or None) -> [N, L, d]. No gradient flows to `bias`."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, p: float, chunk: int
    ) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,)))  # from the global generator: a seeded run stays reproducible
        with torch.no_grad():
            out = torch.cat([_rows(q, k, v, bias, p, seed, rows) for rows in _chunks(q.shape[1], chunk)], dim=1)
        ctx.save_for_backward(q, k, v, bias)
        ctx.p, ctx.chunk, ctx.seed = p, chunk, seed
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, bias = ctx.saved_tensors
        k, v = k.detach().requires_grad_(), v.detach().requires_grad_()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for rows in _chunks(q.shape[1], ctx.chunk):
            part = q[:, rows].detach().requires_grad_()
            with torch.enable_grad():
                out = _rows(part, k, v, bias, ctx.p, ctx.seed, rows, offset=False)
            gq, gk, gv = torch.autograd.grad(out, (part, k, v), grad[:, rows])
            grad_q[:, rows] = gq
            grad_k += gk
            grad_v += gv
        return grad_q, grad_k, grad_v, None, None, None


def _chunks(length: int, chunk: int) -> list[slice]:
    return [slice(start, start + chunk) for start in range(0, length, chunk)]


def _rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    p: float,
    seed: int,
    rows: slice,
    offset: bool = True,
) -> torch.Tensor:
    """The attention of query rows `rows` (`q` holds all rows when `offset`, else just those)."""
    part = q[:, rows] if offset else q
    # In place where autograd keeps nothing of the overwritten value: fewer chunk-sized fp32 buffers at once.
    scores = torch.matmul(part, k.transpose(1, 2)).float().mul_(1 / math.sqrt(q.shape[-1]))
    if bias is not None:
        scores.add_(bias[:, rows] if bias.shape[1] > 1 else bias)
    probs = scores.softmax(-1)
    if p > 0:
        generator = torch.Generator(device=q.device).manual_seed(seed + rows.start)
        keep = torch.rand(probs.shape, generator=generator, device=q.device) >= p
        probs = probs.mul(keep).mul_(1 / (1 - p))
    return torch.matmul(probs.to(v.dtype), v)


class MultiheadAttention(nn.MultiheadAttention):
    """Sequence-first nn.MultiheadAttention; `query_chunk` None turns the chunking off."""

    def __init__(self, *args: Any, query_chunk: int | None = QUERY_CHUNK, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.query_chunk = query_chunk

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [L, B, D], key and value [S, B, D] -> ([L, B, D], weights or None), as nn.MultiheadAttention."""
        if not self.chunks(query, need_weights, is_causal):
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        q, k, v, bias = self.project(query, key, value, key_padding_mask, attn_mask)
        return self.combine(self.attend(q, k, v, bias), query.shape[1]), None

    def project(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The chunked path's first stage: q [B * heads, L, D / heads], k and v [B * heads, S, D / heads] and
        the masks' additive bias (see `_bias`)."""
        batch, width, heads = query.shape[1], query.shape[2], self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def split(x: torch.Tensor) -> torch.Tensor:  # [T, B, D] -> [B * heads, T, D / heads]
            return x.reshape(x.shape[0], batch * heads, width // heads).transpose(0, 1)

        q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
        return q, k, v, _bias(key_padding_mask, attn_mask, batch, heads, key.shape[0])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The chunked attention of `project`'s outputs: [B * heads, L, D / heads]."""
        return ChunkedAttention.apply(q, k, v, bias, self.dropout, self.query_chunk)

    def combine(self, attended: torch.Tensor, batch: int) -> torch.Tensor:
        """The heads of `attend`'s output joined and projected: [L, B, D]."""
        out = attended.transpose(0, 1).reshape(attended.shape[1], batch, self.embed_dim)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias)

    def chunks(self, query: torch.Tensor, need_weights: bool = False, is_causal: bool = False) -> bool:
        """Whether a call with this query takes the chunked path."""
        return (
            self.query_chunk is not None
            and self.training
            and self.dropout > 0
            and torch.is_grad_enabled()
            and query.device.type == "cpu"
            and not need_weights
            and not is_causal
            and not self.batch_first
            and self._qkv_same_embed_dim
            and self.in_proj_bias is not None
            and query.shape[0] > self.query_chunk
        )


def _bias(
    key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, batch: int, heads: int, keys: int
) -> torch.Tensor | None:
    """The additive bias [B * heads or 1, L or 1, S] of nn.MultiheadAttention's masks (True = not attended)."""
    bias = None
    if key_padding_mask is not None:
        padding = torch.zeros(key_padding_mask.shape, dtype=torch.float32, device=key_padding_mask.device)
        padding = padding.masked_fill(key_padding_mask, float("-inf"))
        bias = padding[:, None, None, :].expand(batch, heads, 1, keys).reshape(batch * heads, 1, keys)
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dim() == 3 else attn_mask[None]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(mask, float("-inf"))
        bias = mask if bias is None else bias + mask
    return bias
