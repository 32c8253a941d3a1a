"""cac_align's rewards and evidence maps as a TeleBoost custom reward function, called as their
trainer calls it, without TeleBoost installed.

Their driver (Tele-AI/TeleBoost d4279ac, ``reward/execution/custom.py`` 111-128) calls
``fn(data, **reward_kwargs)`` with the rollout ``DataProto``; here ``data`` is a plain stand-in
with the same fields (``batch`` keyed by name, ``non_tensor_batch`` of numpy arrays). Their
advantage and ViPO broadcast are written below in our words from ``algorithms/grpo/advantage.py``
60-121 and ``programs/wan/vipo.py`` 48-75; the unmodified code is driven by
``tests/conformance/teleboost_check.py`` (docs/rewards.md, "TeleBoost").
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cac_align.rl.credit import LocalizeSettings, credit_maps
from cac_align.integrations import adapter, teleboost
from cac_align.rewards import RewardError, build_reward

SPOT = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}}
F, H, W = 9, 32, 48  # Wan-shaped: 4k + 1 frames, sides multiples of 16 -> latent grid (3, 4, 6)
GRID = (3, 4, 6)


@pytest.fixture(autouse=True)
def fresh():
    yield
    adapter.release_models()
    teleboost._SCORERS.clear()


def rollout(levels, n=3, maps=None):
    """A TeleBoost rollout batch: video_frames (B, 3, F, H, W) float32 in [0, 1], whose top-left
    quarter has brightness ``level`` (the rest 0.5; levels that are multiples of 1/255 survive the
    rewards' uint8 frames exactly); one prompt per ``n`` contiguous samples."""
    b = len(levels)
    frames = torch.full((b, 3, F, H, W), 0.5)
    for i, level in enumerate(levels):
        frames[i, :, :, : H // 2, : W // 2] = level
    batch = {"video_frames": frames}
    if maps is not None:
        batch["pixel_weight_maps"] = maps
    prompts = np.array([f"prompt {i // n}" for i in range(b)], dtype=object)
    uids = np.array([f"uid-{i // n}" for i in range(b)], dtype=object)
    return SimpleNamespace(batch=batch, non_tensor_batch={"caption": prompts, "uid": uids})


def their_advantages(rewards: torch.Tensor, n: int, eps: float = 1e-4) -> torch.Tensor:
    """TeleBoost's GRPO advantage (advantage.py 60-121, our words): each prompt's ``n`` contiguous
    samples, ``(r - mean) / (std + 1e-4)`` with the unbiased std."""
    groups = rewards.float().view(-1, n)
    return ((groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + eps)).view(-1)


def test_rewards_in_input_order_as_float32_equal_ours():
    data = rollout([0.2, 0.8, 0.4, 0.6, 1.0, 0.0])
    out = teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu")
    assert set(out) == {"rewards"} and out["rewards"].dtype == torch.float32 and out["rewards"].shape == (6,)
    # spot_brightness = 1 - the top-left quarter's brightness on the frames in [0.25, 0.5) s
    assert out["rewards"].tolist() == pytest.approx([0.8, 0.2, 0.6, 0.4, 0.0, 1.0], abs=1e-6)
    ours = build_reward(SPOT["spot"])([f.permute(1, 2, 3, 0).numpy() for f in data.batch["video_frames"]], None, [{"fps": 16}] * 6)
    assert out["rewards"].tolist() == pytest.approx(ours.scores.tolist(), abs=1e-7)


def test_fps_is_the_kwarg_they_cannot_pass():
    # frames 0-3 dark in the spot, 4-8 bright: at 16 fps the window [0.25, 0.5) s is frames 4-7,
    # at 8 fps it is frames 2-3
    data = rollout([0.5, 0.5])
    data.batch["video_frames"][:, :, :4, : H // 2, : W // 2] = 0.0
    data.batch["video_frames"][:, :, 4:, : H // 2, : W // 2] = 1.0
    at_16 = teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu")["rewards"]
    at_8 = teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=8, device="cpu")["rewards"]
    assert at_16.tolist() == pytest.approx([0.0, 0.0]) and at_8.tolist() == pytest.approx([1.0, 1.0])
    # TeleBoost passes none: with no fps kwarg the rate is the section's own source_fps, never a guess
    at_section = teleboost.compute_reward(data, reward="spot", sections={"spot": {**SPOT["spot"], "source_fps": 8}}, device="cpu")["rewards"]
    assert at_section.tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match=r"no frame rate .*set reward_kwargs\.fps .*\(Wan-2\.1 16, Wan2\.2 / LTX-2 24\)"):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, device="cpu")


def test_an_invalid_sample_gets_its_groups_mean_so_its_advantage_is_zero(caplog):
    data = rollout([0.2, 0.8, 0.4, 0.6, 1.0, 0.0])
    data.batch["video_frames"][1, 0, 0, 0, 0] = float("nan")  # a corrupt frame
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.teleboost"):
        rewards = teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu")["rewards"]
    assert torch.isfinite(rewards).all()
    assert rewards[1].item() == pytest.approx((0.8 + 0.6) / 2, abs=1e-6)  # the mean of its group's valid samples
    advantages = their_advantages(rewards, 3)
    assert advantages[1].item() == pytest.approx(0.0, abs=1e-5) and torch.isfinite(advantages).all()
    assert "sample 1: " in caplog.text and "NaN or inf" in caplog.text  # the reason is logged
    counts = teleboost.invalid_counts()
    assert counts["invalid"] >= 1 and counts["filled"] >= 1


def test_a_group_with_no_valid_sample_gets_the_steps_mean_advantage_zero():
    data = rollout([0.2, 0.8, 0.4, 0.6, 1.0, 0.0])
    data.batch["video_frames"][3:] = float("nan")  # the whole second group: 3 of 6, at the default limit of 0.5
    with pytest.raises(RewardError, match="3 of 6 samples could not be scored"):  # above a limit of 0.4
        teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu", max_invalid_fraction=0.4)
    rewards = teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu")["rewards"]
    assert rewards[3:].tolist() == pytest.approx([(0.8 + 0.2 + 0.6) / 3] * 3, abs=1e-6)
    assert their_advantages(rewards, 3)[3:].tolist() == [0.0, 0.0, 0.0]


def test_fail_and_too_many_invalid_stop_with_each_reason():
    data = rollout([0.2, 0.8, 0.4, 0.6])
    data.batch["video_frames"][2] = 2.0  # out of [0, 1]
    with pytest.raises(RewardError, match=r"invalid='fail': 1 failed: sample 2: .*must lie in \[0, 1\]"):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu", invalid="fail")
    data.batch["video_frames"][:3] = float("nan")
    with pytest.raises(RewardError, match=r"3 of 4 samples could not be scored .*sample 0: .*sample 1: .*sample 2: "):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu")


def test_settings_are_checked_by_name():
    data = rollout([0.2, 0.8])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['fsp'\]"):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, fsp=16)
    with pytest.raises(ValueError, match="invalid must be one of"):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, invalid="drop")
    with pytest.raises(ValueError, match=r"localize: unknown key\(s\) \['outside'\] \(ViPO scales the map itself"):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, localize={"outside": 0.1})
    with pytest.raises(ValueError, match="unknown reward 'spto'"):
        teleboost.compute_reward(data, reward="spto", sections=SPOT)
    with pytest.raises(ValueError, match="no pixel_weight_maps; turn ViPO on"):
        teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu", localize=True)


