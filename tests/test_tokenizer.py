"""The BPE vocabulary and the tokenizer: byte-identical vocabulary, vendor-identical ids."""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import random
import string
from pathlib import Path

import ftfy
import pytest
import torch
import vendor_harness

import bpe
from sam3lite_core.tokenizer import Tokenizer, clean_text

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer_ids.json"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer()


def test_vocabulary_is_byte_identical_to_the_vendors():
    digest = hashlib.sha256(bpe.vocab_path().read_bytes()).hexdigest()
    assert digest == bpe.VOCAB_SHA256 == "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def test_vocabulary_size_and_specials(tokenizer):
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id) == (49406, 49407)
    with gzip.open(bpe.vocab_path(), "rt", encoding="utf-8") as fh:
        assert fh.readline().startswith('"bpe_simple_vocab_16e6.txt#version')


def test_documented_example(tokenizer):
    ids = tokenizer("a cat", context_length=32)
    assert ids.shape == (1, 32) and ids.dtype == torch.long
    assert ids[0, :5].tolist() == [49406, 320, 2368, 49407, 0]


def test_committed_fixture_matches(tokenizer):
    cases = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
    assert len(cases) >= 30
    texts = [c["text"] for c in cases]
    expected = torch.tensor([c["ids"] for c in cases])
    got = tokenizer(texts, context_length=32)
    mismatched = [t for t, a, b in zip(texts, got, expected) if not torch.equal(a, b)]
    assert not mismatched, f"ids differ from the vendor fixture for {mismatched!r}"


def test_truncation_keeps_eot_last_and_padding_is_zero(tokenizer):
    long_ids = tokenizer("word " * 100, context_length=32)[0]
    assert long_ids[-1].item() == 49407 and (long_ids != 0).all()
    short = tokenizer("dog", context_length=8)[0].tolist()
    assert short[0] == 49406 and short[2] == 49407 and short[3:] == [0] * 5
    with pytest.raises(ValueError, match="context_length"):
        tokenizer("dog", context_length=1)


def test_repeated_calls_are_stable(tokenizer):
    first = tokenizer(["red circle", "blue square"] * 3)
    assert torch.equal(first, tokenizer(["red circle", "blue square"] * 3))
    assert torch.equal(first[0], first[2])


def _random_ascii(rng: random.Random) -> str:
    alphabet = string.printable  # letters, digits, punctuation, whitespace incl. \t \n \r \x0b \x0c
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def test_ascii_fast_path_equals_ftfy_cleaning():
    """The cleaning skips ftfy for plain printable ASCII without '&'; prove the skip changes nothing."""
    rng = random.Random(0)
    for _ in range(3000):
        text = _random_ascii(rng)
        reference = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
        assert clean_text(text) == reference, repr(text)


def test_live_parity_with_vendor_tokenizer(vendor, tokenizer):
    vendor_tok = vendor_harness.vendor_tokenizer()
    rng = random.Random(1)
    pool = [c["text"] for c in json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]]
    pool += [
        "".join(rng.choice(string.printable + "éü日本😀&;#") for _ in range(rng.randint(0, 60))) for _ in range(300)
    ]
    for context_length in (32, 77, 5):
        assert torch.equal(tokenizer(pool, context_length), vendor_tok(pool, context_length=context_length))
