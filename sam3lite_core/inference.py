"""One image, several prompts -> every query's box and score, as upstream `PostProcessImage` reports them.

`predict` is `encode_images` (the vision backbone, once per image) then `detect` (the prompts grounded in the
image's features, all in one forward); the Predictor calls the two halves itself to reuse features and to
ground prompts in several windows of one image at once.

Preprocessing is upstream `Sam3Processor`'s: uint8, straight resize (no aspect preservation) to the model
resolution, then scaled to [0, 1] and normalised with mean = std = 0.5. Because the resize ignores the
aspect ratio, normalised box coordinates mean the same thing in the input image and in the model input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Union

import numpy as np
import PIL.Image
import torch
from torchvision.transforms.v2 import functional as TF

from sam3lite_core.batch import Batch
from sam3lite_core.box_ops import box_xyxy_to_cxcywh
from sam3lite_core.data.decode import pil_to_rgb
from sam3lite_core.model.geometry_encoder import POINTS_UNSUPPORTED
from sam3lite_core.model.sam3lite import ImageFeatures, Sam3Lite
from sam3lite_core.precision import amp_of_precision, autocast

ImageLike = Union[PIL.Image.Image, np.ndarray, torch.Tensor]
# A prompt is a text, or {"text": str, "boxes": [[x0, y0, x1, y1], ...] in pixels, "labels": [1 | 0, ...]}.
PromptLike = Union[str, Mapping[str, Any]]
_PROMPT_KEYS = {"text", "boxes", "labels"}


def preprocess_image(image: ImageLike, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """PIL image, uint8 [H, W, 3] (or [H, W]) array, or [3, H, W] tensor (uint8, or float in [0, 1])
    -> (model input float [3, size, size] in [-1, 1], original (height, width))."""
    if isinstance(image, PIL.Image.Image):
        pixels = torch.from_numpy(pil_to_rgb(image)).permute(2, 0, 1)  # the modes as the file decoder reads them
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(
                f"a numpy image must be uint8 [H, W, 3] (RGB) or [H, W] (grey); got {image.dtype} {image.shape}"
            )
        pixels = torch.from_numpy(np.ascontiguousarray(image))
        pixels = pixels.expand(3, *pixels.shape) if image.ndim == 2 else pixels.permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be [3, H, W] (channels first, RGB); got shape {tuple(image.shape)}")
        pixels = image
    else:
        raise ValueError(f"image must be a PIL image, a numpy array or a tensor; got {type(image).__name__}")
    height, width = pixels.shape[-2:]
    pixels = TF.to_dtype(pixels, torch.uint8, scale=True)
    pixels = TF.resize(pixels, [size, size], antialias=True)
    pixels = TF.to_dtype(pixels, torch.float32, scale=True)
    return TF.normalize(pixels, mean=[0.5] * 3, std=[0.5] * 3), (int(height), int(width))


def _parse_prompt(prompt: PromptLike, index: int) -> tuple[str, list[list[float]], list[int]]:
    if isinstance(prompt, str):
        return prompt, [], []
    if not isinstance(prompt, Mapping):
        raise ValueError(f"prompt {index} must be a string or a mapping with 'text'; got {type(prompt).__name__}")
    if "points" in prompt:
        raise ValueError(f"prompt {index}: {POINTS_UNSUPPORTED}")
    unknown = set(prompt) - _PROMPT_KEYS
    if unknown or not isinstance(prompt.get("text"), str):
        raise ValueError(
            f"prompt {index} needs a 'text' string and may have 'boxes' and 'labels'; got keys {sorted(prompt)}"
        )
    boxes = [list(map(float, box)) for box in prompt.get("boxes", [])]
    labels = [int(label) for label in prompt.get("labels", [1] * len(boxes))]
    if any(len(box) != 4 for box in boxes) or len(labels) != len(boxes) or not set(labels) <= {0, 1}:
        raise ValueError(
            f"prompt {index}: 'boxes' must be [x0, y0, x1, y1] lists in pixels and 'labels' one 1 (positive) "
            f"or 0 (negative) per box; got {len(boxes)} boxes and labels {labels}"
        )
    return prompt["text"], boxes, labels


def prompt_batch(prompts: Sequence[PromptLike], frames: torch.Tensor) -> Batch:
    """The find queries of K prompts on each of B image frames, query q = b * K + k (image-major).

    frames  float [B, 4]  each image's region (x0, y0, x1, y1) in pixels of the input image: the whole image,
                          or one window of it; exemplar boxes (pixels of the input image) are normalised by it.
    The batch carries no pixels (`images` is empty): `Sam3Lite.ground` reads image features instead.
    """
    parsed = [_parse_prompt(p, i) for i, p in enumerate(prompts)]
    texts = list(dict.fromkeys(text for text, _, _ in parsed))
    num_frames, num_prompts = len(frames), len(parsed)
    origin, extent = frames[:, :2].repeat(1, 2), (frames[:, 2:] - frames[:, :2]).repeat(1, 2)  # [B, 4] each
    num_boxes = max(len(boxes) for _, boxes, _ in parsed)
    box_prompts = torch.zeros(num_frames, num_prompts, num_boxes, 4)
    box_labels = torch.zeros(num_prompts, num_boxes, dtype=torch.long)
    box_padding = torch.ones(num_prompts, num_boxes, dtype=torch.bool)
    for k, (_, boxes, labels) in enumerate(parsed):
        if boxes:
            xyxy = (torch.tensor(boxes)[None] - origin[:, None]) / extent[:, None]  # [B, Nb, 4]
            box_prompts[:, k, : len(boxes)] = box_xyxy_to_cxcywh(xyxy)
            box_labels[k, : len(boxes)] = torch.tensor(labels)
            box_padding[k, : len(boxes)] = False
    prompt_ids = torch.tensor([texts.index(text) for text, _, _ in parsed])
    return Batch(
        images=torch.empty(num_frames, 3, 0, 0),
        img_ids=torch.arange(num_frames).repeat_interleave(num_prompts),
        prompts=texts,
        prompt_ids=prompt_ids.repeat(num_frames),
        box_prompts=box_prompts.flatten(0, 1) if num_boxes else None,
        box_labels=box_labels.repeat(num_frames, 1) if num_boxes else None,
        box_padding=box_padding.repeat(num_frames, 1) if num_boxes else None,
        orig_sizes=extent[:, [1, 0]].long().repeat_interleave(num_prompts, dim=0),
    )


@contextmanager
def _inference(model: Sam3Lite, precision: str) -> Iterator[None]:
    """Eval mode, no autograd, and the precision's autocast; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(_device(model), amp_of_precision(precision)):
            yield
    finally:
        model.train(was_training)


