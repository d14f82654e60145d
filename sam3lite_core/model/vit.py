"""ViTDet-style vision trunk of SAM3 (upstream `sam3/model/vitdet.py`, box-only configuration).

Patch embedding (no bias) -> absolute position embedding tiled from the pretraining grid -> ln_pre ->
pre-LN blocks. Most blocks attend inside non-overlapping windows; the blocks in `global_blocks` attend over the
whole grid. Every block applies 2D RoPE to queries and keys (rope.py). There is no cls token and no ln_post.
Submodule names follow upstream so state_dict keys match `backbone.vision_backbone.trunk.*`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from sam3lite_core.model.chunked import map_rows
from sam3lite_core.model.config import VisionConfig
from sam3lite_core.model.rope import apply_rope, block_rope


def drop_path(x: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability `prob`, rescale the rest."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> windows [B * nH * nW, window, window, C] and the padded size (Hp, Wp).

    A grid that is not a multiple of the window is zero-padded at the bottom and right, like upstream;
    the padded tokens take part in attention as keys (upstream does not mask them).
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: windows -> [B, H, W, C] with the padding cropped."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :] if (hp, wp) != (h, w) else x


class Attention(nn.Module):
    """Multi-head self-attention over a square token grid with 2D RoPE; `freqs_cis` is derived from the config."""

    def __init__(self, vision: VisionConfig, block: int) -> None:
        super().__init__()
        self.vision = vision
        self.block = block
        self.heads = vision.heads
        self.qkv = nn.Linear(vision.width, 3 * vision.width)
        self.proj = nn.Linear(vision.width, vision.width)
        self.register_buffer("freqs_cis", block_rope(vision, block))

    def reset_rope(self, device: torch.device | None = None) -> None:
        """Recompute `freqs_cis` for the configured resolution, on `device` (default the buffer's: after
        `to_empty`, or when a checkpoint carried tables for another resolution; a meta-built model passes the
        device its weights were assigned on)."""
        self.freqs_cis = block_rope(self.vision, self.block, device=device or self.freqs_cis.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, h, w, C] (a window or the whole grid) -> [B, h, w, C]."""
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, h*w, head_dim]
        q, k = apply_rope(q, k, self.freqs_cis)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, h, w, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., width] -> [..., width], in chunks of tokens on CPU (chunked.py)."""
        return map_rows(self._mlp, x, self.fc1.out_features)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; windowed unless `block` is one of `vision.global_blocks`."""

    def __init__(self, vision: VisionConfig, block: int, drop_path_prob: float) -> None:
        super().__init__()
        self.window = 0 if block in vision.global_blocks else vision.window_size
        self.drop_path_prob = drop_path_prob
        self.norm1 = nn.LayerNorm(vision.width)
        self.attn = Attention(vision, block)
        self.norm2 = nn.LayerNorm(vision.width)
        self.mlp = Mlp(vision.width, int(vision.width * vision.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G, G, C] -> [B, G, G, C]."""
        y = self.norm1(x)
        if self.window:
            windows, padded = window_partition(y, self.window)
            y = window_unpartition(self.attn(windows), self.window, padded, x.shape[1:3])
        else:
            y = self.attn(y)
        x = x + drop_path(y, self.drop_path_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_prob, self.training)


class PatchEmbed(nn.Module):
    def __init__(self, vision: VisionConfig) -> None:
        super().__init__()
        p = vision.patch_size
        self.proj = nn.Conv2d(3, vision.width, kernel_size=p, stride=p, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> tokens [B, H/p, W/p, C] (channels last, as the blocks want them)."""
        return self.proj(images).permute(0, 2, 3, 1)


class ViT(nn.Module):
    """The trunk: images [B, 3, S, S] -> features [B, width, G, G] with G = S / patch_size."""

    def __init__(self, vision: VisionConfig) -> None:
        super().__init__()
        self.vision = vision
        self.activation_checkpointing = False
        self.patch_embed = PatchEmbed(vision)
        # The pretrained table still has its cls entry (upstream pretrain_use_cls_token); it is never used.
        self.pos_embed = nn.Parameter(torch.zeros(1, vision.pretrain_grid_size**2 + 1, vision.width))
        rates = torch.linspace(0, vision.drop_path, vision.depth, device="cpu").tolist()  # also under a meta device
        self.blocks = nn.ModuleList(Block(vision, i, rates[i]) for i in range(vision.depth))
        self.ln_pre = nn.LayerNorm(vision.width)  # registered after the blocks: upstream's state_dict order
        # Upstream returns the output of the last global block; blocks after it cannot change the result.
        self.num_run_blocks = max(vision.global_blocks) + 1 if vision.global_blocks else vision.depth
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def reset_rope(self, device: torch.device | None = None) -> None:
        for block in self.blocks:
            block.attn.reset_rope(device)

    def tiled_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The pretrained P x P table (cls entry dropped) repeated, not interpolated, to cover the grid and
        cropped to it (upstream get_abs_pos with tiling). Returns [1, Gh, Gw, C]."""
        p = self.vision.pretrain_grid_size
        table = self.pos_embed[:, 1:].reshape(1, p, p, -1)
        reps = (-(-grid[0] // p), -(-grid[1] // p))
        return table.tile(1, *reps, 1)[:, : grid[0], : grid[1]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] normalised to [-1, 1] -> features [B, width, G, G]."""
        size = self.vision.image_size
        if images.shape[-2:] != (size, size):
            # The global blocks' RoPE tables are built for exactly G x G tokens.
            raise ValueError(
                f"images are {images.shape[-2]}x{images.shape[-1]} px but the model was built for {size}x{size}; "
                "resize them, or build the model with cfg.with_resolution(...)"
            )
        x = self.patch_embed(images)
        x = self.ln_pre(x + self.tiled_pos_embed(x.shape[1:3]))
        for block in self.blocks[: self.num_run_blocks]:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x.permute(0, 3, 1, 2)
