"""`train(config, on_event=None) -> TrainResult`: the one training entry (CLI, torchrun and the pipeline).

Written for one device; torchrun makes it data-parallel (distributed.py). An optimiser step reads top to bottom:
lr -> forward -> loss dict -> backward (per micro-batch) -> clip -> finite check -> step -> EMA -> log.
A step whose loss or gradient is not finite on any rank is skipped on all of them and reported; more than
`max_nonfinite_steps` of them end the run. Validation (COCO mAP of the EMA weights when enabled) runs every
`val_epoch_freq` epochs and at the end; best.ckpt follows its AP, last.ckpt is written every epoch (and every
`checkpoint_every_steps`), and `resume` continues from last.ckpt at the exact step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from sam3lite_core.batch import Batch
from sam3lite_core.distributed import any_rank, barrier, init_distributed, reduce_numbers, shutdown
from sam3lite_core.precision import autocast
from sam3lite_core.train import validation
from sam3lite_core.train.checkpointer import TrainState
from sam3lite_core.train.components import Components, build_components
from sam3lite_core.train.config import TrainConfig
from sam3lite_core.train.denoising import make_denoising_queries
from sam3lite_core.train.events import EventHandler, log_event, metric_event, progress_event, result_event
from sam3lite_core.train.loader import cpu_threads, worker_count
from sam3lite_core.train.optim import clip_gradients
from sam3lite_core.train.outcome import StopReason, TrainResult
from sam3lite_core.train.resume import save, start_or_resume
from sam3lite_core.train.run_folder import LOSS_TERMS
from sam3lite_core.train.stop_signal import StopSignal


@dataclass
class StepOutput:
    loss: float  # mean over micro-batches, this rank
    terms: dict[str, float]  # last-layer loss terms, unweighted
    grad_norm: float
    lr: float  # of the first param group
    skipped: bool  # not finite on some rank: no update


def train(config: TrainConfig | dict[str, Any], on_event: EventHandler | None = None) -> TrainResult:
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.parse(config)
    info = init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        if info.device.type == "cpu":
            torch.set_num_threads(min(threads, cpu_threads(worker_count(cfg.num_train_workers, info.device))))
        c = build_components(cfg, info, on_event)
        try:
            clock = Clock(time.monotonic(), 0.0)
            state, resumed = start_or_resume(c)
            clock.before = state.elapsed_s
            with StopSignal() as stop:
                reason = run_epochs(c, state, clock, stop)
            if reason == "cancelled":
                c.emit(log_event(f"stopped by signal {stop.received} at step {state.step}: saving last.ckpt"))
            return finish(c, state, reason, clock, resumed)
        finally:
            c.run.close()
    finally:
        torch.set_num_threads(threads)
        shutdown(info)


@dataclass
class Clock:
    """Training wall time: this session's, plus `before` (earlier sessions of a resumed run)."""

    start: float
    before: float
    start_step: int = 0
    last_val_s: float = 0.0

    def used(self) -> float:
        return self.before + time.monotonic() - self.start


def run_epochs(c: Components, state: TrainState, clock: Clock, stop: StopSignal) -> StopReason:
    clock.start_step = state.step
    while state.epoch < c.cfg.max_epochs:
        reason = train_one_epoch(c, state, clock, stop)
        if reason is not None:
            return reason
        reason = end_epoch(c, state, clock)
        if reason is not None:
            return reason
    return "completed"


def train_one_epoch(c: Components, state: TrainState, clock: Clock, stop: StopSignal) -> StopReason | None:
    """Optimiser steps until the epoch's batches are used up; a reason when the run must stop early."""
    cfg, data = c.cfg, c.train_data
    accumulate = cfg.gradient_accumulation_steps
    data.sampler.set_epoch(state.epoch, skip=state.micro_batches_done * cfg.train_batch_size)
    window_start, window_images = time.monotonic(), 0
    micro: list[tuple[Batch, list[int]]] = []
    for batch, indices in data.loader if state.micro_batches_done < data.micro_batches_per_epoch else ():
        micro.append((batch, indices))
        state.micro_batches_done += 1
        if len(micro) < accumulate:
            continue
        out = train_step(c, [b for b, _ in micro], state.step)
        window_images += sum(len(b.images) for b, _ in micro) * c.info.world_size
        if account(c, state, out, [idx for _, idx in micro]):
            return "nonfinite_abort"
        micro = []
        if state.step % cfg.effective_log_freq == 0:
            rate = window_images / max(time.monotonic() - window_start, 1e-9)
            log_step(c, state, out, rate)
            window_start, window_images = time.monotonic(), 0
        if state.step - clock.start_step == 10:
            fit_horizon(c, state, clock)
        if c.checkpointer.step_due(state.step) and state.micro_batches_done < data.micro_batches_per_epoch:
            save(c, state, clock.used(), best=False)
        if any_rank(stop.received is not None):  # every rank stops at the same step, or the collectives hang
            return "cancelled"
        if time_is_up(c, state, clock):
            return "time_limit"
        if state.micro_batches_done >= data.micro_batches_per_epoch:
            break
    return None


