"""What breaks the moment CUDA is present, proved on the CPU: the same code paths with CUDA reported present
(devices, process group, amp choice, RNG restore), collectives by construction, fp16 with its GradScaler through
a skipped step and a resume across amp settings, and the memory bounds (box bias under activation
checkpointing, evaluation queries and tiled windows in chunks)."""

from __future__ import annotations

import ast
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import Recorder, make_dataset, threads, tiny_config
from vendor_harness import patches_for

import sam3lite_core.distributed as distributed
from sam3lite_core.batch import Batch
from sam3lite_core.data.collator import collate
from sam3lite_core.data.dataset import CocoQueryDataset
from sam3lite_core.eval.evaluate import ground_in_chunks
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.precision import resolve_amp
from sam3lite_core.predictor import WINDOWS_PER_ENCODE, Predictor
from sam3lite_core.train import recipes
from sam3lite_core.train.checkpointer import restore_rng
from sam3lite_core.train.components import build_components
from sam3lite_core.train.loader import loader_settings
from sam3lite_core.train.loop import train, train_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cuda_present(monkeypatch):
    """torch as it looks on a host with `gpus` GPUs (set the count through the returned function)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def with_gpus(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    with_gpus(1)
    yield with_gpus
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's defaults


def test_more_processes_than_gpus_is_refused_with_the_fix(cuda_present):
    cuda_present(2)
    assert distributed.pick_device("auto", 1) == torch.device("cuda", 1)
    assert torch.backends.cuda.matmul.allow_tf32  # fp32 matmuls on a GPU take TF32
    with pytest.raises(ValueError, match=r"torch sees 2 GPU\(s\).*--nproc-per-node 2.*device: cpu"):
        distributed.pick_device("auto", 2)
    assert distributed.pick_device("cpu", 5) == torch.device("cpu")


def test_the_group_takes_cuda_through_nccl_and_cpu_through_gloo(cuda_present, monkeypatch):
    asked = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cuda_present(2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: asked.setdefault("device", device))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: asked.update(backend=backend))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    info = distributed.init_distributed("auto")
    assert asked == {"device": torch.device("cuda", 1), "backend": "cpu:gloo,cuda:nccl"}
    assert info.device == torch.device("cuda", 1) and info.owns_group


def test_a_plain_nccl_group_gets_its_tensors_on_the_gpu(monkeypatch):
    """A group the caller started as plain nccl: every collective here moves its tensor to this GPU first."""
    monkeypatch.setattr(distributed, "_active", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "cpu:gloo,cuda:nccl")
    assert distributed.collective_device() == torch.device("cpu")


def test_only_distributed_py_talks_to_torch_distributed():
    """Collectives by construction: every call goes through distributed.py, which puts tensors on the group's
    device (tests/train_ddp_worker.py checks the devices under a real gloo group)."""
    offenders = []
    for path in sorted((ROOT / "sam3lite_core").rglob("*.py")) + sorted((ROOT / "sam3lite_pipeline").rglob("*.py")):
        if path.name == "distributed.py" and path.parent.name == "sam3lite_core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if (
                module.startswith("torch.distributed")
                or any(n.startswith("torch.distributed") for n in names)
                or (module == "torch" and "distributed" in names)
            ):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("capability", "expected"), [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")]
)
def test_amp_auto_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_amp("auto", "cuda:0") == expected
    assert resolve_amp("auto", "cpu") == "off" and resolve_amp("fp16", "cpu") == "fp16"


def test_cuda_rng_restore_takes_this_gpus_state_whatever_the_saver_had(cuda_present, monkeypatch):
    set_states = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: set_states.append(int(state[0])))
    base = {
        "torch": torch.get_rng_state(),
        "python": [3, list(range(625)), None],
        "numpy": [*np.random.get_state()[:1], torch.zeros(624, dtype=torch.int64), 0, 0, 0.0],
    }
    restore_rng({**base, "cuda": torch.tensor([7], dtype=torch.uint8)})  # ours: this process's GPU only
    restore_rng({**base, "cuda": [torch.tensor([1], dtype=torch.uint8)]})  # older file, fewer GPUs: skipped
    restore_rng({**base, "cuda": [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]})
    assert set_states == [7, 2]


def test_vendor_patches_on_a_gpu_host_keep_pin_memory():
    assert patches_for(cuda_available=True) == {"no_precompute", "coords_follow_the_module"}
    assert patches_for(cuda_available=False) == {"no_precompute", "coords_follow_the_module", "pin_memory_identity"}


def test_vendor_decoder_coordinates_move_with_the_module(vendor):
    """Upstream caches its box-bias coordinates at __init__ on "cuda"; built on the CPU, they follow `.to()`."""
    from vendor_detector import decoder

    from sam3lite_core.model.config import PRESETS

    cfg = PRESETS["tiny"]
    module = decoder(cfg)
    assert module.compilable_cord_cache is not None
    assert all(t.device.type == "cpu" for t in module.compilable_cord_cache)
    module.to("meta")
    assert all(t.device.type == "meta" for t in module.compilable_cord_cache)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_readiness")
    return make_dataset(root / "synth"), root / "runs"


def test_fp16_skips_a_nonfinite_step_and_steps_again(work):
    """GradScaler on the CPU: a skipped step must still update() the scaler, or the next unscale_ raises."""
    dataset, runs = work
    with threads(1):
        c = build_components(tiny_config(dataset, runs, amp="fp16"), distributed.init_distributed("cpu"), None)
        assert c.scaler.is_enabled()
        c.train_data.sampler.set_epoch(0)
        loader = iter(c.train_data.loader)
        broken, good = next(loader)[0], next(loader)[0]
        query = int(torch.nonzero(broken.num_boxes)[0])
        broken.target_boxes[query, 0, 0] = float("nan")
        assert train_step(c, [broken], step=5).skipped
        out = train_step(c, [good], step=6)
    assert not out.skipped and c.optimizer.state


def test_resume_with_fp16_from_a_checkpoint_saved_without_a_scaler(work):
    dataset, runs = work
    with threads(1):
        first = train(tiny_config(dataset, runs, run_name="amp", amp="bf16", max_epochs=1, val_epoch_freq=5))
        recorder = Recorder()
        resumed = train(
            tiny_config(dataset, runs, run_name="amp", amp="fp16", max_epochs=2, val_epoch_freq=5, resume=True),
            recorder,
        )
    assert resumed.steps_done > first.steps_done and resumed.resumed_from_step == first.steps_done
    assert any("no fp16 loss scale" in line and "'bf16'" in line for line in recorder.logs())


def test_checkpointing_rebuilds_the_box_bias_instead_of_keeping_it(monkeypatch):
    """Under activation checkpointing no decoder layer's box bias [Q * heads, 1 + N, HW] outlives its layer."""
    model = build_model("tiny").train()
    decoder = model.transformer.decoder
    biases: list[weakref.ref] = []
    original = decoder._box_rpb

    def recorded(anchors, feat_size):
        bias = original(anchors, feat_size)
        biases.append(weakref.ref(bias))
        return bias

    monkeypatch.setattr(decoder, "_box_rpb", recorded)
    size = model.cfg.vision.image_size
    batch = Batch(
        images=torch.zeros(1, 3, size, size),
        img_ids=torch.zeros(2, dtype=torch.long),
        prompts=["a", "b"],
        prompt_ids=torch.tensor([0, 1]),
    )
    for checkpointing, kept in ((True, 0), (False, len(decoder.layers))):
        decoder.activation_checkpointing = checkpointing
        biases.clear()
        out = model(batch)
        gc.collect()
        assert len(biases) == len(decoder.layers)
        assert sum(ref() is not None for ref in biases) <= kept, "the bias must not be held for backward"
        out["pred_boxes"].sum().backward()


