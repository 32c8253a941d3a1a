"""GARDO's gate, adaptive reference and diversity amplification (cac_align.rl.gardo) against numbers
worked out by hand."""

import math
import re

import numpy as np
import pytest

from cac_align.rl.gardo import (adapt_gate_fraction, diversity_advantages, diversity_multipliers, gate_uncertain, nearest_neighbour_distance,
                                reference_reset_due, reward_uncertainty, win_rates)

NAN = float("nan")


def test_win_rates_by_hand():
    # [3, 1, 2]: 3 beats both (2/2), 1 beats none (0/2), 2 beats one (1/2)
    assert win_rates([3, 1, 2]).tolist() == [1.0, 0.0, 0.5]
    # ties count half: [1, 1, 2] -> (0 + 0.5) / 2 = 0.25 twice, 2 / 2 = 1
    assert win_rates([1, 1, 2]).tolist() == [0.25, 0.25, 1.0]
    # invalid values take no part: [1, NaN, 3] -> [0, NaN, 1]; valid=False the same
    np.testing.assert_array_equal(win_rates([1, NAN, 3]), [0.0, NAN, 1.0])
    np.testing.assert_array_equal(win_rates([1, 9, 3], [True, False, True]), [0.0, NAN, 1.0])
    assert win_rates([5, 5]).tolist() == [0.5, 0.5]
    assert np.isnan(win_rates([5, NAN])).all()


def test_uncertainty_over_the_batch_by_hand():
    # proxy [4, 3, 2, 1] -> w = [1, 2/3, 1/3, 0]; judge a [1, 2, 3, 4] -> [0, 1/3, 2/3, 1]; judge b = proxy -> [1, 2/3, 1/3, 0]
    # mean judge = [1/2, 1/2, 1/2, 1/2] -> U = w_proxy - mean = [1/2, 1/6, -1/6, -1/2]
    proxy = [4, 3, 2, 1]
    judges = {"a": [1, 2, 3, 4], "b": [4, 3, 2, 1]}
    np.testing.assert_allclose(reward_uncertainty(proxy, judges), [0.5, 1 / 6, -1 / 6, -0.5])
    np.testing.assert_allclose(reward_uncertainty(proxy, judges, direction="under"), [-0.5, -1 / 6, 1 / 6, 0.5])
    np.testing.assert_allclose(reward_uncertainty(proxy, judges, direction="both"), [0.5, 1 / 6, 1 / 6, 0.5])
    # the proxy and its judge agreeing everywhere: U = 0 everywhere
    assert reward_uncertainty(proxy, {"b": proxy}).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_a_failed_judge_and_an_invalid_proxy():
    # judge a failed on sample 0: its win rates over samples 1-3 ([2, 3, 4] -> [0, 1/2, 1]); sample 0 keeps judge b alone
    # sample 0: 1 - 1 = 0; sample 1: 2/3 - (0 + 2/3)/2 = 1/3; sample 2: 1/3 - (1/2 + 1/3)/2 = -1/12; sample 3: 0 - (1 + 0)/2 = -1/2
    u = reward_uncertainty([4, 3, 2, 1], {"a": [NAN, 2, 3, 4], "b": [4, 3, 2, 1]})
    np.testing.assert_allclose(u, [0.0, 1 / 3, -1 / 12, -0.5])
    # no judge scored sample 0: NaN (unjudged)
    u = reward_uncertainty([4, 3, 2, 1], {"a": [NAN, 2, 3, 4]})
    assert np.isnan(u[0]) and np.allclose(u[1:], [2 / 3 - 0, 1 / 3 - 1 / 2, 0 - 1])
    # the proxy invalid on sample 3: NaN there, and sample 3 takes no part in anyone's win rates:
    # proxy [4, 3, 2] -> [1, 1/2, 0]; judge [1, 2, 3] -> [0, 1/2, 1] -> U = [1, 0, -1, NaN]
    u = reward_uncertainty([4, 3, 2, NAN], {"a": [1, 2, 3, 100]})
    np.testing.assert_array_equal(u, [1.0, 0.0, -1.0, NAN])
    np.testing.assert_array_equal(reward_uncertainty([4, 3, 2, 7], {"a": [1, 2, 3, 100]}, valid=[1, 1, 1, 0]), u)


