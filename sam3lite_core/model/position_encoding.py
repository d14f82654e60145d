"""Sine position encoding (DETR style) for feature maps and for normalised points.

Upstream `sam3/model/position_encoding.py` precomputes its cache on "cuda" in `__init__`; here maps are computed
on the fly on the input's device and cached per (H, W, device, dtype), so the module works on any device.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Normalised sine encoding, scale 2 pi, temperature 10000; `dim` channels, half for y and half for x.

    Within each half, channel pairs (2i, 2i+1) hold sin and cos of position / T^(2i / (dim/2)).
    The module has no parameters or buffers, so it adds nothing to the state_dict.
    """

    def __init__(self, dim: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"sine position encoding needs a width divisible by 4, got {dim}")
        self.num_pos_feats = dim // 2
        self.temperature = temperature
        self.scale = scale
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}

    def _frequencies(self, device: torch.device) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        return self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)

    def _interleave(self, angles: torch.Tensor) -> torch.Tensor:
        """[..., F] angles -> [..., F] with sin at even and cos at odd channels."""
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)

    def encode_xy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points with x, y [N] in [0, 1] -> (pos_x [N, dim/2], pos_y [N, dim/2]) (upstream `_encode_xy`)."""
        freqs = self._frequencies(x.device)
        pos_x = self._interleave((x * self.scale)[:, None] / freqs)
        pos_y = self._interleave((y * self.scale)[:, None] / freqs)
        return pos_x, pos_y

    @torch.no_grad()
    def encode_boxes(self, cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Boxes as cx, cy, w, h [N] in [0, 1] -> [N, dim + 2] = [pos_y, pos_x, h, w] (upstream `encode_boxes`)."""
        pos_x, pos_y = self.encode_xy(cx, cy)
        return torch.cat((pos_y, pos_x, h[:, None], w[:, None]), dim=1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map x [B, C, H, W] -> encoding [B, dim, H, W] in x's dtype ([pos_y, pos_x] channels).

        Returns a broadcast view of a cached tensor: do not modify it in place.
        """
        h, w = x.shape[-2:]
        key = (h, w, x.device, x.dtype)
        pos = self._cache.get(key)
        if pos is None:
            pos = self._compute(h, w, x.device).to(x.dtype)
            self._cache[key] = pos
        return pos.expand(x.shape[0], -1, -1, -1)

    def _compute(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """[1, dim, h, w] in fp32; positions 1..n divided by n (+1e-6), times the scale, as upstream."""
        eps = 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        y = y / (y[-1:] + eps) * self.scale
        x = x / (x[-1:] + eps) * self.scale
        freqs = self._frequencies(device)
        pos_y = self._interleave(y[:, None] / freqs)[:, None, :].expand(h, w, -1)  # [h, w, dim/2]
        pos_x = self._interleave(x[:, None] / freqs)[None, :, :].expand(h, w, -1)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)[None].contiguous()
