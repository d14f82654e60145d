"""The fusion encoder (prefix transformer.encoder): image tokens attend to themselves and to the prompt.

Its pre-norm layer is also the geometry encoder's layer (prefix geometry_encoder.encode); the two differ
only in which positional encodings they pass, so one class serves both and the key names match upstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

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
        self.self_attn = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout)
        self.cross_attn_image = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout)
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
        x = self.norm1(tgt)
        q = k = x if query_pos is None else x + query_pos
        x = self.self_attn(q, k, x, key_padding_mask=tgt_padding_mask, need_weights=False)[0]
        tgt = tgt + self.dropout1(x)

        x = self.norm2(tgt)
        key = memory if memory_pos is None else memory + memory_pos
        x = self.cross_attn_image(x, key, memory, key_padding_mask=memory_padding_mask, need_weights=False)[0]
        tgt = tgt + self.dropout2(x)

        x = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout3(x)


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
        self, image: torch.Tensor, image_pos: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor
    ) -> torch.Tensor:
        """image, image_pos [HW, Q, D] seq-first, prompt [P, Q, D], prompt_mask [Q, P] True at padding
        -> memory [HW, Q, D]."""
        x = image
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(
                    layer, x, prompt, query_pos=image_pos, memory_padding_mask=prompt_mask, use_reentrant=False
                )
            else:
                x = layer(x, prompt, query_pos=image_pos, memory_padding_mask=prompt_mask)
        return x
