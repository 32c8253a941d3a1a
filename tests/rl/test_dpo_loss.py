"""LocalDPO's loss (cac_align.rl.dpo) against their formula, worked by hand.

Their formula: 1170300714/Local-DPO at 7528e96, ``innerT2V/train_wanx21.py``: 641 the target
``noise - x0``; 642-643 squared errors, winners first; 645-646 masked errors
``err * mask * yita * (B * F * h * w) / sum(mask)`` (the whole batch's mask), 647-650 their means
over all dims; 653-676 model and reference differences; 680-687 ``inside = -beta / 2 * (model_diff
- ref_diff)``; 694-695 ``-logsigmoid``; 697-700 ``loss = mean(dpo + mask_dpo + 0.1 sft_mask + 0.1
sft)``; 581-583 ``yita = 1 + (eta - 0.75) / 0.15``; 613-626 one noise and one timestep per pair.
"""

from __future__ import annotations

import math

import pytest
import torch

from cac_align.rl.dpo import DpoLossSettings, dpo_loss, noised_pair, sample_sigmas, squared_error


def t(values, shape=(1, 1, 2, 1, 2)):
    """A latent (B, C, T, H, W) from values in (t, w) order, float64."""
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


# Pair 1 (latent C, T, H, W = 1, 2, 1, 2; elements in (t, w) order), eta = 0.80 -> yita 4/3.
NOISE = [0.5, -0.3, 0.8, 0.1]
X0_W, X0_L = [0.2, 0.4, -0.1, 0.3], [0.2, 0.4, -0.6, 0.7]
MASK = [0.0, 0.0, 1.0, 1.0]
PRED = {"mw": [0.31, -0.72, 0.93, -0.2], "ml": [0.31, -0.72, 1.45, -0.56], "rw": [0.31, -0.72, 0.94, -0.19], "rl": [0.31, -0.72, 1.445, -0.57]}
# Pair 2, eta = 0.85 -> yita 5/3.
NOISE2 = [0.2, 0.7, -0.4, -0.9]
X0_W2, X0_L2 = [0.1, -0.2, 0.5, 0.0], [0.3, -0.2, 0.1, 0.4]
MASK2 = [1.0, 0.0, 1.0, 1.0]
PRED2 = {"mw": [0.12, 0.9, -0.92, -0.9], "ml": [-0.05, 0.9, -0.47, -1.32], "rw": [0.115, 0.9, -0.91, -0.905], "rl": [-0.06, 0.9, -0.48, -1.31]}


def errors(noise, x0_w, x0_l, pred):
    target_w, target_l = t(noise) - t(x0_w), t(noise) - t(x0_l)
    return {k: (t(v) - (target_w if k.endswith("w") else target_l)) ** 2 for k, v in pred.items()}


def test_one_pair_equals_their_formula_by_hand():
    # By hand: targets w [0.3, -0.7, 0.9, -0.2], l [0.3, -0.7, 1.4, -0.6]; squared errors
    # theta_w [1, 4, 9, 0]e-4 (mean 0.00035), theta_l [1, 4, 25, 16]e-4 (0.00115),
    # ref_w [1, 4, 16, 1]e-4 (0.00055), ref_l [1, 4, 20.25, 9]e-4 (0.00085625);
    # z = -2500 ((0.00035 - 0.00115) - (0.00055 - 0.00085625)) = 1.234375.
    # Masked (last two elements, yita 4/3): theta_w 0.00045 * 4/3 = 0.0006, theta_l 0.00205 * 4/3,
    # ref_w 0.00085 * 4/3, ref_l 0.0014625 * 4/3; zR = -2500 * (-0.0021333 + 0.00081667) = 3.2916667.
    # loss = -logsig(1.234375) - logsig(3.2916667) + 0.1 * 0.0006 + 0.1 * 0.00035
    #      = 0.2554299630 + 0.0365168797 + 0.00006 + 0.000035 = 0.2920418427
    e = errors(NOISE, X0_W, X0_L, PRED)
    mask = t(MASK, (1, 2, 1, 2))
    loss, m = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(), mask, strength=torch.tensor([4 / 3], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.2920418427, abs=1e-9)
    assert m["margin"].item() == pytest.approx(1.234375, abs=1e-6) and m["margin_mask"].item() == pytest.approx(3.2916667, abs=1e-6)
    assert m["dpo"].item() == pytest.approx(0.2554299630, abs=1e-7) and m["mask_dpo"].item() == pytest.approx(0.03651687970, abs=1e-7)  # metrics are float32
    assert m["implicit_acc"].item() == 1.0 and m["implicit_acc_mask"].item() == 1.0 and m["masked_pairs"].item() == 1
    # beta 500: z and zR a tenth; 0.6333318247 + 0.5420469769 + 0.00006 + 0.000035
    loss, _ = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(beta=500), mask, strength=torch.tensor([4 / 3], dtype=torch.float64))
    assert loss.item() == pytest.approx(1.175473802, abs=1e-8)


