"""Training samples (one query per category), the v2 transforms (vendor recipe) and the collate contract."""

from __future__ import annotations

import io
import json

import pytest
import torch
from data_builders import write_files
from PIL import Image, ImageOps
from torchvision import tv_tensors

from sam3lite_core.batch import Batch
from sam3lite_core.data.collator import collate
from sam3lite_core.data.convert import ConvertSettings, convert_dataset
from sam3lite_core.data.dataset import CocoQueryDataset, LoaderSettings
from sam3lite_core.data.decode import decode_rgb
from sam3lite_core.data.images import inspect_image
from sam3lite_core.data.synth import write_synth
from sam3lite_core.data.transforms import build_transforms, train_sizes

RES = 96


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    write_synth(root, images=10, seed=3)
    return convert_dataset(root, tmp_path_factory.mktemp("cache"))


def _coco_boxes(result, image_id):
    coco = json.loads(open(result.train_json).read())
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def test_one_query_per_category_with_positives_and_negatives(converted):
    ds = CocoQueryDataset(
        converted.train_json, converted.train_images_root, LoaderSettings(resolution=RES), train=False
    )
    assert len(ds) == converted.counts.train_images
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.image.shape == (3, RES, RES) and sample.image.dtype == torch.float32
        assert -1.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
        assert [q.category_id for q in sample.queries] == [1, 2, 3, 4]
        assert [q.prompt for q in sample.queries] == [c.name for c in converted.categories]
        anns = _coco_boxes(converted, sample.image_id)
        for q in sample.queries:
            assert len(q.boxes) == sum(a["category_id"] == q.category_id for a in anns)
            assert q.boxes.shape[1:] == (4,) and bool(((q.boxes >= 0) & (q.boxes <= 1)).all())
    assert any(len(q.boxes) == 0 for i in range(len(ds)) for q in ds[i].queries), "absent categories are negatives"


def test_validation_resize_keeps_normalised_boxes(converted):
    ds = CocoQueryDataset(
        converted.train_json, converted.train_images_root, LoaderSettings(resolution=RES), train=False
    )
    sample = ds[0]
    h, w = sample.orig_size
    expected = sorted(
        [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]
        for x, y, bw, bh in (a["bbox"] for a in _coco_boxes(converted, sample.image_id))
    )
    got = sorted(b.tolist() for q in sample.queries for b in q.boxes)
    assert torch.tensor(got) == pytest.approx(torch.tensor(expected), abs=1e-4)


