"""Flow-GRPO drop-in: factories called the way that codebase's trainer calls them; invalid policies."""

from __future__ import annotations

import concurrent.futures
import sys

import numpy as np
import pytest
import torch

from cac_align.integrations import flow_grpo
from cac_align.rewards import RewardError

TINY = {
    "cac": {"name": "cac", "model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}},
    "unified_reward": {"name": "unified_reward", "model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4},
}


@pytest.fixture
def tiny_rewards():
    # each section states the rate of the arrays the trainer hands over (never guessed)
    flow_grpo.configure({**{name: {**section, "source_fps": 16.0} for name, section in TINY.items()},
                         "ur_cac": {"name": "ur_cac", "unified_reward": {k: v for k, v in TINY["unified_reward"].items() if k != "name"},
                                    "cac": {k: v for k, v in TINY["cac"].items() if k != "name"}, "source_fps": 16.0}})
    yield
    flow_grpo.configure()  # back to the defaults for other tests


def test_trainer_shaped_call(tiny_rewards):
    # As Flow-GRPO's train_wan2_1.py does: build with the accelerator device, submit to a thread
    # pool with the (B, F, C, H, W) videos in [0, 1], prompts and per-prompt metadata, read back
    # (dict of name -> scores, info) and turn each into a tensor.
    device = torch.device("cpu")
    with pytest.warns(UserWarning, match=r"different scales \(unified_reward on \[1, 4\], ur_cac on \[0, 1\]\)"):
        reward_fn = flow_grpo.multi_score(device, {"unified_reward": 0.5, "ur_cac": 1.0})
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    videos = torch.rand(4, 9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a cat", "a cat", "a dog", "a dog"]
    metadata = [{} for _ in prompts]
    future = executor.submit(reward_fn, videos, prompts, metadata, only_strict=True)
    rewards, reward_metadata = future.result()
    executor.shutdown()
    assert set(rewards) == {"unified_reward", "ur_cac", "avg", "invalid"}
    for value in rewards.values():
        assert isinstance(value, np.ndarray) and value.shape == (4,) and value.dtype == np.float32
        assert np.isfinite(value).all()
    # "avg" is Flow-GRPO's weighted sum of the named scores
    assert rewards["avg"] == pytest.approx(0.5 * rewards["unified_reward"] + 1.0 * rewards["ur_cac"], rel=1e-6)
    assert ((rewards["unified_reward"] >= 1) & (rewards["unified_reward"] <= 4)).all()  # UR v1 scale
    assert reward_metadata["ur_cac"]["invalid_indices"] == [] and reward_metadata["ur_cac"]["valid"] == [True] * 4
    tensors = {key: torch.as_tensor(value, device=device).float() for key, value in rewards.items()}
    assert tensors["avg"].shape == (4,)


def test_single_factory_shape(tiny_rewards):
    fn = flow_grpo.SCORE_FUNCTIONS["cac"]("cpu")
    scores, info = fn(torch.rand(2, 8, 3, 32, 32), ["a", "b"], [{}, {}])
    assert scores.shape == (2,) and ((scores > 0) & (scores < 1)).all()
    assert set(info) >= {"valid", "invalid_indices", "errors", "filled_indices"}


def test_invalid_policies_by_hand():
    scores = np.array([0.2, np.nan, 0.6, np.nan])
    valid = np.array([True, False, True, False])
    prompts = ["a", "a", "b", "c"]
    # group_mean: sample 1 takes prompt a's mean 0.2; prompt c has no valid sample -> the call's mean (0.2 + 0.6) / 2
    filled, which = flow_grpo._fill(scores, valid, prompts, None, "group_mean")
    assert filled.tolist() == pytest.approx([0.2, 0.2, 0.6, 0.4]) and which == [1, 3]
    dropped, _ = flow_grpo._fill(scores, valid, prompts, None, "drop")
    assert np.isnan(dropped[[1, 3]]).all()
    # a stop names each failed sample's reason: the first three and a count of the rest
    with pytest.raises(RewardError, match=r"invalid='fail': 2 failed: sample 1: no JSON; sample 3: non-finite score nan$"):
        flow_grpo._fill(scores, valid, prompts, None, "fail", {1: "no JSON", 3: "non-finite score nan"})
    with pytest.raises(RewardError, match=r"sample 3: invalid \(no reason given\)"):
        flow_grpo._fill(scores, valid, prompts, None, "fail")
    many = {i: f"reason {i}" for i in range(5)}
    with pytest.raises(RewardError, match=r"refusing to invent rewards\. 5 failed: sample 0: reason 0; sample 1: reason 1; sample 2: reason 2; and 2 more$"):
        flow_grpo._fill(np.full(5, np.nan), np.zeros(5, dtype=bool), list("aabbc"), None, "group_mean", many)


def test_configure_checks_names_and_sections(tmp_path):
    with pytest.raises(ValueError, match="unknown factory 'cacc'"):
        flow_grpo.configure({"cacc": {"name": "cac"}})
    with pytest.raises(ValueError, match="unknown key 'modle'"):
        flow_grpo.configure({"cac": {"name": "cac", "modle": {}}})
    with pytest.raises(ValueError, match="invalid must be one of"):
        flow_grpo.configure(invalid="zero")
    with pytest.raises(ValueError, match=r"unknown reward\(s\) \['pickscore'\]"):
        flow_grpo.multi_score("cpu", {"pickscore": 1.0})
    with pytest.raises(ValueError, match="score_dict is empty"):
        flow_grpo.multi_score("cpu", {})
    # The device reaches in-process models only; servers are left alone.
    placed = flow_grpo._on_device({"name": "ur_cac", "cac": {"model": {"name": "x"}},
                                   "unified_reward": {"model": {"name": "y", "backend": "openai"}}}, torch.device("cuda", 1))
    assert placed["cac"]["model"]["device"] == "cuda:1" and "device" not in placed["unified_reward"]["model"]


def test_examples_run_and_validate():
    import runpy

    from conftest import REPO_ROOT

    flow_grpo.configure(REPO_ROOT / "examples/flow_grpo_rewards.yaml")
    assert flow_grpo._settings["sections"]["unified_reward"]["scoring"] == "probs"
    assert flow_grpo._settings["sections"]["ur_cac"]["invalid"] == "drop"
    assert flow_grpo._settings["invalid"] == "drop"  # NaN for invalid samples: the default
    saved_path = list(sys.path)
    try:
        rewards = runpy.run_path(str(REPO_ROOT / "examples/flow_grpo_drop_in.py"))["main"]()
    finally:
        flow_grpo.configure()
        flow_grpo.release_models()
        sys.path[:] = saved_path
    # the example breaks sample 3: NaN reward, flagged, advantage 0; sample 2 is its group's only
    # valid sample: 0 as well; the "a cat jumps" pair gets equal and opposite advantages
    assert set(rewards) == {"ur_cac", "avg", "invalid", "advantages"}
    assert np.isnan(rewards["avg"][3]) and rewards["invalid"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert rewards["avg"][:3] == pytest.approx(rewards["ur_cac"][:3])
    advantages = rewards["advantages"]
    assert advantages[2] == 0.0 and advantages[3] == 0.0
    assert advantages[0] == pytest.approx(-advantages[1]) and advantages[0] != 0.0
    for name in [m for m in sys.modules if m == "flow_grpo" or m.startswith("flow_grpo.")]:
        del sys.modules[name]  # the example imported the stand-in checkout
