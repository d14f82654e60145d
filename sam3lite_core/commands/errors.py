"""The one translation of user errors into a message and an exit status, for every subcommand.

A subcommand's body raises; this prints what went wrong on stderr and returns the status:
1 for an unusable dataset (its scan report: file, line, what is wrong, what to do) and, where the subcommand
says so, for unusable input files; `invalid_exit` (2 by default) for a wrong argument or configuration;
1 for a file or folder the operating system refuses (permissions, a full disk, a read-only mount).
A closed stdout (`sam3lite convert ... | head`) is not an error here: `cli.main` ends quietly.
"""

from __future__ import annotations

import argparse
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
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"{prog}: {_os_problem(exc)}", file=sys.stderr)
        return 1


def _os_problem(exc: OSError) -> str:
    """`path: what the system said; what to do` for an OSError (the path when the error names one)."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}; check that the path exists and can be written, and the free disk space"


def positive_int(text: str) -> int:
    """argparse type of a count or size: a whole number >= 1 (0 is no silent "default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def prompt_text(text: str) -> str:
    """argparse type of a text prompt: not empty or blank (the service refuses those too)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("blank; a prompt names the objects to find, e.g. --prompt 'red car'")
    return text
