"""Training throughput: our training step against the vendor's, same model dims, same batch, same threads.

    .venv/bin/python bench/bench_train_speed.py [--preset small] [--resolution R] [--batch-size B]
        [--steps N] [--warmup W] [--device auto|cpu|cuda]

One batch of B synthetic images (`sam3lite synth`, 4 classes, so 4*B find queries) at the preset's resolution
(336 px for small), fed again and again, so only the step is timed:
  - ours: `sam3lite_core.train.loop.train_step` on the real training components (forward, SetCriterion with
    o2m and aux layers, backward, clip 0.1, AdamW over upstream's param groups, EMA update), at `amp: auto`
    (fp32 on a CPU; bf16 autocast on a GPU with native bf16, else fp16); with and without activation
    checkpointing;
  - vendor: upstream `Sam3Image` built at the same dims (tests/vendor_detector.py, CPU patches applied), in
    training mode with its Hungarian matcher, `Sam3LossWrapper` (IABCEMdetr + Boxes, o2m 2.0, the presence
    focal loss in torch instead of its CUDA-only Triton kernel), backward, clip 0.1 and AdamW; activation
    checkpointing as upstream builds it (on); the same autocast as ours; every input on the same device.
Both sides run W warm-up steps, then N timed steps; images/s = B / median step time. The peak RSS (CPU; reset
between sides) or peak CUDA memory is printed per side, model build included. ratio = ours (default settings) /
vendor. Needs the `vendor` extra.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# A shared machine: busy-waiting OpenMP threads collapse under any competing process (bench_train_quality.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import vendor_detector  # noqa: E402
import vendor_harness  # noqa: E402

from sam3lite_core.batch import Batch  # noqa: E402
from sam3lite_core.data.synth import write_synth  # noqa: E402
from sam3lite_core.distributed import init_distributed, pick_device  # noqa: E402
from sam3lite_core.precision import autocast, resolve_amp  # noqa: E402
from sam3lite_core.train.components import build_components  # noqa: E402
from sam3lite_core.train.config import TrainConfig  # noqa: E402
from sam3lite_core.train.loop import train_step  # noqa: E402


def timed(step, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def ours(cfg: TrainConfig) -> tuple[callable, Batch, object]:
    c = build_components(cfg, init_distributed(cfg.device), None)
    c.train_data.sampler.set_epoch(0)
    batch, _ = next(iter(c.train_data.loader))
    counter = iter(range(10**9))
    # A step inside the schedule (after the warm-up ramp), so the lr is not 0.
    return (lambda: train_step(c, [batch], 20 + next(counter) % 10)), batch, c


def vendor_step(model_cfg, batch: Batch, device: torch.device):
    vendor_harness.import_vendor()
    data_misc = importlib.import_module("sam3.model.data_misc")
    loss_fns = importlib.import_module("sam3.train.loss.loss_fns")

    def focal_reduce_in_torch(inputs, targets, alpha, gamma):  # upstream's Triton kernel is CUDA-only
        return loss_fns.sigmoid_focal_loss(inputs, targets, 1, alpha, gamma, reduce=False, triton=False).sum()

    loss_fns.triton_sigmoid_focal_loss_reduce = focal_reduce_in_torch
    model = vendor_detector.randomize_(vendor_detector.image_model(model_cfg), seed=0).to(device).train()
    matcher_cls = vendor_harness.vendor_class("sam3.train.matcher", "BinaryHungarianMatcherV2")
    model.matcher = matcher_cls(
        focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2, stable=False
    )
    wrapper = vendor_harness.vendor_class("sam3.train.loss.sam3_loss", "Sam3LossWrapper")(
        loss_fns_find=[
            loss_fns.Boxes(weight_dict={"loss_bbox": 5.0, "loss_giou": 2.0}),
            loss_fns.IABCEMdetr(
                weak_loss=False,
                weight_dict={"loss_ce": 20.0, "presence_loss": 20.0},
                pos_weight=10.0,
                alpha=0.25,
                gamma=2,
                use_presence=True,
                pos_focal=False,
                pad_n_queries=200,
                pad_scale_pos=1.0,
            ),
        ],
        normalization="local",
        matcher=model.matcher,
        o2m_matcher=vendor_harness.vendor_class("sam3.train.matcher", "BinaryOneToManyMatcher")(
            alpha=0.3, threshold=0.4, topk=4
        ),
        o2m_weight=2.0,
        use_o2m_matcher_on_o2m_aux=False,
        scale_by_find_batch_size=True,
    )
    batch = batch.to(device)
    q, on = batch.num_queries, {"device": device}
    valid = torch.arange(batch.target_boxes.shape[1], **on) < batch.num_boxes[:, None]
    object_ids = torch.where(valid, torch.arange(valid.numel(), **on).view_as(valid), -1)
    target = data_misc.BatchedFindTarget(
        num_boxes=batch.num_boxes,
        boxes=batch.target_boxes[valid],
        boxes_padded=batch.target_boxes,
        repeated_boxes=None,
        segments=None,
        semantic_segments=None,
        is_valid_segment=None,
        is_exhaustive=torch.ones(q, dtype=torch.bool, **on),
        object_ids=object_ids[valid],
        object_ids_padded=object_ids,
    )
    find = data_misc.FindStage(
        img_ids=batch.img_ids,
        text_ids=batch.prompt_ids,
        input_boxes=torch.zeros(0, q, 4, **on),
        input_boxes_mask=torch.zeros(q, 0, dtype=torch.bool, **on),
        input_boxes_label=torch.zeros(0, q, dtype=torch.long, **on),
        input_points=torch.zeros(q, 0, 257, **on),
        input_points_mask=torch.zeros(q, 0, dtype=torch.bool, **on),
    )
    datapoint = data_misc.BatchedDatapoint(
        img_batch=batch.images,
        find_text_batch=batch.prompts,
        find_inputs=[find],
        find_targets=[target],
        find_metadatas=[None],
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    amp = resolve_amp("auto", device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = model(datapoint)
        losses = wrapper(out, [model.back_convert(t) for t in datapoint.find_targets])
        losses["core_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return step


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS) to the current RSS


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last reset: CUDA memory allocated, or this process's RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="both sides run on it")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    results = {}
    with tempfile.TemporaryDirectory(prefix="sam3lite-speed-") as tmp:
        dataset = Path(tmp) / "synth"
        write_synth(dataset, images=max(2 * args.batch_size, 10), seed=0)
        base = {
            "dataset": str(dataset),
            "runs_root": f"{tmp}/runs",
            "preset": args.preset,
            "resolution": args.resolution,
            "train_batch_size": args.batch_size,
            "num_train_workers": 0,
            "max_epochs": 1000,
            "lr_scale": 1.0,
            "hflip_prob": 0.0,
            "device": args.device,
        }
        for name, extra in (("ours", {}), ("ours_act_ckpt", {"activation_checkpointing": True})):
            reset_peak_memory(device)
            step, batch, components = ours(TrainConfig.parse(base | extra))
            times = timed(step, args.warmup, args.steps)
            results[name] = args.batch_size / statistics.median(times)
            print(
                f"{name}: {results[name]:.2f} images/s (median step {statistics.median(times):.3f} s, "
                f"{batch.num_queries} queries), peak memory {peak_memory_mb(device):.0f} MB",
                flush=True,
            )
            model_cfg = components.model.cfg
            del components, step
        reset_peak_memory(device)
        vendor = vendor_step(model_cfg, batch, device)
        times = timed(vendor, args.warmup, args.steps)
        results["vendor"] = args.batch_size / statistics.median(times)
        print(
            f"vendor: {results['vendor']:.2f} images/s (median step {statistics.median(times):.3f} s), "
            f"peak memory {peak_memory_mb(device):.0f} MB",
            flush=True,
        )
    print(
        "RESULT "
        + json.dumps(
            {
                "bench": "train_speed",
                "ours": round(results["ours"], 3),
                "baseline": round(results["vendor"], 3),
                "ratio": round(results["ours"] / results["vendor"], 3),
                "unit": f"training images/s ({args.preset}, "
                f"{model_cfg.vision.image_size} px, batch {args.batch_size}, {device.type})",
                "ours_act_ckpt": round(results["ours_act_ckpt"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
