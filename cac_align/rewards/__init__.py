"""The reward plugin layer: one contract, CaC and UnifiedReward, normalizers, combination.

    from cac_align.rewards import build_reward
    reward = build_reward({"name": "ur_cac"})           # the paper's UR + CaC average
    out = reward(videos, prompts)                      # out.scores, out.valid, out.details

See docs/rewards.md.
"""

from cac_align.rewards.base import ErrorKind, Reward, RewardError, RewardOutput
from cac_align.rewards.registry import REWARDS, build_reward, register_reward, reward_config, reward_names

__all__ = ["REWARDS", "ErrorKind", "Reward", "RewardError", "RewardOutput", "build_reward", "register_reward", "reward_config", "reward_names"]
