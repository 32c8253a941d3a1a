"""A team's own labels (CSV or JSONL) -> CaC annotation records.

One row per anomaly (or one row for a normal video), columns:

| column | required | meaning |
| --- | --- | --- |
| ``video`` | yes | the video file (relative to ``video_root``, else to the labels file) |
| ``status`` | yes | ``normal`` or ``abnormal`` |
| ``type`` | abnormal rows | one of CaC's five types (spelling tolerated: "physics violation", "text anomaly") |
| ``start``, ``end`` | no | the anomaly's time in seconds; without them the row is status-only (docs/annotations.md) |
| ``box`` | no | ``x1,y1,x2,y2`` (or a JSON list), held over the window; pixels of the video by default (``box_scale``) |
| ``prompt``, ``reason``, ``region``, ``saliency`` | no | as in the annotation format |

Rows of one video become one record; a video whose rows disagree on its status, an unknown
type, a window outside the video or a box outside the frame is a bad row, reported with its line;
a malformed cell (``"[10,10,30"``, a start that is no number) names its column too. A record's
``provenance`` lists the file and the lines of its rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cac_align.cac.schema import SALIENCY, AnnotationRecord, Anomaly, normalize_type
from cac_align.data.convert import BadRow, SourceReport, box_to_grid, seconds_to_window, video_info

__all__ = ["collect", "parse_row"]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _seconds(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadRow(f"column '{name}' must be seconds, got {value!r}", kind="malformed cell") from None


def _box_cell(raw: Any) -> Any:
    """A ``box`` cell: ``x1,y1,x2,y2`` or a JSON list; :class:`BadRow` naming the column when it is neither."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRow(f"column 'box': {text!r} is not a list of four numbers ({exc.msg} at character {exc.pos + 1})", kind="malformed cell") from None
    return text.split(",")


def parse_row(row: Any, base: Path, video_root: Path | None, box_scale: str) -> tuple[str, dict, Anomaly | None]:
    """(video path, record fields, the row's anomaly or None) of one labels row."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be an object, got {type(row).__name__}", kind="malformed row")
    if _blank(row.get("video")):
        raise BadRow("column 'video' is empty", kind="no video")
    path = Path(str(row["video"]))
    info = video_info(path if path.is_absolute() else (video_root or base) / path)
    status = str(row.get("status", "")).strip().lower()
    if status not in ("normal", "abnormal"):
        raise BadRow(f"column 'status' must be normal or abnormal, got {row.get('status')!r}", kind="malformed cell")
    fields = {"video": info.path, "prompt": "" if _blank(row.get("prompt")) else str(row["prompt"]), "status": status,
              "annotation_fps": info.fps, "num_frames": info.num_frames}
    if status == "normal":
        if not _blank(row.get("type")):
            raise BadRow(f"column 'type': a normal row has a type ({row['type']!r})", kind="malformed cell")
        return info.path, fields, None
    kind = normalize_type(row.get("type"))
    if kind is None:
        raise BadRow(f"column 'type': unknown type {row.get('type')!r} (one of Object Distortion, Human Distortion, Motion Anomalies, Physical Violations, Character Anomalies)", kind="unknown category")
    saliency = "salient" if _blank(row.get("saliency")) else str(row["saliency"]).strip()
    if saliency not in SALIENCY:
        raise BadRow(f"column 'saliency' must be salient or non-salient, got {saliency!r}", kind="malformed cell")
    frames, boxes = None, {}
    if _blank(row.get("start")) != _blank(row.get("end")):
        raise BadRow("columns 'start' and 'end': give both (seconds), or neither (a status-only row)", kind="malformed cell")
    if not _blank(row.get("start")):
        start, end = _seconds(row["start"], "start"), _seconds(row["end"], "end")
        try:
            frames = seconds_to_window(start, end, info)
        except BadRow as exc:
            raise BadRow(f"columns 'start', 'end': {exc}", kind=exc.kind) from None
    if not _blank(row.get("box")):
        if frames is None:
            raise BadRow("column 'box': a box needs the anomaly's 'start' and 'end'", kind="malformed cell")
        cell = _box_cell(row["box"])
        try:
            box = box_to_grid(cell, box_scale, info.width, info.height)
        except BadRow as exc:
            raise BadRow(f"column 'box': {exc}", kind=exc.kind) from None
        if box is not None:
            boxes = {f: [list(box)] for f in range(frames[0], frames[1] + 1)}
    reason = "" if _blank(row.get("reason")) else str(row["reason"])
    region = "" if _blank(row.get("region")) else str(row["region"])
    return info.path, fields, Anomaly(type=kind, frames=frames, boxes=boxes, reason=reason, region=region, saliency=saliency)


def collect(rows: list[tuple[int, Any]], base: Path, video_root: Path | None, box_scale: str, report: SourceReport) -> list[AnnotationRecord]:
    """All records of a labels file (rows of one video together); bad rows go to ``report``."""
    videos: dict[str, dict] = {}
    for line, row in rows:
        report.rows += 1
        try:
            if isinstance(row, BadRow):
                raise row
            path, fields, anomaly = parse_row(row, base, video_root, box_scale)
        except BadRow as exc:
            report.bad(line, str(exc), exc.kind)
            continue
        entry = videos.setdefault(os.path.realpath(path), {"fields": fields, "anomalies": [], "lines": []})
        if entry["fields"]["status"] != fields["status"]:
            report.bad(line, f"{path} is {fields['status']} here but {entry['fields']['status']} on line {entry['lines'][0]}", kind="conflicting rows")
            entry["conflict"] = True
            continue
        entry["lines"].append(line)
        if anomaly is not None:
            entry["anomalies"].append(anomaly)
    records = []
    for entry in videos.values():
        path = entry["fields"]["video"]
        if entry.get("conflict"):
            for line in entry["lines"]:
                report.bad(line, f"{path}: its rows disagree on the status (see above); the video is left out", kind="conflicting rows")
            continue
        records.append(AnnotationRecord(anomalies=entry["anomalies"], source=f"labels:{report.path}", license=report.license,
                                        provenance={"file": report.path, "lines": entry["lines"]}, **entry["fields"]))
    return records
