"""Reading what an upstream asset recorded for this partition.

Assets pass paths and numbers to each other through their materialisation metadata (the checkpoints and COCO
files live on our own storage roots, not in Dagster's IO manager), read per partition: the instance's
"latest materialisation" ignores partitions.
"""

from __future__ import annotations

from typing import Any

import dagster as dg


def latest_metadata(context: dg.AssetExecutionContext, asset: str, partition: str | None = None) -> dict[str, Any]:
    """Plain values of the newest materialisation of `asset` for the partition; dg.Failure when there is none."""
    partition = partition or context.partition_key
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        raise dg.Failure(f"{asset} has no materialisation for dataset {partition!r}: run the retrain job for it first")
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}
