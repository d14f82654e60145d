"""Reading what an asset recorded for a partition: the one query the assets, the sensor, the schedule and the
demo share.

Assets pass paths and numbers to each other through their materialisation metadata (the checkpoints and COCO
files live on our own storage roots, not in Dagster's IO manager), read per partition: the instance's
"latest materialisation" ignores partitions.
"""

from __future__ import annotations

from typing import Any

import dagster as dg


def latest_record(instance: dg.DagsterInstance, asset: str, partition: str) -> dg.EventLogRecord | None:
    """The newest materialisation record of `asset` for `partition`; None when there is none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return records[0]


def record_values(record: dg.EventLogRecord) -> dict[str, Any]:
    """The plain values of a materialisation record's metadata."""
    assert record.asset_materialization is not None, "latest_record returns materialisations only"
    return {key: value.value for key, value in record.asset_materialization.metadata.items()}


def latest_values(instance: dg.DagsterInstance, asset: str, partition: str) -> dict[str, Any] | None:
    """Plain metadata values of the newest materialisation of `asset` for `partition`; None when there is none."""
    record = latest_record(instance, asset, partition)
    return None if record is None else record_values(record)


def latest_metadata(context: dg.AssetExecutionContext, asset: str, partition: str | None = None) -> dict[str, Any]:
    """Plain values of the newest materialisation of `asset` for the partition (default: the context's);
    dg.Failure when there is none."""
    partition = partition or context.partition_key
    values = latest_values(context.instance, asset, partition)
    if values is None:
        raise dg.Failure(f"{asset} has no materialisation for dataset {partition!r}: run the retrain job for it first")
    return values
