"""cac_align's rewards as a FastVideo ``RewardScorer``, without FastVideo installed.

The scorer's contract is theirs (``fastvideo`` 0.2.1, ``train/methods/rl/rewards/media.py``):
``media [B, C, T, H, W]`` float (their ``decode_latents``: in [0, 1]) and prompts in, ``[B]`` out.
Their advantage is written below in our words from ``DiffusionNFTMethod._compute_advantages``
(``train/methods/rl/diffusion_nft.py``); the real package runs our scorer through it in
tests/conformance/test_fastvideo_nft.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cac_align.integrations import adapter
from cac_align.integrations import fastvideo as fv
from cac_align.rewards.base import RewardError

# the defect: the top-left quarter during [0.25, 0.5) s; at 8 fps that is frames 2 and 3 of 9
SPOT = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5], "source_fps": 8}}
SPOT_NO_FPS = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}}


@pytest.fixture(autouse=True)
def _release():
    yield
    adapter.release_models()


def media(levels, frames=(2, 3), t=9):
    """Their media [B, 3, T, H, W] float32: grey 0.6, the top-left quarter at ``level`` on
    ``frames`` only (levels that are multiples of 1/255, exact through our uint8 reading; frame 0
    never lit)."""
    out = torch.full((len(levels), 3, t, 16, 24), 0.6)
    for b, level in enumerate(levels):
        out[b, :, list(frames), :8, :12] = level
    return out


def their_advantages(rewards, prompts, eps=1e-4):
    """FastVideo's advantage (``_compute_advantages``, our words): per prompt text,
    ``(r - mean) / (population std + 1e-4)``; no mask."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    adv = torch.empty_like(r)
    for p in set(prompts):
        idx = torch.tensor([i for i, q in enumerate(prompts) if q == p])
        g = r[idx]
        adv[idx] = (g - g.mean()) / (g.std(unbiased=False) + eps)
    return adv


def test_every_frame_at_the_sections_rate_in_input_order():
    scorer = fv.CacAlignRewardScorer("spot", SPOT, device="cpu", max_batch=2)
    assert scorer.fps == 8.0  # from the section's source_fps
    out = scorer(media([0.2, 0.8, 0.4]), ["a", "b", "c"])
    assert out.dtype == torch.float32 and out.shape == (3,)
    # frames 2-3 lit: 1 - level; a first-frame reader would see grey (0.6) in all three
    assert out.tolist() == pytest.approx([0.8, 0.2, 0.6], abs=1e-6)
    assert scorer.last == {"valid": [True] * 3, "errors": {}, "filled": []}
    # the scorer's own fps wins: at 16 fps the window is frames 4-7, which are grey here
    at16 = fv.CacAlignRewardScorer("spot", SPOT, fps=16, device="cpu")
    assert at16.fps == 16.0 and at16(media([0.2, 0.8, 0.4]), ["a", "b", "c"]).tolist() == pytest.approx([0.4] * 3, abs=1e-6)
    assert at16(media([0.2], frames=(4, 5, 6, 7)), ["a"]).tolist() == pytest.approx([0.8], abs=1e-6)


def test_no_frame_rate_is_refused_at_build():
    with pytest.raises(ValueError, match=r"fps \(or source_fps in the reward's section"):
        fv.CacAlignRewardScorer("spot", SPOT_NO_FPS, device="cpu")
    assert fv.CacAlignRewardScorer("spot", SPOT_NO_FPS, fps=8, device="cpu").fps == 8.0


def test_wrong_media_raises_one_line():
    scorer = fv.CacAlignRewardScorer("spot", SPOT, device="cpu")
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\].*got \(2, 9, 3, 16, 24\)"):
        scorer(media([0.2, 0.4]).permute(0, 2, 1, 3, 4), ["a", "b"])  # [B, T, C, H, W]
    with pytest.raises(ValueError, match="float in \\[0, 1\\].*torch.uint8"):
        scorer((media([0.2]) * 255).to(torch.uint8), ["a"])
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        scorer(media([0.2, 0.4]), ["a"])
    with pytest.raises(ValueError, match="invalid must be one of"):
        fv.CacAlignRewardScorer("spot", SPOT, invalid="drop", device="cpu")  # NaN has no place in their advantages


