"""Named training recipes: config fields that go together, shared by the demo and the benchmarks."""

# The small preset from scratch on 2 CPU cores (bench/bench_train_quality.py measures where it gets).
CPU_FROM_SCRATCH = {
    "preset": "small",
    # 168 px and 4 images a step: ~0.8 s per step on 2 cores, so ~700 optimiser steps in 10 minutes; from scratch
    # the number of updates matters more than the pixels (the smallest shapes are ~8 px here).
    "resolution": 168,
    "train_batch_size": 4,
    "val_batch_size": 8,
    "max_epochs": 1000,  # the time budget ends the run
    "lr_scale": 0.5,
    "lr_language_backbone": 8e-4,  # the random text encoder must learn as fast as the rest
    "lrd_vision_backbone": 1.0,  # no layer decay: the trunk is not pretrained
    "scheduler_warmup": 50,
    "scheduler_timescale": 1000,  # nearly flat, then the cooldown fitted to the end of the budget
    "scheduler_cooldown": 150,
    "val_epoch_freq": 3,
    "skip_first_val": True,
    "ema": True,
    "ema_decay": 0.99,  # a short run: average over ~100 steps, not thousands
    "ema_tau": 50,
    "num_train_workers": 0,
    "num_val_workers": 0,
}
