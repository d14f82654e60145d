"""The small multi-layer perceptron used all over the detector (box head, presence head, boxRPB, scoring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU (and dropout) between them, then an optional residual and norm.

    Parameter names (`layers.N.*`, `out_norm.*`) are upstream's, so checkpoints load unchanged.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        dropout: float = 0.0,
        residual: bool = False,
        out_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if residual and input_dim != output_dim:
            raise ValueError(f"a residual MLP needs input_dim == output_dim, got {input_dim} and {output_dim}")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual
        self.out_norm = out_norm if out_norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        identity = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # In place on the linear's fresh output, which its backward does not need: one buffer less (the
            # boxRPB MLPs' hidden layer is 59 MB per decoder layer at 1008 px with 4 queries).
            x = layer(x) if i == last else self.drop(F.relu(layer(x), inplace=True))
        if self.residual:
            x = x + identity
        return self.out_norm(x)
