"""Data parallelism: `torchrun --nproc-per-node 2` (gloo on CPU) computes, step after step, the gradients that one
process computes on the union of the two ranks' batches, and the same validation mAP.

The sqrt(Q) factor. Upstream (and SetCriterion) multiplies the loss by sqrt(Q), Q = find queries *on this
rank*, normalises the box terms by the global box count (all-reduced mean per rank, N/W) and the per-query
terms (classification, presence) by the local query count; DDP then averages the W ranks' gradients. With the
same number of images per rank, Q_r = Q/W, every term works out the same way, e.g. for the L1 term:

    DDP:    (1/W) * sum_r sqrt(Q/W) * (sum of rank r's L1) / (N/W)  =  sqrt(Q/W) * (sum of all L1) / N
    single:                 sqrt(Q) * (sum of all L1) / N

so the data-parallel gradient is the single-process gradient on the union batch times 1/sqrt(W) exactly
(1/sqrt(2) here). The single process in this test scales its loss by that factor (tests/train_ddp_worker.py)
and the gradients of every step must then agree within 1e-5 (measured: 6e-6 at most, on entries up to ~24;
the worker's docstring says why the learning rate is 0 there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import make_dataset

WORKER = Path(__file__).parent / "train_ddp_worker.py"
TOLERANCE = 1e-5


def _run(argv: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def test_two_gloo_ranks_match_one_process_on_the_union_batch(tmp_path):
    dataset = make_dataset(tmp_path / "synth", images=20)  # 16 train images: 3 steps of 2 x 2
    args = ["--dataset", str(dataset), "--runs", str(tmp_path / "runs"), "--out", str(tmp_path), "--steps", "3"]
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), *args],
        tmp_path,
    )
    _run([sys.executable, str(WORKER), *args, "--world", "2"], tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    single = torch.load(tmp_path / "single.pt", weights_only=True)

    assert ddp["eval"] == single["eval"]  # validation split across ranks, detections gathered
    # Every all_reduce of ours (loss normaliser, the skip decision) got its tensor on the group's device.
    assert ddp["collectives"]["calls"] >= 2 * 3 and not ddp["collectives"]["wrong"], ddp["collectives"]
    diffs = []
    for step, (ours, reference) in enumerate(zip(ddp["steps"], single["steps"], strict=True)):
        names = set(ours["grads"]) | set(reference["grads"])
        zero = torch.zeros(())
        diff = max((ours["grads"].get(n, zero) - reference["grads"].get(n, zero)).abs().max().item() for n in names)
        scale = max(g.abs().max().item() for g in reference["grads"].values())
        diffs.append(diff)
        assert scale > 1e-3, f"step {step}: gradients vanish, the comparison would be empty"
    print(f"max abs gradient difference per step: {diffs} (largest gradient entry {scale:.3g})")
    assert max(diffs) < TOLERANCE, diffs


@pytest.mark.parametrize("world", [2, 4])
def test_sqrt_q_factor_is_one_over_sqrt_world(world):
    """The algebra above with numbers: W ranks of Q/W queries and N/W boxes each."""
    queries, boxes, total_l1 = 12.0, 30.0, 7.5
    per_rank = [(queries / world, total_l1 / world)] * world
    ddp = sum((q**0.5) * l1 / (boxes / world) for q, l1 in per_rank) / world
    single = queries**0.5 * total_l1 / boxes
    assert ddp == pytest.approx(single / world**0.5)
