"""GDPO's per-component normalization (cac_align.rl.advantages.normalize_then_sum) against numbers
worked out by hand. The same function against trl's own GRPOTrainer: tests/conformance/test_trl_gdpo.py."""

import math

import numpy as np
import pytest

from cac_align.rl.advantages import group_advantages, normalize_then_sum

NAN = float("nan")
EPS = 1e-4


def test_two_groups_two_components_by_hand():
    # group 0 (rows 0, 1): a = [1, 3]: mean 2, sample std sqrt((1 + 1) / 1) = sqrt(2) -> z_a = -+1 / (sqrt(2) + 1e-4) = -+c
    #                      b = [0, 0]: std 0 -> z_b = 0 / 1e-4 = 0
    # group 1 (rows 2, 3): a = [0, 0] -> 0;  b = [2, 4] -> -+c
    # s = [-c, c, -c, c], c = 0.70705678; batch mean 0, sample std sqrt(4 c^2 / 3) = 2c / sqrt(3)
    # A = +-c / (2c / sqrt(3) + 1e-4) = +-0.86591934
    c = 1 / (math.sqrt(2) + EPS)
    a = c / (2 * c / math.sqrt(3) + EPS)
    assert a == pytest.approx(0.86591934, abs=1e-8)
    out = normalize_then_sum({"a": [1, 3, 0, 0], "b": [0, 0, 2, 4]}, [0, 0, 1, 1])
    np.testing.assert_allclose(out.advantages, [-a, a, -a, a], rtol=1e-6)
    assert out.advantages.dtype == np.float32
    assert out.trainable.all() and out.zero_std_fraction == 0.0 and out.num_groups == 2


def test_one_components_scale_cannot_drown_the_other():
    # one group of four: a on a 0-100 scale, b on 0-1
    #   a = [0, 100, 0, 100]: mean 50, sample std sqrt(4 * 2500 / 3) = 57.735 -> z_a = -+50 / 57.7351 = -+0.866024
    #   b = [0, 0, 1, 1]:     mean 0.5, sample std sqrt(4 * 0.25 / 3) = 0.57735 -> z_b = -+0.5 / 0.57745 = -+0.865875
    # s = [-za - zb, za - zb, -za + zb, za + zb] = [-1.731899, 0.000148, -0.000148, 1.731899]
    # sample 1 (best on a, worst on b) and sample 2 (the reverse) tie near 0: each component counts
    # the same. Summing first (a + b) would rank sample 1 with sample 3 (100 vs 101).
    za = 50 / (math.sqrt(10000 / 3) + EPS)
    zb = 0.5 / (math.sqrt(1 / 3) + EPS)
    s = np.array([-za - zb, za - zb, -za + zb, za + zb])
    sd = math.sqrt((s**2).sum() / 3)  # mean 0
    out = normalize_then_sum({"a": [0, 100, 0, 100], "b": [0, 0, 1, 1]}, ["p"] * 4)
    np.testing.assert_allclose(out.advantages, s / (sd + EPS), rtol=1e-6, atol=1e-7)
    assert out.advantages[0] == pytest.approx(-1.2246583, abs=1e-6) and abs(out.advantages[1]) < 2e-4


def test_weights_are_trls_reward_weights():
    # weight 3 on b: s = [-za - 3 zb, za - 3 zb, -za + 3 zb, za + 3 zb]; not divided by the weights' sum
    za = 50 / (math.sqrt(10000 / 3) + EPS)
    zb = 0.5 / (math.sqrt(1 / 3) + EPS)
    s = np.array([-za - 3 * zb, za - 3 * zb, -za + 3 * zb, za + 3 * zb])
    sd = math.sqrt((s**2).sum() / 3)
    out = normalize_then_sum({"a": [0, 100, 0, 100], "b": [0, 0, 1, 1]}, ["p"] * 4, weights={"b": 3.0})
    np.testing.assert_allclose(out.advantages, s / (sd + EPS), rtol=1e-6)
    assert out.advantages[2] > 0 > out.advantages[1]  # b now outweighs a
    with pytest.raises(ValueError, match="not among the columns"):
        normalize_then_sum({"a": [0, 1]}, [0, 0], weights={"c": 1.0})
    with pytest.raises(ValueError, match="finite"):
        normalize_then_sum({"a": [0, 1]}, [0, 0], weights={"a": NAN})