def test_evaluation_grounds_queries_in_chunks_with_the_same_outputs(work):
    dataset, runs = work
    cfg = tiny_config(dataset, runs)
    c = build_components(cfg, distributed.init_distributed("cpu"), None)
    data = CocoQueryDataset(c.data_result.val_json, c.data_result.val_images_root, loader_settings(cfg), train=False)
    batch = collate([data[0], data[1]])
    model = c.model.eval()
    with torch.no_grad():
        whole = model(batch)
        chunked = ground_in_chunks(model, batch, 3)
    assert batch.num_queries > 3
    for key, value in chunked.items():
        torch.testing.assert_close(value, whole[key], atol=1e-5, rtol=1e-5)


def test_tiled_windows_are_encoded_a_few_at_a_time():
    predictor = Predictor(build_model("tiny"))
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64 * 3), dtype=np.uint8)[..., None].repeat(3, -1)
    windows = torch.tensor([[x, 0, x + 64, 64] for x in range(0, 64 * 2 + 1, 12)])  # 11 windows
    assert len(windows) > WINDOWS_PER_ENCODE
    features = predictor._encode(pixels, windows)
    one_by_one = [predictor._encode(pixels, windows[i : i + 1]) for i in range(len(windows))]
    torch.testing.assert_close(features.features, torch.cat([f.features for f in one_by_one]), atol=1e-5, rtol=1e-5)
    assert features.pos.shape == features.features.shape


