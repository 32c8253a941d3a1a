"""A model-free reward for checking that an RL loop learns at all: mean brightness.

``brightness`` scores a video by its mean pixel value in [0, 1]. It needs no weights, is
deterministic and is easy to move, which makes it the reward of choice for smoke tests of a
trainer and for the learning-signal benchmark (``benchmarks/flow_grpo_toy.py``): if a policy
cannot learn to make videos brighter, it will not learn anything subtler. It says nothing
about video quality; never align a real model with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from cac_align.rewards.base import ErrorKind, RewardBase, RewardOutput, check_prompts, load_inputs

__all__ = ["BrightnessConfig", "BrightnessReward", "build"]


@dataclass
class BrightnessConfig:
    """Config of the ``brightness`` reward.

    Attributes:
        source_fps: frame rate of array/tensor input without ``fps`` in its metadata.
    """

    source_fps: float = 16.0


class BrightnessReward(RewardBase):
    """Mean pixel value of each video, in [0, 1] (0 = black, 1 = white)."""

    name = "brightness"
    score_range = (0.0, 1.0)

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps

    def __call__(self, videos: Any, prompts: Sequence[str | None] | None = None, metadata: Any = None) -> RewardOutput:
        loaded = load_inputs(videos, metadata, self.source_fps)
        check_prompts(len(loaded), prompts)
        scores = np.full(len(loaded), np.nan)
        details: list[dict[str, Any]] = []
        for i, video in enumerate(loaded):
            if isinstance(video, Exception):
                details.append({"error": str(video), "error_kind": ErrorKind.VIDEO})
                continue
            scores[i] = float(np.asarray(video.frames).mean()) / 255.0
            details.append({})
        return RewardOutput(self.name, scores, np.isfinite(scores), details)


def build(config: BrightnessConfig, key: str = "reward") -> BrightnessReward:
    return BrightnessReward(source_fps=config.source_fps)
