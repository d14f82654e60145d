"""Dot-product scoring: how well each decoder query matches its find query's prompt (prefix dot_prod_scoring)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sam3lite_core.model.config import TransformerConfig
from sam3lite_core.model.mlp import MLP


def masked_mean(tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens: tokens [S, B, D], padding_mask [B, S] (True = padding) -> [B, D]."""
    valid = (~padding_mask).to(tokens.dtype).transpose(0, 1).unsqueeze(-1)  # [S, B, 1]
    count = valid.sum(dim=0).clamp(min=1.0)  # an all-padding row gives zeros instead of NaN
    return (tokens * valid).sum(dim=0) / count


class DotProductScoring(nn.Module):
    """One binary logit per query: is this query an object named by this prompt?

    The prompt tokens get a residual MLP and a LayerNorm, are mean-pooled over the valid tokens and
    projected; the queries are projected too, and the logit is their scaled dot product. There is no
    class vocabulary: a "class" is whatever text (plus exemplar boxes) the find query carries.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.prompt_mlp = MLP(
            d, cfg.scoring_mlp_dim, d, num_layers=2, dropout=cfg.dropout, residual=True, out_norm=nn.LayerNorm(d)
        )
        self.prompt_proj = nn.Linear(d, d)
        self.hs_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)
        self.clamp = cfg.logit_clamp

    def forward(self, hs: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """hs [L, Q, N, D] (decoder layers, find queries, object queries), prompt [P, Q, D] seq-first,
        prompt_mask [Q, P] True at padding -> logits [L, Q, N, 1], clamped to +-logit_clamp.

        The clamp (12 for sam3) keeps the focal loss and the matcher away from saturated sigmoids.
        """
        pooled = self.prompt_proj(masked_mean(self.prompt_mlp(prompt), prompt_mask))  # [Q, D]
        logits = torch.matmul(self.hs_proj(hs), pooled.unsqueeze(-1)) * self.scale
        return logits.clamp(min=-self.clamp, max=self.clamp)
