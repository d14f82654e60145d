"""Class-balanced sampling with the backend's formulas (contract 4), DDP-aware, with two deliberate fixes.

freq[c] = number of annotations of category c; an image weighs w = sum over its distinct categories of f(freq[c]):
    inv_sqrt, inv_pow, clipped_inv   f = (1 / max(1, freq)) ** power                (power 0.5)
    effective_num                    f = (1 - beta) / max(1e-8, 1 - beta ** max(1, freq))   (beta 0.99)
    focal                            f = (max(freq, 1) / max_freq) ** (-gamma)       (gamma 0.5)
    log_inv                          f = 1 / max(1e-8, ln(1 + max(1, freq)))
then w = max(w, 1e-8); clipped_inv with clip > 1 raises every weight to at least max(w) / clip; sum(w) = 1.

Fixes over the backend: (1) an image without annotations weighs `background_weight` times the mean weight of
the annotated images instead of 1e-8, so negatives keep being seen; (2) `target_epoch_size` (batches per epoch)
draws a fresh sample every epoch instead of training one fixed subset of the data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from sam3lite_core.distributed import rank_and_world

Strategy = Literal["none", "inv_sqrt", "inv_pow", "clipped_inv", "effective_num", "focal", "log_inv"]
_EPS = 1e-8


class BalanceSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = "none"
    power: float = Field(default=0.5, ge=0.0)
    clip: float = Field(default=10.0, gt=0.0)
    beta: float = Field(default=0.99, gt=0.0, lt=1.0)
    gamma: float = Field(default=0.5, ge=0.0)
    background_weight: float = Field(
        default=1.0, gt=0.0, description="weight of an image without annotations, times the mean annotated weight"
    )
    target_epoch_size: int | None = Field(default=None, ge=1, description="batches per epoch per rank; None = one pass")
    seed: int = 0


def _per_class(freq: int, max_freq: int, s: BalanceSettings) -> float:
    if s.strategy == "effective_num":
        return (1 - s.beta) / max(_EPS, 1 - s.beta ** max(1, freq))
    if s.strategy == "focal":
        return (max(freq, 1) / max_freq) ** (-s.gamma)
    if s.strategy == "log_inv":
        return 1 / max(_EPS, math.log(1 + max(1, freq)))
    return (1 / max(1, freq)) ** s.power


def image_weights(
    image_categories: Sequence[Sequence[int]], settings: BalanceSettings, category_ids: Sequence[int] = ()
) -> tuple[torch.Tensor, str]:
    """Sampling weights [N] (sum 1) for images given the category id of each of their annotations, and the
    `[sam3-balance] ...` summary line. `category_ids` lists categories that may have no annotation at all."""
    freq = Counter({c: 0 for c in category_ids})
    freq.update(c for cats in image_categories for c in cats)
    n = len(image_categories)
    if settings.strategy == "none":
        weights = torch.full((n,), 1.0 / max(n, 1), dtype=torch.float64)
    else:
        max_freq = max(max(freq.values(), default=1), 1)
        f = {c: _per_class(k, max_freq, settings) for c, k in freq.items()}
        raw = [sum(f[c] for c in set(cats)) for cats in image_categories]
        annotated = [w for w, cats in zip(raw, image_categories) if cats]
        background = settings.background_weight * (sum(annotated) / len(annotated) if annotated else 1.0)
        weights = torch.tensor(
            [max(w, _EPS) if cats else background for w, cats in zip(raw, image_categories)], dtype=torch.float64
        )
        if settings.strategy == "clipped_inv" and settings.clip > 1 and n:
            weights = weights.clamp(min=float(weights.max()) / settings.clip)
        weights = weights / weights.sum()
    by_count = sorted(freq.items(), key=lambda kv: (kv[1], kv[0]))
    s = settings
    summary = (
        f"[sam3-balance] strategy={s.strategy} power={s.power} clip={s.clip} beta={s.beta} gamma={s.gamma} "
        f"classes={len(freq)} images={n} min_w={float(weights.min()) if n else 0:.2e} "
        f"avg_w={float(weights.mean()) if n else 0:.2e} max_w={float(weights.max()) if n else 0:.2e} "
        f"smallest={by_count[:5]} largest={by_count[::-1][:5]}"
    )
    return weights, summary


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Dataset indices for one rank and epoch: a draw seeded by (seed + epoch), strided by rank, so the ranks
    see disjoint parts of one global draw. Call `set_epoch(epoch)` before each epoch.

    Length per rank: `target_epoch_size * batch_size` when set, else ceil(N / world_size). Weighted strategies
    draw with replacement (torch.multinomial, as the backend); "none" walks fresh random permutations, so
    each image is seen once per pass.
    """

    def __init__(
        self,
        image_categories: Sequence[Sequence[int]],
        settings: BalanceSettings | None = None,
        *,
        batch_size: int = 1,
        category_ids: Sequence[int] = (),
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.settings = settings or BalanceSettings()
        default_rank, default_world = rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.num_images = len(image_categories)
        self.weights, self.summary = image_weights(image_categories, self.settings, category_ids)
        target = self.settings.target_epoch_size
        self.num_samples = target * batch_size if target else math.ceil(self.num_images / self.world_size)
        self.epoch = 0
        if self.rank == 0 and self.settings.strategy != "none":
            print(self.summary, flush=True)  # once per run; the backend copies this line into balance_info

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.settings.seed + self.epoch)
        total = self.num_samples * self.world_size
        if self.settings.strategy == "none":
            passes = math.ceil(total / max(self.num_images, 1))
            draws = torch.cat([torch.randperm(self.num_images, generator=generator) for _ in range(passes)])[:total]
        else:
            draws = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.world_size].tolist())