def test_uncertainty_within_groups():
    # groups [0, 0, 1, 1]: in each, the proxy's better sample is the judge's worse: U = [1, -1, 1, -1]
    # over the batch the same scores give [1, 1/3, -1/3, -1] (proxy [1, 2/3, 1/3, 0] vs judge [0, 1/3, 2/3, 1])
    proxy, judge = [4, 3, 2, 1], {"a": [1, 2, 3, 4]}
    assert reward_uncertainty(proxy, judge, [0, 0, 1, 1], scope="group").tolist() == [1.0, -1.0, 1.0, -1.0]
    np.testing.assert_allclose(reward_uncertainty(proxy, judge, [0, 0, 1, 1]), [1, 1 / 3, -1 / 3, -1])
    with pytest.raises(ValueError, match="group keys"):
        reward_uncertainty(proxy, judge, scope="group")
    with pytest.raises(ValueError, match="direction"):
        reward_uncertainty(proxy, judge, direction="up")
    with pytest.raises(ValueError, match="at least one auxiliary"):
        reward_uncertainty(proxy, {})
    with pytest.raises(ValueError, match="auxiliary 'a' has 3 values for 4 samples"):
        reward_uncertainty(proxy, {"a": [1, 2, 3]})


def test_gate_top_fraction_as_gardo():
    # eleven non-negative uncertainties 0, 0.1, ..., 1.0 and two negative ones
    u = np.concatenate([np.arange(11) / 10, [-0.2, -0.4]])
    trained = np.ones(13, dtype=bool)
    # fraction 0.1: the 90th percentile of the non-negative pool is its element 0.9 * 10 = 9: 0.9; strictly above: 1.0 alone
    gate = gate_uncertain(u, trained, fraction=0.1)
    assert gate.cutoff == pytest.approx(0.9) and gate.weights.tolist() == [0.0] * 10 + [1.0, 0.0, 0.0]
    assert gate.gated_fraction == 1 / 13 and gate.scale == 13.0 and gate.unjudged == 0 and gate.weights.dtype == np.float32
    # fraction 0.2: the 80th percentile 0.8 -> 0.9 and 1.0; gated fraction 2/13, scale 6.5
    gate = gate_uncertain(u, trained, fraction=0.2)
    assert np.flatnonzero(gate.weights).tolist() == [9, 10] and gate.scale == 6.5
    # linear interpolation between pool values: pool [1/6, 1/2], 90th percentile 1/6 + 0.9 (1/2 - 1/6) = 0.4667
    gate = gate_uncertain([0.5, 1 / 6, -1 / 6, -0.5], [True] * 4, fraction=0.1)
    assert gate.cutoff == pytest.approx(1 / 6 + 0.3) and gate.weights.tolist() == [1.0, 0.0, 0.0, 0.0]


def test_gate_threshold_agreement_and_unjudged():
    u = np.concatenate([np.arange(11) / 10, [-0.2, -0.4]])
    gate = gate_uncertain(u, np.ones(13, dtype=bool), fraction=None, threshold=0.45)
    assert np.flatnonzero(gate.weights).tolist() == [5, 6, 7, 8, 9, 10]  # 0.5 ... 1.0
    # full agreement: every U = 0, the cutoff is 0, nothing is strictly above it
    gate = gate_uncertain(np.zeros(6), np.ones(6, dtype=bool))
    assert gate.weights.sum() == 0 and gate.gated_fraction == 0.0 and gate.scale == 0.0
    # no non-negative uncertainty: nothing to pool, nothing gated
    assert gate_uncertain([-0.1, -0.3], [True, True]).cutoff == math.inf
    # a trained sample no judge scored is regularized; an untrained sample never is
    gate = gate_uncertain([NAN, 0.5, 0.0, 0.9, NAN], [True, True, True, False, False], fraction=0.1)
    # pool over trained & known & >= 0: [0.5, 0.0] -> 90th percentile 0.45 -> sample 1; plus unjudged sample 0
    assert gate.weights.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] and gate.unjudged == 1 and gate.gated_fraction == 2 / 3


