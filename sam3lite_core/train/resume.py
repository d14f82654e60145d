"""Starting, saving and resuming a run: the resumable state written beside the weights in last.ckpt and
read back so that a resumed run continues at the exact step (sampler position, RNG, optimiser, EMA, miner)."""

from __future__ import annotations

from typing import Any

from sam3lite_core.distributed import all_gather_objects
from sam3lite_core.train.checkpointer import TrainState, capture_rng, restore_rng
from sam3lite_core.train.components import Components
from sam3lite_core.train.events import log_event
from sam3lite_core.weights import load_checkpoint, read_checkpoint


def start_or_resume(c: Components) -> tuple[TrainState, int | None]:
    c.run.write_config(c.cfg.resolved().model_dump(mode="json"))
    if c.val is None:
        c.emit(log_event("validation split is empty: no mAP is computed and best.ckpt is the last checkpoint"))
    state = TrainState(total_steps=c.planned_steps)
    if not c.cfg.resume:
        return state, None
    ckpt = read_checkpoint(c.checkpointer.last)
    load_checkpoint(c.model, ckpt, min_fraction=1.0)
    c.optimizer.load_state_dict(ckpt["optimizer"])
    _resume_scaler(c, ckpt)
    if c.ema is not None and ckpt.get("ema"):
        c.ema.load_state_dict(ckpt["ema"])
    c.miner.load_state_dict(ckpt["miner"], c.info.rank)
    state = TrainState.from_dict(ckpt["train_state"])
    # max_epochs may have changed; a time budget refits the horizon after a few steps (fit_horizon).
    state.total_steps = c.schedule.total_steps = c.planned_steps
    if len(ckpt["rng"]) == c.info.world_size:
        restore_rng(ckpt["rng"][c.info.rank])
    else:
        c.emit(
            log_event(
                f"resume: the checkpoint was written by {len(ckpt['rng'])} processes, this run has "
                f"{c.info.world_size}; random streams start afresh"
            )
        )
    c.run.truncate_metrics(state.step)
    _report_changes(c, ckpt)
    c.emit(
        log_event(
            f"resumed {c.run.path} at step {state.step} (epoch {state.epoch + 1}, "
            f"{state.micro_batches_done} batches into it)"
        )
    )
    return state, state.step


def _resume_scaler(c: Components, ckpt: dict[str, Any]) -> None:
    """fp16's loss scale from the checkpoint; one saved without it (CPU, bf16, amp off) starts at the default,
    and a saved scale is not needed by a run without fp16."""
    if not c.scaler.is_enabled():
        return
    if ckpt.get("scaler"):
        c.scaler.load_state_dict(ckpt["scaler"])
        return
    saved_amp = ckpt.get("config", {}).get("amp")
    c.emit(
        log_event(
            f"resume: the checkpoint has no fp16 loss scale (saved with amp {saved_amp!r} on "
            f"{ckpt.get('world_size', 1)} process(es)); the scale starts at its default"
        )
    )


def _report_changes(c: Components, ckpt: dict[str, Any]) -> None:
    if ckpt.get("dataset_signature") != c.data_result.signature:
        c.emit(log_event("resume: the dataset changed since the checkpoint; training goes on with the new data"))
    before, now = ckpt.get("config", {}), c.cfg.resolved().model_dump(mode="json")
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if k != "resume" and before.get(k) != v]
    if changed:
        c.emit(log_event("resume with changed settings: " + ", ".join(changed)))


def training_state(c: Components, state: TrainState) -> dict[str, Any]:
    """The resumable state beside the weights (collectives inside: call it on every rank)."""
    return {
        "train_state": state.to_dict(),
        "optimizer": c.optimizer.state_dict(),
        "scheduler": {"total_steps": c.schedule.total_steps},
        "scaler": c.scaler.state_dict(),
        "ema": c.ema.state_dict() if c.ema is not None else None,
        "miner": c.miner.state_dict(),
        "rng": all_gather_objects(capture_rng()),
        "config": c.cfg.resolved().model_dump(mode="json"),
        "config_hash": c.cfg.resolved_hash(),
        "dataset_signature": c.data_result.signature,
        "metrics": state.best_metrics,
        "world_size": c.info.world_size,
    }


def save(c: Components, state: TrainState, elapsed_s: float, best: bool) -> None:
    """last.ckpt (and best.ckpt when `best`) from rank 0; every rank must call it (collectives)."""
    state.elapsed_s = elapsed_s
    c.checkpointer.save(c.model, training_state(c, state), best=best)
