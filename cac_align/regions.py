"""Where a reward says a video is wrong, as a region of the video's own frames and pixels.

A localizing reward (CaC, Skyra, or such a component of a combined reward) gives, per sample,
its verdict (``status``), the time window it points at (``window_s``, half-open seconds) and
per-frame boxes (``boxes``: ``[{"time_s", "boxes": [[x0, y0, x1, y1], ...]}]`` in Qwen's 0-1000
coordinates). This module reads that evidence (:func:`find_evidence`) and turns it into a
:class:`Region` of one video: which of its frames are inside the (dilated) window and, on each
of them, which pixel boxes (or the whole frame). It is the one place that both localized credit
(:mod:`cac_align.rl.credit`, pooled onto Wan's latent grid) and repair (the regenerated mask)
read, so the two agree on what "the defect" covers.

Conventions (as :mod:`cac_align.video`): frame ``i`` of a ``fps`` video sits at ``i / fps`` s;
windows are half-open; a frame is inside a window when its time is. A frame inside the window
takes the boxes of the box entry nearest to it in time (the judge boxes a few sampled frames);
with no boxes at all, the whole frame. Boxes are dilated by ``dilate`` (0-1000 units, each side)
and clipped to the frame; the window by ``context_s`` seconds each side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["Evidence", "EvidenceError", "Region", "evidence_reason", "evidence_record", "find_evidence", "read_evidence", "region_from_evidence",
           "whole_frames"]

_EPS = 1e-9


class EvidenceError(ValueError):
    """A reward's evidence that cannot be read (a window that is not two increasing numbers, a box
    that is not four): the caller falls back to no region and counts it."""


@dataclass(frozen=True)
class Evidence:
    """One sample's localized verdict.

    Attributes:
        window_s: ``(start, end)`` seconds, half-open; None when the judge gave only boxes.
        boxes: ``(time_s, [[x0, y0, x1, y1], ...])`` per boxed frame, 0-1000 coordinates, by time.
    """

    window_s: tuple[float, float] | None
    boxes: tuple[tuple[float, tuple[tuple[float, float, float, float], ...]], ...] = ()


def find_evidence(details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The localized verdict inside a reward's per-sample details: the first dict with evidence
    fields (``window_s`` and ``boxes``, beside its ``status``), searched through a combined
    reward's ``components``; None when the reward localizes nothing."""
    if "window_s" in details and "boxes" in details:
        return details
    for component in (details.get("components") or {}).values():
        found = find_evidence(component.get("details") or {})
        if found is not None:
            return found
    return None


def _box_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A judge's box entry as plain JSON numbers (a judge may hand numpy ones)."""
    kept: dict[str, Any] = {"time_s": float(entry["time_s"]), "boxes": [[float(v) for v in box] for box in entry.get("boxes") or []]}
    if entry.get("frame") is not None:
        kept["frame"] = int(entry["frame"])
    if entry.get("type") is not None:
        kept["type"] = str(entry["type"])
    return kept


