"""What a CaC training target says and where: frame geometry, the answer schema and template reasoning.

Shared by the sample builder (:mod:`cac_align.cac.train.data`), the reasoning writer
(:mod:`cac_align.cac.train.cot`), stage-3 rewards, the benchmark and the small model's tokenizer
corpus, so that none of them imports another (or a job) for these: which frame is on screen at a
time, which shown frames a window holds, an anomaly's boxes re-indexed to a clip, target answers
in the paper's schema (CaC App. Fig. S5), and the offline reasoning written from an annotation.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from cac_align.cac.prompts import TYPE_DEFINITIONS
from cac_align.cac.schema import AnnotationRecord, Anomaly

__all__ = [
    "anomaly_json",
    "answer_json",
    "checklist_cot",
    "clip_boxes",
    "frames_shown",
    "on_screen",
    "template_local_cot",
    "template_video_cot",
]

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


# ---------------------------------------------------------------------------------------
# Template reasoning (offline)
# ---------------------------------------------------------------------------------------
def template_video_cot(record: AnnotationRecord) -> str:
    """Whole-video reasoning in App. B.2's structure, written from the annotation alone."""
    scene = f'Scene: the video shows "{record.prompt}".' if record.prompt else "Scene: a generated video."
    if record.status == "normal":
        return (
            f"{scene} Frame by frame: the people keep a plausible anatomy, the objects keep their shape and size, "
            "and any text stays readable and unchanged. Across frames: motion is continuous and obeys physics; "
            "nothing appears, vanishes or floats without cause. Overall: no anomaly is visible, so the video is normal."
        )
    parts = [scene, "Frame by frame: outside the windows below, the people, objects and surroundings look consistent."]
    for anomaly in record.anomalies:
        where = f" in the {anomaly.region}" if anomaly.region else ""
        what = anomaly.reason or TYPE_DEFINITIONS[anomaly.type]
        if anomaly.has_window:
            start, end = anomaly.window_s(record.annotation_fps)
            parts.append(f"From {start:.2f} s to {end:.2f} s{where}, {what}.")
        else:  # a status-only label: what is wrong, not when
            parts.append(f"At some point{where}, {what}.")
        parts.append(f"Across frames: this is absent before and after the window, so it falls under {anomaly.type}.")
    parts.append("Overall: the video is abnormal.")
    return " ".join(parts)


_CHECKLISTS = {
    "video": "I follow each subject over time and check its shape, body, motion, support and any text.",
    "clip": "I compare the suspected subject across these frames, then box it where it is wrong.",
    "frame": "I check each subject's shape, body, support and any text in this frame.",
}


def checklist_cot(scope: str = "video") -> str:
    """A fixed inspection plan for ``scope`` ("video", "clip" or "frame") that does not state the
    verdict, so the answer's "status" is where the model decides (``data.template_cot:
    checklist``)."""
    if scope not in _CHECKLISTS:
        raise ValueError(f"scope must be one of {list(_CHECKLISTS)}, got {scope!r}")
    return _CHECKLISTS[scope]


def template_local_cot(anomalies: Sequence[Anomaly], scope: str = "clip") -> str:
    """Close-up reasoning for a stage-1 frame or a stage-2 clip showing ``anomalies`` (may be empty)."""
    what = "frame" if scope == "frame" else "stretch of frames"
    if not anomalies:
        return (
            f"Looking closely at this {what}: the subjects keep their shape, anatomy and text"
            + ("" if scope == "frame" else ", and move smoothly from frame to frame")
            + f". Nothing anomalous is visible, so this {what} is normal."
        )
    parts = [f"Looking closely at this {what}:"]
    for anomaly in anomalies:
        where = f"the {anomaly.region}" if anomaly.region else "one region"
        parts.append(f"in {where}, {anomaly.reason or TYPE_DEFINITIONS[anomaly.type]}, which falls under {anomaly.type}.")
    parts.append(f"The {what} is abnormal; the boxes mark where the defect is visible.")
    return " ".join(parts)
