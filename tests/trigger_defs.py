"""A stand-in for the `sam3lite` code location that `tests/test_trigger.py` serves from a real webserver.

It has the names the GraphQL trigger relies on (partitions definition `datasets`, job `retrain` over
`staged_dataset -> coco_dataset -> trained_model -> evaluation -> active_checkpoint`, a blocking mAP gate on
`evaluation`, metadata `checkpoint`/`AP50`/`AP`) and does no work, so a run takes seconds. Knobs, as run
config: `ops.trained_model.config.sleep_s` keeps a run busy long enough to cancel it (`pid_file` tells the
test which process to watch), `ops.evaluation.config.ap50` below the floor fails the gate.
"""

import os
import time
from pathlib import Path

import dagster as dg

AP50_FLOOR = 0.5

datasets = dg.DynamicPartitionsDefinition(name="datasets")


class TrainConfig(dg.Config):
    epochs: int = 1
    sleep_s: float = 0.0
    pid_file: str = ""


class EvalConfig(dg.Config):
    ap50: float = 0.62


def _checkpoint(partition: str) -> str:
    return f"/runs/{partition}/checkpoints/export.ckpt"


@dg.asset(partitions_def=datasets)
def staged_dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"signature": f"sig-{context.partition_key}"})


@dg.asset(partitions_def=datasets, deps=[staged_dataset])
def coco_dataset() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"images": 4})


@dg.asset(partitions_def=datasets, deps=[coco_dataset])
def trained_model(context: dg.AssetExecutionContext, config: TrainConfig) -> dg.MaterializeResult:
    if config.pid_file:
        Path(config.pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + config.sleep_s
    while time.monotonic() < deadline:
        context.log.info(f"[sam3lite-progress {1 - (deadline - time.monotonic()) / config.sleep_s:.2f}] training")
        time.sleep(0.5)
    return dg.MaterializeResult(
        metadata={"checkpoint": dg.MetadataValue.path(_checkpoint(context.partition_key)), "epochs": config.epochs}
    )


@dg.asset(
    partitions_def=datasets,
    deps=[trained_model],
    # Declared on the asset, so the gate sees this partition's numbers and a failure stops active_checkpoint.
    check_specs=[dg.AssetCheckSpec("map_gate", asset="evaluation", blocking=True)],
)
def evaluation(context: dg.AssetExecutionContext, config: EvalConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "AP50": config.ap50,
            "AP": config.ap50 / 2,
            "checkpoint": dg.MetadataValue.path(_checkpoint(context.partition_key)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="map_gate",
                passed=config.ap50 >= AP50_FLOOR,
                metadata={"AP50": config.ap50, "floor": AP50_FLOOR},
            )
        ],
    )


@dg.asset(partitions_def=datasets, deps=[evaluation])
def active_checkpoint(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"checkpoint": dg.MetadataValue.path(_checkpoint(context.partition_key))})


retrain = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.all(),
    # One process per run instead of one per step: seconds instead of tens of seconds on 2 cores.
    executor_def=dg.in_process_executor,
)

defs = dg.Definitions(
    assets=[staged_dataset, coco_dataset, trained_model, evaluation, active_checkpoint],
    jobs=[retrain],
)
