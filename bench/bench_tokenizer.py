"""Tokenizing 10,000 class-name strings: ours against the vendor SimpleTokenizer, same strings, same process.

Class names repeat (every image of a dataset asks for every category), so the strings are drawn with
replacement from a few thousand realistic names (COCO nouns with attributes). Each tokenizer starts cold
(a new instance) and both run the same list; the best of 3 cold runs is reported.

Run: .venv/bin/python bench/bench_tokenizer.py      (needs the `vendor` extra)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import vendor_harness  # noqa: E402

from sam3lite_core.tokenizer import Tokenizer  # noqa: E402

NOUNS = """person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant stop-sign
parking-meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie
suitcase frisbee skis snowboard sports-ball kite baseball-bat baseball-glove skateboard surfboard tennis-racket
bottle wine-glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot-dog pizza donut cake
chair couch potted-plant bed dining-table toilet tv laptop mouse remote keyboard cell-phone microwave oven
toaster sink refrigerator book clock vase scissors teddy-bear hair-drier toothbrush""".split()
ADJECTIVES = """red blue green yellow small large striped damaged rusty wet old new wooden metal plastic broken
parked flying sleeping occluded distant blurry white black""".split()
NUM_STRINGS = 10_000


def class_names(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = [n.replace("-", " ") for n in NOUNS]
    vocab += [f"{a} {n.replace('-', ' ')}" for a in ADJECTIVES for n in NOUNS]
    return [rng.choice(vocab) for _ in range(NUM_STRINGS)]


def best_cold_time(make, texts: list[str], repeats: int = 3) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        tok = make()
        start = time.perf_counter()
        out = tok(texts, context_length=32)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    torch.set_num_threads(1)
    texts = class_names()
    ours, ours_ids = best_cold_time(Tokenizer, texts)
    vendor, vendor_ids = best_cold_time(vendor_harness.vendor_tokenizer, texts)
    assert torch.equal(ours_ids, vendor_ids), "ids differ from the vendor's"
    print(f"{len(texts)} strings ({len(set(texts))} distinct): ours {ours * 1e3:.1f} ms, vendor {vendor * 1e3:.1f} ms")
    result = {
        "bench": "tokenizer_10k_class_names",
        "ours": round(ours, 4),
        "baseline": round(vendor, 4),
        "ratio": round(ours / vendor, 4),
        "unit": "s",
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
