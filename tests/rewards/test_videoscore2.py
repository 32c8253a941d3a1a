"""VideoScore2 as a reward: what a tiny Qwen2.5-VL is shown, how its sampled answer becomes soft
scores, and both recipes.

Values below are worked out by hand from github.com/TIGER-AI-Lab/VideoScore2 @ e6abe26,
``vs2_inference.py`` (the script their README runs):

- L60-73 ``VS2_QUERY_TEMPLATE = Template(...)`` inside ``main``, substituted with ``t2v_prompt``;
- L78 ``infer_fps, max_tokens, temperature = 2.0, 1024, 0.7``;
- L90-95 one user turn: ``{"type": "video", "video": path, "fps": 2.0}`` then the text;
  ``apply_chat_template(..., add_generation_prompt=True)``; qwen-vl-utils' ``process_vision_info``;
- L97-100 ``processor(..., fps=infer_fps)``;
- L103-110 ``generate(max_new_tokens=1024, output_scores=True, return_dict_in_generate=True,
  do_sample=True, temperature=0.7)``: the processed scores, everything else from the checkpoint;
- L117-119 the answer decoded without special tokens; L123-127 the three integers by regex
  (DOTALL, IGNORECASE);
- L41-56 ``find_score_token_index_by_prompt``: the label in the decoded generation (special tokens
  kept), the first digit after it, the shortest token prefix decoding to the text up to it;
- L18-39 ``ll_based_soft_score_normed``: P(1..5) = softmax of the processed scores there; the
  most probable digit x its share of their sum, ``round(..., 4)``.

qwen-vl-utils (0.0.14, installed from PyPI as their README says) is called itself where the test
needs "their" frames. The stand-in checkout below has their file's layout in our own words.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from cac_align.rewards.videoscore2 import (
    BUILT_IN,
    VideoScore2Config,
    VideoScore2Reward,
    parse_scores,
    read_template,
    resolve_template,
    score_token_index,
    soft_score,
    vs2_frames,
)
from cac_align.video import Video, load_video, save_video
from cac_align.vlm.hf import HFBackend
from conftest import REPO_ROOT, smooth_video

VS2_INFERENCE = '''
from string import Template

def main(MODEL_NAME, video_path, t2v_prompt):
    VS2_QUERY_TEMPLATE = Template("""
    Score the video. Prompt: $t2v_prompt
    visual quality: <v>; text-to-video alignment: <t>, physical/common-sense consistency: <p>
    """)
    user_prompt = VS2_QUERY_TEMPLATE.substitute(t2v_prompt=t2v_prompt)
'''


@pytest.fixture()
def checkout(tmp_path):
    root = tmp_path / "VideoScore2"
    root.mkdir()
    (root / "vs2_inference.py").write_text(VS2_INFERENCE)
    return root


@pytest.fixture(scope="module")
def tiny():
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(seed=0)


def _video(frames: int, fps: float, height: int = 64, width: int = 96) -> Video:
    return Video(smooth_video(frames, height, width), fps)


# ---------------------------------------------------------------------------------------
# Frames: their qwen-vl-utils video path
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frames, fps, indices",
    [
        (33, 16.0, [0, 11, 21, 32]),  # 33 / 16 * 2 = 4.1 -> floor to even 4; linspace(0, 32, 4) = 0, 10.7, 21.3, 32
        (20, 8.0, [0, 6, 13, 19]),  # 20 / 8 * 2 = 5 -> 4 (floored, not rounded up to 6)
        (81, 16.0, [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]),  # Wan-2.1: 10.1 -> 10, steps of 8.89
        (100, 30.0, [0, 20, 40, 59, 79, 99]),  # 6.7 -> 6, steps of 19.8
        (5, 16.0, [0, 1, 3, 4]),  # 0.6 -> at least 4 frames
    ],
)
def test_frame_indices_as_qwen_vl_utils_samples_at_2_fps(frames, fps, indices):
    assert vs2_frames(_video(frames, fps, 28, 28), 2.0)[1].tolist() == indices


@pytest.mark.parametrize(
    "height, width, size",
    [
        (64, 96, (280, 392)),  # 4,704 px < 100,352: upscaled by 1 / sqrt(6144 / 100352), ceil to 28s: 10 x 14 patches
        (48, 48, (336, 336)),  # 48 / 0.15152 / 28 = 11.3 -> 12
        (480, 832, (476, 840)),  # within bounds: nearest multiples of 28 (17 x 30)
        (720, 1280, (560, 1008)),  # 937,664 px > 602,112: scaled down by 1.2372, floor to 28s (20 x 36)
    ],
)
def test_frame_sizes_between_128_and_768_tokens(height, width, size):
    shown, _ = vs2_frames(_video(4, 2.0, height, width), 2.0)
    assert shown.shape == (4, *size, 3) and shown.dtype == np.uint8


@pytest.mark.parametrize("frames, fps, height, width", [(33, 16.0, 64, 96), (20, 8.0, 56, 80), (45, 30.0, 96, 64)])
def test_frames_equal_qwen_vl_utils_fetch_video_on_the_file(tmp_path, monkeypatch, frames, fps, height, width):
    """The same file through their ``fetch_video`` (decord, as theirs reads it) and through ours
    (widths decord 0.6 mis-strides, 16 or 48 px, are left out: their reader fails on those files)."""
    from qwen_vl_utils import vision_process

    path = save_video(_video(frames, fps, height, width), tmp_path / "v.mp4")
    monkeypatch.setattr(vision_process, "FORCE_QWENVL_VIDEO_READER", "decord")
    theirs = vision_process.fetch_video({"type": "video", "video": str(path), "fps": 2.0})
    ours, _ = vs2_frames(load_video(path, lazy=True), 2.0)
    assert theirs.dtype == torch.float32 and torch.equal(theirs, torch.from_numpy(ours).permute(0, 3, 1, 2).float())


# ---------------------------------------------------------------------------------------
# The question
# ---------------------------------------------------------------------------------------
def test_the_question_is_read_from_their_script(checkout):
    text = read_template(checkout / "vs2_inference.py")
    assert text.startswith("\n    Score the video. Prompt: $t2v_prompt\n")  # their indentation is part of the string
    template, source = resolve_template(str(checkout), "TIGER-Lab/VideoScore2")
    assert template == text and source.startswith("authors_script:")


def test_a_checkout_without_the_template_is_an_error_naming_the_key(tmp_path, monkeypatch):
    from cac_align.config import RecipeError

    (tmp_path / "vs2_inference.py").write_text("PROMPT = 'no template here'\n")
    with pytest.raises(RecipeError, match=r"reward.authors_repo: .*no VS2_QUERY_TEMPLATE"):
        resolve_template(str(tmp_path), "TIGER-Lab/VideoScore2")
    with pytest.raises(RecipeError, match="no such folder"):
        resolve_template(str(tmp_path / "missing"), "TIGER-Lab/VideoScore2")
    monkeypatch.setenv("VIDEOSCORE2_REPO", str(tmp_path / "missing"))
    with pytest.raises(RecipeError, match="the environment variable VIDEOSCORE2_REPO"):
        resolve_template(None, "TIGER-Lab/VideoScore2")
    (tmp_path / "vs2_inference.py").write_text('from string import Template\nVS2_QUERY_TEMPLATE = Template("""no field""")\n')
    with pytest.raises(RecipeError, match=r"has no \$t2v_prompt"):
        resolve_template(str(tmp_path), "TIGER-Lab/VideoScore2")


def test_without_a_checkout_our_paraphrase_keeps_their_labels(monkeypatch, caplog):
    monkeypatch.delenv("VIDEOSCORE2_REPO", raising=False)
    template, source = resolve_template(None, "TIGER-Lab/VideoScore2")
    assert source == BUILT_IN and "$t2v_prompt" in template
    for label in ("visual quality:", "text-to-video alignment:", "physical/common-sense consistency:"):
        assert label in template
    assert "paraphrase" in caplog.text


def test_what_reaches_the_model_is_what_their_script_builds(tiny, checkout, tmp_path, monkeypatch):
    """Token ids, video pixels, grid, seconds per temporal patch and 3-D positions of the prefill
    equal their script's inputs (their frames, their chat, the processor told fps 2.0)."""
    from qwen_vl_utils import vision_process
    from transformers.video_utils import VideoMetadata

    from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

    # Qwen2.5-VL's own video processor bounds (128..768 merged tokens a frame, as the checkpoint's):
    # qwen-vl-utils' frames lie inside them and reach the vision tower unresized
    processor = Qwen2_5_VLProcessor(image_processor=tiny.processor.image_processor, video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2),
                                    tokenizer=tiny.processor.tokenizer, chat_template=tiny.processor.chat_template)
    path = save_video(_video(33, 16.0, 64, 96), tmp_path / "v.mp4")
    template, _ = resolve_template(str(checkout), "TIGER-Lab/VideoScore2")
    reward = VideoScore2Reward(HFBackend(tiny.model, processor), template, max_new_tokens=1, seed=0)
    seen, vision, positions = [], [], []

    def on_vision(module, args, kwargs):
        vision.append((args[0].detach().clone(), kwargs.get("grid_thw", args[1] if len(args) > 1 else None).detach().clone()))

    handles = [
        tiny.model.register_forward_pre_hook(lambda m, a, k: seen.append(dict(k)), with_kwargs=True),
        tiny.model.model.visual.register_forward_pre_hook(on_vision, with_kwargs=True),
        tiny.model.model.language_model.register_forward_pre_hook(lambda m, a, k: positions.append(k["position_ids"].clone()), with_kwargs=True),
    ]
    try:
        reward([str(path)], ["a red ball bounces"])
    finally:
        for handle in handles:
            handle.remove()

    # their script's inputs, built with their pieces
    question = template.replace("$t2v_prompt", "a red ball bounces")
    messages = [{"role": "user", "content": [{"type": "video", "video": str(path), "fps": 2.0}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    monkeypatch.setattr(vision_process, "FORCE_QWENVL_VIDEO_READER", "decord")
    _, videos = vision_process.process_vision_info(messages)
    assert videos[0].shape[0] == 4  # 33 frames at 16 fps -> 4 frames
    # transformers 4.53.2 (their pin) turns fps=2.0 into 2 / 2.0 s per temporal patch; 5.x needs it as metadata
    metadata = [VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3])]
    theirs = processor(text=[text], videos=videos, video_metadata=metadata, videos_kwargs={"do_sample_frames": False},
                            padding=True, return_tensors="pt")
    prefill = seen[0]
    assert prefill["input_ids"].tolist() == theirs["input_ids"].tolist()
    pixels, grid = vision[0]  # what the vision tower encodes
    assert torch.equal(grid, theirs["video_grid_thw"]) and torch.equal(pixels, theirs["pixel_values_videos"])
    assert [float(s) for s in prefill["second_per_grid_ts"]] == [1.0]
    # the literal fps=2.0 of their call, read by transformers 5.x: 2 / 24 s (the trap this avoids)
    literal = processor(text=[text], videos=videos, fps=2.0, videos_kwargs={"do_sample_frames": False}, return_tensors="pt")
    assert [float(s) for s in literal["second_per_grid_ts"]] == pytest.approx([2 / 24])

    # 3-D positions: the video's time positions step by 1.0 s x tokens_per_second per temporal
    # patch (4 in this config, 2 in Qwen2.5-VL-7B's; read as 5.x reads their literal fps=2.0 it
    # would be 0.083 x 4 = 0.33, truncated to 0: both patches at one time); the text after the
    # video starts at the block's largest position + 1 (as trained)
    step = tiny.model.config.vision_config.tokens_per_second
    assert step == 4
    t, h, w = theirs["video_grid_thw"][0].tolist()
    ids = prefill["input_ids"][0]
    pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    block = (ids == pad).nonzero().squeeze(1)
    start = int(block[0])
    pos = positions[0][:, 0] if positions[0].dim() == 3 else positions[0]
    temporal, height, width = pos[-3], pos[-2], pos[-1]  # (time, height, width) rows, text row first if 4
    base = int(temporal[start])
    cells = (h // 2) * (w // 2)
    assert temporal[block].tolist() == [base + step * k for k in range(t) for _ in range(cells)]
    assert height[block].tolist() == [base + i for _ in range(t) for i in range(h // 2) for _ in range(w // 2)]
    assert width[block].tolist() == [base + j for _ in range(t) for _ in range(h // 2) for j in range(w // 2)]
    after = int(block[-1]) + 1
    top = base + max(step * (t - 1), h // 2 - 1, w // 2 - 1)
    assert [int(temporal[after]), int(height[after]), int(width[after])] == [top + 1] * 3


# ---------------------------------------------------------------------------------------
# The answer
# ---------------------------------------------------------------------------------------
def test_the_three_integers_as_their_regex_reads_them():
    assert parse_scores("Visual Quality: 4;\nblah\nText-to-Video Alignment: 3,\nphysical/common-sense consistency:5") == (4, 3, 5)
    assert parse_scores("visual quality: 4; text-to-video alignment: 3") is None  # all three or nothing


def test_the_score_token_is_the_first_digit_after_the_label(tiny):
    tokenizer = tiny.processor.tokenizer
    text = "I looked. (1) Visual quality: it is 4 overall;\ntext-to-video alignment: 3,\nphysical/common-sense consistency: 5"
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    at = score_token_index(tokenizer, ids, "visual quality:")
    assert tokenizer.decode(ids[: at + 1]) == "I looked. (1) Visual quality: it is 4"
    at = score_token_index(tokenizer, ids, "physical/common-sense consistency:")
    assert tokenizer.decode(ids[: at + 1]).endswith("consistency: 5")
    assert score_token_index(tokenizer, tokenizer.encode("visual quality: none", add_special_tokens=False), "visual quality:") == -1
    assert score_token_index(tokenizer, ids, "motion quality:") == -1


def test_soft_score_is_the_top_digit_times_its_share():
    log = np.log
    # P(1..5) = .1 .2 .3 .3 .1: the first of the two maxima (3), share .3 / 1.0 -> 0.9
    assert soft_score(log(np.array([0.1, 0.2, 0.3, 0.3, 0.1]))) == {"soft": 0.9, "best": 3, "share": pytest.approx(0.3), "probs": pytest.approx([0.1, 0.2, 0.3, 0.3, 0.1])}
    # top-k removed 1, 2 and 5: 4 with .6 of .8 -> 4 x 0.75 = 3.0 (the digits need not sum to 1)
    read = soft_score(np.array([-np.inf, -np.inf, log(0.2), log(0.6), -np.inf]))
    assert read["soft"] == 3.0 and read["best"] == 4
    # rounded to 4 decimals: 5 x 1/3
    assert soft_score(log(np.array([0.1, 0.1, 0.1, 0.1, 0.2])))["soft"] == pytest.approx(5 * 0.2 / 0.6, abs=5e-5)
    assert soft_score(log(np.array([0.1, 0.1, 0.1, 0.1, 0.2])))["soft"] == 1.6667
    # no probability on any digit: no score (their code would give 0)
    assert soft_score(np.full(5, -np.inf))["soft"] is None


class ScriptedAnswer:
    """Makes the model write ``pieces`` (token ids), with a sampled digit at each None: there the
    digits 1..5 get ``digit_logits`` and every other token -inf, before temperature and top-k."""

    def __init__(self, pieces, digit_ids, digit_logits, eos):
        self.plan = [t for piece in pieces for t in (piece if piece is not None else [None])]
        self.digit_ids, self.digit_logits, self.eos = digit_ids, digit_logits, eos
        self.start, self.last = 0, None

    def __call__(self, input_ids, scores):
        if self.last is None or input_ids.shape[1] != self.last + 1:
            self.start = input_ids.shape[1]
        self.last = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        token = self.plan[step] if step < len(self.plan) else self.eos
        if token is None:
            forced[:, self.digit_ids] = torch.tensor(self.digit_logits, dtype=scores.dtype)
        else:
            forced[:, token] = 0.0
        return forced


def _scripted(tiny, logits, top_k):
    tokenizer = tiny.processor.tokenizer
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    digit_ids = [enc(str(d))[0] for d in range(1, 6)]
    pieces = [enc("Smooth motion. visual quality: "), None, enc(";\ntext-to-video alignment: "), None,
              enc(",\nphysical/common-sense consistency: "), None]
    model = tiny.model
    model.generation_config.top_k = top_k
    backend = HFBackend(model, tiny.processor, generate_kwargs={"logits_processor": [ScriptedAnswer(pieces, digit_ids, logits, tokenizer.eos_token_id)]})
    return backend


@pytest.fixture()
def restore_generation_config(tiny):
    saved = tiny.model.generation_config.top_k
    yield
    tiny.model.generation_config.top_k = saved


def test_top_k_and_temperature_decide_the_soft_score(tiny, restore_generation_config):
    logits = [0.0, 1.0, 2.0, 3.0, 0.5]
    # top-k 2 after temperature 0.7 keeps 4 and 3: P(4) = 1 / (1 + e^(-1 / 0.7)) = 0.80668 -> 4 x 0.80668
    reward = VideoScore2Reward(_scripted(tiny, logits, top_k=2), max_new_tokens=80, seed=0)
    out = reward([_video(33, 16.0)], ["a red ball"])
    share = 1 / (1 + math.exp(-1 / 0.7))
    assert out.valid[0] and out.scores[0] == pytest.approx(round(4 * share, 4), abs=1e-12) and round(4 * share, 4) == 3.2267
    for dimension in ("visual_quality", "text_alignment", "physical"):
        d = out.details[0][dimension]
        assert d["best"] == 4 and d["hard"] in (3, 4) and d["soft"] == 3.2267
        assert d["digit_probs"][0] == d["digit_probs"][1] == d["digit_probs"][4] == 0.0  # removed by top-k
    # top-k 1: the share is 1, the soft score is the digit
    out = VideoScore2Reward(_scripted(tiny, logits, top_k=1), max_new_tokens=80, seed=0)([_video(33, 16.0)], ["a red ball"])
    assert out.scores[0] == 4.0 and out.details[0]["physical"]["hard"] == 4
    # no top-k: every digit kept, P(s) = e^(l_s / 0.7) / sum
    out = VideoScore2Reward(_scripted(tiny, logits, top_k=0), max_new_tokens=80, seed=0, score="physical")([_video(33, 16.0)], ["a red ball"])
    weights = [math.exp(v / 0.7) for v in logits]
    assert out.scores[0] == pytest.approx(round(4 * weights[3] / sum(weights), 4), abs=1e-12)


def test_hard_scoring_and_one_dimension(tiny, restore_generation_config):
    reward = VideoScore2Reward(_scripted(tiny, [0.0, 1.0, 2.0, 3.0, 0.5], top_k=2), max_new_tokens=80, seed=1, scoring="hard")
    out = reward([_video(33, 16.0), _video(20, 8.0, 48, 48)], ["a", "b"])
    for detail, score in zip(out.details, out.scores):
        hard = [detail[d]["hard"] for d in ("visual_quality", "text_alignment", "physical")]
        assert score == pytest.approx(sum(hard) / 3)


def test_an_answer_without_the_three_scores_is_invalid_never_zero(tiny):
    # the random model writes noise: invalid with the reason, and the answer kept
    out = VideoScore2Reward(HFBackend(tiny.model, tiny.processor), max_new_tokens=8, seed=0)([_video(33, 16.0)], ["a red ball"])
    assert not out.valid[0] and np.isnan(out.scores[0])
    assert out.details[0]["error_kind"] == "parse" and "visual quality: N" in out.details[0]["error"]
    assert isinstance(out.details[0]["answer"], str) and out.details[0]["visual_quality"]["soft"] is None


def test_a_missing_prompt_is_invalid(tiny):
    out = VideoScore2Reward(HFBackend(tiny.model, tiny.processor), max_new_tokens=2)([_video(33, 16.0)], [None])
    assert not out.valid[0] and out.details[0]["error_kind"] == "prompt"


# ---------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------
def test_the_section_is_typed_and_checked():
    from cac_align.rewards.registry import reward_config

    name, config = reward_config({"name": "videoscore2"})
    assert isinstance(config, VideoScore2Config) and config.model.name == "TIGER-Lab/VideoScore2"
    assert (config.fps, config.temperature, config.max_new_tokens, config.score) == (2.0, 0.7, 1024, "mean")
    with pytest.raises(ValueError, match="score must be one of"):
        reward_config({"name": "videoscore2", "score": "overall"})
    with pytest.raises(ValueError, match="model.backend must be hf"):
        reward_config({"name": "videoscore2", "model": {"name": "vs2", "backend": "openai"}})


def test_the_recipes():
    from cac_align.rewards import build_reward

    full = yaml.safe_load((REPO_ROOT / "recipes" / "score" / "videoscore2.yaml").read_text())
    assert full["reward"]["name"] == "videoscore2" and full["reward"]["model"]["name"] == "TIGER-Lab/VideoScore2"
    tiny_recipe = yaml.safe_load((REPO_ROOT / "recipes" / "score" / "videoscore2_tiny.yaml").read_text())
    reward = build_reward(tiny_recipe["reward"])
    out = reward([_video(33, 16.0)], ["a red ball"])
    assert not out.valid[0] and out.details[0]["error_kind"] == "parse"
