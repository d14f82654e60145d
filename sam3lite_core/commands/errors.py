"""The one translation of user errors into a message and an exit status, for every subcommand.

A subcommand's body raises; this prints what went wrong on stderr and returns the status:
1 for an unusable dataset (its scan report: file, line, what is wrong, what to do) and, where the subcommand
says so, for unusable input files; `invalid_exit` (2 by default) for a wrong argument or configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sam3lite_core.data.report import DatasetError


def explain_errors(prog: str, body: Callable[[], int], *, invalid_exit: int = 2) -> int:
    """`body()`, or the exit status of the user error it raised, with that error printed for `prog`."""
    try:
        return body()
    except DatasetError as exc:
        print(exc.report.text(10) if exc.report is not None else f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return invalid_exit