def test_train_recipe_square_resize_random_pad_normalise():
    assert train_sizes(1008) == list(range(480, 993, 32))
    assert train_sizes(504) == list(range(240, 497, 16))
    torch.manual_seed(0)
    pipeline = build_transforms(RES, train=True)
    image = tv_tensors.Image(torch.full((3, 40, 80), 200, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        [[20.0, 10.0, 60.0, 30.0], [0.0, 0.0, 0.1, 0.1]], format="XYXY", canvas_size=(40, 80)
    )
    seen_sizes = set()
    for _ in range(20):
        out, target = pipeline(image, {"boxes": boxes, "labels": torch.tensor([1, 2])})
        content = (out[0] > -1).nonzero()
        top, left = content.min(0).values.tolist()
        s = int(content[:, 0].max()) - top + 1
        assert int(content[:, 1].max()) - left + 1 == s and s in train_sizes(RES)  # square, aspect ignored
        assert out[0, 0, 0] == -1 or (top, left) == (0, 0)  # zero padding becomes -1 after normalisation
        assert target["labels"].tolist() == [1], "the sub-pixel box is dropped"
        expected = torch.tensor([left + 0.25 * s, top + 0.25 * s, left + 0.75 * s, top + 0.75 * s])
        assert target["boxes"][0] == pytest.approx(expected, abs=1e-3)
        seen_sizes.add(s)
    assert len(seen_sizes) > 3


def test_train_min_scale_narrows_the_sizes_and_at_one_fills_the_canvas():
    assert train_sizes(1008, 0.8) == list(range(832, 993, 32))
    assert train_sizes(RES, 1.0) == [RES]
    torch.manual_seed(0)
    pipeline = build_transforms(RES, train=True, min_scale=1.0)
    image = tv_tensors.Image(torch.full((3, 40, 80), 255, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[20.0, 10.0, 60.0, 30.0]], format="XYXY", canvas_size=(40, 80))
    for _ in range(5):
        out, target = pipeline(image, {"boxes": boxes, "labels": torch.tensor([1])})
        assert bool((out == 1).all()), "no padding: the image covers the whole canvas"
        assert target["boxes"][0] == pytest.approx(torch.tensor([0.25, 0.25, 0.75, 0.75]) * RES, abs=1e-3)


def test_train_min_scale_reaches_the_dataset_from_the_training_config(converted):
    from sam3lite_core.train.config import TrainConfig
    from sam3lite_core.train.loader import loader_settings

    def padded_rows_or_columns(train_min_scale: float) -> int:
        settings = loader_settings(TrainConfig.parse({"resolution": 98, "train_min_scale": train_min_scale}))
        ds = CocoQueryDataset(converted.train_json, converted.train_images_root, settings, train=True)
        torch.manual_seed(0)
        padding = [(ds[i].image[0] == -1) for i in range(len(ds))]
        return sum(int(p.all(0).sum()) + int(p.all(1).sum()) for p in padding)

    assert padded_rows_or_columns(1.0) == 0
    assert padded_rows_or_columns(480 / 1008) > 0


def test_optional_flip_mirrors_boxes():
    pipeline = build_transforms(RES, train=True, hflip_prob=1.0)
    image = tv_tensors.Image(torch.full((3, 50, 50), 200, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[0.0, 0.0, 10.0, 50.0]], format="XYXY", canvas_size=(50, 50))
    out, target = pipeline(image, {"boxes": boxes, "labels": torch.tensor([1])})
    content = (out[0] > -1).nonzero()
    left, right = int(content[:, 1].min()), int(content[:, 1].max()) + 1
    assert float(target["boxes"][0, 2]) == pytest.approx(right, abs=1e-3)
    assert float(target["boxes"][0, 0]) == pytest.approx(right - (right - left) * 0.2, abs=1e-3)


def test_prompt_variants_max_objects_and_collate(tmp_path):
    label = "".join(f"0 {0.1 + 0.1 * k:.2f} 0.5 0.05 0.05\n" for k in range(5)) + "1 0.5 0.2 0.2 0.2\n"
    (tmp_path / "ds/train/images").mkdir(parents=True)
    root = write_files(
        tmp_path / "ds",
        {"labelmap.txt": "cat\ndog\nbird\n", "train/labels/a.txt": label, "train/labels/b.txt": "2 0.5 0.5 0.5 0.5\n"},
    )
    for stem in ("a", "b"):
        Image.new("RGB", (120, 80), (90, 90, 90)).save(root / f"train/images/{stem}.jpg")
    result = convert_dataset(root, tmp_path / "cache", ConvertSettings(val_fraction=0.0))
    settings = LoaderSettings(
        resolution=64, max_objects_per_query=4, prompt_variants={"dog": "dog, puppy", "3": ["bird"]}
    )
    train = CocoQueryDataset(result.train_json, result.train_images_root, settings, train=True)
    evaluation = CocoQueryDataset(result.train_json, result.train_images_root, settings, train=False)
    torch.manual_seed(0)
    prompts = {q.prompt for _ in range(30) for q in train[0].queries if q.category_id == 2}
    assert prompts == {"dog", "puppy"}
    assert {q.category_id for q in evaluation[0].queries} == {2, 3}, "the 5-cat query exceeds 4 objects: dropped"
    assert [q.prompt for q in evaluation[0].queries] == ["dog", "bird"]

    batch = collate([evaluation[0], evaluation[1]])
    assert isinstance(batch, Batch)
    q = batch.num_queries
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.img_ids.tolist() == [0] * len(evaluation[0].queries) + [1] * len(evaluation[1].queries)
    assert batch.prompts == ["dog", "bird", "cat"] and batch.query_prompts[:2] == ["dog", "bird"]
    assert batch.prompt_ids.dtype == torch.long and batch.prompt_ids.shape == (q,)
    assert batch.target_boxes.shape == (q, int(batch.num_boxes.max()), 4) and batch.num_boxes.dtype == torch.long
    for row in range(q):
        n = int(batch.num_boxes[row])
        assert bool((batch.target_boxes[row, n:] == 0).all()) and bool((batch.target_boxes[row, :n, 2:] > 0).all())
    assert batch.image_ids == [evaluation[0].image_id] * 2 + [evaluation[1].image_id] * 3
    assert batch.category_ids == [2, 3, 1, 2, 3]
    assert batch.orig_sizes.tolist() == [[80, 120]] * q
    assert batch.box_prompts is None
    loader = torch.utils.data.DataLoader(evaluation, batch_size=2, collate_fn=collate)
    assert next(iter(loader)).images.shape == (2, 3, 64, 64)


def test_exif_orientation_is_applied_to_sizes_and_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (60, 20), (10, 200, 10)).save(buf, "JPEG", exif=exif)
    assert inspect_image(buf.getvalue()) == (20, 60, "")
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buf.getvalue())
    assert decode_rgb(str(path)).shape[1::-1] == (20, 60)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(
    "fmt, options",
    [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})],
)
def test_header_sizes_match_pil_upright(tmp_path, fmt, options, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    extra = {"exif": exif} if fmt in ("JPEG", "WEBP", "TIFF") else {}
    Image.new("RGB", (37, 21), (200, 10, 10)).save(buf, fmt, **options, **extra)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
    assert inspect_image(buf.getvalue()) == (*upright.size, "")
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    assert decode_rgb(str(path)).shape[1::-1] == upright.size
