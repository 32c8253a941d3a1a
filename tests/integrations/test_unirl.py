"""cac_align's rewards as a UniRL reward backend, without UniRL installed.

The stand-in (tests/fixtures/unirl_checkout, our words, citing ``unirl`` 0.2.0) gives the backend
base class and the request/response types; their advantage is written below in our words from
``types/sample.py`` 267-330. Their real package, Hydra config, ``RewardService`` and advantages run
our backend in tests/conformance/test_unirl_reward.py.
"""

from __future__ import annotations

import importlib
import logging
import sys

import numpy as np
import pytest
import torch

from cac_align.integrations import adapter
from cac_align.rewards import build_reward
from conftest import REPO_ROOT, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "unirl_checkout"
SPOT = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}}


@pytest.fixture
def unirl(monkeypatch):
    forget_modules("unirl")
    monkeypatch.syspath_prepend(str(CHECKOUT))
    sys.modules.pop("cac_align.integrations.unirl", None)  # our class subclasses theirs: built anew
    ours = importlib.import_module("cac_align.integrations.unirl")
    yield ours
    adapter.release_models()
    forget_modules("unirl")
    sys.modules.pop("cac_align.integrations.unirl", None)


def request(levels, n=2, frames=9, metadata=None, dtype=torch.float32):
    """Their request: videos as (T, C, H, W) frames in [0, 1] whose top-left quarter has brightness
    ``level`` (multiples of 1/255, exact through our uint8 frames), ``n`` samples per prompt."""
    from unirl.types.reward import RewardRequest

    videos = []
    for level in levels:
        video = torch.full((frames, 3, 32, 48), 0.5, dtype=dtype)
        video[:, :, :16, :24] = level
        videos.append(video)
    prompts = [f"prompt {i // n}" for i in range(len(levels))]
    return RewardRequest(frames=videos, generation_prompt=prompts, original_prompt=prompts, metadata=metadata or [{} for _ in levels],
                         sample_ids=[f"r0:p{i // n}/{i % n}" for i in range(len(levels))], group_ids=[f"r0:p{i // n}" for i in range(len(levels))])


def their_advantages(rewards, n, eps=1e-8):
    """UniRL's group advantage (types/sample.py 267-330, our words): per group of ``n`` siblings,
    ``(r - mean) / (std + 1e-8)`` over the finite rewards, population std; a non-finite reward is
    left out and gets 0."""
    r = torch.as_tensor(rewards, dtype=torch.float32).view(-1, n)
    finite = torch.isfinite(r)
    count = finite.sum(dim=1, keepdim=True).clamp_min(1)
    mean = torch.where(finite, r, torch.zeros_like(r)).sum(dim=1, keepdim=True) / count
    centered = torch.where(finite, r - mean, torch.zeros_like(r))
    std = ((centered**2).sum(dim=1, keepdim=True) / count).sqrt()
    return (centered / (std + eps)).view(-1)


def test_scores_in_order_equal_ours_with_a_valid_component(unirl):
    from unirl.reward.base import RewardBackend
    from unirl.types.reward import RewardResponse

    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", max_batch=3, fps=16)
    assert isinstance(backend, RewardBackend) and backend.is_available() and backend.preferred_input_kind == "video"
    assert backend.get_model_name() == "cac_align:spot"
    req = request([0.2, 0.8, 0.4, 0.6, 1.0, 0.0], dtype=torch.bfloat16)  # their VAE's dtype in the Wan recipe
    out = backend.compute_rewards(req)
    assert isinstance(out, RewardResponse)
    assert out.rewards == pytest.approx([0.8, 0.2, 0.6, 0.4, 0.0, 1.0], abs=1e-6)  # model batches of 3, input order
    assert out.successes == [True] * 6 and out.errors == [None] * 6 and out.component_rewards == {"valid": [1.0] * 6}
    ours = build_reward(SPOT["spot"])([v.float().permute(0, 2, 3, 1).numpy() for v in req.frames], None, [{"fps": 16}] * 6)
    assert out.rewards == pytest.approx(ours.scores.tolist(), abs=1e-7)


