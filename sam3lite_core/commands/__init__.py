"""One module per `sam3lite` subcommand: `add_arguments(parser)` and `run(args) -> int` (see cli.py)."""