def test_two_pairs_their_batch_normalization_and_ours():
    e1, e2 = errors(NOISE, X0_W, X0_L, PRED), errors(NOISE2, X0_W2, X0_L2, PRED2)
    e = {k: torch.cat([e1[k], e2[k]]) for k in e1}
    mask = torch.cat([t(MASK, (1, 2, 1, 2)), t(MASK2, (1, 2, 1, 2))])
    strength = torch.tensor([4 / 3, 5 / 3], dtype=torch.float64)
    # their script: masked errors normalized by the batch's mask (2 + 3 = 5 cells), times B = 2;
    # z = [1.234375, 0.78125], zR = [2.6333333, 2.0833333]; mean of the two pairs' four terms
    theirs, m = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(mask_norm="batch"), mask, strength)
    assert theirs.item() == pytest.approx(0.4096322424, abs=1e-9)
    assert m["margin"].item() == pytest.approx((1.234375 + 0.78125) / 2, abs=1e-6)
    # ours by default: each pair's own masked mean (the same for pair 1 as above, zR 3.2916667)
    ours, m = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(), mask, strength)
    assert ours.item() == pytest.approx(0.4156750942, abs=1e-9)


def test_without_a_mask_it_is_diffusion_dpo_plus_sft():
    e = errors(NOISE, X0_W, X0_L, PRED)
    plain, m = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(sft_weight=0.0), None)
    assert plain.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.234375))), abs=1e-9)  # -logsig(z) alone
    assert math.isnan(m["margin_mask"].item()) and m["masked_pairs"].item() == 0
    # mask: none ignores a mask given; an empty mask is a pair without one
    mask = t(MASK, (1, 2, 1, 2))
    none, _ = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(mask="none"), mask)
    empty, _ = dpo_loss(e["mw"], e["ml"], e["rw"], e["rl"], DpoLossSettings(), torch.zeros_like(mask))
    assert none.item() == pytest.approx(0.2554299630 + 0.1 * 0.00035, abs=1e-9) and empty.item() == pytest.approx(none.item(), abs=1e-12)


def test_gradient_reaches_only_the_policy_and_pushes_towards_the_winner():
    e = errors(NOISE, X0_W, X0_L, PRED)
    pred_w = t(PRED["mw"]).requires_grad_()
    target_w = t(NOISE) - t(X0_W)
    model_w = (pred_w - target_w) ** 2
    ref_w = e["rw"].clone().requires_grad_()
    loss, _ = dpo_loss(model_w, e["ml"], ref_w, e["rl"], DpoLossSettings(), t(MASK, (1, 2, 1, 2)))
    loss.backward()
    assert ref_w.grad is None or torch.count_nonzero(ref_w.grad) == 0  # the reference is detached
    # d loss / d pred_w has the sign of (pred_w - target_w) wherever they differ: lowering the
    # winner's error lowers the loss
    diff = (pred_w - target_w).detach()
    assert torch.all(torch.sign(pred_w.grad[diff != 0]) == torch.sign(diff[diff != 0]))


