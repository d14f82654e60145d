"""Training samples from COCO JSON: one sample per image, one find query per category of the dataset.

Like the vendor's COCO_FROM_JSON with include_negatives: every category becomes a query on every image, with
its boxes when present and as a negative (no boxes) when absent, and the category name is the prompt. Optional
per-category prompt variants are drawn at random in training and the first one is used in evaluation. A query
with more than `max_objects_per_query` boxes is dropped, as the vendor's FilterFindQueriesWithTooManyOut does
(cutting it would teach the model that real objects are background).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torchvision import tv_tensors

from sam3lite_core.data.coco_json import read_coco
from sam3lite_core.data.decode import decode_rgb
from sam3lite_core.data.transforms import VENDOR_MIN_SCALE, build_transforms


class LoaderSettings(BaseModel):
    """How samples are made; user-facing (part of the training config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolution: int = Field(default=1008, ge=16, description="square canvas side in pixels")
    max_objects_per_query: int = Field(default=200, ge=1)
    prompt_variants: dict[str, list[str] | str] = Field(
        default_factory=dict,
        description="category name or 1-based category id -> prompts (list or 'a, b'); the first is used in evaluation",
    )
    hflip_prob: float = Field(default=0.0, ge=0.0, le=1.0, description="horizontal flip probability (train only)")
    box_jitter: float = Field(default=0.0, ge=0.0, le=0.5, description="box edge noise, share of the side (train only)")
    train_min_scale: float = Field(
        default=VENDOR_MIN_SCALE,
        gt=0.0,
        le=1.0,
        description="smallest train resize, share of the resolution (the rest of the canvas is padding)",
    )
    max_pixels: int | None = Field(default=None, ge=1, description="decode budget; None = decode.default_max_pixels")


@dataclass
class Query:
    category_id: int
    prompt: str
    boxes: torch.Tensor  # float [T, 4] cxcywh in [0, 1] of the canvas


@dataclass
class Sample:
    image: torch.Tensor  # float [3, R, R], normalised to [-1, 1]
    image_id: int
    orig_size: tuple[int, int]  # (height, width) in pixels, from the COCO file
    queries: list[Query]


def _prompt_table(categories: list[dict], variants: dict[str, list[str] | str]) -> dict[int, list[str]]:
    by_key = {str(k).strip().casefold(): v for k, v in variants.items()}
    table = {}
    for cat in categories:
        given = by_key.get(cat["name"].casefold(), by_key.get(str(cat["id"])))
        prompts = given.split(",") if isinstance(given, str) else (given or [])
        table[cat["id"]] = [p.strip() for p in prompts if p.strip()] or [cat["name"]]
    return table


class CocoQueryDataset(torch.utils.data.Dataset):
    """`dataset[i] -> Sample` for the i-th image of `coco_json`; file_names are relative to `images_root`.

    Annotations live in flat numpy arrays rather than per-image Python objects, so forked DataLoader workers
    share them instead of copying pages touched by reference counting.
    """

    def __init__(
        self, coco_json: str | Path, images_root: str | Path, settings: LoaderSettings | None = None, *, train: bool
    ) -> None:
        self.settings = settings or LoaderSettings()
        self.train = train
        coco = read_coco(coco_json)
        root = Path(images_root)
        images = sorted(coco["images"], key=lambda im: im["id"])
        self.categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.prompts = _prompt_table(self.categories, self.settings.prompt_variants)
        self.image_ids = np.array([im["id"] for im in images], dtype=np.int64)
        self.sizes = np.array([(im["height"], im["width"]) for im in images], dtype=np.int64).reshape(-1, 2)  # (h, w)
        self.paths = [str(root / im["file_name"]) for im in images]
        index = {int(i): n for n, i in enumerate(self.image_ids)}
        crowdless = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]  # the vendor's FilterCrowds
        anns = sorted(crowdless, key=lambda a: (index[a["image_id"]], a["id"]))
        owner = np.array([index[a["image_id"]] for a in anns], dtype=np.int64)
        self.offsets = np.searchsorted(owner, np.arange(len(images) + 1))  # image n owns [offsets[n], offsets[n+1])
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        size_of = self.sizes[owner][:, ::-1].astype(np.float64)  # [A, 2] (w, h)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) / np.tile(size_of, 2)
        self.boxes = np.clip(xyxy, 0.0, 1.0).astype(np.float32)  # [A, 4] xyxy normalised to the image
        self.labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        self.transforms = build_transforms(
            self.settings.resolution,
            train,
            hflip_prob=self.settings.hflip_prob if train else 0.0,
            box_jitter=self.settings.box_jitter if train else 0.0,
            min_scale=self.settings.train_min_scale,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def image_categories(self) -> list[list[int]]:
        """Category id of every annotation, per image (what the class-balanced sampler weighs)."""
        return [self.labels[a:b].tolist() for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def prompt_for(self, category_id: int) -> str:
        options = self.prompts[category_id]
        if not self.train or len(options) == 1:
            return options[0]
        return options[int(torch.randint(len(options), ()))]

    def __getitem__(self, i: int) -> Sample:
        pixels = decode_rgb(self.paths[i], max_pixels=self.settings.max_pixels, min_side=self.settings.resolution)
        height, width = pixels.shape[:2]
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1))  # [3, h, w] uint8
        a, b = self.offsets[i], self.offsets[i + 1]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(self.boxes[a:b]) * scale, format="XYXY", canvas_size=(height, width)
        )
        image, target = self.transforms(image, {"boxes": boxes, "labels": torch.from_numpy(self.labels[a:b])})
        canvas_h, canvas_w = image.shape[-2:]
        xyxy = target["boxes"].as_subclass(torch.Tensor)
        cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], dim=1)
        cxcywh = cxcywh / torch.tensor([canvas_w, canvas_h, canvas_w, canvas_h], dtype=torch.float32)
        labels = target["labels"]
        queries = []
        for cat in self.categories:
            cat_boxes = cxcywh[labels == cat["id"]]
            if len(cat_boxes) <= self.settings.max_objects_per_query:
                queries.append(Query(cat["id"], self.prompt_for(cat["id"]), cat_boxes))
        h0, w0 = (int(v) for v in self.sizes[i])
        return Sample(image.as_subclass(torch.Tensor), int(self.image_ids[i]), (h0, w0), queries)
