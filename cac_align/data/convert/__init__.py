"""Public labelled sets -> CaC annotation records (docs/annotations.md), with a report.

One reader per source format turns its rows into :class:`~cac_align.cac.schema.AnnotationRecord`
values and says, for every row it does not convert, why:

- :mod:`.vif_cot`: ViF-CoT-4K (Skyra; CC BY 4.0), grounded artifacts in the reasoning text;
- :mod:`.videophy2`: VideoPhy-2 (MIT), one physical-commonsense label per video (status-only);
- :mod:`.labels`: a team's own CSV / JSONL labels.

Rules shared by every source (this module):

- times in seconds become frame windows on the **video's own** frame rate (the file is opened
  for its rate, length and size); a window outside the video is a bad row;
- boxes end on Qwen's 0–1000 grid;
- "AI-generated" never makes a video abnormal by itself: only an annotated defect does, and only
  real videos (or an explicit choice) are normal;
- every record keeps its ``source`` and ``license``;
- a row that cannot be converted (missing video, unknown category, window outside the video,
  ...) is listed in the report with its line and reason, never kept or dropped in silence;
  categories outside CaC's five types are dropped and counted by name.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cac_align.cac.schema import BOX_MAX, seconds_to_frames, validate_box

__all__ = ["BadRow", "RowResult", "SourceReport", "VideoInfo", "apply_results", "box_to_grid", "read_rows", "seconds_to_window", "video_info"]


class BadRow(ValueError):
    """A row that cannot be converted; the message is the reason the report gives, ``kind`` the
    short name the report groups it under ("missing video", "collision", ...)."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself: frame rate, frame count and frame size."""

    path: str
    fps: float
    num_frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


_INFO: dict[str, VideoInfo] = {}


def video_info(path: str | Path) -> VideoInfo:
    """Rate, length and size of a video file (cached); :class:`BadRow` when it is missing or unreadable."""
    key = str(path)
    if key in _INFO:
        return _INFO[key]
    if not Path(key).is_file():
        raise BadRow(f"missing video {key}", kind="missing video")
    from cac_align.video import VideoError, open_video_reader

    try:
        reader = open_video_reader(key)
        height, width = reader[0].shape[:2]
        info = VideoInfo(key, float(reader.get_avg_fps()), len(reader), int(width), int(height))
    except VideoError as exc:  # an empty file, said so
        raise BadRow(str(exc), kind="unreadable video") from None
    except Exception as exc:  # decord's own errors
        raise BadRow(f"unreadable video {key}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}", kind="unreadable video") from None
    if not (math.isfinite(info.fps) and info.fps > 0) or info.num_frames < 1:
        raise BadRow(f"video {key} reports {info.num_frames} frames at {info.fps} fps", kind="unreadable video")
    _INFO[key] = info
    return info


def seconds_to_window(start_s: float, end_s: float, info: VideoInfo) -> tuple[int, int]:
    """A labelled time span ``[start, end]`` in seconds -> an inclusive frame window on the video's
    own rate. An instant (``start == end``) is the frame on screen then. Raises :class:`BadRow`
    when the span is inverted, not finite, or lies outside the video."""
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise BadRow(f"time window [{start_s}, {end_s}] is not finite", kind="bad time window")
    if end_s < start_s:
        raise BadRow(f"time window [{start_s:g}, {end_s:g}] s is inverted", kind="bad time window")
    tolerance = 1.0 / info.fps  # a label rounded to the next frame time is not outside
    if start_s < -tolerance or start_s >= info.duration_s or end_s > info.duration_s + tolerance:
        raise BadRow(f"time window [{start_s:g}, {end_s:g}] s lies outside the video ({info.duration_s:.3f} s)", kind="window outside the video")
    start_s = max(0.0, start_s)
    end_s = min(max(end_s, start_s + 1.0 / info.fps), info.duration_s)
    first, last = seconds_to_frames(start_s, end_s, info.fps)
    return first, min(last, info.num_frames - 1)


def box_to_grid(box: Any, scale: str, width: float | None = None, height: float | None = None) -> list[float] | None:
    """One ``[x1, y1, x2, y2]`` box on Qwen's 0–1000 grid; None for an all-zero box (a global
    defect with no place). ``scale``: "fraction" (0–1), "thousand" (0–1000 already) or
    "pixels" (of a ``width`` x ``height`` frame). Raises :class:`BadRow` for a malformed box, one
    outside its frame, or an empty one."""
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise BadRow(f"box {box!r} is not four numbers", kind="bad box") from None
    if len(values) != 4:
        raise BadRow(f"box {box!r} is not four numbers", kind="bad box")
    if all(v == 0 for v in values):
        return None
    if scale == "fraction":
        grid = [v * BOX_MAX for v in values]
    elif scale == "thousand":
        grid = values
    elif scale == "pixels":
        if not width or not height:
            raise BadRow("pixel boxes need the size of the frames they refer to", kind="bad box")
        if max(values[0], values[2]) > width + 0.5 or max(values[1], values[3]) > height + 0.5:
            raise BadRow(f"box {box!r} lies outside the {width:g}x{height:g} frame its coordinates refer to", kind="bad box")
        grid = [values[0] / width * BOX_MAX, values[1] / height * BOX_MAX, values[2] / width * BOX_MAX, values[3] / height * BOX_MAX]
    else:  # pragma: no cover - callers pass one of the three
        raise ValueError(f"unknown box scale {scale!r}")
    grid = [min(BOX_MAX, max(0.0, round(v, 1))) for v in grid]
    try:
        return validate_box(grid)
    except ValueError as exc:
        raise BadRow(f"box {box!r}: {exc}", kind="bad box") from None