def test_invalid_scores_as_trl_treats_none():
    # group 0 (rows 0-2): a = [1, 2, NaN]: over rows 0, 1: mean 1.5, std sqrt(0.5) -> z_a = -+0.5 / (0.70711 + 1e-4) = -+p
    #                     b = [NaN, 4, 6]: over rows 1, 2: mean 5, std sqrt(2) -> z_b = -+1 / (1.41421 + 1e-4) = -+q
    # group 1 (rows 3-5): a = [NaN, 0, 2] -> rows 4, 5: -+q;  b all NaN -> no term
    # row 3 has no valid component: unscorable -> advantage 0, not trainable, out of the batch statistics
    # s = [-p, p - q, q, NaN, -q, q]: mean 0 (each component's z sums to 0), sample std over 5: sqrt((p^2 + (p-q)^2 + 3 q^2) / 4)
    p = 0.5 / (math.sqrt(0.5) + EPS)
    q = 1 / (math.sqrt(2) + EPS)
    s = np.array([-p, p - q, q, -q, q])
    sd = math.sqrt((s**2).sum() / 4)
    out = normalize_then_sum({"a": [1, 2, NAN, NAN, 0, 2], "b": [NAN, 4, 6, NAN, NAN, NAN]}, [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(out.advantages[[0, 1, 2, 4, 5]], s / (sd + EPS), rtol=1e-5, atol=1e-7)
    assert out.advantages[0] == pytest.approx(-0.99980557, abs=1e-6)
    assert out.advantages[3] == 0.0
    assert out.trainable.tolist() == [True, True, True, False, True, True]
    # `valid` False is the same as NaN
    masked = normalize_then_sum({"a": [1, 2, 9, 9, 0, 2], "b": [9, 4, 6, 9, 9, 9]}, [0, 0, 0, 1, 1, 1],
                                valid={"a": [1, 1, 0, 0, 1, 1], "b": [0, 1, 1, 0, 0, 0]})
    np.testing.assert_array_equal(masked.advantages, out.advantages)


def test_a_component_with_one_valid_score_in_its_group_adds_nothing():
    # group 0: a = [1, 3] -> -+c; b = [5, NaN]: one valid value, sample std undefined (trl: NaN) -> no term
    # group 1: a = [0, 2] -> -+c; b = [NaN, NaN]
    # s = [-c, c, -c, c] -> A = -+0.86591934 as in the first test: b's lone 5 moved nothing
    out = normalize_then_sum({"a": [1, 3, 0, 2], "b": [5, NAN, NAN, NAN]}, [0, 0, 1, 1])
    np.testing.assert_allclose(out.advantages, [-0.86591934, 0.86591934, -0.86591934, 0.86591934], rtol=1e-6)


def test_groups_without_signal():
    # group 0: every component equal -> s = [0, 0]: no signal, advantage 0, not trainable
    # group 1: a = [1, 3] -> s = [-c, c]; batch over the 4 scorable rows: s = [0, 0, -c, c], mean 0,
    #          sample std sqrt(2 c^2 / 3) -> A = +-c / (c sqrt(2/3) + 1e-4)
    # group 2: one sample: no signal
    # group 3: a and b cancel: a = [0, 1], b = [1, 0] -> s = [-c + c, c - c] = [0, 0]: no signal
    c = 1 / (math.sqrt(2) + EPS)  # [1, 3]: -+1 / (sample std sqrt(2) + 1e-4) = -+0.70705678
    c_half = 0.5 / (math.sqrt(0.5) + EPS)  # [0, 1]: -+0.5 / (sample std sqrt(0.5) + 1e-4) = -+0.70700680
    out = normalize_then_sum({"a": [2, 2, 1, 3, 7, 0, 1], "b": [4, 4, 0, 0, 1, 1, 0]}, [0, 0, 1, 1, 2, 3, 3])
    # scorable s: [0, 0, -c, c, 0, 0, 0] (group 3: -c_half + c_half, c_half - c_half); mean 0; sample std over 7
    sd = math.sqrt(2 * c**2 / 6)
    expected = np.array([0, 0, -c, c, 0, 0, 0]) / (sd + EPS)
    np.testing.assert_allclose(out.advantages, expected, rtol=1e-6)
    assert out.trainable.tolist() == [False, False, True, True, False, False, False]
    assert out.zero_std_fraction == 0.75 and out.num_groups == 4
    assert c_half == pytest.approx(0.70700680, abs=1e-8)


def test_fewer_than_two_scorable_samples_and_clip():
    out = normalize_then_sum({"a": [1.0, NAN]}, [0, 0])
    assert out.advantages.tolist() == [0.0, 0.0] and not out.trainable.any() and out.zero_std_fraction == 1.0
    clipped = normalize_then_sum({"a": [1, 3, 0, 0], "b": [0, 0, 2, 4]}, [0, 0, 1, 1], clip=0.5)
    assert clipped.advantages.tolist() == [-0.5, 0.5, -0.5, 0.5]
    with pytest.raises(ValueError, match="at least one reward component"):
        normalize_then_sum({}, [])
    with pytest.raises(ValueError, match="group keys"):
        normalize_then_sum({"a": [1, 2]}, [0])


def test_differs_from_group_advantages_on_one_component():
    # one component, one group of 3: normalize_then_sum z-scores twice with the sample std,
    # group_advantages once with the population std; the two differ (module docstring)
    ours = normalize_then_sum({"a": [0.0, 1.0, 5.0]}, [0, 0, 0]).advantages
    grpo = group_advantages([0.0, 1.0, 5.0], [0, 0, 0]).advantages
    # population std of [0, 1, 5] = sqrt(((-2)^2 + (-1)^2 + 3^2) / 3) = sqrt(14/3) = 2.1602 -> grpo = [-0.92578, -0.46289, 1.38868]
    np.testing.assert_allclose(grpo, np.array([-2.0, -1.0, 3.0]) / (math.sqrt(14 / 3) + EPS), rtol=1e-6)
    # sample std sqrt(7) = 2.6458: z = [-2, -1, 3] / 2.64585; then again over the batch: s std = 2.6458 / 2.64585 = 0.99996
    z = np.array([-2.0, -1.0, 3.0]) / (math.sqrt(7) + EPS)
    np.testing.assert_allclose(ours, z / (math.sqrt((z**2).sum() / 2) + EPS), rtol=1e-6)
    assert not np.allclose(ours, grpo, rtol=1e-3)