def _device(model: Sam3Lite) -> torch.device:
    return next(model.parameters()).device


def encode_images(model: Sam3Lite, images: torch.Tensor, *, precision: str = "fp32") -> ImageFeatures:
    """Preprocessed images float [B, 3, S, S] (`preprocess_image`) -> their ImageFeatures, on the model's device."""
    with _inference(model, precision):
        return model.encode_image(images.to(_device(model)))


def detect(
    model: Sam3Lite,
    features: ImageFeatures,
    prompts: Sequence[PromptLike],
    frames: torch.Tensor,
    *,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground K prompts in each of the B encoded frames (float [B, 4], x0, y0, x1, y1 px, see `prompt_batch`),
    all in one forward -> on the CPU, for every query of the model (Nq, unthresholded):

    boxes   float [B, K, Nq, 4]  xyxy in pixels of the input image (frame boxes mapped back to it)
    scores  float [B, K, Nq]     sigmoid(pred_logit) * sigmoid(presence_logit), in [0, 1]
    """
    device = _device(model)
    frames = frames.float()
    with _inference(model, precision):
        out = model.ground(features, prompt_batch(prompts, frames).to(device))
    logits, presence = out["pred_logits"].float(), out["presence_logit_dec"].float()  # bf16 under autocast
    scores = logits.sigmoid().squeeze(-1) * presence.sigmoid()  # [B * K, Nq]
    origin, extent = frames[:, :2].repeat(1, 2), (frames[:, 2:] - frames[:, :2]).repeat(1, 2)  # [B, 4] each
    boxes = out["pred_boxes_xyxy"].float().unflatten(0, (len(frames), -1))  # [B, K, Nq, 4]
    boxes = boxes * extent[:, None, None].to(device) + origin[:, None, None].to(device)
    return boxes.cpu(), scores.unflatten(0, (len(frames), -1)).cpu()


def predict(
    model: Sam3Lite, image: ImageLike, prompts: Sequence[PromptLike], *, precision: str = "fp32"
) -> list[dict[str, torch.Tensor]]:
    """Run `model` on one image for each prompt; returns one dict per prompt, in order:

    boxes   float [Nq, 4]  xyxy in pixels of the input image (all Nq = num_queries queries, unthresholded)
    scores  float [Nq]     sigmoid(pred_logit) * sigmoid(presence_logit), in [0, 1]

    `precision` is "fp32" (upstream's numerics) or "bf16" (autocast, precision.py: about 1.6x faster on
    a CPU with AVX512-BF16 or AMX; scores and normalised boxes move by bf16 rounding, about 1e-2).
    """
    if isinstance(prompts, (str, Mapping)):
        prompts = [prompts]
    if not prompts:
        return []
    pixels, (height, width) = preprocess_image(image, model.cfg.vision.image_size)
    features = encode_images(model, pixels[None], precision=precision)
    boxes, scores = detect(model, features, prompts, torch.tensor([[0, 0, width, height]]), precision=precision)
    return [{"boxes": boxes[0, k], "scores": scores[0, k]} for k in range(len(prompts))]