def account(c: Components, state: TrainState, out: StepOutput, images: list[list[int]]) -> bool:
    """Count a finished step; True when too many steps were non-finite and the run must stop."""
    state.step += 1
    state.epoch_loss_sum += out.loss
    state.epoch_loss_count += 1
    state.recent_losses = (state.recent_losses + [out.loss])[-10:]
    for indices in images:
        c.miner.record(indices, out.loss)
    if not out.skipped:
        return False
    state.nonfinite_steps += 1
    c.emit(
        log_event(
            f"step {state.step}: non-finite loss or gradient ({out.loss}); step skipped "
            f"({state.nonfinite_steps}/{c.cfg.max_nonfinite_steps} allowed)"
        )
    )
    return state.nonfinite_steps > c.cfg.max_nonfinite_steps


def train_step(c: Components, micro_batches: list[Batch], step: int) -> StepOutput:
    """One optimiser step over `micro_batches` (gradient accumulation: their mean gradient). The gradients
    stay in .grad until the next step (clipped, and zero when the step was skipped).

    The step's numbers reach the host in one transfer (loss, gradient norm and loss terms stacked), so a GPU
    step waits for the device once, plus the one collective that decides a skip on every rank together."""
    c.optimizer.zero_grad(set_to_none=True)
    c.schedule.step(step)
    loss, terms = forward_backward(c, micro_batches)
    c.scaler.unscale_(c.optimizer)
    grad_norm = clip_gradients(c.model, c.cfg.grad_clip or math.inf)
    loss_value, norm_value, *term_values = torch.stack([loss, grad_norm.to(loss), *terms.values()]).tolist()
    # fp16's GradScaler skips steps with overflowing gradients itself; that is not a training failure.
    bad_grad = not c.scaler.is_enabled() and not math.isfinite(norm_value)
    skipped = any_rank(not math.isfinite(loss_value) or bad_grad)
    if skipped:
        c.optimizer.zero_grad(set_to_none=False)
    else:
        c.scaler.step(c.optimizer)
        if c.ema is not None:
            c.ema.update(c.model)
    # Every step, skipped or not: unscale_ above is only allowed again after update() (and an fp16 overflow
    # is exactly when the scale must come down).
    c.scaler.update()
    return StepOutput(
        loss=loss_value,
        terms=dict(zip(terms, term_values)),
        grad_norm=norm_value,
        lr=c.optimizer.param_groups[0]["lr"],
        skipped=skipped,
    )


