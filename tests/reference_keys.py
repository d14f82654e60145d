"""The upstream key/shape lists in tests/fixtures (copies of DESIGN's reference/*.tsv), as (key, shape) pairs.

sam3_boxonly_state_dict.tsv: `build_sam3_image_model(enable_segmentation=False).state_dict()`, 1106 entries.
sam3_released_checkpoint_keys.tsv: the video model that loads the released sam3.pt strictly, 1465 entries.
"""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"


def reference_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """`name` is a file in tests/fixtures; each line is `key<TAB>(d0, d1, ...)`."""
    entries = []
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape = line.split("\t")
        entries.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return entries
