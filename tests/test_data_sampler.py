"""The class-balanced sampler: the backend's formulas and summary line, the two fixes (background weight,
per-epoch resampling) and DDP striding."""

from __future__ import annotations

import math
import re

import pytest
import torch

from sam3lite_core.data.sampler import BalancedSampler, BalanceSettings, image_weights

# Category id of every annotation, per image: freq = {1: 3, 2: 2, 3: 1}; image 4 has no annotation.
IMAGES = [[1, 1, 2], [2], [3], [1], []]


def _reference(strategy: str, s: BalanceSettings) -> list[float]:
    """Contract section 4, written out independently of the implementation."""
    freq = {1: 3, 2: 2, 3: 1}
    max_freq = max(freq.values())
    f = {
        "inv_sqrt": lambda k: (1 / max(1, k)) ** s.power,
        "inv_pow": lambda k: (1 / max(1, k)) ** s.power,
        "clipped_inv": lambda k: (1 / max(1, k)) ** s.power,
        "effective_num": lambda k: (1 - s.beta) / max(1e-8, 1 - s.beta ** max(1, k)),
        "focal": lambda k: (max(k, 1) / max_freq) ** (-s.gamma),
        "log_inv": lambda k: 1 / max(1e-8, math.log(1 + max(1, k))),
    }[strategy]
    w = [sum(f(freq[c]) for c in set(cats)) for cats in IMAGES[:4]]
    w.append(s.background_weight * sum(w) / len(w))  # fix 1: the background image keeps a real weight
    if strategy == "clipped_inv" and s.clip > 1:
        w = [max(x, max(w) / s.clip) for x in w]
    return [x / sum(w) for x in w]


@pytest.mark.parametrize("strategy", ["inv_sqrt", "inv_pow", "clipped_inv", "effective_num", "focal", "log_inv"])
@pytest.mark.parametrize(
    "overrides", [{}, {"power": 1.0, "clip": 1.5, "beta": 0.9, "gamma": 2.0, "background_weight": 0.25}]
)
def test_weights_follow_the_backend_formulas(strategy, overrides):
    settings = BalanceSettings(strategy=strategy, **overrides)
    weights, _ = image_weights(IMAGES, settings)
    assert weights.tolist() == pytest.approx(_reference(strategy, settings), rel=1e-9)
    assert float(weights.sum()) == pytest.approx(1.0)


def test_none_is_uniform_and_defaults_match_the_backend():
    s = BalanceSettings()
    assert (s.strategy, s.power, s.clip, s.beta, s.gamma) == ("none", 0.5, 10.0, 0.99, 0.5)
    weights, _ = image_weights(IMAGES, s)
    assert weights.tolist() == pytest.approx([0.2] * 5)
    with pytest.raises(ValueError):
        BalanceSettings(strategy="sqrt")


def test_summary_line_in_the_backend_format_printed_once_on_rank_0(capsys):
    settings = BalanceSettings(strategy="inv_sqrt")
    BalancedSampler(IMAGES, settings, category_ids=[1, 2, 3, 4], rank=0, world_size=2)
    BalancedSampler(IMAGES, settings, category_ids=[1, 2, 3, 4], rank=1, world_size=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    pattern = (
        r"\[sam3-balance\] strategy=inv_sqrt power=0\.5 clip=10\.0 beta=0\.99 gamma=0\.5 classes=4 images=5 "
        r"min_w=\d\.\d\de[-+]\d\d avg_w=\d\.\d\de[-+]\d\d max_w=\d\.\d\de[-+]\d\d "
        r"smallest=\[\(4, 0\), \(3, 1\), \(2, 2\), \(1, 3\)\] largest=\[\(1, 3\), \(2, 2\), \(3, 1\), \(4, 0\)\]$"
    )
    assert re.match(pattern, lines[0]), lines[0]


def test_ranks_split_one_global_draw_and_epochs_resample():
    settings = BalanceSettings(strategy="inv_sqrt", target_epoch_size=50, seed=3)
    ranks = [BalancedSampler(IMAGES, settings, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert all(len(s) == 100 for s in ranks)
    epoch0 = [list(s) for s in ranks]
    assert epoch0 == [list(s) for s in ranks], "same epoch, same draw"
    generator = torch.Generator().manual_seed(3)
    weights, _ = image_weights(IMAGES, settings)
    global_draw = torch.multinomial(weights, 200, replacement=True, generator=generator).tolist()
    assert epoch0[0] == global_draw[0::2] and epoch0[1] == global_draw[1::2]
    for s in ranks:
        s.set_epoch(1)
    assert [list(s) for s in ranks] != epoch0, "fix 2: every epoch draws a new sample"
    assert 4 in epoch0[0] + epoch0[1], "fix 1: the background image is drawn"


def test_none_walks_permutations_and_default_length_is_one_pass():
    sampler = BalancedSampler(IMAGES, BalanceSettings(), rank=0, world_size=1)
    assert len(sampler) == 5 and sorted(sampler) == [0, 1, 2, 3, 4]
    ddp = [BalancedSampler(IMAGES, BalanceSettings(), rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in ddp] == [3, 3] and set(list(ddp[0]) + list(ddp[1])) == {0, 1, 2, 3, 4}
    long = BalancedSampler(IMAGES, BalanceSettings(target_epoch_size=4), batch_size=3, rank=0, world_size=1)
    drawn = list(long)
    assert len(drawn) == 12 and sorted(drawn[:5]) == [0, 1, 2, 3, 4] and sorted(drawn[5:10]) == [0, 1, 2, 3, 4]