def forward_backward(c: Components, micro_batches: list[Batch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Accumulate into .grad the gradient of the mean loss over `micro_batches`; returns that mean loss and
    its last-layer terms (this rank's, detached)."""
    device = c.info.device
    total = torch.zeros((), device=device)
    terms = {key: torch.zeros((), device=device) for key in LOSS_TERMS}
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device, non_blocking=True)
        last = i == len(micro_batches) - 1
        # Gradients are averaged across ranks once, on the last micro-batch.
        sync = contextlib.nullcontext() if last or c.ddp is c.model else c.ddp.no_sync()
        with sync:
            denoising = make_denoising_queries(batch.target_boxes, batch.num_boxes, c.denoising)
            with autocast(device, c.amp, cache_weights=False):
                outputs = c.ddp(batch, None if denoising is None else denoising.anchors)
            losses = c.criterion(outputs, batch.target_boxes, batch.num_boxes, denoising)
            loss = losses["loss"] / len(micro_batches)
            c.scaler.scale(loss).backward()
        total += loss.detach()
        for key in LOSS_TERMS:
            terms[key] += losses[key] / len(micro_batches)
    return total, terms


def log_step(c: Components, state: TrainState, out: StepOutput, images_per_s: float) -> None:
    """Metric + progress events and a metrics.csv row; the loss is averaged over ranks (a collective)."""
    loss, *terms = [value / c.info.world_size for value in reduce_numbers([out.loss, *out.terms.values()])]
    steps_per_epoch = c.train_data.steps_per_epoch
    batch = state.micro_batches_done // c.cfg.gradient_accumulation_steps
    row = {
        "phase": "train",
        "epoch": state.epoch + 1,
        "step": state.step,
        "batch": batch,
        "batches_per_epoch": steps_per_epoch,
        "time_s": round(time.time(), 3),
        "lr": out.lr,
        "loss": loss,
        **dict(zip(LOSS_TERMS, terms)),
        "grad_norm": out.grad_norm,
        "images_per_s": images_per_s,
    }
    c.run.append_metrics(row)
    c.run.write_progress(
        {
            "phase": "train",
            "epoch": state.epoch + 1,
            "total_epochs": c.cfg.max_epochs,
            "step": state.step,
            "total_steps": state.total_steps,
        }
    )
    c.emit(
        metric_event(
            {
                **row,
                "total_epochs": c.cfg.max_epochs,
                "loss_avg10": sum(state.recent_losses) / len(state.recent_losses),
                "skipped": out.skipped,
            }
        )
    )
    c.emit(
        progress_event(
            state.step / state.total_steps,
            f"epoch {state.epoch + 1}/{c.cfg.max_epochs} step {batch}/{steps_per_epoch} loss {loss:.4f}",
            phase="train",
            epoch=state.epoch + 1,
            step=state.step,
            total_steps=state.total_steps,
        )
    )


def fit_horizon(c: Components, state: TrainState, clock: Clock) -> None:
    """With a time limit, shorten the schedule to the steps that fit, so the lr cooldown ends in time."""
    limit = c.cfg.time_limit_minutes
    done = state.step - clock.start_step
    if limit is None or done <= 0:
        return
    per_step = (time.monotonic() - clock.start) / done
    remaining = limit * 60 - clock.used() - clock.last_val_s  # keep room for the final validation
    horizon = int(reduce_numbers([state.step + max(int(remaining / per_step), 1)], "min")[0])
    state.total_steps = c.schedule.total_steps = max(state.step + 1, min(c.planned_steps, horizon))


def time_is_up(c: Components, state: TrainState, clock: Clock) -> bool:
    limit = c.cfg.time_limit_minutes
    if limit is None:
        return False
    shortened = state.total_steps < c.planned_steps and state.step >= state.total_steps
    return any_rank(clock.used() >= limit * 60 or shortened)


def end_epoch(c: Components, state: TrainState, clock: Clock) -> StopReason | None:
    """Epoch bookkeeping, validation when due, last/best checkpoints, early stopping."""
    c.miner.end_epoch()
    epoch = state.epoch + 1
    if state.epoch_loss_count:
        c.run.append_metrics(
            {
                "phase": "epoch",
                "epoch": epoch,
                "step": state.step,
                "loss": state.epoch_loss_sum / state.epoch_loss_count,
            }
        )
    state.epoch, state.micro_batches_done = epoch, 0
    state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    final = epoch == c.cfg.max_epochs
    due = epoch % c.cfg.val_epoch_freq == 0 and not (c.cfg.skip_first_val and epoch == 1)
    improved = validate(c, state, clock) if c.val is not None and (due or final) else False
    save(c, state, clock.used(), best=improved)
    fit_horizon(c, state, clock)
    patience = c.cfg.early_stopping_patience
    if patience and state.best_epoch > 0 and epoch - state.best_epoch >= patience:
        c.emit(
            log_event(
                f"early stopping: no better val AP for {epoch - state.best_epoch} epochs "
                f"(best {state.best_ap:.4f} at epoch {state.best_epoch})"
            )
        )
        return "early_stopping"
    return None


def validate(c: Components, state: TrainState, clock: Clock) -> bool:
    """`validation.validate`, its duration kept for the time budget (fit_horizon leaves room for one more)."""
    started = time.monotonic()
    improved = validation.validate(c, state)
    clock.last_val_s = time.monotonic() - started
    return improved


def finish(c: Components, state: TrainState, reason: StopReason, clock: Clock, resumed: int | None) -> TrainResult:
    """Final validation when the last weights were not validated, checkpoints, export, plots, result."""
    ckpt = c.checkpointer
    if reason in ("time_limit", "nonfinite_abort", "cancelled"):  # stopped mid-epoch: last.ckpt is older
        # A cancelled run saves at once (its launcher allows a grace period, not a validation).
        validated = reason != "time_limit" or c.val is None or state.last_val_step == state.step
        improved = False if validated else validate(c, state, clock)
        save(c, state, clock.used(), best=improved)
    if c.val is None:
        ckpt.copy_last_to_best()
    barrier()
    best = ckpt.best if ckpt.best.is_file() else None
    export = None
    if best is not None and reason not in ("nonfinite_abort", "cancelled"):
        export = ckpt.write_export(best, use_ema=True)
    c.run.write_plots(state.best_pr)
    result = TrainResult(
        run_dir=str(c.run.path),
        last_checkpoint=str(ckpt.last) if ckpt.last.is_file() else None,
        best_checkpoint=str(best) if best else None,
        export_checkpoint=str(export) if export else None,
        best_metrics=state.best_metrics,
        best_epoch=state.best_epoch if state.best_epoch > 0 else None,
        epochs_done=state.epoch,
        steps_done=state.step,
        dataset_signature=c.data_result.signature,
        config_hash=c.cfg.resolved_hash(),
        stopped_reason=reason,
        wall_time_s=round(clock.used(), 2),
        nonfinite_steps=state.nonfinite_steps,
        train_images=len(c.train_data.dataset),
        val_images=c.val.num_images if c.val else 0,
        resumed_from_step=resumed,
    )
    c.run.write_result(result.model_dump(mode="json"))
    c.emit(result_event(result.model_dump(mode="json")))
    return result
