"""`scan_dataset`: validate a staged dataset and say, for every problem, the file, the line, the reason and the
action taken, with counts that add up to the input (report.py).

Every problem class the backend's users hit is handled here: unreadable or truncated images, label files
without images and images without label files, malformed lines (columns, non-numeric, NaN/inf, class ids),
boxes outside the image or without area, duplicates, text formatting, bad class names, missing labelmap or
train split, files escaping the dataset root, and a dataset with nothing valid left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sam3lite_core.data.boxcheck import DEFAULT_CLIP_TOLERANCE, Box, Issue, LabelFile
from sam3lite_core.data.decode import default_max_pixels, over_budget
from sam3lite_core.data.files import IMAGE_SUFFIXES, ImageInput, InputFiles, collect_inputs, suffix
from sam3lite_core.data.gcpause import paused_gc
from sam3lite_core.data.layout import DatasetLayout, SplitDirs, find_layout
from sam3lite_core.data.qwen import QwenEntry, entry_boxes, parse_annotations, read_qwen_classes
from sam3lite_core.data.report import Action, DatasetError, Problem, ScanCounts, ScanReport
from sam3lite_core.data.signature import FactsCache, signature_of
from sam3lite_core.data.yolo import check_class_names, decode_text, parse_label_lines, parse_labelmap

# Far above any real annotation density (dense aerial scenes have a few thousand objects), far below a label file
# that is not what it claims (1.4 M rows on one image: a concatenation, or the wrong file paired).
DEFAULT_MAX_BOXES_PER_IMAGE = 10_000


class ScanSettings(BaseModel):
    """How the scan treats borderline input; part of the conversion cache key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    missing_labels: Literal["background", "skip"] = Field(
        default="background", description="an image without a label file: a background image, or skipped"
    )
    clip_tolerance: float = Field(
        default=DEFAULT_CLIP_TOLERANCE,
        ge=0.0,
        le=0.5,
        description="boxes up to this far outside the image (normalised) are clipped; further out, dropped",
    )
    max_pixels: int = Field(
        default_factory=default_max_pixels,
        ge=1,
        description="decode budget: images declaring more pixels are skipped (default SAM3LITE_MAX_PIXELS or 100 MP)",
    )
    max_boxes_per_image: int = Field(
        default=DEFAULT_MAX_BOXES_PER_IMAGE,
        ge=1,
        description="boxes kept per image; the rows beyond are dropped with a problem naming the file",
    )


@dataclass(slots=True)
class ImageRecord:
    """A kept image: where it is and its boxes `(class_id, x1, y1, x2, y2)` normalised to the image."""

    split: SplitDirs
    rel: str  # relative to the dataset root
    file_name: str  # relative to split.base (the COCO file_name)
    width: int
    height: int
    boxes: list[Box]


@dataclass
class Scan:
    report: ScanReport
    records: list[ImageRecord]


_CLASS_HINT = "name every class once, one per line (line 1 = class 0)"


def _problems(file: str, issues: list[Issue], hint: str | None = None) -> list[Problem]:
    return [
        Problem(
            file=file,
            line=i.line,
            code=i.code,
            reason=i.reason,
            action=i.action,
            hint=hint if i.action == "fatal" else None,
        )
        for i in issues
    ]


