"""The training data path around the dataset, sampler and collate of sam3lite_core.data.

Two things make runs reproducible and resumable at any step, whatever the number of loader workers:
- every sample's random augmentation is drawn from its own seed, a function of (seed, rank, epoch, position in
  the epoch), inside `torch.random.fork_rng`, so it depends neither on which worker loads it nor on the RNG
  of the training process;
- `EpochSampler` yields (epoch, position, index) keys and can start an epoch part-way (`skip`), so a run resumed
  mid-epoch loads exactly the batches the interrupted run would have loaded next, without decoding the others.

The data settings of a run (conversion, dataset, balance) are derived from its TrainConfig here, since
sam3lite_core.data sits below train and does not know the config.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sam3lite_core.batch import Batch
from sam3lite_core.data.collator import collate
from sam3lite_core.data.convert import ConvertSettings
from sam3lite_core.data.dataset import CocoQueryDataset, LoaderSettings, Sample
from sam3lite_core.data.sampler import BalancedSampler, BalanceSettings
from sam3lite_core.distributed import DistInfo
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.mining import HardExampleMiner

SampleKey = tuple[int, int, int]  # (epoch, position in this rank's epoch, dataset index)


def sample_seed(seed: int, rank: int, epoch: int, position: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, position]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededSamples(Dataset):
    """`dataset[index]` with augmentation seeded by the sample key; returns (index, Sample)."""

    def __init__(self, dataset: CocoQueryDataset, seed: int, rank: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[int, Sample]:
        epoch, position, index = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what fork_rng saves and restores, and what the transforms draw from):
            # torch.manual_seed also queues a lazy CUDA seeding that records a stack trace, ~0.8 ms a sample.
            torch.default_generator.manual_seed(sample_seed(self.seed, self.rank, epoch, position))
            return index, self.dataset[index]


class EpochSampler(Sampler[SampleKey]):
    """This rank's keys for one epoch: the balanced draw, hard examples mixed in, optionally started part-way."""

    def __init__(self, base: BalancedSampler, miner: HardExampleMiner) -> None:
        self.base = base
        self.miner = miner
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch to draw, and how many of its samples were already trained on (a resumed run)."""
        self.epoch = epoch
        self.skip = skip

    def indices(self) -> list[int]:
        self.base.set_epoch(self.epoch)
        return self.miner.plan(self.epoch, list(self.base), self.base.rank, self.base.world_size)

    def __len__(self) -> int:
        return len(self.base) - self.skip

    def __iter__(self) -> Iterator[SampleKey]:
        indices = self.indices()
        return iter([(self.epoch, pos, indices[pos]) for pos in range(self.skip, len(indices))])


def collate_indexed(items: list[tuple[int, Sample]]) -> tuple[Batch, list[int]]:
    """The Batch of the samples and their dataset indices (for hard-example mining)."""
    return collate([sample for _, sample in items]), [index for index, _ in items]


@dataclass
class TrainData:
    dataset: CocoQueryDataset
    sampler: EpochSampler
    loader: DataLoader
    micro_batches_per_epoch: int  # per rank
    steps_per_epoch: int  # optimiser steps


def cores_per_process() -> int:
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def worker_count(requested: int, device: torch.device) -> int:
    """Loader workers per process. On a GPU: up to this process's share of the CPUs minus one.

    On a CPU each worker takes a core from the training threads (`cpu_threads`); a core shared by both stalls
    every OpenMP barrier of the step (3-4x slower, measured on 2 cores). Whether a worker beats a second
    training thread depends on the model: on 2 cores the tiny recipe (168 px, 16 images a step) trains at 102
    images/s with 1 worker and 1 thread against 55 loading in turn with 2 threads, the small preset (336 px, 4
    a step) at 1.8 against 2.7. So a request for at most half the share is taken as given, and a larger one
    (such as the backend's default 4, a GPU-host setting) gets a quarter of the share: none on 2 cores.
    """
    cores = cores_per_process()
    if device.type == "cuda":
        return max(0, min(requested, cores - 1))
    return requested if requested <= cores // 2 else cores // 4


def cpu_threads(workers: int) -> int:
    """Intra-op threads for CPU training next to `workers` loader processes: together, this process's share."""
    return max(1, cores_per_process() - workers)


def convert_settings(cfg: TrainConfig) -> ConvertSettings:
    """How the dataset is converted: its train/val split (`val_percent`, `split_seed`)."""
    return ConvertSettings(val_fraction=cfg.val_percent, seed=cfg.split_seed)


def loader_settings(cfg: TrainConfig) -> LoaderSettings:
    """The train dataset's resolution, prompts and augmentation. Without `prompt_randomize` every class keeps
    only its first prompt variant, as evaluation does."""
    variants = cfg.prompt_variants
    if not cfg.prompt_randomize:
        variants = {k: (v.split(",") if isinstance(v, str) else v)[:1] for k, v in variants.items()}
    return LoaderSettings(
        resolution=cfg.image_size,
        prompt_variants=variants,
        hflip_prob=cfg.hflip_prob,
        box_jitter=cfg.box_jitter,
        train_min_scale=cfg.train_min_scale,
    )


def balance_settings(cfg: TrainConfig) -> BalanceSettings:
    """The class-balanced sampling; `balance_classes` turns `balance_strategy` off (false) or on (true: inv_sqrt
    unless a strategy is named)."""
    strategy = cfg.balance_strategy
    if cfg.balance_classes is False:
        strategy = "none"
    elif cfg.balance_classes and strategy == "none":
        strategy = "inv_sqrt"
    return BalanceSettings(
        strategy=strategy,
        power=cfg.balance_power,
        clip=cfg.balance_clip,
        beta=cfg.balance_beta,
        gamma=cfg.balance_gamma,
        background_weight=cfg.background_weight,
        target_epoch_size=cfg.target_epoch_size,
        seed=cfg.seed,
    )


def limited_coco(coco_json: str, limit: int | None, seed: int, cache_dir: Path) -> str:
    """`coco_json` itself, or a copy with `limit` images drawn with `random.Random(seed)` (train_limit,
    val_limit), written once into the cache."""
    coco = json.loads(Path(coco_json).read_text())
    if limit is None or limit >= len(coco["images"]):
        return coco_json
    ids = sorted(image["id"] for image in coco["images"])
    keep = set(random.Random(seed).sample(ids, limit))
    out = cache_dir / "subsets" / f"{Path(coco_json).parent.name}-{Path(coco_json).stem}-{limit}-{seed}.json"
    if not out.is_file():
        coco["images"] = [image for image in coco["images"] if image["id"] in keep]
        coco["annotations"] = [ann for ann in coco["annotations"] if ann["image_id"] in keep]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, out)
    return str(out)


