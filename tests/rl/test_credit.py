"""Localized credit: evidence -> region -> Wan latent map, and the per-position estimator.

Expected values are worked by hand in the comments (docs/flow_grpo.md, "Localized credit").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cac_align.rl.credit import (
    LocalizeSettings,
    confined_kl,
    credit_map,
    credit_maps,
    hold_map,
    latent_frames,
    localized_policy_loss,
    vipo_policy_loss,
    vipo_scale,
    latent_coverage,
)
from cac_align.rl.sde import flow_grpo_loss, gaussian_log_prob, position_log_density, sde_step
from cac_align.regions import Evidence, EvidenceError, read_evidence, region_from_evidence
from cac_align.rl.advantages import clipped_surrogate

# The case: a 5 s Wan clip (81 frames at 16 fps, 480 x 832), window [1.0, 2.0) s, one box
# [0, 0, 500, 500] (0-1000) on every frame of it.
WAN = dict(num_frames=81, fps=16.0, height=480, width=832)
HAND = Evidence((1.0, 2.0), ((1.5, ((0.0, 0.0, 500.0, 500.0),)),))


def test_latent_frames_of_wan_vae():
    # frame 0 alone, then 4 at a time: latent k >= 1 covers pixel frames 4k - 3 .. 4k
    groups = latent_frames(81)
    assert len(groups) == 21 and list(groups[0]) == [0] and list(groups[1]) == [1, 2, 3, 4] and list(groups[20]) == [77, 78, 79, 80]
    with pytest.raises(ValueError, match="4k \\+ 1 frames"):
        latent_frames(80)


def test_hand_worked_window_and_box_map_to_latent_frames_rows_and_columns():
    region = region_from_evidence(HAND, **WAN)
    # frame i sits at i / 16 s: [1.0, 2.0) holds frames 16 .. 31
    assert np.flatnonzero(region.frames).tolist() == list(range(16, 32))
    # the box in pixels: x 0 .. 0.5 * 832 = 416, y 0 .. 0.5 * 480 = 240
    assert region.boxes[16] == ((0.0, 0.0, 416.0, 240.0),)
    cover = latent_coverage(region)  # hard edges
    assert cover.shape == (21, 60, 104)  # (81 - 1) / 4 + 1 latent frames of 480 / 8 x 832 / 8
    # latent frames touching frames 16 .. 31: k = 4 (13 .. 16) to k = 8 (29 .. 32)
    assert np.flatnonzero(cover.any(axis=(1, 2))).tolist() == [4, 5, 6, 7, 8]
    # rows 0 .. 240 px -> latent rows 0 .. 29 (240 / 8 = 30: whole 2 x 2 patches 0 .. 14);
    # columns 0 .. 416 px -> latent columns 0 .. 51 (416 / 8 = 52: patches 0 .. 25)
    assert np.flatnonzero(cover[6].any(axis=1)).tolist() == list(range(30))
    assert np.flatnonzero(cover[6].any(axis=0)).tolist() == list(range(52))
    assert cover.sum() == 5 * 30 * 52
    # soft edges: latent 4 holds one of its four frames in the window (16), latent 8 three (29 .. 31)
    soft = latent_coverage(region, edges="soft")
    assert soft[4, 0, 0] == pytest.approx(0.25) and soft[5, 0, 0] == pytest.approx(1.0) and soft[8, 0, 0] == pytest.approx(0.75)
    assert soft[6, 29, 51] == pytest.approx(1.0) and soft[6, 30, 51] == 0.0 and soft[6, 29, 52] == 0.0


def test_box_edges_round_to_whole_patches_and_dilate():
    # [0, 0, 510, 510]: x to 424.32 px -> latent column 53 in part (424.32 / 8 = 53.04), which is
    # patch 26 (columns 52, 53): the hard map takes the whole patch; y to 244.8 px -> row 30 in part
    # (patch 15: rows 30, 31)
    evidence = Evidence((1.0, 2.0), ((1.5, ((0.0, 0.0, 510.0, 510.0),)),))
    cover = latent_coverage(region_from_evidence(evidence, **WAN))
    assert np.flatnonzero(cover[6].any(axis=0)).tolist() == list(range(54))
    assert np.flatnonzero(cover[6].any(axis=1)).tolist() == list(range(32))
    soft = latent_coverage(region_from_evidence(evidence, **WAN), edges="soft")
    # a patch is as covered as its most covered cell: column 52 (pixels 416 .. 424) is fully inside
    assert soft[6, 0, 52] == pytest.approx(1.0) and soft[6, 0, 53] == pytest.approx(1.0)
    # dilate 50 (5% each side) and 0.25 s of context: x to 0.55 * 832 = 457.6 -> columns 0 .. 57 (patch 28 ends at 57)
    wider = region_from_evidence(HAND, **WAN, dilate=50.0, context_s=0.25)
    assert wider.boxes[16] == ((0.0, 0.0, pytest.approx(457.6), pytest.approx(264.0)),)
    assert np.flatnonzero(wider.frames).tolist() == list(range(12, 36))  # [0.75, 2.25) s


def test_a_window_without_boxes_covers_whole_frames_and_boxes_without_a_window_their_span():
    whole = latent_coverage(region_from_evidence(Evidence((1.0, 2.0)), **WAN))
    assert whole[6].all() and not whole[3].any() and whole.sum() == 5 * 60 * 104
    # boxes at 1.0 s and 1.5 s, no window: frames 16 .. 24 (to 1.5 + 1/16 s)
    boxed = region_from_evidence(Evidence(None, ((1.0, ((0.0, 0.0, 100.0, 100.0),)), (1.5, ((900.0, 900.0, 1000.0, 1000.0),)))), **WAN)
    assert np.flatnonzero(boxed.frames).tolist() == list(range(16, 25))
    # each frame takes the boxes nearest in time: frame 19 (1.1875 s) the first, frame 21 (1.3125 s) the second
    assert boxed.boxes[19][0][0] == 0.0 and boxed.boxes[21][0][0] == pytest.approx(748.8)


def test_credit_map_has_mean_one_and_its_weights():
    cover = np.zeros((3, 4, 4), dtype=np.float32)
    cover[1, :2, :2] = 1.0  # 4 of 48 positions
    only = credit_map(cover, inside=1.0, outside=0.0)
    # mean 1: 48 / 4 = 12 inside, 0 outside
    assert only[1, 0, 0] == pytest.approx(12.0) and only[0, 0, 0] == 0.0 and only.mean() == pytest.approx(1.0)
    mixed = credit_map(cover, inside=1.0, outside=0.5)
    # raw 1 on 4 positions, 0.5 on 44: mean (4 + 22) / 48 = 26 / 48 -> 48 / 26 inside, 24 / 26 outside
    assert mixed[1, 0, 0] == pytest.approx(48 / 26) and mixed[2, 3, 3] == pytest.approx(24 / 26)
    assert credit_map(np.zeros((2, 2, 2)), 1.0, 0.0).tolist() == np.ones((2, 2, 2)).tolist()  # no region: uniform


def _details(status="abnormal", window=(0.25, 0.5), box=(0, 0, 500, 500)):
    return {"status": status, "window_s": list(window) if window else None,
            "boxes": [{"time_s": 0.25, "boxes": [list(box)]}] if box else []}


def test_which_samples_get_a_map():
    geometry = dict(num_frames=9, fps=16.0, height=64, width=64)
    settings = LocalizeSettings(enabled=True, dilate=0.0)
    details = [
        _details(),                                        # 0: worse than its group, abnormal: localized
        _details(),                                        # 1: better than its group: keeps whole-clip credit
        _details(status="normal", window=None, box=None),  # 2: the judge saw nothing: uniform, not missing
        {"status": "abnormal", "window_s": None, "boxes": []},  # 3: abnormal, nothing located: missing
        {"status": "abnormal", "window_s": [0.5, 0.25], "boxes": []},  # 4: unreadable window: missing
        {"score_only": 1.0},                               # 5: a reward that localizes nothing: missing
        _details(),                                        # 6: invalid: nothing
        {"components": {"cac": {"details": _details()}, "unified_reward": {"details": {}}}},  # 7: a combined reward's component
    ]
    valid = [True] * 6 + [False, True]
    advantages = [-1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -0.5]
    maps = credit_maps(details, valid, advantages, settings, **geometry)
    assert maps.localized.tolist() == [True, False, False, False, False, False, False, True]
    assert maps.missing.tolist() == [False, False, False, True, True, True, False, False]
    assert "window or boxes" in maps.reasons[3] and "unreadable" in maps.reasons[4] and "no localizing reward" in maps.reasons[5]
    # 9 frames of 64 x 64: latent (3, 8, 8); [0.25, 0.5) holds frames 4 .. 7 -> latent frames 1, 2;
    # the box is rows / columns 0 .. 3: 2 x 16 of 192 positions, so M = 6 there, 0 elsewhere
    assert maps.maps.shape == (8, 3, 8, 8)
    assert maps.maps[0, 1, 0, 0] == pytest.approx(6.0) and maps.maps[0, 0, 0, 0] == 0.0 and maps.maps[0, 1, 4, 4] == 0.0
    assert maps.inside_mass[0] == pytest.approx(1.0) and math.isnan(maps.inside_mass[1])
    assert (maps.maps[1] == 1).all() and (maps.maps[2] == 1).all()
    # apply_to all: the better sample is localized too; a named source reads that component only
    both = credit_maps(details[:2], [True, True], [-1.0, 1.0], LocalizeSettings(enabled=True, apply_to="all", dilate=0.0), **geometry)
    assert both.localized.tolist() == [True, True]
    named = credit_maps(details[7:], [True], [-1.0], LocalizeSettings(enabled=True, source="unified_reward"), **geometry)
    assert named.missing.tolist() == [True] and not named.localized.any()
    # with outside > 0 the mass inside is its share: 32 positions of weight 1 and 160 of 0.5 -> 32 / 112
    soft = credit_maps(details[:1], [True], [-1.0], LocalizeSettings(enabled=True, outside=0.5, dilate=0.0), **geometry)
    assert soft.inside_mass[0] == pytest.approx(32 / 112)


def test_evidence_is_read_or_refused_with_the_reason():
    assert read_evidence(_details()) == Evidence((0.25, 0.5), ((0.25, ((0.0, 0.0, 500.0, 500.0),)),))
    assert read_evidence(_details(status="normal")) is None and read_evidence({"x": 1}) is None
    with pytest.raises(EvidenceError, match="four numbers"):
        read_evidence({"status": "abnormal", "window_s": [0, 1], "boxes": [{"time_s": 0.1, "boxes": [[1, 2, 3]]}]})
    with pytest.raises(EvidenceError, match="x0 < x1"):
        read_evidence({"status": "abnormal", "window_s": [0, 1], "boxes": [{"time_s": 0.1, "boxes": [[5, 2, 3, 9]]}]})
    with pytest.raises(EvidenceError, match="start < end"):
        read_evidence({"status": "abnormal", "window_s": [1.0, 0.5], "boxes": []})
    with pytest.raises(EvidenceError, match="two numbers"):
        read_evidence({"status": "abnormal", "window_s": [1, "x"], "boxes": []})


def test_position_log_density_averages_to_the_per_sample_log_prob():
    torch.manual_seed(0)
    x, mean = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    std = torch.tensor([0.5, 2.0])
    per_position = position_log_density(x, mean, std)
    assert per_position.shape == (2, 3, 2, 2)
    torch.testing.assert_close(per_position.mean(dim=(1, 2, 3)), gaussian_log_prob(x, mean, std), rtol=0, atol=1e-6)
    # one element by hand: log N(x; m, s) = -(x - m)^2 / (2 s^2) - log s - log(2 pi) / 2, channel mean
    manual = (-((x[1, :, 2, 1, 0] - mean[1, :, 2, 1, 0]) ** 2) / (2 * 4.0) - math.log(2.0) - 0.5 * math.log(2 * math.pi)).mean()
    assert float(per_position[1, 2, 1, 0]) == pytest.approx(float(manual), abs=1e-6)
    step = sde_step(x, mean, 0.8, 0.6, 0.5, noise=torch.randn_like(x), positions=True)
    torch.testing.assert_close(step.log_prob, step.log_prob_map.mean(dim=(1, 2, 3)))


def test_a_uniform_map_gives_the_per_position_formula():
    # maps of ones: loss = mean_b w_b mean_p max(-A_b r_bp, -A_b clip(r_bp)), r_bp = exp(logp - old)
    log_prob = torch.tensor([[[[0.0, 0.3], [-0.3, 0.05]]], [[[0.1, -0.1], [0.4, 0.0]]]])  # (2, 1, 2, 2)
    old = torch.zeros_like(log_prob)
    advantages = torch.tensor([1.0, -2.0])
    loss, metrics = localized_policy_loss(log_prob, old, advantages, torch.ones_like(log_prob), 0.2, 0.2)
    # sample 0 (A = 1): r = 1, e^0.3 = 1.3499 -> clipped to 1.2 (min of r A and clip(r) A = 1.2),
    # e^-0.3 = 0.7408 (min(0.7408, 0.8) = 0.7408), e^0.05 = 1.0513 -> -(1 + 1.2 + 0.7408 + 1.0513) / 4
    s0 = -(1.0 + 1.2 + math.exp(-0.3) + math.exp(0.05)) / 4
    # sample 1 (A = -2): -min(-2 r, -2 clip(r)) = 2 max(r, clip(r)): e^0.1 = 1.1052, e^-0.1 = 0.9048,
    # e^0.4 = 1.4918 (max with 1.2 -> 1.4918), 1 -> 2 * (1.1052 + 0.9048 + 1.4918 + 1) / 4
    s1 = 2 * (math.exp(0.1) + math.exp(-0.1) + math.exp(0.4) + 1.0) / 4
    assert float(loss) == pytest.approx((s0 + s1) / 2, rel=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(3 / 8)  # e^0.3, e^-0.3 and e^0.4 lie outside [0.8, 1.2]
    # not the scalar estimator: that one clips the ratio of the per-sample means
    scalar = clipped_surrogate(log_prob.mean(dim=(1, 2, 3)), advantages, 0.2, 0.2).mean()
    assert float(scalar) != pytest.approx(float(loss), rel=1e-3)
    # a map scales each position's advantage: doubling one position's weight (and halving another's
    # so the mean stays 1) moves the loss by A * (2 - 1) * r_p and A * (0.5 - 1) * r_q at unclipped ratios
    maps = torch.ones_like(log_prob)
    maps[0, 0, 0, 0], maps[0, 0, 1, 0] = 2.0, 0.0
    moved, _ = localized_policy_loss(log_prob, old, advantages, maps, 0.2, 0.2)
    assert float(moved - loss) == pytest.approx(-(1.0 * 1.0 - math.exp(-0.3)) / 4 / 2, rel=1e-5)


def test_outside_zero_sends_no_gradient_through_positions_outside_the_region():
    torch.manual_seed(1)
    log_prob_map = (0.01 * torch.randn(2, 3, 4, 4)).requires_grad_(True)  # ratios inside the clip range
    old = torch.zeros(2, 3, 4, 4)
    evidence = [_details(window=(0.25, 0.5), box=(0, 0, 500, 500)), _details()]
    maps = credit_maps(evidence, [True, True], [-1.0, 1.0], LocalizeSettings(enabled=True, dilate=0.0), num_frames=9, fps=16.0, height=32, width=32,
                       patch=(1, 1, 1))
    credit = torch.as_tensor(maps.maps)
    loss, _ = flow_grpo_loss(log_prob_map.mean(dim=(1, 2, 3)), old.mean(dim=(1, 2, 3)), torch.tensor([-1.0, 1.0]), clip_range=0.2,
                             log_prob_map=log_prob_map, old_log_prob_map=old, credit=credit)
    loss.backward()
    grad = log_prob_map.grad
    region = credit[0] > 0
    # sample 0 (negative, localized on latent frames 1-2, rows / columns 0-1 of the 4 x 4 grid)
    assert region.sum() == 2 * 2 * 2 and bool(region[1, 0, 0]) and not bool(region[0, 0, 0])
    assert (grad[0][~region] == 0).all() and (grad[0][region] != 0).all()
    # sample 1 (positive: uniform) gets gradient everywhere
    assert (grad[1] != 0).all()


# ---------------------------------------------------------------------------------------
# Confinement: the per-position KL to the reference outside the located defect
# ---------------------------------------------------------------------------------------
def test_hold_map_weighs_the_outside_and_follows_soft_edges():
    coverage = np.array([[[1.0, 0.25], [0.0, 0.0]]], dtype=np.float32)
    # confine * (1 - coverage): 0 on the region, 2 off it, 2 * 0.75 = 1.5 on a quarter-covered cell
    assert hold_map(coverage, 2.0).tolist() == [[[0.0, 1.5], [2.0, 2.0]]]


def test_confined_kl_by_hand_and_equal_to_the_recipes_kl_when_it_holds_everything():
    # B = 2, C = 2, one frame of 1 x 2 positions; std 0.5 for sample 0, 1.0 for sample 1
    mean = torch.tensor([[[[[1.0, 0.0]]], [[[3.0, 0.0]]]], [[[[0.0, 2.0]]], [[[0.0, 0.0]]]]])
    ref = torch.zeros_like(mean)
    std = torch.tensor([0.5, 1.0])
    hold = torch.tensor([[[[0.0, 4.0]]], [[[1.0, 1.0]]]])
    # channel means of (mean - ref)^2: sample 0 positions (1 + 9) / 2 = 5 and 0; sample 1: 0 and 2
    # sample 0: mean_p hold * d2 = (0 * 5 + 4 * 0) / 2 = 0; sample 1: (1 * 0 + 1 * 2) / 2 = 1, / (2 * 1) = 0.5
    # mean over the batch: 0.25; with weights (1, 0): 0
    assert float(confined_kl(mean, ref, std, hold)) == pytest.approx(0.25)
    assert float(confined_kl(mean, ref, std, hold, torch.tensor([1.0, 0.0]))) == pytest.approx(0.0)
    # sample 0 held where its difference is: (4 * 5 + 0) / 2 = 10, / (2 * 0.25) = 20 -> (20 + 0.5) / 2
    assert float(confined_kl(mean, ref, std, hold.flip(-1))) == pytest.approx((20 + 0.5) / 2)
    # hold = beta everywhere is the recipe's KL times beta
    loss, parts = flow_grpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_range=0.2, mean=mean, ref_mean=ref, std=std, beta=0.3)
    assert float(confined_kl(mean, ref, std, torch.full_like(hold, 0.3))) == pytest.approx(0.3 * float(parts["kl"]))


def test_flow_grpo_loss_adds_the_confined_kl_and_its_gradient_reaches_only_held_positions():
    torch.manual_seed(0)
    mean = torch.randn(1, 16, 3, 8, 8, requires_grad=True)
    ref = torch.randn(1, 16, 3, 8, 8)
    hold = torch.zeros(1, 3, 8, 8)
    hold[0, 0] = 2.0  # held: latent frame 0 only
    maps = torch.ones(1, 3, 8, 8)
    logp = torch.zeros(1, 3, 8, 8)
    base, _ = flow_grpo_loss(logp.mean((1, 2, 3)), logp.mean((1, 2, 3)), torch.tensor([0.0]), clip_range=0.2, mean=mean, ref_mean=ref,
                             std=0.5, log_prob_map=logp, old_log_prob_map=logp, credit=maps)
    loss, parts = flow_grpo_loss(logp.mean((1, 2, 3)), logp.mean((1, 2, 3)), torch.tensor([0.0]), clip_range=0.2, mean=mean, ref_mean=ref,
                                 std=0.5, log_prob_map=logp, old_log_prob_map=logp, credit=maps, hold=hold)
    assert float((loss - base).detach()) == pytest.approx(float(parts["confine_kl"])) and float(parts["confine_kl"]) > 0
    loss.backward()
    assert mean.grad[:, :, 0].abs().sum() > 0 and mean.grad[:, :, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="needs mean, ref_mean and std"):
        flow_grpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), clip_range=0.2, log_prob_map=logp, old_log_prob_map=logp, credit=maps, hold=hold)


def test_which_samples_are_held():
    geometry = dict(num_frames=9, fps=16.0, height=64, width=64)
    details = [
        _details(),                                        # 0: worse than its group: localized and held
        _details(),                                        # 1: better than its group: whole-clip credit, but held off its defect
        _details(status="normal", window=None, box=None),  # 2: normal: not held (nothing says where not to change)
        _details(),                                        # 3: invalid: nothing
        {"status": "abnormal", "window_s": [0.5, 0.25], "boxes": []},  # 4: unreadable and better: neither, not missing
    ]
    maps = credit_maps(details, [True, True, True, False, True], [-1.0, 1.0, -1.0, -1.0, 1.0],
                       LocalizeSettings(enabled=True, dilate=0.0, confine=0.5), **geometry)
    assert maps.localized.tolist() == [True, False, False, False, False] and not maps.missing.any()
    held = maps.hold.reshape(5, -1).any(axis=1)
    assert held.tolist() == [True, True, False, False, False]
    # the box and window (latent frames 1-2, rows/columns 0-3) are free, every other position holds 0.5
    for i in (0, 1):
        assert (maps.hold[i, 1:, :4, :4] == 0).all() and maps.hold[i].sum() == pytest.approx(0.5 * (192 - 32))
    assert (maps.maps[1] == 1).all()  # holding a sample does not localize its credit
    assert credit_maps(details, [True] * 5, [-1.0] * 5, LocalizeSettings(enabled=True), **geometry).hold is None  # confine 0: off


# ---------------------------------------------------------------------------------------
# ViPO's own estimator (ziqi-nox/ViPO fastvideo/train_vipo_wan_fsdp.py at f5c99ce)
# ---------------------------------------------------------------------------------------
def test_vipo_scale_min_max_per_frame_then_per_video():
    # their lines 245/267: (m - min) / (max - min + 1e-8) per frame; line 306: the same over the video
    m = np.array([
        [[0.0, 2.0], [1.0, 1.0]],   # frame 0: min 0, max 2 -> 0, 1, 0.5, 0.5
        [[3.0, 3.0], [3.0, 3.0]],   # frame 1: constant -> 0 everywhere
        [[1.0, 0.5], [0.5, 0.5]],   # frame 2: min 0.5, max 1 -> 1, 0, 0, 0
    ], dtype=np.float32)
    expected = np.array([[[0, 1], [0.5, 0.5]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]], dtype=np.float32)
    np.testing.assert_allclose(vipo_scale(m), expected, atol=1e-7)
    # min-max undoes an affine map: our inside/outside weights do not change ViPO's map
    np.testing.assert_allclose(vipo_scale(0.2 + 3.0 * m), vipo_scale(m), atol=1e-6)
    assert not vipo_scale(np.ones((2, 2, 2), dtype=np.float32)).any()  # every frame constant: all 0


def test_vipo_policy_loss_equals_their_formula_by_hand():
    """ViPO's per-position loss, computed from their formula (train_vipo_wan_fsdp.py at f5c99ce:
    lines 424-425 the Gaussian log-density summed over channels; 1289 A * M; 1454 its clamp to
    +-adv_clip_max = 5; 1455-1457 max(-A r, -A clip(r, 1 - eps, 1 + eps)) and a plain mean over
    positions), against the path the trainer takes: channel means (position_log_density) x C."""
    # C = 2 channels, one frame of 1 x 2 positions; [channel][position]; std 0.1
    x_next = torch.tensor([[0.50, -1.00], [0.20, 0.30]]).reshape(1, 2, 1, 1, 2)
    mean_new = torch.tensor([[0.45, -0.98], [0.25, 0.30]]).reshape(1, 2, 1, 1, 2)
    mean_old = torch.tensor([[0.50, -0.95], [0.20, 0.32]]).reshape(1, 2, 1, 1, 2)
    new = position_log_density(x_next, mean_new, 0.1) * 2
    old = position_log_density(x_next, mean_old, 0.1) * 2
    # per position, summed over channels, the constants cancel in the ratio:
    #   position 0: new -(0.05^2 + 0.05^2) / (2 * 0.01) = -0.25, old 0 -> r = e^-0.25 = 0.7788008
    #   position 1: new -(0.02^2 + 0) / 0.02 = -0.02, old -(0.05^2 + 0.02^2) / 0.02 = -0.145 -> r = e^0.125 = 1.1331485
    ratio = torch.exp(new - old).reshape(-1)
    assert ratio.tolist() == pytest.approx([math.exp(-0.25), math.exp(0.125)], rel=1e-5)
    maps = torch.tensor([1.0, 0.4]).reshape(1, 1, 1, 2)
    # A = 1.5: A * M = (1.5, 0.6); eps = 1e-4:
    #   position 0: max(-1.5 * 0.7788008, -1.5 * 0.9999) = -1.1682012
    #   position 1: max(-0.6 * 1.1331485, -0.6 * 1.0001) = -0.60006 -> mean -0.8841306
    loss, _ = vipo_policy_loss(new, old, torch.tensor([1.5]), maps, 1e-4)
    assert float(loss) == pytest.approx(-0.8841305873, abs=1e-6)
    # eps = 0.2: position 1 max(-0.6798891, -0.72) = -0.6798891 -> mean -0.9240451
    assert float(vipo_policy_loss(new, old, torch.tensor([1.5]), maps, 0.2)[0]) == pytest.approx(-0.9240451232, abs=1e-6)
    # A = -1.5, eps = 1e-4: max(1.1682012, 1.49985) = 1.49985; max(0.6798891, 0.60006) = 0.6798891 -> 1.0898695
    assert float(vipo_policy_loss(new, old, torch.tensor([-1.5]), maps, 1e-4)[0]) == pytest.approx(1.0898695359, abs=1e-6)
    # the clamp acts on A * M: A = 8 -> (min(8, 5), 3.2) = (5, 3.2); eps = 1e-4:
    #   position 0: max(-5 * 0.7788008, -5 * 0.9999) = -3.894004; position 1: max(-3.2 * 1.1331485, -3.2 * 1.0001) = -3.20032
    assert float(vipo_policy_loss(new, old, torch.tensor([8.0]), maps, 1e-4)[0]) == pytest.approx((-5 * math.exp(-0.25) - 3.2 * 1.0001) / 2, abs=1e-6)
    # through flow_grpo_loss (the trainer's call): the same number; an asymmetric clip is refused
    via, _ = flow_grpo_loss(new.mean((1, 2, 3)), old.mean((1, 2, 3)), torch.tensor([1.5]), clip_range=1e-4, log_prob_map=new,
                            old_log_prob_map=old, credit=maps, estimator="vipo")
    assert float(via) == pytest.approx(-0.8841305873, abs=1e-6)
    with pytest.raises(ValueError, match="symmetrically"):
        flow_grpo_loss(new.mean((1, 2, 3)), old.mean((1, 2, 3)), torch.tensor([1.5]), clip_range=(0.1, 0.2), log_prob_map=new,
                       old_log_prob_map=old, credit=maps, estimator="vipo")


def test_vipo_maps_are_the_scaled_coverage_and_a_whole_frame_region_falls_back_to_uniform():
    geometry = dict(num_frames=9, fps=16.0, height=64, width=64)
    settings = LocalizeSettings(enabled=True, dilate=0.0, estimator="vipo")
    maps = credit_maps([_details(), {"status": "abnormal", "window_s": [0.25, 0.5], "boxes": []}], [True, True], [-1.0, -1.0], settings, **geometry)
    # the box and window: 1 on latent frames 1-2, rows/columns 0-3, 0 elsewhere (not mean 1)
    expected = np.zeros((3, 8, 8), dtype=np.float32)
    expected[1:, :4, :4] = 1.0
    np.testing.assert_allclose(maps.maps[0], expected, atol=1e-6)
    assert maps.localized.tolist() == [True, False] and maps.missing.tolist() == [False, True]
    assert "min-max" in maps.reasons[1] and (maps.maps[1] == 1).all()
    with pytest.raises(ValueError, match="estimator must be one of"):
        LocalizeSettings(estimator="dense")
    with pytest.raises(ValueError, match="confine must be >= 0"):
        LocalizeSettings(confine=-1.0)


def test_helios_credit_by_chunk_a_window_in_the_third_chunk_weights_its_steps_and_moves_with_the_window():
    from cac_align.rl.credit import chunk_credit, chunk_weights

    # Helios (docs/helios.md, "Credit by chunk"): 97 frames at 24 fps are 3 chunks of 33 decoded alone, so 27 latent
    # frames (Wan's rule over the whole clip would give 25): chunk c's latent 9c is frame 33c, latent 9c + j frames
    # 33c + 4(j - 1) + 1 .. 33c + 4j, the last chunk cut at frame 96
    groups = latent_frames(97, 4, chunk_frames=33)
    assert len(groups) == 27 and len(latent_frames(97, 4)) == 25
    assert [list(groups[k]) for k in (9, 10, 18, 19, 26)] == [[33], [34, 35, 36, 37], [66], [67, 68, 69, 70], [95, 96]]
    geometry = dict(num_frames=97, fps=24.0, height=32, width=32, chunk_frames=33)
    settings = LocalizeSettings(enabled=True)

    def weights(window):
        maps = credit_maps([{"status": "abnormal", "window_s": list(window), "boxes": []}], [True], [-1.0], settings, **geometry)
        assert maps.maps.shape == (1, 27, 4, 4) and maps.localized.tolist() == [True]
        return maps.maps, chunk_weights(maps.maps, 3)[0]

    # [3.0, 3.5) s holds frames 72 .. 83 (t = i / 24), in the third chunk (frames 66 .. 96): its latents 20 (71 .. 74) to
    # 23 (83 .. 86), whole frames (no box). The map is 27 / 4 = 6.75 on those 4 of 27 latent frames, 0 elsewhere (outside 0),
    # so the chunks' weights (each chunk's mean over its 9 latent frames) are 0, 0 and 4 x 6.75 / 9 = 3
    maps, third = weights((3.0, 3.5))
    assert third.tolist() == pytest.approx([0.0, 0.0, 3.0])
    # chunk 2's steps read its own 9 latent frames of the map, and only they: chunks 0 and 1 take none of the advantage
    own = chunk_credit(torch.as_tensor(maps), 2, 3)
    assert own.shape == (1, 9, 4, 4) and own[0, 2:6].unique().tolist() == [6.75] and own[0, [0, 1, 6, 7, 8]].abs().sum() == 0
    assert chunk_credit(torch.as_tensor(maps), 0, 3).abs().sum() == 0 and chunk_credit(maps, 0, 1) is maps  # one chunk: the whole map
    # control: the window moved to [1.5, 2.0) s (frames 36 .. 47: the second chunk's latents 10 .. 13) moves the weight there
    assert weights((1.5, 2.0))[1].tolist() == pytest.approx([0.0, 3.0, 0.0])
    # across the seam, [2.5, 3.0) s (frames 60 .. 71): chunk 1's latents 16 (58 .. 61), 17 (62 .. 65), chunk 2's 18 (66), 19, 20
    # (71): M = 27 / 5 = 5.4 on 5 frames, weights 2 x 5.4 / 9 = 1.2 and 3 x 5.4 / 9 = 1.8
    assert weights((2.5, 3.0))[1].tolist() == pytest.approx([0.0, 1.2, 1.8])
