"""The CLIP byte-pair-encoding vocabulary used by SAM3's text encoder (data only).

`bpe_simple_vocab_16e6.txt.gz` is byte-identical to the file the upstream model ships
(sha256 924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a; the same file is in
open_clip as `open_clip/bpe_simple_vocab_16e6.txt.gz`). It is installed as package data.
"""

from importlib.resources import files
from pathlib import Path

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def vocab_path() -> Path:
    """Filesystem path of the gzipped merges file inside the installed package."""
    return Path(str(files(__name__) / "bpe_simple_vocab_16e6.txt.gz"))
