"""Normalizers: hand-worked values, invalid scores left out, groups of one, running state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cac_align.rewards.normalize import (
    BatchNormalizer,
    FixedNormalizer,
    GroupNormalizer,
    RunningNormalizer,
    build_normalizer,
    fill_invalid,
)


def test_fixed_maps_the_known_range_and_clips():
    # UR v1 scale 1..4: (x - 1) / 3
    norm = FixedNormalizer(low=1, high=4)
    assert norm([1.0, 2.5, 4.0, 5.0, 0.5]).tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0])
    assert FixedNormalizer(low=1, high=4, clip=False)([5.0])[0] == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="low < high"):
        FixedNormalizer(low=4, high=4)


def test_batch_zscore_population_std():
    # mean 2.5, population std sqrt(((1.5)^2 + (0.5)^2) * 2 / 4) = sqrt(1.25) = 1.1180340
    out = BatchNormalizer()([1.0, 2.0, 3.0, 4.0])
    assert out.tolist() == pytest.approx([-1.3416408, -0.4472136, 0.4472136, 1.3416408], rel=1e-6)


def test_invalid_and_non_finite_scores_are_left_out_and_come_back_nan():
    # Only 1 and 3 count: mean 2, std 1 -> -1, +1; the invalid 100 and the inf never enter the statistics.
    out = BatchNormalizer()([1.0, 100.0, 3.0, math.inf], valid=[True, False, True, True])
    assert out[0] == pytest.approx(-1.0) and out[2] == pytest.approx(1.0)
    assert math.isnan(out[1]) and math.isnan(out[3])
    assert math.isnan(FixedNormalizer()([math.nan])[0])


def test_group_zscore_and_groups_of_one():
    # group a: {1, 2}: mean 1.5, std 0.5 -> -1, +1; group b: {3, 5}: mean 4, std 1 -> -1, +1;
    # group c has one valid member (the other is invalid): std 0 -> exactly 0.
    scores = [1.0, 2.0, 3.0, 5.0, 7.0, 9.0]
    groups = ["a", "a", "b", "b", "c", "c"]
    out = GroupNormalizer()(scores, [True, True, True, True, True, False], groups)
    assert out[:4].tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0])
    assert out[4] == 0.0 and math.isnan(out[5])
    # All-equal group: 0 for everyone, not a division by zero.
    assert GroupNormalizer()([2.0, 2.0], None, ["g", "g"]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="group key per sample"):
        GroupNormalizer()([1.0, 2.0])
    with pytest.raises(ValueError, match="2 scores but 3 group keys"):
        GroupNormalizer()([1.0, 2.0], None, ["a", "b", "c"])


def test_running_tracks_all_calls_and_its_state_round_trips():
    norm = RunningNormalizer()
    # call 1: {1, 3}: mean 2, std 1 -> -1, +1
    assert norm([1.0, 3.0]).tolist() == pytest.approx([-1.0, 1.0])
    # call 2: {1, 3, 5}: mean 3, var 8/3 -> (5 - 3) / sqrt(8/3) = 1.2247449; the invalid 50 is ignored
    out = norm([5.0, 50.0], valid=[True, False])
    assert out[0] == pytest.approx(1.2247449, rel=1e-6) and math.isnan(out[1])
    assert norm.state_dict() == pytest.approx({"count": 3, "mean": 3.0, "m2": 8.0})
    # Resume in a fresh normalizer: {1, 3, 5, 7}: mean 4, var 5 -> (7 - 4) / sqrt(5) = 1.3416408
    resumed = RunningNormalizer()
    resumed.load_state_dict(norm.state_dict())
    assert resumed([7.0])[0] == pytest.approx(1.3416408, rel=1e-6)
    assert RunningNormalizer()([4.0]).tolist() == [0.0]  # one score seen: std 0 -> 0
    with pytest.raises(ValueError, match="lacks"):
        RunningNormalizer().load_state_dict({"count": 1})


def test_build_from_a_recipe_section():
    assert build_normalizer({"name": "fixed", "low": 1, "high": 5}) == FixedNormalizer(low=1.0, high=5.0)
    with pytest.raises(ValueError, match="unknown normalizer 'zscore'"):
        build_normalizer({"name": "zscore"})
    with pytest.raises(ValueError, match="unknown key 'hgih'"):
        build_normalizer({"name": "fixed", "hgih": 3})
    # an instance passes when it has the whole contract; the stateless ones keep nothing
    running = RunningNormalizer()
    assert build_normalizer(running) is running
    assert FixedNormalizer().state_dict() == {}
    with pytest.raises(ValueError, match="lacks state_dict / load_state_dict"):
        build_normalizer(lambda scores, valid=None, groups=None: scores)


def test_fill_invalid_uses_the_group_mean():
    # group p: valid {0.2, 0.4} -> the invalid member gets 0.3; group q has no valid member -> stays NaN.
    values, filled = fill_invalid(np.array([0.2, np.nan, 0.4, 9.0]), np.array([True, False, True, False]), ["p", "p", "p", "q"])
    assert values[:3].tolist() == pytest.approx([0.2, 0.3, 0.4]) and math.isnan(values[3])
    assert filled.tolist() == [False, True, False, False]
