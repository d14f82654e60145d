"""The asset graph through real Dagster: the whole `retrain` job on a tiny synthetic dataset in an
`instance_for_test`, training through the Pipes launcher in a child process, then the gates, the evaluate and
activate jobs, rollback, and the `tator` backend mode against the real inference service on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from pipeline_harness import (
    DATASET,
    checks,
    metadata,
    pipeline_defs,
    run_job,
    stage,
    train_config,
    training_processes,
)
from serve_harness import TOKEN, Server

from sam3lite_core.serve.state import NO_MODEL, POINTER_NAME, ModelState
from sam3lite_pipeline.definitions import defs
from sam3lite_pipeline.ops.backend import LocalBackend
from sam3lite_pipeline.ops.history import Activation, History
from sam3lite_pipeline.resources import Backend, Gates, TrainLauncher

# The graph a user sees in the UI: asset -> (upstream assets, checks). A change here is a change for users.
GRAPH = {
    "staged_dataset": ([], []),
    "coco_dataset": (["staged_dataset"], ["coco_valid"]),
    "trained_model": (["coco_dataset"], ["dataset_unchanged"]),
    "evaluation": (["trained_model"], ["map_floor", "no_regression"]),
    "active_checkpoint": (["evaluation"], ["inference_confirmed"]),
}
BLOCKING = {"coco_valid", "dataset_unchanged", "map_floor", "no_regression", "inference_confirmed"}


def test_definitions_snapshot():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    snapshot = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        checks_of = sorted(c.name for c in node.check_keys)
        snapshot[key.path[-1]] = (sorted(k.path[-1] for k in node.parent_keys), checks_of)
        assert node.partitions_def is not None and node.partitions_def.name == "datasets"
    assert snapshot == GRAPH
    blocking = {spec.name for a in defs.assets for spec in a.check_specs if spec.blocking}
    assert blocking == BLOCKING
    assert graph.get(dg.AssetKey("trained_model")).pools == {"gpu"}
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"retrain", "evaluate", "activate"}
    assert set(defs.resources) == {"storage", "launcher", "gates", "backend"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One whole `retrain` run of the small preset (at 112 px, one epoch); the dataset's sam3lite.yaml sets the
    val split and a field the run config does not (hflip_prob) to show the layers."""
    home = tmp_path_factory.mktemp("pipeline")
    dataset = stage(home)
    (dataset / "sam3lite.yaml").write_text("hflip_prob: 0.25\nmax_epochs: 5\n")
    definitions = pipeline_defs(home)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("datasets", [DATASET])
        result = run_job(definitions, "retrain", instance, train_config(preset="small", resolution=112))
        yield home, definitions, instance, result


def test_retrain_runs_the_whole_graph_through_pipes(trained):
    home, _, instance, result = trained
    assert result.success
    assert checks(result) == dict.fromkeys(
        ["coco_valid", "dataset_unchanged", "map_floor", "no_regression", "inference_confirmed"], True
    )
    staged, coco, model = (metadata(result, a) for a in ("staged_dataset", "coco_dataset", "trained_model"))
    assert staged["images"] == 12 and len(staged["signature"]) == 64 and "red circle" in staged["per_class"]
    assert coco["signature"] == staged["signature"] and coco["train_images"] == 10
    assert model["dataset_signature"] == staged["signature"] and model["dataset_changed"] is False
    assert model["epochs"] == 1  # the run config (max_epochs 1) beats the dataset's sam3lite.yaml (5)
    run_dir = Path(model["run_dir"])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["hflip_prob"] == 0.25 and saved["max_epochs"] == 1 and saved["dataset"].endswith(DATASET)
    assert saved["preset"] == "small"
    assert Path(model["checkpoint"]).name == "export.ckpt" and Path(model["plot_loss"]).is_file()
    assert "![loss](data:image/png;base64," in model["plots"]
    assert "| 1 |" in model["epochs_table"]

    # Training ran in a child process that reported over Pipes, and is gone.
    assert model["training_pid"] not in (None, 0) and not training_processes()
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.step_key == "trained_model"]
    assert any("successfully opened dagster pipes" in m for m in messages)
    assert any(m.startswith("validation after epoch 1/1: AP ") for m in messages)
    assert any(m.startswith("epoch 1/1 done at step 5") for m in messages)
    # Per-epoch lines and progress in tenths, not a line per step.
    assert sum(m.startswith("progress ") for m in messages) <= 11

    evaluation = metadata(result, "evaluation")
    assert {"AP", "AP50", "ARl"} <= set(evaluation) and evaluation["checkpoint"] == model["checkpoint"]
    assert "| red circle |" in evaluation["per_class"]
    active = metadata(result, "active_checkpoint")
    assert active["checkpoint"] == model["checkpoint"] and active["action"] == "activate"
    pointer = json.loads((home / "runs" / POINTER_NAME).read_text())
    assert pointer["checkpoint"] == model["checkpoint"] and pointer["source"] == "custom"
    incumbent = History(home / "runs").incumbent(DATASET)
    assert incumbent.checkpoint == model["checkpoint"] and incumbent.val_set == evaluation["val_set"]