def _json_array_rows(text: str) -> Iterator[tuple[int, Any]]:
    """``(file line, element)`` of a JSON array, each element numbered by the line it starts on
    (what an editor shows), not by its position in the list."""
    decoder = json.JSONDecoder()
    counted = [0, 1]  # (offset, line there): offsets only grow, so lines are counted once, in C

    def line_of(offset: int) -> int:
        counted[1] += text.count("\n", counted[0], offset)
        counted[0] = offset
        return counted[1]

    def skip(offset: int) -> int:
        while offset < len(text) and text[offset] in " \t\r\n":
            offset += 1
        return offset

    pos = skip(0)
    if pos >= len(text) or text[pos] != "[":
        yield line_of(pos), BadRow("a .json input must hold a list of rows", kind="not a list")
        return
    pos = skip(pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            element, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, BadRow(f"not JSON: {exc.msg} at column {exc.colno}", kind="not JSON")
            return  # the rest of the list cannot be found reliably
        yield line_of(pos), element
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        yield line_of(pos), BadRow("not JSON: expected ',' or ']' after an element", kind="not JSON")
        return


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """``(file line, row)`` of a JSONL file, a JSON array, or a CSV with a header; every row is
    numbered by the line of the file it starts on (a CSV field may span lines; a JSON array's
    element is numbered by its first line, not its position). A row that is not JSON is yielded as
    a :class:`BadRow` (the caller reports it)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            reader.fieldnames  # reads the header: line_num is now the header's last line
            start = reader.line_num + 1
            for row in reader:
                if None in row:  # more cells than the header names
                    yield start, BadRow(f"{len(row[None])} cell(s) more than the header's {len(reader.fieldnames or [])} columns", kind="malformed row")
                else:
                    yield start, {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
                start = reader.line_num + 1
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        yield from _json_array_rows(text)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, BadRow(f"not JSON: {exc.msg} at column {exc.colno}", kind="not JSON")


@dataclass
class SourceReport:
    """What one source gave: counts, dropped categories by name, rows dropped on purpose and bad
    rows, each with its file line and reason, and rows that resolved to one video file."""

    format: str
    path: str
    license: str
    rows: int = 0
    records: Counter = field(default_factory=Counter)  # by status
    anomalies: Counter = field(default_factory=Counter)  # by CaC type
    dropped_categories: Counter = field(default_factory=Counter)  # source category -> anomalies dropped
    dropped_rows: Counter = field(default_factory=Counter)  # reason -> rows converted to nothing, on purpose
    dropped_lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> the lines of those rows
    box_scales: Counter = field(default_factory=Counter)  # per record: how its boxes were read
    notes: Counter = field(default_factory=Counter)  # informative counts
    bad_rows: list[dict] = field(default_factory=list)  # {"line", "kind", "reason"}
    collisions: list[dict] = field(default_factory=list)  # {"video", "lines"}: rows that name one file

    def bad(self, line: int, reason: str, kind: str = "other") -> None:
        self.bad_rows.append({"line": int(line), "kind": str(kind), "reason": str(reason)})

    def drop(self, line: int, reason: str) -> None:
        """A row converted to nothing on purpose (not an error), counted with its line."""
        self.dropped_rows[reason] += 1
        self.dropped_lines.setdefault(reason, []).append(int(line))

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "path": self.path,
            "license": self.license,
            "rows": self.rows,
            "records": dict(self.records),
            "anomalies_by_type": dict(self.anomalies),
            "dropped_categories": dict(self.dropped_categories),
            "dropped_rows": dict(self.dropped_rows),
            "dropped_lines": {k: list(v) for k, v in self.dropped_lines.items()},
            "box_scales": dict(self.box_scales),
            "notes": dict(self.notes),
            "bad_rows": self.bad_rows,
            "collisions": self.collisions,
        }


@dataclass(frozen=True)
class RowResult:
    """What one row converted to: the video file it resolved to, and its record, or the reason it
    converts to nothing on purpose (``dropped``)."""

    video: str
    record: Any = None
    dropped: str | None = None


def apply_results(results: list[tuple[int, RowResult]], report: SourceReport) -> list[Any]:
    """The records of a source's rows, in order, after the one-file-one-label rule.

    Rows that resolve to one video file (records and rows dropped on purpose alike: a flat download
    where two generators' files share a name keeps only one of them) cannot say which label
    belongs to that file, so each of them is a bad row, listed in ``report.collisions``. The
    other rows' drops are counted with their lines.

    Args:
        results: ``(line, RowResult)`` of the rows that resolved a video.
    """
    lines_by_video: dict[str, list[int]] = {}
    for line, result in results:
        lines_by_video.setdefault(os.path.realpath(result.video), []).append(line)
    records = []
    for line, result in results:
        lines = lines_by_video[os.path.realpath(result.video)]
        if len(lines) > 1:
            others = ", ".join(str(other) for other in lines if other != line)
            report.bad(line, f"video {result.video} is also the video of line(s) {others}: one file cannot carry both rows' "
                             "labels (keep the dataset's folders when downloading: docs/train_your_own_cac.md)", kind="collision")
            if lines[0] == line:
                report.collisions.append({"video": result.video, "lines": list(lines)})
        elif result.dropped is not None:
            report.drop(line, result.dropped)
        else:
            records.append(result.record)
    return records
