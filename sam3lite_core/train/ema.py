"""Exponential moving average of the model weights (as Ultralytics' ModelEMA and RF-DETR's `use_ema`).

ema = d * ema + (1 - d) * weights after every optimiser step, with d = decay * (1 - exp(-updates / tau)): the
warm-up keeps the average from being dominated by the random initial weights in short fine-tunes.
Validation, best.ckpt selection and the export use the average when it is enabled.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from sam3lite_core.distributed import unwrap
from sam3lite_core.weights import load_checkpoint, state_dict_for_export


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, tau: float = 200.0) -> None:
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1 - self.current_decay()
        source = unwrap(model).state_dict()
        averaged, current = [], []
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                averaged.append(value)
                current.append(source[name].detach())
            else:  # integer and complex buffers (RoPE tables) follow the model
                value.copy_(source[name])
        torch._foreach_lerp_(averaged, current, weight)

    def state_dict(self) -> dict[str, Any]:
        """Plain, weights_only-loadable state: the averaged weights in the checkpoint layout and the count."""
        return {"updates": self.updates, "model": state_dict_for_export(self.module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_checkpoint(self.module, state["model"], min_fraction=1.0)
        self.updates = int(state["updates"])
