"""Images of inference requests: base64 decoding with a size limit, and decoded pixels kept by image token.

A client sends an image once as `image_base64` and gets its `image_token` (md5 of the RGB pixel bytes, as the
backend computes it); later prompts on the same image send only the token and skip the upload and the decode.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections import OrderedDict

import numpy as np

from sam3lite_core.cache_budget import CacheBudget
from sam3lite_core.data.decode import ImageDecodeError, ImageTooLarge, decode_rgb
from sam3lite_core.predictor import image_token
from sam3lite_core.serve.errors import ServiceError

DEFAULT_MAX_UPLOAD_BYTES = 100 * 2**20  # the backend's IMAGE_MAX_BYTES


class ImageError(ServiceError):
    """An image the service cannot use; `status` is the HTTP answer (400, 404 unknown token, 413 too large)."""


def decode_base64_image(data: str, max_bytes: int) -> np.ndarray:
    """base64 (optionally a `data:image/...;base64,` URL) of a PNG/JPEG/... -> uint8 [H, W, 3] RGB."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) * 3 // 4 > max_bytes:
        raise ImageError(f"image_base64 is over the {max_bytes}-byte upload limit of this service", 413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"image_base64 is not valid base64 ({exc})") from exc
    try:
        return decode_rgb(raw, name="image_base64")  # upright, every mode, the decode budget (data/decode.py)
    except ImageTooLarge as exc:
        raise ImageError(str(exc), 413) from exc
    except ImageDecodeError as exc:
        raise ImageError(f"image_base64 is not a decodable image ({exc}); send a PNG or JPEG file") from exc


class ImageCache:
    """Decoded images by token, least recently used evicted while the caches sharing `budget` hold more bytes than
    it allows (the newest image is always kept); thread-safe."""

    def __init__(self, budget: CacheBudget | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        self.budget = budget or CacheBudget()
        self.max_upload_bytes = max_upload_bytes
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, image_base64: str | None, token: str | None) -> tuple[np.ndarray, str]:
        """(pixels uint8 [H, W, 3], token) of a request's image: decoded and cached, or found by token."""
        if image_base64:
            pixels = decode_base64_image(image_base64, self.max_upload_bytes)
            token = image_token(pixels)
            with self._lock:
                if token not in self._images:
                    self._images[token] = pixels
                    self.budget.charge(pixels.nbytes)
                self._images.move_to_end(token)
                while len(self._images) > 1 and self.budget.over:
                    self.budget.release(self._images.popitem(last=False)[1].nbytes)
            return pixels, token
        with self._lock:
            pixels = self._images.get(token or "")
            if pixels is not None:
                self._images.move_to_end(token)  # type: ignore[arg-type]
        if pixels is None:
            raise ImageError(f"image_token {token!r} is unknown here (or expired); send the image as image_base64", 404)
        return pixels, token  # type: ignore[return-value]
