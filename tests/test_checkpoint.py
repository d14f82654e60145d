"""Checkpoint I/O: every layout SAM3 weights come in loads, bad files fail loudly, our files are safe to read."""

from __future__ import annotations

import gc
import os
import pickle
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import vendor_harness
from reference_keys import reference_keys

import bpe
from sam3lite_core import weights as ckpt
from sam3lite_core.batch import Batch
from sam3lite_core.model.config import PRESETS
from sam3lite_core.model.rope import block_rope
from sam3lite_core.model.sam3lite import build_model
from sam3lite_core.weights import (
    FORMAT,
    checkpoint_model_config,
    export_weights,
    load_checkpoint,
    normalize_keys,
    read_checkpoint,
    save_checkpoint,
)

TINY = PRESETS["tiny"]
GLOBAL_ROPE = "backbone.vision_backbone.trunk.blocks.1.attn.freqs_cis"  # tiny: block 1 is global


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_released_key_layout_maps_onto_the_model() -> None:
    keys = reference_keys("sam3_released_checkpoint_keys.tsv")
    released = {k: torch.empty(shape, device="meta") for k, shape in keys}
    weights, ignored = normalize_keys({"module." + k: v for k, v in released.items()})
    model_keys = build_model("sam3", device="meta").state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in model_keys.items()}
    assert len(ignored) == 309 + 28 + 22  # tracker, segmentation head, SAM2 neck


