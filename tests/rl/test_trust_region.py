"""DPPO's trust region on SDE steps (cac_align.rl.trust_region) against numbers worked out by hand."""

import math

import pytest
import torch

from cac_align.rl.advantages import clipped_surrogate
from cac_align.rl.sde import gaussian_log_prob, position_log_density
from cac_align.rl.trust_region import divergence_masked_surrogate, gaussian_step_kl, gaussian_step_tv, masked_fraction

LOG2 = math.log(2.0)


def test_step_kl_by_hand():
    # sample 0: means [1, 2] vs [0, 0], std 2: (1/8 + 4/8) / 2 = 0.3125
    # sample 1: means [1, 1] vs [0, 0], std 1: (1/2 + 1/2) / 2 = 0.5
    mean = torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    kl = gaussian_step_kl(mean, torch.zeros(2, 2), torch.tensor([2.0, 1.0]))
    assert kl.tolist() == [0.3125, 0.5]
    # symmetric in the two means; std as (B, 1) (SDEStep.std's layout) or scalar
    assert torch.equal(gaussian_step_kl(torch.zeros(2, 2), mean, torch.tensor([[2.0], [1.0]])), kl)
    assert gaussian_step_kl(mean[:1], torch.zeros(1, 2), 2.0).tolist() == [0.3125]


def test_step_tv_by_hand_and_pinsker():
    # |d| = 1 and 2, std 2: TV = 2 Phi(|d| / (2 std)) - 1 = 2 Phi(0.25) - 1 = 0.1974126, 2 Phi(0.5) - 1 = 0.3829249
    # (Phi(0.25) = 0.5987063, Phi(0.5) = 0.6914625); mean 0.2901688
    tv = gaussian_step_tv(torch.tensor([[1.0, -2.0]]), torch.zeros(1, 2), 2.0)
    assert tv.item() == pytest.approx(0.2901688, abs=1e-6)
    # Pinsker: <= sqrt(KL / 2) = sqrt(0.3125 / 2) = 0.3952847
    kl = gaussian_step_kl(torch.tensor([[1.0, -2.0]]), torch.zeros(1, 2), 2.0)
    assert tv.item() <= math.sqrt(kl.item() / 2)
    # far apart it saturates below 1; equal means give 0
    assert 0.999 < gaussian_step_tv(torch.tensor([[40.0]]), torch.zeros(1, 1), 1.0).item() <= 1.0
    assert gaussian_step_tv(torch.ones(1, 3), torch.ones(1, 3), 1.0).item() == 0.0


def test_per_position_divergence_is_the_channel_mean():
    # (B, C, T, H, W) = (1, 2, 1, 1, 2); channel 0 moved [1, 0], channel 1 moved [3, 0], std 1
    # position 0: (1 + 9) / 2 channels / 2 = 2.5; position 1: 0. Their mean is the per-sample KL 1.25.
    mean = torch.tensor([1.0, 0.0, 3.0, 0.0]).reshape(1, 2, 1, 1, 2)
    per_position = gaussian_step_kl(mean, torch.zeros_like(mean), 1.0, positions=True)
    assert per_position.shape == (1, 1, 1, 2) and per_position.flatten().tolist() == [2.5, 0.0]
    assert gaussian_step_kl(mean, torch.zeros_like(mean), 1.0).item() == 1.25
    assert gaussian_step_tv(mean, torch.zeros_like(mean), 1.0, positions=True).shape == (1, 1, 1, 2)
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        gaussian_step_kl(torch.zeros(2, 3), torch.zeros(2, 3), 1.0, positions=True)


