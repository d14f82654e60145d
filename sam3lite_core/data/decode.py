"""The one image decoder: conversion sizes, training, evaluation, prediction and the service see the same pixels.

- Orientation: the EXIF orientation of JPEG, MPO and WebP files is applied (images.py `orientation`, the rule
  `inspect_image` uses for the sizes in the COCO JSON), so the pixels are the image as browsers and annotation
  tools show it, whatever path decodes it.
- Modes: every PIL mode becomes uint8 RGB. 16-bit (and 32-bit integer) grayscale is scaled by the 16-bit range
  (value / 257, rounded) instead of being clipped to white; alpha (LA, RGBA, PA, palette transparency) is
  dropped, keeping the stored colours (what training always saw); CMYK, 1-bit, palette, YCbCr, LAB, HSV and
  float images convert as PIL converts them.
- Budget: the pixel count is read from the header and checked against `max_pixels` before any pixel is decoded
  (a 1.8 KB PNG may declare 60000 x 60000), the same budget in every path: `DEFAULT_MAX_PIXELS` unless the
  environment variable `SAM3LITE_MAX_PIXELS` or a `max_pixels` setting says otherwise. PIL's own guard (over
  179 MP) still refuses formats other than JPEG and PNG above it, whatever the budget.

This module is free of torch (the scan and the conversion import it).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from sam3lite_core.data.images import UPRIGHT, declared_size, orientation

DEFAULT_MAX_PIXELS = 100_000_000  # 10000 x 10000: room for windowed inference on large aerial images
MAX_PIXELS_ENV = "SAM3LITE_MAX_PIXELS"
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_PALETTE = frozenset({"P", "PA"})
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; the message names it, says why and what to do."""


class ImageTooLarge(ImageDecodeError):
    """An image whose header declares more pixels than the decode budget."""


def default_max_pixels() -> int:
    """The decode budget: `SAM3LITE_MAX_PIXELS` when set, else DEFAULT_MAX_PIXELS. Raises ValueError for a value
    that is not a positive whole number."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive whole number of pixels, e.g. 100000000")
    return value


def over_budget(width: int, height: int, max_pixels: int) -> str:
    """Why an image of width x height is refused under `max_pixels`, and what to do; "" when it fits."""
    if width * height <= max_pixels:
        return ""
    return (
        f"{width} x {height} = {width * height / 1e6:.1f} MP is over the decode budget of "
        f"{max_pixels / 1e6:.1f} MP; downscale the image or raise the budget (--max-pixels, {MAX_PIXELS_ENV})"
    )


def _open(source: str | os.PathLike | bytes, name: str, max_pixels: int) -> Image.Image:
    """The opened (not yet decoded) image, checked against the budget from its header: read by us for JPEG and
    PNG, by PIL for other formats (PIL's own guard, 179 MP, also stops what is over it)."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{name}: the image file does not exist") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"{name}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageDecodeError(f"{name}: the image cannot be read ({exc.strerror})") from None
    size = declared_size(data)
    if size is not None and over_budget(*size, max_pixels):
        raise ImageTooLarge(f"{name}: {over_budget(*size, max_pixels)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our budget decides, not PIL's warning
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: over the decode budget ({exc}); downscale the image") from None
    # PIL raises many types on hostile bytes (OSError, SyntaxError, ValueError, ...): any means unusable.
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(f"{name}: the image cannot be decoded ({exc}); is it a PNG/JPEG file?") from None
    if over_budget(*im.size, max_pixels):
        im.close()
        raise ImageTooLarge(f"{name}: {over_budget(*im.size, max_pixels)}")
    return im


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] RGB of a PIL image of any mode (the rules in the module docstring; no orientation)."""
    if im.mode in _SIXTEEN_BIT:
        gray = np.asarray(im).astype(np.int64).clip(0, 65535)
        gray = ((gray + 128) // 257).astype(np.uint8)  # 16-bit range onto 8 bits, rounded
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in _PALETTE:
        im = im.convert("RGBA")  # palette transparency resolved through RGBA (PIL warns on P -> RGB)
    if im.mode in _PREMULTIPLIED:  # PIL converts these to RGB only through their straight-alpha form
        im = im.convert(_PREMULTIPLIED[im.mode])
    return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def decode_rgb(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """A path or encoded bytes -> uint8 [H, W, 3] RGB, upright. `max_pixels` (default `default_max_pixels()`)
    is checked from the header first. With `min_side`, a JPEG may decode at a reduced DCT scale that keeps both
    sides at least `min_side` (several times faster for large photos; for the resize that follows anyway).
    Raises ImageDecodeError (ImageTooLarge over the budget) naming `name` (default: the path, or "image")."""
    name = name or (str(source) if not isinstance(source, bytes) else "image")
    im = _open(source, name, default_max_pixels() if max_pixels is None else max_pixels)
    try:
        with im:
            turn = UPRIGHT.get(orientation(im))
            if min_side is not None and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))
            im.load()
            pixels = pil_to_rgb(im)
    except Exception as exc:  # noqa: BLE001  (see _open)
        raise ImageDecodeError(f"{name}: the image cannot be decoded ({exc}); is the file complete?") from None
    return pixels if turn is None else np.array(Image.fromarray(pixels).transpose(turn))