def _state(home: Path) -> tuple[str, list[Activation]]:
    return (home / "runs" / POINTER_NAME).read_text(), History(home / "runs").entries()


def _pointed_model(pointer: str) -> dict:
    """The pointer file's model without `activated_at`, which a restore writes anew."""
    return {k: v for k, v in json.loads(pointer).items() if k != "activated_at"}


def test_impossible_floor_stops_activation(trained):
    home, definitions, instance, _ = trained
    before = _state(home)
    strict = pipeline_defs(home, gates=Gates(map_floor=1.0))
    result = run_job(strict, "evaluate", instance)
    assert not result.success and checks(result)["map_floor"] is False
    # In retrain the failed blocking check skips activation: the same evaluation then active_checkpoint.
    gated = strict.resolve_job_def("retrain").execute_in_process(
        instance=instance,
        partition_key=DATASET,
        raise_on_error=False,
        asset_selection=[dg.AssetKey("evaluation"), dg.AssetKey("active_checkpoint")],
    )
    assert not gated.success and checks(gated)["map_floor"] is False
    assert "active_checkpoint" not in {e.asset_key.path[-1] for e in gated.get_asset_materialization_events()}
    assert _state(home) == before


def test_regression_against_the_incumbent_is_refused(trained):
    home, definitions, instance, result = trained
    evaluation = metadata(result, "evaluation")
    history = History(home / "runs")
    # An incumbent (another checkpoint) that scored far higher on this very val set.
    copy = home / "runs" / "better" / "checkpoints" / "export.ckpt"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(history.incumbent(DATASET).checkpoint, copy)
    history.record(history.incumbent(DATASET).model_copy(update={"checkpoint": str(copy), "value": 0.99}))
    before = _state(home)
    gated = definitions.resolve_job_def("retrain").execute_in_process(
        instance=instance,
        partition_key=DATASET,
        raise_on_error=False,
        asset_selection=[dg.AssetKey("evaluation"), dg.AssetKey("active_checkpoint")],
    )
    assert not gated.success
    assert checks(gated) == {"map_floor": True, "no_regression": False}
    assert metadata(gated, "evaluation")["incumbent_value"] == 0.99
    assert metadata(gated, "evaluation")["val_set"] == evaluation["val_set"]
    assert _state(home) == before
    rolled = run_job(definitions, "activate", instance, {"ops": {"active_checkpoint": {"config": {"rollback": True}}}})
    assert rolled.success  # undo the fabricated incumbent for the next tests