def build_train_data(
    cfg: TrainConfig, coco_json: str, images_root: str, info: DistInfo
) -> tuple[TrainData, HardExampleMiner]:
    dataset = CocoQueryDataset(coco_json, images_root, loader_settings(cfg), train=True)
    batch = cfg.train_batch_size
    if len(dataset) < batch * info.world_size:
        raise ValueError(
            f"the train split has {len(dataset)} images, fewer than train_batch_size {batch} x {info.world_size} "
            "processes; add images or lower train_batch_size"
        )
    base = BalancedSampler(
        dataset.image_categories(),
        balance_settings(cfg),
        batch_size=batch,
        category_ids=[c["id"] for c in dataset.categories],
        rank=info.rank,
        world_size=info.world_size,
    )
    miner = HardExampleMiner(
        len(dataset), cfg.hard_example_fraction, cfg.hard_example_burn_in, enabled=cfg.hard_example_mining
    )
    sampler = EpochSampler(base, miner)
    workers = worker_count(cfg.num_train_workers, info.device)
    loader = DataLoader(
        SeededSamples(dataset, cfg.seed, info.rank),
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate_indexed,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator(),  # leaves the global RNG alone
    )
    micro = len(base) // batch
    steps = micro // cfg.gradient_accumulation_steps
    if steps == 0:
        raise ValueError(
            f"an epoch has {micro} batches per process, fewer than gradient_accumulation_steps "
            f"{cfg.gradient_accumulation_steps}; lower it or raise target_epoch_size"
        )
    return TrainData(dataset, sampler, loader, steps * cfg.gradient_accumulation_steps, steps), miner
