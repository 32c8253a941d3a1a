"""Skyra as a reward: what a tiny Qwen2.5-VL is shown, how the answer becomes a score and
evidence, the served path, and both recipes.

Values below are worked out by hand from github.com/JoeLeelyf/Skyra @ 808e10d (README.md,
``eval/``):

- ``eval/utils/ViFBench.py`` L8: ``SYSTEM_PROMPT``, a module-level string; L90-119
  ``_build_user_prompt``: ``prompt_lines`` starts as a one-string list (L99), gets
  ``f"[T={ts:.2f}s] <image>"`` per frame (L112) and one closing string (L117), and is joined with
  ``"\\n"`` (L119); L121-132 ``_parse_response``: the first ``<answer>(.*?)</answer>`` (DOTALL),
  "fake" in its lower-cased text first, then "real", else the stripped text; no tag -> "Error".
- ``eval/models/Qwen2_5_VL.py`` L44-71: the prompt split at ``<image>``; a text part only when
  ``strip()`` leaves something, an image after every part but the last; L75-84 system turn then
  that user turn; L95-100 the frames go to the processor as they are (it resizes); L105-109
  greedy, 2048 new tokens.
- ``eval/models/Qwen2_5_VL_vLLM.py`` L76-81: each image bounded to 224*224 .. 1280*28*28 pixels,
  resized by qwen-vl-utils (L109 ``process_vision_info``); L28 at most 32 images a prompt.

The stand-in checkout below has their file's layout in our own words (none of their text is
copied into this repository).
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
import yaml

from cac_align.rewards.skyra import (
    BUILT_IN,
    SkyraConfig,
    SkyraReward,
    answer_prefix,
    frame_indices,
    parse_verdict,
    read_prompt,
    resolve_prompt,
    shown_size,
    user_content,
)
from cac_align.video import Video
from cac_align.vlm.hf import HFBackend
from conftest import REPO_ROOT, ForceAnswer

VIFBENCH = '''
import os

SYSTEM_PROMPT = """Say Fake or Real."""


class ViFBench:
    def _build_user_prompt(self, frame_dir_path: str):
        timestamps = [0.0]
        prompt_lines = ["Frames:"]
        frame_paths = []
        for i, ts in enumerate(timestamps):
            prompt_lines.append(f"[T={ts:.2f}s] <image>")
            frame_paths.append(os.path.join(frame_dir_path, f"{i + 1}.png"))
        prompt_lines.append("\\nReal or fake?")
        return "\\n".join(prompt_lines), frame_paths
'''


@pytest.fixture()
def checkout(tmp_path):
    root = tmp_path / "Skyra"
    (root / "eval" / "utils").mkdir(parents=True)
    (root / "eval" / "utils" / "ViFBench.py").write_text(VIFBENCH)
    return root


@pytest.fixture(scope="module")
def tiny():
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(seed=0)


def _video(frames: int, fps: float, height: int = 64, width: int = 96, seed: int = 0) -> Video:
    rng = np.random.default_rng(seed)
    return Video(rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8), fps)


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def test_frames_every_half_second_nearest_source_frame():
    # 81 frames at 16 fps = 5.0625 s: times 0, 0.5, ..., 5.0 -> frames 0, 8, ..., 80
    assert frame_indices(81, 16.0, 2.0, 32).tolist() == list(range(0, 81, 8))
    # 100 frames at 24 fps = 4.17 s: times 0 .. 4.0 -> frames 0, 12, ..., 96
    assert frame_indices(100, 24.0, 2.0, 32).tolist() == list(range(0, 97, 12))
    # 25 frames at 10 fps = 2.5 s: times 0, 0.5, 1, 1.5, 2 -> frames 0, 5, 10, 15, 20
    assert frame_indices(25, 10.0, 2.0, 32).tolist() == [0, 5, 10, 15, 20]


def test_long_videos_are_thinned_evenly_to_max_frames():
    # 20 s at 30 fps: 40 frames at 2 fps (frame 15k), thinned by round(linspace(0, 39, 32))
    kept = [0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19, 20, 21, 23, 24, 25, 26, 28, 29, 30, 31, 33, 34, 35, 36, 38, 39]
    assert frame_indices(600, 30.0, 2.0, 32).tolist() == [15 * k for k in kept]


@pytest.mark.parametrize(
    "height, width, bounds, expected",
    [
        # their vLLM bounds: small frames are upscaled to the 50176-pixel floor
        (64, 96, (224 * 224, 1280 * 28 * 28), (196, 280)),  # beta = sqrt(50176 / 6144): ceil(6.53), ceil(9.80) x 28
        (48, 64, (224 * 224, 1280 * 28 * 28), (196, 280)),  # ceil(6.93), ceil(9.24) x 28
        (480, 832, (224 * 224, 1280 * 28 * 28), (476, 840)),  # round(17.1), round(29.7) x 28, within bounds
        # the tiny processor's bounds (1024 .. 16384): 480x832 shrinks, floor(480 / 4.94 / 28) = 3
        (64, 96, (1024, 16384), (56, 84)),
        (480, 832, (1024, 16384), (84, 168)),
    ],
)
def test_the_size_the_model_sees(height, width, bounds, expected):
    assert shown_size(height, width, *bounds) == expected


# ---------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------
def test_the_prompt_is_read_from_their_file_layout(checkout):
    prompt = read_prompt(checkout / "eval" / "utils" / "ViFBench.py")
    assert prompt.system == "Say Fake or Real."
    assert prompt.user_text([0.0, 0.5, 1.25]) == "Frames:\n[T=0.00s] <image>\n[T=0.50s] <image>\n[T=1.25s] <image>\n\nReal or fake?"
    assert prompt.source.startswith("authors_script:")


def test_a_file_of_another_layout_is_an_error_naming_the_key(tmp_path, checkout):
    from cac_align.config import RecipeError

    path = checkout / "eval" / "utils" / "ViFBench.py"
    path.write_text(VIFBENCH.replace('prompt_lines.append("\\nReal or fake?")', "pass"))
    with pytest.raises(RecipeError, match=r"reward.authors_repo: .*lacks the closing line"):
        resolve_prompt(str(checkout), "tiny-random:qwen2_5_vl")
    with pytest.raises(RecipeError, match="no eval/utils/ViFBench.py there"):
        resolve_prompt(str(tmp_path), "tiny-random:qwen2_5_vl")


def test_the_environment_names_the_checkout(checkout, monkeypatch):
    monkeypatch.setenv("SKYRA_REPO", str(checkout))
    assert resolve_prompt(None, "tiny-random:qwen2_5_vl").system == "Say Fake or Real."
    monkeypatch.delenv("SKYRA_REPO")
    assert resolve_prompt(None, "tiny-random:qwen2_5_vl").source == BUILT_IN


def test_user_turn_splits_at_image_marks_dropping_blank_text():
    images = [{"type": "image", "image": i} for i in range(2)]
    content = user_content("<image>\n[T=0.50s] <image>\nEnd", images)
    # the text before the first mark is empty: left out, as their strip() test leaves it
    assert [p.get("text", p["type"]) for p in content] == ["image", "\n[T=0.50s] ", "image", "\nEnd"]
    with pytest.raises(ValueError, match="2 <image> marks for 3 frames"):
        user_content("<image><image>", images + images[:1])


def test_what_reaches_the_model_in_process(tiny, checkout):
    """Frames as decoded (the processor resizes), the system turn and their interleaved user turn."""
    backend = HFBackend(tiny.model, tiny.processor)
    reward = SkyraReward(backend, read_prompt(checkout / "eval" / "utils" / "ViFBench.py"), max_new_tokens=2)
    vision, prefill = [], []

    def on_vision(module, args, kwargs):
        vision.append((args[0].detach().clone(), kwargs.get("grid_thw", args[1] if len(args) > 1 else None).detach().clone()))

    handles = [tiny.model.model.visual.register_forward_pre_hook(on_vision, with_kwargs=True),
               tiny.model.register_forward_pre_hook(lambda module, args, kwargs: prefill.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)]
    try:
        reward([_video(24, 16.0)], [None])  # 1.5 s: frames 0, 8, 16 at 0, 0.5, 1.0 s
    finally:
        for handle in handles:
            handle.remove()
    pixels, grid = vision[0]
    # three 64x96 frames, each resized by the processor to 56x84: a 4 x 6 patch grid
    assert grid.tolist() == [[1, 4, 6]] * 3
    tokenizer = tiny.processor.tokenizer
    image = "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"  # 4 x 6 patches merged 2 x 2
    expected = (
        "<|im_start|>systemSay Fake or Real.<|im_end|><|im_start|>userFrames:\n[T=0.00s] " + image
        + "\n[T=0.50s] " + image + "\n[T=1.00s] " + image + "\n\nReal or fake?<|im_end|><|im_start|>assistant"
    )
    assert prefill[0] == tokenizer(expected, add_special_tokens=False)["input_ids"]
    # the frames reach the processor unresized: its pixel values are those of the decoded frames
    direct = tiny.processor.image_processor(images=[np.asarray(_video(24, 16.0).frames[i]) for i in (0, 8, 16)], return_tensors="pt")
    assert np.array_equal(pixels.numpy(), direct["pixel_values"].numpy())


def test_vllm_frames_are_resized_by_qwen_vl_utils(tiny):
    from PIL import Image
    from qwen_vl_utils.vision_process import fetch_image

    backend = HFBackend(tiny.model, tiny.processor)
    reward = SkyraReward(backend, frames="vllm")
    video = _video(8, 16.0)  # 0.5 s: one frame
    request = reward.request(video, None)
    images = [p for p in request.chat[1]["content"] if p["type"] == "image"]
    want = np.asarray(fetch_image({"image": Image.fromarray(np.asarray(video.frames[0])), "min_pixels": 224 * 224, "max_pixels": 1280 * 28 * 28}))
    assert images[0]["image"].shape == (196, 280, 3) and np.array_equal(images[0]["image"], want)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(images[0]["png"]))), want)  # sent losslessly
    assert request.size == (196, 280)


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, verdict",
    [
        ("<think>x</think><answer>Fake</answer>", "Fake"),
        ("<answer> real </answer>", "Real"),
        ("<answer>not fake but real</answer>", "Fake"),  # "fake" is looked for first
        ("<answer>unsure</answer><answer>Real</answer>", "unsure"),  # the first tag only
        ("<answer>\nReal\n</answer>", "Real"),
        ("no tag, Real", None),
    ],
)
def test_verdicts_as_their_parser_reads_them(text, verdict):
    assert parse_verdict(text) == verdict


def test_the_answer_word_is_read_after_the_tag_and_its_blanks():
    assert answer_prefix("<think>a</think><answer> Fake</answer>") == "<think>a</think><answer> "
    assert answer_prefix("<think>a</think>") is None


ANSWER = ("<think>A hand <type>Abnormal Human Body Structure</type> in <t>[0.5, 1.0]</t> at <bbox>[0.1, 0.2, 0.5, 0.6]</bbox>"
          " and grain <type>Texture Jittering</type> in <t>[0.0, 0.2]</t> at <bbox>[0, 0, 0, 0]</bbox>.</think><answer>Fake</answer>")


def _forced(tiny, text):
    tokenizer = tiny.processor.tokenizer
    return HFBackend(tiny.model, tiny.processor, generate_kwargs={"logits_processor": [ForceAnswer(tokenizer.encode(text), tokenizer.eos_token_id)]})


def test_fake_answer_scores_p_real_and_gives_evidence(tiny):
    backend = _forced(tiny, ANSWER)
    reward = SkyraReward(backend, max_new_tokens=200, min_choice_mass=0.0)  # a random model's mass on two words is tiny
    out = reward([_video(24, 16.0)], [None])
    detail = out.details[0]
    assert out.valid[0], detail.get("error")
    assert detail["verdict"] == "Fake" and detail["status"] == "abnormal"
    # the probabilities read with the generation equal teacher-forcing the two words after the tag
    plain = HFBackend(tiny.model, tiny.processor)
    request = reward.request(_video(24, 16.0), None)
    p_real, p_fake = plain.choice_probs([request.chat], [answer_prefix(ANSWER)], ["Real", "Fake"])[0]
    assert detail["p_real"] == pytest.approx(p_real, rel=1e-4) and detail["p_fake"] == pytest.approx(p_fake, rel=1e-4)
    assert out.scores[0] == pytest.approx(p_real / (p_real + p_fake), rel=1e-4)
    # evidence: the human-body tag maps to CaC's Human Distortion; its fraction box in 0-1000,
    # held on the shown frames inside [0.5, 1.0] s (frames 1 and 2); the all-zero box draws nothing
    hand, grain = detail["artifacts"]
    assert hand["type"] == "Human Distortion" and hand["box"] == pytest.approx([100, 200, 500, 600])
    assert grain["type"] is None and grain["box"] is None and grain["category"] == "Texture Jittering"
    assert detail["windows_s"] == [[0.5, 1.0], [0.0, 0.2]] and detail["window_s"] == [0.0, 1.0]
    assert [(b["frame"], b["time_s"], b["type"]) for b in detail["boxes"]] == [(1, 0.5, "Human Distortion"), (2, 1.0, "Human Distortion")]


def test_pixel_boxes_are_pixels_of_the_image_the_model_saw(tiny):
    # 64x96 frames are shown at 56x84 by the tiny processor: x / 84, y / 56
    text = "<think><type>Shape Distortion</type> in <t>[0.0, 0.0]</t> at <bbox>[14, 28, 42, 56]</bbox></think><answer>Fake</answer>"
    out = SkyraReward(_forced(tiny, text), max_new_tokens=200)([_video(24, 16.0)], [None])
    assert out.details[0]["artifacts"][0]["box"] == pytest.approx([14 / 84 * 1000, 500, 500, 1000])
    assert [b["frame"] for b in out.details[0]["boxes"]] == [0]


def test_a_real_verdict_clears_its_tags_and_verdict_scoring_gives_one(tiny):
    text = "<think><type>Shape Distortion</type> in <t>[0.0, 0.5]</t> at <bbox>[0.1, 0.1, 0.2, 0.2]</bbox> looks fine</think><answer>Real</answer>"
    out = SkyraReward(_forced(tiny, text), scoring="verdict", max_new_tokens=200)([_video(24, 16.0)], [None])
    detail = out.details[0]
    assert out.valid[0] and out.scores[0] == 1.0 and detail["status"] == "normal"
    assert detail["boxes"] == [] and detail["window_s"] is None and len(detail["cleared"]) == 1


def test_no_answer_tag_is_invalid_never_zero(tiny):
    out = SkyraReward(_forced(tiny, "<think>thinking</think> Fake"), max_new_tokens=50)([_video(24, 16.0)], [None])
    assert not out.valid[0] and math.isnan(out.scores[0])
    assert out.details[0]["error_kind"] == "parse" and "no <answer>" in out.details[0]["error"]


def test_served_skyra_sends_png_frames_and_reads_the_answer_word(tmp_path):
    """Through an OpenAI-compatible server: system turn, their interleaved user turn with each
    frame as the PNG of its qwen-vl-utils resize, and P(Real) from the server's log-probs."""
    from chat_server import ChatServer, char_logprob

    from cac_align.vlm.openai import OpenAIBackend

    answer = "<think>fine</think><answer>Real</answer>"
    video = _video(16, 16.0)  # 1.0 s: frames at 0 and 0.5 s
    with ChatServer(answer=lambda messages: answer, models=("skyra",)) as server:
        reward = SkyraReward(OpenAIBackend("skyra", base_url=server.url, max_retries=0), frames="vllm")
        out = reward([video], [None])
    assert out.valid[0], out.details[0].get("error")
    messages = server.requests[0]["messages"]
    assert messages[0]["role"] == "system" and messages[1]["role"] == "user"
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    expected = reward.request(video, None).chat[1]["content"][1]["png"]
    assert base64.b64decode(parts[1]["image_url"]["url"].removeprefix("data:image/png;base64,")) == expected
    # one token per character: log P("Real") = sum of char_logprob(ord(c)); likewise "Fake"
    real = sum(char_logprob(ord(c)) for c in "Real")
    fake = sum(char_logprob(ord(c)) for c in "Fake")
    assert real == pytest.approx(-0.088) and fake == pytest.approx(-0.075)  # (82, 101, 97, 108) and (70, 97, 107, 101) mod 17
    assert out.scores[0] == pytest.approx(math.exp(real) / (math.exp(real) + math.exp(fake)), rel=1e-9)


