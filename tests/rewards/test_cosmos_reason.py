"""``cosmos_reason``: the rating read from the answer, the expected digit after ``<answer>`` equal to the
backend's own probabilities of the five digits there (a tiny random Qwen3-VL, Cosmos-Reason2's architecture,
made to write one answer), the prompt read from a cookbook checkout (a stand-in of ours with its layout:
tests/fixtures/cosmos_cookbook_checkout), the frames shown, and the failures that make a sample invalid.
Through a real vLLM server: tests/conformance/test_vllm_server.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import ForceAnswer, smooth_video

from cac_align.config import RecipeError
from cac_align.rewards.cosmos_reason import (
    DIGITS,
    CosmosPrompt,
    CosmosReasonReward,
    parse_rating,
    resolve_prompt,
    shown_frames,
)
from cac_align.rewards.registry import build_reward
from cac_align.video import Video

CHECKOUT = Path(__file__).parents[1] / "fixtures" / "cosmos_cookbook_checkout"
TINY = {"name": "cosmos_reason", "model": {"name": "tiny-random:qwen3_vl", "dtype": "float32", "device": "cpu"}, "fps": 2.0,
        "max_new_tokens": 16}


def _forced(reward, answer: str):
    tokenizer = reward.backend.processor.tokenizer
    reward.backend.generate_kwargs = {"logits_processor": [ForceAnswer(tokenizer.encode(answer), tokenizer.eos_token_id)]}
    return reward


def test_the_rating_is_the_integer_1_to_5_inside_the_first_answer():
    assert parse_rating("<answer>\n4\n</answer>") == 4
    assert parse_rating("<think>a cup floats: 2 violations</think><answer> 2 </answer><answer>5</answer>") == 2
    assert parse_rating("<answer>7</answer>") is None and parse_rating("<answer>none</answer>") is None
    assert parse_rating("4") is None  # no tag


def test_the_score_is_the_expected_digit_of_the_backends_own_probabilities_after_answer():
    answer = "<answer>\n4\n</answer>"
    reward = _forced(build_reward(TINY), answer)
    videos = [Video(smooth_video(16, 64, 96, seed=s), 8.0) for s in range(2)]
    out = reward(videos, None)
    assert out.valid.all()
    for video, detail, score in zip(videos, out.details, out.scores):
        chat = reward.request(video, None).chat
        probs = reward.backend.choice_probs([chat], ["<answer>\n"], list(DIGITS))[0]  # read by hand, teacher-forced
        assert detail["rating"] == 4 and detail["answer"].startswith(answer)
        np.testing.assert_allclose(detail["p_digits"], probs, rtol=1e-5, atol=1e-9)
        assert score == pytest.approx(float(np.dot([1, 2, 3, 4, 5], probs) / probs.sum()), rel=1e-5)
        assert 1.0 <= score <= 5.0
    text = _forced(build_reward({**TINY, "scoring": "text"}), answer)(videos, None)
    assert text.scores.tolist() == [4.0, 4.0]


def test_an_answer_without_its_tag_or_rating_is_invalid_never_zero():
    out = build_reward(TINY)([Video(smooth_video(8, 64, 96), 8.0)], None)  # random: no <answer>
    assert not out.valid[0] and np.isnan(out.scores[0]) and out.details[0]["error_kind"] == "parse"
    out = _forced(build_reward({**TINY, "scoring": "text"}), "<answer>9</answer>")([Video(smooth_video(8, 64, 96), 8.0)], None)
    assert not out.valid[0] and "no integer 1-5" in out.details[0]["error"]


def test_the_prompt_is_read_from_the_cookbook_checkout_else_our_paraphrase_with_a_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("COSMOS_COOKBOOK_REPO", raising=False)
    prompt = resolve_prompt(str(CHECKOUT), "nvidia/Cosmos-Reason2-8B")
    assert prompt.system.startswith("Stand-in system words") and prompt.user == "Stand-in question: is the physics right?"
    assert prompt.source.startswith("authors_file:")
    monkeypatch.setenv("COSMOS_COOKBOOK_REPO", str(CHECKOUT))
    assert resolve_prompt(None, "nvidia/Cosmos-Reason2-8B") == prompt
    monkeypatch.delenv("COSMOS_COOKBOOK_REPO")
    with caplog.at_level(logging.WARNING):
        paraphrase = resolve_prompt(None, "nvidia/Cosmos-Reason2-2B")
    assert paraphrase.source == "built_in_paraphrase" and "<answer>" in paraphrase.system and "COSMOS_COOKBOOK_REPO" in caplog.text
    with pytest.raises(RecipeError, match="no docs/recipes/post_training/reason1/physical-plausibility-check/assets/video_reward.yaml there"):
        resolve_prompt(str(tmp_path), "nvidia/Cosmos-Reason2-8B")
    broken = tmp_path / "docs/recipes/post_training/reason1/physical-plausibility-check/assets"
    broken.mkdir(parents=True)
    (broken / "video_reward.yaml").write_text("system_prompt: only this\n")
    with pytest.raises(RecipeError, match="no user_prompt string"):
        resolve_prompt(str(tmp_path), "nvidia/Cosmos-Reason2-8B")


def test_the_chat_is_the_system_prompt_then_the_video_at_fps_then_the_question():
    reward = CosmosReasonReward.__new__(CosmosReasonReward)
    reward.prompt, reward.fps, reward.max_frames = CosmosPrompt("sys", "question?"), 4.0, 64
    chat = reward.request(Video(smooth_video(80, 16, 16), 16.0), None).chat  # 5 s at 16 fps -> 20 frames at 4 fps
    assert [turn["role"] for turn in chat] == ["system", "user"] and chat[0]["content"][0]["text"] == "sys"
    video, question = chat[1]["content"]
    assert video["video"].num_frames == 20 and video["video"].fps == 4.0 and question["text"] == "question?"
    thinned = shown_frames(Video(smooth_video(80, 16, 16), 16.0), 4.0, 5)  # 20 -> 5 frames: every 4.75th, rounded
    assert thinned.num_frames == 5 and np.allclose(thinned.timestamps, np.array([0, 5, 10, 14, 19]) / 4.0)


def test_the_cosmos_reason2_8b_figures_docs_real_weights_states(hub_cache):
    """docs/real_weights.md's Cosmos-Reason2-8B row (issue #105, item 5) is the plan `check-recipe` makes of the
    shipped recipe on Qwen3-VL-8B's config (shipped with cac-align; the architecture Cosmos-Reason2-8B is
    post-trained from): 8,767,123,696 parameters x 2 bytes (bf16); a KV cache of 4 rows (max_batch_size) x
    5,632 tokens (4,378 visual, the prompt and 512 new, a static cache rounded up to 256) x 147,456 bytes a
    token (36 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes); the CUDA context, 1 GiB."""
    from conftest import REPO_ROOT

    from cac_align.jobs import load_recipe
    from cac_align.plan.check import plan_judges
    from cac_align.plan.counts import GIB

    section = dict(load_recipe(REPO_ROOT / "recipes/score/cosmos_reason.yaml")[1].reward)
    section["model"] = {**section["model"], "name": "Qwen/Qwen3-VL-8B-Instruct"}
    plan = plan_judges({"reward": section})
    weights, kv, overhead = (row.bytes for row in plan.rows)
    assert (weights, kv, overhead) == (2 * 8_767_123_696, 4 * 5_632 * 147_456, GIB)
    docs = (REPO_ROOT / "docs/real_weights.md").read_text(encoding="utf-8")
    assert f"8,767,123,696 parameters, {weights / GIB:.2f} GiB in bfloat16" in docs
    assert f"{plan.peak_bytes / GIB:.2f} GiB: the weights, a KV cache of {kv / GIB:.2f} GiB" in docs and "5,632 tokens each" in docs
