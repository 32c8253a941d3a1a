"""The ms-swift half that needs no ms-swift: video specs, dataset rows, and a rollout's reward.

A **video spec** is a string that names a video file and how CaC shows it: ``cac-video:`` and a
JSON object ``{"path", "fps", "max_frames", "max_pixels", "size_multiple", "window"}``. ms-swift
carries videos as strings (a request's ``videos`` list travels to a rollout server as JSON), so
the spec travels instead of frames; :func:`load_spec` turns it into the very frames CaC's own
code shows: the source decoded by :func:`~cac_align.video.load_video`, cut to ``window`` with
``Video.crop`` when one is given, and sampled with :func:`~cac_align.cac.infer.sample_capped`.
Each spec keeps its own ``fps``, so the 4 fps scan and the 8 fps clip of one conversation get
their own timestamps.

:func:`swift_rows` turns annotation records into ms-swift GRPO rows: the turn-1 question (our
:func:`~cac_align.cac.prompts.turn1_prompt`) with ``<video>`` before it, the scan's spec, and a
``cac`` column (a JSON string) holding the record, the scan's grid and the settings turn 2 and the
reward need. :func:`rollout_reward` scores one rollout with our
:func:`~cac_align.cac.train.rewards.cac_reward` (Eq. 2-6), parsing each turn as our stage 3 does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from cac_align.cac.infer import sample_capped, turn2_window
from cac_align.cac.judgment import parse_judgment
from cac_align.cac.prompts import turn1_prompt, turn2_prompt
from cac_align.cac.schema import AnnotationRecord
from cac_align.cac.train.rewards import RewardBreakdown, cac_reward
from cac_align.video import Video, load_video

__all__ = ["SPEC_PREFIX", "TurnTwo", "is_spec", "load_spec", "plan_turn2", "rollout_reward", "swift_row", "swift_rows", "video_spec"]

SPEC_PREFIX = "cac-video:"
_SPEC_KEYS = {"path", "fps", "max_frames", "max_pixels", "size_multiple", "window"}


def video_spec(path: str, fps: float, max_frames: int, max_pixels: int | None, size_multiple: int, window: Sequence[float] | None = None) -> str:
    """The spec string of ``path`` shown at ``fps`` (at most ``max_frames`` frames), cut to
    ``window`` (source seconds) if given."""
    data = {"path": str(path), "fps": float(fps), "max_frames": int(max_frames), "max_pixels": max_pixels, "size_multiple": int(size_multiple),
            "window": [float(window[0]), float(window[1])] if window is not None else None}
    return SPEC_PREFIX + json.dumps(data, sort_keys=True)


def is_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SPEC_PREFIX)


def _spec_data(spec: str) -> dict:
    if not is_spec(spec):
        raise ValueError(f"not a CaC video spec (it starts with {SPEC_PREFIX!r}): {str(spec)[:80]!r}")
    try:
        data = json.loads(spec[len(SPEC_PREFIX):])
    except json.JSONDecodeError as exc:
        raise ValueError(f"CaC video spec is not valid JSON ({exc.msg}): {spec[:120]!r}") from None
    if not isinstance(data, dict) or set(data) != _SPEC_KEYS:
        raise ValueError(f"CaC video spec must have exactly the keys {sorted(_SPEC_KEYS)}: {spec[:120]!r}")
    return data


@lru_cache(maxsize=16)
def _source(path: str) -> Video:
    """The decoded source video (kept for the few encodes a rollout makes of it)."""
    video = load_video(path)
    assert isinstance(video, Video)
    return video


def load_spec(spec: str) -> Video:
    """The frames a spec shows, sampled as CaC's inference samples them (module doc)."""
    data = _spec_data(spec)
    video = _source(data["path"])
    if data["window"] is not None:
        video = video.crop(*data["window"])
    return sample_capped(video, data["fps"], data["max_frames"], data["max_pixels"], data["size_multiple"])


def swift_row(record: AnnotationRecord, settings: Any, weights: Sequence[float]) -> dict:
    """One ms-swift GRPO row of ``record`` (``settings``: our stage-3 ``data`` section)."""
    source = _source(record.video)
    scan_spec = video_spec(record.video, settings.scan_fps, settings.max_frames_turn1, settings.max_pixels, settings.size_multiple)
    scan = load_spec(scan_spec)
    question = turn1_prompt(source.duration_s, scan.fps, scan.num_frames, record.prompt, style=settings.prompt_style)
    cac = {
        "record": json.loads(record.to_json()),
        "scan_fps": scan.fps,
        "scan_frames": scan.num_frames,
        "clip_fps": float(settings.clip_fps),
        "max_frames_turn2": int(settings.max_frames_turn2),
        "max_pixels": settings.max_pixels,
        "size_multiple": int(settings.size_multiple),
        "prompt_style": settings.prompt_style,
        "reward_weights": [float(w) for w in weights],
    }
    return {"messages": [{"role": "user", "content": "<video>" + question}], "videos": [scan_spec], "cac": json.dumps(cac)}


def swift_rows(records: Sequence[AnnotationRecord], settings: Any, weights: Sequence[float]) -> list[dict]:
    return [swift_row(record, settings, weights) for record in records]


@dataclass
class TurnTwo:
    """What turn 2 shows after a turn-1 answer: the clip's spec, its frames, the window, the question."""

    spec: str
    clip: Video
    window_s: tuple[float, float]
    question: str


def plan_turn2(cac: dict, turn1_text: str) -> TurnTwo | None:
    """Turn 2 after ``turn1_text``, as our stage-3 rollouts decide it
    (:func:`~cac_align.cac.train.rollouts.collect_rollouts`): only an abnormal turn 1 with a usable
    window gets one; its window is cropped from the source and resampled at the clip rate. None
    when the rollout ends after turn 1 (normal, no status, no usable window, a window that
    cannot be cut)."""
    judgment = parse_judgment(turn1_text, 1, fps=cac["scan_fps"], num_frames=cac["scan_frames"])
    if judgment.status != "abnormal":
        return None
    path = cac["record"]["video"]
    window = turn2_window(judgment, _source(path), cac["clip_fps"])
    if window is None:
        return None
    spec = video_spec(path, cac["clip_fps"], cac["max_frames_turn2"], cac["max_pixels"], cac["size_multiple"], window)
    try:
        clip = load_spec(spec)
    except ValueError:  # VideoError: a window that cannot be cut ends the rollout after turn 1
        return None
    window = (float(window[0]), float(window[1]))
    return TurnTwo(spec, clip, window, turn2_prompt(window, clip.fps, clip.num_frames, style=cac["prompt_style"]))


def rollout_reward(cac: dict, turn1_text: str, turn2: tuple[str, float, Sequence[float]] | None = None) -> RewardBreakdown:
    """Eq. 2-6 of one rollout, its turns parsed on their own grids as our stage 3 parses them;
    ``turn2`` is (text, the clip's fps, its frames' source times), None when turn 2 did not run."""
    judgment1 = parse_judgment(turn1_text, 1, fps=cac["scan_fps"], num_frames=cac["scan_frames"])
    judgment2 = clip_times = None
    if turn2 is not None:
        text, clip_fps, clip_times = turn2
        judgment2 = parse_judgment(text, 2, fps=clip_fps, num_frames=len(clip_times))
    record = AnnotationRecord.from_dict(cac["record"])
    return cac_reward(judgment1, judgment2, record, cac["reward_weights"], scan_fps=cac["scan_fps"], scan_frames=cac["scan_frames"],
                      clip_times=clip_times)
