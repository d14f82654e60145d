"""`active_checkpoint`: put a checkpoint into service through the backend, confirm it with one real inference,
and record it as the dataset's incumbent. In `retrain` it runs only when the evaluation gates passed; the
`activate` job runs it alone for a chosen checkpoint or a rollback to the dataset's previous incumbent."""

import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from sam3lite_core.serve.schemas import ActiveModel
from sam3lite_pipeline.assets.dataset import GROUP
from sam3lite_pipeline.assets.evaluation import evaluation
from sam3lite_pipeline.gates import GateRefused, activation_target
from sam3lite_pipeline.ops.backend import BackendClient, BackendError, Confirmation, backend_client
from sam3lite_pipeline.ops.history import Activation, History
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_metadata
from sam3lite_pipeline.render import history_table
from sam3lite_pipeline.resources import Backend, Gates, StorageRoots


class ActivationConfig(dg.Config):
    checkpoint: str | None = Field(default=None, description="activate this checkpoint (skips the mAP gates)")
    rollback: bool = Field(default=False, description="go back to the dataset's previous incumbent")
    label: str | None = Field(default=None, description="model id the backend shows (default: the run name)")


@dg.asset(
    partitions_def=datasets,
    group_name=GROUP,
    kinds={"service"},
    deps=[evaluation],
    check_specs=[
        dg.AssetCheckSpec(
            "inference_confirmed",
            asset="active_checkpoint",
            blocking=True,
            description="after activation, one inference through the backend answered with the new checkpoint",
        )
    ],
)
def active_checkpoint(
    context: dg.AssetExecutionContext,
    config: ActivationConfig,
    storage: StorageRoots,
    backend: Backend,
    gates: Gates,
) -> Iterator[dg.AssetCheckResult | dg.MaterializeResult]:
    """A generator: a failed confirmation yields its failed check and then fails the step without a
    materialisation, since a materialisation of this asset means "this checkpoint went into service"."""
    dataset_id = context.partition_key
    history = History(storage.runs_root)
    coco = latest_metadata(context, "coco_dataset")
    try:
        entry = activation_target(
            dataset_id,
            history,
            rollback=config.rollback,
            checkpoint=config.checkpoint,
            label=config.label,
            run_id=context.run.run_id,
            latest_evaluation=lambda: latest_metadata(context, "evaluation"),
        )
    except GateRefused as exc:
        raise dg.Failure(str(exc)) from None
    client = backend_client(backend, storage.runs_root)
    image, prompt = _confirm_inputs(coco, gates)
    previous_active, confirmed = yield from _put_into_service(client, entry, image, prompt)
    history.record(entry)
    context.log.info(
        f"activated {entry.checkpoint} for {dataset_id} ({entry.action}); confirmed by an inference "
        f"in {confirmed.latency_s:.2f} s with {confirmed.detections} detection(s) for {prompt!r}"
    )
    metadata = _activation_metadata(entry, backend, previous_active, history.entries(dataset_id), gates)
    yield dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(f"{entry.action}-{entry.label}-{entry.at}"),
        check_results=[_confirmed_check(confirmed, prompt, image)],
    )


def _activation_metadata(
    entry: Activation,
    backend: Backend,
    previous_active: ActiveModel | None,
    entries: list[Activation],
    gates: Gates,
) -> dict[str, Any]:
    return {
        "checkpoint": dg.MetadataValue.path(entry.checkpoint),
        "label": entry.label,
        "action": entry.action,
        "backend": backend.mode,
        "previous_incumbent": entry.previous or "none",
        "previously_active": _checkpoint_of(previous_active),
        "metric": entry.metric or "",
        "value": entry.value if entry.value is not None else float("nan"),
        "history": dg.MetadataValue.md(history_table(entries, gates.metric)),
    }


def _confirmed_check(confirmed: Confirmation, prompt: str, image: Path) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="inference_confirmed",
        passed=True,
        metadata={
            "active_id": confirmed.active_id,
            "detections": confirmed.detections,
            "top_score": confirmed.top_score if confirmed.top_score is not None else float("nan"),
            "latency_s": round(confirmed.latency_s, 3),
            "prompt": prompt,
            "image": dg.MetadataValue.path(str(image)),
        },
    )


def _confirm_inputs(coco: dict[str, Any], gates: Gates) -> tuple[Path, str]:
    """An image of the val split (train when val is empty) and the prompt of the confirming inference."""
    for key, root in (("val_json", "val_images_root"), ("train_json", "train_images_root")):
        images = json.loads(Path(coco[key]).read_text())["images"]
        if images:
            return Path(coco[root]) / images[0]["file_name"], gates.confirm_prompt or coco["categories"][0]
    raise dg.Failure("the dataset has no image to confirm the activation with")


def _put_into_service(
    client: BackendClient, entry: Activation, image: Path, prompt: str
) -> Generator[dg.AssetCheckResult, None, tuple[ActiveModel | None, Confirmation]]:
    """Activate the entry's checkpoint and confirm it with one inference; returns what was active before and
    the confirmation. A refused activation changes nothing; a failed confirmation puts the previous model back
    into service, yields the failed check and fails the step."""
    try:
        previous_active = client.current()
        client.activate(Path(entry.checkpoint), entry.label)
    except BackendError as exc:
        raise dg.Failure(f"activation refused; nothing changed: {exc}") from None
    try:
        confirmed = client.confirm(Path(entry.checkpoint), image, prompt)
    except Exception as exc:  # whatever broke, the previous model must go back into service
        client.restore(previous_active)
        restored = _checkpoint_of(previous_active)
        yield dg.AssetCheckResult(
            check_name="inference_confirmed",
            passed=False,
            metadata={
                "error": str(exc),
                "prompt": prompt,
                "image": dg.MetadataValue.path(str(image)),
                "checkpoint": dg.MetadataValue.path(entry.checkpoint),
                "restored": restored,
            },
        )
        raise dg.Failure(
            f"the backend did not confirm {entry.checkpoint} ({exc}); the previously active model {restored} "
            "was restored and the incumbent is unchanged"
        ) from None
    return previous_active, confirmed


def _checkpoint_of(model: ActiveModel | None) -> str:
    return model.checkpoint if model and model.checkpoint else "none"
