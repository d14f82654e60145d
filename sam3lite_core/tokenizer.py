"""CLIP byte-pair-encoding tokenizer, id for id the one SAM3's text encoder was trained with.

The upstream `SimpleTokenizer` (open_clip lineage) cleans each string with ftfy, unescapes HTML twice,
collapses whitespace and lowercases, splits it with the CLIP regex, byte-encodes every piece and merges it
by BPE rank. Ours gives the same ids and is faster on the workload that matters here, class names that
repeat: whole strings and single words are both memoised.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import ftfy
import regex
import torch

import bpe

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# 49152 lines of merges in the file; CLIP keeps the first 48,894 (vocab 49408 = 512 bytes + merges + 2).
_NUM_MERGES = 49152 - 256 - 2
_SPECIALS = (SOT_TOKEN, EOT_TOKEN)
_PATTERN = regex.compile(
    "|".join(_SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


def _bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable unicode map, so BPE never sees whitespace or control characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _is_plain_ascii(text: str) -> bool:
    # ftfy leaves printable ASCII without '&' untouched (no mojibake, entities, controls or wide forms are
    # possible), so skipping it is exact; tests/test_tokenizer.py checks this claim against ftfy itself.
    return text.isascii() and text.isprintable() and "&" not in text


def clean_text(text: str) -> str:
    """The upstream 'lower' cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lowercased."""
    if not _is_plain_ascii(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text.strip()).strip().lower()


class Tokenizer:
    """`Tokenizer()(texts, context_length=32) -> LongTensor[N, context_length]`.

    Each row is SOT, the BPE ids, EOT, then zeros. A string longer than the context is cut to
    `context_length` ids with EOT kept as the last one, as upstream does.
    """

    def __init__(self, vocab_file: str | Path | None = None, cache_size: int = 65536) -> None:
        path = Path(vocab_file) if vocab_file is not None else bpe.vocab_path()
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks: dict[tuple[str, ...], int] = {merge: i for i, merge in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(self.encoder)
        self._word_ids: dict[str, tuple[int, ...]] = {s: (self.encoder[s],) for s in _SPECIALS}
        # Per-instance memo of whole strings: class names repeat across images, epochs and requests.
        self.encode = lru_cache(maxsize=cache_size)(self._encode)

    def _bpe(self, word: str) -> list[str]:
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_to_ids(self, piece: str) -> tuple[int, ...]:
        ids = self._word_ids.get(piece)
        if ids is None:
            encoded = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids = tuple(self.encoder[s] for s in self._bpe(encoded))
            self._word_ids[piece] = ids
        return ids

    def _encode(self, text: str) -> tuple[int, ...]:
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            ids.extend(self._word_to_ids(piece))
        return tuple(ids)

    def __call__(self, texts: str | Sequence[str], context_length: int = 32) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {context_length}")
        rows = []
        for text in texts:
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            rows.append(ids + [0] * (context_length - len(ids)))
        # One tensor construction for the whole batch: per-row tensors dominate the cost on cached strings.
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)
