"""Two-turn CaC inference: scan at 4 fps, re-read the suspicious window at 8 fps, score (CaC §3.4).

:class:`CaCScorer` is backend-agnostic: it builds chat requests, parses answers, crops and
resamples videos, and asks a :class:`~cac_align.vlm.backend.Backend` for text and status
probabilities, so the same code runs in-process or against a server.

Rules (two-turn mode, the default):

1. Turn 1 sees the whole video at ``scan_fps`` (4) and answers status + anomalies with windows.
2. Turn 1 "normal" -> the video is normal; no turn 2.
3. Turn 1 "abnormal" with a usable window -> the union of the predicted windows is cropped from
   the source video, resampled at ``clip_fps`` (8), and shown in turn 2 after turn 1's answer.
   Turn 1 "abnormal" with no usable window -> ``fallback``: "whole_video" (default: turn 2 on the
   whole video at 8 fps, up to ``max_frames_turn2``), "turn1" (score turn 1 as it is) or "invalid".
4. Turn 2 decides; turn 2 not confirming ("normal") -> the video is normal.
5. Reward = P(normal) / (P(normal) + P(abnormal)) of the final turn's status (CaC Eq. 7), from
   ``choice_probs`` at the point where the status value begins in that turn's generated JSON.

A video that fails (cannot be decoded, too short, an answer with no status) gets
``valid=False`` and ``reward=None`` with the reason in ``error``; the other videos are still
scored. A failure is never turned into a reward of 0 or 1.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cac_align.cac.judgment import Judgment, parse_judgment
from cac_align.cac.prompts import PROMPT_STYLES, STATUS_KEY_PATTERN, no_cot_prompt, single_turn_prompt, turn1_prompt, turn2_prompt
from cac_align.video import Video, VideoError, load_video
from cac_align.vlm.backend import MAX_NEW_TOKENS, Backend, ChatRequest, assistant, user

__all__ = ["LOAD_SETTINGS", "MODEL_SETTINGS", "CaCOptions", "CaCResult", "CaCScorer", "TurnRecord", "sample_capped", "turn2_window", "write_settings"]

MODES = ("two_turn", "single_turn", "no_cot")
FALLBACKS = ("whole_video", "turn1", "invalid")
STATUS_CHOICES = ("normal", "abnormal")


def sample_capped(video: Video, fps: float, cap: int, max_pixels: int | None = None, size_multiple: int = 1) -> Video:
    """Resample at ``fps`` (lower when that would exceed ``cap`` frames), then cap pixels.

    How every turn's frames are chosen; CaC training builds its samples with it too, so the
    model is trained on exactly what inference shows it. With ``size_multiple`` (the vision
    processor's patch x merge size) the frames are resized once, onto the processor's grid.
    """
    sampled = video.resample(min(fps, cap / video.duration_s))
    return sampled.fit_pixels(max_pixels, size_multiple) if max_pixels else sampled


def turn2_window(judgment: Judgment | None, video: Video, clip_fps: float) -> tuple[float, float] | None:
    """The source window turn 2 re-reads: the union of turn 1's predicted windows, widened
    around its centre to at least two frames at ``clip_fps``. None when turn 1 gave no usable
    window; ``judgment=None`` asks for the whole video (inference's "whole_video" fallback)."""
    if judgment is None:
        window = (video.start_s, video.end_s)
    else:
        windows = [a.window_s for a in judgment.anomalies if a.window_s is not None]
        if not windows:
            return None
        window = (min(s for s, _ in windows), max(e for _, e in windows))
    min_len = 2.0 / clip_fps
    if window[1] - window[0] < min_len:
        centre = (window[0] + window[1]) / 2
        window = (max(video.start_s, centre - min_len / 2), min(video.end_s, centre + min_len / 2))
    return window


# The settings a judge is trained with, which inference must ask it with: a model folder's
# ``cac_align.json`` may give each (written by ``cac-align export``); where neither the recipe nor
# the folder does, these defaults apply (the paper's rates, CaC §3.4; the full wording).
MODEL_SETTINGS: dict[str, Any] = {
    "prompt_style": "full",
    "scan_fps": 4.0,  # CaC §3.4: turn 1 scans the whole video at 4 fps
    "clip_fps": 8.0,  # CaC §3.4: turn 2 re-reads the window at 8 fps
    "max_frames_turn1": 64,
    "max_frames_turn2": 32,
    "max_new_tokens": MAX_NEW_TOKENS,
    "max_pixels": None,  # no cap
    "size_multiple": 32,  # Qwen3-VL's patch 16 x merge 2
}
# Settings of a model folder that say how to load it rather than how to ask it: ``dtype``, the
# compute dtype it was trained in (``model.dtype`` left unset takes it; else bfloat16).
LOAD_SETTINGS = ("dtype",)


@dataclass
class CaCOptions:
    """How CaC asks its questions.

    The fields marked "the model's" are settings a judge was trained with: left unset (None, or
    "auto" for the wording) they take the model folder's ``cac_align.json`` value, else
    :data:`MODEL_SETTINGS` (the paper's 4 fps scan and 8 fps clip); a value set in a recipe or in
    code wins (:meth:`for_model`).

    Attributes:
        mode: "two_turn" (paper), "single_turn" (ablation: one pass that localizes and boxes)
            or "no_cot" (status probabilities only, no generation).
        scan_fps: turn-1 sampling rate (the model's; else 4).
        clip_fps: turn-2 sampling rate of the cropped window (the model's; else 8).
        max_frames_turn1: frame cap for turn 1; long videos are scanned at a lower rate (the
            model's; else 64).
        max_frames_turn2: frame cap for turn 2 (the model's; else 32).
        max_pixels: if set, frames are downscaled (aspect kept) to at most this many pixels
            before any backend sees them (the model's; else no cap).
        size_multiple: with ``max_pixels``, both sides become multiples of this (the vision
            processor's patch x merge size: 32 for Qwen3-VL), so the processor keeps the frames
            as sent instead of resizing them again; 1 keeps the exact aspect-ratio size (the
            model's; else 32).
        prompt_style: "full" (the paper-style instructions), "compact" (the short wording a
            small model trained from scratch uses; :mod:`cac_align.cac.prompts`) or "auto"
            (the model's; else "full").
        max_new_tokens: generation budget per turn (the model's; else 1024).
        temperature: 0 decodes greedily.
        fallback: what to do when turn 1 says abnormal but gives no usable window.
    """

    mode: str = "two_turn"
    scan_fps: float | None = None
    clip_fps: float | None = None
    max_frames_turn1: int | None = None
    max_frames_turn2: int | None = None
    max_pixels: int | None = None
    size_multiple: int | None = None
    prompt_style: str = "auto"
    max_new_tokens: int | None = None
    temperature: float = 0.0
    fallback: str = "whole_video"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.fallback!r}")
        if any(v is not None and not v > 0 for v in (self.scan_fps, self.clip_fps)):
            raise ValueError("scan_fps and clip_fps must be > 0")
        if any(v is not None and v < 2 for v in (self.max_frames_turn1, self.max_frames_turn2)):
            raise ValueError("max_frames_turn1 and max_frames_turn2 must be >= 2")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.size_multiple is not None and self.size_multiple < 1:
            raise ValueError(f"size_multiple must be >= 1, got {self.size_multiple}")
        if self.prompt_style not in ("auto", *PROMPT_STYLES):
            raise ValueError(f"prompt_style must be 'auto' or one of {PROMPT_STYLES}, got {self.prompt_style!r}")

    def for_model(self, settings: dict[str, Any]) -> "CaCOptions":
        """These options with every field left to the model filled in: from ``settings`` (a model
        folder's ``cac_align.json``), else :data:`MODEL_SETTINGS`. Fields set here win. Raises
        ``ValueError`` for a setting the file may not hold or an invalid value."""
        import dataclasses

        unknown = sorted(set(settings) - set(MODEL_SETTINGS) - set(LOAD_SETTINGS))
        if unknown:
            raise ValueError(f"cac_align.json: unknown setting(s) {unknown}; known: {', '.join([*MODEL_SETTINGS, *LOAD_SETTINGS])}")
        unset = {name for name in MODEL_SETTINGS if getattr(self, name) is None} | ({"prompt_style"} if self.prompt_style == "auto" else set())
        filled = {name: settings.get(name, MODEL_SETTINGS[name]) for name in unset}
        try:
            return dataclasses.replace(self, **filled)
        except ValueError as exc:
            raise ValueError(f"cac_align.json: {exc}") from None


@dataclass
class TurnRecord:
    """One turn: what the model saw and said, and its status probabilities if it was scored."""

    text: str
    judgment: Judgment | None
    fps: float
    frame_times: list[float]
    seconds: float = 0.0
    p_normal: float | None = None
    p_abnormal: float | None = None
    prompt_tokens: int | None = None  # the tokens the model read to answer this turn (video included)


def write_settings(folder: str | Path, settings: dict[str, Any]) -> Path:
    """Write ``settings`` as ``folder/cac_align.json`` (:mod:`cac_align.models`), checked as scoring reads them
    first (:meth:`CaCOptions.for_model`); returns the file's path."""
    from cac_align.models import SETTINGS_FILE

    CaCOptions().for_model(settings)  # unknown keys or bad values fail here, not at scoring time
    # (a dtype is checked where the model is loaded: cac_align.vlm.config.model_dtype)
    path = Path(folder) / SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=1) + "\n")
    return path


