"""The `sam3lite` console script.

Each subcommand lives in its own module `sam3lite_core.commands.<name>` exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their subcommand runs, so
`sam3lite --help` stays fast and a missing optional extra only affects the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> one-line help; the order is the order `sam3lite --help` shows.
SUBCOMMANDS: dict[str, str] = {
    "synth": "write the synthetic YOLO dataset (the embedded default)",
    "convert": "validate a YOLO dataset and convert it to cached COCO JSON",
    "train": "fine-tune a detector on a dataset",
    "eval": "COCO mAP of a checkpoint on a dataset",
    "export": "write the weights-only checkpoint that gets activated",
    "predict": "detect prompted objects in images",
    "serve": "the inference service (backend-compatible HTTP API)",
    "trigger": "launch and follow retrains on a Dagster webserver over GraphQL",
    "tokenize": "show the BPE token ids of prompts",
}

# `trigger` drives the Dagster webserver, so it lives with the pipeline; it is named by string and imported only
# when it runs, so the core never imports the pipeline. It needs `requests`, which only the `pipeline` extra
# brings: without it the subcommand is not offered, rather than offered and failing with an ImportError.
ELSEWHERE: dict[str, tuple[str, ...]] = {"trigger": ("sam3lite_pipeline.trigger_cli", "requests")}


def _module_name(name: str) -> str:
    return ELSEWHERE[name][0] if name in ELSEWHERE else f"sam3lite_core.commands.{name}"


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def _available() -> dict[str, str]:
    return {
        name: text
        for name, text in SUBCOMMANDS.items()
        if all(_findable(module) for module in ELSEWHERE.get(name, (_module_name(name),)))
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3lite", description="Fine-tune and ship a box-only SAM3 detector.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in _available().items():
        sub.add_parser(name, help=text, description=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = _available()
    if not argv or argv[0] not in available:
        build_parser().parse_args(argv)  # prints usage / the error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(_module_name(name))
    parser = argparse.ArgumentParser(prog=f"sam3lite {name}", description=available[name])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
