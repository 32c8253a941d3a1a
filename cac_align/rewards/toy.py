"""A model-free reward for checking that an RL loop learns at all: mean brightness.

``brightness`` scores a video by its mean pixel value in [0, 1]. It needs no weights, is
deterministic and is easy to move, which makes it the reward of choice for smoke tests of a
trainer and for the learning-signal benchmark (``benchmarks/flow_grpo_toy.py``): if a policy
cannot learn to make videos brighter, it will not learn anything subtler. It says nothing
about video quality; never align a real model with it.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from cac_align.rewards.base import BatchReward
from cac_align.video import Video

__all__ = ["BrightnessConfig", "BrightnessReward", "build"]


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

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        return [{"score": float(np.asarray(video.frames).mean()) / 255.0} for video, _ in requests]


def build(config: BrightnessConfig, key: str = "reward") -> BrightnessReward:
    return BrightnessReward(source_fps=config.source_fps)


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "brightness",
    "cac_align.rewards.toy:BrightnessConfig",
    "cac_align.rewards.toy:build",
    "mean pixel value in [0, 1]: a model-free toy reward for checking that an RL loop learns",
)