def test_a_batch_pins_every_tensor(monkeypatch):
    """DataLoader(pin_memory=True) pins a custom batch type only through its own pin_memory()."""
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self.shape) or self.clone())
    batch = Batch(
        images=torch.zeros(1, 3, 4, 4),
        img_ids=torch.zeros(2, dtype=torch.long),
        prompts=["a"],
        prompt_ids=torch.zeros(2, dtype=torch.long),
        orig_sizes=torch.ones(2, 2, dtype=torch.long),
    )
    out = batch.pin_memory()
    assert len(pinned) == 4 and isinstance(out, Batch) and out.prompts == ["a"]


def test_evaluation_asset_measures_at_the_runs_amp(tmp_path):
    from sam3lite_pipeline.assets.evaluation import run_amp

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("amp: fp16\npreset: tiny\n")
    assert run_amp(str(run / "checkpoints" / "export.ckpt")) == "fp16"
    assert run_amp(str(tmp_path / "elsewhere.ckpt")) == "auto"
    (run / "config.yaml").write_bytes(b"amp: \xff\xfe\n")
    assert run_amp(str(run / "checkpoints" / "export.ckpt")) == "auto"


def test_demo_and_bench_take_one_process_per_gpu(cuda_present, monkeypatch):
    for gpus, processes in ((1, 1), (2, 2), (3, 2), (8, 8), (12, 8)):
        cuda_present(gpus)
        assert recipes.processes_for_host() == processes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert recipes.processes_for_host() == min(recipes.CPU_FROM_SCRATCH_PROCESSES, __import__("os").cpu_count())


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_on_gpu_a_nonfinite_step_is_skipped_in_every_amp(work, amp):
    dataset, runs = work
    c = build_components(tiny_config(dataset, runs, amp=amp, device="cuda"), distributed.init_distributed("cuda"), None)
    c.train_data.sampler.set_epoch(0)
    loader = iter(c.train_data.loader)
    broken, good = next(loader)[0], next(loader)[0]
    broken.target_boxes[int(torch.nonzero(broken.num_boxes)[0]), 0, 0] = float("nan")
    assert not train_step(c, [good], step=5).skipped
    assert train_step(c, [broken], step=6).skipped
    assert not train_step(c, [good], step=7).skipped
    assert next(c.model.parameters()).device.type == "cuda"


@pytest.mark.cuda
@needs_gpu
def test_on_gpu_prediction_and_evaluation_run_on_the_device(work):
    from sam3lite_core.eval.evaluate import evaluate

    dataset, runs = work
    c = build_components(tiny_config(dataset, runs, device="cuda"), distributed.init_distributed("cuda"), None)
    result = evaluate(c.model, c.val.coco_json, c.val.images_root, amp="bf16")
    assert len(result.stats) == 12
    predictor = Predictor(c.model, precision="bf16")
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    assert len(predictor.predict(image, ["red circle", "blue square"])[0]) == 2
