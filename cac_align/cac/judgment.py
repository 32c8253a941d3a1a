"""What a model answered in one CaC turn, and a parser that copes with real VLM output.

:func:`parse_judgment` never raises on model text. It returns a :class:`Judgment` whose
``valid`` flag follows the paper's format reward (CaC §3.5, Eq. 8): every answer needs a valid
status; "normal" needs an empty anomaly list; "abnormal" in turn 1 needs, per anomaly, a known
type and a usable time window; "abnormal" in turn 2 needs a known type and boxes for frames
of the clip. ``errors`` say why an answer is invalid; ``warnings`` record repairs that did not
invalidate it (a trailing comma removed, an inverted box reordered, a coordinate clamped).

The paper's schema (CaC App. Fig. S5) is read as written: ``"COT"``, ``"status"`` and
``"anomalies"`` whose items hold ``"Attributed Time Region"`` (a frame range such as "3-5" on the
grid of frames that turn saw), ``"Attributed Label"``, ``"Reason for Anomaly"``, ``"Problem
Region"`` and, in turn 2, ``"BBOX"`` ({"Frame 0": [xmin, ymin, xmax, ymax], ...}); so are the
short keys ("type", "time" in seconds, "frames", "bbox", "reason", "region").

Tolerated: a JSON object inside a markdown fence or surrounded by prose, trailing commas,
single quotes / Python literals, keys in any case or spacing ("Status", "BBOX", "Frame 0"),
boxes as strings or floats or 0–1 fractions, windows as ``[3, 7]``, "frames 3-7", "3 to 7",
"1.5s - 2.0s" or ``{"start": .., "end": ..}``, and truncated output (parsed as far as it goes,
but marked invalid).
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cac_align.cac.schema import BOX_MAX, frames_to_seconds, normalize_type, seconds_to_frames

__all__ = ["JudgedAnomaly", "Judgment", "answer_fields", "extract_json", "parse_judgment"]

_MAX_CHARS = 200_000  # longer text is cut before parsing (bounded work on runaway generations)


@dataclass
class JudgedAnomaly:
    """One anomaly as the model reported it.

    Attributes:
        type: canonical type, or None when the model's type was missing or unknown.
        window_s: half-open seconds ``[start, end)``, when it can be known.
        frames: inclusive frame indices on the sequence the model saw, when they can be known.
        boxes: frame index (on the sequence the model saw) -> list of 0–1000 boxes.
        reason, region: the model's text.
    """

    type: str | None = None
    window_s: tuple[float, float] | None = None
    frames: tuple[int, int] | None = None
    boxes: dict[int, list[list[float]]] = field(default_factory=dict)
    reason: str = ""
    region: str = ""


@dataclass
class Judgment:
    """A parsed answer of one turn."""

    turn: int
    status: str | None
    anomalies: list[JudgedAnomaly]
    cot: str
    valid: bool
    errors: list[str]
    warnings: list[str]
    raw: str

    @property
    def types(self) -> list[str]:
        return [a.type for a in self.anomalies if a.type is not None]


# ---------------------------------------------------------------------------------------
# Key aliases (compared after lower-casing and squashing spaces, dashes, underscores)
# ---------------------------------------------------------------------------------------
def _squash(key: Any) -> str:
    return re.sub(r"[\s_\-]+", "", str(key).lower())


_TOP_KEYS = {
    "status": {"status", "verdict", "result", "label", "videostatus", "judgment", "judgement"},
    "anomalies": {"anomalies", "anomaly", "abnormalities", "anomalylist", "issues", "defects", "errors"},
    "cot": {"cot", "reasoning", "thinking", "analysis", "chainofthought", "thought", "thoughts", "explanation"},
}
# The paper's schema (CaC App. Fig. S5) names an anomaly's fields "Attributed Time Region" (a frame
# range such as "3-5" on the grid of the frames that turn saw), "Attributed Label", "Reason for
# Anomaly", "Problem Region" and, in turn 2, "BBOX" ({"Frame 0": [...], ...}); the short names
# ("type", "time", "bbox", ...) are read as well.
_ANOMALY_KEYS = {
    "type": {"type", "anomalytype", "category", "types", "class", "attributedlabel", "anomalylabel", "attributedtype"},
    "time": {"time", "timewindow", "window", "timerange", "timestamp", "timestamps", "seconds", "timespan", "period", "duration"},
    "frames": {
        "frames", "frame", "framerange", "framewindow", "frameindices", "frameids", "frameindex",
        "attributedtimeregion", "timeregion", "attributedtimewindow", "attributedframes",
    },
    "boxes": {"bbox", "bboxes", "boxes", "box", "boundingbox", "boundingboxes", "bboxs", "bbox2d", "location"},
    "reason": {"reason", "description", "desc", "explanation", "details", "reasonforanomaly", "anomalyreason"},
    "region": {"region", "area", "object", "part", "subject", "problemregion", "anomalyregion"},
    "cot": {"cot", "reasoning", "thinking", "chainofthought"},
}


def answer_fields(obj: dict, anomaly: bool = False) -> dict[str, Any]:
    """An answer object (or, with ``anomaly=True``, one anomaly of it) keyed by canonical field
    names: "status", "anomalies", "cot" / "type", "time", "frames", "boxes", "reason",
    "region", "cot", whichever spelling the model used ("Attributed Label" -> "type")."""
    return _canonical_keys(obj, _ANOMALY_KEYS if anomaly else _TOP_KEYS)


def _canonical_keys(obj: dict, table: dict[str, set[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        squashed = _squash(key)
        for canonical, aliases in table.items():
            if squashed in aliases and canonical not in out:
                out[canonical] = value
                break
    return out


# ---------------------------------------------------------------------------------------
# Finding and loading the JSON object
# ---------------------------------------------------------------------------------------
_FENCE = re.compile(r"```(?:json|JSON|python)?\s*(.*?)(?:```|$)", re.DOTALL)


def _loads_lenient(text: str, notes: list[str]) -> Any:
    """json -> json without trailing commas -> Python literal (single quotes). None if all fail."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    fixed = re.sub(r",(\s*[}\]])", r"\1", text)
    if fixed != text:
        try:
            value = json.loads(fixed)
            notes.append("removed trailing commas")
            return value
        except (json.JSONDecodeError, RecursionError):
            pass
    pythonish = re.sub(r"\btrue\b", "True", fixed)
    pythonish = re.sub(r"\bfalse\b", "False", pythonish)
    pythonish = re.sub(r"\bnull\b", "None", pythonish)
    try:
        value = ast.literal_eval(pythonish)  # literals only: never executes code
        notes.append("read as a Python literal (single quotes or similar)")
        return _as_json_value(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def _as_json_value(value: Any) -> Any:
    """A Python literal as the JSON value it stands for: tuples and sets become lists (a set in
    its elements' sorted text order, for a stable result), bytes text, other non-JSON scalars
    (complex, Ellipsis) their text, non-string keys their text. Model text such as
    ``{"a", "b"}`` reads as a set, which nothing downstream (``json.dumps``) could handle."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _as_json_value(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [_as_json_value(v) for v in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_as_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def _close_truncated(text: str) -> str:
    """Close the strings and brackets a cut-off generation left open."""
    stack: list[str] = []
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    repaired = text + ('"' if in_string else "")
    # A dangling separator or key ("..., " / '"key":') cannot be completed; drop it.
    repaired = re.sub(r'(,\s*("[^"]*"\s*:?\s*)?|:\s*)$', "", repaired.rstrip())
    return repaired + "".join(reversed(stack))


def _extract_object(text: str, notes: list[str]) -> tuple[dict | None, bool]:
    """Find the answer's JSON object. Returns (object or None, truncated?)."""
    fenced = _FENCE.findall(text)
    sources = [f for f in fenced if "{" in f] + [text]
    for source in sources:
        starts = [m.start() for m in re.finditer(r"\{", source)][:8]
        ends = [m.start() for m in re.finditer(r"\}", source)]
        for n, start in enumerate(starts):
            for end in reversed([e for e in ends if e > start][-64:]):
                value = _loads_lenient(source[start : end + 1], notes)
                # A later "{" may open an object inside a broken answer (a "BBOX" dict): it is the
                # answer only if it has an answer's keys (prose with braces may precede the answer).
                if isinstance(value, dict) and (n == 0 or _canonical_keys(value, _TOP_KEYS)):
                    return value, False
    # No complete object: maybe the generation was cut off.
    start = text.find("{")
    if start >= 0:
        value = _loads_lenient(_close_truncated(text[start:]), notes)
        if isinstance(value, dict):
            return value, True
    return None, False


def _why_no_object(text: str) -> str:
    """The error for an answer with no readable object: none started, or where the first one
    breaks (json's own message and the character it stopped at, counted in the whole answer)."""
    start = text.find("{")
    if start < 0:
        return "no JSON object found in the answer"
    try:
        json.loads(text[start:])
    except json.JSONDecodeError as exc:
        return f"the answer's JSON object does not parse: {exc.msg} at character {start + exc.pos}"
    except RecursionError:
        return "the answer's JSON object does not parse: nested too deeply"
    return "the answer's JSON object does not parse"  # json reads it but it is not an object


def extract_json(text: str) -> dict | None:
    """The first complete JSON object in model text (fences, prose, trailing commas and Python
    literals tolerated), or None. For answers whose fields :func:`parse_judgment` does not read."""
    if not isinstance(text, str):
        return None
    value, truncated = _extract_object(text[:_MAX_CHARS], [])
    return None if truncated else value


# ---------------------------------------------------------------------------------------
# Field parsers
# ---------------------------------------------------------------------------------------
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SIGNED_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _parse_status(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    words = re.sub(r"[^a-z]+", " ", value.lower()).split()
    if not words:
        return None
    text = " ".join(words)
    if text in {"abnormal", "anomalous", "anomaly", "abnormal video", "has anomalies", "has anomaly"}:
        return "abnormal"
    if text in {"normal", "normal video", "no anomaly", "no anomalies", "none"}:
        return "normal"
    return None


def _regex_status(text: str) -> str | None:
    match = re.search(r"""["']?status["']?\s*[:=]\s*["']?\s*(abnormal|normal)""", text, re.IGNORECASE)
    return match.group(1).lower() if match else None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        found = _NUMBER.findall(value)
        if len(found) == 1:
            return float(found[0])
    return None


def _parse_window(value: Any, unit: str) -> tuple[float, float, str] | str:
    """-> (start, end, unit in {"frames", "seconds"}) or an error string."""
    if isinstance(value, dict):
        low = {_squash(k): v for k, v in value.items()}
        start = next((low[k] for k in ("start", "starttime", "begin", "from", "startframe") if k in low), None)
        end = next((low[k] for k in ("end", "endtime", "stop", "to", "endframe") if k in low), None)
        if start is None or end is None:
            return f"time window {value!r} lacks a start or an end"
        value = [start, end]
    if isinstance(value, str):
        lowered = value.lower()
        if "frame" in lowered:
            unit = "frames"
        elif re.search(r"\d\s*(s|sec|secs|second|seconds)\b", lowered):
            unit = "seconds"
        numbers = [float(n) for n in _NUMBER.findall(lowered)]
    elif isinstance(value, (list, tuple)):
        numbers = []
        for item in value:
            number = _as_number(item)
            if number is None:
                return f"time window {value!r} holds a non-number"
            if isinstance(item, str) and "frame" in item.lower():
                unit = "frames"
            numbers.append(number)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        numbers = [float(value)]
    else:
        return f"time window {value!r} is not a range"
    if len(numbers) == 1 and unit == "frames":
        numbers = numbers * 2  # a single frame
    if len(numbers) != 2:
        return f"time window {value!r} should hold a start and an end"
    start, end = numbers
    if unit == "frames" and (start != int(start) or end != int(end)):
        return f"frame window {value!r} holds non-integer frame indices"
    if end < start:
        return f"time window {value!r} is inverted (end before start)"
    return start, end, unit


def _numbers_of_box(value: Any) -> list[float] | None:
    if isinstance(value, str):
        found = _SIGNED_NUMBER.findall(value)
        return [float(n) for n in found] if len(found) == 4 else None
    if isinstance(value, dict):
        low = {_squash(k): v for k, v in value.items()}
        for names in (("xmin", "ymin", "xmax", "ymax"), ("x1", "y1", "x2", "y2"), ("left", "top", "right", "bottom")):
            if all(n in low for n in names):
                value = [low[n] for n in names]
                break
        else:
            return None
    if isinstance(value, (list, tuple)) and len(value) == 4:
        numbers = [_as_number(v) if not isinstance(v, str) else _single_signed(v) for v in value]
        if all(n is not None for n in numbers):
            return numbers  # type: ignore[return-value]
    return None


def _single_signed(text: str) -> float | None:
    found = _SIGNED_NUMBER.findall(text)
    return float(found[0]) if len(found) == 1 else None


def _clean_box(numbers: list[float], where: str, warnings: list[str], errors: list[str]) -> list[float] | None:
    if not all(math.isfinite(n) for n in numbers):
        errors.append(f"{where}: box {numbers} has non-finite coordinates")
        return None
    if max(numbers) <= 1.0 and any(n != int(n) for n in numbers):
        numbers = [n * BOX_MAX for n in numbers]
        warnings.append(f"{where}: box given as 0-1 fractions, scaled to 0-1000")
    x0, y0, x1, y1 = numbers
    if x1 < x0 or y1 < y0:
        x0, x1 = min(x0, x1), max(x0, x1)
        y0, y1 = min(y0, y1), max(y0, y1)
        warnings.append(f"{where}: inverted box {numbers} reordered")
    clamped = [min(max(v, 0.0), BOX_MAX) for v in (x0, y0, x1, y1)]
    if clamped != [x0, y0, x1, y1]:
        warnings.append(f"{where}: box {numbers} clamped to the 0-1000 range")
    if clamped[2] <= clamped[0] or clamped[3] <= clamped[1]:
        errors.append(f"{where}: box {numbers} has no area inside the frame")
        return None
    return clamped


def _frame_index(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, float) and key == int(key):
        return int(key)
    if isinstance(key, str):
        found = re.findall(r"\d+", key)
        if len(found) == 1:
            return int(found[0])
    return None


def _box_list(value: Any) -> list[Any]:
    """A value holding one box or a list of boxes -> list of box candidates."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple, dict, str)) for v in value):
        if _numbers_of_box(value) is None:  # not itself a box of 4 strings
            return list(value)
    return [value]


def _parse_boxes(value: Any, where: str, warnings: list[str], errors: list[str]) -> dict[int, list[list[float]]]:
    """Per-frame boxes from a dict {frame: box(es)} or a list of {frame, bbox} items."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        if _numbers_of_box(value) is not None:
            errors.append(f"{where}: a single box without a frame index; give boxes per frame")
            return {}
        for item in value:
            if isinstance(item, dict):
                low = {_squash(k): v for k, v in item.items()}
                frame = next((low[k] for k in ("frame", "frameindex", "frameid", "index", "idx", "t") if k in low), None)
                box = next((low[k] for k in ("bbox", "box", "boxes", "bboxes", "coordinates", "bbox2d") if k in low), None)
                if frame is None or box is None:
                    errors.append(f"{where}: box entry {item!r} needs a frame and a bbox")
                    continue
                pairs.append((frame, box))
            else:
                errors.append(f"{where}: box entry {item!r} has no frame index")
    elif isinstance(value, str):
        try:
            return _parse_boxes(json.loads(value), where, warnings, errors)
        except json.JSONDecodeError:
            errors.append(f"{where}: boxes {value!r} are not readable")
            return {}
    else:
        errors.append(f"{where}: boxes {value!r} are not readable")
        return {}
    boxes: dict[int, list[list[float]]] = {}
    for key, raw in pairs:
        frame = _frame_index(key)
        if frame is None:
            errors.append(f"{where}: box key {key!r} is not a frame index")
            continue
        for candidate in _box_list(raw):
            numbers = _numbers_of_box(candidate)
            if numbers is None:
                errors.append(f"{where}: frame {frame}: {candidate!r} is not [xmin, ymin, xmax, ymax]")
                continue
            box = _clean_box(numbers, f"{where} frame {frame}", warnings, errors)
            if box is not None:
                boxes.setdefault(frame, []).append(box)
    return dict(sorted(boxes.items()))


# ---------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------
def parse_judgment(
    text: Any,
    turn: int,
    fps: float | None = None,
    num_frames: int | None = None,
) -> Judgment:
    """Parse one turn's raw model text into a :class:`Judgment`. Never raises on model text.

    Args:
        text: the generated answer.
        turn: 1 (whole video: status, types, time windows) or 2 (clip: status, types, boxes).
        fps: rate of the frame sequence the model saw (turn 1: 4, turn 2: 8), used to convert
            frame windows to seconds and back.
        num_frames: frames the model saw; windows past the end are clamped (or rejected when
            they start past it) and turn-2 boxes must name frames ``0 .. num_frames - 1``.
    """
    if turn not in (1, 2):
        raise ValueError(f"turn must be 1 or 2, got {turn!r}")  # a caller bug, not model text
    raw = text if isinstance(text, str) else ""
    errors: list[str] = []
    warnings: list[str] = []
    if not isinstance(text, str):
        errors.append(f"answer is not text ({type(text).__name__})")
        return Judgment(turn, None, [], "", False, errors, warnings, raw)
    if len(text) > _MAX_CHARS:
        warnings.append(f"answer cut to its first {_MAX_CHARS} characters")
        text = text[:_MAX_CHARS]

    obj, truncated = _extract_object(text, warnings)
    if obj is None:
        errors.append(_why_no_object(text))
        return Judgment(turn, _regex_status(text), [], "", False, errors, warnings, raw)
    if truncated:
        errors.append("answer is truncated (JSON object never closed)")

    top = _canonical_keys(obj, _TOP_KEYS)
    status = _parse_status(top.get("status"))
    if status is None:
        errors.append(f"missing or unknown status {top.get('status')!r} (expected 'normal' or 'abnormal')")
    cot_value = top.get("cot", "")
    cot = cot_value if isinstance(cot_value, str) else json.dumps(cot_value, ensure_ascii=False)

    raw_anomalies = top.get("anomalies")
    if raw_anomalies is None and _canonical_keys(obj, _ANOMALY_KEYS).get("type") is not None:
        raw_anomalies = [obj]  # a flat answer: the anomaly's fields sit beside the status
        warnings.append("anomaly fields found at top level; read as one anomaly")
    if raw_anomalies is None or raw_anomalies == "" or raw_anomalies == "none":
        raw_anomalies = []
    if isinstance(raw_anomalies, dict):
        raw_anomalies = [raw_anomalies]
    if not isinstance(raw_anomalies, list):
        errors.append(f"anomalies {raw_anomalies!r} is not a list")
        raw_anomalies = []

    anomalies = [
        _parse_anomaly(item, i, turn, fps, num_frames, warnings, errors) for i, item in enumerate(raw_anomalies)
    ]
    if status == "normal" and anomalies:
        errors.append("status is normal but anomalies are listed")
    if status == "abnormal" and not anomalies:
        errors.append("status is abnormal but no anomaly is listed")
    return Judgment(turn, status, anomalies, cot, not errors, errors, warnings, raw)


def _parse_anomaly(
    item: Any,
    index: int,
    turn: int,
    fps: float | None,
    num_frames: int | None,
    warnings: list[str],
    errors: list[str],
) -> JudgedAnomaly:
    where = f"anomalies[{index}]"
    anomaly = JudgedAnomaly()
    if isinstance(item, str):
        anomaly.type = normalize_type(item)
        if anomaly.type is None:
            errors.append(f"{where}: {item!r} is not an anomaly object")
        elif turn == 1:
            errors.append(f"{where}: no time window")
        else:
            errors.append(f"{where}: no boxes")
        return anomaly
    if not isinstance(item, dict):
        errors.append(f"{where}: {item!r} is not an anomaly object")
        return anomaly
    fields = _canonical_keys(item, _ANOMALY_KEYS)

    raw_type = fields.get("type")
    if isinstance(raw_type, list) and len(raw_type) == 1:
        raw_type = raw_type[0]
    anomaly.type = normalize_type(raw_type)
    if anomaly.type is None:
        errors.append(f"{where}: missing or unknown type {raw_type!r}")
    for key in ("reason", "region"):
        value = fields.get(key, "")
        setattr(anomaly, key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))

    # Time window: "time" keys default to seconds, "frames" keys to frame indices.
    window_value, unit = (fields["time"], "seconds") if "time" in fields else (fields.get("frames"), "frames")
    if window_value is not None:
        parsed = _parse_window(window_value, unit)
        if isinstance(parsed, str):
            if turn == 1:
                errors.append(f"{where}: {parsed}")
            else:
                warnings.append(f"{where}: {parsed}")
        else:
            _set_window(anomaly, parsed, fps, num_frames, where, turn, warnings, errors)
    elif turn == 1:
        errors.append(f"{where}: no time window")

    if "boxes" in fields:
        anomaly.boxes = _parse_boxes(fields["boxes"], where, warnings, errors if turn == 2 else warnings)
    if turn == 2:
        if not anomaly.boxes:
            errors.append(f"{where}: no usable boxes for the clip's frames")
        elif num_frames is not None:
            outside = [f for f in anomaly.boxes if f >= num_frames]
            if outside:
                errors.append(f"{where}: boxes for frames {outside} but the clip has {num_frames} frames (0-{num_frames - 1})")
    return anomaly


def _set_window(
    anomaly: JudgedAnomaly,
    parsed: tuple[float, float, str],
    fps: float | None,
    num_frames: int | None,
    where: str,
    turn: int,
    warnings: list[str],
    errors: list[str],
) -> None:
    start, end, unit = parsed
    problems = errors if turn == 1 else warnings
    if unit == "frames":
        first, last = int(start), int(end)
        if num_frames is not None:
            if first >= num_frames:
                problems.append(f"{where}: frame window [{first}, {last}] starts after the last frame ({num_frames - 1})")
                return
            if last >= num_frames:
                warnings.append(f"{where}: frame window [{first}, {last}] clamped to the last frame ({num_frames - 1})")
                last = num_frames - 1
        anomaly.frames = (first, last)
        if fps is not None:
            anomaly.window_s = frames_to_seconds(first, last, fps)
        return
    if end == start:
        problems.append(f"{where}: time window [{start:g}, {end:g}] s is empty")
        return
    if fps is not None and num_frames is not None:
        duration = num_frames / fps
        if start >= duration:
            problems.append(f"{where}: time window [{start:g}, {end:g}) s starts after the video ends ({duration:g} s)")
            return
        if end > duration:
            warnings.append(f"{where}: time window end {end:g} s clamped to the video's end ({duration:g} s)")
            end = duration
    anomaly.window_s = (start, end)
    if fps is not None:
        try:
            anomaly.frames = seconds_to_frames(start, end, fps)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
