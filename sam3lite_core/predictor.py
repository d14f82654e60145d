"""`Predictor`: a loaded detector that answers K prompts on each of N images with thresholded, sorted detections.

It builds on `sam3lite_core.inference` (`encode_images`, then `detect`: several prompts in one forward, each unique
prompt string encoded once). Two caches make repeated work free: the image features of the last images by image
token (`ImageFeatureCache`: the vision trunk runs once per image, whatever the number of prompt chunks or
calls), and the text features of every prompt seen (the text encoder is frozen at load, so
`Sam3Lite.encode_prompts` caches). With `tile=TileSettings(...)` a large image is seen as overlapping windows at
their own resolution, all windows and prompts grounded together, and their detections merged (tiling.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision.ops import nms

from sam3lite_core.box_ops import box_xyxy_to_cxcywh
from sam3lite_core.cache_budget import CacheBudget
from sam3lite_core.data.decode import decode_rgb, pil_to_rgb
from sam3lite_core.feature_cache import DEFAULT_CACHED_FEATURES, ImageFeatureCache
from sam3lite_core.inference import ImageLike, PromptLike, detect, encode_images, preprocess_image
from sam3lite_core.model.geometry_encoder import POINTS_UNSUPPORTED
from sam3lite_core.model.sam3lite import ImageFeatures, Sam3Lite
from sam3lite_core.precision import amp_of_precision
from sam3lite_core.tiling import TileSettings, merge_windows, tile_windows
from sam3lite_core.weights import load_model

MASKS_UNSUPPORTED = "masks are not supported: sam3lite is the box-only SAM3 detector (no mask head)"
TILED_EXEMPLARS_UNSUPPORTED = (
    "tiled inference takes text prompts only: exemplar boxes name a region of the whole image, not of each window"
)
ImageInput = ImageLike | str | os.PathLike
# Tiled windows encoded per trunk forward: the trunk's activations grow with the batch, the windows do not need
# to share one.
WINDOWS_PER_ENCODE = 8


@dataclass(frozen=True)
class Detection:
    """One detected object of one prompt.

    box_xyxy    (x0, y0, x1, y1) in pixels of the input image
    box_cxcywh  (cx, cy, w, h) normalised to [0, 1] by the image width and height
    score       sigmoid(pred_logit) * sigmoid(presence_logit), in [0, 1]
    prompt      the prompt's text
    """

    box_xyxy: tuple[float, float, float, float]
    box_cxcywh: tuple[float, float, float, float]
    score: float
    prompt: str


@dataclass(frozen=True)
class WindowedAnswer:
    """One prompt's answer on an image seen through windows, with what the merge did.

    detections  the kept detections, best first (as `Predictor.predict` gives them)
    windows     long [T, 4] (x0, y0, x1, y1) px, the windows the image was cut into
    raw         detections of all windows that entered the merge (score >= threshold, per-window limit)
    fused       detections left after the merge, before the final `max_detections`
    """

    detections: list[Detection]
    windows: torch.Tensor
    raw: int
    fused: int


def _best_per_window(scores: torch.Tensor, limit: int) -> torch.Tensor:
    """scores [T, K, N] -> the same with all but the `limit` best of each (window, prompt) set to -1, below any
    threshold."""
    if limit >= scores.shape[-1]:
        return scores
    kept = torch.full_like(scores, -1.0)
    best = scores.topk(limit, dim=-1)
    return kept.scatter(-1, best.indices, best.values)


def load_rgb(image: ImageInput, max_pixels: int | None = None) -> np.ndarray:
    """A path, PIL image, uint8 [H, W, 3] / [H, W] array or [3, H, W] tensor -> uint8 [H, W, 3] RGB array.
    A file goes through the one decoder (data/decode.py: upright, every mode, `max_pixels` budget)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image {path} does not exist")
        return decode_rgb(path, max_pixels=max_pixels, name=f"image {path}")
    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
        pixels = image if image.dtype == torch.uint8 else (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())
    raise ValueError(
        "an image must be a file path, a PIL image, a uint8 [H, W, 3] or [H, W] array, or a [3, H, W] tensor; "
        f"got {type(image).__name__}"
    )


