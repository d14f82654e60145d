"""The backend's Qwen datasets: `{train,val}/annotations.jsonl` with boxes in pixels, classes in metadata.json.

One JSONL line per image: `{"image": "<name relative to the split folder>", "detections": [...]}`, or a
`conversations` list whose last "gpt" turn holds that detection JSON as a string. A detection is
`{"label", "bbox": [x1, y1, x2, y2]}` in pixels, or `{"label", "point": [x, y]}`, which becomes a 2 x 2 px box
as the backend makes it.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path

from sam3lite_core.data.boxcheck import Issue, LabelFile, check_box

_POINT_HALF_SIDE = 1.0  # px: a point becomes a 2 x 2 px box


def read_qwen_classes(path: Path) -> list[str] | None:
    """The `classes` list of a Qwen metadata.json (None when it has none or is unreadable)."""
    try:
        classes = json.loads(path.read_text(encoding="utf-8-sig")).get("classes")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(c).strip() for c in classes] if isinstance(classes, list) else None


@dataclass
class QwenEntry:
    line: int
    detections: list


def _detections(record: dict) -> list | None:
    if isinstance(record.get("detections"), list):
        return record["detections"]
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return None
    answers = [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") in ("gpt", "assistant")]
    if not answers or not isinstance(answers[-1], str):
        return None
    try:
        parsed = json.loads(answers[-1])
    except ValueError:
        return None
    if isinstance(parsed, dict):
        parsed = parsed.get("detections")
    return parsed if isinstance(parsed, list) else None


def parse_annotations(lines: list[str]) -> tuple[dict[str, QwenEntry], list[Issue]]:
    """Entries by image name (normalised POSIX path relative to the split folder) and the lines dropped."""
    entries: dict[str, QwenEntry] = {}
    issues: list[Issue] = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            issues.append(Issue(number, "bad_json", f"not valid JSON ({exc})", "line dropped"))
            continue
        image = record.get("image") if isinstance(record, dict) else None
        detections = _detections(record) if isinstance(record, dict) else None
        if not isinstance(image, str) or not image or detections is None:
            issues.append(Issue(number, "bad_entry", "needs an 'image' name and a 'detections' list", "line dropped"))
            continue
        name = posixpath.normpath(image.replace("\\", "/")).lstrip("/")
        if name in entries:
            reason = f"image {name!r} is already annotated on line {entries[name].line}"
            issues.append(Issue(number, "duplicate_entry", reason, "line dropped"))
            continue
        entries[name] = QwenEntry(number, detections)
    return entries, issues


def _pixel_box(det: dict) -> tuple[float, float, float, float] | None:
    if "bbox" in det:
        x1, y1, x2, y2 = (float(v) for v in det["bbox"])
        return x1, y1, x2, y2
    if "point" in det:
        x, y = (float(v) for v in det["point"])
        return x - _POINT_HALF_SIDE, y - _POINT_HALF_SIDE, x + _POINT_HALF_SIDE, y + _POINT_HALF_SIDE
    return None


def entry_boxes(entry: QwenEntry, class_ids: dict[str, int], width: int, height: int, tolerance: float) -> LabelFile:
    """Normalised boxes of one image's detections; `class_ids` maps case-folded names to ids."""
    out = LabelFile()
    for det in entry.detections:
        out.read += 1
        snippet = str(det)[:60]
        label = str(det.get("label", "")).strip() if isinstance(det, dict) else ""
        try:
            pixel = _pixel_box(det) if isinstance(det, dict) else None
        except (TypeError, ValueError):
            out.drop(Issue(entry.line, "not_numeric", f"bbox needs 4 numbers, point 2: {snippet}", "box dropped"))
            continue
        if pixel is None:
            out.drop(Issue(entry.line, "columns", f"detection without bbox or point: {snippet}", "box dropped"))
        elif not all(map(math.isfinite, pixel)):
            out.drop(Issue(entry.line, "not_finite", f"NaN or infinite value in {snippet}", "box dropped"))
        elif label.casefold() not in class_ids:
            out.drop(Issue(entry.line, "class_id", f"label {label!r} is not in the classes", "box dropped"))
        else:
            x1, y1, x2, y2 = pixel
            cls = class_ids[label.casefold()]
            norm = (x1 / width, y1 / height, x2 / width, y2 / height)
            box, issue = check_box(cls, *norm, tolerance, entry.line, "box dropped")
            out.accept(box, issue, entry.line)
    return out
