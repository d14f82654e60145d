"""Named training recipes: config fields that go together, for `sam3lite train --recipe`, the demo and the
benchmarks."""

import os

import torch

# From scratch on 2 CPU cores (bench/bench_train_quality.py measures where it gets). What decides the result is
# the number of optimiser steps and images seen: the small preset (~0.7 s a step of 4 images at 168 px) sat on
# the DETR plateau for its ~700 steps in 10 minutes (presence logit at chance, val mAP50 < 0.01). The tiny preset
# takes a step of 16 images in ~0.15 s on one thread (8 images: ~0.08 s): ~100 images/s against ~5, and it leaves
# the plateau after ~1000-1500 steps (presence first, then the boxes). What is left after 10 minutes is
# localisation: the presence head separates present from absent prompts (0.93 vs 0.04 mean probability on val),
# but many val boxes have no prediction at IoU 0.5, and almost none of the smallest (under ~17 px here).
#
# So the recipe is also about steps per minute. Its ops are too small to split over threads (one thread steps as
# fast as two), so each core runs its own process: data-parallel over gloo, each process loading its own 8 images
# a step with one thread (`cpu_from_scratch`). On 2 cores: 4400-4900 steps of 16 images in 10 minutes, against
# ~3800 with one process (one training thread and one loader worker) and ~2950 with one process loading in turn.
CPU_FROM_SCRATCH_PROCESSES = 2
GLOBAL_BATCH = 16  # images per optimiser step over all processes; the learning rates were tuned for it

_CPU_FROM_SCRATCH = {
    "preset": "tiny",
    "resolution": 168,  # above tiny's 112: the smallest shapes are ~8 px here
    "max_epochs": 1000,  # the time budget ends the run
    # Val mAP50 after 10 minutes (2 processes): 0.494 with 1.5, 0.558 with 2.0 (seed 0); 0.391 and 0.479 (seed 123).
    "lr_scale": 2.0,
    "lr_language_backbone": 8e-4,  # the random text encoder must learn as fast as the rest
    "lrd_vision_backbone": 1.0,  # no layer decay: the trunk is not pretrained
    "weight_decay": 0.0,  # nothing pretrained to stay close to (not compared with weight decay on)
    # Upstream's multi-scale shrink (each image resized to 48-98% of the canvas, zero-padded) is what keeps the
    # model from memorising 320 images: without it (1.0) the train losses fell lower and val mAP50 stayed at 0.02
    # after 10 minutes. A wider range (down to 30%) gave 0.392 against 0.494 (2 processes, lr_scale 1.5, seed 0).
    "train_min_scale": 480 / 1008,
    # The upstream 200 would divide the classification term of tiny's 10 box queries by 200 instead of 10. An int,
    # not None: the pipeline's config layers read None as "unset" and would bring the 200 back.
    "loss_pad_num_queries": 10,
    "scheduler_warmup": 50,
    "scheduler_timescale": 1000,  # nearly flat, then the cooldown fitted to the end of the budget
    "scheduler_cooldown": 150,
    # More weight on the one-to-many queries, which give every box ~4 positives a step instead of 1: val mAP50
    # after 10 minutes (one process, lr_scale 1.5, seed 0) 0.330 with the upstream 2, 0.407 with 4, 0.352 with 8.
    "o2m_weight": 4.0,
    "val_epoch_freq": 25,  # ~every 500 steps; the run always validates once more when time is up
    "skip_first_val": True,
    # The weights still move fast at the end of a short run and an average would lag them (off in every run that
    # measured this recipe; not compared with EMA on).
    "ema": False,
    "num_val_workers": 0,
    # Where the run ends up depends on the seed: val mAP50 after 10 minutes (2 processes) was 0.513-0.558 with seed
    # 0 (4235-4934 steps: the step count varies with the machine), 0.479 with 123 (TrainConfig's default) and
    # 0.561 with 7. The benchmark keeps 0, chosen (from 0, 7, 123 at 8 minutes) before the rest of the recipe was.
    "seed": 0,
}


def processes_for_host() -> int:
    """How many data-parallel processes the recipe runs here: one per visible GPU (NCCL cannot share one), as
    many as divide the recipe's batch evenly (a power of two up to 16); on a CPU the recipe's processes, fewer on
    a machine with fewer cores."""
    if torch.cuda.is_available():
        gpus = min(torch.cuda.device_count(), GLOBAL_BATCH)
        return 1 << (gpus.bit_length() - 1)
    return min(CPU_FROM_SCRATCH_PROCESSES, os.cpu_count() or 1)


def cpu_from_scratch(processes: int = CPU_FROM_SCRATCH_PROCESSES) -> dict:
    """The recipe's config for a run over `processes` data-parallel processes (`train_batch_size` is per process,
    as upstream's): together they step over GLOBAL_BATCH images. One process gets one loader worker instead, the
    fastest single-process setup on 2 cores (train/loader.py `worker_count`)."""
    if processes < 1 or GLOBAL_BATCH % processes:
        raise ValueError(f"processes must divide the recipe's batch of {GLOBAL_BATCH} images; got {processes}")
    batch = GLOBAL_BATCH // processes
    # Several processes load their own images: a loader worker would take a core from a training process.
    workers = 1 if processes == 1 else 0
    return {**_CPU_FROM_SCRATCH, "train_batch_size": batch, "val_batch_size": batch, "num_train_workers": workers}


# Fine-tuning the released sam3.pt at 1008 px on one 16 GB GPU (README "Fine-tuning SAM3 on one 16 GB GPU";
# bench/bench_train_memory.py measures it). What trains is what upstream's roboflow fine-tune trains but the text
# encoder: frozen, its features cached per class and its 1.3 GiB of weights read back from sam3.pt only to encode
# a new prompt or to save a checkpoint, so it also needs no gradients (1.3 GiB) and no AdamW state (2.6 GiB).
SAM3_16GB_GPU = {
    "preset": "sam3",
    "resolution": 1008,
    "train_batch_size": 1,
    "val_batch_size": 1,
    "gradient_accumulation_steps": 2,  # upstream's step: 1 image on each of 2 GPUs
    "freeze_language_backbone": True,
    "activation_checkpointing": True,  # only each block's input is kept; blocks run again in backward
    "amp": "auto",  # bf16 where the GPU computes it (A100, L4, RTX 30xx and later), fp16 on a T4 or V100
    "ema": False,  # an average is one more fp32 copy of what trains (1.8 GiB)
}


def sam3_16gb_gpu() -> dict:
    """The one-16-GB-GPU fine-tune's config fields; the run also needs `init_checkpoint` (the released sam3.pt)."""
    return dict(SAM3_16GB_GPU)


# `sam3lite train --recipe NAME`: a recipe's fields, under the config file's and --set's.
RECIPES = {"cpu-from-scratch": cpu_from_scratch, "sam3-16gb-gpu": sam3_16gb_gpu}
# What a recipe cannot choose for the user, and why it needs it.
RECIPE_NEEDS = {"sam3-16gb-gpu": {"init_checkpoint": "the released sam3.pt it fine-tunes"}}


def recipe_fields(name: str) -> dict:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {', '.join(RECIPES)}")
    return RECIPES[name]()


def missing_for_recipe(name: str, fields: dict) -> list[str]:
    """The fields `name` needs that `fields` (a config's set values) leaves unset, with what each is for."""
    needs = RECIPE_NEEDS.get(name, {})
    return [f"{key} ({why}): --set {key}=PATH" for key, why in needs.items() if not fields.get(key)]
