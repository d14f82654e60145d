"""The upstream `sam3==0.1.4` package, importable on a CPU-only machine, as a reference for parity tests.

Only tests and benchmarks import this module; the product never imports `sam3`.

Upstream needs three patches to build without CUDA (reference/sam3_facts.md section 0):
  1. `PositionEmbeddingSine(precompute_resolution=...)` fills its cache on "cuda" in `__init__`; we force
     `None`. The precomputed sizes (1008 // {4, 8, 16, 32}) never match the stride-14 maps, so nothing changes.
  2. `TransformerDecoder._get_coords(..., device="cuda")` is called in `__init__`; we build the coordinates
     on the CPU instead.
  3. `geometry_encoders._encode_boxes` calls `Tensor.pin_memory()` on every forward; without CUDA it raises,
     so it becomes the identity.
The patches are applied once, idempotently, and only on a machine without CUDA.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import Any

import torch

import bpe

REQUIRE_ENV = "SAM3LITE_REQUIRE_VENDOR"


class VendorUnavailable(RuntimeError):
    """The vendor extra is not installed (or does not import)."""


def vendor_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0", "false", "False")


@functools.lru_cache(maxsize=1)
def import_vendor() -> ModuleType:
    """Import `sam3` with the CPU patches applied; raises VendorUnavailable when it cannot."""
    try:
        sam3 = importlib.import_module("sam3")
        position_encoding = importlib.import_module("sam3.model.position_encoding")
        decoder = importlib.import_module("sam3.model.decoder")
    except Exception as exc:  # ImportError, or a broken transitive import
        raise VendorUnavailable(f"cannot import the vendor package sam3==0.1.4: {exc!r}") from exc
    if not torch.cuda.is_available():
        _patch_for_cpu(position_encoding, decoder)
    return sam3


def _patch_for_cpu(position_encoding: ModuleType, decoder: ModuleType) -> None:
    sine = position_encoding.PositionEmbeddingSine
    if not getattr(sine.__init__, "_sam3lite_patched", False):
        original_init = sine.__init__

        @functools.wraps(original_init)
        def init_without_precompute(self, *args: Any, **kwargs: Any) -> None:
            kwargs["precompute_resolution"] = None
            if len(args) >= 5:  # precompute_resolution passed positionally
                args = (*args[:4], None, *args[5:])
            original_init(self, *args, **kwargs)

        init_without_precompute._sam3lite_patched = True  # type: ignore[attr-defined]
        sine.__init__ = init_without_precompute

    def get_coords_on_cpu(H: int, W: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        coords_h = torch.arange(0, H, dtype=torch.float32) / H
        coords_w = torch.arange(0, W, dtype=torch.float32) / W
        return coords_h, coords_w

    decoder.TransformerDecoder._get_coords = staticmethod(get_coords_on_cpu)
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self  # type: ignore[method-assign]


def vendor_tokenizer():
    """The upstream `SimpleTokenizer` over our shipped (byte-identical) vocabulary."""
    import_vendor()
    tokenizer_ve = importlib.import_module("sam3.model.tokenizer_ve")
    return tokenizer_ve.SimpleTokenizer(bpe_path=str(bpe.vocab_path()))


def build_vendor_image_model(eval_mode: bool = True, **kwargs: Any) -> torch.nn.Module:
    """The full-size upstream box-only image model on CPU, random init (4 GiB; slow tests only)."""
    import_vendor()
    builder = importlib.import_module("sam3.model_builder")
    return builder.build_sam3_image_model(
        bpe_path=str(bpe.vocab_path()),
        device="cpu",
        eval_mode=eval_mode,
        checkpoint_path=None,
        load_from_HF=False,
        enable_segmentation=False,
        **kwargs,
    )


def vendor_class(module: str, name: str) -> type:
    """A vendor class by module path, e.g. `vendor_class("sam3.model.vitdet", "ViT")`, with patches applied.

    Vendor classes take their sizes as constructor arguments, so parity tests build them at small dims."""
    import_vendor()
    return getattr(importlib.import_module(module), name)
