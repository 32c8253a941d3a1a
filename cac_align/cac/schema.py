"""CaC's anomaly taxonomy, annotation records, and the per-turn ``Judgment`` a model answers.

Conventions (CaC §3, DESIGN "The paper in one screen"):

- Five anomaly types, spelled exactly as :data:`ANOMALY_TYPES`.
- Frame indices refer to a *uniformly sampled* frame sequence at some rate (an annotation's
  ``annotation_fps``; the 4 fps scan in turn 1; the 8 fps clip in turn 2). Frame ``i`` at
  rate ``fps`` sits at ``i / fps`` s, and an inclusive frame window ``[a, b]`` covers the
  half-open time window ``[a / fps, (b + 1) / fps)``. :func:`frames_to_seconds` and
  :func:`seconds_to_frames` convert between the two, for any rate.
- Boxes are ``[xmin, ymin, xmax, ymax]`` in Qwen's normalized 0–1000 coordinates, keyed by
  frame index, with a list of boxes per frame.

Annotation files are JSONL, one :class:`AnnotationRecord` per line; see docs/annotations.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "ANOMALY_TYPES",
    "box_iou",
    "window_iou",
    "SALIENCY",
    "STATUSES",
    "Anomaly",
    "AnnotationError",
    "AnnotationRecord",
    "LoadedAnnotations",
    "frames_to_seconds",
    "load_annotations",
    "normalize_type",
    "seconds_to_frames",
    "validate_box",
    "write_annotations",
]

ANOMALY_TYPES: tuple[str, ...] = (
    "Object Distortion",
    "Human Distortion",
    "Motion Anomalies",
    "Physical Violations",
    "Character Anomalies",
)
STATUSES = ("normal", "abnormal")
SALIENCY = ("salient", "non-salient")
BOX_MAX = 1000.0

# First significant word of a type name -> canonical type. Covers "object distortion",
# "Physics Violation", "motion anomaly", "human body distortion", "text anomalies", ...
_TYPE_KEYWORDS = {
    "object": "Object Distortion",
    "human": "Human Distortion",
    "body": "Human Distortion",
    "person": "Human Distortion",
    "people": "Human Distortion",
    "anatomy": "Human Distortion",
    "anatomical": "Human Distortion",
    "motion": "Motion Anomalies",
    "movement": "Motion Anomalies",
    "temporal": "Motion Anomalies",
    "physics": "Physical Violations",
    "physical": "Physical Violations",
    "physic": "Physical Violations",
    "character": "Character Anomalies",
    "text": "Character Anomalies",
    "textual": "Character Anomalies",
    "letter": "Character Anomalies",
}
_TYPE_TAILS = {"distortion", "distortions", "anomaly", "anomalies", "violation", "violations", "deformation", "error", "errors", "issue", "issues", ""}


def normalize_type(name: Any) -> str | None:
    """Map a type as a model or annotator wrote it onto one of :data:`ANOMALY_TYPES`.

    Case, punctuation, plural and common synonyms are tolerated ("physics violation",
    "Motion anomaly", "object_distortion", "text anomalies"); anything else gives None.
    """
    if not isinstance(name, str):
        return None
    words = re.sub(r"[^a-z]+", " ", name.lower()).split()
    if not words:
        return None
    canonical = _TYPE_KEYWORDS.get(words[0])
    if canonical is None:
        return None
    # The rest must read as a type suffix ("distortion", "violations", ...), so that free text
    # such as "object falls through table" is not mistaken for a type.
    rest = [w for w in words[1:] if w not in {"body", "law", "laws", "and"}]
    if all(w in _TYPE_TAILS for w in rest):
        return canonical
    return None


# ---------------------------------------------------------------------------------------
# Time conversions
# ---------------------------------------------------------------------------------------
_EPS = 1e-6


def frames_to_seconds(start_frame: int, end_frame: int, fps: float) -> tuple[float, float]:
    """Inclusive frame window on a ``fps`` sequence -> half-open seconds ``[start, end)``.

    Example: frames [3, 7] at 4 fps -> [0.75, 2.0).
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if end_frame < start_frame:
        raise ValueError(f"inverted frame window [{start_frame}, {end_frame}]")
    return start_frame / fps, (end_frame + 1) / fps


