"""Datasets: staging and validation, content signature, cached COCO conversion, and the training data path.

    scan_dataset(root, settings=None, *, cache_dir=None) -> ScanReport
    dataset_signature(root, *, cache_dir=None) -> str
    stat_fingerprint(root) -> str
    convert_dataset(root, cache_dir, settings=None) -> ConvertResult
    write_synth(out_dir, images=200, seed=0) -> SynthSummary
    CocoQueryDataset(coco_json, images_root, LoaderSettings, train=...)[i] -> Sample
    collate(list[Sample]) -> Batch
    BalancedSampler(image_categories, BalanceSettings, batch_size=..., ...)

The torch-based names (the last three and their settings) are imported on first use, so scanning, signing and
converting, which the CLI and the Dagster sensors run often, do not pay for importing torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sam3lite_core.data.convert import Category, ConvertResult, ConvertSettings, SplitCounts, convert_dataset
from sam3lite_core.data.report import DatasetError, Problem, ScanCounts, ScanReport
from sam3lite_core.data.scan import ScanSettings, scan_dataset
from sam3lite_core.data.signature import dataset_signature, stat_fingerprint
from sam3lite_core.data.synth import CLASSES as SYNTH_CLASSES
from sam3lite_core.data.synth import SynthSummary, write_synth

if TYPE_CHECKING:
    from sam3lite_core.data.collator import collate
    from sam3lite_core.data.dataset import CocoQueryDataset, LoaderSettings, Query, Sample
    from sam3lite_core.data.sampler import BalancedSampler, BalanceSettings, image_weights

_LAZY = {
    "collate": "sam3lite_core.data.collator",
    "CocoQueryDataset": "sam3lite_core.data.dataset",
    "LoaderSettings": "sam3lite_core.data.dataset",
    "Query": "sam3lite_core.data.dataset",
    "Sample": "sam3lite_core.data.dataset",
    "BalancedSampler": "sam3lite_core.data.sampler",
    "BalanceSettings": "sam3lite_core.data.sampler",
    "image_weights": "sam3lite_core.data.sampler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SYNTH_CLASSES",
    "BalanceSettings",
    "BalancedSampler",
    "Category",
    "CocoQueryDataset",
    "ConvertResult",
    "ConvertSettings",
    "DatasetError",
    "LoaderSettings",
    "Problem",
    "Query",
    "Sample",
    "ScanCounts",
    "ScanReport",
    "ScanSettings",
    "SplitCounts",
    "SynthSummary",
    "collate",
    "convert_dataset",
    "dataset_signature",
    "image_weights",
    "scan_dataset",
    "stat_fingerprint",
    "write_synth",
]
