"""The `sam3lite` console script.

Each subcommand lives in its own module `sam3lite_core.commands.<name>` exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their subcommand runs, so
`sam3lite --help` stays fast and a missing optional extra only affects the subcommand that needs it. Other
packages add subcommands through the `sam3lite.commands` entry points (`PLUGIN_GROUP`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from types import ModuleType

# name -> one-line help; the order is the order `sam3lite --help` shows.
SUBCOMMANDS: dict[str, str] = {
    "synth": "write the synthetic YOLO dataset (the embedded default)",
    "convert": "validate a YOLO dataset and convert it to cached COCO JSON",
    "train": "fine-tune a detector on a dataset",
    "eval": "COCO mAP of a checkpoint on a dataset",
    "export": "write the weights-only checkpoint that gets activated",
    "predict": "detect prompted objects in images",
    "serve": "the inference service (backend-compatible HTTP API)",
    "tokenize": "show the BPE token ids of prompts",
}

# Subcommands that other packages add (the pipeline's `trigger`): entry points of this group name a module with
# `HELP`, `add_arguments` and `run`. The core so never names a module above it; a plugin that cannot be imported
# (its optional extra, e.g. `requests` of `pipeline`, is not installed) is not offered.
PLUGIN_GROUP = "sam3lite.commands"


def _plugins() -> dict[str, ModuleType]:
    found = {}
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        if entry.name in SUBCOMMANDS:
            continue
        try:
            found[entry.name] = importlib.import_module(entry.value)
        except ImportError:
            continue
    return found


def _available() -> dict[str, str]:
    return SUBCOMMANDS | {name: module.HELP for name, module in _plugins().items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3lite", description="Fine-tune and ship a box-only SAM3 detector.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in _available().items():
        sub.add_parser(name, help=text, description=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name, rest = (argv[0], argv[1:]) if argv else ("", [])
    plugins = {} if name in SUBCOMMANDS else _plugins()
    if name in SUBCOMMANDS:
        module, text = importlib.import_module(f"sam3lite_core.commands.{name}"), SUBCOMMANDS[name]
    elif name in plugins:
        module, text = plugins[name], plugins[name].HELP
    else:
        build_parser().parse_args(argv)  # prints usage / the error and exits
        return 2
    parser = argparse.ArgumentParser(prog=f"sam3lite {name}", description=text)
    try:
        module.add_arguments(parser)  # defaults may come from the environment (SAM3LITE_MAX_PIXELS)
    except ValueError as exc:
        print(f"sam3lite {name}: {exc}", file=sys.stderr)
        return 2
    try:
        return int(module.run(parser.parse_args(rest)) or 0)
    except BrokenPipeError:
        return _closed_stdout()


def _closed_stdout() -> int:
    """The reader of our output went away (`sam3lite convert ... | head`): end quietly, as other command-line
    tools do, with the status a shell reports for them (128 + SIGPIPE)."""
    try:
        # Python flushes stdout again at exit; pointing it at /dev/null keeps that flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (captured): nothing to flush at exit
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