def test_mean_kl_is_the_expected_averaged_log_ratio():
    # Our log-probs average the log-density over elements, so under the sampling Gaussian
    # E[log p_new(x') - log p_old(x')] = -mean_e KL_e (module docstring): per element
    # E[(x - mu_old)^2 - (x - mu)^2] / (2 s^2) = (s^2 - s^2 - d^2) / (2 s^2) = -d^2 / (2 s^2).
    # d = 0.3 s: -0.045; each element's log-ratio has std |d| / s = 0.3, so over 200,000 elements
    # the average's std is 0.3 / sqrt(2e5) = 6.7e-4 (a 3e-3 tolerance is 4.5 of them).
    g = torch.Generator().manual_seed(0)
    old_mean = torch.randn(1, 4, 5, 100, 100, generator=g)
    std = 0.5
    mean = old_mean + 0.3 * std
    x = old_mean + std * torch.randn(old_mean.shape, generator=g)
    log_ratio = gaussian_log_prob(x, mean, std) - gaussian_log_prob(x, old_mean, std)
    kl = gaussian_step_kl(mean, old_mean, std)
    assert kl.item() == pytest.approx(0.045, rel=1e-5)
    assert log_ratio.item() == pytest.approx(-kl.item(), abs=3e-3)
    # and per position: the channel-averaged log-density's log-ratio against the channel-averaged KL
    maps = position_log_density(x, mean, std) - position_log_density(x, old_mean, std)
    assert maps.mean().item() == pytest.approx(-gaussian_step_kl(mean, old_mean, std, positions=True).mean().item(), abs=3e-3)


def test_mask_follows_the_direction_the_advantage_pushes():
    # delta 0.1; ratios 2 (log 2) and 0.5 (-log 2); A = +-1.5
    cases = [
        # (log_ratio, A, D, kept, why)
        (LOG2, 1.5, 0.2, 0.0, "A > 0 and the ratio already above 1, D past delta: masked"),
        (-LOG2, 1.5, 0.2, 1.0, "A > 0 pulls a ratio below 1 back up: kept"),
        (-LOG2, -1.5, 0.2, 0.0, "A < 0 and the ratio already below 1, D past delta: masked"),
        (LOG2, -1.5, 0.2, 1.0, "A < 0 pulls a ratio above 1 back down: kept"),
        (LOG2, 1.5, 0.1, 1.0, "D == delta is inside the region (strict >, as trl)"),
        (LOG2, 1.5, 0.05, 1.0, "D inside the region: kept"),
        (LOG2, 0.0, 0.2, 1.0, "A == 0: kept (its loss is 0 anyway)"),
    ]
    log_ratio = torch.tensor([c[0] for c in cases], requires_grad=True)
    advantages = torch.tensor([c[1] for c in cases])
    loss, keep = divergence_masked_surrogate(log_ratio, advantages, torch.tensor([c[2] for c in cases]), 0.1)
    assert keep.tolist() == [c[3] for c in cases], [c[4] for c in cases]
    # loss = -A * r * M: kept rows -1.5 * 0.5 = -0.75, +1.5 * 2 = 3.0; masked rows 0
    assert loss.tolist() == pytest.approx([0.0, -0.75, 0.0, 3.0, -3.0, -3.0, 0.0])
    # gradient wrt log_ratio: -A * r where kept, 0 where masked (no gradient through M)
    loss.sum().backward()
    assert log_ratio.grad.tolist() == pytest.approx([0.0, -0.75, 0.0, 3.0, -3.0, -3.0, 0.0])
    assert not keep.requires_grad


def test_asymmetric_deltas_and_bad_delta():
    # (delta_low, delta_high) = (0.3, 0.1): D = 0.2 is past delta_high (A > 0 side) but inside delta_low (A < 0 side)
    _, keep = divergence_masked_surrogate(torch.tensor([LOG2, -LOG2]), torch.tensor([1.0, -1.0]), torch.tensor([0.2, 0.2]), (0.3, 0.1))
    assert keep.tolist() == [0.0, 1.0]
    for bad in (0.0, -1.0, (0.1, 0.0)):
        with pytest.raises(ValueError, match="delta must be > 0"):
            divergence_masked_surrogate(torch.zeros(1), torch.ones(1), torch.zeros(1), bad)


def test_infinite_delta_is_the_unclipped_surrogate_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    log_ratio = 0.3 * torch.randn(64, generator=g)
    advantages = torch.randn(64, generator=g)
    divergence = torch.rand(64, generator=g) * 100
    loss, keep = divergence_masked_surrogate(log_ratio, advantages, divergence, math.inf)
    assert keep.eq(1).all()
    assert torch.equal(loss, -advantages * torch.exp(log_ratio))
    assert torch.equal(loss, clipped_surrogate(log_ratio, advantages, math.inf, math.inf))
    # and it is not today's ppo_clip with a finite range once ratios leave it
    assert not torch.equal(loss, clipped_surrogate(log_ratio, advantages, 0.2, 0.2))


