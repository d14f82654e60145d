"""Upstream detector modules built at the dims of a sam3lite ModelConfig, the way `sam3.model_builder` builds
them for SAM3 but with the config's sizes, plus the helpers parity tests share (test helper, never product).
"""

from __future__ import annotations

import torch
import vendor_harness
from torch import nn

import bpe
from sam3lite_core.model.config import ModelConfig, TransformerConfig, VisionConfig

V = vendor_harness.vendor_class


def _mha(t: TransformerConfig, batch_first: bool = False) -> nn.Module:
    return V("sam3.model.model_misc", "MultiheadAttentionWrapper")(
        num_heads=t.heads, dropout=t.dropout, embed_dim=t.d_model, batch_first=batch_first
    )


def _encoder_layer(t: TransformerConfig, fusion: bool) -> nn.Module:
    return V("sam3.model.encoder", "TransformerEncoderLayer")(
        activation="relu",
        d_model=t.d_model,
        dim_feedforward=t.ffn_dim,
        dropout=t.dropout,
        pos_enc_at_attn=fusion,
        pos_enc_at_cross_attn_keys=not fusion,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_mha(t, batch_first=fusion),
        cross_attention=_mha(t, batch_first=fusion),
    )


def sine(d_model: int) -> nn.Module:
    return V("sam3.model.position_encoding", "PositionEmbeddingSine")(
        num_pos_feats=d_model, normalize=True, scale=None, temperature=10000
    )


def geometry_encoder(t: TransformerConfig) -> nn.Module:
    return V("sam3.model.geometry_encoders", "SequenceGeometryEncoder")(
        pos_enc=sine(t.d_model),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=t.d_model,
        num_layers=t.geometry_layers,
        layer=_encoder_layer(t, fusion=False),
        roi_size=t.roi_size,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def fusion_encoder(t: TransformerConfig) -> nn.Module:
    return V("sam3.model.encoder", "TransformerEncoderFusion")(
        layer=_encoder_layer(t, fusion=True),
        num_layers=t.encoder_layers,
        d_model=t.d_model,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )


def decoder(cfg: ModelConfig) -> nn.Module:
    t = cfg.transformer
    layer = V("sam3.model.decoder", "TransformerDecoderLayer")(
        activation="relu",
        d_model=t.d_model,
        dim_feedforward=t.ffn_dim,
        dropout=t.dropout,
        cross_attention=_mha(t),
        n_heads=t.heads,
        use_text_cross_attention=True,
    )
    return V("sam3.model.decoder", "TransformerDecoder")(
        layer=layer,
        num_layers=t.decoder_layers,
        num_queries=t.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=t.d_model,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=cfg.vision.image_size,
        stride=cfg.vision.patch_size,
        use_act_checkpoint=True,
        presence_token=True,
    )


def scoring(t: TransformerConfig) -> nn.Module:
    prompt_mlp = V("sam3.model.model_misc", "MLP")(
        input_dim=t.d_model,
        hidden_dim=t.scoring_mlp_dim,
        output_dim=t.d_model,
        num_layers=2,
        dropout=t.dropout,
        residual=True,
        out_norm=nn.LayerNorm(t.d_model),
    )
    return V("sam3.model.model_misc", "DotProductScoring")(
        d_model=t.d_model, d_proj=t.d_model, prompt_mlp=prompt_mlp, clamp_max_val=t.logit_clamp
    )


def vendor_vit(vision: VisionConfig) -> nn.Module:
    """Upstream ViT with `_create_vit_backbone`'s arguments and our dims."""
    return V("sam3.model.vitdet", "ViT")(
        img_size=vision.image_size,
        pretrain_img_size=vision.pretrain_image_size,
        patch_size=vision.patch_size,
        embed_dim=vision.width,
        depth=vision.depth,
        num_heads=vision.heads,
        mlp_ratio=vision.mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=vision.drop_path,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=vision.global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=vision.window_size,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        use_act_checkpoint=False,
    )


def image_model(cfg: ModelConfig) -> nn.Module:
    """Upstream `Sam3Image` (box-only, eval mode, no matcher) at the config's dims."""
    v, x, t = cfg.vision, cfg.text, cfg.transformer
    trunk = vendor_vit(v)
    neck = V("sam3.model.necks", "Sam3DualViTDetNeck")(
        position_encoding=sine(t.d_model), d_model=t.d_model, scale_factors=list(v.neck_scales), trunk=trunk
    )
    tokenizer = V("sam3.model.tokenizer_ve", "SimpleTokenizer")(bpe_path=str(bpe.vocab_path()))
    text = V("sam3.model.text_encoder_ve", "VETextEncoder")(
        tokenizer=tokenizer,
        d_model=t.d_model,
        width=x.width,
        heads=x.heads,
        layers=x.layers,
        context_length=x.context_length,
        vocab_size=x.vocab_size,
    )
    # VETextEncoder fixes the MLP ratio (4) and text_projection width (512); rebuild its tower at our dims.
    text.encoder = V("sam3.model.text_encoder_ve", "TextTransformer")(
        context_length=x.context_length,
        vocab_size=x.vocab_size,
        width=x.width,
        heads=x.heads,
        layers=x.layers,
        mlp_ratio=x.mlp_width / x.width,
        output_dim=x.projection_dim,
        output_tokens=True,
        use_ln_post=True,
    )
    backbone = V("sam3.model.vl_combiner", "SAM3VLBackbone")(visual=neck, text=text, scalp=1)
    transformer = V("sam3.model.model_misc", "TransformerWrapper")(
        encoder=fusion_encoder(t), decoder=decoder(cfg), d_model=t.d_model
    )
    model = V("sam3.model.sam3_image", "Sam3Image")(
        backbone=backbone,
        transformer=transformer,
        input_geometry_encoder=geometry_encoder(t),
        segmentation_head=None,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=scoring(t),
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=None,
    )
    return model.eval()


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter distinct, well-scaled random values (upstream clones its layers, so fresh modules
    have identical layers and zero box heads, which would hide ordering bugs)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.dim() >= 2:
            bound = (3.0 / param[0].numel()) ** 0.5  # unit-variance outputs for unit-variance inputs
            param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
        elif "norm" in name and name.endswith("weight"):
            param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
        else:
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return module


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()
