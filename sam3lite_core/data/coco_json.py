"""`read_coco`: a COCO detection JSON read and checked before anything trusts it.

Evaluation and the training loader index images by id and annotations by image and category; a file written by
hand or by another tool can break that in ways that surface as a KeyError deep inside, or, worse, as a result:
annotations whose category is not listed are ignored by COCOeval, so every stat reads -1 and the command
succeeds. The check refuses such a file with one message naming the file and the first bad record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_SHOWN = 160  # characters of a bad record quoted in the message
_FIX = "fix the file, or evaluate a dataset folder (sam3lite converts it into a valid COCO JSON)"


class CocoError(ValueError):
    """A COCO JSON that cannot be used; the message names the file, the first bad record and what to do."""


def _quote(record: Any) -> str:
    text = json.dumps(record, default=str)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _list(data: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        found = "no" if value is None else f"a {type(value).__name__} as"
        raise CocoError(
            f"{source}: {found} {key!r} list at the top level; a COCO detection file has "
            f"'images', 'annotations' and 'categories' lists; {_FIX}"
        )
    return value


def _ids(records: list[Any], key: str, source: str, required: tuple[str, ...]) -> set[int]:
    """The ids of `records` (the `key` list), each a mapping with `required` fields and a unique integer id."""
    seen: set[int] = set()
    for n, record in enumerate(records):
        missing = [f for f in required if not isinstance(record, Mapping) or f not in record]
        if missing:
            raise CocoError(f"{source}: {key}[{n}] has no {', '.join(map(repr, missing))}: {_quote(record)}; {_FIX}")
        if not isinstance(record["id"], int) or isinstance(record["id"], bool):
            raise CocoError(f"{source}: {key}[{n}] has a non-integer id: {_quote(record)}; {_FIX}")
        if record["id"] in seen:
            raise CocoError(f"{source}: {key}[{n}] repeats id {record['id']}: {_quote(record)}; ids must be unique")
        seen.add(record["id"])
    return seen


def check_coco(data: Any, source: str) -> dict[str, Any]:
    """`data` when it is a usable COCO detection dict (images, annotations and categories with unique ids; every
    annotation's image and category listed, a 4-number bbox); else CocoError naming `source`."""
    if not isinstance(data, dict):
        raise CocoError(
            f"{source}: the top level is a {type(data).__name__}, not a COCO object "
            f"{{'images': [...], 'annotations': [...], 'categories': [...]}}; {_FIX}"
        )
    images = _ids(_list(data, "images", source), "images", source, ("id", "file_name", "width", "height"))
    categories = _ids(_list(data, "categories", source), "categories", source, ("id", "name"))
    annotations = _list(data, "annotations", source)
    _ids(annotations, "annotations", source, ("id", "image_id", "category_id", "bbox"))
    for n, ann in enumerate(annotations):
        bbox = ann["bbox"]
        if not isinstance(ann["image_id"], int) or ann["image_id"] not in images:
            problem = f"refers to image_id {ann['image_id']!r}, which is not in 'images'"
        elif not isinstance(ann["category_id"], int) or ann["category_id"] not in categories:
            problem = (
                f"has category_id {ann['category_id']!r}, which is not in 'categories' "
                f"(listed: {sorted(categories)[:20]})"
            )
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            problem = "has a bbox that is not [x, y, width, height] numbers"
        else:
            continue
        raise CocoError(f"{source}: annotations[{n}] {problem}: {_quote(ann)}; {_FIX}")
    return data


def read_coco(path: str | Path) -> dict[str, Any]:
    """The checked COCO dict of the JSON file at `path` (check_coco); CocoError for an unreadable file too."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise CocoError(f"{path}: cannot read the COCO JSON ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise CocoError(f"{path}: not UTF-8 text (byte {exc.start}); save the COCO JSON as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise CocoError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    return check_coco(data, str(path))
