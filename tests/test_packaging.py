"""The distribution: the BPE vocabulary ships in the wheel and a non-editable install in a fresh venv finds it."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import bpe

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_vocab_and_a_fresh_venv_finds_it(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("sam3lite-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "bpe/bpe_simple_vocab_16e6.txt.gz" in names
    assert "sam3lite = sam3lite_core.cli:main" in entry_points
    assert any(n.startswith("sam3lite_pipeline/") for n in names)

    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        timeout=300,
    )
    # `bpe` needs only the standard library, so the fresh venv can import it without torch.
    probe = (
        "import bpe, gzip, hashlib; p = bpe.vocab_path(); "
        "print(p); print(hashlib.sha256(p.read_bytes()).hexdigest()); "
        "print(len(gzip.open(p, 'rt', encoding='utf-8').read().splitlines()))"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    path, digest, lines = out.stdout.split()
    assert Path(path).is_relative_to(env_dir), "the vocabulary must come from the installed wheel, not the checkout"
    assert digest == bpe.VOCAB_SHA256
    assert int(lines) >= 48895