def seconds_to_frames(start_s: float, end_s: float, fps: float) -> tuple[int, int]:
    """Half-open seconds ``[start, end)`` -> inclusive indices of the ``fps`` frames inside it.

    Frame ``i`` is inside when ``start <= i / fps < end``. Example: [0.75, 2.0) at 4 fps ->
    [3, 7]; the same window at 8 fps -> [6, 15]. Raises ValueError if no frame is inside.
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    first = max(0, math.ceil(start_s * fps - _EPS))
    last = math.ceil(end_s * fps - _EPS) - 1
    if last < first:
        raise ValueError(f"window [{start_s:g}, {end_s:g}) s holds no frame at {fps:g} fps")
    return first, last


def validate_box(box: Any) -> list[float]:
    """Check one ``[xmin, ymin, xmax, ymax]`` box in 0–1000 coordinates; return it as floats."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise ValueError(f"box must be [xmin, ymin, xmax, ymax], got {box!r}")
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"box coordinates must be numbers, got {box!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"box has non-finite coordinates: {box!r}")
    if any(v < 0 or v > BOX_MAX for v in values):
        raise ValueError(f"box {box!r} lies outside the 0-1000 normalized range")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box!r} is empty or inverted (need xmin < xmax, ymin < ymax)")
    return values


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[xmin, ymin, xmax, ymax]`` boxes (0 when disjoint)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def window_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two half-open time windows ``[start, end)`` (0 when disjoint)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------------------------------
# Annotation records
# ---------------------------------------------------------------------------------------
@dataclass
class Anomaly:
    """One annotated anomaly of a video.

    Attributes:
        type: one of :data:`ANOMALY_TYPES`.
        frames: inclusive ``[start, end]`` indices on the record's ``annotation_fps`` sequence,
            or None when the source says *that* the video has this anomaly but not *when*
            (a status-only label, e.g. VideoPhy-2's); such an anomaly has no boxes.
        boxes: frame index -> list of ``[xmin, ymin, xmax, ymax]`` (0–1000) for that frame.
        reason: why it is an anomaly.
        region: what part of the frame ("left hand", "shop sign").
        saliency: "salient" or "non-salient" (CaC Eq. 12 discounts non-salient ones).
        cot: optional reasoning text for this anomaly.
    """

    type: str
    frames: tuple[int, int] | None
    boxes: dict[int, list[list[float]]] = field(default_factory=dict)
    reason: str = ""
    region: str = ""
    saliency: str = "salient"
    cot: str | None = None

    @property
    def has_window(self) -> bool:
        """Whether the anomaly's time window is known (False for a status-only label)."""
        return self.frames is not None

    def window_s(self, fps: float) -> tuple[float, float]:
        """The anomaly's half-open time window in seconds (ValueError when it is unknown)."""
        if self.frames is None:
            raise ValueError(f"this {self.type} anomaly has no time window (a status-only label)")
        return frames_to_seconds(self.frames[0], self.frames[1], fps)


