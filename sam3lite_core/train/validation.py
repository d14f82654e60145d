"""Validation during training: COCO mAP of the weights being trained (EMA weights when enabled) on the val
split, recorded in metrics.csv and as a metric event, with the best so far kept in the TrainState."""

from __future__ import annotations

import time
from typing import Any

from sam3lite_core.eval.coco_eval import STAT_NAMES, EvalResult
from sam3lite_core.eval.evaluate import evaluate
from sam3lite_core.train.checkpointer import TrainState
from sam3lite_core.train.components import Components
from sam3lite_core.train.events import metric_event, progress_event
from sam3lite_core.train.loader import worker_count


def validate(c: Components, state: TrainState) -> bool:
    """COCO mAP on the val split; True when AP improved on the best so far (or this is the first validation)."""
    epoch = state.epoch if state.micro_batches_done == 0 else state.epoch + 1  # 1-based, of the weights
    result = _evaluate(c, state, epoch)
    metrics = {name: float(getattr(result, name)) for name in STAT_NAMES}
    state.validations += 1
    state.last_val_step = state.step
    improved = metrics["AP"] > state.best_ap + c.cfg.early_stopping_min_delta or state.best_epoch < 0
    if improved:
        state.best_ap, state.best_epoch, state.best_metrics = metrics["AP"], epoch, metrics
        state.best_pr = _pr_curve(result, epoch)
    c.run.append_metrics(
        {"phase": "val", "epoch": epoch, "step": state.step, "time_s": round(time.time(), 3), **metrics}
    )
    event = {"phase": "val", "epoch": epoch, "step": state.step, "total_epochs": c.cfg.max_epochs, "best": improved}
    c.emit(metric_event({**event, **metrics}))
    return improved


def _evaluate(c: Components, state: TrainState, epoch: int) -> EvalResult:
    """The evaluation itself, with a progress event every tenth of the val batches."""

    def progress(done: int, total: int) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            message = f"validating epoch {epoch}: {done}/{total}"
            fields = {"phase": "val", "epoch": epoch, "val_step": done, "val_total": total}
            c.run.write_progress(
                {**fields, "total_epochs": c.cfg.max_epochs, "step": state.step, "total_steps": state.total_steps}
            )
            c.emit(progress_event(state.step / state.total_steps, message, **fields))

    return evaluate(
        c.ema.module if c.ema is not None else c.model,
        c.val.coco_json,
        c.val.images_root,
        batch_size=c.cfg.val_batch_size,
        num_workers=worker_count(c.cfg.num_val_workers, c.info.device),
        max_dets=c.cfg.val_max_dets,
        score_thresh=c.cfg.val_score_thresh,
        amp=c.amp,
        prompt_variants=c.cfg.prompt_variants,
        on_progress=progress,
    )


def _pr_curve(result: EvalResult, epoch: int) -> dict[str, Any]:
    per_class = [{"name": row.name, "precision_50": row.precision_50} for row in result.per_class]
    return {
        "epoch": epoch,
        "recall_thresholds": result.recall_thresholds,
        "precision_50": result.precision_50,
        "per_class": per_class,
    }