def test_at_ratio_one_it_equals_ppo_clip_with_its_gradient():
    # the first update of a step: the current policy is the sampler, log_ratio = 0, D = 0
    advantages = torch.tensor([1.0, -2.0, 0.5])
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    dppo, keep = divergence_masked_surrogate(a, advantages, torch.zeros(3), 1e-6)
    ppo = clipped_surrogate(b, advantages, 0.2, 0.2)
    assert keep.eq(1).all() and torch.equal(dppo, ppo)
    dppo.sum().backward()
    ppo.sum().backward()
    assert torch.equal(a.grad, b.grad) and a.grad.tolist() == [-1.0, 2.0, -0.5]


def test_per_position_mask():
    # one sample, two positions, A = 2 for both (credit 1): position 0 moved up with D = 0.5 > 0.1 -> masked,
    # position 1 moved up with D = 0.01 -> kept: loss -2 * 2 = -4
    log_ratio = torch.tensor([LOG2, LOG2]).reshape(1, 1, 1, 2)
    divergence = torch.tensor([0.5, 0.01]).reshape(1, 1, 1, 2)
    loss, keep = divergence_masked_surrogate(log_ratio, torch.tensor([2.0]).reshape(1, 1, 1, 1), divergence, 0.1)
    assert keep.flatten().tolist() == [0.0, 1.0] and loss.flatten().tolist() == pytest.approx([0.0, -4.0])


def test_masked_fraction():
    keep = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert masked_fraction(keep).item() == 0.75
    # weights drop sample 1: one masked of sample 0's two entries
    assert masked_fraction(keep, torch.tensor([1.0, 0.0])).item() == 0.5
    assert masked_fraction(keep, torch.zeros(2)).item() == 0.0
    # per position (B, T, H, W) with (B,) weights
    assert masked_fraction(torch.tensor([[[[0.0, 1.0]]], [[[0.0, 0.0]]]]), torch.tensor([1.0, 0.0])).item() == 0.5


# ---------------------------------------------------------------------------------------------
# Inside Flow-GRPO's loss (rl/sde.py flow_grpo_loss): loss=dppo_kl / dppo_tv, and a gate's KL weights
# ---------------------------------------------------------------------------------------------
def test_flow_grpo_loss_with_dppo_masks_by_hand():
    from cac_align.rl.sde import flow_grpo_loss

    # two samples of one element each, std 1: sample 0's mean moved by 0.1 from the old (KL 0.1^2 / 2 = 0.005), sample 1's by
    # 0.001 (KL 5e-7); both ratios above 1 with positive advantages, delta 1e-6: sample 0 is masked, sample 1 kept.
    # loss = mean(-A * r * keep) = (0 + -2 * e^0.01) / 2 = -e^0.01
    mean, old = torch.tensor([[0.1], [0.001]]), torch.zeros(2, 1)
    log_prob, old_log_prob = torch.tensor([0.02, 0.01]), torch.zeros(2)
    loss, said = flow_grpo_loss(log_prob, old_log_prob, torch.tensor([1.0, 2.0]), clip_range=1e-4, mean=mean, std=1.0, trust_region="dppo_kl",
                                delta=1e-6, old_mean=old)
    assert float(loss) == pytest.approx(-math.exp(0.01), rel=1e-6)
    assert float(said["masked_fraction"]) == 0.5 and float(said["divergence"]) == pytest.approx((0.005 + 5e-7) / 2, rel=1e-5)
    # the TV of the same moves: erf(0.1 / (2 sqrt 2)) = 0.0399 and erf(0.001 / (2 sqrt 2)) = 3.99e-4; at delta 1e-3 the same mask
    tv, said = flow_grpo_loss(log_prob, old_log_prob, torch.tensor([1.0, 2.0]), clip_range=1e-4, mean=mean, std=1.0, trust_region="dppo_tv",
                              delta=1e-3, old_mean=old)
    assert float(tv) == pytest.approx(-math.exp(0.01), rel=1e-6) and float(said["masked_fraction"]) == 0.5
    # PPO's clip (the default) on the same: both ratios above 1 + 1e-4, both clipped: mean(-A * 1.0001) = -1.5 * 1.0001
    clipped, _ = flow_grpo_loss(log_prob, old_log_prob, torch.tensor([1.0, 2.0]), clip_range=1e-4, mean=mean, std=1.0)
    assert float(clipped) == pytest.approx(-1.5 * 1.0001, rel=1e-6)
    with pytest.raises(ValueError, match="needs mean, old_mean, std and delta"):
        flow_grpo_loss(log_prob, old_log_prob, torch.tensor([1.0, 2.0]), clip_range=1e-4, trust_region="dppo_kl", delta=1e-6)


