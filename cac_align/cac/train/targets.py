"""What a CaC training target says and where: frame geometry and the answer schema.

Shared by the sample builder (:mod:`cac_align.cac.train.data`), the reasoning writer
(:mod:`cac_align.cac.train.cot`), stage-3 rewards and the benchmark, so that none of them imports
another for these: which frame is on screen at a time, which shown frames a window holds, an
anomaly's boxes re-indexed to a clip, and target answers in the paper's schema (CaC App. Fig. S5).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from cac_align.cac.schema import Anomaly

__all__ = ["anomaly_json", "answer_json", "clip_boxes", "frames_shown", "on_screen"]

_EPS = 1e-6


def on_screen(time_s: float, fps: float) -> int:
    """Index of the frame of a ``fps`` sequence on screen at ``time_s``."""
    return int(math.floor(time_s * fps + _EPS))


def frames_shown(times: Sequence[float] | np.ndarray, window_s: tuple[float, float]) -> tuple[int, int]:
    """Inclusive indices of the shown frames (source times ``times``) inside a half-open window.

    A window shorter than the gap between shown frames may hold none of them; it is then
    the frame on screen when the window starts (the last one shown at or before it)."""
    times = np.asarray(times, dtype=np.float64)
    start, end = window_s
    inside = np.flatnonzero((times >= start - _EPS) & (times < end - _EPS))
    if inside.size:
        return int(inside[0]), int(inside[-1])
    before = np.flatnonzero(times <= start + _EPS)
    k = int(before[-1]) if before.size else 0
    return k, k


def clip_boxes(anomaly: Anomaly, annotation_fps: float, clip_times: np.ndarray) -> dict[int, list[list[float]]]:
    """An anomaly's boxes re-indexed to a clip: clip frame ``k`` (showing the source frame at
    ``clip_times[k]`` seconds) gets the boxes of the annotation frame on screen at that time."""
    out = {}
    for k, t in enumerate(np.asarray(clip_times, dtype=np.float64)):
        frame = on_screen(float(t), annotation_fps)
        if frame in anomaly.boxes:
            out[k] = anomaly.boxes[frame]
    return out


def _box_value(boxes: list[list[float]]) -> Any:
    """One box as a flat list, several as a list of lists (both parse back); integer 0-1000
    coordinates, as Qwen-VL writes them."""
    rounded = [[int(round(float(v))) for v in box] for box in boxes]
    return rounded[0] if len(rounded) == 1 else rounded


def answer_json(cot: str, status: str, anomalies: list[dict]) -> str:
    """A target answer in the paper's schema (CaC App. Fig. S5): COT, then status, then anomalies."""
    return json.dumps({"COT": cot, "status": status, "anomalies": anomalies}, ensure_ascii=False)


def anomaly_json(
    anomaly: Anomaly,
    time_region: tuple[int, int] | None = None,
    boxes: dict[int, list[list[float]]] | None = None,
) -> dict:
    """One anomaly of a target answer: "Attributed Time Region" (a frame range on the grid the
    turn saw), "Attributed Label", "Reason for Anomaly", "Problem Region" and "BBOX" (turn 2
    and frames: {"Frame k": box})."""
    entry: dict[str, Any] = {}
    if time_region is not None:
        entry["Attributed Time Region"] = f"{time_region[0]}-{time_region[1]}"
    entry["Attributed Label"] = anomaly.type
    entry["Reason for Anomaly"] = anomaly.reason
    entry["Problem Region"] = anomaly.region
    if boxes is not None:
        entry["BBOX"] = {f"Frame {k}": _box_value(b) for k, b in sorted(boxes.items())}
    return entry
