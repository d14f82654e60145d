"""The SAM3 backbone: vision (ViT trunk + SimpleFPN neck) and language (CLIP text encoder + resizer), unfused.

Mounted as `model.backbone`, its state_dict keys are exactly upstream's `backbone.vision_backbone.trunk.*`,
`backbone.vision_backbone.convs.*`, `backbone.language_backbone.encoder.*` and
`backbone.language_backbone.resizer.*` (reference/sam3_boxonly_state_dict.tsv).
"""

from __future__ import annotations

import torch
from torch import nn

from sam3lite_core.model.config import ModelConfig
from sam3lite_core.model.neck import VisionBackbone
from sam3lite_core.model.text_encoder import LanguageBackbone


class Backbone(nn.Module):
    """Upstream `SAM3VLBackbone` for box detection: image and text are encoded independently."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_backbone = VisionBackbone(cfg)
        self.language_backbone = LanguageBackbone(cfg)

    def forward_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images float [B, 3, S, S] (S = cfg.vision.image_size, normalised to [-1, 1]) ->
        (features [B, d_model, G, G], pos [B, d_model, G, G]) with G = S // patch_size.

        `features` is the scale-1 neck level (convs.2 in the sam3 preset); `pos` is its sine encoding, a
        broadcast view of a cached tensor (do not modify it in place).
        """
        return self.vision_backbone(images)

    def forward_text(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """token_ids long [N, L] (L <= context_length, 0 = padding) ->
        (features [L, N, d_model] sequence-first, padding_mask bool [N, L] True at padding)."""
        return self.language_backbone(token_ids)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each trunk block and text block in backward instead of storing activations (training only)."""
        self.vision_backbone.trunk.activation_checkpointing = enabled
        self.language_backbone.encoder.activation_checkpointing = enabled

    def reset_rope(self) -> None:
        """Recompute the trunk's RoPE tables for the configured resolution (after `to_empty` or a load)."""
        self.vision_backbone.trunk.reset_rope()
