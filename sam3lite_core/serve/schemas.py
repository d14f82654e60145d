"""Request and response bodies of the inference service, in the annotation backend's shapes
(reference/tator_contract.md sections 3 and 7, `models/schemas.py` of the backend). Requests are as lenient as
the backend's validators: `max_results <= 0` is unlimited, a negative `min_size` is 0, null window fields take
the UI's defaults, and visual prompts keep their valid boxes. What is still invalid is a 422. Fields the backend
has for masks or CLIP heads are accepted and ignored where ignoring them cannot change boxes; masks are null."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sam3lite_core.tiling import TileSettings

UI_WINDOW_SIZE, UI_WINDOW_OVERLAP, UI_MERGE_IOU = 672, 0.1, 0.5  # the backend UI's windowed defaults
POSITIVE_WORDS = {"1", "true", "yes", "pos", "positive"}


class ActivateRequest(BaseModel):
    """`POST /sam3/models/activate`. checkpoint_path null (or the base checkpoint's path) = the base weights."""

    checkpoint_path: str | None = None
    label: str | None = None
    enable_segmentation: bool | None = None


class ActiveModel(BaseModel):
    """The active model as the backend reports it: id = label or the checkpoint's stem."""

    id: str
    label: str
    checkpoint: str | None
    source: str  # "env" (base weights), "custom" (a run's checkpoint), "none" (no weights configured)
    enable_segmentation: bool = False


class ActivateResponse(BaseModel):
    active: ActiveModel


class ModelEntry(BaseModel):
    """One row of `GET /sam3/models`: the base entry, the active custom checkpoint, then one per run."""

    id: str
    key: str | None = None
    path: str | None
    active: bool
    source: str | None = None
    variant: str = "sam3"
    size_bytes: int | None = None
    promoted: bool | None = None
    promoted_at: float | None = None
    run_path: str | None = None
    enable_segmentation: bool | None = None


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_base64: str | None = None
    image_token: str | None = None
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_results: int | None = Field(default=None, description="at most this many detections; <= 0: unlimited")
    min_size: float | None = Field(default=None, description="minimum box area in pixels; negative: 0")
    simplify_epsilon: float | None = Field(default=None, description="echoed in each detection; negative: 0")
    sam_variant: str | None = None

    @field_validator("max_results")
    @classmethod
    def _unlimited(cls, value: int | None) -> int | None:
        return value if value is not None and value > 0 else None

    @field_validator("min_size", "simplify_epsilon")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        return None if value is None else max(0.0, value)

    @model_validator(mode="after")
    def _one_image(self) -> "ImageRequest":
        if not self.image_base64 and not self.image_token:
            raise ValueError(
                "image_payload_missing: send the image as image_base64, or the image_token of an image sent before"
            )
        return self


class TextRequest(ImageRequest):
    """Text prompts, optionally answered window by window (the backend's windowed inference, tiling.py)."""

    windowed: bool = False
    window_size: int | None = Field(default=None, description=f"window side in px, >= 1; null: {UI_WINDOW_SIZE}")
    window_overlap: float | None = Field(default=None, ge=0.0, lt=1.0, description="least fraction shared")
    merge_iou: float | None = Field(default=None, gt=0.0, le=1.0, description="IoU above which boxes are one")

    @field_validator("window_size")
    @classmethod
    def _at_least_one(cls, value: int | None) -> int | None:
        return None if value is None else max(1, value)

    def tile_settings(self, min_size: int) -> TileSettings | None:
        """The windows asked for (None unless `windowed`), the side raised to `min_size` px when smaller (the
        caller fits it to the image and says so)."""
        if not self.windowed:
            return None
        size = max(min_size, self.window_size or UI_WINDOW_SIZE)
        overlap = UI_WINDOW_OVERLAP if self.window_overlap is None else self.window_overlap
        return TileSettings(size=size, overlap=overlap, merge_iou=self.merge_iou or UI_MERGE_IOU)


class TextPromptRequest(TextRequest):
    """`POST /sam3/text_prompt`: one text prompt."""

    text_prompt: str = Field(min_length=1)


class TextPromptBatchRequest(TextRequest):
    """`POST /sam3/text_prompt_batch`: several text prompts on one image, answered in one forward per chunk."""

    text_prompts: list[str] = Field(min_length=1, max_length=256)


def _exemplar(entry: Any) -> list[float] | None:
    """[x, y, w, h] px of one `bboxes` entry (a list or a {left|x, top|y, width|w, height|h} mapping); None
    when it is not a box or has no area (the backend drops such entries)."""
    if isinstance(entry, Mapping):
        entry = [entry.get(a, entry.get(b)) for a, b in (("left", "x"), ("top", "y"), ("width", "w"), ("height", "h"))]
    if not isinstance(entry, (list, tuple)) or len(entry) < 4:
        return None
    try:
        box = [float(v) for v in entry[:4]]
    except (TypeError, ValueError):
        return None
    return box if box[2] > 0 and box[3] > 0 else None


def _positive(flag: Any) -> bool:
    """One `bbox_labels` entry as the backend reads it: bools and numbers by truth, words by POSITIVE_WORDS."""
    if isinstance(flag, (bool, int, float)):
        return bool(flag)
    if isinstance(flag, str):
        return flag.strip().lower() in POSITIVE_WORDS
    return True


class VisualPromptRequest(ImageRequest):
    """`POST /sam3/visual_prompt`: exemplar boxes in pixels (xywh), positive unless bbox_labels says False.
    A valid `bboxes` list wins over the single `bbox_left/top/width/height` box."""

    threshold: float = Field(default=0.55, ge=0.0, le=1.0)
    bbox_left: float | None = None
    bbox_top: float | None = None
    bbox_width: float | None = None
    bbox_height: float | None = None
    bboxes: list[Any] | None = None
    bbox_labels: list[Any] | None = None
    text_prompt: str | None = None
    prompt: str | None = None

    @model_validator(mode="after")
    def _clean_exemplars(self) -> "VisualPromptRequest":
        boxes = [box for box in map(_exemplar, self.bboxes or []) if box is not None]
        if boxes:
            labels = [_positive(flag) for flag in self.bbox_labels or []]
            self.bboxes, self.bbox_labels = boxes, (labels + [True] * len(boxes))[: len(boxes)]
            return self
        single = {
            "bbox_left": self.bbox_left,
            "bbox_top": self.bbox_top,
            "bbox_width": self.bbox_width,
            "bbox_height": self.bbox_height,
        }
        missing = [name for name, value in single.items() if value is None]
        if missing:
            raise ValueError(
                f"invalid_{missing[0]}: a visual prompt needs an exemplar: a bboxes list of "
                "[x, y, w, h] px with w, h > 0, or all four of bbox_left/top/width/height"
            )
        if self.bbox_width <= 0 or self.bbox_height <= 0:  # type: ignore[operator]
            raise ValueError("invalid_bbox_dims: bbox_width and bbox_height must be > 0 pixels")
        self.bboxes, self.bbox_labels = [[self.bbox_left, self.bbox_top, self.bbox_width, self.bbox_height]], [True]
        return self

    def exemplars(self) -> tuple[list[list[float]], list[int]]:
        """(boxes [[x0, y0, x1, y1]] in pixels, labels 1 | 0), as cleaned by the validator."""
        boxes = [[x, y, x + w, y + h] for x, y, w, h in self.bboxes or []]
        return boxes, [int(flag) for flag in self.bbox_labels or []]


class Detection(BaseModel):
    """The backend's QwenDetection, box-only: bbox = [cx, cy, w, h] normalised to [0, 1]; `source` is one of
    the backend's values; `class_id` / `class_name` name a labelmap class, which this service has none of."""

    bbox: list[float]
    score: float | None
    qwen_label: str | None
    source: Literal["bbox", "point", "bbox_sam", "sam3_text"]
    mask: None = None
    simplify_epsilon: float | None = None
    class_id: int | None = None
    class_name: str | None = None


class PromptResponse(BaseModel):
    detections: list[Detection]
    warnings: list[str]
    image_token: str
    masks: None = None


class BatchPromptResponse(BaseModel):
    """One PromptResponse per prompt, in the request's order."""

    image_token: str
    results: list[PromptResponse]
