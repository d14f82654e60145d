"""Validation of one normalised box, shared by the YOLO and Qwen readers, and the issue record they report.

A box is `(class_id, x1, y1, x2, y2)` with coordinates normalised to the image, in [0, 1] once accepted.
Coordinates slightly outside the image (annotation tools snap to the border) are clipped; beyond `tolerance`
the box is dropped, as is a box with no area.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from sam3lite_core.data.report import Action

Box = tuple[int, float, float, float, float]
DEFAULT_CLIP_TOLERANCE = 0.01  # Ultralytics accepts 1 % outside the image too


class Issue(NamedTuple):
    """A problem inside one annotation file; the scan adds the file name."""

    line: int | None
    code: str
    reason: str
    action: Action


def check_box(
    cls: int, x1: float, y1: float, x2: float, y2: float, tolerance: float, line: int | None, drop: Action
) -> tuple[Box | None, Issue | None]:
    """The accepted (clipped) box, or None; and the issue to report, if any (`drop` is the action name)."""
    if not (x2 > x1 and y2 > y1):
        return None, Issue(line, "zero_area", f"box has no area (width {x2 - x1:.4g}, height {y2 - y1:.4g})", drop)
    if x1 < -tolerance or y1 < -tolerance or x2 > 1 + tolerance or y2 > 1 + tolerance:
        where = f"x {x1:.4g}..{x2:.4g}, y {y1:.4g}..{y2:.4g}"
        reason = f"box outside the image beyond the {tolerance:g} tolerance ({where})"
        return None, Issue(line, "out_of_bounds", reason, drop)
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
    if not (cx2 > cx1 and cy2 > cy1):
        return None, Issue(line, "zero_area", "box has no area inside the image", drop)
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        clipped = Issue(line, "clipped", "box slightly outside the image, clipped to it", "box clipped")
        return (cls, cx1, cy1, cx2, cy2), clipped
    return (cls, x1, y1, x2, y2), None


@dataclass
class LabelFile:
    """The boxes read from one image's annotations and what happened to the rest."""

    boxes: list[Box] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    read: int = 0  # annotations read (non-blank lines, detections)
    dropped: int = 0
    duplicates: int = 0
    clipped: int = 0
    polygons: int = 0
    _seen: set[tuple] = field(default_factory=set, repr=False)

    def drop(self, issue: Issue) -> None:
        self.issues.append(issue)
        self.dropped += 1

    def accept(self, box: Box | None, issue: Issue | None, line: int | None) -> None:
        """Record the outcome of check_box: keep the box unless it was dropped or repeats an earlier one."""
        if box is None:
            assert issue is not None
            self.drop(issue)
            return
        if box in self._seen:  # same class and same parsed coordinates ("0.5" and "0.500" are one value)
            self.issues.append(Issue(line, "duplicate", "same class and box as an earlier one", "duplicate removed"))
            self.duplicates += 1
            return
        self._seen.add(box)
        if issue is not None:
            self.issues.append(issue)
            self.clipped += 1
        self.boxes.append(box)
