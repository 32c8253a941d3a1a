"""VideoPhy-2 (HF ``videophysics/videophy2_train`` / ``_test``, MIT) -> status-only CaC records.

One human label per generated video: ``pc``, physical commonsense from 1 to 5, and the physics
rules it breaks (``physics_rules_unfollowed``) or a human judge named (``human_violated_rules``).
Export the split to JSONL or CSV (``datasets.load_dataset(...).to_json(...)``) and download the
videos; a row's video is its ``video`` path, or the file named like the end of its
``video_url`` under ``video_root``.

- **abnormal** when ``pc <= pc_threshold`` (2 by default) or a rule is listed: one anomaly of
  type Physical Violations, with the rules as its reason, and **no window and no box** (the label
  says that the video breaks physics, not when or where: a status-only record,
  docs/annotations.md);
- otherwise the video is only *physically plausible* to its annotators; it is AI-generated and
  was not checked for CaC's other anomalies, so it is not a reliable normal: it converts to
  nothing (``plausible_not_normal``) unless ``plausible_as_normal`` says to keep it as normal.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

from cac_align.cac.schema import AnnotationRecord, Anomaly
from cac_align.data.convert import BadRow, SourceReport, video_info

__all__ = ["LICENSE", "SOURCE", "convert_row", "rules"]

SOURCE = "VideoPhy-2"
LICENSE = "MIT"


def rules(value: Any) -> list[str]:
    """A rules field as a list: a list, a JSON or Python list literal, or ``;`` / newline separated text."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text or text.lower() in ("none", "nan", "[]", "null"):
        return []
    if text.startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(text)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return [str(v).strip() for v in parsed if str(v).strip()]
    return [part.strip() for part in text.replace("\n", ";").split(";") if part.strip()]


def _video_path(row: dict, base: Path, video_root: Path | None) -> Path:
    local = row.get("video") or row.get("video_path")
    if local:
        path = Path(str(local))
        return path if path.is_absolute() else (video_root or base) / path
    url = row.get("video_url")
    if not url:
        raise BadRow("no 'video', 'video_path' or 'video_url'")
    if video_root is None:
        raise BadRow(f"video_url {url!r} is remote: give video_root, the folder holding the downloaded videos")
    return video_root / str(url).rstrip("/").rsplit("/", 1)[-1]


def convert_row(row: Any, base: Path, video_root: Path | None, report: SourceReport, pc_threshold: int = 2, plausible_as_normal: bool = False) -> AnnotationRecord | None:
    """One VideoPhy-2 row -> a record (None: converted to nothing on purpose, counted in ``report``)."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be an object, got {type(row).__name__}")
    try:
        pc = float(row.get("pc"))
    except (TypeError, ValueError):
        raise BadRow(f"'pc' must be a number from 1 to 5, got {row.get('pc')!r}") from None
    if not (math.isfinite(pc) and 1 <= pc <= 5):
        raise BadRow(f"'pc' must be a number from 1 to 5, got {row.get('pc')!r}")
    broken = rules(row.get("physics_rules_unfollowed")) + rules(row.get("human_violated_rules"))
    info = video_info(_video_path(row, base, video_root))
    common = {"video": info.path, "prompt": str(row.get("caption") or row.get("prompt") or ""), "annotation_fps": info.fps,
              "num_frames": info.num_frames, "source": SOURCE, "license": report.license}
    if pc <= pc_threshold or broken:
        reason = "; ".join(dict.fromkeys(broken)) or f"physical commonsense rated {pc:g} of 5"
        anomaly = Anomaly(type="Physical Violations", frames=None, boxes={}, reason=reason, region="", saliency="salient")
        return AnnotationRecord(status="abnormal", anomalies=[anomaly], **common)
    if plausible_as_normal:
        report.notes["plausible_kept_as_normal"] += 1
        return AnnotationRecord(status="normal", **common)
    report.dropped_rows["plausible_not_normal"] += 1
    return None
