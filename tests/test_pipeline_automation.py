"""The dataset sensor and the nightly schedule, evaluated the way the daemon does (real instance, cursor
round-trips), over datasets written and edited on disk."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pytest
from pipeline_harness import storage
from train_helpers import make_dataset

from sam3lite_core.data.signature import dataset_signature
from sam3lite_pipeline.schedules import nightly_retrain, standing_config_hash
from sam3lite_pipeline.sensors import dataset_sensor


def tick(instance, home, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage(home)})
    result = dataset_sensor(context)
    if result.dynamic_partitions_requests:
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def trained(instance, dataset, **metadata):
    instance.report_runless_asset_event(dg.AssetMaterialization("trained_model", partition=dataset, metadata=metadata))


@pytest.fixture
def home(tmp_path):
    make_dataset(tmp_path / "datasets" / "a", images=6)
    return tmp_path


def test_sensor_adds_partitions_and_requests_retrains_once_stable(home):
    with dg.instance_for_test() as instance:
        first = tick(instance, home, None)
        assert not first.run_requests and "waiting for a" in first.skip_reason.skip_message
        second = tick(instance, home, first.cursor)
        sig = dataset_signature(home / "datasets" / "a")
        assert [(r.partition_key, r.run_key) for r in second.run_requests] == [("a", f"a:{sig}")]
        assert instance.get_dynamic_partitions("datasets") == ["a"]
        third = tick(instance, home, second.cursor)
        assert not third.run_requests and "nothing new" in third.skip_reason.skip_message

        # An edit: the fingerprint moves, the sensor waits a tick, then asks for the new signature.
        label = next((home / "datasets" / "a" / "train" / "labels").glob("*.txt"))
        label.write_text("0 0.5 0.5 0.2 0.2\n")
        moved = tick(instance, home, third.cursor)
        assert not moved.run_requests
        settled = tick(instance, home, moved.cursor)
        new_sig = dataset_signature(home / "datasets" / "a")
        assert new_sig != sig and [r.run_key for r in settled.run_requests] == [f"a:{new_sig}"]


def test_sensor_waits_for_copies_and_ignores_staging_folders(home):
    with dg.instance_for_test() as instance:
        cursor = tick(instance, home, None).cursor
        cursor = tick(instance, home, cursor).cursor  # "a" requested
        shutil.copytree(home / "datasets" / "a", home / "datasets" / ".incoming")
        make_dataset(home / "datasets" / "b", images=6)
        grow = home / "datasets" / "b" / "train" / "labels" / "extra.txt"
        for n in range(3):  # still being written at every tick
            grow.write_text("0 0.5 0.5 0.1 0.1\n" * (n + 1))
            result = tick(instance, home, cursor)
            cursor = result.cursor
            assert not result.run_requests
        done = tick(instance, home, cursor)
        assert [r.partition_key for r in done.run_requests] == ["b"]
        assert ".incoming" not in json.loads(done.cursor)


def test_sensor_skips_data_already_trained_and_survives_a_broken_dataset(home):
    (home / "datasets" / "broken").mkdir()
    (home / "datasets" / "broken" / "readme.txt").write_text("not a dataset yet")
    with dg.instance_for_test() as instance:
        trained(instance, "a", dataset_signature=dataset_signature(home / "datasets" / "a"))
        first = tick(instance, home, None)
        second = tick(instance, home, first.cursor)
        assert not second.run_requests  # trained on exactly this data already
        third = tick(instance, home, second.cursor)
        assert "not usable yet: broken (" in third.skip_reason.skip_message
        assert instance.get_dynamic_partitions("datasets") == ["a"]

        # Once it becomes a dataset, the next settled tick picks it up.
        shutil.rmtree(home / "datasets" / "broken")
        make_dataset(home / "datasets" / "broken", images=6)
        moved = tick(instance, home, third.cursor)
        fixed = tick(instance, home, moved.cursor)
        assert [r.partition_key for r in fixed.run_requests] == ["broken"]


def test_schedule_retrains_only_what_changed(home):
    roots = storage(home)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("datasets", ["a"])
        context = dg.build_schedule_context(instance=instance, resources={"storage": roots})
        (request,) = nightly_retrain(context)
        assert request.partition_key == "a" and request.tags["sam3lite/changed"] == "never trained"

        sig = dataset_signature(home / "datasets" / "a")
        trained(instance, "a", dataset_signature=sig, config_hash=standing_config_hash(roots, "a"))
        skipped = nightly_retrain(dg.build_schedule_context(instance=instance, resources={"storage": roots}))
        assert isinstance(skipped, dg.SkipReason) and "unchanged since their last training: a" in skipped.skip_message

        (home / "datasets" / "a" / "sam3lite.yaml").write_text("max_epochs: 3\n")
        (changed,) = nightly_retrain(dg.build_schedule_context(instance=instance, resources={"storage": roots}))
        assert changed.tags["sam3lite/changed"] == "config"

        trained(instance, "a", dataset_signature=sig, config_hash=standing_config_hash(roots, "a"))
        label = next((home / "datasets" / "a" / "train" / "labels").glob("*.txt"))
        label.write_text("0 0.5 0.5 0.2 0.2\n")
        (edited,) = nightly_retrain(dg.build_schedule_context(instance=instance, resources={"storage": roots}))
        assert edited.tags["sam3lite/changed"] == "data"
        assert edited.run_key.startswith(f"a:{dataset_signature(home / 'datasets' / 'a')}:")


def test_schedule_hash_matches_what_training_records(home):
    """The hash the schedule compares is the one a retrain without run config records (TrainResult)."""
    from sam3lite_core.train.config import TrainConfig

    roots = storage(home)
    dataset = home / "datasets" / "a"
    recorded = TrainConfig.parse(
        {
            "dataset": str(dataset),
            "runs_root": str(home / "runs"),
            "run_name": "r1",
            "cache_dir": str(home / "cache"),
            "num_gpus": 2,
            "device": "cpu",
            "val_percent": 0.2,
            "split_seed": 42,
        }
    ).resolved_hash()
    assert standing_config_hash(roots, "a") == recorded
