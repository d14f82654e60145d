"""CLIP-style causal text encoder and its resizer (upstream `VETextEncoder`, prefix backbone.language_backbone).

Token ids -> token + learnt positional embedding -> pre-LN causal transformer blocks -> ln_final -> resizer
(width -> d_model). All token states are returned (no pooling). Upstream also multiplies the states by
`text_projection` and discards the result; the parameter is kept for checkpoint compatibility, the product is not
computed. Like upstream, attention is causal only: padding is not masked inside the encoder, the padding mask
goes to the consumers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from sam3lite_core.model.config import ModelConfig, TextConfig

PAD_TOKEN_ID = 0


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with nn.MultiheadAttention's parameter names and initialisation
    (`in_proj_weight`, `in_proj_bias`, `out_proj`), run as one fused SDPA call with `is_causal`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, width] -> [N, L, width]; token i attends to tokens 0..i."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, L, head_dim]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(x.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, text: TextConfig) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(text.width, text.heads)
        self.ln_1 = nn.LayerNorm(text.width)
        self.ln_2 = nn.LayerNorm(text.width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(text.width, text.mlp_width), gelu=nn.GELU(), c_proj=nn.Linear(text.mlp_width, text.width)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, width] -> [N, L, width]."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """The CLIP text tower: token ids [N, L] (L <= context_length) -> token states [N, L, width]."""

    def __init__(self, text: TextConfig) -> None:
        super().__init__()
        self.activation_checkpointing = False
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        # Upstream leaves these two as torch.empty (NaN in practice at random init); small normals are safe.
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.text_projection = nn.Parameter(torch.empty(text.width, text.projection_dim))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=0.01)
        self.transformer = nn.ModuleDict(
            {"resblocks": nn.ModuleList(ResidualAttentionBlock(text) for _ in range(text.layers))}
        )
        self.ln_final = nn.LayerNorm(text.width)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(token_ids) + self.positional_embedding[: token_ids.shape[1]]
        for block in self.transformer["resblocks"]:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_final(x)


class LanguageBackbone(nn.Module):
    """Text encoder + resizer, with the consumers' layout: sequence-first features and a padding mask."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.context_length = cfg.text.context_length
        self.encoder = TextTransformer(cfg.text)
        self.resizer = nn.Linear(cfg.text.width, cfg.transformer.d_model)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """token_ids long [N, L] (Tokenizer output, 0 = padding) ->
        (features [L, N, d_model] sequence-first, padding_mask bool [N, L] True at padding)."""
        if token_ids.shape[1] > self.context_length:
            raise ValueError(
                f"token_ids have {token_ids.shape[1]} positions but the text encoder holds {self.context_length}; "
                f"tokenize with context_length={self.context_length}"
            )
        features = self.resizer(self.encoder(token_ids))
        return features.transpose(0, 1), token_ids == PAD_TOKEN_ID