def test_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(_tiny_batch())["pred_logits"].sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "last.ckpt", model, optimizer=optimizer.state_dict(), step=7, metrics={"ap": 0.5})

    assert files_in(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable by a backend running as another user
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["step"] == 7
    assert all(k.startswith("detector.") for k in raw["model"])
    assert checkpoint_model_config(raw) == TINY

    restored = tiny_model(seed=1)
    report = load_checkpoint(restored, path)
    assert_same_weights(model, restored)
    assert (report.missing, report.unexpected, report.mismatched, report.ignored) == ([], [], [], [])
    assert report.matched_fraction == 1.0
    torch.optim.AdamW(restored.parameters(), lr=1e-3).load_state_dict(raw["optimizer"])


def _layouts(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    detector = {"detector." + k: v for k, v in state.items()}
    released = detector | {
        "tracker.maskmem_backbone.mask_downsampler.encoder.0.weight": torch.zeros(4, 1, 3, 3),
        "detector.segmentation_head.pixel_decoder.conv_layers.0.weight": torch.zeros(2, 2, 3, 3),
        "detector.backbone.vision_backbone.sam2_convs.2.conv_1x1.weight": torch.zeros(32, 64, 1, 1),
    }
    return {
        "ours": {"model": detector, "format": FORMAT},
        "released_flat": released,
        "released_under_model": {"model": released},
        "trainer": {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
        "ddp": {"module." + k: v for k, v in state.items()},
        "ddp_trainer": {"model": {"module." + k: v for k, v in state.items()}},
    }


@pytest.mark.parametrize("layout", ["ours", "released_flat", "released_under_model", "trainer", "ddp", "ddp_trainer"])
def test_every_layout_loads(tmp_path: Path, layout: str) -> None:
    source = tiny_model()
    data = _layouts(source.state_dict())[layout]
    torch.save(data, tmp_path / "in.pt")
    for given in (tmp_path / "in.pt", data):
        target = tiny_model(seed=1)
        report = load_checkpoint(target, given)
        assert_same_weights(source, target)
        assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
        assert len(report.ignored) == (3 if layout.startswith("released") else 0)


def test_rope_tables_follow_the_model_resolution(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "a.ckpt", tiny_model())
    other = build_model(TINY.with_resolution(140))  # 10 x 10 tokens instead of 8 x 8
    report = load_checkpoint(other, path)
    assert report.rope_resized == [GLOBAL_ROPE] and not report.mismatched
    assert torch.equal(other.state_dict()[GLOBAL_ROPE], block_rope(other.cfg.vision, 1))


def test_sam3_preset_exports_1008_px_rope_tables(tmp_path: Path) -> None:
    # The rule keys on the preset name; tiny dims keep this cheap (the slow test below runs the real model).
    named_sam3 = replace(TINY, name="sam3").with_resolution(140)
    path = export_weights(build_model(named_sam3), tmp_path / "export.ckpt")
    table = read_checkpoint(path)["model"]["detector." + GLOBAL_ROPE]
    assert table.shape == (72 * 72, 16)
    assert torch.equal(table, block_rope(named_sam3.with_resolution(1008).vision, 1))


def test_checkpoint_for_another_model_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "tiny.ckpt", tiny_model())
    with pytest.raises(ValueError, match=r"matches only \d+ of the model's \d+ weights.*saved for model config 'tiny'"):
        load_checkpoint(build_model("small"), path)


def test_too_few_matching_keys_is_refused_unless_allowed() -> None:
    state = tiny_model().state_dict()
    partial = dict(list(state.items())[: len(state) // 2])
    with pytest.raises(ValueError, match=r"matches only \d+ of the model's \d+ weights .* \d+ missing"):
        load_checkpoint(tiny_model(seed=1), partial)
    report = load_checkpoint(tiny_model(seed=1), partial, min_fraction=0.4)
    assert report.missing and len(report.loaded) + len(report.missing) == report.num_model_keys


def test_unreadable_files_fail_clearly(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path / "good.ckpt", tiny_model())
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "garbage.ckpt").write_bytes(b"this is not a checkpoint" * 10)
    (tmp_path / "pickled.ckpt").write_bytes(pickle.dumps({"model": np.zeros(3)}, protocol=2))
    for name in ("truncated.ckpt", "garbage.ckpt", "pickled.ckpt"):
        with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
            load_checkpoint(tiny_model(), tmp_path / name)
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "no_weights.ckpt")
    with pytest.raises(ValueError, match="holds no model weights"):
        load_checkpoint(tiny_model(), tmp_path / "no_weights.ckpt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tiny_model(), tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="meta device"):
        load_checkpoint(build_model(TINY, device="meta"), good)


def test_save_refuses_what_weights_only_cannot_read(tmp_path: Path) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match=r"metrics\['ap'\] is a float64"):
        save_checkpoint(tmp_path / "x.ckpt", model, metrics={"ap": np.float64(0.5)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.ckpt", model, model_config={})
    assert files_in(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(tmp_path / "last.ckpt", tiny_model(), step=1)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_model(), step=2)
    monkeypatch.undo()
    assert files_in(tmp_path) == ["last.ckpt"]
    assert read_checkpoint(path)["step"] == 1


def test_export_weights(tmp_path: Path) -> None:
    model = tiny_model()
    last = save_checkpoint(tmp_path / "last.ckpt", model, optimizer={"state": {}, "param_groups": []}, step=5)
    for source in (last, read_checkpoint(last), model):
        out = export_weights(source, tmp_path / "export.ckpt")
        exported = torch.load(out, map_location="cpu", weights_only=True)
        assert sorted(exported) == ["format", "model", "model_config"]
        restored = tiny_model(seed=1)
        load_checkpoint(restored, exported)
        assert_same_weights(model, restored)
    torch.save({"model": model.state_dict()}, tmp_path / "upstream.pt")
    with pytest.raises(ValueError, match="not a sam3lite/1 checkpoint"):
        export_weights(tmp_path / "upstream.pt", tmp_path / "out.ckpt")


@pytest.mark.slow
def test_sam3_export_loads_into_the_upstream_builder(vendor, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Built at 504 px: the export must still carry the 1008-px RoPE tables the upstream builder expects.
    torch.manual_seed(0)
    path = export_weights(build_model(PRESETS["sam3"].with_resolution(504)), tmp_path / "export.ckpt")
    gc.collect()  # one 4 GiB model at a time
    builder = vendor_harness.vendor_class("sam3.model_builder", "build_sam3_image_model")
    theirs = builder(
        bpe_path=str(bpe.vocab_path()),
        device="cpu",
        eval_mode=True,
        checkpoint_path=str(path),
        load_from_HF=False,
        enable_segmentation=False,
    )
    assert "missing" not in capsys.readouterr().out  # upstream prints missing keys, and only then
    exported = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
    their_state = theirs.state_dict()
    assert sorted("detector." + k for k in their_state) == sorted(exported)
    assert all(torch.equal(v, exported["detector." + k]) for k, v in their_state.items())


def _tiny_batch() -> Batch:
    return Batch(
        images=torch.randn(1, 3, TINY.vision.image_size, TINY.vision.image_size),
        img_ids=torch.tensor([0]),
        prompts=["cat"],
        prompt_ids=torch.tensor([0]),
    )


def test_a_full_checkpoint_is_mapped_and_becomes_the_weights_without_a_copy(tmp_path) -> None:
    source = tiny_model(3)
    path = save_checkpoint(tmp_path / "full.ckpt", source)
    raw = read_checkpoint(path, mmap=True)
    model, report = ckpt.build_loaded(TINY, raw)
    assert report.missing == [] and len(report.loaded) == report.num_model_keys
    assert_same_weights(model, source)  # RoPE tables recomputed on the CPU, equal to a built model's
    first = "backbone.vision_backbone.trunk.patch_embed.proj.weight"
    mapped = raw["model"][ckpt.DETECTOR_PREFIX + first]
    assert model.state_dict()[first].data_ptr() == mapped.data_ptr()  # the file's tensor itself, not a copy
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    size = TINY.vision.image_size
    batch = Batch(torch.rand(1, 3, size, size), torch.zeros(1, dtype=torch.long), ["a"], torch.arange(1))
    with torch.no_grad():
        assert torch.equal(model.eval()(batch)["pred_logits"], source.eval()(batch)["pred_logits"])


def test_partial_bf16_and_legacy_checkpoints_still_load(tmp_path) -> None:
    source = tiny_model(4)
    weights = {k: v if v.is_complex() else v.to(torch.bfloat16) for k, v in source.state_dict().items()}
    model, _ = ckpt.build_loaded(TINY, weights)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # converted to the model's dtype
    dropped = "scoring.presence_head.weight"
    partial = {k: v for k, v in source.state_dict().items() if not k.endswith(dropped)}
    model, report = ckpt.build_loaded(TINY, partial)
    assert [k for k in report.missing] == [k for k in source.state_dict() if k.endswith(dropped)]
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": source.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    assert_same_weights(ckpt.build_loaded(TINY, read_checkpoint(legacy, mmap=True))[0], source)
