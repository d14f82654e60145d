"""`GET /sam3/models`: the models the backend's picker offers, decided by path rules alone (no file is loaded).

Rows, in order: the base weights (`key: "base"`), the active custom checkpoint (`key: "active:<path>"`), then
one per run folder of the runs root. A run's row names the checkpoint activation would use: for our runs
`checkpoints/export.ckpt`, else `checkpoints/last.ckpt`; for runs the backend trained itself the newest regular
`*.pt`, `*.pth` or `*.ckpt` under `<run>/checkpoints/`. Symlinked runs, checkpoint folders and checkpoints are
skipped, as the backend skips them and activation refuses them, so nothing is listed that cannot be activated.
A run is promoted when its `.promoted` marker is a regular file (the backend's JSON with `timestamp`; an empty
or unreadable marker still means promoted, with no time).
"""

from __future__ import annotations

import json
from pathlib import Path

from sam3lite_core.serve.schemas import ActiveModel, ModelEntry

PREFERRED = ("export.ckpt", "last.ckpt")  # what our runs activate, in order
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
PROMOTED_MARKER = ".promoted"
ALL_VARIANTS = "all"
VARIANTS = ("sam3",)  # the only variant this service has
SKIPPED_RUN_NAMES = {"datasets"}  # the backend keeps its staged datasets in the runs root


def run_checkpoint(run: Path) -> Path | None:
    """The checkpoint activation would use for run folder `run`, or None (see the module docstring)."""
    folder = run / "checkpoints"
    if folder.is_symlink() or not folder.is_dir():
        return None
    for name in PREFERRED:
        path = folder / name
        if not path.is_symlink() and path.is_file():
            return path
    candidates = [p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and not p.is_symlink() and p.is_file()]
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def promotion(run: Path) -> tuple[bool, float | None]:
    """(promoted, promoted_at epoch seconds or None) from the run's `.promoted` marker."""
    marker = run / PROMOTED_MARKER
    if marker.is_symlink() or not marker.is_file():
        return False, None
    try:
        stamp = json.loads(marker.read_text()).get("timestamp")
    except (OSError, ValueError, AttributeError):
        return True, None
    return True, float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else None


def run_entries(runs_root: Path, active: ActiveModel) -> list[ModelEntry]:
    """One row per run folder with a checkpoint, by name; `active` when it is the active checkpoint."""
    if runs_root.is_symlink() or not runs_root.is_dir():
        return []
    entries = []
    for run in sorted(runs_root.iterdir()):
        if run.name in SKIPPED_RUN_NAMES or run.name.startswith(".") or run.is_symlink() or not run.is_dir():
            continue
        path = run_checkpoint(run)
        if path is None:
            continue
        promoted, promoted_at = promotion(run)
        entries.append(
            ModelEntry(
                id=run.name,
                path=str(path),
                size_bytes=path.stat().st_size,
                promoted=promoted,
                promoted_at=promoted_at,
                active=active.source == "custom" and active.checkpoint == str(path),
                run_path=str(run),
            )
        )
    return entries


def model_entries(
    active: ActiveModel,
    base_checkpoint: Path | None,
    runs_root: Path,
    variant: str = "sam3",
    promoted_only: bool = False,
) -> list[ModelEntry]:
    """The backend's model listing. `variant` "all" or "sam3" lists every row, any other none (this service
    has no other variant); `promoted_only` keeps the base and active rows and the promoted runs. The base row
    is active whenever no custom checkpoint is, as the backend reports it."""
    if variant != ALL_VARIANTS and variant not in VARIANTS:
        return []
    entries = [
        ModelEntry(
            id="Base SAM3",
            key="base",
            path=str(base_checkpoint) if base_checkpoint else None,
            active=active.source != "custom",
            source="env",
            enable_segmentation=False,
        )
    ]
    if active.source == "custom":
        entries.append(
            ModelEntry(
                id=active.id,
                key=f"active:{active.checkpoint}",
                path=active.checkpoint,
                active=True,
                source="custom",
                enable_segmentation=active.enable_segmentation,
            )
        )
    runs = run_entries(runs_root, active)
    return entries + [entry for entry in runs if entry.promoted or not promoted_only]
