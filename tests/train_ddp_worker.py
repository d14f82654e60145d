"""The process test_train_ddp.py runs: under `torchrun --nproc-per-node W` (one rank's share of each step) or as
one plain process on the union of the W shares (`--world W`, no torchrun).

It builds the real training components (tiny preset, dropout 0, grad_clip 0 so the gradients are raw, no EMA),
feeds a fixed sampler without augmentation (step s: images [s*W*B, (s+1)*W*B) in order; rank r takes the r-th
block of B), runs `train_step` for a few steps and saves, from rank 0, every parameter's gradient after each
step and the COCO stats of `evaluate` on the initial weights.

Under torchrun every tensor our code hands to `torch.distributed.all_reduce` is checked to live on the
group's device (`distributed.collective_device`), and the count of checked calls is saved with the gradients.

The single process multiplies its loss by 1/sqrt(W), the factor derived in test_train_ddp.py. The learning rate
is 0: AdamW normalises every coordinate, so a gradient entry that is ~0 up to float32 rounding (1e-7) moves its
weight by +-lr depending on the rounding, and two exact-in-math runs part after one real step whatever the
parallelism. With lr 0 every step compares the gradients of a new batch at the same weights.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import tiny_config  # noqa: E402

import sam3lite_core.distributed as distributed  # noqa: E402
from sam3lite_core.data.collator import collate  # noqa: E402
from sam3lite_core.data.dataset import CocoQueryDataset  # noqa: E402
from sam3lite_core.distributed import init_distributed, shutdown  # noqa: E402
from sam3lite_core.eval.evaluate import evaluate  # noqa: E402
from sam3lite_core.train.components import build_components  # noqa: E402
from sam3lite_core.train.loader import loader_settings  # noqa: E402
from sam3lite_core.train.loop import train_step  # noqa: E402


class ScaledLoss(nn.Module):
    def __init__(self, criterion: nn.Module, factor: float) -> None:
        super().__init__()
        self.criterion = criterion
        self.factor = factor

    def forward(self, *args):
        losses = self.criterion(*args)
        losses["loss"] = losses["loss"] * self.factor
        return losses


def guard_collectives() -> dict:
    """Wrap torch.distributed.all_reduce so that every call records whether its tensor is on the group's device."""
    seen: dict = {"calls": 0, "wrong": []}
    original = torch.distributed.all_reduce

    def checked(tensor, *args, **kwargs):
        seen["calls"] += 1
        if tensor.device != distributed.collective_device():
            seen["wrong"].append(f"{tuple(tensor.shape)} on {tensor.device}")
        return original(tensor, *args, **kwargs)

    torch.distributed.all_reduce = checked
    return seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--world", type=int, help="single process: the world size whose union batch to take")
    parser.add_argument("--per-rank", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    info = init_distributed("cpu")
    collectives = guard_collectives()
    world = args.world or info.world_size
    name = "ddp" if info.distributed else "single"
    cfg = tiny_config(
        Path(args.dataset),
        Path(args.runs),
        run_name=name,
        grad_clip=0.0,
        ema=False,
        lr_scale=0.0,
        train_batch_size=args.per_rank,
    )
    c = build_components(cfg, info, None)
    if not info.distributed:
        c.criterion = ScaledLoss(c.criterion, 1 / math.sqrt(world))
    data = CocoQueryDataset(
        c.data_result.train_json, c.data_result.train_images_root, loader_settings(cfg), train=False
    )  # no augmentation
    stats = evaluate(c.model, c.val.coco_json, c.val.images_root).stats
    out: dict = {"eval": stats, "steps": []}
    for step in range(args.steps):
        union = list(range(step * world * args.per_rank, (step + 1) * world * args.per_rank))
        mine = union if not info.distributed else union[info.rank * args.per_rank : (info.rank + 1) * args.per_rank]
        result = train_step(c, [collate([data[i] for i in mine])], step + 5)  # past the lr warm-up's zero
        grads = {n: p.grad.clone() for n, p in c.model.named_parameters() if p.grad is not None}
        out["steps"].append({"grads": grads, "loss": result.loss})
    out["collectives"] = collectives
    if info.is_main:
        torch.save(out, Path(args.out) / f"{name}.pt")
    shutdown(info)


if __name__ == "__main__":
    main()
