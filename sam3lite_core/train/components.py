"""Everything a run is made of, built from a TrainConfig in one place: data, model, optimiser, schedule,
scaler, EMA, run folder, checkpointer and the event sink. `loop.py` only drives them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sam3lite_core.data.convert import ConvertResult, convert_dataset
from sam3lite_core.data.layout import find_layout
from sam3lite_core.data.outputs import check_writable_folder
from sam3lite_core.distributed import DistInfo, barrier, main_then_broadcast, wrap_ddp
from sam3lite_core.model.config import PRESETS, ModelConfig
from sam3lite_core.model.sam3lite import TEXT_PREFIX, Sam3Lite, build_model
from sam3lite_core.precision import resolve_amp
from sam3lite_core.train.checkpointer import Checkpointer
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.denoising import DenoisingSettings, denoising_settings
from sam3lite_core.train.ema import ModelEMA
from sam3lite_core.train.events import Event, EventHandler, event_lines, log_event
from sam3lite_core.train.host_memory import map_large_blocks
from sam3lite_core.train.loader import TrainData, build_train_data, convert_settings, limited_coco
from sam3lite_core.train.losses import SetCriterion, loss_settings
from sam3lite_core.train.mining import HardExampleMiner
from sam3lite_core.train.optim import build_optimizer, optim_settings
from sam3lite_core.train.run_folder import RunFolder, latest_run, new_run_name
from sam3lite_core.train.schedule import InverseSqrtSchedule, schedule_settings
from sam3lite_core.weights import build_loaded, read_checkpoint, released_reader


class Emitter:
    """Rank 0 hands each event to train.log and to the caller's handler; other ranks stay silent."""

    def __init__(self, is_main: bool, run: RunFolder, on_event: EventHandler | None, upstream: bool) -> None:
        self.is_main = is_main
        self.run = run
        self.on_event = on_event
        self.upstream = upstream

    def __call__(self, event: Event) -> None:
        if not self.is_main:
            return
        for line in event_lines(event, self.upstream):
            self.run.log(line)
        if self.on_event is not None:
            self.on_event(event)


@dataclass
class ValSplit:
    coco_json: str
    images_root: str
    num_images: int


@dataclass
class Components:
    cfg: TrainConfig
    info: DistInfo
    data_result: ConvertResult
    model: Sam3Lite  # unwrapped: names, checkpoints, EMA
    ddp: nn.Module  # what the forward goes through (the model itself on one process)
    criterion: SetCriterion
    denoising: DenoisingSettings
    optimizer: torch.optim.Optimizer
    schedule: InverseSqrtSchedule
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    miner: HardExampleMiner
    train_data: TrainData
    val: ValSplit | None
    run: RunFolder
    checkpointer: Checkpointer
    emit: Callable[[Event], None]
    amp: str  # resolved: bf16 | fp16 | off

    @property
    def planned_steps(self) -> int:
        return self.cfg.max_epochs * self.train_data.steps_per_epoch


def resolve_run_dir(cfg: TrainConfig, dataset_id: str) -> Path:
    """The run folder: a new one (never an existing run's), or the one to resume."""
    root = Path(cfg.runs_root)
    if cfg.resume:
        name = cfg.run_name or latest_run(root, dataset_id)
        if not name or not (root / name / "checkpoints" / "last.ckpt").is_file():
            where = root / name if name else root / f"{dataset_id}-*"
            raise ValueError(f"resume: no checkpoints/last.ckpt under {where}; start a new run without --resume")
        return root / name
    if cfg.run_name:
        path = root / cfg.run_name
        if path.exists() and any(path.iterdir()):
            raise ValueError(
                f"run folder {path} exists already; pass --resume (resume: true) to continue it, or another run_name"
            )
        return path
    return root / new_run_name(dataset_id, root)


def _convert(cfg: TrainConfig) -> tuple[ConvertResult, Path, str]:
    if not cfg.dataset:
        raise ValueError("dataset: no dataset folder given; pass --dataset DIR or set dataset: in the config")
    dataset_id = find_layout(cfg.dataset).dataset_id
    check_writable_folder(cfg.runs_root, "runs_root")  # before the conversion, not after it
    result = convert_dataset(cfg.dataset, cfg.cache_path(), convert_settings(cfg))
    run_dir = resolve_run_dir(cfg, dataset_id)
    return result, run_dir, dataset_id


