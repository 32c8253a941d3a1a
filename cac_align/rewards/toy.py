"""Model-free rewards for checking that an RL loop learns at all: brightness, whole or local.

``brightness`` scores a video by its mean pixel value in [0, 1]. It needs no weights, is
deterministic and is easy to move, which makes it the reward of choice for smoke tests of a
trainer and for the learning-signal benchmark (``benchmarks/rl/flow_grpo_toy.py``): if a policy
cannot learn to make videos brighter, it will not learn anything subtler.

``colour`` judges one RGB channel's mean (more, or less, of it): beside ``brightness`` it is the
held-out judge of a proxy that can be hacked (``benchmarks/rl/reward_hacking.py``): brightness rises
with any channel, and a judge that wants less green falls when the green does.

``spot_brightness`` is the same idea with a known, localized defect: brightness inside a fixed
box during a fixed time window counts as the defect, and the reward is ``1 -`` its mean. Like
CaC, it reports where and when (``status``, ``window_s``, per-frame ``boxes`` in 0-1000
coordinates), so localized credit (``advantage.localize`` of ``cac-align flow-grpo``) can be
exercised and measured offline (``benchmarks/rl/localized_credit.py``). Neither says anything about
video quality; never align a real model with them.

For a generator that makes sound (``audio: trained``, docs/audio.md), two more, as model-free:
``loudness`` hears only the soundtrack (modality ``audio``): its mean absolute amplitude in [0, 1]
(a sample without a usable track is invalid, ``error_kind: audio``, never 0); ``toy_sync`` judges how
the two fit (modality ``both``): ``1 - |brightness - loudness|`` over the clip, and it says *when*
the sound slips as the ``sync`` reward does (``status: abnormal`` with ``window_s``, the span
:mod:`cac_align.rl.routing` reads), here the fixed ``window_s`` of its config. Neither reads the
prompt (``reads_prompt`` false), so a run that trains the sound on them alone must say
``audio_rewards_blind_ok: true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video

__all__ = ["ColourConfig", "ColourReward", "LoudnessConfig", "LoudnessReward", "ToySyncConfig", "ToySyncReward", "loudness", "BrightnessConfig", "BrightnessReward", "SpotBrightnessConfig", "SpotBrightnessReward", "build", "build_spot", "no_judges", "spot_brightness"]


@dataclass
class BrightnessConfig:
    """Config of the ``brightness`` reward.

    Attributes:
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    source_fps: float = 16.0


class BrightnessReward(BatchReward):
    """Mean pixel value of each video, in [0, 1] (0 = black, 1 = white)."""

    name = "brightness"
    score_range = (0.0, 1.0)
    needs_prompt = False
    reads_prompt = False

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        return [{"score": float(np.asarray(video.frames).mean()) / 255.0} for video, _ in requests]


def build(config: BrightnessConfig, key: str = "reward") -> BrightnessReward:
    return BrightnessReward(source_fps=config.source_fps)


@dataclass
class SpotBrightnessConfig:
    """Config of the ``spot_brightness`` reward.

    Attributes:
        box: ``[x0, y0, x1, y1]`` of the defect, 0-1000 coordinates of the frame.
        window_s: ``[start, end)`` seconds of the defect.
        threshold: the verdict is "abnormal" (with the box and window as evidence) when the
            spot's mean brightness exceeds this, else "normal"; 0 makes every video abnormal.
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    box: list[float] = field(default_factory=lambda: [0.0, 0.0, 500.0, 500.0])
    window_s: list[float] = field(default_factory=lambda: [0.25, 0.5])
    threshold: float = 0.0
    source_fps: float = 16.0

    def __post_init__(self) -> None:
        if len(self.box) != 4 or not 0 <= self.box[0] < self.box[2] <= 1000 or not 0 <= self.box[1] < self.box[3] <= 1000:
            raise ValueError(f"box must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1000 and 0 <= y0 < y1 <= 1000, got {self.box}")
        if len(self.window_s) != 2 or not 0 <= self.window_s[0] < self.window_s[1]:
            raise ValueError(f"window_s must be [start, end) with 0 <= start < end, got {self.window_s}")


def spot_brightness(video: Video, box: list[float], window_s: list[float]) -> tuple[float, list[int]]:
    """Mean brightness in [0, 1] inside ``box`` (0-1000) on the frames inside ``window_s``, and
    those frames' indices; NaN and [] when no frame is inside the window."""
    frames = [i for i, t in enumerate(video.timestamps) if window_s[0] <= t < window_s[1]]
    if not frames:
        return float("nan"), []
    h, w = video.height, video.width
    x0, x1 = int(np.floor(box[0] / 1000 * w)), int(np.ceil(box[2] / 1000 * w))
    y0, y1 = int(np.floor(box[1] / 1000 * h)), int(np.ceil(box[3] / 1000 * h))
    return float(np.asarray(video.frames)[frames, y0:y1, x0:x1].mean()) / 255.0, frames


