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

    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", max_batch=3)
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
    backend = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu")
    req = request([0.2, 0.8, 0.4, 0.6, 1.0, 0.0], n=3)
    req.frames[1][0, 0, 0, 0] = float("nan")  # a corrupt frame
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.unirl"):
        out = backend.compute_rewards(req)
    assert np.isfinite(out.rewards).all() and out.successes == [True] * 6
    assert out.rewards[1] == pytest.approx((0.8 + 0.6) / 2, abs=1e-6)
    assert out.component_rewards["valid"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0] and "NaN or inf" in out.errors[1]
    assert their_advantages(out.rewards, 3)[1].item() == pytest.approx(0.0, abs=1e-5)
    assert "sample 1: " in caplog.text and "filled with their group's mean" in caplog.text
    assert unirl.invalid_counts()["filled"] >= 1


def test_fail_and_too_many_invalid_are_marked_failed_with_our_reasons(unirl):
    req = request([0.2, 0.8, 0.4, 0.6])
    req.frames[2][:] = 2.0  # out of [0, 1]
    out = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", invalid="fail").compute_rewards(req)
    assert out.successes == [True, True, False, True] and np.isfinite(out.rewards).all()
    assert "must lie in [0, 1]" in out.errors[2] and "invalid='fail'" in out.errors[2] and "cac_align reward 'spot'" in out.errors[2]
    for i in (0, 1):
        req.frames[i][:] = float("nan")
    out = unirl.CacAlignRewardBackend(reward="spot", sections=SPOT, device="cpu", max_invalid_fraction=0.5).compute_rewards(req)
    assert out.successes == [False, False, False, True]
    assert "3 of 4 samples invalid, more than max_invalid_fraction=0.5" in out.errors[0]


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


def test_importing_the_module_does_not_need_unirl():
    forget_modules("unirl")
    sys.modules.pop("cac_align.integrations.unirl", None)
    module = importlib.import_module("cac_align.integrations.unirl")
    assert "unirl" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="unirl"):
        module.CacAlignRewardBackend  # noqa: B018  (built from their base class when first asked for)
    sys.modules.pop("cac_align.integrations.unirl", None)