class _Scanner:
    def __init__(self, inputs: InputFiles, facts: FactsCache, settings: ScanSettings) -> None:
        self.inputs, self.facts, self.settings = inputs, facts, settings
        self.layout: DatasetLayout = inputs.layout
        self.counts = ScanCounts()
        self.problems: list[Problem] = []
        self.records: list[ImageRecord] = []
        self.qwen: dict[str, dict[str, QwenEntry]] = {}  # split name -> image name -> entry
        self.annotations = {s.name: e.rel for s, e in zip(self.layout.splits, inputs.annotation_files)}
        # file_name = image rel minus this prefix (the split base relative to the root, "" for the root itself)
        self.prefix = {
            s.name: len(self.layout.rel(s.base)) + 1 if s.base != self.layout.root else 0 for s in self.layout.splits
        }

    def classes(self) -> list[str]:
        entry = self.inputs.classes_file
        if self.layout.format == "yolo":
            assert entry is not None
            names, issues = parse_labelmap(self.facts.content(entry))
            self.problems += _problems(entry.rel, issues, _CLASS_HINT)
            return names
        names = read_qwen_classes(Path(entry.path)) if entry is not None else None
        if names is None:  # no metadata.json classes: every label used, sorted (stable as images are added)
            names = sorted(
                {
                    str(d.get("label", "")).strip()
                    for entries in self.qwen.values()
                    for e in entries.values()
                    for d in e.detections
                    if isinstance(d, dict)
                }
                - {""}
            )
        file = entry.rel if entry is not None else self.annotations["train"]
        self.problems += _problems(file, check_class_names(names), 'list each class once in metadata.json "classes"')
        return names

    def read_qwen(self) -> None:
        for split, entry in zip(self.layout.splits, self.inputs.annotation_files):
            lines, fmt = decode_text(self.facts.content(entry))
            self.qwen[split.name], issues = parse_annotations(lines)
            self.problems += _problems(entry.rel, ([fmt] if fmt else []) + issues)

    def labels(self, item: ImageInput, class_ids: dict[str, int], width: int, height: int) -> LabelFile | None:
        """The image's boxes; None when it has no annotations at all (the missing-label policy decides)."""
        if self.layout.format == "qwen":
            entry = self.qwen[item.split.name].pop(self.file_name(item), None)
            if entry is None:
                return None
            return entry_boxes(entry, class_ids, width, height, self.settings.clip_tolerance)
        if item.label is None:
            return None
        lines, fmt = decode_text(self.facts.content(item.label))
        parsed = parse_label_lines(lines, len(class_ids), self.settings.clip_tolerance)
        if fmt is not None:
            parsed.issues.insert(0, fmt)
        return parsed

    def file_name(self, item: ImageInput) -> str:
        return item.image.rel[self.prefix[item.split.name] :]

    def image(self, item: ImageInput, class_ids: dict[str, int]) -> None:
        c = self.counts
        c.images_found += 1
        facts = self.facts.get(item.image, image=True)
        if facts.error:
            self.skip(item.image.rel, "bad_image", facts.error)
            return
        too_large = over_budget(facts.width, facts.height, self.settings.max_pixels)
        if too_large:
            self.skip(item.image.rel, "over_budget", too_large)
            return
        try:
            parsed = self.labels(item, class_ids, facts.width, facts.height)
        except (UnicodeDecodeError, OSError) as exc:
            assert item.label is not None  # Qwen annotations were read (and reported) before the images
            self.skip(item.label.rel, "label_unreadable", f"label file is not readable UTF-8 text ({exc})")
            return
        if parsed is None:
            reason = "no label file" if self.layout.format == "yolo" else "no entry in annotations.jsonl"
            if self.settings.missing_labels == "skip":
                self.skip(item.image.rel, "missing_label", reason)
                return
            self.note(item.image.rel, "missing_label", reason, "kept as background")
            parsed = LabelFile()
        source = self.annotations.get(item.split.name) or (item.label.rel if item.label else item.image.rel)
        self.problems += _problems(source, parsed.issues)
        self.cap_boxes(source, parsed)
        c.images += 1
        c.backgrounds += not parsed.boxes
        c.annotations_read += parsed.read
        c.boxes += len(parsed.boxes)
        c.dropped += parsed.dropped
        c.clipped += parsed.clipped
        c.duplicates_removed += parsed.duplicates
        c.polygon_lines += parsed.polygons
        for box in parsed.boxes:
            c.boxes_per_class[box[0]] += 1
        name = self.file_name(item)
        self.records.append(ImageRecord(item.split, item.image.rel, name, facts.width, facts.height, parsed.boxes))

    def cap_boxes(self, source: str, parsed: LabelFile) -> None:
        """Keep the first `max_boxes_per_image` boxes; the rest are dropped, with one problem saying so."""
        cap = self.settings.max_boxes_per_image
        extra = len(parsed.boxes) - cap
        if extra <= 0:
            return
        reason = (
            f"{len(parsed.boxes)} boxes on one image, over max_boxes_per_image={cap}; is it the right label "
            f"file? the first {cap} are kept"
        )
        self.note(source, "too_many_boxes", reason, "box dropped")
        del parsed.boxes[cap:]
        parsed.dropped += extra
        parsed.clipped = min(parsed.clipped, cap)

    def note(self, file: str, code: str, reason: str, action: Action, line: int | None = None) -> None:
        self.problems.append(Problem(file=file, line=line, code=code, reason=reason, action=action))

    def skip(self, file: str, code: str, reason: str) -> None:
        self.counts.skipped += 1
        self.note(file, code, reason, "image skipped")

    def run(self) -> tuple[list[str], list[ImageRecord]]:
        if self.layout.format == "qwen":
            self.read_qwen()
        names = self.classes()
        class_ids = {name.casefold(): i for i, name in enumerate(names)}
        self.counts.boxes_per_class = [0] * len(names)
        for rel, code, reason in self.inputs.refused:
            if suffix(rel) in IMAGE_SUFFIXES:
                self.counts.images_found += 1
                self.counts.skipped += 1
            self.note(rel, code, reason, "refused")
        for item in self.inputs.images:
            self.image(item, class_ids)
        self.unmatched()
        self.final_checks()
        return names, self.records

    def unmatched(self) -> None:
        self.counts.label_files = self.inputs.label_files
        self.counts.orphan_labels = len(self.inputs.orphan_labels)
        for entry in self.inputs.orphan_labels:
            self.note(entry.rel, "orphan_label", "label file without an image", "file ignored")
        for split_name, entries in self.qwen.items():  # what is left: entries no image file claimed
            file = self.annotations[split_name]
            for name, entry in entries.items():
                if name.startswith("../") or name == "..":
                    self.note(file, "escapes_root", f"{name!r} is outside the dataset root", "refused", entry.line)
                else:
                    reason = f"image {name!r} is not in {split_name}/"
                    self.note(file, "orphan_label", reason, "line dropped", entry.line)

    def final_checks(self) -> None:
        if self.counts.images == 0:
            self.problems.append(
                Problem(
                    file="",
                    code="no_valid_images",
                    action="fatal",
                    reason=f"no usable image left ({self.counts.images_found} found, {self.counts.skipped} skipped)",
                    hint="fix the problems above; images go in train/images (YOLO) or train/ (Qwen)",
                )
            )
        elif self.counts.boxes == 0:
            self.problems.append(
                Problem(
                    file="",
                    code="no_boxes",
                    action="fatal",
                    reason="no valid box in the whole dataset",
                    hint="check that the label files match the images and the labelmap",
                )
            )


