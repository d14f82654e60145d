"""YOLO text files: the labelmap and label files, parsed line by line with a reason for every rejected line.

Label lines, normalised to the image:
    cls cx cy w h                  a box
    cls x1 y1 x2 y2 x3 y3 ...      a YOLO-seg polygon (>= 3 points): the box is its extent
    cls cx cy w h x1 y1 ...        box + polygon, as the backend reads it: the polygon extent is used when it
                                   overlaps the box with IoU >= 0.9, otherwise all values are one polygon
"""

from __future__ import annotations

import codecs
import math

from sam3lite_core.data.boxcheck import Issue, LabelFile, check_box

_BOX_POLY_IOU = 0.9


def decode_text(data: bytes) -> tuple[list[str], Issue | None]:
    """Lines of a UTF-8 text file, stripped, with one 'normalised' issue naming any BOM, CRLF or stray blanks.
    Raises UnicodeDecodeError for bytes that are not UTF-8."""
    fixes = []
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        fixes.append("byte-order mark")
    text = data.decode("utf-8")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        fixes.append("CRLF line endings")
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n") if body else []
    stripped = [line.strip() for line in lines]
    if "" in stripped:
        fixes.append("blank lines")
    if any(clean and clean != line for clean, line in zip(stripped, lines)):
        fixes.append("leading or trailing whitespace")
    issue = Issue(None, "text_format", ", ".join(fixes) + " ignored", "normalised") if fixes else None
    return stripped, issue


def check_class_names(names: list[str]) -> list[Issue]:
    """Blank names inside the list, duplicate names (compared case-insensitively, as the text encoder
    lower-cases prompts) and an empty list are fatal: the name is the prompt, and two classes with one prompt
    would teach the model contradicting answers. Issue lines are 1-based positions (class id + 1)."""
    if not names:
        return [Issue(None, "labelmap_empty", "no class is listed", "fatal")]
    issues = []
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if not name:
            issues.append(Issue(number, "labelmap_blank_name", f"class {number - 1} has a blank name", "fatal"))
            continue
        first = seen.setdefault(name.casefold(), number)
        if first != number:
            reason = f"class {number - 1} {name!r} repeats the name of class {first - 1} (line {first})"
            issues.append(Issue(number, "labelmap_duplicate_name", reason, "fatal"))
    return issues


def parse_labelmap(data: bytes) -> tuple[list[str], list[Issue]]:
    """Class names by id (line index) and the issues found in them; see check_class_names."""
    lines, fmt = decode_text(data)
    while lines and not lines[-1]:
        lines.pop()  # trailing blank lines are formatting, not classes
    return lines, ([fmt] if fmt is not None else []) + check_class_names(lines)


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _polygon_box(values: list[float]) -> tuple[float, float, float, float]:
    xs, ys = values[1::2], values[2::2]
    if len(values) >= 11:
        cx, cy, w, h = values[1:5]
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        ext = (min(values[5::2]), min(values[6::2]), max(values[5::2]), max(values[6::2]))
        if w > 0 and h > 0 and _iou(box, ext) >= _BOX_POLY_IOU:
            return ext
    return min(xs), min(ys), max(xs), max(ys)


def parse_label_lines(lines: list[str], num_classes: int, tolerance: float) -> LabelFile:
    """Boxes `(cls, x1, y1, x2, y2)` (normalised, clipped) from stripped label lines, with an issue per line
    that was dropped, clipped or removed as a duplicate."""
    out = LabelFile()
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        out.read += 1
        parts = line.split()
        n = len(parts)
        if n != 5 and (n < 7 or n % 2 == 0):
            reason = f"{n} columns: expected 5 (box) or an odd count >= 7 (polygon)"
            out.drop(Issue(number, "columns", reason, "line dropped"))
            continue
        try:
            values = list(map(float, parts))
        except ValueError:
            out.drop(Issue(number, "not_numeric", f"non-numeric value in {line[:60]!r}", "line dropped"))
            continue
        if not all(map(math.isfinite, values)):
            out.drop(Issue(number, "not_finite", f"NaN or infinite value in {line[:60]!r}", "line dropped"))
            continue
        if values[0] != int(values[0]) or not 0 <= values[0] < num_classes:
            reason = f"class id {parts[0]} is not in the labelmap (0..{num_classes - 1})"
            out.drop(Issue(number, "class_id", reason, "line dropped"))
            continue
        if n == 5:
            cx, cy, w, h = values[1:]
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        else:
            out.polygons += 1
            x1, y1, x2, y2 = _polygon_box(values)
        box, issue = check_box(int(values[0]), x1, y1, x2, y2, tolerance, number, "line dropped")
        out.accept(box, issue, number)
    return out