def detector_config(cfg: TrainConfig) -> ModelConfig:
    """The model's dimensions: the preset's, at the run's resolution."""
    return PRESETS[cfg.preset].with_resolution(cfg.image_size)


def build_model_for(cfg: TrainConfig, device: torch.device, emit: Callable[[Event], None]) -> Sam3Lite:
    """The model at the configured preset and resolution, initial weights loaded, freezing and activation
    checkpointing applied, in training mode."""
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    loaded: set[str] = set()  # the weights that came from init_checkpoint
    if cfg.init_checkpoint:
        # Memory-mapped and assigned: a full checkpoint becomes the weights without a second copy in memory.
        raw = read_checkpoint(cfg.init_checkpoint, mmap=True)
        model, report = build_loaded(detector_config(cfg), raw, device, source=cfg.init_checkpoint)
        emit(log_event(f"init_checkpoint: {report.summary()}"))
        loaded = set(report.loaded)
    else:
        model = build_model(detector_config(cfg), device=device)
    if cfg.freeze_language_backbone:
        model.freeze_text_encoder(True)
        if all(k in loaded for k in model.state_dict() if k.startswith(TEXT_PREFIX)):
            # Frozen and all from the init file: read back from there when needed rather than kept (1.3 GiB).
            model.release_text_encoder(released_reader(cfg.init_checkpoint, TEXT_PREFIX))
    if cfg.freeze_vision_trunk:
        model.backbone.vision_backbone.trunk.requires_grad_(False)
    model.set_activation_checkpointing(cfg.use_activation_checkpointing)
    return model.train()


def build_components(cfg: TrainConfig, info: DistInfo, on_event: EventHandler | None) -> Components:
    data_result, run_dir, _ = main_then_broadcast(lambda: _convert(cfg))
    run = RunFolder(run_dir, info.is_main)
    barrier()  # the folder exists before anyone writes into it
    emit = Emitter(info.is_main, run, on_event, cfg.upstream_log_lines)
    cache = cfg.cache_path()
    train_json = limited_coco(data_result.train_json, cfg.train_limit, cfg.split_seed, cache)
    train_data, miner = build_train_data(cfg, train_json, data_result.train_images_root, info)
    if train_data.sampler.base.settings.strategy != "none":
        run.log(train_data.sampler.base.summary)  # the backend's job result carries it as balance_info
    val = None
    if data_result.counts.val_images:
        val_json = limited_coco(data_result.val_json, cfg.val_limit, cfg.split_seed, cache)
        count = min(data_result.counts.val_images, cfg.val_limit or data_result.counts.val_images)
        val = ValSplit(val_json, data_result.val_images_root, count)

    if info.device.type == "cpu" and cfg.use_lean_host_memory and map_large_blocks():
        emit(log_event("lean_host_memory: freed blocks of 128 KiB and more go back to the OS at once"))
    model = build_model_for(cfg, info.device, emit)
    torch.manual_seed(cfg.seed + info.rank)  # per-rank stream for dropout and the like
    amp = resolve_amp(cfg.amp, info.device)
    optimizer = build_optimizer(model, optim_settings(cfg))
    total = cfg.max_epochs * train_data.steps_per_epoch
    return Components(
        cfg=cfg,
        info=info,
        data_result=data_result,
        model=model,
        ddp=wrap_ddp(model, info),
        criterion=SetCriterion(loss_settings(cfg)),
        denoising=denoising_settings(cfg),
        optimizer=optimizer,
        schedule=InverseSqrtSchedule(optimizer, total, schedule_settings(cfg)),
        scaler=torch.amp.GradScaler(info.device.type, enabled=amp == "fp16"),
        ema=ModelEMA(model, cfg.ema_decay, cfg.ema_tau) if cfg.ema else None,
        miner=miner,
        train_data=train_data,
        val=val,
        run=run,
        checkpointer=Checkpointer(run.path / "checkpoints", info.is_main, cfg.checkpoint_every_steps),
        emit=emit,
        amp=amp,
    )