def expected_region_map() -> np.ndarray:
    """By hand: the spot [0, 0, 500, 500] of a 32 x 48 frame is pixels x 0-24, y 0-16 (no
    dilation), during [0.25, 0.5) s = frames 4-7 at 16 fps. Wan's VAE: latent frame 1 holds pixel
    frames 1-4, latent frame 2 frames 5-8; 8 x 8 pixels a latent: columns 0-2, rows 0-1, widened
    to whole 1 x 2 x 2 patches: columns 0-3. ViPO's min-max leaves 1 there and 0 elsewhere (latent
    frame 0, untouched, is constant: 0)."""
    m = np.zeros(GRID, dtype=np.float32)
    m[1:3, 0:2, 0:4] = 1.0
    return m


def test_our_evidence_replaces_their_map_on_the_worse_samples_and_A_times_M_is_ours():
    theirs = torch.rand(6, *GRID, generator=torch.Generator().manual_seed(0))
    before = theirs.clone()
    data = rollout([0.2, 0.8, 0.4, 0.6, 1.0, 0.0], maps=theirs)
    out = teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu", localize={"dilate": 0})
    after = data.batch["pixel_weight_maps"]
    assert after is theirs  # written in place, where ViPO reads it
    rewards = out["rewards"]  # 0.8 0.2 0.6 | 0.4 0.0 1.0: group means 0.533 and 0.467
    worse = [1, 3, 4]
    for i in range(6):
        if i in worse:
            assert after[i].numpy() == pytest.approx(expected_region_map())
        else:
            assert torch.equal(after[i], before[i])  # others: keep (their saliency)
    # their broadcast A * M (vipo.py 70) equals what our Flow-GRPO's estimator: vipo trains on
    dense = their_advantages(rewards, 3).view(-1, 1, 1, 1) * after
    settings = LocalizeSettings(enabled=True, dilate=0, estimator="vipo")
    ours = credit_maps([{"status": "abnormal", "window_s": [0.25, 0.5], "boxes": [{"time_s": t / 16, "boxes": [[0, 0, 500, 500]]} for t in range(4, 8)]}] * 6,
                       [True] * 6, their_advantages(rewards, 3).numpy(), settings, num_frames=F, fps=16, height=H, width=W)
    assert ours.localized.tolist() == [i in worse for i in range(6)]
    for i in worse:
        assert dense[i].numpy() == pytest.approx(their_advantages(rewards, 3)[i].item() * ours.maps[i], abs=1e-6)
    assert teleboost.invalid_counts()["localized"] >= 3