def scan_inputs(inputs: InputFiles, facts: FactsCache, settings: ScanSettings, signature: str) -> Scan:
    """Scan collected inputs whose content `signature` (signature_of) was just computed with the same `facts`,
    so the scan re-reads no image and no text file."""
    layout = inputs.layout
    scanner = _Scanner(inputs, facts, settings)
    names, records = scanner.run()
    report = ScanReport(
        root=str(layout.given_root),
        dataset_id=layout.dataset_id,
        format=layout.format,
        arrangement=layout.arrangement,
        classes=names,
        signature=signature,
        counts=scanner.counts,
        problems=scanner.problems,
    )
    return Scan(report, records)


def failed_report(root: str | Path, error: DatasetError) -> ScanReport:
    """The report of a folder whose layout is unusable: just the fatal problem."""
    return ScanReport(root=str(root), dataset_id=Path(root).name, problems=[error.problem])


def scan_dataset(
    root: str | Path, settings: ScanSettings | None = None, *, cache_dir: str | Path | None = None
) -> ScanReport:
    """Validate the dataset at `root` without writing into it. Never raises for dataset problems: fatal ones
    are in `report.fatal` (and `report.ok` is False). With `cache_dir`, unchanged images are not re-read."""
    with paused_gc():
        try:
            inputs = collect_inputs(find_layout(root))
        except DatasetError as exc:
            return failed_report(root, exc)
        facts = FactsCache(inputs.layout.root, cache_dir)
        scan = scan_inputs(inputs, facts, settings or ScanSettings(), signature_of(inputs, facts))
        facts.save()
    return scan.report