@dataclass
class AnnotationRecord:
    """One line of an annotation JSONL file: a video and what is wrong with it.

    Attributes:
        video: path of the video file (relative paths resolve against the JSONL's folder).
        prompt: the text prompt that generated the video.
        status: "normal" or "abnormal".
        annotation_fps: rate of the uniformly sampled frame sequence that frame indices use.
        anomalies: empty for normal videos, at least one for abnormal ones.
        num_frames: length of that sequence, if known (windows are checked against it).
        cot: optional whole-video reasoning.
        cot_source: who wrote the reasoning: "human", "template" (built from the annotation by
            ``cac-align synth-cot`` with no teacher) or "teacher:<model name>" (generate-verify
            synthesis); None when there is no reasoning.
        source: where the label comes from ("synthetic", "ViF-CoT-4K", "VideoPhy-2", "labels:
            FILE"), None when unknown.
        license: the licence of the label (and video) it was converted from ("CC BY 4.0", ...).
        provenance: where in the source the label was read, so it can be traced back to its row:
            ``{"file": ..., "line": ...}`` plus the source's own identifiers (VideoPhy-2's
            ``video_url`` and ``model_name``, ViF-CoT's media paths); None when unknown.
    """

    video: str
    prompt: str
    status: str
    annotation_fps: float
    anomalies: list[Anomaly] = field(default_factory=list)
    num_frames: int | None = None
    cot: str | None = None
    cot_source: str | None = None
    source: str | None = None
    license: str | None = None
    provenance: dict[str, Any] | None = None

    @property
    def status_only(self) -> bool:
        """An abnormal record some of whose anomalies have no time window (say *that*, not *when*)."""
        return any(not a.has_window for a in self.anomalies)

    def to_json(self) -> str:
        data = asdict(self)
        for anomaly in data["anomalies"]:
            anomaly["frames"] = list(anomaly["frames"]) if anomaly["frames"] is not None else None
            anomaly["boxes"] = {str(k): v for k, v in anomaly["boxes"].items()}
            if anomaly["cot"] is None:
                del anomaly["cot"]
        for key in ("num_frames", "cot", "cot_source", "source", "license", "provenance"):
            if data[key] is None:
                del data[key]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> "AnnotationRecord":
        """Validate and build a record; raises ValueError naming the first problem found."""
        _check_fields(
            data,
            allowed={"video", "prompt", "status", "annotation_fps", "anomalies", "num_frames", "cot", "cot_source", "source", "license", "provenance"},
            required=("video", "prompt", "status", "annotation_fps"),
            where="record",
        )
        if not isinstance(data["video"], str) or not data["video"]:
            raise ValueError("'video' must be a non-empty path string")
        if not isinstance(data["prompt"], str):
            raise ValueError("'prompt' must be a string")
        status = data["status"]
        if status not in STATUSES:
            raise ValueError(f"'status' must be 'normal' or 'abnormal', got {status!r}")
        fps = data["annotation_fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"'annotation_fps' must be a number > 0, got {fps!r}")
        num_frames = data.get("num_frames")
        if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
            raise ValueError(f"'num_frames' must be a positive integer, got {num_frames!r}")
        raw_anomalies = data.get("anomalies", [])
        if not isinstance(raw_anomalies, list):
            raise ValueError("'anomalies' must be a list")
        if status == "normal" and raw_anomalies:
            raise ValueError("status 'normal' but 'anomalies' is not empty")
        if status == "abnormal" and not raw_anomalies:
            raise ValueError("status 'abnormal' needs at least one anomaly")
        anomalies = [_anomaly_from_dict(a, i, num_frames) for i, a in enumerate(raw_anomalies)]
        for key in ("cot", "cot_source", "source", "license"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"'{key}' must be a string")
        provenance = data.get("provenance")
        if provenance is not None and not (isinstance(provenance, dict) and all(isinstance(k, str) for k in provenance)):
            raise ValueError("'provenance' must be an object with string keys")
        return cls(
            video=data["video"],
            prompt=data["prompt"],
            status=status,
            annotation_fps=float(fps),
            anomalies=anomalies,
            num_frames=num_frames,
            cot=data.get("cot"),
            cot_source=data.get("cot_source"),
            source=data.get("source"),
            license=data.get("license"),
            provenance=provenance,
        )


def _check_fields(data: Any, allowed: set[str], required: tuple[str, ...], where: str) -> None:
    """A JSON object with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    for key in required:
        if key not in data:
            raise ValueError(f"{where}: missing field '{key}'")


def _anomaly_from_dict(data: Any, index: int, num_frames: int | None) -> Anomaly:
    where = f"anomalies[{index}]"
    _check_fields(
        data,
        allowed={"type", "frames", "boxes", "reason", "region", "saliency", "cot"},
        required=("type", "frames", "saliency"),
        where=where,
    )
    if data["type"] not in ANOMALY_TYPES:
        hint = normalize_type(data["type"])
        extra = f" (did you mean '{hint}'?)" if hint else ""
        raise ValueError(f"{where}: unknown type {data['type']!r}{extra}; one of {list(ANOMALY_TYPES)}")
    frames = data["frames"]
    if frames is None:  # status-only: the type is known, the time is not (and so no boxes)
        if data.get("boxes"):
            raise ValueError(f"{where}: boxes need a frame window; 'frames' is null")
        if data["saliency"] not in SALIENCY:
            raise ValueError(f"{where}: 'saliency' must be 'salient' or 'non-salient', got {data['saliency']!r}")
        for key in ("reason", "region"):
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"{where}: '{key}' must be a string")
        return Anomaly(type=data["type"], frames=None, boxes={}, reason=data.get("reason", ""), region=data.get("region", ""),
                       saliency=data["saliency"], cot=data.get("cot"))
    if (
        not isinstance(frames, list)
        or len(frames) != 2
        or not all(isinstance(f, int) and not isinstance(f, bool) for f in frames)
    ):
        raise ValueError(f"{where}: 'frames' must be [start, end] integer frame indices, got {frames!r}")
    start, end = frames
    if start < 0 or end < start:
        raise ValueError(f"{where}: frame window {frames} is negative or inverted")
    if num_frames is not None and end >= num_frames:
        raise ValueError(f"{where}: frame window {frames} goes beyond the video ({num_frames} frames)")
    if data["saliency"] not in SALIENCY:
        raise ValueError(f"{where}: 'saliency' must be 'salient' or 'non-salient', got {data['saliency']!r}")
    raw_boxes = data.get("boxes", {})
    if not isinstance(raw_boxes, dict):
        raise ValueError(f"{where}: 'boxes' must map frame index -> list of boxes")
    boxes: dict[int, list[list[float]]] = {}
    for key, value in raw_boxes.items():
        try:
            frame = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: box key {key!r} is not a frame index") from None
        if not start <= frame <= end:
            raise ValueError(f"{where}: box for frame {frame} lies outside the window {frames}")
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}: boxes of frame {frame} must be a non-empty list of boxes")
        try:
            boxes[frame] = [validate_box(b) for b in value]
        except ValueError as exc:
            raise ValueError(f"{where}: frame {frame}: {exc}") from None
    for key in ("reason", "region"):
        if not isinstance(data.get(key, ""), str):
            raise ValueError(f"{where}: '{key}' must be a string")
    return Anomaly(
        type=data["type"],
        frames=(start, end),
        boxes=dict(sorted(boxes.items())),
        reason=data.get("reason", ""),
        region=data.get("region", ""),
        saliency=data["saliency"],
        cot=data.get("cot"),
    )


class AnnotationError(ValueError):
    """An annotation file has bad lines (strict mode); ``problems`` lists (line, reason)."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  line {n}: {reason}" for n, reason in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} bad annotation line(s):\n{lines}{more}")


