"""The DETR-style box decoder (prefix transformer.decoder): object queries with iterative box refinement.

Upstream `TransformerDecoder` + `TransformerDecoderLayer` as built for SAM3: post-norm layers, a presence
token, the box-relative position bias ("boxRPB", log mode) on image cross-attention, and DAC one-to-many
queries in training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3lite_core.box_ops import box_cxcywh_to_xyxy, inverse_sigmoid
from sam3lite_core.model.config import TransformerConfig
from sam3lite_core.model.mlp import MLP
from sam3lite_core.model.position_encoding import PositionEmbeddingSine


class DecoderLayer(nn.Module):
    """Post-norm: self-attention -> text cross-attention -> image cross-attention (with boxRPB) -> FFN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d, p = cfg.d_model, cfg.dropout
        self.cross_attn = nn.MultiheadAttention(d, cfg.heads, dropout=p)
        self.dropout1 = nn.Dropout(p)
        self.norm1 = nn.LayerNorm(d)
        self.ca_text = nn.MultiheadAttention(d, cfg.heads, dropout=p)
        self.catext_dropout = nn.Dropout(p)
        self.catext_norm = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, cfg.heads, dropout=p)
        self.dropout2 = nn.Dropout(p)
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, cfg.ffn_dim)
        self.dropout3 = nn.Dropout(p)
        self.linear2 = nn.Linear(cfg.ffn_dim, d)
        self.dropout4 = nn.Dropout(p)
        self.norm3 = nn.LayerNorm(d)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        presence: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        rpb: torch.Tensor,
        num_independent: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt, query_pos [N, Q, D] (the last num_independent of the N queries are one-to-many or denoising),
        presence [1, Q, D], memory, memory_pos [HW, Q, D], prompt [P, Q, D], prompt_mask [Q, P],
        rpb [Q * heads, 1 + N, HW] (row 0 for the presence token) -> (tgt [N, Q, D], presence [1, Q, D])."""
        # The presence token joins the one-to-one queries with a zero position; one-to-many queries skip
        # self-attention (DAC) so they cannot suppress each other, and denoising queries skip it so they cannot
        # show their boxes to the others; both share every other sub-layer.
        num_o2o = tgt.shape[0] - num_independent
        zero_pos = torch.zeros_like(presence)
        x = torch.cat([presence, tgt[:num_o2o]], dim=0)
        q = k = x + torch.cat([zero_pos, query_pos[:num_o2o]], dim=0)
        x = x + self.dropout2(self.self_attn(q, k, x, need_weights=False)[0])
        x = self.norm2(torch.cat([x, tgt[num_o2o:]], dim=0))
        pos = torch.cat([zero_pos, query_pos], dim=0)

        attn = self.ca_text(x + pos, prompt, prompt, key_padding_mask=prompt_mask, need_weights=False)[0]
        x = self.catext_norm(x + self.catext_dropout(attn))

        attn = self.cross_attn(x + pos, memory + memory_pos, memory, attn_mask=rpb, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attn))

        x = self.norm3(x + self.dropout4(self._ffn(x)))
        return x[1:], x[:1]

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward block in fp32 whatever the autocast, as upstream's `forward_ffn` has it (its guard
        names device "cuda", so on a CPU upstream never sees autocast at all). x arrives fp32: a LayerNorm
        output."""
        with torch.autocast(x.device.type, enabled=False):
            # ReLU in place: see the encoder's _ffn.
            return self.linear2(self.dropout3(F.relu(self.linear1(x), inplace=True)))