def test_activate_a_chosen_checkpoint_then_roll_back(trained):
    home, definitions, instance, result = trained
    first = metadata(result, "trained_model")["checkpoint"]
    second = run_job(definitions, "retrain", instance, train_config(seed=7))
    assert second.success
    newer = metadata(second, "trained_model")["checkpoint"]
    assert newer != first and History(home / "runs").incumbent(DATASET).checkpoint == newer

    pick = {"ops": {"active_checkpoint": {"config": {"checkpoint": first, "label": "picked"}}}}
    manual = run_job(definitions, "activate", instance, pick)
    assert manual.success and checks(manual) == {"inference_confirmed": True}
    assert json.loads((home / "runs" / POINTER_NAME).read_text())["id"] == "picked"

    back = run_job(definitions, "activate", instance, {"ops": {"active_checkpoint": {"config": {"rollback": True}}}})
    assert back.success
    assert json.loads((home / "runs" / POINTER_NAME).read_text())["checkpoint"] == newer
    assert History(home / "runs").incumbent(DATASET).checkpoint == newer
    assert [e.action for e in History(home / "runs").entries(DATASET)][-2:] == ["manual", "rollback"]


def test_a_checkpoint_the_service_cannot_load_fails_the_confirmation_and_is_rolled_back(trained):
    home, definitions, instance, _ = trained
    before = _state(home)
    serving = ModelState(home / "runs")  # a running `sam3lite serve` following the pointer file
    assert serving.current().active.checkpoint == json.loads(before[0])["checkpoint"]
    broken = home / "runs" / "broken" / "checkpoints" / "export.ckpt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    pick = {"ops": {"active_checkpoint": {"config": {"checkpoint": str(broken)}}}}
    refused = run_job(definitions, "activate", instance, pick)
    assert not refused.success and checks(refused) == {"inference_confirmed": False}
    assert not [e for e in refused.get_asset_materialization_events() if e.asset_key.path == ["active_checkpoint"]]
    failure = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error.message
    assert str(broken) in failure and "restored" in failure
    assert _pointed_model(_state(home)[0]) == _pointed_model(before[0]) and _state(home)[1] == before[1]
    assert serving.current().active.checkpoint == json.loads(before[0])["checkpoint"]
    local = LocalBackend(home / "runs")
    listed = local.list_models()
    assert [m["path"] for m in listed if str(m["key"]).startswith("active:")] == [json.loads(before[0])["checkpoint"]]
    # Restoring "nothing was active" must move a running service off the checkpoint too, not just delete the file.
    local.restore(None)
    assert serving.current().active == NO_MODEL and serving.current().predictor is None
    (home / "runs" / POINTER_NAME).write_text(before[0])


def test_evaluate_job_on_a_chosen_checkpoint(trained):
    home, definitions, instance, result = trained
    chosen = metadata(result, "trained_model")["last_checkpoint"]
    evaluated = run_job(definitions, "evaluate", instance, {"ops": {"evaluation": {"config": {"checkpoint": chosen}}}})
    assert evaluated.success and metadata(evaluated, "evaluation")["checkpoint"] == chosen


def test_tator_mode_against_the_real_inference_service(trained):
    home, _, instance, result = trained
    checkpoint = metadata(result, "trained_model")["checkpoint"]
    server = Server(home / "runs")
    try:
        backend = Backend(mode="tator", url=server.url, token=TOKEN, retries=1, backoff_s=0.1)
        definitions = pipeline_defs(home, backend=backend)
        pick = {"ops": {"active_checkpoint": {"config": {"checkpoint": checkpoint, "label": "via-http"}}}}
        activated = run_job(definitions, "activate", instance, pick)
        assert activated.success and checks(activated) == {"inference_confirmed": True}
        listed = server.client.get("/sam3/models").json()
        assert {"key": f"active:{checkpoint}", "active": True}.items() <= listed[1].items()
        assert listed[1]["id"] == "via-http"

        wrong = pipeline_defs(home, backend=Backend(mode="tator", url=server.url, token="wrong", retries=1))
        refused = run_job(wrong, "activate", instance, pick)
        assert not refused.success
        failure = next(e for e in refused.all_events if e.is_step_failure).step_failure_data.error.message
        assert "401" in failure and "wrong" not in failure and TOKEN not in failure
    finally:
        server.stop()
    unreachable = pipeline_defs(home, backend=Backend(mode="tator", url=server.url, retries=1, backoff_s=0.05))
    down = run_job(unreachable, "activate", instance, pick)
    failure = next(e for e in down.all_events if e.is_step_failure).step_failure_data.error.message
    assert "cannot be reached" in failure


