"""The assembled box-only SAM3 detector and `build_model`.

Attribute names (`backbone`, `geometry_encoder`, `transformer.encoder`, `transformer.decoder`,
`dot_prod_scoring`) and their registration order are upstream `Sam3Image`'s, so the state_dict of the `sam3`
preset equals reference/sam3_boxonly_state_dict.tsv key for key, in order.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from sam3lite_core.batch import Batch
from sam3lite_core.box_ops import box_cxcywh_to_xyxy
from sam3lite_core.model.backbone import Backbone
from sam3lite_core.model.config import ModelConfig, TransformerConfig, resolve_config
from sam3lite_core.model.decoder import BoxDecoder
from sam3lite_core.model.fusion_encoder import FusionEncoder
from sam3lite_core.model.geometry_encoder import SequenceGeometryEncoder
from sam3lite_core.model.scoring import DotProductScoring
from sam3lite_core.tokenizer import Tokenizer

# Cached text features of a frozen encoder, per prompt string: [L, D] each, 32 KB for sam3, 32 MB in all.
TEXT_CACHE_SIZE = 1024
TEXT_PREFIX = "backbone.language_backbone."


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return Tokenizer()


def _clear_text_cache_after_load(module: "Sam3Lite", incompatible_keys: Any) -> None:
    # New weights make cached text features stale.
    module.clear_text_cache()


class ImageFeatures(NamedTuple):
    """What the vision backbone makes of B images; `Sam3Lite.ground` reads these instead of pixels, so the
    features of an image can be computed once and grounded against any number of prompts.

    features  [B, D, G, G]  the scale-1 neck level (G = image_size // patch_size)
    pos       [B, D, G, G]  its sine position encoding (a broadcast view of a shared table: do not modify)
    """

    features: torch.Tensor
    pos: torch.Tensor


class Transformer(nn.Module):
    """The fusion encoder and the box decoder (upstream `TransformerWrapper`, prefix transformer)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.encoder = FusionEncoder(cfg)
        self.decoder = BoxDecoder(cfg)
        # Upstream's init: xavier on every matrix except the box head (its last layer stays zero), the
        # queries (N(0, 1)) and the anchors (default embedding init).
        for name, param in self.named_parameters():
            if param.dim() > 1 and not any(k in name for k in ("box_embed", "query_embed", "reference_points")):
                nn.init.xavier_uniform_(param)


class Sam3Lite(nn.Module):
    """Box-only SAM3: for each find query (image, prompt), 200 (sam3) scored boxes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.geometry_encoder = SequenceGeometryEncoder(cfg.transformer)
        self.transformer = Transformer(cfg.transformer)
        self.dot_prod_scoring = DotProductScoring(cfg.transformer)
        self.text_encoder_frozen = False
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        # Set while the frozen text encoder's weights are released: reads them back (see release_text_encoder).
        self._read_text_weights: Callable[[], Mapping[str, torch.Tensor]] | None = None
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    def forward(self, batch: Batch, denoising_anchors: torch.Tensor | None = None) -> dict[str, Any]:
        """`ground(encode_image(batch.images), batch, denoising_anchors)`: the outputs documented at `ground`."""
        return self.ground(self.encode_image(batch.images), batch, denoising_anchors)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """images float [B, 3, S, S] normalised to [-1, 1] -> their ImageFeatures (the vision trunk and neck)."""
        return ImageFeatures(*self.backbone.forward_image(images))

    def ground(
        self, image_features: ImageFeatures, batch: Batch, denoising_anchors: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Detect, for each of the Q find queries of `batch`, the objects its prompt names in its image.

        Reads `image_features` (of the B images that batch.img_ids index), and from `batch` img_ids, prompts
        (each unique string encoded once), prompt_ids and the optional box_prompts / box_labels / box_padding
        (shapes in `Batch`); batch.images is not read (the features stand for it), targets are for the loss.
        Each query's prompt is its text tokens (context_length, padding masked) followed by its geometry
        tokens (valid exemplar boxes, then a CLS): 33 tokens for a text-only query of the sam3 preset.

        Returns (Nq = num_queries, sam3: 200):
          pred_logits         [Q, Nq, 1]  raw logit of "this query is an object of this prompt"
          pred_boxes          [Q, Nq, 4]  cxcywh in [0, 1] of the (padded) input canvas
          pred_boxes_xyxy     [Q, Nq, 4]  the same boxes as xyxy
          presence_logit_dec  [Q, 1]      logit of "the prompt is present in the image" (unclamped)
        The detection score is sigmoid(pred_logits) * sigmoid(presence_logit_dec).
        In training mode also (no matching is done here):
          pred_logits_o2m, pred_boxes_o2m, pred_boxes_xyxy_o2m   the one-to-many (DAC) queries, same shapes
          pred_logits_dn [Q, Ndn, 1], pred_boxes_dn [Q, Ndn, 4]   with denoising_anchors [Ndn, Q, 4] (cxcywh,
                        train/denoising.py): the queries that start from them, in their order
          aux_outputs   one dict per earlier decoder layer (decoder_layers - 1) with all the keys above
        """
        if denoising_anchors is not None and not self.training:
            raise ValueError("denoising_anchors are for training: the model is in eval mode")
        features, pos = image_features  # [B, D, H, W] each
        feat_size = (features.shape[-2], features.shape[-1])
        # Seq-first and contiguous. A permuted channel-major view would hand its strides on to every residual
        # sum after it (elementwise outputs take the first operand's layout), and every matmul would then copy:
        # that made the fusion encoder and decoder about 2x slower at 1008 px.
        image = features.flatten(2).permute(2, 0, 1).contiguous()  # [HW, B, D]
        image_pos = pos.flatten(2).permute(2, 0, 1).contiguous()
        query_image, query_pos = image[:, batch.img_ids], image_pos[:, batch.img_ids]  # [HW, Q, D]
        text, text_mask = self.encode_prompts(batch.prompts)  # [L, U, D], [U, L]
        geometry, geometry_mask = self.geometry_encoder(
            query_image, query_pos, feat_size, batch.box_prompts, batch.box_labels, batch.box_padding
        )
        prompt = torch.cat([text[:, batch.prompt_ids], geometry], dim=0)  # [L + Ng, Q, D]
        prompt_mask = torch.cat([text_mask[batch.prompt_ids], geometry_mask], dim=1)  # [Q, L + Ng]

        memory = self.transformer.encoder(image, image_pos, batch.img_ids, prompt, prompt_mask)
        hs, boxes, presence = self.transformer.decoder(
            memory, query_pos, feat_size, prompt, prompt_mask, denoising_anchors
        )
        if not self.training:  # inference reads the last layer only
            hs, boxes, presence = hs[-1:], boxes[-1:], presence[-1:]
        logits = self.dot_prod_scoring(hs, prompt, prompt_mask)
        num_denoising = 0 if denoising_anchors is None else denoising_anchors.shape[0]
        return self._outputs(logits, boxes, presence, num_denoising)

    def _outputs(
        self, logits: torch.Tensor, boxes: torch.Tensor, presence: torch.Tensor, num_denoising: int
    ) -> dict[str, Any]:
        """logits [L, Q, N, 1], boxes [L, Q, N, 4], presence [L, Q, 1]; the last num_denoising of the N are
        denoising queries -> the forward dict."""
        num_o2o = self.cfg.transformer.num_queries
        if num_denoising:
            num_matched = boxes.shape[2] - num_denoising
            dn_logits, dn_boxes = logits[:, :, num_matched:], boxes[:, :, num_matched:]
            logits, boxes = logits[:, :, :num_matched], boxes[:, :, :num_matched]
        layers = []
        for layer_logits, layer_boxes, layer_presence in zip(logits, boxes, presence):
            out = {
                "pred_logits": layer_logits[:, :num_o2o],
                "pred_boxes": layer_boxes[:, :num_o2o],
                "pred_boxes_xyxy": box_cxcywh_to_xyxy(layer_boxes[:, :num_o2o]),
                "presence_logit_dec": layer_presence,
            }
            if layer_boxes.shape[1] > num_o2o:
                out["pred_logits_o2m"] = layer_logits[:, num_o2o:]
                out["pred_boxes_o2m"] = layer_boxes[:, num_o2o:]
                out["pred_boxes_xyxy_o2m"] = box_cxcywh_to_xyxy(layer_boxes[:, num_o2o:])
            layers.append(out)
        for layer, out in enumerate(layers if num_denoising else []):
            out["pred_logits_dn"], out["pred_boxes_dn"] = dn_logits[layer], dn_boxes[layer]
        out = layers[-1]
        if self.training:
            out["aux_outputs"] = layers[:-1]
        return out

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique prompt strings [U] -> (features [L, U, D] seq-first, padding mask [U, L] True at padding).

        With a frozen text encoder, features come from (and go into) a per-string cache.
        """
        device = self.geometry_encoder.cls_embed.weight.device
        if not self.text_encoder_frozen:
            return self.backbone.forward_text(self._tokenize(prompts, device))
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad(), self._text_weights_loaded():
                features, mask = self.backbone.forward_text(self._tokenize(missing, device))
            for i, prompt in enumerate(missing):
                self._text_cache[prompt] = (features[:, i], mask[i])
        for prompt in prompts:
            self._text_cache.move_to_end(prompt)
        cached = [self._text_cache[p] for p in prompts]
        # Released weights cost a read per miss, so then every prompt stays (a run's prompts are its classes).
        while self._read_text_weights is None and len(self._text_cache) > max(TEXT_CACHE_SIZE, len(prompts)):
            self._text_cache.popitem(last=False)
        return torch.stack([f for f, _ in cached], dim=1), torch.stack([m for _, m in cached])

    def release_text_encoder(self, read_weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        """Free the frozen text encoder's weights (1.3 GiB for sam3, a third of the model): its features are
        cached per prompt, so training never needs them again but to encode a new prompt. `read_weights()`
        returns them (the language backbone's own state dict, e.g. mapped from the init checkpoint), loaded
        for the one forward that encodes prompts not cached yet and read by `released_weights` for export.
        A released model cannot be moved (`.to()`); `freeze_text_encoder(False)` loads the weights back."""
        if not self.text_encoder_frozen:
            raise ValueError("release_text_encoder: freeze the text encoder first (its gradients need the weights)")
        self._read_text_weights = read_weights
        self.backbone.language_backbone.to_empty(device="meta")

    @property
    def text_encoder_released(self) -> bool:
        return self._read_text_weights is not None

    def released_weights(self) -> dict[str, torch.Tensor]:
        """The released text encoder's weights under the model's own keys, as CPU tensors of the model's dtypes
        (empty when nothing is released)."""
        if self._read_text_weights is None:
            return {}
        return {TEXT_PREFIX + k: v for k, v in self._read_released(torch.device("cpu")).items()}

    def _read_released(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The released weights (a read), as the language backbone's state dict on `device`, in its dtypes."""
        read = self._read_text_weights
        text = self.backbone.language_backbone.state_dict()
        return {k: v.to(device=device, dtype=text[k].dtype) for k, v in read().items()} if read else {}

    @contextlib.contextmanager
    def _text_weights_loaded(self) -> Iterator[None]:
        """The released text encoder's weights in place for the duration (on the model's device)."""
        if self._read_text_weights is None:
            yield
            return
        text = self.backbone.language_backbone
        text.load_state_dict(self._read_released(self.geometry_encoder.cls_embed.weight.device), assign=True)
        try:
            yield
        finally:
            text.to_empty(device="meta")

    def _tokenize(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        return _default_tokenizer()(prompts, context_length=self.cfg.text.context_length).to(device)

    def freeze_text_encoder(self, frozen: bool = True) -> None:
        """Stop (or resume) training the text encoder; while frozen, each prompt is encoded once and cached."""
        if not frozen and self._read_text_weights is not None:
            device = self.geometry_encoder.cls_embed.weight.device
            self.backbone.language_backbone.load_state_dict(self._read_released(device), assign=True)
            self._read_text_weights = None
        self.text_encoder_frozen = frozen
        self.backbone.language_backbone.requires_grad_(not frozen)
        self.clear_text_cache()

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute trunk, text, encoder and decoder layers in backward instead of storing activations."""
        self.backbone.set_activation_checkpointing(enabled)
        self.transformer.encoder.activation_checkpointing = enabled
        self.transformer.decoder.activation_checkpointing = enabled

    def _apply(self, fn: Any, recurse: bool = True) -> "Sam3Lite":
        # .to(), .cuda(), .half() ... would leave cached text features on the old device or dtype.
        if self._read_text_weights is not None:
            raise RuntimeError(
                "this model's frozen text encoder is released (its weights are read back from disk when needed), "
                "so it cannot be moved or cast: call freeze_text_encoder(False) first, or move it before releasing"
            )
        self.clear_text_cache()
        return super()._apply(fn, recurse)


def build_model(
    preset: str | ModelConfig, device: torch.device | str | None = None, *, enable_segmentation: bool = False
) -> Sam3Lite:
    """A randomly initialised Sam3Lite for a preset name (`sam3`, `small`, `tiny`) or a ModelConfig.

    Parameters are created directly on `device` (default CPU). `device="meta"` allocates nothing and takes
    well under a second even for `sam3`: use it to inspect keys and shapes, or `to_empty()` then load weights.
    """
    if enable_segmentation:
        raise ValueError(
            "enable_segmentation=True is not supported: sam3lite is the box-only SAM3 detector (no mask head); "
            "build with enable_segmentation=False"
        )
    cfg = resolve_config(preset)
    with torch.device(device if device is not None else "cpu"):
        return Sam3Lite(cfg)
