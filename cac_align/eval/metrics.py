"""Small metric functions shared by evaluation jobs and training loops (no job lives here)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["auroc", "nan_to_none"]


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


def nan_to_none(value: Any) -> Any:
    """``value`` with every NaN float (in nested dicts and lists) replaced by None, for JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value