# ---------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------
def test_the_section_is_typed_and_checked():
    from cac_align.rewards.registry import reward_config

    name, config = reward_config({"name": "skyra"})
    assert isinstance(config, SkyraConfig) and config.model.name == "JoeLeelyf/Skyra-SFT" and config.fps == 2.0
    with pytest.raises(ValueError, match="scoring must be one of"):
        reward_config({"name": "skyra", "scoring": "mean"})
    with pytest.raises(ValueError, match="frames: hf leaves resizing"):
        reward_config({"name": "skyra", "frames": "hf", "model": {"name": "skyra", "backend": "openai"}})


def test_the_recipes(tmp_path):
    from cac_align.rewards import build_reward

    full = yaml.safe_load((REPO_ROOT / "recipes" / "score" / "skyra.yaml").read_text())
    assert full["reward"]["name"] == "skyra" and full["reward"]["model"]["name"] == "JoeLeelyf/Skyra-SFT"
    tiny_recipe = yaml.safe_load((REPO_ROOT / "recipes" / "score" / "skyra_tiny.yaml").read_text())
    reward = build_reward(tiny_recipe["reward"])
    out = reward([_video(24, 16.0)], [None])
    # a random model writes no answer tag: invalid with the reason, never a number
    assert not out.valid[0] and out.details[0]["error_kind"] in ("parse", "score")