class SpotBrightnessReward(BatchReward):
    """``1 -`` the brightness of a fixed spot during a fixed window, with that spot as evidence."""

    name = "spot_brightness"
    score_range = (0.0, 1.0)
    needs_prompt = False
    reads_prompt = False

    def __init__(self, box: list[float], window_s: list[float], threshold: float = 0.0, source_fps: float = 16.0):
        self.box, self.window_s, self.threshold, self.source_fps = list(box), list(window_s), threshold, source_fps

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        answers = []
        for video, _ in requests:
            value, frames = spot_brightness(video, self.box, self.window_s)
            if not frames:
                answers.append({"error": f"no frame of this {video.duration_s:.3f} s video lies in window_s {self.window_s}", "error_kind": "video"})
                continue
            abnormal = value > self.threshold
            answers.append({
                "score": 1.0 - value,
                "spot_brightness": value,
                "status": "abnormal" if abnormal else "normal",
                "window_s": list(self.window_s) if abnormal else None,
                "boxes": [{"frame": i, "time_s": float(video.timestamps[i]), "boxes": [list(self.box)]} for i in frames] if abnormal else [],
            })
        return answers


def build_spot(config: SpotBrightnessConfig, key: str = "reward") -> SpotBrightnessReward:
    return SpotBrightnessReward(config.box, config.window_s, config.threshold, config.source_fps)


def loudness(video: Video) -> tuple[float | None, str | None]:
    """``(mean |amplitude| in [0, 1], None)`` of a video's soundtrack, or ``(None, why)`` when it has
    no usable one (none, empty, or a non-finite sample)."""
    if video.audio is None:
        return None, f"{video.source} has no soundtrack (a reward that hears needs the generator's audio)"
    track = np.asarray(video.audio, dtype=np.float64)
    if track.size == 0 or not np.isfinite(track).all():
        return None, f"{video.source}'s soundtrack is empty or not finite"
    return float(np.clip(np.abs(track).mean(), 0.0, 1.0)), None


@dataclass
class LoudnessConfig:
    """Config of the ``loudness`` reward.

    Attributes:
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    source_fps: float = 16.0


class LoudnessReward(BatchReward):
    """Mean absolute amplitude of each video's soundtrack, in [0, 1]: a toy that hears (module docstring)."""

    name = "loudness"
    score_range = (0.0, 1.0)
    needs_prompt = False
    modality = "audio"
    reads_prompt = False

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        answers = []
        for video, _ in requests:
            value, why = loudness(video)
            answers.append({"score": value} if why is None else self.invalid_detail(why, ErrorKind.AUDIO))
        return answers


def build_loudness(config: LoudnessConfig, key: str = "reward") -> LoudnessReward:
    return LoudnessReward(source_fps=config.source_fps)


