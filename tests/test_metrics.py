"""Shared metric functions, against hand-worked values."""

from __future__ import annotations

import math

import numpy as np

from cac_align.eval.metrics import auroc


def test_auroc_hand_worked():
    # positives 0.9, 0.5; negatives 0.5, 0.1. Pairs: 0.9>0.5 (1), 0.9>0.1 (1), 0.5=0.5 (1/2),
    # 0.5>0.1 (1) -> 3.5 / 4 = 0.875
    assert auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == 0.875
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # all tied
    assert math.isnan(auroc([0.3, 0.4], [True, True]))  # one class only: undefined


def test_auroc_equals_the_pairwise_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300) / 4.0  # many ties
    labels = rng.random(300) < 0.3
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[labels] for n in scores[~labels]]
    assert abs(auroc(scores, labels) - float(np.mean(pairs))) < 1e-12
