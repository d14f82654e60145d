"""Request and response bodies of the inference service, in the annotation backend's shapes
(reference/tator_contract.md sections 3 and 7). Fields the backend has for masks or CLIP heads are accepted and
ignored where ignoring them cannot change boxes; masks are always null. Windowed inference is honoured."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sam3lite_core.tiling import TileSettings


class ActivateRequest(BaseModel):
    """`POST /sam3/models/activate`. checkpoint_path null = back to the base weights."""

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
    run_path: str | None = None


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_base64: str | None = None
    image_token: str | None = None
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_results: int | None = Field(default=None, ge=1)
    min_size: float | None = Field(default=None, ge=0.0, description="minimum box area in pixels")
    sam_variant: str = "sam3"

    @model_validator(mode="after")
    def _one_image(self) -> "ImageRequest":
        if not self.image_base64 and not self.image_token:
            raise ValueError("send the image as image_base64, or the image_token of an image sent before")
        if self.sam_variant != "sam3":
            raise ValueError(f"sam_variant must be 'sam3' (this service only runs SAM3); got {self.sam_variant!r}")
        return self


class TextRequest(ImageRequest):
    """Text prompts, optionally answered window by window (the backend's windowed inference, tiling.py)."""

    windowed: bool = False
    window_size: int | None = Field(default=None, ge=16, description="window side in px; default: the model input's")
    window_overlap: float = Field(default=0.2, ge=0.0, lt=1.0, description="least fraction of a window shared")
    merge_iou: float = Field(default=0.5, gt=0.0, le=1.0, description="IoU above which window boxes are one object")

    def tile_settings(self, model_side: int) -> TileSettings | None:
        """The windows to cut the image into (None unless `windowed`); `model_side` is the default window."""
        if not self.windowed:
            return None
        return TileSettings(size=self.window_size or model_side, overlap=self.window_overlap, merge_iou=self.merge_iou)


class TextPromptRequest(TextRequest):
    """`POST /sam3/text_prompt`: one text prompt."""

    text_prompt: str = Field(min_length=1)


class TextPromptBatchRequest(TextRequest):
    """`POST /sam3/text_prompt_batch`: several text prompts on one image, answered in one forward per chunk."""

    text_prompts: list[str] = Field(min_length=1, max_length=256)


class ExemplarBox(BaseModel):
    left: float
    top: float
    width: float = Field(gt=0)
    height: float = Field(gt=0)


class VisualPromptRequest(ImageRequest):
    """`POST /sam3/visual_prompt`: exemplar boxes in pixels (xywh), positive unless bbox_labels says False."""

    threshold: float = Field(default=0.55, ge=0.0, le=1.0)
    bbox_left: float | None = None
    bbox_top: float | None = None
    bbox_width: float | None = Field(default=None, gt=0)
    bbox_height: float | None = Field(default=None, gt=0)
    bboxes: list[list[float] | ExemplarBox] | None = None
    bbox_labels: list[bool] | None = None
    text_prompt: str | None = None
    prompt: str | None = None

    def exemplars(self) -> tuple[list[list[float]], list[int]]:
        """(boxes [[x0, y0, x1, y1]] in pixels, labels 1 | 0); ValueError when none or malformed."""
        boxes: list[list[float]] = []
        for box in self.bboxes or []:
            if isinstance(box, ExemplarBox):
                box = [box.left, box.top, box.width, box.height]
            if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
                raise ValueError(f"each of bboxes must be [x, y, w, h] in pixels with w, h > 0; got {box}")
            boxes.append([box[0], box[1], box[0] + box[2], box[1] + box[3]])
        labels = [int(flag) for flag in self.bbox_labels] if self.bbox_labels is not None else [1] * len(boxes)
        if len(labels) != len(boxes):
            raise ValueError(f"bbox_labels has {len(labels)} entries for {len(boxes)} bboxes; give one per box")
        single = (self.bbox_left, self.bbox_top, self.bbox_width, self.bbox_height)
        if all(v is not None for v in single):
            x, y, w, h = single  # type: ignore[misc]
            boxes.insert(0, [x, y, x + w, y + h])
            labels.insert(0, 1)
        elif any(v is not None for v in single):
            raise ValueError("bbox_left, bbox_top, bbox_width and bbox_height go together; give all four or none")
        if not boxes:
            raise ValueError("a visual prompt needs an exemplar: bbox_left/top/width/height or bboxes")
        return boxes, labels


class Detection(BaseModel):
    """The backend's QwenDetection, box-only: bbox = [cx, cy, w, h] normalised to [0, 1]."""

    bbox: list[float]
    score: float
    qwen_label: str
    source: str
    class_name: str
    mask: None = None


class PromptResponse(BaseModel):
    detections: list[Detection]
    warnings: list[str]
    image_token: str
    masks: None = None


class BatchPromptResponse(BaseModel):
    """One PromptResponse per prompt, in the request's order."""

    image_token: str
    results: list[PromptResponse]
