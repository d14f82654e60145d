"""Memory of full-size SAM3 fine-tuning: loading the weights, and a 1008 px training step at batch 1.

    .venv/bin/python bench/bench_train_memory.py [--setting NAME ...] [--steps N] [--device cpu|cuda]
        [--cap-gib G] [--preset sam3] [--resolution 1008]

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
                                  preset's default); nothing frozen / the text encoder frozen / the text encoder
                                  and the ViT trunk frozen. ours = the steps' peak (RSS on CPU, reset after the
                                  build; `torch.cuda.max_memory_allocated` on CUDA, reserved as a field), with
                                  seconds per step, the build's peak and `phases` (each step's peak in its
                                  forward, backward and optimizer step, and the memory after it) as fields.
                                  baseline: none yet (null); the
                                  vendor's step at these inputs was killed at 18.5 GB on this machine (issue 21).
On 2 cores a training step takes minutes: `--setting load_memory` alone takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared machine (bench_train_speed.py)

import torch  # noqa: E402

TRAIN_SETTINGS = {
    "train_memory_all": {},
    "train_memory_frozen_text": {"freeze_language_backbone": True},
    "train_memory_frozen_text_trunk": {"freeze_language_backbone": True, "freeze_vision_trunk": True},
}
SETTINGS = ("load_memory", *TRAIN_SETTINGS)
GIB = 2**30


def peak_gib(device: str = "cpu") -> float:
    """Peak since start or the last `reset_peak`: CUDA memory allocated, or this process's resident set."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / GIB
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024 / GIB


def current_gib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024 / GIB


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
    cfg = TrainConfig.parse(
        {
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
            "device": device,
            **TRAIN_SETTINGS[args.child],
        }
    )
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
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            lines = status.read_text().splitlines()
            rss = int(next(line.split()[1] for line in lines if line.startswith("VmRSS"))) / 2**20
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
    if over:
        return {"over_cap_gib": args.cap_gib}
    if process.returncode != 0:
        return {"failed": process.returncode}
    return json.loads(out.read_text())


def result_line(name: str, ours: dict, baseline: dict | None) -> dict:
    value = ours.get("peak_gib")
    base = None if baseline is None else baseline.get("peak_gib", f"over the {baseline.get('over_cap_gib')} GiB cap")
    ratio = value / base if isinstance(value, float) and isinstance(base, float) else None
    fields = {k: v for k, v in ours.items() if k != "peak_gib"}
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
                line = result_line(setting, run_child("load_ours", args, tmp), run_child("load_copy", args, tmp))
            else:
                line = result_line(setting, run_child(setting, args, tmp), None)
            print("RESULT " + json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", choices=SETTINGS, help="run only these (repeatable)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cap-gib", type=float, default=22.0, help="stop a child whose resident set passes this")
    parser.add_argument("--preset", default="sam3")
    parser.add_argument("--resolution", type=int, default=1008)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for hidden in ("--out", "--weights", "--dataset", "--runs"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is None:
        parent(args)
        return
    torch.set_num_threads(os.cpu_count() or 1)
    result = child_load(args) if args.child.startswith("load_") else child_train(args)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
