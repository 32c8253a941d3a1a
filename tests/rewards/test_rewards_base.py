"""The reward contract: outputs, inputs in every form, the registry, CaC as a reward, per-sample failures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cac_align.rewards import REWARDS, RewardOutput, build_reward, reward_config
from cac_align.rewards.base import ErrorKind, RewardBase, check_prompts, group_keys, load_inputs, score_in_chunks
from cac_align.rewards.cac import CaCReward
from cac_align.video import Video, VideoError, save_video
from conftest import smooth_video
from scripted import CONFIRM, NORMAL, ScriptedBackend, abnormal_turn1, tagged_video


def test_output_turns_non_finite_valid_scores_invalid():
    out = RewardOutput("r", [0.5, math.nan, math.inf, 0.1], [True, True, True, False])
    assert out.valid.tolist() == [True, False, False, False]
    assert out.scores[0] == 0.5 and np.isnan(out.scores[1:]).all()
    assert out.errors[1] == "non-finite score nan" and out.errors[2] == "non-finite score inf"
    assert out.failure_counts() == {"score": 2, "other": 1}
    with pytest.raises(ValueError, match="differ in length"):
        RewardOutput("r", [0.1, 0.2], [True])


def test_inputs_in_every_form_fail_per_sample(tmp_path):
    path = tmp_path / "v.mp4"
    save_video(Video(smooth_video(8, 32, 32), 8.0), path)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    float_tchw = np.random.default_rng(0).uniform(0, 1, (5, 3, 32, 32)).astype(np.float32)
    items = [str(path), Video(smooth_video(4, 32, 32), 4.0), smooth_video(6, 32, 32), float_tchw, str(tmp_path / "broken.mp4")]
    loaded = load_inputs(items, [{}, {}, {"fps": 6.0}, {}, {}], source_fps=16.0)
    assert [type(v).__name__ for v in loaded] == ["Video", "Video", "Video", "Video", "VideoError"]
    assert loaded[0].fps == 8.0  # a file carries its own rate
    assert loaded[2].fps == 6.0 and loaded[3].fps == 16.0  # metadata fps beats the default
    assert "broken.mp4" in str(loaded[4])
    batch = np.random.default_rng(0).uniform(0, 1, (3, 5, 3, 16, 16)).astype(np.float32)  # (B, F, C, H, W)
    assert [v.num_frames for v in load_inputs(batch, {"fps": 16.0})] == [5, 5, 5]
    assert isinstance(load_inputs([smooth_video(4, 32, 32)])[0], VideoError)  # an array with no fps anywhere
    nested = load_inputs([batch], {"fps": 16.0})[0]
    assert isinstance(nested, VideoError) and "batch of 3 videos" in str(nested)
    with pytest.raises(ValueError, match="not a single video"):
        load_inputs(str(path))
    with pytest.raises(ValueError, match="2 videos but 1 metadata"):
        load_inputs(items[:2], [{}])


def test_prompt_and_group_checks():
    assert check_prompts(2, None) == [None, None]
    with pytest.raises(ValueError, match="single string"):
        check_prompts(1, "a cat")
    assert group_keys(["a", "a", None, None]) == [("prompt", "a"), ("prompt", "a"), ("sample", 2), ("sample", 3)]
    assert group_keys(["a", "b"], [{"group": 7}, {"group": 7}]) == [("group", 7), ("group", 7)]


def test_registry_builds_by_name_and_dotted_path_and_names_typos():
    assert {"cac", "unified_reward", "ur_cac", "combined"} <= set(REWARDS)
    name, config = reward_config({"name": "unified_reward", "scoring": "probs"})
    assert name == "unified_reward" and config.scoring == "probs" and config.model.name == "CodeGoat24/UnifiedReward-qwen-7b"
    with pytest.raises(ValueError, match="unknown key 'scorng'; did you mean 'scoring'"):
        reward_config({"name": "unified_reward", "scorng": "probs"})
    with pytest.raises(ValueError, match="unknown reward 'unified'; did you mean 'unified_reward'"):
        reward_config({"name": "unified"})
    with pytest.raises(ValueError, match="scoring must be one of"):
        reward_config({"name": "unified_reward", "scoring": "vibes"})
    with pytest.raises(ValueError, match="missing 'name'"):
        reward_config({"scoring": "probs"})
    with pytest.raises(ValueError, match="weight must be a finite number > 0"):
        reward_config({"name": "combined", "components": [{"name": "cac", "weight": 0}]})
    # A dotted path is called with the other keys.
    reward = build_reward({"name": "test_rewards_base:make_constant", "value": 0.25})
    assert reward(["x", "y"], ["a", "b"]).scores.tolist() == [0.25, 0.25]


class Constant(RewardBase):
    name = "constant"

    def __init__(self, value):
        self.value = value

    def __call__(self, videos, prompts, metadata=None):
        return RewardOutput(self.name, [self.value] * len(videos), [True] * len(videos))


def make_constant(value: float) -> Constant:
    return Constant(value)


class CallOnly:  # scores, but has none of the rest of the contract
    name = "call_only"

    def __call__(self, videos, prompts, metadata=None):
        return RewardOutput(self.name, [1.0] * len(videos), [True] * len(videos))


def make_call_only() -> CallOnly:
    return CallOnly()


class NoCall(RewardBase):  # the defaults, but it never says how it scores
    name = "no_call"


def make_no_call() -> NoCall:
    return NoCall()


def test_a_factory_reward_must_have_the_whole_contract():
    # the trainers call state_dict / load_state_dict / to and read score_range and components directly,
    # so a reward without them is refused when it is built, naming what it lacks
    with pytest.raises(ValueError, match="lacks score_range, components, modality, reads_prompt, needs_prompt, modalities, state_dict, load_state_dict, to of the Reward contract; subclass"):
        build_reward({"name": "test_rewards_base:make_call_only"})
    with pytest.raises(ValueError, match="NoCall, which lacks __call__ of the Reward contract"):
        build_reward({"name": "test_rewards_base:make_no_call"})
    reward = build_reward({"name": "test_rewards_base:make_constant", "value": 0.5})
    assert reward.state_dict() == {} and reward.to("cpu") is reward and reward.score_range is None and reward.components == ()


def test_score_in_chunks_retries_a_failed_chunk_one_by_one():
    calls = []

    def score(chunk):
        calls.append(list(chunk))
        if 3 in chunk:
            raise ConnectionError("http://127.0.0.1:1/v1 unreachable")
        return [x * 10 for x in chunk]

    out = score_in_chunks(score, [1, 2, 3, 4, 5], batch_size=4, on_error=lambda item, exc: f"failed {item}: {exc}")
    assert out == [10, 20, "failed 3: http://127.0.0.1:1/v1 unreachable", 40, 50]
    assert calls == [[1, 2, 3, 4], [1], [2], [3], [4], [5]]
    # Anything that is not a backend failure is a bug and propagates.
    with pytest.raises(KeyError):
        score_in_chunks(lambda chunk: {}[0], [1], 1, on_error=lambda item, exc: None)


def test_cac_reward_scores_in_input_order_with_eq7():
    backend = ScriptedBackend({0: NORMAL, 1: abnormal_turn1(1.0, 2.0), 2: NORMAL, 3: "I cannot tell."}, {1: CONFIRM})
    reward = CaCReward(backend, batch_size=2)
    videos = [tagged_video(seed=0), tagged_video(seed=1), "/no/such.mp4", tagged_video(seed=2), tagged_video(seed=3)]
    out = reward(videos, ["a", "b", "c", "d", "e"])
    # Turn 1 probabilities (0.6, 0.2) -> 0.75; turn 2 (0.1, 0.3) -> 0.25 (CaC Eq. 7)
    assert out.valid.tolist() == [True, True, False, True, False]
    assert out.details[4]["error_kind"] == "parse" and out.details[4]["turn1"]["text"] == "I cannot tell."
    assert out.scores[[0, 1, 3]].tolist() == pytest.approx([0.75, 0.25, 0.75])
    assert out.details[1]["status"] == "abnormal" and out.details[1]["window_s"] == (1.0, 2.0)
    assert "/no/such.mp4" in out.details[2]["error"] and out.details[2]["error_kind"] == "video"
    assert len(backend.generate_calls[0]) == 2  # batch_size 2: the first chunk is videos 0 and 1


def test_cac_error_kinds_come_from_where_the_failure_happened():
    """Kinds are named (ErrorKind) and set where the failure happened: the call that raised marks
    "backend", an answer that cannot be used (even one reading "backend failed ...") "parse"."""

    class Flaky(ScriptedBackend):
        def generate(self, requests, **kwargs):
            if any(self._seed(r) == 1 for r in requests):
                raise ConnectionError("http://127.0.0.1:1/v1 unreachable")
            return super().generate(requests, **kwargs)

    backend = Flaky({0: NORMAL, 1: NORMAL, 2: "backend failed: not JSON at all"})
    out = CaCReward(backend, batch_size=3)([tagged_video(seed=0), tagged_video(seed=1), tagged_video(seed=2)], ["a", "b", "c"])
    assert out.valid.tolist() == [True, False, False]
    assert out.details[1]["error_kind"] == ErrorKind.BACKEND == "backend" and "unreachable" in out.details[1]["error"]
    assert out.details[2]["error_kind"] == ErrorKind.PARSE
    assert out.failure_counts() == {"backend": 1, "parse": 1}


def test_a_rewards_batch_is_its_models_batch():
    """One batch setting per reward: a recipe's reward scores ``model.max_batch_size`` videos
    together; the retired reward-level ``batch_size`` is refused naming the key that replaced it."""
    from cac_align.rewards.registry import build_reward, reward_config

    for name, section in (("cac", {}), ("unified_reward", {})):
        reward = build_reward({"name": name, "model": {"name": "tiny-random:qwen3_vl", "max_batch_size": 3}, **section})
        assert reward.batch_size == 3, name
        with pytest.raises(ValueError, match=r"^reward: key 'batch_size' is gone: set 'model.max_batch_size'"):
            reward_config({"name": name, "batch_size": 4})
    with pytest.raises(ValueError, match=r"key 'cac.batch_size' is gone: set 'cac.model.max_batch_size'"):
        reward_config({"name": "ur_cac", "cac": {"batch_size": 4}})


def test_empty_batches_return_empty_outputs():
    from cac_align.rewards.unified import UnifiedReward

    for reward in (CaCReward(ScriptedBackend({})), UnifiedReward(ScriptedBackend({}))):
        out = reward([], [])
        assert len(out) == 0 and out.valid.shape == (0,) and out.details == []
