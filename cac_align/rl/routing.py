"""Modality routing: each reward component's group advantage goes to the loss of the modality it judges.

A generator that makes sound (LTX-2, MiniMax-H3) acts twice a step: on its video latents and on its
audio latents (``audio: trained``, docs/audio.md). A reward of several components (a combined reward,
:mod:`cac_align.rewards.combine`) says what each judges (the Reward contract's ``modalities``:
"video", "audio" or "both"). ``advantage.routing: summed`` gives both losses the one group advantage
of the combined score, as before; ``routed`` gives each latent stream only what judged it, as OmniNFT
(verl-omni #414, arXiv 2605.12480) routes VideoAlign and HPSv3 to the video, AudioBox and CLAP to the
audio and DeSync to both:

    A_c        = group advantage of component c's normalized score, clipped    (rl/advantages.py)
    A_video    = sum over c judging "video" or "both" of  w_c A_c
    A_audio    = sum over c judging "audio" or "both" of  w_c A_c

with ``w_c`` the combination's weights (they sum to 1, so a reward whose components all judge one
modality gives that stream ``sum_c w_c A_c``, the other 0). :func:`routed_advantages` is that equation.

**Windows in time** (localized credit carried over, :func:`window_map`): a component that judges
"both" says *when* the sound slips as the ``sync`` reward does (:mod:`cac_align.rewards.sync`): in
its per-sample details, ``status: "abnormal"`` with ``window_s: [start, end]`` (seconds of the clip,
the windows whose offset is not 0). Its advantage then weights only the latent frames of that span,
in both streams: a video latent frame by the pixel frames it covers (:func:`video_frame_spans`), an
audio latent frame by its share of the clip (:func:`audio_frame_spans`: the family's ``side_frames``
spread evenly over the clip). The map is ``outside + (inside - outside) * covered``, scaled to mean
1 as :func:`cac_align.rl.credit.credit_map` scales a judge's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np

from cac_align.rl.advantages import group_advantages
from cac_align.rl.credit import LocalizeSettings

__all__ = ["AGGREGATES", "ROUTINGS", "AdvantageSettings", "STREAMS", "audio_frame_spans", "component_advantages", "routed_advantages", "routed_credit", "sample_windows",
           "video_frame_spans", "window_map"]

# ``advantage.routing``: one advantage for every latent (today's) or each component's to what it judges
ROUTINGS = ("summed", "routed")
# ``advantage.aggregate``: the combined score's group advantage (today's), or GDPO's: each component normalized in
# its group, then summed and normalized over the step (:func:`cac_align.rl.advantages.normalize_then_sum`)
AGGREGATES = ("sum_then_normalize", "normalize_then_sum")
# the latent streams a generator with sound acts on, and the modalities each takes advantages from
STREAMS = {"video": ("video", "both"), "audio": ("audio", "both")}


def component_advantages(scores: Mapping[str, np.ndarray], groups: Sequence[Hashable], *, std: str = "group",
                         clip: float | None = None) -> dict[str, Any]:
    """Each component's group advantages (:func:`~cac_align.rl.advantages.group_advantages` of its
    scores; NaN: that component did not score the sample, advantage 0)."""
    return {name: group_advantages(values, groups, std=std, clip=clip) for name, values in scores.items()}


def routed_advantages(advantages: Mapping[str, np.ndarray], weights: Mapping[str, float], modalities: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The advantage of each latent stream (module docstring): ``{"video": (B,), "audio": (B,)}``.

    Args:
        advantages: ``{component: (B,)}`` each component's group advantages.
        weights: ``{component: w}`` the combination's weights.
        modalities: ``{component: "video" | "audio" | "both"}``.

    Hand-worked: components v (video, w 0.5, A = [1, -1]), a (audio, w 0.25, A = [2, -2]),
    s (both, w 0.25, A = [-1, 1]): video = 0.5 [1, -1] + 0.25 [-1, 1] = [0.25, -0.25];
    audio = 0.25 [2, -2] + 0.25 [-1, 1] = [0.25, -0.25].
    """
    missing = [name for name in advantages if name not in weights or name not in modalities]
    if missing:
        raise ValueError(f"routing: component(s) {missing} have no weight or modality")
    n = len(next(iter(advantages.values()))) if advantages else 0
    out = {stream: np.zeros(n, dtype=np.float64) for stream in STREAMS}
    for name, values in advantages.items():
        if modalities[name] not in ("video", "audio", "both"):
            raise ValueError(f"routing: component {name!r} judges {modalities[name]!r}; a modality is video, audio or both")
        for stream, judged in STREAMS.items():
            if modalities[name] in judged:
                out[stream] += float(weights[name]) * np.asarray(values, dtype=np.float64)
    return {stream: values.astype(np.float32) for stream, values in out.items()}


