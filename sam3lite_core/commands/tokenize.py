"""`sam3lite tokenize TEXT...`: the token ids the text encoder sees for each prompt."""

from __future__ import annotations

import argparse
import json

from sam3lite_core.tokenizer import Tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="prompt strings")
    parser.add_argument("--context-length", type=int, default=32, help="ids per prompt (default 32, as SAM3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def run(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer()
    ids = tokenizer(args.texts, context_length=args.context_length)
    for text, row in zip(args.texts, ids.tolist()):
        used = [i for i in row if i != 0]
        if args.json:
            print(json.dumps({"text": text, "ids": row}))
        else:
            print(f"{text!r:40} {len(used):3d} ids  {used}")
    return 0
