"""The one image decoder (data/decode.py): every PIL mode to the same RGB in every path, the EXIF orientation
applied everywhere (an EXIF-rotated image and the same pixels physically rotated give the same boxes through
`predict` and evaluation), and the decode budget read from the header before any pixel is decoded."""

from __future__ import annotations

import base64
import io
import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from data_builders import bomb_png

from sam3lite_core.cli import main
from sam3lite_core.data.dataset import CocoQueryDataset, LoaderSettings
from sam3lite_core.data.decode import MAX_PIXELS_ENV, ImageDecodeError, ImageTooLarge, decode_rgb, default_max_pixels
from sam3lite_core.data.images import inspect_image
from sam3lite_core.eval.evaluate import evaluate
from sam3lite_core.inference import preprocess_image
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.predictor import image_token, load_rgb
from sam3lite_core.serve.images import ImageError, decode_base64_image
from sam3lite_core.weights import save_checkpoint

RNG = np.random.default_rng(7)
UPRIGHT = RNG.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)  # [H, W, 3], what the user sees


def encoded(image: PIL.Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = np.array([[0, 257, 32896], [65535, 1000, 128]], dtype=np.uint16)
    pixels = decode_rgb(encoded(PIL.Image.fromarray(grey), "PNG"))
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 3, 3)
    assert pixels[..., 0].tolist() == [[0, 1, 128], [255, 4, 0]]  # value / 257, rounded
    assert (pixels[..., 0] == pixels[..., 2]).all()
    image = PIL.Image.open(io.BytesIO(encoded(PIL.Image.fromarray(grey), "PNG")))
    assert np.array_equal(load_rgb(image), pixels)  # a PIL image handed to the predictor: the same rule


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "PA", "CMYK", "1", "L"])
def test_every_mode_decodes_to_rgb_like_its_colour_channels(mode):
    rgba = np.concatenate([UPRIGHT, RNG.integers(0, 255, size=(48, 64, 1), dtype=np.uint8)], axis=2)
    source = PIL.Image.fromarray(rgba, "RGBA").convert(mode)
    options = {"transparency": 0} if mode == "P" else {}
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "PA" else "PNG"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette with transparency" warning either
        pixels = decode_rgb(encoded(source, fmt, **options))
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8 and pixels.flags.writeable
    if mode in ("RGBA", "LA", "P", "L", "1"):  # alpha dropped, the stored colours kept (lossless formats)
        colours = source.convert("RGBA").convert("RGB") if mode != "1" else source.convert("RGB")
        assert np.array_equal(pixels, np.array(colours))
    tensor, _ = preprocess_image(source, 32)  # the predictor's PIL path reads the mode the same way
    assert torch.equal(tensor, preprocess_image(np.array(load_rgb(source)), 32)[0])


def rotated_pair(tmp_path):
    """The same upright pixels as a lossless WebP stored sideways with EXIF orientation 6, and as a PNG stored
    upright."""
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise: show it turned clockwise
    stored = PIL.Image.fromarray(UPRIGHT).transpose(PIL.Image.Transpose.ROTATE_90)
    sideways, upright = tmp_path / "sideways.webp", tmp_path / "upright.png"
    sideways.write_bytes(encoded(stored, "WEBP", lossless=True, exif=exif))
    upright.write_bytes(encoded(PIL.Image.fromarray(UPRIGHT), "PNG"))
    return sideways, upright


def test_exif_orientation_everywhere(tmp_path):
    sideways, upright = rotated_pair(tmp_path)
    assert inspect_image(sideways.read_bytes())[:2] == (64, 48)  # the COCO JSON's size: displayed
    assert np.array_equal(decode_rgb(sideways), UPRIGHT)
    assert image_token(load_rgb(sideways)) == image_token(load_rgb(upright))  # the token of what the model sees
    served = decode_base64_image(base64.b64encode(sideways.read_bytes()).decode(), 2**20)
    assert np.array_equal(served, UPRIGHT)
    # A JPEG (lossy, so close rather than equal) is upright too.
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    stored = PIL.Image.fromarray(UPRIGHT).transpose(PIL.Image.Transpose.ROTATE_90)
    jpeg = decode_rgb(encoded(stored, "JPEG", quality=100, subsampling=0, exif=exif))
    assert jpeg.shape == UPRIGHT.shape and np.abs(jpeg.astype(int) - UPRIGHT).mean() < 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode_ckpt") / "tiny.ckpt"
    torch.manual_seed(0)
    save_checkpoint(path, build_model("tiny"))
    return path


def test_rotated_and_upright_give_the_same_boxes_in_predict_and_eval(tmp_path, checkpoint, capsys):
    sideways, upright = rotated_pair(tmp_path)
    out = tmp_path / "out.json"
    status = main(
        [
            "predict",
            str(sideways),
            str(upright),
            "--prompt",
            "thing",
            "--checkpoint",
            str(checkpoint),
            "--threshold",
            "0",
            "--max-detections",
            "3",
            "--json",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, capsys.readouterr().err
    first, second = json.loads(out.read_text())
    assert first["detections"] and first["detections"] == second["detections"]
    for name in (sideways.name, upright.name):
        coco = {
            "images": [{"id": 1, "file_name": name, "width": 64, "height": 48}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 4, 30, 20], "area": 600, "iscrowd": 0}
            ],
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(coco))
    samples = [
        CocoQueryDataset(tmp_path / f"{n}.json", tmp_path, LoaderSettings(resolution=56), train=False)[0]
        for n in (sideways.name, upright.name)
    ]
    assert torch.equal(samples[0].image, samples[1].image)
    results = [evaluate(checkpoint, tmp_path / f"{n}.json", tmp_path).to_dict() for n in (sideways.name, upright.name)]
    assert results[0] == results[1]


def test_budget_is_read_from_the_header(monkeypatch, tmp_path):
    bomb = bomb_png(60000, 60000)
    assert len(bomb) < 2000
    with pytest.raises(ImageTooLarge, match=r"60000 x 60000 = 3600.0 MP is over the decode budget of 100.0 MP"):
        decode_rgb(bomb)
    small = encoded(PIL.Image.fromarray(UPRIGHT), "PNG")
    with pytest.raises(ImageTooLarge, match="over the decode budget of 0.0 MP"):
        decode_rgb(small, max_pixels=64 * 47)
    assert decode_rgb(small, max_pixels=64 * 48).shape == (48, 64, 3)
    with pytest.raises(ImageDecodeError, match="cannot be decoded"):
        decode_rgb(b"\x89PNG\r\n\x1a\n garbage")
    monkeypatch.setenv(MAX_PIXELS_ENV, "3000")
    assert default_max_pixels() == 3000
    with pytest.raises(ImageTooLarge):
        decode_rgb(small)
    with pytest.raises(ImageError) as refused:  # the service: 413, the same budget
        decode_base64_image(base64.b64encode(small).decode(), 2**20)
    assert refused.value.status == 413
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV}='lots': expected a positive whole number"):
        default_max_pixels()
