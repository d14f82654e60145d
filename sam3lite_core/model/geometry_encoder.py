"""Geometry encoder (prefix geometry_encoder): exemplar box prompts and a CLS token -> prompt tokens.

Upstream `SequenceGeometryEncoder` as built for SAM3, box-only. Its point parameters (`points_*`) are kept so
checkpoints load with zero missing keys, but point prompts are refused.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from sam3lite_core.box_ops import box_cxcywh_to_xyxy
from sam3lite_core.model.config import TransformerConfig
from sam3lite_core.model.fusion_encoder import PreNormAttentionLayer
from sam3lite_core.model.position_encoding import PositionEmbeddingSine

POINTS_UNSUPPORTED = (
    "point prompts are not supported: sam3lite is the box-only SAM3 detector; "
    "give exemplar boxes (cxcywh in [0, 1]) or text instead"
)


class SequenceGeometryEncoder(nn.Module):
    """Each exemplar box becomes one token, the sum of
      - a linear projection of its normalised cxcywh (`boxes_direct_project`),
      - a 7x7 conv over its roi_align-pooled image features (`boxes_pool_project`, on LayerNorm'd features),
      - a projection of the sine encoding of its centre plus its h, w (`boxes_pos_enc_project`),
      - a positive / negative label embedding (`label_embed`).
    A CLS token is appended after the valid boxes, so a text-only query yields exactly one token. The
    tokens are projected, normalised and refined by `geometry_layers` pre-norm layers (self-attention,
    then cross-attention to the raw image tokens with their position encoding on the keys).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.d_model = d
        self.roi_size = cfg.roi_size
        self.pos_enc = PositionEmbeddingSine(d)
        self.label_embed = nn.Embedding(2, d)
        self.cls_embed = nn.Embedding(1, d)
        # Point encoders exist upstream (and in sam3.pt); box-only detection never calls them.
        self.points_direct_project = nn.Linear(2, d)
        self.points_pool_project = nn.Linear(d, d)
        self.points_pos_enc_project = nn.Linear(d, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, cfg.roi_size)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.final_proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.img_pre_norm = nn.LayerNorm(d)
        self.encode = nn.ModuleList(PreNormAttentionLayer(cfg) for _ in range(cfg.geometry_layers))
        self.encode_norm = nn.LayerNorm(d)

    def forward(
        self,
        image: torch.Tensor,
        image_pos: torch.Tensor,
        feat_size: tuple[int, int],
        boxes: torch.Tensor | None = None,
        box_labels: torch.Tensor | None = None,
        box_padding: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image, image_pos [HW, Q, D] seq-first (the scale-1 features of each query's image, HW = H * W with
        feat_size = (H, W)); boxes [Q, Nb, 4] cxcywh in [0, 1]; box_labels [Q, Nb] (1 positive, 0 negative;
        default all positive); box_padding [Q, Nb] True at empty slots (default none).
        -> (tokens [Nb + 1, Q, D], padding_mask [Q, Nb + 1]): the valid boxes first, then the CLS, then padding.
        """
        if points is not None and points.numel() > 0:
            raise ValueError(POINTS_UNSUPPORTED)
        num_queries = image.shape[1]
        if boxes is None or boxes.shape[1] == 0:
            tokens = image.new_zeros(0, num_queries, self.d_model)
            padding = torch.zeros(num_queries, 0, dtype=torch.bool, device=image.device)
        else:
            if box_labels is None:
                box_labels = torch.ones(boxes.shape[:2], dtype=torch.long, device=boxes.device)
            if box_padding is None:
                box_padding = torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
            # Valid boxes first, in their given order, so the CLS can sit right after them.
            order = box_padding.long().argsort(dim=1, stable=True)
            boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
            box_labels = box_labels.gather(1, order)
            box_padding = box_padding.gather(1, order)
            tokens = self._encode_boxes(boxes, box_labels, image, feat_size)
            padding = box_padding
        tokens, padding = self._append_cls(tokens, padding)
        tokens = self.norm(self.final_proj(tokens))
        for layer in self.encode:
            tokens = layer(tokens, image, memory_pos=image_pos, tgt_padding_mask=padding)
        return self.encode_norm(tokens), padding

    def _encode_boxes(
        self, boxes: torch.Tensor, labels: torch.Tensor, image: torch.Tensor, feat_size: tuple[int, int]
    ) -> torch.Tensor:
        """boxes [Q, Nb, 4], labels [Q, Nb], image [HW, Q, D] -> box tokens [Nb, Q, D]."""
        num_queries, num_boxes = boxes.shape[:2]
        h, w = feat_size
        seq_boxes = boxes.transpose(0, 1)  # [Nb, Q, 4]
        embed = self.boxes_direct_project(seq_boxes)

        feats = self.img_pre_norm(image).permute(1, 2, 0).reshape(num_queries, self.d_model, h, w)
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        rois = list((box_cxcywh_to_xyxy(boxes) * scale).float().unbind(0))  # Q x [Nb, 4] in feature pixels
        pooled = torchvision.ops.roi_align(feats, rois, self.roi_size)  # [Q * Nb, D, r, r]
        pooled = self.boxes_pool_project(pooled).view(num_queries, num_boxes, self.d_model)
        embed = embed + pooled.transpose(0, 1)

        cx, cy, bw, bh = seq_boxes.reshape(-1, 4).unbind(-1)
        centre = self.pos_enc.encode_boxes(cx, cy, bw, bh).view(num_boxes, num_queries, -1)
        embed = embed + self.boxes_pos_enc_project(centre)
        return self.label_embed(labels.transpose(0, 1).long()) + embed

    def _append_cls(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [N, Q, D] right-padded, padding [Q, N] -> ([N + 1, Q, D], [Q, N + 1]) with the CLS written
        at each query's first free slot, so the valid tokens stay contiguous."""
        num_tokens, num_queries = tokens.shape[:2]
        num_valid = (~padding).sum(dim=1)  # [Q]
        out = torch.cat([tokens, tokens.new_zeros(1, num_queries, self.d_model)], dim=0)
        cls = self.cls_embed.weight.view(1, 1, -1).expand(1, num_queries, -1).to(out.dtype)
        out = out.scatter(0, num_valid.view(1, -1, 1).expand(1, -1, self.d_model), cls)
        slots = torch.arange(num_tokens + 1, device=padding.device)
        return out, slots[None, :] > num_valid[:, None]