@dataclass
class LoadedAnnotations:
    """Records that loaded, and (line number, reason) for each line that did not."""

    records: list[AnnotationRecord]
    skipped: list[tuple[int, str]]
    path: Path

    def __len__(self) -> int:
        return len(self.records)


def load_annotations(path: str | Path, strict: bool = True, check_videos: bool = False) -> LoadedAnnotations:
    """Read an annotation JSONL file.

    Every line is validated (JSON, required fields, known types, boxes in 0–1000 within their
    window, windows inside ``num_frames``). Relative ``video`` paths are resolved against the
    file's folder. With ``check_videos`` each video must exist, and windows are also checked
    against its decoded length.

    Args:
        path: the JSONL file.
        strict: raise :class:`AnnotationError` listing every bad line; with False, bad lines
            are skipped and reported in ``skipped`` (nothing is dropped silently).
        check_videos: also open each video (slower).
    """
    path = Path(path)
    if not path.is_file():
        from cac_align.config import relative_path_hint

        raise FileNotFoundError(f"annotation file not found: {path}{relative_path_hint(path)}")
    records: list[AnnotationRecord] = []
    problems: list[tuple[int, str]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = AnnotationRecord.from_dict(json.loads(line))
                video = Path(record.video)
                if not video.is_absolute():
                    record.video = str(path.parent / video)
                if check_videos:
                    _check_against_video(record)
            except json.JSONDecodeError as exc:
                problems.append((number, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            except (ValueError, OSError) as exc:
                problems.append((number, str(exc)))
            else:
                records.append(record)
    if problems and strict:
        raise AnnotationError(path, problems)
    return LoadedAnnotations(records, problems, path)


def _check_against_video(record: AnnotationRecord) -> None:
    from cac_align.video import load_video

    video = load_video(record.video)
    assert not isinstance(video, list)
    length = max(1, math.ceil(video.duration_s * record.annotation_fps - _EPS))
    for i, anomaly in enumerate(record.anomalies):
        if anomaly.frames is not None and anomaly.frames[1] >= length:
            raise ValueError(
                f"anomalies[{i}]: frame window {list(anomaly.frames)} goes beyond the video "
                f"({video.duration_s:.3f} s = {length} frames at {record.annotation_fps:g} fps)"
            )


def write_annotations(records: Iterable[AnnotationRecord], path: str | Path) -> Path:
    """Write records as JSONL (atomically: a temporary file renamed when complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
    tmp.replace(path)
    return path
