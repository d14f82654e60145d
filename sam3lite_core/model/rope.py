"""2D axial rotary position embedding (RoPE) of the ViT trunk, including the interpolated global variant.

Each head channel pair (2j, 2j+1) is one complex number. The first half of the pairs rotates with the token's
column x, the second half with its row y, at frequencies 1 / theta^(4i / head_dim), i < head_dim / 4.

Window blocks rotate by the position inside their window, 0..window-1. Global blocks see the whole G x G grid
but squeeze it into the window's range (positions 0..G-1 scaled by window / G), so every block works in the
coordinate range the model was pretrained with; at 1008 px this is 0..71 * 24/72.
The tables are stored as persistent complex64 buffers (`attn.freqs_cis`) because the upstream checkpoint
carries them, but they are always derived from the config, never learnt.
"""

from __future__ import annotations

import torch

from sam3lite_core.model.config import VisionConfig


def axial_rope(
    head_dim: int,
    side: int,
    *,
    scale: float = 1.0,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotation table for a side x side token grid in row-major order.

    Returns complex64 [side * side, head_dim // 2]: columns 0..head_dim/4-1 rotate by x = t % side,
    the rest by y = t // side, positions multiplied by `scale`. The arithmetic follows the upstream
    `compute_axial_cis` operation for operation, so the 1008-px tables equal the released buffers bit for bit.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}; change width or heads")
    exponents = torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim
    freqs = 1.0 / (theta**exponents)
    t = torch.arange(side * side, dtype=torch.float32, device=device)
    t_x = (t % side).float() * scale
    t_y = torch.div(t, side, rounding_mode="floor").float() * scale
    angles_x = torch.outer(t_x, freqs)
    angles_y = torch.outer(t_y, freqs)
    return torch.cat(
        [torch.polar(torch.ones_like(angles_x), angles_x), torch.polar(torch.ones_like(angles_y), angles_y)],
        dim=-1,
    )


def block_rope(vision: VisionConfig, block: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The table of trunk block `block`: [window^2, head_dim/2] for window blocks, [G^2, head_dim/2] for
    global blocks (interpolated: positions scaled by window / G)."""
    head_dim = vision.width // vision.heads
    if block in vision.global_blocks:
        grid = vision.grid_size
        return axial_rope(head_dim, grid, scale=vision.window_size / grid, theta=vision.rope_theta, device=device)
    return axial_rope(head_dim, vision.window_size, theta=vision.rope_theta, device=device)


def apply_rope(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys [..., L, head_dim] by `freqs` [L, head_dim/2] (complex).

    The rotation runs in fp32 whatever the input dtype (bf16 angles would be too coarse), then casts back.
    """
    return _rotate(q, freqs), _rotate(k, freqs)


def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32:
        rotated = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)) * freqs
        return torch.view_as_real(rotated).flatten(-2)
    # Reduced precision (bf16 autocast): the fp32 copy is a new tensor anyway, so rotate it in place rather than
    # into a third buffer; this halves the time of RoPE, which was ~7% of a bf16 trunk block.
    x32 = x.float()
    torch.view_as_complex(x32.view(*x.shape[:-1], -1, 2)).mul_(freqs)
    return x32.to(x.dtype)
