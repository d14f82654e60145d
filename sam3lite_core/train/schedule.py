"""Inverse-square-root learning rate with linear warmup and linear cooldown (upstream
`InverseSquareRootParamScheduler`, warmup 20, timescale 20, cooldown 20 in the roboflow fine-tune)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sam3lite_core.train.config import TrainConfig


@dataclass(frozen=True)
class ScheduleSettings:
    warmup_steps: int = 20
    timescale: int = 20
    cooldown_steps: int = 20


def schedule_settings(cfg: TrainConfig) -> ScheduleSettings:
    """The run's schedule: `scheduler_warmup`, `scheduler_timescale` and `scheduler_cooldown` in optimiser steps."""
    return ScheduleSettings(
        warmup_steps=cfg.scheduler_warmup, timescale=cfg.scheduler_timescale, cooldown_steps=cfg.scheduler_cooldown
    )


def lr_factor(step: int, total_steps: int, config: ScheduleSettings = ScheduleSettings()) -> float:
    """Multiplier of the base learning rate at optimiser step `step` of `total_steps`:

    1 / sqrt((step + timescale - warmup) / timescale) after the warmup (1 at its end, 0.447 at step 100 with
    warmup = timescale = 20), times min(1, step / warmup), times min(1, (total - step) / cooldown).
    So 0 at step 0, a peak of 1 at step `warmup`, and a linear fall to 0 over the last `cooldown` steps.

    Upstream derives the total from its epoch fraction (total = step / where, with total 1 at step 0); with a
    warmup the factor is 0 at step 0 either way, so the two agree on every step.
    """
    factor = 1.0
    if step > config.warmup_steps:
        factor /= math.sqrt((step + config.timescale - config.warmup_steps) / config.timescale)
    if config.warmup_steps:
        factor *= min(1.0, step / config.warmup_steps)
    if config.cooldown_steps:
        # Clamped at 0 so a step past the planned total never yields a negative learning rate.
        factor *= max(0.0, min(1.0, (total_steps - step) / config.cooldown_steps))
    return factor


class InverseSqrtSchedule:
    """Sets every param group's lr to its base lr times `lr_factor(step, total_steps)`.

    The base lr is kept in the group itself under "initial_lr" (torch's convention), so it travels with
    `optimizer.state_dict()` and a resumed run needs nothing but the step. Call `step(global_step)` after
    backward and before `optimizer.step()`, as upstream does.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, config: ScheduleSettings = ScheduleSettings()
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"the schedule needs a positive number of optimiser steps, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.config = config
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def step(self, step: int) -> float:
        """Apply the lr of optimiser step `step` (0-based) to all groups; returns the factor, for logging."""
        factor = lr_factor(step, self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor
