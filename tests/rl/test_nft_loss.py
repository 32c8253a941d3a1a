"""DiffusionNFT's equations (cac_align.rl.nft) against numbers worked out by hand."""

import pytest
import torch

from cac_align.rl.nft import (adaptive_x0_error, nft_loss, nft_velocities, old_policy_decay, reward_weight, update_old_policy, velocity_kl,
                               x0_from_velocity)


def test_reward_weight_modes():
    a = torch.tensor([-7.0, -2.5, 0.0, 2.5, 7.0])
    # clip to [-5, 5], then r = A / 10 + 0.5: -5 -> 0, -2.5 -> 0.25, 0 -> 0.5, 2.5 -> 0.75, 5 -> 1
    assert torch.allclose(reward_weight(a), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(reward_weight(a, mode="positive_only"), torch.tensor([0.5, 0.5, 0.5, 0.75, 1.0]))
    assert torch.allclose(reward_weight(a, mode="negative_only"), torch.tensor([0.0, 0.25, 0.5, 0.5, 0.5]))
    # one_only: A > 0 -> 1 -> 1/10 + 0.5 = 0.6, else 0 -> 0.5
    assert torch.allclose(reward_weight(a, mode="one_only"), torch.tensor([0.5, 0.5, 0.5, 0.6, 0.6]))
    # binary: sign -> -1, 0, 1 -> 0.4, 0.5, 0.6
    assert torch.allclose(reward_weight(a, mode="binary"), torch.tensor([0.4, 0.4, 0.5, 0.6, 0.6]))
    # c = 2.5: 2.5 -> 1, -2.5 -> 0
    assert torch.allclose(reward_weight(a, adv_clip_max=2.5), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="adv_mode"):
        reward_weight(a, mode="positive")


def test_velocities_x0_and_adaptive_error():
    v, v_old = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    plus, minus = nft_velocities(v, v_old, 0.5)
    assert plus.item() == 1.5 and minus.item() == 0.5  # 0.5*2 + 0.5*1; 1.5*1 - 0.5*2
    assert x0_from_velocity(torch.tensor([[2.0]]), torch.tensor([0.5]), plus).item() == 1.25  # 2 - 0.5 * 1.5
    # two elements, errors 1 and -3: weight mean|.| = 2; e = mean(1, 9) / 2 = 2.5
    e = adaptive_x0_error(torch.tensor([[1.0, -3.0]]), torch.zeros(1, 2))
    assert e.dtype == torch.float64 and e.item() == pytest.approx(2.5)
    # the floor: a perfect prediction divides by 1e-5, not by 0
    assert adaptive_x0_error(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0.0
    assert velocity_kl(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])).item() == 5.0  # (1 + 9) / 2


def test_nft_loss_and_gradient_by_hand():
    """One element: x0 = 1, noise 3, sigma 0.5 -> x_t = 2; v_old = 1, v = 2, v_ref = 0, beta 0.5,
    A = 2.5 (c = 5 -> r = 0.75), kl_beta 0.1.

    v+ = 1.5 -> x0+ = 2 - 0.75 = 1.25, error 0.25, weight 0.25 -> e+ = 0.0625 / 0.25 = 0.25
    v- = 0.5 -> x0- = 2 - 0.25 = 1.75, error 0.75, weight 0.75 -> e- = 0.5625 / 0.75 = 0.75
    policy = 5 * (0.75 * 0.25 + 0.25 * 0.75) / 0.5 = 3.75; kl = (2 - 0)^2 = 4 -> loss 3.75 + 0.4 = 4.15
    de+/dv = 2 * 0.25 / 0.25 * (-sigma * beta = -0.25) = -0.5; de-/dv = 2 * 0.75 / 0.75 * (+0.25) = 0.5
    dL/dv = 5 / 0.5 * (0.75 * -0.5 + 0.25 * 0.5) + 0.1 * 2 * 2 = -2.5 + 0.4 = -2.1
    """
    v = torch.tensor([[2.0]], requires_grad=True)
    args = dict(old_prediction=torch.tensor([[1.0]]), x_t=torch.tensor([[2.0]]), x0=torch.tensor([[1.0]]), sigmas=torch.tensor([0.5]),
                advantages=torch.tensor([2.5]))
    loss, metrics = nft_loss(v, **args, beta=0.5, ref_prediction=torch.zeros(1, 1), kl_beta=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(4.15)
    assert metrics["policy_loss"].item() == pytest.approx(3.75) and metrics["kl_div_loss"].item() == pytest.approx(4.0)
    assert v.grad.item() == pytest.approx(-2.1)
    # a fixed reward of the group's mean (A = 0, r = 1/2): the two pulls cancel at v = v_old
    v0 = torch.tensor([[1.0]], requires_grad=True)
    nft_loss(v0, **{**args, "advantages": torch.tensor([0.0])}, beta=0.5)[0].backward()
    assert v0.grad.item() == pytest.approx(0.0)
    # weight 0 drops the sample: no gradient
    v1 = torch.tensor([[2.0]], requires_grad=True)
    loss1, _ = nft_loss(v1, **args, beta=0.5, weights=torch.tensor([0.0]))
    loss1.backward()
    assert loss1.item() == 0.0 and v1.grad.item() == 0.0
    with pytest.raises(ValueError, match="ref_prediction"):
        nft_loss(v, **args, beta=0.5, kl_beta=0.1)


def test_credit_maps_weight_the_positions():
    torch.manual_seed(0)
    v, v_old, x_t, x0 = (torch.randn(2, 3, 2, 2, 2) for _ in range(4))
    sigmas, adv = torch.tensor([0.3, 0.8]), torch.tensor([1.0, -2.0])
    plain, _ = nft_loss(v, v_old, x_t, x0, sigmas, adv, beta=0.1)
    uniform, _ = nft_loss(v, v_old, x_t, x0, sigmas, adv, beta=0.1, credit=torch.ones(2, 2, 2, 2))
    assert torch.allclose(plain, uniform, rtol=1e-12)
    # hand-worked: one channel, two positions with errors 1 and 3 (weight 2); M = (0, 2) -> e = (0 + 2 * 9) / 2 / 2 = 4.5
    e = adaptive_x0_error(torch.tensor([[[1.0, 3.0]]]), torch.zeros(1, 1, 2), credit=torch.tensor([[0.0, 2.0]]))
    assert e.item() == pytest.approx(4.5)
    with pytest.raises(ValueError, match="credit maps"):
        adaptive_x0_error(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), credit=torch.ones(1, 3))


def test_old_policy_decay_and_update():
    # decay_type 1: 0.001 * step, up to 0.5; type 2: 0 until 75, then 0.0075 per step, up to 0.999
    assert [old_policy_decay(s, 1) for s in (0, 10, 499, 600)] == pytest.approx([0.0, 0.01, 0.499, 0.5])
    assert [old_policy_decay(s, 2) for s in (0, 74, 75, 175, 500)] == pytest.approx([0.0, 0.0, 0.0, 0.75, 0.999])
    assert old_policy_decay(1000, 0) == 0.0
    assert old_policy_decay(3, (1, 0.25, 0.4)) == pytest.approx(0.4)
    old, new = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    update_old_policy(old, new, 0.25)  # 0.25 * old + 0.75 * new
    assert torch.equal(old[0], torch.tensor([2.5, 5.0]))
    update_old_policy(old, new, 0.0)
    assert torch.equal(old[0], new[0])
    with pytest.raises(ValueError, match="decay_type"):
        old_policy_decay(1, 3)