class BoxDecoder(nn.Module):
    """`decoder_layers` layers over `num_queries` learned queries and anchor boxes.

    Per layer, the query position is `ref_point_head` of the 4-D sine embedding of the current (detached)
    anchors and the image cross-attention gets a per-head additive bias from the anchors (boxRPB). After
    each layer the normalised queries predict a box offset in logit space: box = sigmoid(logit(anchor) +
    bbox_embed(query)). The next layer's anchor is that box detached; the box a layer returns takes its
    gradient through the previous layer's offset too, one layer deep ("look forward twice", as upstream).
    The presence token predicts, per layer, one logit for "the prompt is present in the image" (upstream
    meant to clamp it at +-10 but never did).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.num_o2m_queries not in (0, cfg.num_queries):
            raise ValueError(
                f"num_o2m_queries must be 0 (no one-to-many queries) or num_queries ({cfg.num_queries}): DAC "
                f"repeats the one-to-one queries; got {cfg.num_o2m_queries}"
            )
        d = cfg.d_model
        self.num_queries = cfg.num_queries
        self.dac = cfg.num_o2m_queries > 0
        self.activation_checkpointing = False
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.reference_points = nn.Embedding(cfg.num_queries, 4)
        self.boxRPB_embed_x = MLP(2, d, cfg.heads, 2)
        self.boxRPB_embed_y = MLP(2, d, cfg.heads, 2)
        self.presence_token = nn.Embedding(1, d)
        self.presence_token_head = MLP(d, d, 1, 3)
        self.presence_token_out_norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        self.sine = PositionEmbeddingSine(d)
        # Zero offsets: the first layer's boxes are the learned anchors themselves.
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def forward(
        self,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        feat_size: tuple[int, int],
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        denoising_anchors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """memory, memory_pos [HW, Q, D] seq-first with feat_size = (H, W); prompt [P, Q, D], prompt_mask [Q, P];
        denoising_anchors [Ndn, Q, 4] cxcywh (training only, train/denoising.py)
        -> (hs [L, Q, N, D] normalised queries, boxes [L, Q, N, 4] cxcywh in [0, 1], presence logits [L, Q, 1]).

        N = num_queries in eval; in training with DAC, N = 2 * num_queries and the second half are the
        one-to-many queries (same embeddings and anchors, no self-attention); denoising queries (zero content,
        the given anchors, no self-attention) come last: N grows by Ndn.
        """
        num_q = memory.shape[1]
        tgt, anchors, num_independent = self._initial_queries(num_q, denoising_anchors)
        # anchors: each layer's input boxes, first the learned ones (upstream lets the first layer's query
        # position and RPB train them), then the previous layer's boxes detached. reference: the same values,
        # with the graph through the previous layer's box offset, which the returned boxes build on.
        reference = anchors
        presence = self.presence_token.weight.unsqueeze(1).expand(1, num_q, -1)
        all_hs, all_boxes, all_presence = [], [], []
        shared = (memory, memory_pos, prompt, prompt_mask, num_independent)
        for layer in self.layers:
            query_pos = self.ref_point_head(self._anchor_embedding(anchors))
            args = (layer, anchors, feat_size, tgt, query_pos, presence, *shared)
            if self.activation_checkpointing and self.training:
                tgt, presence = checkpoint(self._layer_with_rpb, *args, use_reentrant=False)
            else:
                tgt, presence = self._layer_with_rpb(*args)
            hs = self.norm(tgt)
            offsets = self.bbox_embed(hs)
            all_boxes.append((inverse_sigmoid(reference) + offsets).sigmoid())
            reference = (inverse_sigmoid(anchors) + offsets).sigmoid()
            anchors = reference.detach()
            all_hs.append(hs)
            all_presence.append(self.presence_token_head(self.presence_token_out_norm(presence)))
        hs = torch.stack(all_hs).transpose(1, 2)
        boxes = torch.stack(all_boxes).transpose(1, 2)
        presence_logits = torch.stack(all_presence).squeeze(1)  # [L, Q, 1]
        return hs, boxes, presence_logits

    def _layer_with_rpb(
        self, layer: DecoderLayer, anchors: torch.Tensor, feat_size: tuple[int, int], *args: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`layer(tgt, query_pos, presence, memory, memory_pos, prompt, prompt_mask, rpb, num_independent)` with
        the box bias built here, so that under activation checkpointing only the anchors [N, Q, 4] are kept for
        the backward pass and the bias [Q * heads, 1 + N, HW] (5.3 GB a layer in fp32 for 80 queries with the
        one-to-many half at 1008 px) is rebuilt there instead of held for every layer."""
        *before, num_independent = args
        return layer(*before, self._box_rpb(anchors, feat_size), num_independent)

    def _initial_queries(
        self, num_q: int, denoising_anchors: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The first layer's queries for Q find queries: (content tgt [N, Q, D], anchors [N, Q, 4] cxcywh,
        how many of the N, the last ones, skip self-attention); N as in `forward`."""
        repeats = 2 if self.dac and self.training else 1
        num_independent = self.num_queries if repeats == 2 else 0
        tgt = self.query_embed.weight.unsqueeze(1).repeat(repeats, num_q, 1)
        anchors = self.reference_points.weight.unsqueeze(1).repeat(repeats, num_q, 1).sigmoid()
        if denoising_anchors is not None:
            tgt = torch.cat([tgt, tgt.new_zeros(denoising_anchors.shape[0], num_q, tgt.shape[-1])])
            anchors = torch.cat([anchors, denoising_anchors.to(anchors.dtype)])
            num_independent += denoising_anchors.shape[0]
        return tgt, anchors, num_independent

    def _anchor_embedding(self, anchors: torch.Tensor) -> torch.Tensor:
        """anchors [N, Q, 4] cxcywh -> [N, Q, 2D]: sine embeddings of y, x, w, h, D / 2 channels each."""
        cx, cy, w, h = anchors.reshape(-1, 4).unbind(-1)
        pos_x, pos_y = self.sine.encode_xy(cx, cy)
        pos_w, pos_h = self.sine.encode_xy(w, h)
        return torch.cat([pos_y, pos_x, pos_w, pos_h], dim=-1).view(*anchors.shape[:2], -1)

    def _box_rpb(self, anchors: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """anchors [N, Q, 4] cxcywh -> additive attention bias [Q * heads, 1 + N, H * W]; row 0, the presence
        token's, is zero.

        For each grid cell corner (j / W, i / H), its signed distances to the anchor's two x edges and two y
        edges are scaled by 8 and log-compressed (sign * log2(|d| + 1) / 3); per-axis MLPs turn them into one
        bias per head, and the bias of cell (i, j) is the y term of row i plus the x term of column j.
        The bias is large (130 MB at 1008 px with 4 find queries), so it is built in one pass, already in the
        attention's layout and with the presence row (the per-axis terms are padded with a zero row instead).
        """
        h, w = feat_size
        # [Q, N, 4], contiguous so that the deltas are too and each MLP layer runs as one matmul, not Q * N.
        xyxy = box_cxcywh_to_xyxy(anchors).transpose(0, 1).contiguous()
        coords_y = torch.arange(h, dtype=torch.float32, device=anchors.device) / h
        coords_x = torch.arange(w, dtype=torch.float32, device=anchors.device) / w
        deltas_y = coords_y.view(1, 1, -1, 1) - xyxy[:, :, None, 1::2]  # [Q, N, H, 2]
        deltas_x = coords_x.view(1, 1, -1, 1) - xyxy[:, :, None, 0::2]  # [Q, N, W, 2]
        bias_y = self.boxRPB_embed_y(_log_scale(deltas_y)).permute(0, 3, 1, 2)  # [Q, heads, N, H]
        bias_x = self.boxRPB_embed_x(_log_scale(deltas_x)).permute(0, 3, 1, 2)  # [Q, heads, N, W]
        # A zero presence row in front; contiguous (they are small), so that their sum is too.
        bias_y = F.pad(bias_y, (0, 0, 1, 0)).contiguous()
        bias_x = F.pad(bias_x, (0, 0, 1, 0)).contiguous()
        bias = bias_y.unsqueeze(-1) + bias_x.unsqueeze(-2)  # [Q, heads, 1 + N, H, W]
        return bias.flatten(0, 1).flatten(-2)


def _log_scale(deltas: torch.Tensor) -> torch.Tensor:
    """Normalised distances to roughly [-1, 1], finer near the box edges."""
    deltas = deltas * 8
    return torch.sign(deltas) * torch.log2(deltas.abs() + 1.0) / math.log2(8)
