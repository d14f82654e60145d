"""Output folders checked before any work starts, so a long conversion, training run or prediction never ends in
a PermissionError traceback at its first write.

The check writes and removes one temporary file in the folder (or in its nearest existing parent, when the folder
is still to be made): permission bits do not tell (root passes them on read-only mounts; ACLs, full disks).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


class OutputError(ValueError):
    """An output location that cannot be written; the message names it, says why and what to do."""


def check_writable_folder(folder: str | Path, what: str) -> None:
    """Raises OutputError unless `folder` (`what` it is for the user, e.g. "--cache-dir") is a folder that can
    be written, or can be created; leaves nothing behind and creates no folder."""
    given = Path(folder).expanduser()
    existing = given
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == given else f"is under {existing}, which is"
        raise OutputError(f"{what} {given} {where} a file, not a folder; choose a folder path")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".sam3lite-write-check-"):
            pass
    except OSError as exc:
        place = given if existing == given else f"{given} (its nearest existing folder {existing})"
        raise OutputError(
            f"{what} {place} cannot be written ({exc.strerror}); choose a writable folder or fix its permissions"
        ) from None


def check_writable_file(path: str | Path, what: str) -> None:
    """Raises OutputError unless a file can be written at `path` (its folder is writable, it is no folder)."""
    given = Path(path).expanduser()
    if given.is_dir():
        raise OutputError(f"{what} {given} is a folder; give a file path")
    check_writable_folder(given.parent, f"{what} {given}: its folder")
