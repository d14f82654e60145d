"""`dataset_sensor`: watches the datasets root; a new dataset gets its partition, a changed one a `retrain`.

Each tick stats every dataset (`stat_fingerprint`: names, sizes, mtimes; no reading) and computes the content
signature only where the fingerprint moved. A dataset is acted on once its fingerprint held still for a whole
interval, so a copy in progress waits; folders starting with "." or "_" (staging areas) are ignored. The
cursor (JSON, per dataset: last fingerprint, whether it is settled, last signature) makes every tick
incremental; signing stops after a time budget and continues on the next tick, so hundreds of datasets stay
well inside Dagster's sensor timeout. The run key `<dataset>:<signature>` never launches the same data twice,
and data the latest trained_model was trained on is not retrained.
"""

import json
import os
import time
from pathlib import Path

import dagster as dg

from sam3lite_core.data.report import DatasetError
from sam3lite_core.data.signature import dataset_signature, stat_fingerprint
from sam3lite_pipeline.jobs import retrain
from sam3lite_pipeline.partitions import datasets
from sam3lite_pipeline.records import latest_values
from sam3lite_pipeline.resources import StorageRoots

INTERVAL_S = int(os.environ.get("SAM3LITE_SENSOR_INTERVAL", "60"))
SIGNING_BUDGET_S = 20.0  # per tick; Dagster's sensor timeout is 60 s by default


def dataset_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def trained_signature(instance: dg.DagsterInstance, dataset_id: str) -> str | None:
    """The signature of the data the dataset's latest trained_model was trained on."""
    return (latest_values(instance, "trained_model", dataset_id) or {}).get("dataset_signature")


@dg.sensor(
    job=retrain,
    minimum_interval_seconds=INTERVAL_S,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="new dataset -> its partition; changed dataset -> retrain (run key <dataset>:<signature>)",
)
def dataset_sensor(context: dg.SensorEvaluationContext, storage: StorageRoots) -> dg.SensorResult:
    state: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(datasets.name))
    started = time.monotonic()
    new_partitions, requests, waiting, broken = [], [], [], []
    folders = dataset_folders(Path(storage.datasets))
    for folder in folders:
        name = folder.name
        seen = state.get(name, {})
        try:
            fingerprint = stat_fingerprint(folder)
        except DatasetError as exc:
            broken.append(f"{name} ({exc})")
            continue
        if fingerprint != seen.get("fp"):
            state[name] = {**seen, "fp": fingerprint, "settled": False}
            waiting.append(name)
            continue
        if seen.get("settled") or time.monotonic() - started > SIGNING_BUDGET_S:
            continue
        try:
            signature = dataset_signature(folder, cache_dir=storage.cache_dir)
        except DatasetError as exc:
            broken.append(f"{name} ({exc})")
            continue
        state[name] = {**seen, "settled": True, "sig": signature}
        if name not in known:
            new_partitions.append(name)
        if trained_signature(context.instance, name) != signature:
            requests.append(
                dg.RunRequest(
                    partition_key=name, run_key=f"{name}:{signature}", tags={"sam3lite/trigger": "dataset_sensor"}
                )
            )
    for name in set(state) - {f.name for f in folders}:
        del state[name]  # a removed dataset starts over if it comes back
    if broken:
        context.log.warning("not usable yet: " + "; ".join(broken))
    skip = None
    if not (new_partitions or requests):
        note = f"waiting for {', '.join(waiting)} to stop changing; " if waiting else ""
        unusable = f"; not usable yet: {'; '.join(broken)}" if broken else ""
        skip = dg.SkipReason(f"{note}{len(folders)} dataset(s), nothing new to train{unusable}")
    return dg.SensorResult(  # also when skipping: the cursor must keep the fingerprints seen
        run_requests=requests,
        dynamic_partitions_requests=[datasets.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(state, sort_keys=True),
        skip_reason=skip,
    )