def test_a_failed_sample_gets_its_groups_mean_and_their_advantage_zero():
    scorer = fv.CacAlignRewardScorer("spot", SPOT, device="cpu")
    m = media([0.2, 0.4, 0.6, 0.0, 0.2, 0.4])
    m[2, :, 2] = 1.5  # out of [0, 1]: our reward refuses the sample (never clipped)
    prompts = ["a", "a", "a", "b", "b", "b"]
    out = scorer(m, prompts)
    # group a: valid 0.8 and 0.6 -> the invalid one gets 0.7 (by hand); group b untouched
    assert out.tolist() == pytest.approx([0.8, 0.6, 0.7, 1.0, 0.8, 0.6], abs=1e-6)
    assert scorer.last["valid"] == [True, True, False, True, True, True] and scorer.last["filled"] == [2]
    assert "must lie in [0, 1]" in scorer.last["errors"][2]  # the reason, kept
    adv = their_advantages(out, prompts)
    assert abs(float(adv[2])) < 1e-5  # r = 0.5 in the NFT loss
    # the valid ones keep their order and sign: 0.8 -> +, 0.6 -> -; std over 3 = sqrt(2/3) * 0.1
    assert float(adv[0]) == pytest.approx(0.1 / (np.sqrt(2 / 3) * 0.1 + 1e-4), rel=1e-4) and float(adv[1]) < 0


def test_fail_and_too_many_invalid_raise_with_the_reason():
    m = media([0.2, 0.4, 0.6, 0.1])
    m[1, :, 2] = float("nan")
    with pytest.raises(RewardError, match=r"invalid='fail'.*sample 1"):
        fv.CacAlignRewardScorer("spot", SPOT, invalid="fail", device="cpu")(m, ["a", "a", "b", "b"])
    m[2, :, 2] = 2.0
    with pytest.raises(RewardError, match=r"2 of 4 samples invalid, more than max_invalid_fraction=0.25"):
        fv.CacAlignRewardScorer("spot", SPOT, max_invalid_fraction=0.25, device="cpu")(m, ["a", "a", "b", "b"])


def test_groups_split_over_ranks_fill_from_the_other_rank():
    """Rank 1 holds one valid and one invalid copy of prompt "a"; rank 0 holds two valid ones
    (what the injected gather returns). The fill is the mean over all three valid copies, as their
    gathered advantage groups them."""
    rank0 = (["a", "a"], [1.0, 0.8], [True, True], {})

    def gather(mine):
        return [rank0, mine], 1

    scorer = fv.CacAlignRewardScorer("spot", SPOT, device="cpu", gather=gather)
    m = media([0.4, 0.4])
    m[1, :, 3] = -0.5
    out = scorer(m, ["a", "a"])
    assert out.tolist() == pytest.approx([0.6, 0.8], abs=1e-6)  # (1.0 + 0.8 + 0.6) / 3 = 0.8, not rank 1's own 0.6
    assert scorer.last["filled"] == [1]
    adv = their_advantages([1.0, 0.8, *out.tolist()], ["a"] * 4)
    assert abs(float(adv[3])) < 1e-5


def test_fill_groups_by_hand():
    filled, mask = fv.fill_groups(np.array([1.0, np.nan, 3.0, 0.0, 5.0]), np.array([True, False, True, False, True]), ["x", "x", "x", "y", "z"])
    # x: (1 + 3) / 2 = 2; y has no valid member: the mean of all valid, (1 + 3 + 5) / 3 = 3
    assert filled.tolist() == [1.0, 2.0, 3.0, 3.0, 5.0] and mask.tolist() == [False, True, False, True, False]
    with pytest.raises(RewardError, match="none of the 2 samples"):
        fv.fill_groups(np.array([0.0, 0.0]), np.array([False, False]), ["x", "x"])