def video_frame_spans(num_frames: int, fps: float, temporal: int) -> np.ndarray:
    """``(T_lat, 2)`` seconds each video latent frame covers: latent frame 0 is pixel frame 0,
    latent ``k >= 1`` the ``temporal`` frames ``temporal (k - 1) + 1 .. temporal k``; a pixel frame
    ``f`` spans ``[f / fps, (f + 1) / fps)``. Hand-worked: 9 frames at 24 fps, temporal 8: latent 0
    is [0, 1/24), latent 1 [1/24, 9/24)."""
    from cac_align.rl.credit import latent_frames

    return np.array([[r.start / fps, r.stop / fps] for r in latent_frames(num_frames, temporal)], dtype=np.float64)


def audio_frame_spans(audio_frames: int, duration_s: float) -> np.ndarray:
    """``(T_a, 2)`` seconds each audio latent frame covers: the clip's ``duration_s`` split evenly
    (LTX-2: one token per 40 ms; MiniMax-H3: 40 latents a second). Hand-worked: 4 frames over 1 s:
    [0, .25), [.25, .5), [.5, .75), [.75, 1)."""
    edges = np.linspace(0.0, duration_s, audio_frames + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def sample_windows(details: Mapping[str, Any]) -> list[tuple[float, float]] | None:
    """The span where a component's per-sample details say the sound slips (module docstring:
    ``status: "abnormal"`` with ``window_s: [start, end]``), as ``[(start, end)]``; None when they
    name none (in sync, or no verdict); raises ``ValueError`` on a malformed span (the caller keeps
    the uniform map and says so)."""
    if not isinstance(details, Mapping) or details.get("status") != "abnormal" or details.get("window_s") is None:
        return None
    span = details["window_s"]
    try:
        start, end = (float(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"window_s is [start, end] in seconds, got {span!r}") from None
    if not (np.isfinite(start) and np.isfinite(end)) or end <= start:
        raise ValueError(f"window_s needs start < end, got {span!r}")
    return [(start, end)]


def window_map(windows: Sequence[tuple[float, float]], spans: np.ndarray, inside: float = 1.0, outside: float = 0.0) -> np.ndarray | None:
    """``(T,)`` the weight of each latent frame (``spans``: ``(T, 2)`` seconds) under ``windows``:
    ``outside + (inside - outside) * covered`` scaled to mean 1, ``covered`` 1 where a frame's span
    overlaps a window; None when no frame overlaps (the uniform map stays).

    Hand-worked: spans [0, .25), [.25, .5), [.5, .75), [.75, 1), window (0.3, 0.6), inside 1,
    outside 0: covered [0, 1, 1, 0] -> mean 0.5 -> [0, 2, 2, 0].
    """
    covered = np.zeros(len(spans), dtype=np.float64)
    for start, end in windows:
        covered[(spans[:, 0] < end) & (spans[:, 1] > start)] = 1.0
    if not covered.any():
        return None
    weights = outside + (inside - outside) * covered
    return (weights / weights.mean()).astype(np.float32)


def routed_credit(table: Mapping[str, tuple[float, str]], advantages: Mapping[str, np.ndarray], windows: Mapping[str, Sequence[Any]],
                  judge_maps: np.ndarray, video_spans: np.ndarray, audio_spans: np.ndarray, inside: float = 1.0,
                  outside: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-position advantages of both streams under routing with localized credit (module docstring).

        video_bp = M_bp * sum_{c video} w_c A_bc + sum_{c both} w_c A_bc W^v_bc(t_p)
        audio_bf = sum_{c audio} w_c A_bc + sum_{c both} w_c A_bc W^a_bc(f)

    ``M`` is the judge's credit map (:func:`cac_align.rl.credit.credit_maps`, made with the video
    components' advantage), ``W`` a component's :func:`window_map` over each stream's latent frames
    (1 where it names no window).

    Args:
        table: ``{component: (weight, modality)}``.
        advantages: ``{component: (B,)}``.
        windows: ``{component: B entries}`` each sample's windows (:func:`sample_windows`'s pairs) or None;
            only components judging "both" are read.
        judge_maps: ``(B, T, H, W)`` the judge's credit maps (ones where none).
        video_spans, audio_spans: ``(T, 2)`` and ``(T_a, 2)`` seconds of each latent frame.

    Returns:
        ``(video (B, T, H, W), audio (B, T_a), windowed)``: float32 maps and how many samples had a window.
    """
    n = len(judge_maps)
    video_only = np.zeros(n, dtype=np.float64)
    for name, (weight, modality) in table.items():
        if modality == "video":
            video_only += weight * np.asarray(advantages[name], dtype=np.float64)
    video = judge_maps.astype(np.float64) * video_only[:, None, None, None]
    audio = np.zeros((n, len(audio_spans)), dtype=np.float64)
    windowed = np.zeros(n, dtype=bool)
    for name, (weight, modality) in table.items():
        if modality == "video":
            continue
        for i in range(n):
            share = weight * float(advantages[name][i])
            if modality == "audio":
                audio[i] += share
                continue
            spans = windows.get(name, [None] * n)[i]
            over_video = window_map(spans, video_spans, inside, outside) if spans else None
            over_audio = window_map(spans, audio_spans, inside, outside) if spans else None
            windowed[i] |= over_video is not None or over_audio is not None
            video[i] += share * (1.0 if over_video is None else over_video[:, None, None])
            audio[i] += share * (1.0 if over_audio is None else over_audio)
    return video.astype(np.float32), audio.astype(np.float32), int(windowed.sum())


@dataclass
class AdvantageSettings:
    """How a sample's advantage reaches the loss, beyond the group statistics.

    Attributes:
        localize: localized credit (:mod:`cac_align.rl.credit`): the advantage spread over the
            latent positions by the reward's evidence (window and boxes), ViPO's per-position
            estimator. Off by default: the scalar estimator, exactly as before.
        shuffle_scores: a **control run**, not training: each group's valid scores are permuted
            among its videos (:func:`cac_align.rl.advantages.shuffle_within_groups`, seeded by seed and
            step) before the advantages, so the run learns nothing from its reward. What it
            changes is the optimizer's drift; a real run's change beyond it is what its reward
            did (docs/flow_grpo.md, "A no-signal control").
        routing: "summed" (one group advantage of the combined score for every latent: as before)
            or "routed" (each component's group advantage, weighted as the combination weights it, to
            the latents of the modality it judges: :mod:`cac_align.rl.routing`; docs/audio.md,
            "Routing"). Routed needs ``audio: trained`` (the audio latents take the audio's share).
        aggregate: how a combined reward's components make one advantage: "sum_then_normalize" (the
            group advantage of the combined score: as before) or "normalize_then_sum" (GDPO, as trl
            defines it: each component's raw score normalized within its group, summed with the
            combination's weights, the sum normalized over the step: one component's scale cannot
            drown the others; :func:`cac_align.rl.advantages.normalize_then_sum`). Needs a combined reward.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"routing": ROUTINGS, "aggregate": AGGREGATES}

    localize: LocalizeSettings = field(default_factory=LocalizeSettings)
    shuffle_scores: bool = False
    routing: str = "summed"
    aggregate: str = "sum_then_normalize"

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"advantage.routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"advantage.aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
