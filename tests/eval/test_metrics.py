"""Shared metric functions, against hand-worked values."""

from __future__ import annotations

import math

import numpy as np

import pytest

from cac_align.eval.metrics import auroc, bootstrap_interval


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


def test_bootstrap_interval_of_an_accuracy_matches_the_stratified_binomial_error():
    """Normal: 90 of 100 right; abnormal: 210 of 300 right. Resampled within each class, the
    accuracy's variance is sum_c (n_c / n)^2 p_c (1 - p_c) / n_c = 0.0625 * 0.09 / 100 +
    0.5625 * 0.21 / 300 = 0.00045, SE 0.02121: a 95% interval is about 0.75 +- 1.96 * 0.02121."""
    correct = np.array([1.0] * 90 + [0.0] * 10 + [1.0] * 210 + [0.0] * 90)
    classes = ["normal"] * 100 + ["abnormal"] * 300
    low, high = bootstrap_interval(lambda i: float(correct[i].mean()), classes, resamples=4000, seed=1)
    assert (high - low) / 2 == pytest.approx(1.96 * 0.00045**0.5, rel=0.1)
    assert (low + high) / 2 == pytest.approx(0.75, abs=0.01)
    # the same seed gives the same interval; another seed a slightly different one
    assert bootstrap_interval(lambda i: float(correct[i].mean()), classes, resamples=500, seed=3) == bootstrap_interval(
        lambda i: float(correct[i].mean()), classes, resamples=500, seed=3
    )


def test_bootstrap_interval_of_an_auroc_matches_delong():
    """The stratified bootstrap's spread of an AUROC against DeLong's variance, computed here
    from the placement values: Var = var(V10) / m + var(V01) / n, where V10(x_i) is the share of
    negatives below positive x_i (ties 1/2) and V01(y_j) the share of positives above y_j."""
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.8, 1.0, 60), rng.normal(0.0, 1.0, 140)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    delong_se = (psi.mean(1).var(ddof=1) / len(pos) + psi.mean(0).var(ddof=1) / len(neg)) ** 0.5
    scores = np.concatenate([pos, neg])
    positive = np.array([True] * len(pos) + [False] * len(neg))
    low, high = bootstrap_interval(lambda i: auroc(scores[i], positive[i]), positive, resamples=2000, seed=0)
    assert (high - low) / 2 == pytest.approx(1.96 * delong_se, rel=0.15)
    assert auroc(scores, positive) == pytest.approx(psi.mean()) and low < psi.mean() < high


def test_bootstrap_interval_edges():
    # perfect separation stays perfect in every stratified resample (both classes always present)
    scores, positive = np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False])
    assert bootstrap_interval(lambda i: auroc(scores[i], positive[i]), positive, resamples=200) == (1.0, 1.0)
    # no resamples or no items: undefined, not a crash; a statistic that is always NaN too
    assert all(math.isnan(v) for v in bootstrap_interval(lambda i: 1.0, positive, resamples=0))
    assert all(math.isnan(v) for v in bootstrap_interval(lambda i: 1.0, [], resamples=10))
    assert all(math.isnan(v) for v in bootstrap_interval(lambda i: float("nan"), positive, resamples=10))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(lambda i: 1.0, positive, level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval(lambda i: 1.0, positive, resamples=-1)
