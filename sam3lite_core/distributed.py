"""Devices and processes: the device choice, the process group from the torchrun environment, rank helpers
and the DDP wrap. Training and evaluation both use it.

One process per device. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set) the group is
initialised with nccl on CUDA and gloo on CPU; without it, training runs as a single process and every helper
here degrades to a no-op. A group the caller already initialised is used as is and left alone at the end.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
# Long enough for rank 0 to convert a large dataset while the others wait at the barrier after it.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # we initialised the group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """"auto" -> this process's GPU when CUDA is available, else the CPU; "cuda" without CUDA is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the torchrun process group (if any) and pick this process's device."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, local_rank, world, pick_device(device_preference, local_rank), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world <= 1:
        return DistInfo(0, 0, 1, device, owns_group=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device, owns_group=True)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (e.g. a run folder name that contains a timestamp)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of a tensor ("sum", "max" or "min"); returns it."""
    if _active():
        dist.all_reduce(values, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return values


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around `model` when there are several processes, else the model itself.

    find_unused_parameters is on because some parameters get no gradient in a box-only text-prompted step:
    the point and box-prompt encoders without box prompts, the neck levels the detector does not read and
    `text_projection` (kept for checkpoint compatibility). Frozen parameters (requires_grad False) are ignored
    by DDP anyway.
    """
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP and torch.compile wrappers, so keys carry no `module.` / `_orig_mod.` prefix."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (decisions all ranks must take together)."""
    if not _active():
        return flag
    return bool(all_reduce(torch.tensor([float(flag)]), "max").item())


def main_then_broadcast(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its value, or its exception, to every rank."""
    value, error = None, None
    if not _active() or dist.get_rank() == 0:
        try:
            value = fn()
        except Exception as exc:  # re-raised below, on every rank
            error = exc
    value, error = broadcast_object((value, error))
    if error is not None:
        raise error
    return value


@dataclass(frozen=True)
class LaunchSettings:
    """How many processes run a training: per machine, machines, and where they meet when there are several."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500


def launch_command(launch: LaunchSettings, target: list[str]) -> list[str]:
    """The command line that runs `target` (e.g. ["-m", "sam3lite_core.train", ...]): plain python for one
    process, torchrun otherwise, as `python -m torch.distributed.run` so it keeps this interpreter and environment."""
    if launch.nproc_per_node * launch.nnodes == 1:
        return [sys.executable, *target]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}"]
    if launch.nnodes == 1:
        command.append("--standalone")
    else:
        command += [f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}",
                    f"--master-addr={launch.master_addr}", f"--master-port={launch.master_port}"]
    return command + target
