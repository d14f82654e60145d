"""Inverse-square-root schedule: the numbers of reference/sam3_facts.md section 4, the param-group applier,
and equality with upstream's InverseSquareRootParamScheduler at every step of a run."""

from __future__ import annotations

import math

import pytest
import torch
import vendor_harness

from sam3lite_core.train.schedule import InverseSqrtSchedule, ScheduleSettings, lr_factor

TOTAL = 1000


def test_reference_numbers():
    assert lr_factor(0, TOTAL) == 0.0
    assert lr_factor(10, TOTAL) == pytest.approx(0.5)  # linear warmup
    assert lr_factor(20, TOTAL) == 1.0  # peak at the end of the warmup
    assert max(lr_factor(step, TOTAL) for step in range(TOTAL)) == 1.0
    assert lr_factor(100, TOTAL) == pytest.approx(1 / math.sqrt(5))  # 0.447
    assert lr_factor(100, TOTAL) == pytest.approx(0.447, abs=5e-4)


def test_cooldown_is_linear_to_zero():
    before = lr_factor(TOTAL - 20, TOTAL)
    assert lr_factor(TOTAL - 10, TOTAL) == pytest.approx(before * 0.5 * math.sqrt(980 / 990))
    assert lr_factor(TOTAL - 1, TOTAL) == pytest.approx(before / 20 * math.sqrt(980 / 999))
    assert lr_factor(TOTAL, TOTAL) == 0.0
    assert lr_factor(TOTAL + 5, TOTAL) == 0.0  # never negative past the end


def test_no_warmup_no_cooldown():
    config = ScheduleSettings(warmup_steps=0, timescale=10, cooldown_steps=0)
    assert lr_factor(0, TOTAL, config) == 1.0
    assert lr_factor(30, TOTAL, config) == pytest.approx(1 / math.sqrt(4.0))


def test_schedule_sets_each_group_from_its_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-5}])
    schedule = InverseSqrtSchedule(optimizer, total_steps=TOTAL)
    assert schedule.step(0) == 0.0 and optimizer.param_groups[0]["lr"] == 0.0
    schedule.step(100)
    expected = [1e-3 / math.sqrt(5), 1e-5 / math.sqrt(5)]
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(expected)
    # The base lr lives in the optimizer state, so a fresh schedule over a restored optimizer continues.
    restored = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-5}])
    restored.load_state_dict(optimizer.state_dict())
    InverseSqrtSchedule(restored, total_steps=TOTAL).step(20)
    assert [group["lr"] for group in restored.param_groups] == pytest.approx([1e-3, 1e-5])
    with pytest.raises(ValueError, match="positive number"):
        InverseSqrtSchedule(optimizer, total_steps=0)


@pytest.mark.parametrize("total", [1000, 137])
def test_equals_vendor_over_a_run(vendor, total):
    scheduler_cls = vendor_harness.vendor_class("sam3.train.optim.schedulers", "InverseSquareRootParamScheduler")
    theirs = scheduler_cls(base_lr=8e-5, warmup_steps=20, cooldown_steps=20, timescale=20)
    # Upstream's trainer passes step = global iteration and where = step / total steps.
    diffs = [abs(8e-5 * lr_factor(step, total) - theirs(step=step, where=step / total)) for step in range(total)]
    assert max(diffs) < 1e-15
