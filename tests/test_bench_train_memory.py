"""bench/bench_train_memory.py refuses a bad command line before it writes or builds anything (a 3 GiB checkpoint
and minutes of work would follow): each case exits 2 with what is wrong."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_train_memory.py"


@pytest.fixture(scope="module")
def bench():
    before = os.environ.get("OMP_WAIT_POLICY")  # the bench sets it for its own processes; not for this session's
    spec = importlib.util.spec_from_file_location("bench_train_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if before is None:
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = before
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps: must be above 0, got 0"),
        (["--steps", "-3"], "must be above 0"),
        (["--steps", "1e9"], "'1e9' is not an integer"),
        (["--cap-gib", "nan"], "--cap-gib: must be above 0, got nan"),
        (["--cap-gib", "lots"], "'lots' is not a number"),
        (["--resolution", "1000"], "multiple of the patch size 14; use 994 or 1008"),
        (["--resolution", "-14"], "resolution"),
        (["--preset", "../../etc/passwd"], "invalid choice: '../../etc/passwd'"),
        (["--setting", "train_memory_everything"], "invalid choice: 'train_memory_everything'"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(bench, capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        bench.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_cuda_without_a_gpu_is_refused_and_good_arguments_pass(bench, capsys, monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err
    args = bench.parse_args(["--setting", "load_memory", "--steps", "1", "--preset", "tiny", "--resolution", "112"])
    assert (args.setting, args.steps, args.cap_gib) == (["load_memory"], 1, 20.0)
