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
type, a window outside the video or a box outside the frame is a bad row, reported with its line.
"""

from __future__ import annotations

import json
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
        raise BadRow(f"'{name}' must be seconds, got {value!r}") from None


def parse_row(row: Any, base: Path, video_root: Path | None, box_scale: str) -> tuple[str, dict, Anomaly | None]:
    """(video path, record fields, the row's anomaly or None) of one labels row."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be an object, got {type(row).__name__}")
    if _blank(row.get("video")):
        raise BadRow("no 'video'")
    path = Path(str(row["video"]))
    info = video_info(path if path.is_absolute() else (video_root or base) / path)
    status = str(row.get("status", "")).strip().lower()
    if status not in ("normal", "abnormal"):
        raise BadRow(f"'status' must be normal or abnormal, got {row.get('status')!r}")
    fields = {"video": info.path, "prompt": "" if _blank(row.get("prompt")) else str(row["prompt"]), "status": status,
              "annotation_fps": info.fps, "num_frames": info.num_frames}
    if status == "normal":
        if not _blank(row.get("type")):
            raise BadRow(f"a normal row has a type ({row['type']!r})")
        return info.path, fields, None
    kind = normalize_type(row.get("type"))
    if kind is None:
        raise BadRow(f"unknown type {row.get('type')!r} (one of Object Distortion, Human Distortion, Motion Anomalies, Physical Violations, Character Anomalies)")
    saliency = "salient" if _blank(row.get("saliency")) else str(row["saliency"]).strip()
    if saliency not in SALIENCY:
        raise BadRow(f"'saliency' must be salient or non-salient, got {saliency!r}")
    frames, boxes = None, {}
    if _blank(row.get("start")) != _blank(row.get("end")):
        raise BadRow("give both 'start' and 'end' (seconds), or neither (a status-only row)")
    if not _blank(row.get("start")):
        frames = seconds_to_window(_seconds(row["start"], "start"), _seconds(row["end"], "end"), info)
    if not _blank(row.get("box")):
        if frames is None:
            raise BadRow("a box needs the anomaly's 'start' and 'end'")
        raw = row["box"]
        if isinstance(raw, str):
            raw = json.loads(raw) if raw.strip().startswith("[") else raw.split(",")
        box = box_to_grid(raw, box_scale, info.width, info.height)
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
            report.bad(line, str(exc))
            continue
        entry = videos.setdefault(path, {"fields": fields, "anomalies": [], "lines": []})
        if entry["fields"]["status"] != fields["status"]:
            report.bad(line, f"{path} is {fields['status']} here but {entry['fields']['status']} on line {entry['lines'][0]}")
            entry["conflict"] = True
            continue
        entry["lines"].append(line)
        if anomaly is not None:
            entry["anomalies"].append(anomaly)
    records = []
    for path, entry in videos.items():
        if entry.get("conflict"):
            for line in entry["lines"]:
                report.bad(line, f"{path}: its rows disagree on the status (see above); the video is left out")
            continue
        records.append(AnnotationRecord(anomalies=entry["anomalies"], source=f"labels:{report.path}", license=report.license, **entry["fields"]))
    return records
