"""Windowed text prompts as the backend answers them: its per-window limit rule and its `windowed_*`
diagnostics in `warnings` (the backend's `tests/test_sam3_text_windowed_prompt.py` says which; the UI's toast
parses them as `key:value`).

A window side that would cut the image into more than `tiling.MAX_WINDOWS` windows (the UI allows a 1 px
window) is raised until the windows fit, and `windowed_window_size_clamped:<asked>-><used>` says so.
"""

from __future__ import annotations

import numpy as np
import torch

from sam3lite_core.predictor import Predictor, WindowedAnswer
from sam3lite_core.serve.schemas import UI_WINDOW_SIZE, TextRequest
from sam3lite_core.tiling import MIN_WINDOW, fit_windows

PER_WINDOW_FLOOR = 50  # the backend searches each window this broadly, whatever the final cap


def window_limit_pair(max_results: int | None) -> tuple[int | None, int | None]:
    """(per-window limit, final limit) for a request's `max_results`: None or <= 0 is unlimited on both;
    otherwise each window keeps at least PER_WINDOW_FLOOR, e.g. 4 -> (50, 4), 80 -> (80, 80)."""
    if max_results is None or max_results <= 0:
        return None, None
    return max(max_results, PER_WINDOW_FLOOR), max_results


def coverage_warnings(height: int, width: int, windows: torch.Tensor) -> list[str]:
    """What the windows long [T, 4] (x0, y0, x1, y1 px) cover of a height x width image."""
    covered = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in windows.tolist():
        covered[max(0, y0) : y1, max(0, x0) : x1] = True
    x0, y0 = windows[:, 0].min().item(), windows[:, 1].min().item()
    x1, y1 = windows[:, 2].max().item(), windows[:, 3].max().item()
    uncovered = int(covered.size - covered.sum())
    warnings = [
        f"windowed_image_size:{width}x{height}",
        f"windowed_coverage_bounds:{x0},{y0},{x1},{y1}",
        f"windowed_coverage_fraction:{covered.mean() if covered.size else 1.0:.4f}",
        f"windowed_uncovered_pixels:{uncovered}",
    ]
    return warnings + (["windowed_incomplete_coverage"] if uncovered else [])


def answer_windowed(
    predictor: Predictor, pixels: np.ndarray, texts: list[str], body: TextRequest
) -> list[tuple[WindowedAnswer, list[str]]]:
    """Per text prompt: its windowed answer (limits by `window_limit_pair`) and its `windowed_*` warnings but
    `windowed_final_detections`, which the caller adds once its own filters ran."""
    height, width = pixels.shape[:2]
    asked = body.tile_settings(MIN_WINDOW)
    assert asked is not None, "answer_windowed is only called for windowed requests"
    tile = fit_windows(height, width, asked)
    per_window, final = window_limit_pair(body.max_results)
    answers = predictor.predict_windowed(
        pixels, texts, tile, threshold=body.threshold, per_window=per_window, max_detections=final
    )
    requested = body.window_size or UI_WINDOW_SIZE
    clamped = [f"windowed_window_size_clamped:{requested}->{tile.size}"] if tile.size != requested else []
    limits = [f"windowed_per_window_limit:{per_window}", f"windowed_final_limit:{final}"] if final else []
    return [
        (
            found,
            coverage_warnings(height, width, found.windows)
            + clamped
            + [
                f"windowed_tiles:{len(found.windows)}",
                *limits,
                f"windowed_raw_detections:{found.raw}",
                f"windowed_fused_detections:{found.fused}",
            ],
        )
        for found in answers
    ]
