"""SimpleFPN neck over the ViT trunk (upstream `Sam3DualViTDetNeck`, prefix backbone.vision_backbone).

Upstream builds four levels (scales 4, 2, 1, 0.5 of the trunk grid) and runs all of them, but box detection
reads only the scale-1 level (`num_feature_levels=1`). The other levels keep their parameters so checkpoints
load both ways; they are never run here.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3lite_core.model.config import ModelConfig
from sam3lite_core.model.position_encoding import PositionEmbeddingSine
from sam3lite_core.model.vit import ViT


def fpn_level(scale: float, width: int, d_model: int) -> nn.Sequential:
    """One pyramid level, with upstream's submodule names: resample by `scale`, then conv_1x1 -> conv_3x3."""
    level = nn.Sequential()
    if scale == 4.0:
        level.add_module("dconv_2x2_0", nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2))
        level.add_module("gelu", nn.GELU())
        level.add_module("dconv_2x2_1", nn.ConvTranspose2d(width // 2, width // 4, kernel_size=2, stride=2))
        channels = width // 4
    elif scale == 2.0:
        level.add_module("dconv_2x2", nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2))
        channels = width // 2
    elif scale == 1.0:
        channels = width
    elif scale == 0.5:
        level.add_module("maxpool_2x2", nn.MaxPool2d(kernel_size=2, stride=2))
        channels = width
    else:
        raise ValueError(f"neck scale {scale} is not supported; use scales from (4.0, 2.0, 1.0, 0.5)")
    level.add_module("conv_1x1", nn.Conv2d(channels, d_model, kernel_size=1))
    level.add_module("conv_3x3", nn.Conv2d(d_model, d_model, kernel_size=3, padding=1))
    return level


class VisionBackbone(nn.Module):
    """Trunk + neck: images [B, 3, S, S] -> the scale-1 level [B, d_model, G, G] and its sine encoding."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        scales = cfg.vision.neck_scales
        if 1.0 not in scales:
            raise ValueError(f"neck_scales {scales} must contain 1.0: detection reads the scale-1 level")
        d_model = cfg.transformer.d_model
        self.trunk = ViT(cfg.vision)
        self.convs = nn.ModuleList(fpn_level(s, cfg.vision.width, d_model) for s in scales)
        self.detection_level = scales.index(1.0)
        self.position_encoding = PositionEmbeddingSine(d_model)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, S, S] -> (features [B, d_model, G, G], pos [B, d_model, G, G])."""
        features = self.convs[self.detection_level](self.trunk(images))
        return features, self.position_encoding(features)
