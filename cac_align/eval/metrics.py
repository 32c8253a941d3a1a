"""Small metric functions shared by evaluation jobs and training loops (no job lives here)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["auroc", "bootstrap_interval", "nan_to_none"]


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over n_pos * n_neg pairs).

    Args:
        scores: (N,) float, higher = more positive. A CaC reward is P(normal)/(P(normal) +
            P(abnormal)), so "normal" is the positive class of its AUROC.
        positive: (N,) bool labels.

    Returns:
        The AUROC in [0, 1]; NaN when either class is absent (undefined).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in shape: {s.shape} vs {y.shape}")
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    # Rank-sum form: average ranks handle ties exactly (a tie is half a win).
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[start]:
            end += 1
        ranks[start : end + 1] = (start + end) / 2 + 1  # 1-based average rank of the tie block
        start = end + 1
    rank_of = np.empty(len(values))
    rank_of[order] = ranks
    u = rank_of[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    strata: Sequence[Any],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic over N items.

    Each resample draws, within every stratum (a class label), as many items as the stratum
    has, with replacement, and evaluates ``statistic`` on the drawn indices; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those values. Stratifying keeps both
    classes present in their observed numbers, so an AUROC is defined in every resample (pROC's
    default); a resample whose statistic is NaN is left out.

    Args:
        statistic: maps an (N,) int index array (items may repeat) to a float.
        strata: (N,) labels; items are resampled within each distinct label.
        resamples: number of resamples; 0 gives (NaN, NaN).
        level: coverage of the interval, in (0, 1).
        seed: the generator's seed (the same inputs give the same interval).

    Returns:
        (low, high); (NaN, NaN) when there are no items, no resamples or every value is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    labels = np.asarray([str(s) for s in strata])
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    if not resamples or not len(labels):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(np.concatenate([rng.choice(g, size=len(g)) for g in groups])) for _ in range(resamples)], dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def nan_to_none(value: Any) -> Any:
    """``value`` with every NaN float (in nested dicts and lists) replaced by None, for JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value