def image_token(pixels: np.ndarray) -> str:
    """md5 hex digest of the uint8 [H, W, 3] RGB pixel bytes: the annotation backend's image token."""
    return hashlib.md5(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def _check_prompt(prompt: PromptLike, index: int) -> str:
    """The prompt's text; refuses point and mask prompts with the reason (inference.py checks the rest)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        if "points" in prompt or "point_labels" in prompt:
            raise ValueError(f"prompt {index}: {POINTS_UNSUPPORTED}")
        if "masks" in prompt or "mask" in prompt:
            raise ValueError(f"prompt {index}: {MASKS_UNSUPPORTED}")
        if isinstance(prompt.get("text"), str):
            return prompt["text"]
    raise ValueError(f"prompt {index} must be a string or a mapping with a 'text' string; got {prompt!r}")


def _check_limits(threshold: float, max_detections: int | None, nms_iou: float | None, chunk_size: int) -> None:
    """Refuses a `Predictor.predict` option outside its range, naming it."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if max_detections is not None and max_detections < 1:
        raise ValueError(f"max_detections must be >= 1 or None, got {max_detections}")
    if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in (0, 1] or None, got {nms_iou}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


class Predictor:
    """A detector in eval mode on one device, with its inference precision, keeping the image features of the
    last `cached_images` images (a tiled image counts one per window)."""

    def __init__(
        self,
        model: Sam3Lite,
        precision: str = "fp32",
        cached_images: int = DEFAULT_CACHED_FEATURES,
        cache_budget: CacheBudget | None = None,
    ) -> None:
        amp_of_precision(precision)  # refuses an unknown precision here, not at the first forward
        self.model = model.eval()
        self.model.freeze_text_encoder(True)  # repeated prompts then reuse their cached text features
        self.precision = precision
        self.features = ImageFeatureCache(cached_images, cache_budget)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        precision: str = "fp32",
        cache_budget: CacheBudget | None = None,
    ) -> "Predictor":
        """Load one of our checkpoints (its saved config; EMA weights when present) or an upstream sam3.pt
        (sam3 preset) from a local file. Raises ValueError / FileNotFoundError for anything else."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} is not a file (only local checkpoint files are loaded)")
        return cls(load_model(path, device=device), precision=precision, cache_budget=cache_budget)

    def predict(
        self,
        images: Sequence[ImageInput] | ImageInput,
        prompts: Sequence[PromptLike] | PromptLike,
        *,
        threshold: float = 0.0,
        max_detections: int | None = None,
        nms_iou: float | None = None,
        chunk_size: int = 16,
        tile: TileSettings | None = None,
    ) -> list[list[list[Detection]]]:
        """Detections per image, per prompt (in the order given), sorted by decreasing score.

        A prompt is a text or {"text", "boxes": [[x0, y0, x1, y1] px], "labels": [1 | 0]} (exemplar boxes).
        Every prompt is asked of every image; the image's features are computed once (or found in the cache),
        then up to `chunk_size` find queries (window x prompt pairs; all windows of at least one prompt) are
        grounded per forward.
        With `tile`, the image is cut into overlapping windows (tiling.py), every window is encoded in one
        batch and asked every prompt, and the windows' detections are merged in image coordinates (text
        prompts only).
        Kept: score >= threshold, then (with `nms_iou`) non-maximum suppression within the prompt, then the
        `max_detections` best.
        """
        images = [images] if not isinstance(images, (list, tuple)) else list(images)
        prompts = [prompts] if isinstance(prompts, (str, Mapping)) else list(prompts)
        texts = [_check_prompt(p, i) for i, p in enumerate(prompts)]
        _check_limits(threshold, max_detections, nms_iou, chunk_size)
        if tile is not None and not all(isinstance(p, str) for p in prompts):
            raise ValueError(TILED_EXEMPLARS_UNSUPPORTED)
        results = []
        for image in images:
            pixels = load_rgb(image)
            height, width = pixels.shape[:2]
            windows = tile_windows(height, width, tile) if tile else torch.tensor([[0, 0, width, height]])
            boxes, scores = self._ground(pixels, windows, prompts, chunk_size)
            if tile is None:
                per_prompt = list(zip(boxes[0], scores[0]))
            else:
                per_prompt = merge_windows(boxes, scores, windows, tile.merge_iou, min_score=threshold)
            results.append(
                [
                    self._select(b, s, text, (height, width), threshold, max_detections, nms_iou)
                    for (b, s), text in zip(per_prompt, texts)
                ]
            )
        return results

    def predict_windowed(
        self,
        image: ImageInput,
        prompts: Sequence[str],
        tile: TileSettings,
        *,
        threshold: float = 0.0,
        per_window: int | None = None,
        max_detections: int | None = None,
        chunk_size: int = 16,
    ) -> list[WindowedAnswer]:
        """One image through `tile`'s windows: per text prompt, its detections and the merge's counts.

        As `predict(..., tile=tile)`, but each window keeps only its `per_window` best detections before the
        merge (the backend widens this per-window search beyond the final `max_detections`), and the answer says
        how many detections the windows gave and how many the merge left.
        """
        texts = [_check_prompt(p, i) for i, p in enumerate(prompts)]
        _check_limits(threshold, max_detections, None, chunk_size)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(TILED_EXEMPLARS_UNSUPPORTED)
        if per_window is not None and per_window < 1:
            raise ValueError(f"per_window must be >= 1 or None, got {per_window}")
        pixels = load_rgb(image)
        height, width = pixels.shape[:2]
        windows = tile_windows(height, width, tile)
        boxes, scores = self._ground(pixels, windows, list(prompts), chunk_size)
        if per_window is not None:
            scores = _best_per_window(scores, per_window)
        raw = (scores >= threshold).sum(dim=(0, 2)).tolist()  # [K]
        merged = merge_windows(boxes, scores, windows, tile.merge_iou, min_score=threshold)
        return [
            WindowedAnswer(
                self._select(b, s, text, (height, width), threshold, max_detections, None), windows, int(count), len(s)
            )
            for (b, s), text, count in zip(merged, texts, raw)
        ]

    def _ground(
        self, pixels: np.ndarray, windows: torch.Tensor, prompts: list[PromptLike], chunk_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [H, W, 3] pixels, windows long [T, 4] -> every window's answer to every prompt, unthresholded,
        as from `detect`: boxes [T, K, Nq, 4] xyxy px, scores [T, K, Nq]. The features come from the cache when
        it has them; at most `chunk_size` (window, prompt) pairs go through one forward."""
        key = (image_token(pixels), tuple(map(tuple, windows.tolist())))
        features = self.features.get_or_compute(key, lambda: self._encode(pixels, windows))
        step = max(1, chunk_size // len(windows))
        chunks = [
            detect(self.model, features, prompts[i : i + step], windows, precision=self.precision)
            for i in range(0, len(prompts), step)
        ]
        return torch.cat([b for b, _ in chunks], dim=1), torch.cat([s for _, s in chunks], dim=1)

    def _encode(self, pixels: np.ndarray, windows: torch.Tensor) -> ImageFeatures:
        """uint8 [H, W, 3] pixels, windows long [T, 4] (x0, y0, x1, y1 px) -> their ImageFeatures, encoded
        WINDOWS_PER_ENCODE at a time (a trunk batch of 256 windows at 1008 px would want tens of GB)."""
        size = self.model.cfg.vision.image_size
        parts = []
        for start in range(0, len(windows), WINDOWS_PER_ENCODE):
            crops = [
                preprocess_image(pixels[y0:y1, x0:x1], size)[0]
                for x0, y0, x1, y1 in windows[start : start + WINDOWS_PER_ENCODE].tolist()
            ]
            parts.append(encode_images(self.model, torch.stack(crops), precision=self.precision))
        if len(parts) == 1:
            return parts[0]
        features = torch.cat([part.features for part in parts])
        # pos is one table broadcast over the batch (see ImageFeatures): widen the view, never copy it.
        return ImageFeatures(features, parts[0].pos[:1].expand(len(features), -1, -1, -1))

    @staticmethod
    def _select(
        boxes: torch.Tensor,
        scores: torch.Tensor,
        text: str,
        size: tuple[int, int],
        threshold: float,
        max_detections: int | None,
        nms_iou: float | None,
    ) -> list[Detection]:
        """boxes [Nq, 4] xyxy px, scores [Nq] -> the kept detections, best first."""
        keep = scores >= threshold
        boxes, scores = boxes[keep], scores[keep]
        if nms_iou is not None and len(scores):
            order = nms(boxes, scores, nms_iou)  # indices sorted by decreasing score
        else:
            order = scores.argsort(descending=True)
        order = order[:max_detections]
        height, width = size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        xyxy = boxes[order]
        cxcywh = box_xyxy_to_cxcywh(xyxy / scale)
        return [
            Detection(tuple(b), tuple(c), s, text)  # type: ignore[arg-type]
            for b, c, s in zip(xyxy.tolist(), cxcywh.tolist(), scores[order].tolist())
        ]