def test_noised_pair_shares_noise_and_level_on_the_flow_path():
    w, l = torch.full((2, 1, 1, 1, 2), 2.0), torch.full((2, 1, 1, 1, 2), -1.0)
    noise = torch.tensor([0.5, -0.5, 1.0, 3.0]).reshape(2, 1, 1, 1, 2)
    x, target = noised_pair(w, l, noise, torch.tensor([0.25, 1.0]))
    # pair 0 at sigma 0.25: winner 0.75 * 2 + 0.25 * [0.5, -0.5] = [1.625, 1.375]; loser -0.75 + 0.25 * noise
    assert x[0].flatten().tolist() == [1.625, 1.375] and x[2].flatten().tolist() == [-0.625, -0.875]
    assert x[1].flatten().tolist() == [1.0, 3.0] and x[3].flatten().tolist() == [1.0, 3.0]  # sigma 1: pure noise for both
    assert target[0].flatten().tolist() == [-1.5, -2.5] and target[2].flatten().tolist() == [1.5, 0.5]  # noise - x0


def test_sigmas_logit_normal_and_shifted():
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(20000, g, DpoLossSettings())
    assert 0 < s.min() and s.max() < 1 and s.median().item() == pytest.approx(0.5, abs=0.02)  # sigmoid(N(0, 1)): median 1/2
    g = torch.Generator().manual_seed(0)
    shifted = sample_sigmas(20000, g, DpoLossSettings(shift=3.0))
    assert shifted.median().item() == pytest.approx(0.75, abs=0.02)  # 3 * 0.5 / (1 + 2 * 0.5)


def test_sigmas_restricted_to_one_experts_levels_keep_the_distributions_shape():
    # The A14B's boundary 0.875 is logit(0.875) = ln 7 = 1.94591 on the normal draw (shift 1), where
    # Phi(ln 7) = 0.974167. The draw truncated to [ln 7, inf) has its median at Phi^-1((0.974167 + 1) / 2)
    # = 2.228717, a level of sigmoid(2.228717) = 0.902799; truncated to (-inf, ln 7), at
    # Phi^-1(0.974167 / 2) = -0.032382, a level of 0.491905.
    g = torch.Generator().manual_seed(0)
    high = sample_sigmas(40000, g, DpoLossSettings(), (0.875, 1.0))
    assert high.min() >= 0.875 and high.max() < 1.0 and high.median().item() == pytest.approx(0.902799, abs=1e-3)
    low = sample_sigmas(40000, torch.Generator().manual_seed(0), DpoLossSettings(), (0.0, 0.875))
    assert low.min() > 0 and low.max() < 0.875 and low.median().item() == pytest.approx(0.491905, abs=5e-3)
    # shift 3: sigma >= 0.875 is u >= 0.875 / (3 - 2 x 0.875) = 0.7 before the shift, z >= logit(0.7) =
    # 0.847298, Phi = 0.801585; the median z Phi^-1(0.900793) = 1.286082 -> u 0.783483 -> sigma 0.915653
    shifted = sample_sigmas(40000, torch.Generator().manual_seed(0), DpoLossSettings(shift=3.0), (0.875, 1.0))
    assert shifted.min() >= 0.875 and shifted.median().item() == pytest.approx(0.915653, abs=1e-3)
    # the whole range is the unrestricted draw, number for number (a Wan-2.1 run draws as before)
    assert torch.equal(sample_sigmas(8, torch.Generator().manual_seed(5), DpoLossSettings(), (0.0, 1.0)),
                       sample_sigmas(8, torch.Generator().manual_seed(5), DpoLossSettings()))
    with pytest.raises(ValueError, match="lo < hi"):
        sample_sigmas(1, g, DpoLossSettings(), (0.9, 0.875))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="loss.mask must be one of"):
        DpoLossSettings(mask="global")
    with pytest.raises(ValueError, match="loss.mask_norm"):
        DpoLossSettings(mask_norm="pixel")
    with pytest.raises(ValueError, match="with a DPO term on"):
        DpoLossSettings(dpo_weight=0.0, mask_dpo_weight=0.0)


def test_squared_error_splits_winners_first():
    pred = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    target = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    w, l = squared_error(pred, target)
    assert w.flatten().tolist() == [1.0, 4.0] and l.flatten().tolist() == [4.0, 16.0]