def test_gate_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        gate_uncertain([0.1], [True], fraction=None)
    with pytest.raises(ValueError, match="exactly one"):
        gate_uncertain([0.1], [True], fraction=0.1, threshold=0.2)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        gate_uncertain([0.1], [True], fraction=1.5)
    with pytest.raises(ValueError, match="trained flags"):
        gate_uncertain([0.1, 0.2], [True])


def test_adapt_gate_fraction_as_gardos_risk_compensator():
    # this step's mean non-negative uncertainty: [0.25, 0.5, -0.3] -> 0.375
    u = [0.25, 0.5, -0.3]
    assert adapt_gate_fraction(0.05, [], u) == (0.1, [0.375])  # no history: the base, 0.1
    fraction, history = adapt_gate_fraction(0.1, [0.1, 0.2], u)  # 0.375 above every past mean: * 1.1
    assert fraction == pytest.approx(0.11) and history == [0.1, 0.2, 0.375]
    assert adapt_gate_fraction(0.1, [0.4, 0.5], u)[0] == pytest.approx(0.09)  # below every one: * 0.9
    assert adapt_gate_fraction(0.1, [0.2, 0.5], u)[0] == 0.1  # between: kept
    assert adapt_gate_fraction(0.2, [0.1], u)[0] == 0.2  # 0.22 clipped to the 0.2 ceiling
    assert adapt_gate_fraction(0.02, [0.9], u)[0] == 0.02  # 0.018 clipped to the 0.02 floor
    # the history keeps its last 20 values
    fraction, history = adapt_gate_fraction(0.1, [float(i) for i in range(20)], u)
    assert len(history) == 20 and history[0] == 1.0 and history[-1] == 0.375
    # nothing non-negative: unchanged
    assert adapt_gate_fraction(0.13, [0.1], [-0.1, NAN]) == (0.13, [0.1])


def test_reference_reset():
    # every 3 steps: the reference set before step 0 is replaced before step 3
    assert not reference_reset_due(2, 0, reset_every=3)
    assert reference_reset_due(3, 0, reset_every=3)
    assert not reference_reset_due(4, 3, reset_every=3) and reference_reset_due(6, 3, reset_every=3)
    # a KL past its bound (strictly) after a step that trained
    assert reference_reset_due(1, 0, kl=5e-4, kl_bound=3e-4)
    assert not reference_reset_due(1, 0, kl=3e-4, kl_bound=3e-4)
    assert not reference_reset_due(1, 0, kl=None, kl_bound=3e-4) and not reference_reset_due(1, 0, kl=NAN, kl_bound=3e-4)
    assert not reference_reset_due(1, 0, kl=1.0)  # no bound: that rule is off
    # nothing trained since the last reset: never
    assert not reference_reset_due(0, 0, reset_every=1, kl=1.0, kl_bound=0.0)
    assert not reference_reset_due(5, 5, reset_every=1)
    with pytest.raises(ValueError, match="reset_every must be >= 1"):
        reference_reset_due(3, 0, reset_every=0)


def test_nearest_neighbour_distance():
    # f0 = [1, 0, 0], f1 = [1, 1, 0] (cos 1/sqrt(2) with f0), f2 = [0, 0, 3] (orthogonal to both; its scale does not count)
    # d01 = 1 - 0.70711 = 0.29289, d02 = d12 = 1 -> nearest: [0.29289, 0.29289, 1]
    f = np.array([[1.0, 0, 0], [1, 1, 0], [0, 0, 3]])
    np.testing.assert_allclose(nearest_neighbour_distance(f, [0, 0, 0]), [1 - 1 / math.sqrt(2)] * 2 + [1.0])
    # alone in its group, a non-finite or zero row, or invalid: NaN, and no neighbour to others
    d = nearest_neighbour_distance(np.array([[1.0, 0], [NAN, 1], [0, 0], [0, 1], [-1, 0]]), [0, 1, 1, 1, 2], [True, True, True, True, True])
    assert np.isnan(d[[0, 1, 2, 4]]).all() and np.isnan(d[3])  # group 1 has one usable member (row 3)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        nearest_neighbour_distance(np.zeros(3), [0, 0, 0])


