"""The fusion encoder (prefix transformer.encoder): image tokens attend to themselves and to the prompt.

Its pre-norm layer is also the geometry encoder's layer (prefix geometry_encoder.encode); the two differ
only in which positional encodings they pass, so one class serves both and the key names match upstream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3lite_core.model.attention import MultiheadAttention
from sam3lite_core.model.chunked import map_rows
from sam3lite_core.model.config import TransformerConfig


class PreNormAttentionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to a memory, then a ReLU FFN; all sequence-first.

    `query_pos` (added to the self-attention queries and keys) and `memory_pos` (added to the
    cross-attention keys) are optional: the fusion encoder passes the image position encoding as
    `query_pos`, the geometry encoder passes it as `memory_pos`.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        # Image tokens are the queries (5184 at 1008 px): chunked in training on the CPU (model/attention.py).
        self.self_attn = MultiheadAttention(d, cfg.heads, dropout=cfg.dropout)
        self.cross_attn_image = MultiheadAttention(d, cfg.heads, dropout=cfg.dropout)
        self.linear1 = nn.Linear(d, cfg.ffn_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.linear2 = nn.Linear(cfg.ffn_dim, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        memory_pos: torch.Tensor | None = None,
        tgt_padding_mask: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt [S, B, D], memory [M, B, D], query_pos like tgt, memory_pos like memory,
        tgt_padding_mask [B, S] and memory_padding_mask [B, M] (True = padding) -> [S, B, D]."""
        tgt = self.attend_self(tgt, query_pos, tgt_padding_mask)
        return self.attend_memory(tgt, memory, memory_pos, memory_padding_mask)

    def attend_self(
        self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None, tgt_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The self-attention sub-layer with its residual (shapes as in `forward`)."""
        x = self.norm1(tgt)
        q = k = x if query_pos is None else x + query_pos
        x = self.self_attn(q, k, x, key_padding_mask=tgt_padding_mask, need_weights=False)[0]
        return tgt + self.dropout1(x)

    def self_attention_inputs(
        self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None, tgt_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`attend_self` up to its chunked attention: `MultiheadAttention.project`'s q, k, v and bias."""
        x = self.norm1(tgt)
        q = k = x if query_pos is None else x + query_pos
        return self.self_attn.project(q, k, x, key_padding_mask=tgt_padding_mask)

    def after_self_attention(self, tgt: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """`attend_self` from its chunked attention's output on: the projection, dropout and residual."""
        return tgt + self.dropout1(self.self_attn.combine(attended, tgt.shape[1]))

    def attend_memory(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The cross-attention and FFN sub-layers with their residuals (shapes as in `forward`)."""
        x = self.norm2(tgt)
        key = memory if memory_pos is None else memory + memory_pos
        x = self.cross_attn_image(x, key, memory, key_padding_mask=memory_padding_mask, need_weights=False)[0]
        tgt = tgt + self.dropout2(x)

        x = map_rows(self._ffn, self.norm3(tgt), self.linear1.out_features)  # chunks of tokens on CPU
        return tgt + self.dropout3(x)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU in place on the linear's fresh output (its backward does not need it): no second hidden buffer.
        return self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))


class FusionEncoder(nn.Module):
    """`encoder_layers` pre-norm layers over the image tokens of each find query.

    Each layer: image self-attention with the sine position encoding on queries and keys, then image
    tokens cross-attend to the prompt (text + geometry tokens, padding masked), then the FFN. The prompt
    itself is not updated, and there is no final norm.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.activation_checkpointing = False
        self.layers = nn.ModuleList(PreNormAttentionLayer(cfg) for _ in range(cfg.encoder_layers))

    def forward(
        self,
        image: torch.Tensor,
        image_pos: torch.Tensor,
        img_ids: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> torch.Tensor:
        """image, image_pos [HW, B, D] seq-first, one column per image; img_ids long [Q], the image of each find
        query; prompt [P, Q, D], prompt_mask [Q, P] True at padding -> memory [HW, Q, D].

        No image token has attended to a prompt before the first cross-attention, so the first self-attention
        (an HW x HW attention per head, the costliest sub-layer) is the same for all queries of an image: it
        runs once per image and each query takes its image's result. The output is the same as running every
        query through every layer (in training, that sub-layer's dropout is shared by the queries of an image).
        """
        first, *rest = self.layers
        x = self._attend_self(first, image, image_pos)[:, img_ids]
        query_pos = image_pos[:, img_ids]
        x = self._run(first.attend_memory, x, prompt, None, prompt_mask)
        for layer in rest:
            x = self._attend_self(layer, x, query_pos)
            x = self._run(layer.attend_memory, x, prompt, None, prompt_mask)
        return x

    def _attend_self(self, layer: PreNormAttentionLayer, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """`layer.attend_self(x, pos)`. With activation checkpointing and a chunked attention, that attention
        stays outside the checkpoints around it: it keeps only q, k and v anyway, and inside one its whole
        forward (seconds a layer at 1008 px) would run a third time, in the recomputation."""
        if not (self.activation_checkpointing and self.training and layer.self_attn.chunks(x)):
            return self._run(layer.attend_self, x, pos)
        q, k, v, bias = checkpoint(layer.self_attention_inputs, x, pos, use_reentrant=False)
        return checkpoint(layer.after_self_attention, x, layer.self_attn.attend(q, k, v, bias), use_reentrant=False)

    def _run(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor | None) -> torch.Tensor:
        if self.activation_checkpointing and self.training:
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
