"""Memory of full-size SAM3 fine-tuning: loading the weights, and a 1008 px training step at batch 1.

    .venv/bin/python bench/bench_train_memory.py [--setting NAME ...] [--steps N] [--device cpu|cuda]
        [--cap-gib G] [--no-vendor] [--preset sam3] [--resolution 1008]

Every setting runs in a fresh process (its peak is its own), watched by an RSS watchdog that stops it at
--cap-gib (recorded as "over the cap"). The weights are one `sam3`-sized checkpoint written once per run (random
values; the released sam3.pt has the same keys and shapes), so loading is measured on a real 3.1 GiB file.

Settings (one RESULT line each):
  load_memory                     ours: `weights.load_model` (the file's tensors assigned into a meta-built
                                  model), then every weight read once; baseline: the copying load it replaced
                                  (random init, torch.load, load_state_dict) with the same read. ours = the
                                  peak RSS in GiB; `model_gib` is the weights' own size, `process_gib` the
                                  resident set before loading (interpreter, torch), and `x_model` =
                                  (peak - process_gib) / model_gib, the load's cost in models.
  train_memory_all                `--steps` optimiser steps (default 2) of `train.loop.train_step` on the real
  train_memory_frozen_text        training components: the `sam3` preset at 1008 px initialised from the
  train_memory_frozen_text_trunk  checkpoint, batch 1 (one synthetic image: its classes are the prompts, its
                                  shapes the boxes), bf16 autocast, no EMA, activation checkpointing on (the
                                  preset's default); nothing frozen / the text encoder frozen (features cached,
                                  weights released) / the text encoder and the ViT trunk frozen. ours = the
                                  steps' peak (RSS on CPU, reset after the build; `torch.cuda.max_memory_allocated`
                                  on CUDA, reserved as a field), with seconds per step, the build's peak and
                                  `phases` (each step's peak in its forward, backward and optimizer step, and the
                                  memory after it) as fields.
                                  baseline: the vendor's first step on the same batch, the same parameters frozen
                                  (`child_vendor`: upstream's model in training mode with its own activation
                                  checkpointing, bf16 autocast, a backward from the sum of its outputs, fused
                                  AdamW), its peak or "over the cap"; its forward seconds and phases are in the
                                  `vendor` field, and `step_x_vendor_forward` is ours seconds a step over its
                                  seconds a forward (the goal: at most 4). Needs the `vendor` extra (else null).
On 2 cores a training step takes minutes: `--setting load_memory` alone takes about a minute, everything about
40 minutes. `--preset tiny --resolution 112` checks the plumbing in under a minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared machine (bench_train_speed.py)

import torch  # noqa: E402

TRAIN_SETTINGS = {
    "train_memory_all": {},
    "train_memory_frozen_text": {"freeze_language_backbone": True},
    "train_memory_frozen_text_trunk": {"freeze_language_backbone": True, "freeze_vision_trunk": True},
}
SETTINGS = ("load_memory", *TRAIN_SETTINGS)
GIB = 2**30
# The vendor's steps: its peak is in its first backward (over the cap with the text encoder or the trunk
# training; frozen, its second step peaked 1.6% above its first), and each takes five minutes on 2 cores.
VENDOR_STEPS = 1
# What upstream's Sam3Image.back_convert reads from a FindTarget besides the boxes (for its matcher only).
VENDOR_TARGET_FIELDS = (
    "boxes_padded",
    "num_boxes",
    "segments",
    "semantic_segments",
    "is_valid_segment",
    "is_exhaustive",
    "object_ids",
    "object_ids_padded",
)


def peak_gib(device: str = "cpu") -> float:
    """Peak since start or the last `reset_peak`: CUDA memory allocated, or this process's resident set."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / GIB
    return status_gib("VmHWM")


def current_gib() -> float:
    return status_gib("VmRSS")