def test_diversity_amplification_by_hand():
    # group 0: the features above, nearest distances d = [0.29289, 0.29289, 1], mean d = 0.52860
    # group 1: f3 has NaN (no part, multiplier 1), f4 and f5 orthogonal: d = 1 each, mean 1
    f = np.array([[1.0, 0, 0], [1, 1, 0], [0, 0, 3], [NAN, 0, 0], [1, 0, 0], [0, 1, 0]])
    groups = [0, 0, 0, 1, 1, 1]
    d = 1 - 1 / math.sqrt(2)
    mean_d = (2 * d + 1) / 3
    # rewards [1, 3, 2]: mean 2. Sample 0 below -> 1; sample 1 (3 >= 2) -> d / mean_d = 0.55409 (a near-duplicate, damped);
    # sample 2 (2 >= 2) -> 1 / mean_d = 1.89181. Group 1: rewards [0, 1, 2], mean 1: 1, 1/1, 1/1.
    rewards = [1, 3, 2, 0, 1, 2]
    m = diversity_multipliers(rewards, f, groups)
    np.testing.assert_allclose(m, [1.0, d / mean_d, 1 / mean_d, 1.0, 1.0, 1.0])
    assert m[1] == pytest.approx(0.55409, abs=1e-5) and m[2] == pytest.approx(1.89181, abs=1e-5)
    # GARDO's advantage (r - mean) * m, no std: [-1, 0.55409, 0, -1, 0, 1]
    out = diversity_advantages(rewards, f, groups)
    np.testing.assert_allclose(out.advantages, [-1.0, d / mean_d, 0.0, -1.0, 0.0, 1.0], rtol=1e-6)
    assert out.trainable.all() and out.zero_std_fraction == 0.0 and out.num_groups == 2
    # the diverse good sample is the amplified one: rewards [1, 2, 3] give sample 2 the advantage 1.89181
    assert diversity_advantages([1, 2, 3], f[:3], [0, 0, 0]).advantages[2] == pytest.approx(1 / mean_d, rel=1e-6)


def test_diversity_edge_cases():
    f = np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    # identical features in a group: mean d = 0 -> multipliers 1 (nothing to tell them apart)
    assert diversity_multipliers([0, 1], f[:2], [0, 0]).tolist() == [1.0, 1.0]
    # equal rewards: zero variance -> advantage 0, not trainable; an invalid reward: 0, not trainable, and no neighbour
    out = diversity_advantages([2, 2, NAN, 5], f, [0, 0, 1, 1])
    assert out.advantages.tolist() == [0.0, 0.0, 0.0, 0.0] and not out.trainable.any() and out.zero_std_fraction == 1.0
    # clip
    assert diversity_advantages([0, 10], np.array([[1.0, 0], [0, 1]]), [0, 0], clip=2.0).advantages.tolist() == [-2.0, 2.0]


