"""A combined reward that raises on purpose, for the fault tests (tests/jobs/test_faults.py).

Named by dotted path (``fault_rewards:flaky_pair``) from a process whose ``sys.path`` holds tests/
(tests/parallel_launch.py's own folder), or imported by a test. It is the paper's shape of reward, a
:class:`~cac_align.rewards.combine.CombinedReward` of two parts (here two model-free ones: brightness and
its opposite), so a trainer logs per-part metrics for it, and its ``k``-th call on process ``r`` raises
``RuntimeError`` when ``"p<r>c<k>"`` is in ``fail`` (comma-separated) (as a served judge that times out once would).
"""

from __future__ import annotations

import os

import numpy as np

from cac_align.rewards.combine import CombinedReward
from cac_align.rewards.toy import BrightnessReward


class DimnessReward(BrightnessReward):
    """One minus the mean pixel value: the second part of the pair."""

    name = "dimness"

    def score_batch(self, requests):
        return [{"score": 1.0 - float(np.asarray(video.frames).mean()) / 255.0} for video, _ in requests]


class FlakyPair(CombinedReward):
    """brightness and dimness averaged (weights 0.75 / 0.25, so the score still follows brightness);
    the calls listed in ``fail`` raise."""

    def __init__(self, fail: str = ""):
        super().__init__([BrightnessReward(), DimnessReward()], weights=[0.75, 0.25], name="flaky_pair")
        self.fail = {tuple(int(x) for x in item.strip().removeprefix("p").split("c")) for item in fail.split(",") if item.strip()}
        self.calls = 0

    def __call__(self, videos, prompts=None, metadata=None):
        self.calls += 1
        rank = int(os.environ.get("RANK", "0"))
        if (rank, self.calls) in self.fail:
            raise RuntimeError(f"injected: reward call {self.calls} failed")  # the same words on every process
        return super().__call__(videos, prompts, metadata)


def flaky_pair(fail: str = "") -> FlakyPair:
    """The factory a recipe names: ``reward: {name: "fault_rewards:flaky_pair", fail: "p1c1,p0c2"}`` (process 1's first call and process 0's second raise)."""
    return FlakyPair(fail)
