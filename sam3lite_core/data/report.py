"""What a dataset scan tells the user: every problem with its file, line, reason and the action taken.

The report is data (pydantic, JSON-serialisable for Dagster metadata and `sam3lite convert --json`) and text
(`str(report)`, for the CLI). Its counts add up to the input, so nothing disappears silently:

    images_found     == images + skipped
    annotations_read == boxes + dropped + duplicates_removed
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

Action = Literal[
    "fatal",
    "refused",
    "image skipped",
    "file ignored",
    "line dropped",
    "box dropped",
    "box clipped",
    "duplicate removed",
    "kept as background",
    "normalised",
]

# Lines of the same code shown in the text form before "... and N more"; the data form keeps them all.
TEXT_LINES_PER_CODE = 10


class Problem(BaseModel):
    """One thing that was wrong with the input, and what the scan did about it."""

    file: str = Field(description="path relative to the dataset root ('' for the dataset itself)")
    line: int | None = Field(default=None, description="1-based line number within `file`, when it applies")
    code: str = Field(description="stable machine id, e.g. 'class_id', 'bad_image', 'labelmap_missing'")
    reason: str
    action: Action
    hint: str | None = Field(default=None, description="what to do about it (always set for fatal problems)")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else (self.file or "<dataset>")
        text = f"{where}: {self.reason} -> {self.action}"
        return f"{text}; to fix: {self.hint}" if self.hint else text


class ScanCounts(BaseModel):
    images_found: int = 0
    images: int = Field(default=0, description="images kept (with boxes or as backgrounds)")
    backgrounds: int = Field(default=0, description="kept images with no box")
    skipped: int = 0
    label_files: int = 0
    orphan_labels: int = Field(default=0, description="label files without an image (ignored)")
    annotations_read: int = Field(default=0, description="label lines / detections read for kept images")
    boxes: int = 0
    dropped: int = 0
    clipped: int = Field(default=0, description="kept boxes clipped to the image (a subset of `boxes`)")
    duplicates_removed: int = 0
    polygon_lines: int = Field(default=0, description="YOLO-seg lines read as the extent of their polygon")
    boxes_per_class: list[int] = Field(default_factory=list)


class ScanReport(BaseModel):
    """The result of `scan_dataset`: counts, problems, classes and (when the layout is valid) the signature."""

    root: str
    dataset_id: str
    format: Literal["yolo", "qwen", "unknown"] = "unknown"
    arrangement: Literal["split", "flat", "unknown"] = "unknown"
    classes: list[str] = Field(default_factory=list)
    signature: str | None = None
    counts: ScanCounts = Field(default_factory=ScanCounts)
    problems: list[Problem] = Field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "fatal"]

    @property
    def ok(self) -> bool:
        return not self.fatal

    def problems_by_code(self) -> dict[str, int]:
        return dict(Counter(p.code for p in self.problems))

    def summary(self) -> str:
        """`N images, M backgrounds, K skipped` in the spirit of Ultralytics' scan line."""
        c = self.counts
        return f"{c.images} images, {c.backgrounds} backgrounds, {c.skipped} skipped"

    def to_metadata(self, max_problems: int = 50) -> dict:
        """A bounded JSON-serialisable view (Dagster metadata): counts, problems per code, the first problems."""
        return {
            "summary": self.summary(),
            "ok": self.ok,
            "signature": self.signature,
            "classes": self.classes,
            "counts": self.counts.model_dump(),
            "problems_by_code": self.problems_by_code(),
            "problems": [p.model_dump() for p in self.problems[:max_problems]],
            "problems_left_out": max(0, len(self.problems) - max_problems),
        }

    def text(self, lines_per_code: int | None = TEXT_LINES_PER_CODE) -> str:
        """Readable form: header, counts, then the problems (fatal first), capped per code unless None."""
        c = self.counts
        layout = f"{self.format}, {self.arrangement} layout, {len(self.classes)} classes"
        if self.format == "unknown":  # the layout itself was unusable: nothing was counted
            out = [f"Scanned {self.root}: not a usable dataset"]
        else:
            out = [f"Scanned {self.root} ({layout}): {self.summary()}"]
            out.append(
                f"  boxes: {c.boxes} kept ({c.clipped} clipped), {c.dropped} dropped, "
                f"{c.duplicates_removed} duplicates removed, from {c.annotations_read} read"
            )
            out.append(f"  label files: {c.label_files}, {c.orphan_labels} without an image (ignored)")
        if c.polygon_lines:
            out.append(f"  {c.polygon_lines} polygon lines read as the extent of their polygon")
        shown: Counter[str] = Counter()
        ordered = self.fatal + [p for p in self.problems if p.action != "fatal"]
        for problem in ordered:
            shown[problem.code] += 1
            if lines_per_code is None or shown[problem.code] <= lines_per_code:
                out.append(f"  {'FATAL ' if problem.action == 'fatal' else ''}{problem}")
        total = self.problems_by_code()
        for code, count in total.items():
            if lines_per_code is not None and count > lines_per_code:
                out.append(f"  ... and {count - lines_per_code} more '{code}' problems (see the JSON report)")
        if not self.ok:
            out.append(f"FAILED: {len(self.fatal)} fatal problem(s); nothing was converted")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.text()


class DatasetError(ValueError):
    """A dataset that cannot be used. The message names the file, the line, the reason and what to do;
    `report` carries the full scan report when one was made."""

    def __init__(self, problem: Problem, report: ScanReport | None = None) -> None:
        self.problem = problem
        self.report = report
        super().__init__(str(problem))


def fatal(file: str, code: str, reason: str, hint: str) -> DatasetError:
    """A DatasetError for a fatal problem found before a report exists (layout, labelmap)."""
    return DatasetError(Problem(file=file, code=code, reason=reason, action="fatal", hint=hint))