def test_fps_from_their_metadata_else_the_backends(unirl, caplog):
    # frames 0-3 dark in the spot, 4-8 bright: [0.25, 0.5) s is frames 4-7 at 16 fps, 2-3 at 8 fps
    req = request([0.5, 0.5], metadata=[{"fps": 8}, {}])
    for v in req.frames:
        v[:4, :, :16, :24], v[4:, :, :16, :24] = 0.0, 1.0
    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=16)
    with caplog.at_level(logging.INFO, logger="cac_align.integrations.unirl"):
        assert backend.compute_rewards(req).rewards == pytest.approx([1.0, 0.0])
    assert "frame rate from the mixed" in caplog.text
    req.metadata = [{}, {}]  # no fps in their rows: the backend's own
    assert unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=8).compute_rewards(req).rewards == pytest.approx([1.0, 1.0])


def test_an_invalid_sample_gets_its_groups_mean_never_nan(unirl, caplog):
    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=16, samples_per_prompt=3)
    req = request([0.2, 0.8, 0.4, 0.6, 1.0, 0.0], n=3)
    req.frames[1][0, 0, 0, 0] = float("nan")  # a corrupt frame
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.unirl"):
        out = backend.compute_rewards(req)
    assert np.isfinite(out.rewards).all() and out.successes == [True] * 6
    assert out.rewards[1] == pytest.approx((0.8 + 0.6) / 2, abs=1e-6)
    assert out.component_rewards["valid"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0] and "NaN or inf" in out.errors[1]
    assert their_advantages(out.rewards, 3)[1].item() == pytest.approx(0.0, abs=1e-5)
    assert "sample 1: " in caplog.text and "filled with their whole group's mean" in caplog.text
    assert unirl.invalid_counts()["filled"] >= 1


def test_fail_and_too_many_invalid_are_marked_failed_with_our_reasons(unirl):
    req = request([0.2, 0.8, 0.4, 0.6])
    req.frames[2][:] = 2.0  # out of [0, 1]
    out = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", invalid="fail", fps=16).compute_rewards(req)
    assert out.successes == [True, True, False, True] and np.isfinite(out.rewards).all()
    assert "must lie in [0, 1]" in out.errors[2] and "invalid='fail'" in out.errors[2] and "cac_align reward 'spot'" in out.errors[2]
    for i in (0, 1):
        req.frames[i][:] = float("nan")
    out = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", max_invalid_fraction=0.5, fps=16).compute_rewards(req)
    assert out.successes == [False, False, False, True]
    assert "3 of the 4 samples of this rollout scored so far are invalid, more than max_invalid_fraction=0.5" in out.errors[0]


def test_keys_are_checked_and_a_reward_that_does_not_load_is_not_available(unirl, caplog):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['fsp'\]"):
        unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, fsp=16)
    with pytest.raises(ValueError, match="invalid must be one of"):
        unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, invalid="drop")
    with pytest.raises(ValueError, match="unknown reward 'spto'"):
        unirl.CacAlignRewardBackend(reward="spto", sections=SPOT)
    with pytest.raises(ValueError, match="prompt_source"):  # theirs, checked by their base class
        unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, prompt_source="caption")
    with caplog.at_level(logging.ERROR, logger="cac_align.integrations.unirl"):
        missing = unirl.CacAlignRewardBackend(reward="judge", sections={"judge": {"name": "cac", "model": {"name": "/nonexistent/ckpt"}}}, device="cpu")
    assert not missing.is_available() and "no such directory" in caplog.text
    from cac_align.rewards import RewardError

    with pytest.raises(RewardError, match="not available: it failed to load .*no such directory"):
        missing.compute_rewards(request([0.2]))


def test_no_frame_rate_is_guessed(unirl):
    """Neither their rows nor the backend give a rate: refused naming the key and the common rates;
    the reward section's own source_fps is the last source (frames 4-8 bright: [0.25, 0.5) s is
    frames 4-7 at 16 fps, frames 2-3 at 8)."""
    req = request([0.5, 0.5])
    for v in req.frames:
        v[:4, :, :16, :24], v[4:, :, :16, :24] = 0.0, 1.0
    with pytest.raises(ValueError, match=r"no frame rate .*set fps .*\(Wan-2\.1 16, Wan2\.2 / LTX-2 24\)"):
        unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu").compute_rewards(req)
    at_8 = {"spot": {**SPOT["spot"], "source_fps": 8}}
    assert unirl.CacAlignRewardBackend(reward="spot", sections=at_8, device="cpu").compute_rewards(req).rewards == pytest.approx([1.0, 1.0])
    assert unirl.CacAlignRewardBackend(reward="spot", sections=at_8, device="cpu", fps=16).compute_rewards(req).rewards == pytest.approx([0.0, 0.0])