@dataclass
class ToySyncConfig:
    """Config of the ``toy_sync`` reward.

    Attributes:
        window_s: the span ``[start, end)`` (seconds) it reports, on every sample, as where the sound
            slips (``status: abnormal``, ``window_s``); null: in sync (``status: normal``).
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    window_s: list[float] | None = None
    source_fps: float = 16.0

    def __post_init__(self) -> None:
        if self.window_s is not None and (len(self.window_s) != 2 or not 0 <= self.window_s[0] < self.window_s[1]):
            raise ValueError(f"window_s is [start, end) with 0 <= start < end, got {self.window_s}")


class ToySyncReward(BatchReward):
    """``1 - |brightness - loudness|``, with a fixed span as its verdict of where the sound slips (module docstring)."""

    name = "toy_sync"
    score_range = (0.0, 1.0)
    needs_prompt = False
    modality = "both"
    reads_prompt = False

    def __init__(self, window_s: list[float] | None = None, source_fps: float = 16.0):
        self.window_s, self.source_fps = (list(window_s) if window_s else None), source_fps

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        answers = []
        for video, _ in requests:
            value, why = loudness(video)
            if why is not None:
                answers.append(self.invalid_detail(why, ErrorKind.AUDIO))
                continue
            brightness = float(np.asarray(video.frames).mean()) / 255.0
            answers.append({"score": 1.0 - abs(brightness - value), "status": "abnormal" if self.window_s else "normal",
                            "window_s": self.window_s, "boxes": []})
        return answers


def build_sync(config: ToySyncConfig, key: str = "reward") -> ToySyncReward:
    return ToySyncReward(config.window_s, config.source_fps)


CHANNELS = ("red", "green", "blue")


@dataclass
class ColourConfig:
    """Config of the ``colour`` reward.

    Attributes:
        channel: the colour it judges: "red", "green" or "blue".
        prefer: "more" (the channel's mean in [0, 1]) or "less" (1 - it).
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    channel: str = "blue"
    prefer: str = "less"
    source_fps: float = 16.0

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        if self.prefer not in ("more", "less"):
            raise ValueError(f"prefer must be 'more' or 'less', got {self.prefer!r}")


class ColourReward(BatchReward):
    """A judge with a taste for one colour: the mean of one RGB channel in [0, 1], or 1 - it. Beside
    ``brightness`` it makes a proxy that can be hacked (benchmarks/rl/reward_hacking.py): brightness
    rises with any channel, this judge falls when its channel does."""

    name = "colour"
    score_range = (0.0, 1.0)
    needs_prompt = False
    reads_prompt = False

    def __init__(self, channel: str = "blue", prefer: str = "less", source_fps: float = 16.0):
        self.index, self.prefer, self.source_fps = CHANNELS.index(channel), prefer, source_fps

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        means = [float(np.asarray(video.frames)[..., self.index].mean()) / 255.0 for video, _ in requests]
        return [{"score": m if self.prefer == "more" else 1.0 - m} for m in means]


def build_colour(config: ColourConfig, key: str = "reward") -> ColourReward:
    return ColourReward(config.channel, config.prefer, config.source_fps)


def no_judges(config: Any, where: str, video: Any) -> list[Any]:
    """The toy rewards load no model (:mod:`cac_align.rewards.judges`)."""
    return []


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "brightness",
    "cac_align.rewards.toy:BrightnessConfig",
    "cac_align.rewards.toy:build",
    "mean pixel value in [0, 1]: a model-free toy reward for checking that an RL loop learns",
    judges="cac_align.rewards.toy:no_judges",
)
register_reward(
    "spot_brightness",
    "cac_align.rewards.toy:SpotBrightnessConfig",
    "cac_align.rewards.toy:build_spot",
    "1 - brightness of a fixed box during a fixed window, reported as CaC-style evidence: a toy localized defect",
    judges="cac_align.rewards.toy:no_judges",
)
register_reward(
    "colour",
    "cac_align.rewards.toy:ColourConfig",
    "cac_align.rewards.toy:build_colour",
    "one RGB channel's mean in [0, 1] (or 1 - it): a model-free toy judge with a taste for a colour",
    judges="cac_align.rewards.toy:no_judges",
)
register_reward(
    "loudness",
    "cac_align.rewards.toy:LoudnessConfig",
    "cac_align.rewards.toy:build_loudness",
    "mean absolute amplitude of the soundtrack in [0, 1]: a model-free toy reward that hears (modality audio)",
    judges="cac_align.rewards.toy:no_judges",
)
register_reward(
    "toy_sync",
    "cac_align.rewards.toy:ToySyncConfig",
    "cac_align.rewards.toy:build_sync",
    "1 - |brightness - loudness| with a fixed span where the sound slips: a model-free toy synchrony reward (modality both)",
    judges="cac_align.rewards.toy:no_judges",
)