def status_gib(field: str, pid: str = "self") -> float:
    """A kB field of /proc/<pid>/status (Linux), in GiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in lines if line.startswith(field + ":"))) * 1024 / GIB


def reset_peak(device: str = "cpu") -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM back to the current RSS


def touch(model: torch.nn.Module) -> float:
    """Read every weight once (a forward would), so mapped pages count as resident."""
    with torch.no_grad():
        return float(sum(p.float().sum() for p in model.parameters()))


def child_load(args: argparse.Namespace) -> dict:
    from sam3lite_core.model.sam3lite import build_model
    from sam3lite_core.weights import load_checkpoint, load_model

    before = current_gib()  # the interpreter, torch and the package, before any weight
    started = time.perf_counter()
    if args.child == "load_ours":
        model = load_model(args.weights)
    else:
        model = build_model(args.preset)
        load_checkpoint(model, torch.load(args.weights, map_location="cpu", weights_only=True))
    seconds = time.perf_counter() - started
    touch(model)
    model_gib = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / GIB
    peak = peak_gib()
    return {
        "peak_gib": peak,
        "load_s": seconds,
        "model_gib": model_gib,
        "process_gib": before,
        "x_model": (peak - before) / model_gib,
    }


def child_train(args: argparse.Namespace) -> dict:
    from sam3lite_core.distributed import init_distributed
    from sam3lite_core.train.components import build_components
    from sam3lite_core.train.config import TrainConfig
    from sam3lite_core.train.loop import train_step

    device = args.device
    cfg = TrainConfig.parse(train_fields(args))
    c = build_components(cfg, init_distributed(cfg.device), None)
    build_peak = peak_gib(device)
    c.train_data.sampler.set_epoch(0)
    batch, _ = next(iter(c.train_data.loader))
    phases = watch_phases(c, device)
    reset_peak(device)
    times = []
    for step in range(args.steps):
        started = time.perf_counter()
        out = train_step(c, [batch], 20 + step)  # inside the schedule, past the warm-up ramp
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = max(max(phases[name]) for name in ("forward", "backward", "optimizer"))
    result = {"peak_gib": peak, "build_peak_gib": build_peak, "step_s": times, "loss": out.loss, "phases": phases}
    if device == "cuda":
        result["reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    result["prompts"], result["boxes"] = len(batch.prompts), int(batch.num_boxes.sum())
    return result


def child_vendor(args: argparse.Namespace) -> dict:
    """The vendor's step on the same batch: upstream's image model in training mode (its activation
    checkpointing on, as its training asserts), bf16 autocast, the same parameters frozen, a backward from the sum
    of its outputs (upstream's matcher and losses left out: small beside the model) and a fused AdamW step. What
    it has done so far is written to --out after each phase, so a run stopped at the cap still reports."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import vendor_detector
    import vendor_harness
    from bench_model_forward import vendor_batch

    from sam3lite_core.model.config import PRESETS, resolve_config

    cfg = resolve_config(args.preset).with_resolution(args.resolution)
    torch.manual_seed(0)
    model = vendor_harness.build_vendor_image_model(eval_mode=False) if cfg == PRESETS["sam3"] else None
    model = (model or vendor_detector.image_model(cfg)).train()
    with torch.no_grad():  # upstream leaves these two as torch.empty
        model.backbone.language_backbone.encoder.positional_embedding.normal_(std=0.01)
        model.backbone.language_backbone.encoder.text_projection.normal_(std=0.01)
    setting = TRAIN_SETTINGS[args.child.removeprefix("vendor_")]
    if setting.get("freeze_language_backbone"):
        model.backbone.language_backbone.requires_grad_(False)
    if setting.get("freeze_vision_trunk"):
        model.backbone.vision_backbone.trunk.requires_grad_(False)
    model.matcher = NoMatcher()
    model.to(args.device)
    batch = first_batch(args).to(args.device)
    inputs = vendor_batch(batch.images, batch.prompts)
    inputs.find_targets = [SimpleNamespace(**dict.fromkeys(VENDOR_TARGET_FIELDS), boxes=batch.target_boxes)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    result: dict = {"forward_s": [], "step_s": [], "phases": {"forward": [], "backward": [], "optimizer": []}}
    reset_peak(args.device)
    for _ in range(VENDOR_STEPS):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16):
            out = model(inputs)[0]  # the first (only) stage's outputs
        result["forward_s"].append(elapsed(started, args.device))
        mark(result, "forward", args)
        outputs = [out, *out.get("aux_outputs", [])]
        sum(o["pred_logits"].float().sum() + o["pred_boxes"].float().sum() for o in outputs).backward()
        mark(result, "backward", args)
        optimizer.step()
        result["step_s"].append(elapsed(started, args.device))
        mark(result, "optimizer", args)
    result["peak_gib"] = max(max(result["phases"][name]) for name in ("forward", "backward", "optimizer"))
    return result


class NoMatcher(torch.nn.Module):
    """Stands in for upstream's matcher, whose indices only its losses (not run here) read."""

    def forward(self, outputs: dict, targets: dict) -> None:
        return None


def mark(result: dict, phase: str, args: argparse.Namespace) -> None:
    """Record a phase's peak (and reset it), and write what is known so far."""
    result["phases"][phase].append(peak_gib(args.device))
    reset_peak(args.device)
    Path(args.out).write_text(json.dumps(result))


def elapsed(started: float, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def first_batch(args: argparse.Namespace):
    """The first training batch of the bench's dataset at the bench's resolution (one image, its classes)."""
    from sam3lite_core.data.convert import convert_dataset
    from sam3lite_core.distributed import init_distributed
    from sam3lite_core.train.config import TrainConfig
    from sam3lite_core.train.loader import build_train_data, convert_settings

    cfg = TrainConfig.parse(train_fields(args))
    result = convert_dataset(cfg.dataset, cfg.cache_path(), convert_settings(cfg))
    data = build_train_data(cfg, result.train_json, result.train_images_root, init_distributed("cpu"))[0]
    data.sampler.set_epoch(0)
    return next(iter(data.loader))[0]


def train_fields(args: argparse.Namespace) -> dict:
    """The training config of a setting's run."""
    return {
        "dataset": args.dataset,
        "runs_root": args.runs,
        "preset": args.preset,
        "resolution": args.resolution,
        "init_checkpoint": args.weights,
        "train_batch_size": 1,
        "num_train_workers": 0,
        "max_epochs": 1,
        "target_epoch_size": args.steps,
        "amp": "bf16",
        "ema": False,
        "device": args.device,
        **TRAIN_SETTINGS[args.child.removeprefix("vendor_")],
    }


def watch_phases(c, device: str) -> dict[str, list[float]]:
    """Peak memory per phase of each step (forward, backward, optimizer), each phase's peak measured from its
    start, and what stays after the step: the peak is reset at each phase boundary (the model's forward end, the
    optimizer step's start and end)."""
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "after_step": []}

    def forward_done(module, inputs, output):
        phases["forward"].append(peak_gib(device))
        reset_peak(device)

    step = c.optimizer.step

    def timed_step(*args, **kwargs):
        phases["backward"].append(peak_gib(device))
        reset_peak(device)
        result = step(*args, **kwargs)
        phases["optimizer"].append(peak_gib(device))
        phases["after_step"].append(current_gib() if device == "cpu" else torch.cuda.memory_allocated() / GIB)
        reset_peak(device)
        return result

    c.model.register_forward_hook(forward_done)
    c.optimizer.step = timed_step
    return phases


def watch(process: subprocess.Popen, cap_gib: float, over: list[float]) -> None:
    """Poll the child's resident set; stop it past the cap."""
    while process.poll() is None:
        try:
            rss = status_gib("VmRSS", str(process.pid))
        except (OSError, StopIteration):
            break
        if rss > cap_gib:
            over.append(rss)
            process.kill()
            return
        time.sleep(0.2)


def run_child(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / f"{name}.json"
    command = [sys.executable, __file__, "--child", name, "--out", str(out), "--weights", str(tmp / "sam3.ckpt")]
    command += ["--dataset", str(tmp / "synth"), "--runs", str(tmp / "runs"), "--steps", str(args.steps)]
    command += ["--device", args.device, "--preset", args.preset, "--resolution", str(args.resolution)]
    process = subprocess.Popen(command)
    over: list[float] = []
    watcher = threading.Thread(target=watch, args=(process, args.cap_gib, over), daemon=True)
    watcher.start()
    process.wait()
    watcher.join()
    partial = json.loads(out.read_text()) if out.exists() else {}  # a vendor child writes as it goes
    if over:
        return {**partial, "peak_gib": None, "over_cap_gib": args.cap_gib}
    if process.returncode != 0:
        return {**partial, "peak_gib": None, "failed": process.returncode}
    return partial


def vendor_step(setting: str, args: argparse.Namespace, tmp: Path) -> dict | None:
    """The vendor child's result, or None (with the reason printed) without the `vendor` extra."""
    if args.no_vendor or importlib.util.find_spec("sam3") is None:
        reason = "--no-vendor" if args.no_vendor else "the vendor extra is not installed"
        print(f"{setting}: no vendor baseline ({reason})")
        return None
    return run_child("vendor_" + setting, args, tmp)


def result_line(name: str, ours: dict, baseline: dict | None, label: str = "vendor") -> dict:
    """The RESULT line; the baseline's own fields go under `label`."""
    value = ours.get("peak_gib")
    base = None if baseline is None else baseline.get("peak_gib")
    if baseline is not None and base is None:
        base = f"over the {baseline['over_cap_gib']} GiB cap" if "over_cap_gib" in baseline else "failed"
    ratio = value / base if isinstance(value, float) and isinstance(base, float) else None
    fields = {k: v for k, v in ours.items() if k != "peak_gib"}
    if baseline is not None:
        fields[label] = {k: v for k, v in baseline.items() if k != "peak_gib"}
        if ours.get("step_s") and baseline.get("forward_s"):  # the goal: a step within 4 vendor forwards
            mean = sum(ours["step_s"]) / len(ours["step_s"])
            fields["step_x_vendor_forward"] = mean / (sum(baseline["forward_s"]) / len(baseline["forward_s"]))
    return {"bench": name, "ours": value, "baseline": base, "ratio": ratio, "unit": "GiB", **fields}


def parent(args: argparse.Namespace) -> None:
    from sam3lite_core.data.synth import write_synth
    from sam3lite_core.model.sam3lite import build_model
    from sam3lite_core.weights import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="sam3lite-memory-") as name:
        tmp = Path(name)
        write_synth(tmp / "synth", images=4, seed=0)
        torch.manual_seed(0)
        save_checkpoint(tmp / "sam3.ckpt", build_model(args.preset))
        for setting in args.setting or SETTINGS:
            if setting == "load_memory":
                ours, copy = run_child("load_ours", args, tmp), run_child("load_copy", args, tmp)
                line = result_line(setting, ours, copy, label="copy_load")
            else:
                line = result_line(setting, run_child(setting, args, tmp), vendor_step(setting, args, tmp))
            print("RESULT " + json.dumps(line), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything is written or built: a bad value exits 2 with its fix."""
    from sam3lite_core.model.config import PRESETS
    from sam3lite_core.train.config import ConfigError, TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", choices=SETTINGS, help="run only these (repeatable)")
    parser.add_argument("--steps", type=positive(int), default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cap-gib", type=positive(float), default=20.0, help="stop a child past this resident set")
    parser.add_argument("--no-vendor", action="store_true", help="skip the vendor's steps (the baselines)")
    parser.add_argument("--preset", default="sam3", choices=PRESETS)
    parser.add_argument("--resolution", type=int, default=1008)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for hidden in ("--out", "--weights", "--dataset", "--runs"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        TrainConfig.parse({"preset": args.preset, "resolution": args.resolution}, "--resolution")
    except ConfigError as exc:
        parser.error(str(exc))
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device; run on a GPU host or drop --device")
    return args


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of `kind` above 0."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    return parse


def main() -> None:
    args = parse_args()
    if args.child is None:
        parent(args)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    children = {"load": child_load, "vendor": child_vendor, "train": child_train}
    result = children[args.child.split("_")[0]](args)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
