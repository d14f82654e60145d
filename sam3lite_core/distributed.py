"""Devices and processes: the device choice, the process group from the torchrun environment, rank helpers
and the DDP wrap. Training and evaluation both use it.

One process per device: more processes on a machine than it has visible GPUs is refused at start, since NCCL
cannot share a GPU between processes. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set) the
group is initialised as "cpu:gloo,cuda:nccl" on CUDA (NCCL for the gradients, gloo for the small CPU tensors of
bookkeeping) and gloo on CPU; without torchrun, training runs as a single process and every helper here degrades
to a no-op. A group the caller already initialised is used as is and left alone at the end; because it may be a
plain nccl group, every tensor handed to a collective here is first put on the group's device
(`collective_device`), and numbers go through `reduce_numbers`, so no call site can hand NCCL a CPU tensor.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
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
    """ "auto" -> this process's GPU (local rank i takes GPU i) when CUDA is available, else the CPU; "cuda"
    without CUDA, or a local rank beyond the visible GPUs, is a ValueError that says what to do.

    Choosing a GPU also allows TF32 for its fp32 matmuls and convolutions (PyTorch leaves matmuls at full fp32):
    about 8x the fp32 throughput on Ampere and later, at the precision upstream trains with."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise ValueError(
            f"process {local_rank} on this machine has no GPU of its own: torch sees {visible} GPU(s), and NCCL "
            f"cannot share one between processes. Start at most {visible} process(es) per machine "
            f"(sam3lite train --nproc-per-node {visible}; the pipeline's launcher nproc_per_node), or set device: cpu"
        )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda", local_rank)


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
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
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


def collective_device() -> torch.device:
    """Where tensors handed to the default group's collectives must live: this process's GPU for a plain
    nccl group, else the CPU (gloo, or "cpu:gloo,cuda:nccl", which takes CPU tensors through gloo)."""
    if _active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of a tensor ("sum", "max" or "min"), wherever it lives; returns it."""
    if not _active():
        return values
    device = collective_device()
    carrier = values if values.device == device else values.to(device)
    dist.all_reduce(carrier, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    if carrier is not values:
        values.copy_(carrier)
    return values


def reduce_numbers(values: list[float], op: str = "sum") -> list[float]:
    """Python numbers reduced over all ranks ("sum", "max" or "min"), in float64 on the collective device:
    the one way to hand flags and counters to a collective."""
    if not _active():
        return list(values)
    return all_reduce(torch.tensor(values, dtype=torch.float64, device=collective_device()), op).tolist()


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP around `model` when there are several processes, else the model itself.

    find_unused_parameters is on because some parameters get no gradient in a box-only text-prompted step:
    the point and box-prompt encoders without box prompts, the neck levels the detector does not read and
    `text_projection` (kept for checkpoint compatibility). Frozen parameters (requires_grad False) are ignored
    by DDP anyway. broadcast_buffers is off: the only buffers are the RoPE tables, computed from the config
    on every rank alike, and DDP would otherwise send them from rank 0 before every forward.
    """
    if not info.distributed:
        return model
    released = [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if released:  # weights kept on disk (Sam3Lite.release_text_encoder): nothing to broadcast, nothing trains
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, released)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False
    )


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
    return reduce_numbers([float(flag)], "max")[0] > 0


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
        command += [
            f"--nnodes={launch.nnodes}",
            f"--node-rank={launch.node_rank}",
            f"--master-addr={launch.master_addr}",
            f"--master-port={launch.master_port}",
        ]
    return command + target
