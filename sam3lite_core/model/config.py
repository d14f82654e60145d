"""Model dimensions: one frozen dataclass per part, grouped in `ModelConfig`, and the named presets.

Preset `sam3` is the upstream image model exactly (reference/sam3_facts.md section 1): its state_dict keys and
shapes equal reference/sam3_boxonly_state_dict.tsv. The small presets run the same code with smaller widths,
fewer layers and queries and a lower resolution, so they train on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class VisionConfig:
    """ViT trunk (prefix backbone.vision_backbone.trunk) and SimpleFPN neck (backbone.vision_backbone.convs)."""

    image_size: int = 1008  # input side in pixels; any multiple of patch_size
    patch_size: int = 14
    width: int = 1024
    depth: int = 32
    heads: int = 16
    mlp_ratio: float = 4.625
    window_size: int = 24  # tokens per window side in windowed blocks
    global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    pretrain_image_size: int = 336  # pos_embed holds a (pretrain_image_size / patch_size)^2 grid plus cls
    rope_theta: float = 10000.0
    drop_path: float = 0.1
    neck_scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)

    @property
    def grid_size(self) -> int:
        """Tokens per side of the patch grid (72 at 1008 px)."""
        return self.image_size // self.patch_size

    @property
    def pretrain_grid_size(self) -> int:
        return self.pretrain_image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """CLIP-style causal text encoder (backbone.language_backbone.encoder) and its resizer."""

    vocab_size: int = 49408
    context_length: int = 32
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_width: int = 4096
    projection_dim: int = 512  # text_projection: kept for checkpoint compatibility, unused by detection


@dataclass(frozen=True)
class TransformerConfig:
    """Geometry encoder, fusion encoder, decoder and scoring, all at width d_model."""

    d_model: int = 256
    heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    geometry_layers: int = 3
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_queries: int = 200
    num_o2m_queries: int = 200  # one-to-many (DAC) queries, used in training only
    roi_size: int = 7
    scoring_mlp_dim: int = 2048
    logit_clamp: float = 12.0


@dataclass(frozen=True)
class ModelConfig:
    name: str = "sam3"
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self) -> None:
        v = self.vision
        if v.image_size % v.patch_size:
            raise ValueError(
                f"model resolution {v.image_size} is not a multiple of the patch size {v.patch_size}; "
                f"use e.g. {v.image_size // v.patch_size * v.patch_size} or "
                f"{(v.image_size // v.patch_size + 1) * v.patch_size}"
            )
        if any(not 0 <= b < v.depth for b in v.global_blocks):
            raise ValueError(f"global_blocks {v.global_blocks} must lie in [0, {v.depth})")

    def with_resolution(self, image_size: int) -> "ModelConfig":
        """The same model at another input resolution (RoPE and the neck adapt; weights are unchanged)."""
        return replace(self, vision=replace(self.vision, image_size=image_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        vision = dict(data.get("vision", {}))
        for key in ("global_blocks", "neck_scales"):
            if key in vision:
                vision[key] = tuple(vision[key])
        return cls(
            name=data.get("name", "custom"),
            vision=VisionConfig(**vision),
            text=TextConfig(**data.get("text", {})),
            transformer=TransformerConfig(**data.get("transformer", {})),
        )


PRESETS: dict[str, ModelConfig] = {
    "sam3": ModelConfig(),
    # A few million trainable parameters (plus the 49408-row token table): CPU training, the demo, benchmarks.
    "small": ModelConfig(
        name="small",
        vision=VisionConfig(
            image_size=336,
            width=192,
            depth=6,
            heads=4,
            mlp_ratio=4.0,
            window_size=12,
            global_blocks=(2, 5),
            pretrain_image_size=168,
            drop_path=0.0,
        ),
        text=TextConfig(width=128, layers=2, heads=4, mlp_width=512, projection_dim=64),
        transformer=TransformerConfig(
            d_model=128,
            heads=4,
            ffn_dim=512,
            dropout=0.0,
            geometry_layers=1,
            encoder_layers=2,
            decoder_layers=3,
            num_queries=50,
            num_o2m_queries=50,
            scoring_mlp_dim=512,
        ),
    ),
    # Smallest thing that exercises every code path: unit tests.
    "tiny": ModelConfig(
        name="tiny",
        vision=VisionConfig(
            image_size=112,
            width=64,
            depth=2,
            heads=2,
            mlp_ratio=2.0,
            window_size=4,
            global_blocks=(1,),
            pretrain_image_size=56,
            drop_path=0.0,
        ),
        text=TextConfig(width=32, layers=1, heads=2, mlp_width=64, projection_dim=16),
        transformer=TransformerConfig(
            d_model=32,
            heads=2,
            ffn_dim=64,
            dropout=0.0,
            geometry_layers=1,
            encoder_layers=1,
            decoder_layers=2,
            num_queries=10,
            num_o2m_queries=10,
            scoring_mlp_dim=64,
        ),
    ),
}


def resolve_config(preset: str | ModelConfig) -> ModelConfig:
    """A preset name or a ModelConfig -> ModelConfig, with a clear error for unknown names."""
    if isinstance(preset, ModelConfig):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}") from None