def test_bad_training_config_fails_before_launch(trained):
    home, definitions, instance, _ = trained
    bad = definitions.resolve_job_def("retrain").execute_in_process(
        instance=instance,
        partition_key=DATASET,
        raise_on_error=False,
        run_config=train_config(resolution=100),
        asset_selection=[dg.AssetKey("trained_model")],
    )
    failure = next(e for e in bad.all_events if e.is_step_failure).step_failure_data.error.message
    assert "run config ops.trained_model.config: resolution" in failure and "use 98 or 112" in failure
    assert not training_processes()
    # Names, types and choices are checked by Dagster when the run is launched (launchpad, GraphQL, CLI).
    for wrong, field in (
        ({"not_a_field": 1}, "not_a_field"),
        ({"preset": "huge"}, "preset"),
        ({"max_epochs": "ten"}, "max_epochs"),
    ):
        with pytest.raises(dg.DagsterInvalidConfigError, match=field):
            run_job(definitions, "retrain", instance, train_config(**wrong))


def test_training_failure_shows_the_last_lines(trained, tmp_path):
    home, definitions, instance, _ = trained
    broken = run_job(definitions, "retrain", instance, train_config(init_checkpoint=str(tmp_path / "missing.pt")))
    failure = next(e for e in broken.all_events if e.is_step_failure)
    assert failure.step_key == "trained_model"
    message = failure.step_failure_data.error.message
    assert "training exited with code 1" in message and "missing.pt" in message
    assert not training_processes()


def test_wall_clock_limit_stops_the_whole_tree(trained):
    home, _, instance, _ = trained
    limited = pipeline_defs(home, launcher=TrainLauncher(wall_clock_limit_minutes=0.1, termination_grace_s=5))
    result = limited.resolve_job_def("retrain").execute_in_process(
        instance=instance,
        partition_key=DATASET,
        raise_on_error=False,
        run_config=train_config(max_epochs=500),
        asset_selection=[dg.AssetKey("trained_model")],
    )
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "wall-clock limit of 0.1 min" in failure
    assert not training_processes()


def test_dataset_edited_during_training_is_marked_and_not_activated(trained):
    home, definitions, instance, _ = trained
    dataset = stage(home, "edited")
    instance.add_dynamic_partitions("datasets", ["edited"])
    before = _state(home)

    def edit_once_training_runs() -> None:
        # After the first logged step: the run has signed and loaded the dataset by then.
        deadline = time.monotonic() + 120
        while not list((home / "runs").glob("edited-*/metrics.csv")) and time.monotonic() < deadline:
            time.sleep(0.05)
        label = next((dataset / "train" / "labels").glob("*.txt"))
        label.write_text(label.read_text() + "1 0.5 0.5 0.3 0.3\n")

    editor = threading.Thread(target=edit_once_training_runs)
    editor.start()
    result = run_job(definitions, "retrain", instance, train_config(max_epochs=2), dataset="edited")
    editor.join()
    assert not result.success
    assert checks(result) == {"coco_valid": True, "dataset_unchanged": False}
    model = metadata(result, "trained_model")
    assert model["dataset_changed"] is True and model["dataset_signature"] == "changed during training"
    version = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.path == ["trained_model"]
    ).materialization.tags["dagster/data_version"]
    assert version.startswith("changed-during-")
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == {
        "staged_dataset",
        "coco_dataset",
        "trained_model",
    }
    assert _state(home) == before and History(home / "runs").incumbent("edited") is None
