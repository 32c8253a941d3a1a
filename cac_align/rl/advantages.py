"""Pure RL math both GRPO trainers share: group advantages and PPO's clipped surrogate.

Used by ``cac-align flow-grpo`` (:mod:`cac_align.jobs.flow_grpo`: groups of videos per prompt,
Flow-GRPO's per-prompt stat tracking) and by CaC's stage-3 GRPO (:mod:`cac_align.jobs.train_cac_grpo`:
groups of rollouts per video). Both trainers run the same step order; the plumbing around the
math lives in :mod:`cac_align.run`:

1. the step's items (prompts or videos) from :func:`cac_align.run.dist.step_indices`, split over
   the processes by :func:`cac_align.run.dist.per_process` (the batch is a global intent; the
   code derives each device's share);
2. rollouts, seeded by :func:`cac_align.run.dist.derive_seed` from (seed, step, ...);
3. rewards and :func:`group_advantages`;
4. the loss around :func:`clipped_surrogate`, gradients all-reduced once per update;
5. metrics gathered over processes (:func:`cac_align.run.dist.gather_floats`,
   :func:`cac_align.run.metrics.merge_sums`) and logged by :func:`cac_align.run.metrics.log_metrics`
   (``metrics.jsonl`` + accelerate's trackers);
6. a checkpoint every N steps through :func:`cac_align.run.checkpoints.save_checkpoint`
   (``checkpoints/step_NNNNNN/``, ``state.json`` written last: a folder without it was
   interrupted and is never resumed from).

GRPO draws a group of G samples per prompt and scores each sample against its own group:

    A_i = (r_i - mean(r of i's group)) / (std + eps)

``std`` is the group's own standard deviation (``std="group"``, Flow-GRPO's default) or the
standard deviation of all rewards in the step (``std="global"``, steadier when groups are small).
Standard deviations are population ones (``ddof=0``), as numpy's default in Flow-GRPO.

Invalid rewards (NaN, or ``valid=False``) take no part in any statistic and get advantage 0.
A group whose valid rewards are all equal (or has fewer than two) teaches nothing: its samples
get advantage 0 and ``trainable=False``, and the trainer drops them and logs their fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["GroupAdvantages", "clipped_surrogate", "group_advantages", "nan_mean_std", "shuffle_within_groups"]


# ---------------------------------------------------------------------------------------
# 3-4. Group advantages and the clipped surrogate
# ---------------------------------------------------------------------------------------
@dataclass
class GroupAdvantages:
    """Result of :func:`group_advantages`.

    Attributes:
        advantages: ``(B,)`` float32; 0 where invalid or in a zero-variance group.
        trainable: ``(B,)`` bool; valid and in a group with variance.
        zero_std_fraction: fraction of groups with zero variance (fewer than two valid rewards,
            or all valid rewards equal).
        num_groups: number of distinct groups.
    """

    advantages: np.ndarray
    trainable: np.ndarray
    zero_std_fraction: float
    num_groups: int


def group_advantages(
    rewards: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable],
    *,
    valid: Sequence[bool] | np.ndarray | None = None,
    std: str = "group",
    eps: float = 1e-4,
    clip: float | None = None,
    zero_std_tol: float = 1e-8,
) -> GroupAdvantages:
    """Advantages of ``rewards`` within their ``groups`` (module docstring).

    Args:
        rewards: ``(B,)`` rewards; NaN means invalid.
        groups: ``(B,)`` group keys (the prompt, or its index).
        valid: optional ``(B,)`` validity mask, combined with ``isfinite(rewards)``.
        std: "group" (each group's own std) or "global" (std of all valid rewards).
        eps: added to the std (Flow-GRPO: 1e-4).
        clip: clip advantages to ``[-clip, clip]`` (Flow-GRPO's ``adv_clip_max``: 5); None = no clip.
        zero_std_tol: a group std at or below this counts as zero variance.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if len(groups) != len(r):
        raise ValueError(f"{len(r)} rewards but {len(groups)} group keys")
    ok = np.isfinite(r)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    if std not in ("group", "global"):
        raise ValueError(f"std must be 'group' or 'global', got {std!r}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    global_std = float(r[ok].std()) if ok.any() else 0.0
    advantages = np.zeros(len(r))
    trainable = np.zeros(len(r), dtype=bool)
    keys = list(dict.fromkeys(groups))
    zero_std = 0
    for key in keys:
        members = np.array([g == key for g in groups]) & ok
        values = r[members]
        group_std = float(values.std()) if len(values) else 0.0
        if len(values) < 2 or group_std <= zero_std_tol:
            zero_std += 1
            continue
        scale = group_std if std == "group" else global_std
        advantages[members] = (values - values.mean()) / (scale + eps)
        trainable[members] = True
    if clip is not None:
        advantages = np.clip(advantages, -clip, clip)
    return GroupAdvantages(
        advantages=advantages.astype(np.float32),
        trainable=trainable,
        zero_std_fraction=zero_std / len(keys) if keys else 0.0,
        num_groups=len(keys),
    )


def shuffle_within_groups(rewards: Sequence[float] | np.ndarray, groups: Sequence[Hashable], rng: np.random.Generator) -> np.ndarray:
    """The no-signal control's rewards: within each group, the valid (finite) rewards permuted
    at random among that group's valid samples; invalid ones stay where they are. Every group
    keeps the same rewards, so the same statistics and advantages, but a sample's reward no
    longer says anything about it: what training on them changes is the optimizer's drift.

    Args:
        rewards: ``(B,)`` rewards; NaN means invalid.
        groups: ``(B,)`` group keys.
        rng: the permutations' generator (seed it from the run's seed and step, the same on every process).
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if len(groups) != len(r):
        raise ValueError(f"{len(r)} rewards but {len(groups)} group keys")
    out = r.copy()
    keys = list(dict.fromkeys(groups))  # first-seen order: the same permutations for the same groups
    for key in keys:
        members = np.array([i for i, g in enumerate(groups) if g == key and np.isfinite(r[i])], dtype=np.int64)
        out[members] = r[members[rng.permutation(len(members))]]
    return out


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """PPO's clipped surrogate loss, elementwise: ``max(-A * r, -A * clip(r, 1 - low, 1 + high))``
    with ``r = exp(log_ratio)`` (= ``-min(r A, clip(r) A)``). The core of both GRPO losses:
    per denoising step in Flow-GRPO (:func:`cac_align.rl.sde.flow_grpo_loss`), per generated
    token in CaC's stage 3 (:func:`cac_align.jobs.train_cac_grpo.grpo_loss`); ``advantages``
    broadcasts against ``log_ratio``."""
    import torch

    ratio = torch.exp(log_ratio)
    return torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high))


def nan_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std of the finite entries (NaN, NaN when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return (float(finite.mean()), float(finite.std())) if len(finite) else (math.nan, math.nan)
