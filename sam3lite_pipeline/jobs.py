"""The five jobs: `retrain` (the whole graph with its gates), `train` (validate, convert, train, evaluate; no
activation: what the backend's training-job API starts), `convert` (validate and convert), `evaluate` (a chosen
checkpoint, default the latest trained one, on a dataset's val set), `activate` (a chosen checkpoint, or
`rollback: true`). Each runs one dataset partition: tag `dagster/partition` = the dataset id."""

import dagster as dg

ASSETS = ["staged_dataset", "coco_dataset", "trained_model", "evaluation", "active_checkpoint"]

retrain = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets(*ASSETS),
    description="validate, convert, train, evaluate and (when the gates pass) activate one dataset",
)
train = dg.define_asset_job(
    "train",
    selection=dg.AssetSelection.assets(*ASSETS[:4]),
    description="validate, convert, train and evaluate one dataset without activating (the backend's training "
    "jobs): the gates are reported as warnings, the checkpoint is activated by hand",
)
convert = dg.define_asset_job(
    "convert",
    selection=dg.AssetSelection.assets(*ASSETS[:2]),
    description="validate and convert one dataset to COCO (cached by content and split settings)",
)
# Jobs whose evaluation gates report without failing the run: nothing in them activates the candidate.
ADVISORY_GATES = frozenset({"train"})
evaluate = dg.define_asset_job(
    "evaluate",
    selection=dg.AssetSelection.assets("evaluation"),
    description="COCO mAP of a checkpoint (ops.evaluation.config.checkpoint; default the latest trained_model) "
    "on the dataset's val split, beside its incumbent",
)
activate = dg.define_asset_job(
    "activate",
    selection=dg.AssetSelection.assets("active_checkpoint"),
    description="activate ops.active_checkpoint.config.checkpoint, or roll back (config rollback: true) to the "
    "dataset's previous incumbent; confirmed by one inference through the backend",
)