# ---------------------------------------------------------------------------------------------
# The pieces the trainers wire (rewards/guards.py): the settings, the step's gate and its state, pooled latents
# ---------------------------------------------------------------------------------------------
def test_step_gate_by_hand_and_its_state():
    from cac_align.rl.gardo import GateState, RegularizeSettings, step_gate

    # proxy [4, 3, 2, 1], one judge [1, 2, 3, 4]: win rates 1, 2/3, 1/3, 0 against 0, 1/3, 2/3, 1, so U = [1, 1/3, -1/3, -1];
    # the pool U >= 0 is [1, 1/3], its 50th percentile 2/3: sample 0 alone is gated (1 of 4 trained), weight 1 / (1/4) = 4
    settings = RegularizeSettings(gate="uncertain", fraction=0.5, adapt_fraction=False)
    state = GateState(fraction=0.5)
    weights, said = step_gate(settings, state, np.array([4.0, 3, 2, 1]), {"judge": np.array([1.0, 2, 3, 4])}, np.ones(4, dtype=bool))
    assert weights.tolist() == [4.0, 0.0, 0.0, 0.0] and weights.dtype == np.float32
    assert said == {"regularize/gated_fraction": 0.25, "regularize/fraction": 0.5, "regularize/unjudged": 0.0}
    # "under" (GARDO's code at 1cc77fb): the sample the proxy rates below the judge: U = [-1, -1/3, 1/3, 1], sample 3 gated
    under = step_gate(RegularizeSettings(gate="uncertain", fraction=0.5, adapt_fraction=False, direction="under"), GateState(), np.array([4.0, 3, 2, 1]),
                      {"judge": np.array([1.0, 2, 3, 4])}, np.ones(4, dtype=bool))[0]
    assert under.tolist() == [0.0, 0.0, 0.0, 4.0]
    # adapted (GARDO's RiskCompensator): the first step takes the base fraction 0.1 and remembers the mean U >= 0, (1 + 1/3) / 2
    adapted = RegularizeSettings(gate="uncertain")
    state = GateState(fraction=0.3)
    step_gate(adapted, state, np.array([4.0, 3, 2, 1]), {"judge": np.array([1.0, 2, 3, 4])}, np.ones(4, dtype=bool))
    assert state.fraction == pytest.approx(0.1) and state.history == [pytest.approx(2 / 3)]
    back = GateState()
    back.load_state_dict(state.state_dict())  # a checkpoint's state.json round trip
    assert back == state


def test_judge_advantages_by_hand():
    from cac_align.rl.gardo import judge_advantages

    # groups a = samples 0-2, b = 3-4; judge x: a's [1, 2, 3] (mean 2, population std sqrt(2/3) = 0.8165), b's [5, 5] (all alike);
    # judge y: a's [3, NaN, 1] (mean 2, std 1), b's [0, 2] (mean 1, std 1). With eps 1e-4 as the proxy's:
    # x: a -> [-1.2246, 0, 1.2246], b -> none; y: a -> [0.9999, NaN, -0.9999], b -> [-0.9999, 0.9999]
    # the mean over the judges that scored: [0.1123, 0, 0.1123, -0.9999, 0.9999]
    x = np.array([1.0, 2, 3, 5, 5])
    y = np.array([3.0, np.nan, 1, 0, 2])
    got = judge_advantages({"x": x, "y": y}, ["a", "a", "a", "b", "b"], np.ones(5, dtype=bool))
    sx = np.sqrt(2 / 3) + 1e-4
    ey = 1 / (1 + 1e-4)
    assert got == pytest.approx([(-1 / sx + ey) / 2, 0.0, (1 / sx - ey) / 2, -ey, ey])
    # a sample not trained takes no part: b's judge y has one left, so b has no advantage; clip as the proxy's
    got = judge_advantages({"y": y}, ["a", "a", "a", "b", "b"], np.array([True, True, True, True, False]), clip=0.5)
    assert got[[0, 2]].tolist() == [0.5, -0.5] and np.isnan(got[[1, 3, 4]]).all()
    with pytest.raises(ValueError, match="at least one auxiliary judge"):
        judge_advantages({}, ["a"], [True])


def test_worst_case_advantages_by_hand():
    from cac_align.rl.gardo import worst_case_advantages

    # marked: the first lowered to the judges' -1, the second (-0.5 < 0.7) and third (0.8 < 2) already the lower, the fourth unjudged
    held = worst_case_advantages([1.5, -0.5, 0.8, -1.2], [-1.0, 0.7, 2.0, np.nan], [True, True, True, True])
    assert held.tolist() == pytest.approx([-1.0, -0.5, 0.8, -1.2]) and held.dtype == np.float32
    # an unmarked sample keeps its own advantage whatever the judges say
    assert worst_case_advantages([1.5, 0.3], [-1.0, -2.0], [False, True]).tolist() == pytest.approx([1.5, -2.0])
    with pytest.raises(ValueError, match="2 advantages but 1 marks"):
        worst_case_advantages([1.0, 2.0], [0.0, 0.0], [True])


