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

Several reward components can instead be normalized one by one before they are summed
(:func:`normalize_then_sum`, GDPO as trl defines it), so that one component's scale cannot
drown the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["GroupAdvantages", "clipped_surrogate", "group_advantages", "nan_mean_std", "normalize_then_sum", "shuffle_within_groups"]


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


def normalize_then_sum(
    columns: Mapping[str, Sequence[float] | np.ndarray],
    groups: Sequence[Hashable],
    *,
    weights: Mapping[str, float] | None = None,
    valid: Mapping[str, Sequence[bool] | np.ndarray] | None = None,
    eps: float = 1e-4,
    clip: float | None = None,
    zero_std_tol: float = 1e-8,
) -> GroupAdvantages:
    """GDPO's advantages: each reward component z-scored within its group, the weighted sum of
    those z-scores z-scored over the whole batch.

    The numbers of trl 1.16.0's ``GRPOTrainer`` with ``multi_objective_aggregation=
    "normalize_then_sum"`` (``trl/trainer/grpo_trainer.py``, ``_generate_and_score_completions``,
    and ``nanstd`` in ``trl/trainer/utils.py``), written in our own words::

        z_ik = (r_ik - mean_g(k)) / (std_g(k) + eps)      per component k, within i's group g
        s_i  = sum_k w_k * z_ik                           over the k where z_ik is defined
        A_i  = (s_i - mean(s)) / (std(s) + eps)           over every scorable sample of the batch

    Both standard deviations are sample ones (Bessel's correction, ``ddof=1``), as trl's
    ``nanstd``; ``eps = 1e-4`` is trl's constant. Invalid scores (NaN, or ``valid`` False) take
    no part in any statistic, as trl's NaN (a reward function's ``None``):

    - ``z_ik`` is undefined (left out of ``s_i``, which nansum makes a 0 term) where ``r_ik`` is
      invalid or the group has fewer than two valid ``r_k`` (trl's nanstd is NaN there);
    - a sample with no valid component is unscorable: advantage 0, ``trainable=False``, and left
      out of ``mean(s)`` and ``std(s)`` (trl sets its reward to NaN, then its advantage to 0);
    - fewer than two scorable samples in the batch: every advantage is 0 (trl: NaN, then 0).

    Differences from trl, none of which changes a number beyond float rounding: trl computes in
    float32 (this in float64, returned as float32); trl groups consecutive blocks of
    ``num_generations`` samples (this groups by key, of any sizes); and a group whose ``s`` does not
    vary (every component equal within it, or components that cancel) is marked
    ``trainable=False`` with advantage exactly 0. Its members' ``s`` is 0 and ``mean(s)`` is 0 (each
    component's z-scores sum to 0 over its valid members), so trl's advantage there is 0 up to
    float32 rounding; it teaches nothing, and the trainer drops it as :func:`group_advantages`'
    zero-variance groups.

    ``combine`` with ``normalize: group`` on each component is not this: it uses the population
    std (``ddof=0``), averages with weights divided by their sum, drops a sample with any invalid
    component, and its sum then goes through :func:`group_advantages` (a per-group, not a batch,
    z-score).

    Args:
        columns: ``{component: (B,) raw scores}``, NaN where invalid; at least one component.
        groups: ``(B,)`` group keys (the prompt, or its index).
        weights: ``{component: weight}``, finite; missing components weigh 1 (trl's
            ``reward_weights``: not divided by their sum, so their scale matters only through eps).
        valid: optional ``{component: (B,) bool}``, combined with ``isfinite`` of its column.
        eps: added to both standard deviations (trl: 1e-4).
        clip: clip the advantages to ``[-clip, clip]`` (trl: none; Flow-GRPO's ``adv_clip_max``: 5).
        zero_std_tol: a group whose ``s`` has a population std at or below this has no signal.

    Returns:
        :class:`GroupAdvantages` (``zero_std_fraction``: the fraction of groups without signal).
    """
    names = list(columns)
    if not names:
        raise ValueError("normalize_then_sum needs at least one reward component in `columns`")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(names)) + sorted(set(valid or {}) - set(names))
    if unknown:
        raise ValueError(f"weights/valid name components {unknown} that are not among the columns {names}")
    w = np.array([float(weights.get(name, 1.0)) for name in names])
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite, got {dict(zip(names, w.tolist()))}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    x = np.stack([np.asarray(columns[name], dtype=np.float64).reshape(-1) for name in names], axis=1)  # (B, K)
    n = x.shape[0]
    if len(groups) != n:
        raise ValueError(f"{n} rewards per component but {len(groups)} group keys")
    ok = np.isfinite(x)
    for k, name in enumerate(names):
        if valid is not None and name in valid:
            flags = np.asarray(valid[name], dtype=bool).reshape(-1)
            if flags.shape != (n,):
                raise ValueError(f"valid[{name!r}] has {flags.size} flags for {n} samples")
            ok[:, k] &= flags
    keys = list(dict.fromkeys(groups))
    member_of = {key: np.array([g == key for g in groups]) for key in keys}
    # 1. each component z-scored within each group (sample std), undefined below two valid values
    z = np.full_like(x, np.nan)
    for members in member_of.values():
        for k in range(len(names)):
            rows = members & ok[:, k]
            if rows.sum() < 2:
                continue
            values = x[rows, k]
            z[rows, k] = (values - values.mean()) / (values.std(ddof=1) + eps)
    # 2. the weighted sum over the defined z-scores; unscorable samples (no valid component) are NaN
    scorable = ok.any(axis=1)
    s = np.where(np.isfinite(z), z * w, 0.0).sum(axis=1)
    s[~scorable] = np.nan
    # 3. the batch z-score over the scorable samples
    advantages = np.zeros(n)
    if scorable.sum() >= 2:
        values = s[scorable]
        advantages[scorable] = (values - values.mean()) / (values.std(ddof=1) + eps)
    # 4. groups without signal in s teach nothing (module docstring)
    trainable = np.zeros(n, dtype=bool)
    silent = 0
    for members in member_of.values():
        rows = members & scorable
        if rows.sum() < 2 or float(s[rows].std()) <= zero_std_tol:
            silent += 1
            continue
        trainable[rows] = True
    advantages[~trainable] = 0.0
    if clip is not None:
        advantages = np.clip(advantages, -clip, clip)
    return GroupAdvantages(
        advantages=advantages.astype(np.float32),
        trainable=trainable,
        zero_std_fraction=silent / len(keys) if keys else 0.0,
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