def test_others_uniform_makes_every_A_times_M_ours_and_multiply_keeps_their_saliency_inside():
    theirs = torch.rand(6, *GRID, generator=torch.Generator().manual_seed(1))
    before = theirs.clone()
    data = rollout([0.2, 0.8, 0.4, 0.6, 1.0, 0.0], maps=theirs)
    teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu", localize={"dilate": 0, "others": "uniform", "apply_to": "all"})
    region = expected_region_map()
    for i in range(5):  # apply_to: all (every sample is off its group's mean here): the region's map
        assert theirs[i].numpy() == pytest.approx(region)
    assert (theirs[5] == 1).all()  # a black spot is judged normal (no defect located): uniform, as in our Flow-GRPO
    theirs.copy_(before)
    teleboost.compute_reward(data, reward="spot", sections=SPOT, fps=16, device="cpu", localize={"dilate": 0, "combine": "multiply"})
    product = before[1].numpy() * region
    expected = (product - product.min()) / (product.max() - product.min() + 1e-8)
    assert theirs[1].numpy() == pytest.approx(expected, abs=1e-6)
    assert float(theirs[1].max()) == pytest.approx(1.0, abs=1e-6) and (theirs[1].numpy()[region == 0] == 0).all()


def test_missing_or_malformed_evidence_keeps_the_map_and_never_crashes():
    theirs = torch.rand(4, *GRID, generator=torch.Generator().manual_seed(2))
    before = theirs.clone()
    details = [{"status": "abnormal", "window_s": [0.5, 0.25], "boxes": []},  # a window that ends before it starts
               {"status": "abnormal", "window_s": None, "boxes": []},  # abnormal without evidence
               {"status": "normal", "window_s": None, "boxes": []}, {}]  # normal: nothing to localize, nothing missing; {}: no evidence
    maps, credit = teleboost.evidence_maps(details, [True] * 4, np.array([-1.0, -1.0, -1.0, -1.0]), before.numpy(), 16.0, F, H, W,
                                           teleboost.MapSettings(enabled=True))
    assert not credit.localized.any() and credit.missing.tolist() == [True, True, False, True]
    assert np.array_equal(maps, before.numpy())
    with pytest.raises(ValueError, match=r"latent grid \(3, 4, 5\), but 9 frames of 32x48 give \(3, 4, 6\) \(8 pixels per latent\) or \(3, 2, 3\) \(16"):
        teleboost.evidence_maps(details, [True] * 4, np.zeros(4), np.zeros((4, 3, 4, 5), np.float32), 16.0, F, H, W, teleboost.MapSettings(enabled=True))


def test_on_a_wan22_ti2v_grid_the_map_is_written_on_that_grid():
    """A TeleBoost run of Wan2.2-TI2V-5B: its VAE puts 16 x 16 pixels in a latent, so 9 frames of
    64 x 96 are a (3, 4, 6) grid (not Wan-2.1's (3, 8, 12)). By hand: the window [0.25, 0.5) s at
    16 fps is frames 4 .. 7 -> latent frames 1 (1 .. 4) and 2 (5 .. 8); the top-left quarter (y 0 .. 32,
    x 0 .. 48 px) touches latent rows 0 .. 1 and columns 0 .. 2, and with hard edges every 2 x 2
    patch it touches: rows 0 .. 1, columns 0 .. 3."""
    details = [{"status": "abnormal", "window_s": [0.25, 0.5], "boxes": [{"time_s": t / 16, "boxes": [[0, 0, 500, 500]]} for t in range(4, 8)]}]
    theirs = np.full((1, 3, 4, 6), 0.5, dtype=np.float32)
    maps, credit = teleboost.evidence_maps(details, [True], np.array([-1.0]), theirs, 16.0, 9, 64, 96,
                                           teleboost.MapSettings(enabled=True, dilate=0))
    assert maps.shape == (1, 3, 4, 6) and credit.localized.tolist() == [True]
    inside = maps[0] > 0
    assert np.flatnonzero(inside.any(axis=(1, 2))).tolist() == [1, 2]
    assert np.flatnonzero(inside[1].any(axis=1)).tolist() == [0, 1] and np.flatnonzero(inside[1].any(axis=0)).tolist() == [0, 1, 2, 3]