def test_too_little_mass_on_the_two_words_is_invalid(tiny):
    # the random model puts ~1e-8 on "Real" + "Fake" after the tag: below the default 1e-6
    out = SkyraReward(_forced(tiny, ANSWER), max_new_tokens=200)([_video(24, 16.0)], [None])
    assert not out.valid[0] and out.details[0]["error_kind"] == "score" and "P(Real) + P(Fake)" in out.details[0]["error"]
    assert out.details[0]["verdict"] == "Fake"  # what was read stays in the details


def test_the_report_draws_skyras_evidence(tiny, tmp_path):
    from PIL import Image

    from cac_align.cac.evidence import cac_details, write_evidence_png, write_report

    video = _video(24, 16.0)
    out = SkyraReward(_forced(tiny, ANSWER), max_new_tokens=200, min_choice_mass=0.0)([video], [None])
    detail = out.details[0]
    assert cac_details({"components": {"skyra": {"details": detail}}}) is detail  # also inside a combination
    png = tmp_path / "evidence" / "00000.png"
    png.parent.mkdir()
    write_evidence_png(detail["window_s"], detail["boxes"], video, png)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert ((pixels == (255, 40, 40)).all(-1)).sum() > 0  # a box drawn in the evidence colour
    row = {"video": "a.mp4", "reward": "skyra", "score": float(out.scores[0]), "valid": True, "status": detail["status"], "details": detail}
    page = write_report([row], tmp_path).read_text()
    assert "status <b>abnormal</b>" in page and "Human Distortion" in page and "window [0.00, 1.00) s" in page