def evidence_record(details: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """Every localized verdict in a reward's per-sample details, by who gave it, as run records keep
    it (bon's ``candidates.jsonl``, a trainer's ``eval/step_N/samples.jsonl``): ``{source: {"status",
    "window_s", "boxes"}}``, ``source`` being ``name`` (the reward's own name) for a reward that
    localizes itself, else each component of a combined reward that does (``{"cac": ...}`` for
    ``ur_cac``). Only a verdict with a status (a valid one) is kept; a box entry keeps ``time_s`` and
    ``boxes`` (0-1000) and, where given, ``frame`` and ``type``; evidence whose numbers cannot be read
    is kept with no window, no boxes and an ``error``. JSON-ready; ``{}`` when nothing localizes."""
    found: dict[str, dict[str, Any]] = {}

    def visit(part: Mapping[str, Any], source: str) -> None:
        if "window_s" in part and "boxes" in part:
            if part.get("status") is not None:
                window = part.get("window_s")
                try:
                    boxes = [_box_entry(entry) for entry in part.get("boxes") or [] if isinstance(entry, Mapping) and "time_s" in entry]
                    found[source] = {"status": str(part["status"]), "window_s": None if window is None else [float(v) for v in window], "boxes": boxes}
                except (TypeError, ValueError) as exc:  # kept as said, not dropped: the record shows it could not be read
                    found[source] = {"status": str(part["status"]), "window_s": None, "boxes": [], "error": f"unreadable evidence: {exc}"}
            return
        for component, value in (part.get("components") or {}).items():
            if isinstance(value, Mapping):
                visit(value.get("details") or {}, str(component))

    visit(details, name)
    return found


def evidence_reason(details: Mapping[str, Any]) -> str | None:
    """Why the judge called the video abnormal, in its own words: the reasons of the anomalies
    of its last turn's judgment (CaC: turn 2, else turn 1), or a ``reason`` of the evidence's
    own (``"; "``-joined); None when it gave none."""
    found = find_evidence(details)
    if found is None:
        return None
    if isinstance(found.get("reason"), str) and found["reason"].strip():
        return found["reason"].strip()
    for turn in ("turn2", "turn1"):
        judgment = (found.get(turn) or {}).get("judgment") if isinstance(found.get(turn), Mapping) else None
        reasons = [str(a.get("reason")).strip() for a in (judgment or {}).get("anomalies") or [] if isinstance(a, Mapping) and a.get("reason")]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return None


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise EvidenceError(f"{where}: a box is four numbers [x0, y0, x1, y1], got {value!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise EvidenceError(f"{where}: a box needs x0 < x1 and y0 < y1, got {value!r}")
    return x0, y0, x1, y1


def read_evidence(details: Mapping[str, Any]) -> Evidence | None:
    """A sample's :class:`Evidence`, or None when its verdict locates no defect (no localizing
    reward, a verdict that is not "abnormal", or neither a window nor a box).

    Raises:
        EvidenceError: the window or a box cannot be read.
    """
    found = find_evidence(details)
    if found is None or found.get("status") != "abnormal":
        return None
    window = found.get("window_s")
    if window is not None:
        try:
            start, end = (float(v) for v in window)
        except (TypeError, ValueError):
            raise EvidenceError(f"window_s is two numbers [start, end], got {window!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise EvidenceError(f"window_s needs start < end, got {window!r}")
        window = (start, end)
    entries = []
    for entry in found.get("boxes") or []:
        if not isinstance(entry, Mapping) or "time_s" not in entry:
            raise EvidenceError(f"a box entry is {{'time_s': t, 'boxes': [...]}}, got {entry!r}")
        boxes = tuple(_box(b, f"boxes at {entry['time_s']} s") for b in entry.get("boxes") or [])
        if boxes:
            entries.append((float(entry["time_s"]), boxes))
    if window is None and not entries:
        return None
    return Evidence(window, tuple(sorted(entries)))


@dataclass(frozen=True)
class Region:
    """Where the defect is, on one video's own frames and pixels.

    Attributes:
        num_frames, height, width: the video's size.
        frames: ``(F,)`` bool: the frames inside the (dilated) window.
        boxes: per frame inside the window, its pixel boxes ``(x0, y0, x1, y1)`` (floats,
            clipped to the frame), or None for the whole frame; frames outside hold ``()``.
    """

    num_frames: int
    height: int
    width: int
    frames: np.ndarray
    boxes: tuple[tuple[tuple[float, float, float, float], ...] | None, ...]

    def frame_mask(self, index: int, supersample: int = 1) -> np.ndarray:
        """``(H, W)`` float32 in [0, 1]: the share of each pixel inside the region on frame
        ``index`` (pixel ``(r, c)`` spans ``[c, c + 1) x [r, r + 1)``; a box edge inside a pixel
        covers it in part, measured on a ``supersample`` x ``supersample`` grid)."""
        mask = np.zeros((self.height, self.width), dtype=np.float32)
        if not self.frames[index]:
            return mask
        boxes = self.boxes[index]
        if boxes is None:
            mask[:] = 1.0
            return mask
        s = max(1, int(supersample))
        fine = np.zeros((self.height * s, self.width * s), dtype=bool)
        for x0, y0, x1, y1 in boxes:  # the union of the boxes, on the fine grid
            c0, c1 = int(math.floor(x0 * s + _EPS)), int(math.ceil(x1 * s - _EPS))
            r0, r1 = int(math.floor(y0 * s + _EPS)), int(math.ceil(y1 * s - _EPS))
            fine[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
        return fine.reshape(self.height, s, self.width, s).mean(axis=(1, 3), dtype=np.float32)

    def pixel_mask(self) -> np.ndarray:
        """``(F, H, W)`` bool: every pixel the region touches (a box edge rounds outward)."""
        out = np.zeros((self.num_frames, self.height, self.width), dtype=bool)
        for index in np.flatnonzero(self.frames):
            out[index] = self.frame_mask(int(index)) > 0
        return out

    @property
    def is_empty(self) -> bool:
        return not bool(self.frames.any())


def whole_frames(evidence: Evidence, fps: float) -> Evidence:
    """``evidence`` with its boxes widened to whole frames: its window (or, for boxes alone, the
    span of the boxed frames, as :func:`region_from_evidence` takes it), no boxes. What a
    regenerator that cannot keep pixels inside a frame (LTX-2's condition pipeline) regenerates."""
    if evidence.window_s is not None:
        return Evidence(evidence.window_s, ())
    return Evidence((evidence.boxes[0][0], evidence.boxes[-1][0] + 1.0 / fps), ())


def region_from_evidence(
    evidence: Evidence, num_frames: int, fps: float, height: int, width: int, *, dilate: float = 0.0, context_s: float = 0.0
) -> Region:
    """The :class:`Region` a piece of evidence covers on a ``num_frames`` x ``height`` x ``width``
    video at ``fps`` (module docstring for the rules).

    Args:
        evidence: from :func:`read_evidence`.
        dilate: added to every side of every box, in 0-1000 units of the frame's size.
        context_s: added to each side of the window, in seconds.
    """
    if num_frames < 1 or height < 1 or width < 1 or fps <= 0:
        raise ValueError(f"need a video of at least one frame and fps > 0, got {num_frames} frames of {height}x{width} at {fps}")
    if dilate < 0 or context_s < 0:
        raise ValueError(f"dilate and context_s must be >= 0, got {dilate}, {context_s}")
    times = np.arange(num_frames) / fps
    if evidence.window_s is not None:
        start, end = evidence.window_s
    else:  # boxes alone: the span of the boxed frames
        start, end = evidence.boxes[0][0], evidence.boxes[-1][0] + 1.0 / fps
    inside = (times >= start - context_s - _EPS) & (times < end + context_s - _EPS)
    box_times = np.array([t for t, _ in evidence.boxes])
    per_frame: list[tuple[tuple[float, float, float, float], ...] | None] = []
    for index in range(num_frames):
        if not inside[index]:
            per_frame.append(())
            continue
        if not len(box_times):
            per_frame.append(None)
            continue
        _, boxes = evidence.boxes[int(np.argmin(np.abs(box_times - times[index])))]
        pixels = []
        for x0, y0, x1, y1 in boxes:
            pixels.append((
                max(0.0, (x0 - dilate) / 1000 * width), max(0.0, (y0 - dilate) / 1000 * height),
                min(float(width), (x1 + dilate) / 1000 * width), min(float(height), (y1 + dilate) / 1000 * height),
            ))
        per_frame.append(tuple(b for b in pixels if b[2] > b[0] and b[3] > b[1]))
    return Region(num_frames, height, width, inside, tuple(per_frame))