def rows(levels, groups, corrupt=()):
    """One call of their RewardStack: the given rows of a rollout (group ids ``r0:<prompt>``)."""
    req = request(levels, n=1)
    req.group_ids = [f"r0:{g}" for g in groups]
    req.sample_ids = [f"r0:{g}/{k}" for k, g in enumerate(groups)]
    req.generation_prompt = req.original_prompt = list(groups)
    for i in corrupt:
        req.frames[i][0, 0, 0, 0] = float("nan")
    return req


def test_a_group_in_pieces_is_excluded_never_filled_from_part_of_it(unirl):
    """RewardStack with micro_batch_size 2 on groups of 3 (stack.py 66-78): prompt a's rows arrive
    as [0.2, corrupt] then [0.6] (rewards 0.8, -, 0.4). Filling from the first piece would give 0.8,
    not the group's valid mean 0.6 (advantage 0.71 instead of 0). The corrupt row is excluded
    instead: NaN, which their advantage leaves out, so it gets 0 and its siblings are normalized
    over the two valid rows."""
    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=16, samples_per_prompt=3)
    first = backend.compute_rewards(rows([0.2, 0.9], ["a", "a"], corrupt=[1]))
    second = backend.compute_rewards(rows([0.6], ["a"]))
    assert first.successes == [True, True] and second.successes == [True]
    rewards = first.rewards + second.rewards
    assert rewards[0] == pytest.approx(0.8) and np.isnan(rewards[1]) and rewards[2] == pytest.approx(0.4)
    assert first.component_rewards["valid"] == [1.0, 0.0] and "its group has 2 of its samples in this call" in first.errors[1]
    adv = their_advantages(rewards, 3)
    assert adv.tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-5)  # (0.8 - 0.6) / 0.1, 0, (0.4 - 0.6) / 0.1
    # the same rows in one call: the whole group is there, the fill is its valid mean, advantage 0
    whole = backend.compute_rewards(rows([0.2, 0.9, 0.6], ["b", "b", "b"], corrupt=[1]))
    assert whole.rewards[1] == pytest.approx(0.6) and np.isfinite(whole.rewards).all()
    assert their_advantages(whole.rewards, 3)[1].item() == pytest.approx(0.0, abs=1e-5)
    # without samples_per_prompt nothing says the group is whole: excluded, not filled
    unknown = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=16).compute_rewards(rows([0.2, 0.9, 0.6], ["c"] * 3, corrupt=[1]))
    assert np.isnan(unknown.rewards[1]) and "samples_per_prompt is not set" in unknown.errors[1]


def test_one_row_calls_and_one_invalid_row_alone_do_not_stop_the_step(unirl):
    """micro_batch_size 1: every call is one row. A valid row scores; an invalid row alone is
    excluded (success, NaN, valid 0.0), never a stop; a second invalid row that makes more than
    max_invalid_fraction of the rollout's rows so far stops it, with the rollout's count."""
    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=16, samples_per_prompt=3)
    one = backend.compute_rewards(rows([0.2], ["a"]))
    assert one.rewards == pytest.approx([0.8]) and one.successes == [True]
    alone = backend.compute_rewards(rows([0.5], ["a"], corrupt=[0]))
    assert alone.successes == [True] and np.isnan(alone.rewards[0]) and alone.component_rewards["valid"] == [0.0]
    again = backend.compute_rewards(rows([0.5], ["a"], corrupt=[0]))
    assert again.successes == [False] and "2 of the 3 samples of this rollout scored so far are invalid" in again.errors[0]
    # a first call of one invalid row, on a fresh backend: excluded, not stopped
    fresh = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", fps=16)
    assert fresh.compute_rewards(rows([0.5], ["z"], corrupt=[0])).successes == [True]
    assert unirl.invalid_counts()["excluded"] >= 2


def test_importing_the_module_does_not_need_unirl():
    forget_modules("unirl")
    sys.modules.pop("cac_align.integrations.unirl", None)
    module = importlib.import_module("cac_align.integrations.unirl")
    assert "unirl" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="unirl"):
        module.CacAlignRewardBackend  # noqa: B018  (built from their base class when first asked for)
    sys.modules.pop("cac_align.integrations.unirl", None)
