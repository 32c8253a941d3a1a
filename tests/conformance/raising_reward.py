"""``explodes``: a reward whose model call raises (a crashed server, CUDA out of memory), for the
scripts that drive another trainer's own code with our integrations (unirl_reward_service.py,
teleboost_check.py; imported from this folder, which a script run by path has on ``sys.path``)."""

from __future__ import annotations

from dataclasses import dataclass

from cac_align.rewards.base import BatchReward
from cac_align.rewards.registry import register_reward


@dataclass
class ExplodesConfig:
    pass


class ExplodesReward(BatchReward):
    name = "explodes"
    score_range = (0.0, 1.0)
    needs_prompt = False

    def score_batch(self, requests):
        raise RuntimeError("the judge's server went away")


def build_explodes(config: ExplodesConfig, key: str = "reward") -> ExplodesReward:
    return ExplodesReward()


register_reward("explodes", f"{__name__}:ExplodesConfig", f"{__name__}:build_explodes")
