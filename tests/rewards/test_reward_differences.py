"""Which differences between two reward sections change a score (what `cac-align repair` checks a
scored run's judge against)."""

from __future__ import annotations

from cac_align.rewards.registry import describe_reward, reward_differences

CAC = {"name": "cac", "model": {"name": "cac-demo", "dtype": "float32", "device": "cpu"}, "options": {"mode": "two_turn"}}


def test_the_same_judge_written_two_ways_and_reached_two_ways_is_the_same():
    # defaults written out, another device, a server address and timeout: no score changes
    served = {"name": "cac", "model": {"name": "cac-demo", "dtype": "float32", "device": "cuda", "base_url": "http://127.0.0.1:9000/v1",
                                       "timeout_s": 30.0}, "options": {"mode": "two_turn", "scan_fps": 4.0}}
    assert reward_differences(CAC, served) == []
    # the model's own settings written out, or left to its folder: the same judge; one changed: not
    assert reward_differences(CAC, {"name": "cac", "model": {"name": "cac-demo"}}) == []
    assert reward_differences(CAC, {**CAC, "options": {"max_frames_turn2": 32}}) == ["options.max_frames_turn2"]


def test_a_model_an_option_a_dtype_or_another_reward_is_a_different_judge():
    # another model is asked its own way too: runs/my_cac has no cac_align.json, so the paper's
    # defaults where cac-demo's folder gives its own
    assert reward_differences(CAC, {**CAC, "model": {**CAC["model"], "name": "runs/my_cac"}}) == [
        "model.name", "options.max_frames_turn2", "options.max_new_tokens", "options.max_pixels", "options.prompt_style", "options.size_multiple"]
    assert reward_differences(CAC, {**CAC, "options": {"mode": "single_turn"}}) == ["options.mode"]
    assert reward_differences(CAC, {**CAC, "model": {**CAC["model"], "dtype": "bfloat16"}}) == ["model.dtype"]
    assert reward_differences(CAC, {"name": "brightness"}) == ["name"]
    assert describe_reward(CAC) == "cac (cac-demo)" and describe_reward({"name": "brightness"}) == "brightness"
