"""The torchrun target: `torchrun --nproc-per-node N -m sam3lite_core.train --config run.yaml --dataset DIR
[--set key=value ...] [--resume]`; also runs as a single process with plain `python -m sam3lite_core.train`.

Same arguments and output as `sam3lite train` (sam3lite_core/commands/train.py); only rank 0 prints.
"""

from __future__ import annotations

import argparse
import sys

from sam3lite_core.commands import train as command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam3lite_core.train", description=__doc__.splitlines()[0])
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