def test_flow_grpo_loss_with_dppo_per_position():
    from cac_align.rl.sde import flow_grpo_loss

    # one sample, 1 channel x (1, 1, 2) positions; the credit map [2, 0] (mean 1); position 0's mean moved by 0.1 (KL 0.005 > 1e-6)
    # with its log-ratio 0.02 > 0 and A_p = 2 * 1 > 0: masked; position 1 moved by 0 (kept), A_p = 0: its term is 0 whatever it is.
    # loss = mean over positions of -A_p r_p keep_p = (0 + 0) / 2 = 0; masked fraction 1/2
    mean, old = torch.tensor([[[[[0.1, 0.0]]]]]), torch.zeros(1, 1, 1, 1, 2)
    log_map, old_map = torch.tensor([[[[0.02, 0.0]]]]), torch.zeros(1, 1, 1, 2)
    loss, said = flow_grpo_loss(log_map.mean(dim=(1, 2, 3)), old_map.mean(dim=(1, 2, 3)), torch.tensor([1.0]), clip_range=1e-4, mean=mean, std=1.0,
                                log_prob_map=log_map, old_log_prob_map=old_map, credit=torch.tensor([[[[2.0, 0.0]]]]), trust_region="dppo_kl",
                                delta=1e-6, old_mean=old)
    assert float(loss) == 0.0 and float(said["masked_fraction"]) == 0.5 and float(said["divergence"]) == pytest.approx(0.0025, rel=1e-5)
    with pytest.raises(ValueError, match="DPPO's mask is the default localized estimator's"):
        flow_grpo_loss(log_map.mean(dim=(1, 2, 3)), old_map.mean(dim=(1, 2, 3)), torch.tensor([1.0]), clip_range=1e-4, mean=mean, std=1.0,
                       log_prob_map=log_map, old_log_prob_map=old_map, credit=torch.ones(1, 1, 1, 2), estimator="vipo", trust_region="dppo_kl",
                       delta=1e-6, old_mean=old)


def test_a_gates_kl_weights_count_the_named_samples_only():
    from cac_align.rl.nft import nft_loss
    from cac_align.rl.sde import flow_grpo_loss

    # three samples of one element, std 1, means 1, 2, 3 against the reference's 0: KL 0.5, 2, 4.5; gate weights [2, 0, 0] (one sample
    # of two gated, scaled by 1 / (1/2)... as step_gate gives); the KL term = mean(w * kw * kl) = (2 * 0.5 + 0 + 0) / 3 = 1/3
    mean, ref = torch.tensor([[1.0], [2.0], [3.0]]), torch.zeros(3, 1)
    _, said = flow_grpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), clip_range=0.2, mean=mean, ref_mean=ref, std=1.0, beta=1.0,
                             kl_weights=torch.tensor([2.0, 0.0, 0.0]))
    assert float(said["kl"]) == pytest.approx(1 / 3, rel=1e-6)
    _, plain = flow_grpo_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), clip_range=0.2, mean=mean, ref_mean=ref, std=1.0, beta=1.0)
    assert float(plain["kl"]) == pytest.approx(7 / 3, rel=1e-6)  # no gate: (0.5 + 2 + 4.5) / 3
    # NFT's velocity KL, mean((v - v_ref)^2): 1, 4, 9 -> with the same weights (2 * 1) / 3
    v, v_ref = mean.reshape(3, 1, 1, 1, 1), ref.reshape(3, 1, 1, 1, 1)
    _, nft = nft_loss(v, v, v, v, torch.full((3,), 0.5), torch.zeros(3), beta=1.0, ref_prediction=v_ref, kl_beta=1.0, kl_weights=torch.tensor([2.0, 0.0, 0.0]))
    assert float(nft["kl_div_loss"]) == pytest.approx(2 / 3, rel=1e-6)