@dataclass
class CaCResult:
    """The CaC verdict on one video.

    Attributes:
        reward: P(normal) / (P(normal) + P(abnormal)) of the final turn, or None when invalid.
        valid: whether ``reward`` is trustworthy.
        status: final status ("normal" / "abnormal"), None when invalid.
        error: why the video is invalid.
        window_s: the time window turn 2 looked at (source seconds), if any.
        boxes: per turn-2 frame: {"frame", "time_s", "type", "boxes"} (0–1000 boxes).
        turn1, turn2: the turns' records.
    """

    reward: float | None = None
    valid: bool = False
    status: str | None = None
    error: str | None = None
    window_s: tuple[float, float] | None = None
    boxes: list[dict] = field(default_factory=list)
    turn1: TurnRecord | None = None
    turn2: TurnRecord | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Work:
    """Per-video state carried between the batched steps."""

    video: Video
    caption: str | None
    result: CaCResult
    scan: Video | None = None
    clip: Video | None = None
    request1: ChatRequest | None = None
    request2: ChatRequest | None = None
    probs1: Any = None  # (P(normal), P(abnormal)) read with turn 1's generation, NaN if none
    probs2: Any = None


class CaCScorer:
    """Scores videos with the CaC protocol through any :class:`Backend`."""

    def __init__(self, backend: Backend, options: CaCOptions | None = None):
        self.backend = backend
        # Fields left to the model and not resolved by the caller take the generic defaults.
        self.options = (options or CaCOptions()).for_model({})

    # -- public -----------------------------------------------------------------------------
    def score(
        self,
        videos: Any,
        prompts: Sequence[str | None] | None = None,
        source_fps: float | None = None,
    ) -> list[CaCResult]:
        """Score a batch of videos.

        Args:
            videos: a list of paths / Videos / arrays, or a diffusers batch (B, F, C, H, W).
            prompts: the generating prompt per video (shown to the model), or None.
            source_fps: frame rate of array inputs (Wan-2.1: 16).

        Returns:
            One :class:`CaCResult` per video, in input order.
        """
        items = self._load(videos, source_fps)
        if prompts is None:
            prompts = [None] * len(items)
        if len(prompts) != len(items):
            raise ValueError(f"got {len(items)} videos but {len(prompts)} prompts")
        work = [w if isinstance(w, _Work) else None for w in items]
        results: list[CaCResult] = []
        for i, item in enumerate(items):
            if isinstance(item, _Work):
                item.caption = prompts[i]
                results.append(item.result)
            else:
                results.append(CaCResult(error=str(item)))
        live = [w for w in work if w is not None]

        # 1. turn 1: the whole video at the scan rate (or the single-turn / no-CoT question)
        self._turn1(live)
        # 2. turn 2 for videos that turn 1 flagged
        self._turn2([w for w in live if w.result.error is None and w.request2 is not None])
        # 3. status probabilities of each video's final turn -> reward (CaC Eq. 7)
        self._score_final([w for w in live if w.result.error is None])
        return results

    # -- steps ------------------------------------------------------------------------------
    def _load(self, videos: Any, source_fps: float | None) -> list[Any]:
        if isinstance(videos, (str, Video)) or (hasattr(videos, "ndim") and videos.ndim == 4):
            videos = [videos]
        if hasattr(videos, "ndim") and videos.ndim == 5:
            loaded: Any = load_video(videos, source_fps=source_fps)
            return [_Work(v, None, CaCResult()) for v in loaded]
        items: list[Any] = []
        for source in videos:
            try:
                video = load_video(source, source_fps=source_fps)
                if video.duration_s < 1.0 / self.options.scan_fps - 1e-9:
                    raise VideoError(
                        f"{video.source}: video lasts {video.duration_s:.3f} s, shorter than one frame at "
                        f"{self.options.scan_fps:g} fps"
                    )
                items.append(_Work(video, None, CaCResult()))
            except VideoError as exc:
                items.append(exc)
        return items

    def _capped(self, video: Video, fps: float, cap: int) -> Video:
        return sample_capped(video, fps, cap, self.options.max_pixels, self.options.size_multiple)

    def _turn1(self, live: list[_Work]) -> None:
        opts = self.options
        builder = {"two_turn": turn1_prompt, "single_turn": single_turn_prompt, "no_cot": no_cot_prompt}[opts.mode]
        for w in live:
            w.scan = self._capped(w.video, opts.scan_fps, opts.max_frames_turn1)
            text = builder(w.video.duration_s, w.scan.fps, w.scan.num_frames, w.caption, style=opts.prompt_style)
            w.request1 = [user(w.scan, text)]
        if opts.mode == "no_cot" or not live:
            for w in live:
                w.result.turn1 = TurnRecord("", None, w.scan.fps, w.scan.timestamps.tolist())
            return
        completions, seconds, probs = self._generate([w.request1 for w in live])
        for w, completion, row in zip(live, completions, probs):
            w.probs1 = row
            text = completion.text
            judgment = parse_judgment(text, 1, fps=w.scan.fps, num_frames=w.scan.num_frames)
            w.result.turn1 = TurnRecord(text, judgment, w.scan.fps, w.scan.timestamps.tolist(), seconds, prompt_tokens=completion.prompt_tokens)
            if judgment.status is None:
                w.result.error = "turn 1 answer has no readable status: " + "; ".join(judgment.errors)
            elif judgment.status == "abnormal" and opts.mode == "two_turn":
                self._plan_turn2(w, judgment)

    def _plan_turn2(self, w: _Work, judgment: Judgment) -> None:
        opts = self.options
        window = turn2_window(judgment, w.video, opts.clip_fps)
        if window is None:
            if opts.fallback == "whole_video":
                window = turn2_window(None, w.video, opts.clip_fps)
            elif opts.fallback == "turn1":
                return
            else:
                w.result.error = "turn 1 says abnormal but gives no usable time window"
                return
        try:
            clip = self._capped(w.video.crop(*window), opts.clip_fps, opts.max_frames_turn2)
        except VideoError as exc:
            w.result.error = f"turn 1 window could not be cut: {exc}"
            return
        w.clip = clip
        w.result.window_s = (float(window[0]), float(window[1]))
        assert w.request1 is not None and w.result.turn1 is not None
        w.request2 = w.request1 + [
            assistant(w.result.turn1.text),
            user(clip, turn2_prompt(w.result.window_s, clip.fps, clip.num_frames, style=opts.prompt_style)),
        ]

    def _turn2(self, todo: list[_Work]) -> None:
        if not todo:
            return
        completions, seconds, probs = self._generate([w.request2 for w in todo])
        for w, completion, row in zip(todo, completions, probs):
            w.probs2 = row
            assert w.clip is not None
            text = completion.text
            judgment = parse_judgment(text, 2, fps=w.clip.fps, num_frames=w.clip.num_frames)
            w.result.turn2 = TurnRecord(text, judgment, w.clip.fps, w.clip.timestamps.tolist(), seconds, prompt_tokens=completion.prompt_tokens)
            if judgment.status is None:
                w.result.error = "turn 2 answer has no readable status: " + "; ".join(judgment.errors)
                continue
            for anomaly in judgment.anomalies:
                for frame, boxes in anomaly.boxes.items():
                    if frame < w.clip.num_frames:
                        w.result.boxes.append(
                            {"frame": frame, "time_s": float(w.clip.timestamps[frame]), "type": anomaly.type, "boxes": boxes}
                        )

    def _score_final(self, todo: list[_Work]) -> None:
        requests, prefixes, turns, known = [], [], [], []
        for w in todo:
            turn = w.result.turn2 if w.result.turn2 is not None else w.result.turn1
            request = w.request2 if w.result.turn2 is not None else w.request1
            if self.options.mode == "no_cot":
                prefix = '{"status": "'
            else:
                read = w.probs2 if w.result.turn2 is not None else w.probs1
                if read is not None and all(math.isfinite(p) for p in read):
                    known.append(((w, turn), tuple(read)))  # read with the turn's own generation
                    continue
                match = re.search(STATUS_KEY_PATTERN, turn.text)
                if match is None:
                    w.result.error = "final answer has no JSON status field to score"
                    continue
                prefix = turn.text[: match.end()]
            requests.append(request)
            prefixes.append(prefix)
            turns.append((w, turn))
        scored = list(zip(turns, self.backend.choice_probs(requests, prefixes, list(STATUS_CHOICES)))) if requests else []
        for (w, turn), (p_normal, p_abnormal) in known + scored:
            turn.p_normal, turn.p_abnormal = float(p_normal), float(p_abnormal)
            total = p_normal + p_abnormal
            if not total > 0:
                w.result.error = "P(normal) + P(abnormal) underflowed to 0"
                continue
            w.result.reward = float(p_normal / total)  # CaC Eq. 7
            w.result.valid = True
            if self.options.mode == "no_cot":
                w.result.status = "normal" if p_normal >= p_abnormal else "abnormal"
            else:
                assert turn.judgment is not None
                w.result.status = turn.judgment.status

    def _generate(self, requests: list[ChatRequest]) -> tuple[list[Any], float, Any]:
        """Generate a batch; returns the completions, the amortised seconds per request, and the (N, 2)
        P(normal), P(abnormal) where each answer's status value begins, when the backend reads
        them with the generation itself (in-process: from the generation's KV cache, so each
        turn encodes its video once). Otherwise, or where an answer has no status field, NaN:
        the final turn is then scored by ``choice_probs`` in :meth:`_score_final`."""
        start = time.perf_counter()
        options = {"max_new_tokens": self.options.max_new_tokens, "temperature": self.options.temperature}
        completions, probs = self.backend.generate_scored(requests, list(STATUS_CHOICES), _status_prefix, **options)
        elapsed = (time.perf_counter() - start) / max(1, len(requests))
        return list(completions), elapsed, probs


def _status_prefix(text: str) -> str | None:
    """The answer up to where its status value begins (``...{"status": "``), or None."""
    match = re.search(STATUS_KEY_PATTERN, text)
    return text[: match.end()] if match else None