def test_projected_advantages_by_hand():
    from cac_align.rl.gardo import projected_advantages

    # a . j = -1 - 1 + 0.5 + 0.5 = -1 and j . j = 4: a + j / 4, orthogonal to j
    got, cosine = projected_advantages([1.0, -1.0, 0.5, -0.5], [-1.0, 1.0, 1.0, -1.0])
    assert got.tolist() == pytest.approx([0.75, -0.75, 0.75, -0.75]) and got.dtype == np.float32
    assert float(got @ np.array([-1.0, 1.0, 1.0, -1.0])) == pytest.approx(0.0, abs=1e-7)
    assert cosine == pytest.approx(-1 / (np.sqrt(2.5) * 2))
    # agreeing (a . j = 1 + 1 - 0.5 - 0.5 = 1 > 0): as it was, the judges' direction not added
    got, cosine = projected_advantages([1.0, -1.0, 0.5, -0.5], [1.0, -1.0, -1.0, 1.0])
    assert got.tolist() == [1.0, -1.0, 0.5, -0.5] and cosine == pytest.approx(1 / (np.sqrt(2.5) * 2))
    # a sample no judge scored keeps its own and takes no part: over the other three, a . j = -1 - 1 - 0.5 = -2.5, j . j = 3
    got, _ = projected_advantages([1.0, -1.0, 0.5, 9.0], [-1.0, 1.0, -1.0, np.nan])
    assert got.tolist() == pytest.approx([1 - 2.5 / 3, -1 + 2.5 / 3, 0.5 - 2.5 / 3, 9.0])
    # judges all 0: nothing to project off, and no cosine
    got, cosine = projected_advantages([1.0, -1.0], [0.0, 0.0])
    assert got.tolist() == [1.0, -1.0] and np.isnan(cosine)


def test_regularize_settings_refuse_bad_values_in_one_line():
    from cac_align.rl.gardo import RegularizeSettings

    for bad, said in ((dict(gate="always"), "regularize.gate must be one of ('none', 'uncertain')"),
                      (dict(reference="ema"), "regularize.reference must be one of ('base', 'adaptive')"),
                      (dict(fraction=0.0), "regularize.fraction must be in (0, 1]"), (dict(reset_every=0), "regularize.reset_every must be >= 1"),
                      (dict(kl_bound=-1.0), "regularize.kl_bound must be > 0"), (dict(diversity="dino"), "regularize.diversity must be one of"),
                      (dict(hold="clip"), "regularize.hold must be one of ('kl', 'worst_case')")):
        with pytest.raises(ValueError, match=re.escape(said)):
            RegularizeSettings(**bad)
    default = RegularizeSettings()
    assert not default.gated and not default.adaptive and not default.kl_gated and not default.judged
    assert RegularizeSettings(project=True).judged and not RegularizeSettings(project=True).gated  # the judges score, no gate
    assert RegularizeSettings(gate="uncertain").kl_gated and not RegularizeSettings(gate="uncertain", hold="worst_case").kl_gated


def test_latent_features_pool_each_latent_frame():
    import torch

    from cac_align.rl.gardo import latent_features

    # one sample, 1 channel, 2 latent frames of 4 x 4: frame 0 all ones, frame 1 a left half of 2 and a right half of 0;
    # pooled to 2 x 2 each: frame 0 -> [1, 1, 1, 1], frame 1 -> [2, 0, 2, 0]
    latents = torch.zeros(1, 1, 2, 4, 4)
    latents[0, 0, 0] = 1.0
    latents[0, 0, 1, :, :2] = 2.0
    assert latent_features(latents, grid=2).tolist() == [[1.0, 1.0, 1.0, 1.0, 2.0, 0.0, 2.0, 0.0]]
    with pytest.raises(ValueError, match="latent_features takes"):
        latent_features(torch.zeros(1, 4, 4))
