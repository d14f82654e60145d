"""The upstream `sam3==0.1.4` package, importable on a CPU-only machine, as a reference for parity tests.

Only tests and benchmarks import this module; the product never imports `sam3`.

Upstream builds device state in `__init__` on a hard-coded "cuda" (reference/sam3_facts.md section 0), which
fails without CUDA and, on a GPU host, leaves caches on the GPU of a model the tests run on the CPU. Patches:
  1. `PositionEmbeddingSine(precompute_resolution=...)` fills its cache on "cuda" in `__init__`; we force
     `None`. The precomputed sizes (1008 // {4, 8, 16, 32}) never match the stride-14 maps, so nothing changes.
  2. `TransformerDecoder.__init__` builds its box-bias coordinates with `_get_coords(..., device="cuda")` into
     plain attributes that `.to(device)` does not move. They are built on the CPU, like every parameter (the
     forward's own calls pass a torch.device and are honoured), and its `_apply` (what `.to`, `.cuda` and
     `.cpu` call) moves them with the parameters.
  3. Without CUDA only: `Tensor.pin_memory()`, which `geometry_encoders._encode_boxes` calls on every forward,
     is the identity.
So a vendor model runs on whatever device it is moved to, on a CPU-only machine and on a GPU host alike.
The patches are applied once and idempotently (`patches_for` says which apply).
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
    chosen = patches_for(torch.cuda.is_available())
    _no_precompute(position_encoding)
    _coords_follow_the_module(decoder)
    if "pin_memory_identity" in chosen:
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    return sam3


def patches_for(cuda_available: bool) -> set[str]:
    """Which patches the vendor package gets: the device-following ones always, the pin_memory stand-in only
    without CUDA (with CUDA, pinning works and upstream's non-blocking copies rely on it)."""
    return {"no_precompute", "coords_follow_the_module"} | (set() if cuda_available else {"pin_memory_identity"})


def _no_precompute(position_encoding: ModuleType) -> None:
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


def _coords_follow_the_module(decoder: ModuleType) -> None:
    cls = decoder.TransformerDecoder
    if getattr(cls._apply, "_sam3lite_patched", False):
        return
    original_apply, original_get_coords = cls._apply, cls._get_coords

    def get_coords(H: int, W: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # Only __init__ passes the string "cuda"; the forward passes the boxes' torch.device.
        return original_get_coords(H, W, "cpu" if isinstance(device, str) and device == "cuda" else device)

    @functools.wraps(original_apply)
    def apply_with_coords(self, fn, *args: Any, **kwargs: Any):
        out = original_apply(self, fn, *args, **kwargs)
        if getattr(self, "compilable_cord_cache", None) is not None:
            self.compilable_cord_cache = tuple(fn(t) for t in self.compilable_cord_cache)
        if getattr(self, "coord_cache", None):
            self.coord_cache = {size: tuple(fn(t) for t in coords) for size, coords in self.coord_cache.items()}
        return out

    apply_with_coords._sam3lite_patched = True  # type: ignore[attr-defined]
    cls._apply = apply_with_coords
    cls._get_coords = staticmethod(get_coords)


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
