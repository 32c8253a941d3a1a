"""CombinedReward and ur_cac: weighted averages worked by hand, each invalid policy, bad weights, threads."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cac_align.rewards import RewardError, RewardOutput, build_reward
from cac_align.rewards.base import RewardBase
from cac_align.rewards.combine import CombinedReward
from cac_align.video import Video
from cac_align.vlm.backend import BackendBase


class FixedReward(RewardBase):
    """A reward with canned raw scores (NaN = invalid); records the inputs it was given."""

    def __init__(self, name, scores):
        self.name = name
        self.scores = np.array(scores, dtype=float)
        self.calls = []

    def __call__(self, videos, prompts, metadata=None):
        self.calls.append(list(videos))
        valid = ~np.isnan(self.scores)
        details = [{} if ok else {"error": f"{self.name} could not score", "error_kind": "parse"} for ok in valid]
        return RewardOutput(self.name, self.scores, valid, details)


def _videos(n):
    return [Video(np.full((4, 8, 8, 3), 10 * i, np.uint8), 4.0) for i in range(n)]


PROMPTS = ["p", "p", "q", "q", "r"]


def _combined(invalid):
    # ur raw on 1..4 (fixed -> [0, 1]): 4 -> 1, 1 -> 0, 2.5 -> 0.5, invalid, invalid
    # cac raw on 0..1:                  0.2, 0.8, invalid, 0.6, 0.5
    ur = FixedReward("ur", [4.0, 1.0, 2.5, np.nan, np.nan])
    cac = FixedReward("cac", [0.2, 0.8, np.nan, 0.6, 0.5])
    normalizers = [{"name": "fixed", "low": 1, "high": 4}, {"name": "fixed", "low": 0, "high": 1}]
    return CombinedReward([ur, cac], weights=[1.0, 3.0], normalizers=normalizers, invalid=invalid), ur, cac


def test_drop_policy_weighted_average_by_hand():
    reward, ur, cac = _combined("drop")
    out = reward(_videos(5), PROMPTS)
    # weights 1 : 3 -> 0.25 / 0.75.  sample 0: 0.25 * 1 + 0.75 * 0.2 = 0.4;  sample 1: 0.75 * 0.8 = 0.6
    assert out.scores[:2].tolist() == pytest.approx([0.4, 0.6])
    assert out.valid.tolist() == [True, True, False, False, False] and np.isnan(out.scores[2:]).all()
    assert out.details[2]["error"] == "cac: cac could not score"
    assert out.details[0]["components"]["ur"] == {"raw": 4.0, "normalized": 1.0, "valid": True, "error": None, "details": {}}
    assert out.info["failures"] == {"ur": {"parse": 2}, "cac": {"parse": 1}}
    assert out.info["invalid"] == {"ur": 2, "cac": 1} and out.info["weights"] == pytest.approx({"ur": 0.25, "cac": 0.75})
    # Both components saw the same decoded videos, decoded once.
    assert ur.calls[0] == cac.calls[0] and all(isinstance(v, Video) for v in ur.calls[0])


def test_group_mean_policy_borrows_from_the_same_prompt():
    reward, _, _ = _combined("group_mean")
    out = reward(_videos(5), PROMPTS)
    # sample 2 (prompt q): cac missing -> q's valid cac is 0.6;  0.25 * 0.5 + 0.75 * 0.6 = 0.575
    # sample 3 (prompt q): ur missing  -> q's valid ur is 0.5;   0.25 * 0.5 + 0.75 * 0.6 = 0.575
    # sample 4 (prompt r): ur missing and r has no valid ur to borrow -> still invalid
    assert out.scores[:4].tolist() == pytest.approx([0.4, 0.6, 0.575, 0.575])
    assert out.valid.tolist() == [True, True, True, True, False]
    assert out.details[2]["imputed"] == ["cac"] and out.details[3]["imputed"] == ["ur"]
    assert out.details[2]["components"]["cac"]["normalized"] == pytest.approx(0.6)
    assert out.info["imputed"] == {"ur": 1, "cac": 1}


def test_group_mean_needs_one_real_component():
    a = FixedReward("a", [0.5, np.nan])
    b = FixedReward("b", [0.5, np.nan])
    out = CombinedReward([a, b], invalid="group_mean")(_videos(2), ["p", "p"])
    assert out.valid.tolist() == [True, False]


def test_fail_policy_names_the_samples():
    reward, _, _ = _combined("fail")
    with pytest.raises(RewardError, match=r"sample 2 \(cac\).*sample 3 \(ur\)"):
        reward(_videos(5), PROMPTS)


def test_weights_and_shapes_are_checked():
    a, b = FixedReward("a", [0.1]), FixedReward("b", [0.2])
    for weights in ([1.0, 0.0], [1.0, -1.0], [1.0, math.nan]):
        with pytest.raises(ValueError, match="finite and > 0"):
            CombinedReward([a, b], weights=weights)
    with pytest.raises(ValueError, match="2 rewards but 1 weights"):
        CombinedReward([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="names must differ"):
        CombinedReward([a, FixedReward("a", [0.3])])
    with pytest.raises(ValueError, match="invalid must be one of"):
        CombinedReward([a], invalid="ignore")
    with pytest.raises(ValueError, match="1 videos but 2 prompts"):
        CombinedReward([a])(_videos(1), ["x", "y"])


def test_empty_batch_and_undecodable_video():
    a = FixedReward("a", [])
    out = CombinedReward([a])([], [])
    assert len(out) == 0 and out.scores.shape == (0,)
    # An unreadable file fails in every component with its decode error, nothing raised.
    from cac_align.rewards.unified import UnifiedReward

    class Never(BackendBase):
        def generate(self, *a, **k):
            raise AssertionError("no request should reach the model")

        choice_probs = generate

    out = CombinedReward([UnifiedReward(Never())])(["/nope.mp4"], ["x"])
    assert out.valid.tolist() == [False] and "/nope.mp4" in out.details[0]["error"]
    assert out.failure_counts() == {"video": 1}  # the component's own kind, not "other"


def test_group_normalizer_inside_a_combination():
    # z-scores within each prompt: p: {1, 3} -> -1, +1;  q: {2, 2} -> 0, 0
    a = FixedReward("a", [1.0, 3.0, 2.0, 2.0])
    out = CombinedReward([a], normalizers=[{"name": "group"}])(_videos(4), ["p", "p", "q", "q"])
    assert out.scores.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])
    # metadata "group" overrides the prompt as the group key: one group {1, 3, 2, 2}, mean 2,
    # std sqrt((1 + 1 + 0 + 0) / 4) = sqrt(0.5) -> -1.4142136, +1.4142136, 0, 0
    out = CombinedReward([a], normalizers=[{"name": "group"}])(_videos(4), ["p", "p", "q", "q"], [{"group": 0}] * 4)
    assert out.scores.tolist() == pytest.approx([-1.4142136, 1.4142136, 0.0, 0.0], rel=1e-6)


def test_ur_cac_on_tiny_models_is_the_average_of_normalized_scores():
    spec = {
        "name": "ur_cac",
        "unified_reward": {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32", "device": "cpu"}, "scoring": "probs", "num_frames": 4},
        "cac": {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32", "device": "cpu"}, "options": {"mode": "no_cot"}},
    }
    reward = build_reward(spec)
    frames = np.random.default_rng(0).uniform(0, 1, size=(3, 8, 3, 32, 32)).astype(np.float32)  # (B, F, C, H, W)
    out = reward(frames, ["a", "a", "b"])
    assert reward.name == "ur_cac" and out.valid.all()
    for i in range(3):
        parts = out.details[i]["components"]
        ur_norm = (parts["unified_reward"]["raw"] - 1.0) / 3.0  # v1 scale 1..4 -> [0, 1]
        assert parts["unified_reward"]["normalized"] == pytest.approx(ur_norm)
        assert out.scores[i] == pytest.approx(0.5 * ur_norm + 0.5 * parts["cac"]["raw"])  # CaC §4.2


def test_one_reward_object_is_safe_to_share_between_threads():
    spec = {"name": "unified_reward", "model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32", "device": "cpu"},
            "scoring": "probs", "num_frames": 4}
    reward = build_reward(spec)
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 1, size=(2, 6, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    serial = [reward(b, ["a", "b"]).scores for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda b: reward(b, ["a", "b"]).scores, batches))
    for s, p in zip(serial, parallel):
        assert np.allclose(s, p, rtol=1e-5)
