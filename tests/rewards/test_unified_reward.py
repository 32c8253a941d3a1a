"""UnifiedReward: answer parsing on a corpus, both scoring ways, tiny Qwen2.5-VL / Qwen3-VL, a server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from cac_align.rewards.unified import (
    FORMATS,
    UnifiedReward,
    UnifiedRewardConfig,
    authors_images,
    build,
    parse_scores,
    read_template,
    sample_like_qwen_vl_utils,
    sample_uniform,
)
from cac_align.video import Video
from cac_align.vlm.backend import BackendBase, Completion, videos_of
from cac_align.vlm.config import ModelConfig
from cac_align.vlm.hf import HFBackend
from conftest import REPO_ROOT

CORPUS = yaml.safe_load((REPO_ROOT / "tests/fixtures/unified_reward_outputs.yaml").read_text())


def _video(seed: int = 0, frames: int = 32, fps: float = 16.0) -> Video:
    """Frame i carries i in pixel (0, 0, 0) and the tag 20 * seed in pixel (0, 1, 0)."""
    array = np.zeros((frames, 32, 32, 3), np.uint8)
    array[:, 0, 0, 0] = np.arange(frames)
    array[:, 0, 1, 0] = 20 * seed
    return Video(array, fps, source=f"video{seed}")


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_parse_corpus(case):
    sub_scores, final, problems = parse_scores(case["text"], FORMATS[case["version"]])
    if "sub_scores" in case:
        assert problems == []
        assert sub_scores == pytest.approx({k: float(v) for k, v in case["sub_scores"].items()})
        if case["version"] == "v1":
            assert final == case["final"]
    else:
        assert any(case["problem"] in p for p in problems), problems


class TextBackend(BackendBase):
    """Answers generate() with a canned text per video tag; digit probabilities by score position."""

    def __init__(self, texts: dict[int, str] | None = None, rows: list[list[float]] | None = None):
        self.texts = texts or {}
        self.rows = rows or []
        self.requests: list = []
        self.prefixes: list[str] = []

    def generate(self, requests, max_new_tokens=1024, temperature=0.0, top_p=1.0, seed=None):
        self.requests.extend(requests)
        return [Completion(self.texts[self._tag(r)]) for r in requests]

    def _tag(self, request):
        """_video's tag: from the video's source; images (2.0) carry none: the one text there is."""
        videos = videos_of(request)
        return int(videos[0].source.removeprefix("video")) if videos else next(iter(self.texts))

    def choice_probs(self, requests, prefixes, choices):
        self.requests.extend(requests)
        self.prefixes.extend(prefixes)
        return np.array([self.rows[p.count("\n")] for p in prefixes], dtype=float)


def test_text_scoring_is_the_mean_of_sub_scores_and_keeps_raw_text_when_invalid():
    good = CORPUS[0]["text"]  # sub-scores 3, 4, 2, 3, 3; Final Score 7 (logged only)
    bad = "visual quality: 3\ntemporal consistency: 4\ndynamic deg"
    backend = TextBackend({0: good, 1: bad})
    out = UnifiedReward(backend, version="v1", scoring="text")([_video(0), _video(1)], ["a cat", "a dog"])
    assert out.name == "unified_reward"
    # (3 + 4 + 2 + 3 + 3) / 5 = 3.0, not the final score 7
    assert out.scores[0] == pytest.approx(3.0) and out.details[0]["final_score"] == 7
    assert out.valid.tolist() == [True, False]
    assert math.isnan(out.scores[1]) and out.details[1]["text"] == bad
    assert "no 'dynamic degree' score" in out.details[1]["error"] and out.details[1]["error_kind"] == "parse"
    # The prompt reaches the model in the format's text, after the video.
    content = backend.requests[0][0]["content"]
    assert content[0]["type"] == "video" and "Text Prompt: [a cat]" in content[1]["text"]


def test_probs_scoring_v1_expectation_and_teacher_forced_prefixes():
    # Position k answers with row k. Expected values, sum_d d * p_d / sum_d p_d over digits 1..4:
    #   row 0: (1*.1 + 2*.2 + 3*.3 + 4*.4) / 1.0 = 3.0   (argmax 4)
    #   row 1: (1*.05 + 2*.05) / .1 = 1.5                (mass 0.1; argmax "1", first of the tie)
    #   row 2: (3*.2 + 4*.2) / .4 = 3.5                  (argmax "3")
    #   row 3: 2.0 (all mass on "2");  row 4: 1.0 (all mass on "1")
    rows = [[0.1, 0.2, 0.3, 0.4], [0.05, 0.05, 0.0, 0.0], [0.0, 0.0, 0.2, 0.2], [0, 1, 0, 0], [1, 0, 0, 0]]
    backend = TextBackend(rows=rows)
    out = UnifiedReward(backend, version="v1", scoring="probs")([_video(0)], ["a cat"])
    assert out.valid.tolist() == [True]
    assert out.details[0]["sub_scores"] == pytest.approx(
        {"visual_quality": 3.0, "temporal_consistency": 1.5, "dynamic_degree": 3.5, "text_alignment": 2.0, "factual_consistency": 1.0}
    )
    assert out.scores[0] == pytest.approx((3.0 + 1.5 + 3.5 + 2.0 + 1.0) / 5)  # 2.2
    # Each position is read after the lines already decided, written with the most likely digit
    # and laid out as the real v1 model writes its answer: lines 2-5 start with a space.
    assert backend.prefixes == [
        "visual quality: ",
        "visual quality: 4\n temporal consistency: ",
        "visual quality: 4\n temporal consistency: 1\n dynamic degree: ",
        "visual quality: 4\n temporal consistency: 1\n dynamic degree: 3\n text-to-video alignment: ",
        "visual quality: 4\n temporal consistency: 1\n dynamic degree: 3\n text-to-video alignment: 2\n factual consistency: ",
    ]
    assert out.details[0]["text"] == (
        "visual quality: 4\n temporal consistency: 1\n dynamic degree: 3\n text-to-video alignment: 2\n factual consistency: 1"
    )
    # ... and that layout parses back in text scoring
    assert parse_scores(out.details[0]["text"], FORMATS["v1"])[0]["factual_consistency"] == 1.0


def test_probs_scoring_v2_writes_expected_decimals_and_flags_zero_mass():
    # Digits 1..5. Row 0: half on "3", half on "4" -> 3.5, written "3.5000" as 2.0 writes decimals.
    rows = [[0, 0, 0.5, 0.5, 0], [0, 0, 0, 0, 1], [0.25, 0, 0, 0, 0.25]]
    backend = TextBackend(rows=rows)
    out = UnifiedReward(backend, version="2.0", scoring="probs")([_video(0)], ["a cat"])
    assert out.details[0]["sub_scores"] == pytest.approx({"alignment": 3.5, "physics": 5.0, "style": 3.0})
    assert out.scores[0] == pytest.approx(11.5 / 3)
    assert backend.prefixes[1] == "Alignment Score (1-5): 3.5000\nPhysics Score (1-5): "
    # No probability on any score digit: invalid, not a score.
    dead = UnifiedReward(TextBackend(rows=[[0] * 5] * 3), version="2.0", scoring="probs")([_video(0)], ["x"])
    assert dead.valid.tolist() == [False] and "probability mass 0" in dead.details[0]["error"]
    assert dead.details[0]["error_kind"] == "score"
    # A floor on the mass (the model was not answering in format) is a recipe option.
    low = UnifiedReward(TextBackend(rows=rows), version="2.0", scoring="probs", min_digit_mass=0.6)([_video(0)], ["x"])
    assert low.valid.tolist() == [False] and "'Style Score'" in low.details[0]["error"]


def test_frames_are_sampled_uniformly_and_prompts_are_required():
    video = _video(0, frames=81)  # Wan-2.1: 81 frames at 16 fps
    sampled = sample_uniform(video, 16)
    # round(linspace(0, 80, 16)) = 0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59, 64, 69, 75, 80
    assert sampled.frames[:, 0, 0, 0].tolist() == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59, 64, 69, 75, 80]
    assert sampled.timestamps[-1] == pytest.approx(80 / 16)
    assert sample_uniform(_video(0, frames=8), 16).num_frames == 8
    backend = TextBackend({0: CORPUS[0]["text"]})
    out = UnifiedReward(backend, num_frames=16)([video, "/no/such/video.mp4", video], ["a", "b", None])
    assert out.valid.tolist() == [True, False, False]
    assert "no/such/video.mp4" in out.details[1]["error"] and "needs the generating prompt" in out.details[2]["error"]
    assert out.failure_counts() == {"video": 1, "prompt": 1}
    assert videos_of(backend.requests[0])[0].num_frames == 16
    with pytest.raises(ValueError, match="2 prompts"):
        UnifiedReward(backend)([video], ["a", "b"])


def test_default_frames_follow_the_authors_sampling():
    # v1's official script: qwen-vl-utils at 2 fps. 81 frames at 16 fps: 81 / 16 * 2 = 10.125 ->
    # 10 frames (an even count), at round(linspace(0, 80, 10)) = 0, 9, 18, 27, 36, 44, 53, 62, 71, 80,
    # reported to the processor at 10 / 81 * 16 = 1.975 fps.
    wan = _video(0, frames=81)
    sampled = sample_like_qwen_vl_utils(wan)
    assert sampled.fps == pytest.approx(10 / 81 * 16)
    assert sampled.timestamps.tolist() == pytest.approx([i / 16 for i in [0, 9, 18, 27, 36, 44, 53, 62, 71, 80]])
    # 33 frames: 4.125 -> 4 frames at round(linspace(0, 32, 4)) = 0, 11, 21, 32;
    # 5 frames: fewer than qwen-vl-utils' minimum of 4 at 2 fps -> its bound, 4 frames
    assert sample_like_qwen_vl_utils(_video(0, frames=33)).timestamps.tolist() == pytest.approx([0, 11 / 16, 21 / 16, 2.0])
    assert sample_like_qwen_vl_utils(_video(0, frames=5)).timestamps.tolist() == pytest.approx([0, 1 / 16, 3 / 16, 4 / 16])
    assert sample_like_qwen_vl_utils(_video(0, frames=1)).num_frames == 1
    # sizes as qwen-vl-utils resizes: sides to multiples of 28 within 128..768 tokens of 28x28 per
    # frame: 480x832 (399,360 px) -> 476x840; a 32x32 frame is below the minimum (100,352 px) and
    # grows to ceil(32 * sqrt(100352 / 1024) / 28) * 28 = 336 per side
    wan_sized = Video(np.full((17, 480, 832, 3), 128, np.uint8), 16.0)
    assert sample_like_qwen_vl_utils(wan_sized).frames.shape[1:3] == (476, 840)
    assert sampled.frames.shape[1:3] == (336, 336)
    # The reward's default for v1: those 10 frames, as one video
    backend = TextBackend({0: CORPUS[0]["text"]})
    UnifiedReward(backend, version="v1")([wan], ["a"])
    assert videos_of(backend.requests[0])[0].num_frames == 10
    assert UnifiedRewardConfig().num_frames is None
    with pytest.raises(ValueError, match="num_frames must be >= 2"):
        UnifiedRewardConfig(num_frames=1)


def _grey_video(frames: int = 81) -> Video:
    """Frame i is flat grey at level 3 * i, a value a JPEG of quality 95 gives back within 1."""
    levels = (3 * np.arange(frames)).astype(np.uint8)
    return Video(np.broadcast_to(levels[:, None, None, None], (frames, 48, 64, 3)).copy(), 16.0, source="grey")


def _levels(parts) -> list[int]:
    return [int(round(part["image"].mean() / 3)) for part in parts]


def test_v2_sends_16_separate_jpeg_images_at_the_authors_indices():
    # Their script: frames int(i * 81 / 16) for i < 16 = 0, 5, 10, 15, 20, 25, 30, 35, 40, 45,
    # 50, 55, 60, 65, 70, 75 (floor of 5.0625 * i), each saved as a JPEG and sent as an image.
    backend = TextBackend({0: "Alignment Score (1-5): 4\nPhysics Score (1-5): 3\nStyle Score (1-5): 2"})
    out = UnifiedReward(backend, version="2.0")([_grey_video(81)], ["a cat"])
    assert out.valid.all() and out.scores[0] == pytest.approx(3.0)
    content = backend.requests[0][0]["content"]
    images = [p for p in content if p["type"] == "image"]
    assert [p["type"] for p in content] == ["image"] * 16 + ["text"]  # 16 images, then the question; no video, no timestamps
    assert _levels(images) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75]
    assert np.abs(images[7]["image"].astype(int) - 105).max() <= 1  # a JPEG of quality 95 of flat 105
    # each part carries the JPEG file its pixels decode from (what a server receives)
    from PIL import Image
    import io
    for part in images:
        assert part["jpeg"][:2] == b"\xff\xd8"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(part["jpeg"])).convert("RGB")), part["image"])
    # a short video: each frame once (int(i * 5 / 16) = 0,0,0,0,1,...): all 5 frames
    backend = TextBackend({0: "Alignment Score (1-5): 4\nPhysics Score (1-5): 3\nStyle Score (1-5): 2"})
    UnifiedReward(backend, version="2.0")([_grey_video(5)], ["a cat"])
    assert _levels([p for p in backend.requests[0][0]["content"] if p["type"] == "image"]) == [0, 1, 2, 3, 4]
    # num_frames: that many images at int(i * total / n): 81 / 4 -> 0, 20, 40, 60
    backend = TextBackend({0: "Alignment Score (1-5): 4\nPhysics Score (1-5): 3\nStyle Score (1-5): 2"})
    UnifiedReward(backend, version="2.0", num_frames=4)([_grey_video(81)], ["a cat"])
    assert _levels([p for p in backend.requests[0][0]["content"] if p["type"] == "image"]) == [0, 20, 40, 60]


def test_v2_through_a_server_sends_the_same_jpeg_files_and_no_timestamps():
    from chat_server import ChatServer

    from cac_align.vlm.openai import OpenAIBackend
    import base64

    answer = "Alignment Score (1-5): 4\nPhysics Score (1-5): 3\nStyle Score (1-5): 2"
    local = TextBackend({0: answer})
    UnifiedReward(local, version="2.0")([_grey_video(81)], ["a cat"])
    files = [p["jpeg"] for p in local.requests[0][0]["content"] if p["type"] == "image"]
    with ChatServer(answer=lambda messages: answer) as server:
        out = UnifiedReward(OpenAIBackend("ur", base_url=server.url, max_retries=0), version="2.0")([_grey_video(81)], ["a cat"])
    assert out.valid.all() and out.scores[0] == pytest.approx(3.0)
    parts = server.requests[-1]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 16 + ["text"]
    sent = [base64.b64decode(p["image_url"]["url"].removeprefix("data:image/jpeg;base64,")) for p in parts[:16]]
    assert sent == files  # byte for byte the files the in-process model's pixels decode from
    assert not any("<t=" in p.get("text", "") for p in parts)


AUTHORS_STYLE_SCRIPT = '''
from transformers import AutoProcessor

prompt = ""
video_path = "/path/to/video"
messages = [
    {
        "role": "user",
        "content": [
            {"type": "video", "video": video_path},
            {"type": "text", "text": f"Rate this video from 1 to 4.\\nvisual quality: X\\nIts prompt: [{prompt}]"},
        ],
    }
]
print(f"scoring {video_path}")
'''


def test_template_is_read_from_the_authors_script(tmp_path):
    script = tmp_path / "qwen_point_score_video_generation.py"
    script.write_text(AUTHORS_STYLE_SCRIPT)
    assert read_template(script) == "Rate this video from 1 to 4.\nvisual quality: X\nIts prompt: [{prompt}]"
    backend = TextBackend({0: CORPUS[0]["text"]})
    UnifiedReward(backend, template=read_template(script))([_video(0)], ["a red fox"])
    assert backend.requests[0][0]["content"][1]["text"].endswith("Its prompt: [a red fox]")
    # a text file with the placeholder works as well
    plain = tmp_path / "question.txt"
    plain.write_text("Judge it. Prompt: {prompt}")
    assert read_template(plain) == "Judge it. Prompt: {prompt}"
    # errors name the problem
    two = tmp_path / "two.py"
    two.write_text('a = {"text": f"one {prompt}"}\nb = {"text": f"two {prompt}"}\n')
    with pytest.raises(ValueError, match="found 2"):
        read_template(two)
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="found 0"):
        read_template(tmp_path / "none.py")
    (tmp_path / "bare.txt").write_text("no placeholder")
    with pytest.raises(ValueError, match="needs a {prompt} placeholder"):
        read_template(tmp_path / "bare.txt")
    with pytest.raises(ValueError, match=r"reward.template_file: '.*missing.py': no such file"):
        build(UnifiedRewardConfig(model=ModelConfig(name="tiny-random:qwen2_5_vl"), template_file=str(tmp_path / "missing.py")), "reward")


# The 2.0 script's shape: frames read with cv2, the question assigned to ``problem`` as adjacent
# string literals with one f-string among them (Python joins them into one f-string).
AUTHORS_STYLE_SCRIPT_V2 = '''
import os
from vllm_qwen.vllm_request import evaluate_batch

def read_video_frames(video_path, num_frames=8, save_dir="./frames", prefix="video"):
    return [f"{prefix}_frame_{i:03d}.jpg" for i in range(num_frames)]

prompt = ""
images = read_video_frames("", num_frames=16)
problem = (
    "Judge the video against its caption.\\n"
    "Alignment Score (1-5): X\\n"
    f"Caption: [{prompt}]"
)
input_data = [{'problem': problem, 'images': images}]
output = evaluate_batch(input_data, "http://localhost:8080", image_root=None)
print(output[0]['model_output'])
'''


def _checkout(root, v1=AUTHORS_STYLE_SCRIPT, v2=AUTHORS_STYLE_SCRIPT_V2):
    """A folder laid out like github.com/CodeGoat24/UnifiedReward, with scripts in its shapes."""
    from cac_align.rewards.unified import AUTHORS_SCRIPTS

    for version, text in [("v1", v1), ("2.0", v2)]:
        path = root / AUTHORS_SCRIPTS[version]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_2_0_script_shape_is_read(tmp_path):
    script = tmp_path / "point_score_APS_video_generation.py"
    script.write_text(AUTHORS_STYLE_SCRIPT_V2)
    assert read_template(script) == "Judge the video against its caption.\nAlignment Score (1-5): X\nCaption: [{prompt}]"


def test_one_setting_points_at_the_authors_checkout(tmp_path, monkeypatch, caplog):
    from cac_align.rewards.unified import AUTHORS_SCRIPTS, resolve_template

    repo = _checkout(tmp_path / "UnifiedReward")
    monkeypatch.delenv("UNIFIED_REWARD_REPO", raising=False)
    # the config key: each version finds its own script
    for version, expected in [("v1", "Its prompt: [{prompt}]"), ("2.0", "Caption: [{prompt}]")]:
        template, source = resolve_template(UnifiedRewardConfig(version=version, authors_repo=str(repo)))
        assert template.endswith(expected)
        assert source == f"authors_script:{(repo / AUTHORS_SCRIPTS[version]).resolve()}"
    # or the environment variable, set once for every recipe
    monkeypatch.setenv("UNIFIED_REWARD_REPO", str(repo))
    reward = build(UnifiedRewardConfig(model=ModelConfig(name="tiny-random:qwen3_vl", dtype="float32"), version="2.0"), "reward")
    assert reward.template.endswith("Caption: [{prompt}]")
    out = reward([_video(0, frames=8)], ["a red fox"])
    assert out.info["prompt_sources"]["unified_reward"].startswith("authors_script:")
    assert out.details[0]["prompt_source"] == out.info["prompt_sources"]["unified_reward"]
    # template_file takes precedence over the checkout
    plain = tmp_path / "q.txt"
    plain.write_text("Mine: {prompt}")
    assert resolve_template(UnifiedRewardConfig(template_file=str(plain))) == ("Mine: {prompt}", f"template_file:{plain.resolve()}")
    # a wrong checkout names the setting and what it lacks
    with pytest.raises(ValueError, match="the environment variable UNIFIED_REWARD_REPO=.*: no such folder"):
        monkeypatch.setenv("UNIFIED_REWARD_REPO", str(tmp_path / "nowhere"))
        resolve_template(UnifiedRewardConfig())
    with pytest.raises(ValueError, match=r"reward.authors_repo=.*: no inference_qwen/video_generation/qwen_point_score_video_generation.py there"):
        resolve_template(UnifiedRewardConfig(authors_repo=str(tmp_path)), "reward")


def test_a_real_checkpoint_asked_the_paraphrase_warns_once(monkeypatch, caplog):
    import logging

    from cac_align.rewards import unified

    monkeypatch.delenv("UNIFIED_REWARD_REPO", raising=False)
    monkeypatch.setattr(unified, "_warned_paraphrase", set())
    with caplog.at_level(logging.WARNING, logger="cac_align.rewards.unified"):
        for _ in range(3):
            assert unified.resolve_template(UnifiedRewardConfig()) == (None, "built_in_paraphrase")
        unified.resolve_template(UnifiedRewardConfig(model=ModelConfig(name="tiny-random:qwen2_5_vl")))  # tiny: no warning
    warnings = [r for r in caplog.records if "built-in paraphrase" in r.getMessage()]
    assert len(warnings) == 1
    assert "CodeGoat24/UnifiedReward-qwen-7b" in warnings[0].getMessage() and "UNIFIED_REWARD_REPO" in warnings[0].getMessage()
    # and the results say which question was asked
    out = UnifiedReward(TextBackend({0: CORPUS[0]["text"]}))([_video(0)], ["a"])
    assert out.details[0]["prompt_source"] == "built_in_paraphrase" == out.info["prompt_sources"]["unified_reward"]


def test_qwen_vl_utils_pin_admits_only_versions_with_the_names_we_use():
    # sample_like_qwen_vl_utils reads VIDEO_MIN_TOKEN_NUM, VIDEO_MAX_TOKEN_NUM and MODEL_SEQ_LEN,
    # which qwen-vl-utils defines from 0.0.13 on (0.0.11 had VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS).
    import configparser
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet
    from qwen_vl_utils import vision_process

    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    pin = next(line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip().startswith("qwen-vl-utils"))
    spec = SpecifierSet(pin.removeprefix("qwen-vl-utils"))
    assert "0.0.11" not in spec and "0.0.12" not in spec and "0.0.13" in spec and "0.0.14" in spec
    assert version("qwen-vl-utils") in spec
    for name in ("VIDEO_MIN_TOKEN_NUM", "VIDEO_MAX_TOKEN_NUM", "MODEL_SEQ_LEN", "FRAME_FACTOR", "smart_nframes", "smart_resize"):
        assert hasattr(vision_process, name), name


@pytest.mark.parametrize("kind, version", [("qwen2_5_vl", "v1"), ("qwen3_vl", "2.0")])
def test_probs_scoring_encodes_each_video_once_with_the_same_numbers(kind, version, tiny_qwen2_5_vl, tiny_qwen3_vl):
    tiny = tiny_qwen2_5_vl if kind == "qwen2_5_vl" else tiny_qwen3_vl

    class RoundByRound(HFBackend):
        choice_probs_steps = BackendBase.choice_probs_steps  # the generic path: every position re-encodes the request

    videos = [_video(0, frames=12), _video(1, frames=10), _video(2, frames=12)]  # left padding in the batch
    encoded = []
    hook = tiny.model.model.visual.register_forward_hook(
        lambda module, args, kwargs, output: encoded.append(int(kwargs.get("grid_thw", args[1] if len(args) > 1 else None).shape[0])),
        with_kwargs=True,
    )
    try:
        once = UnifiedReward(HFBackend(tiny.model, tiny.processor), version=version, scoring="probs", num_frames=6)(videos, ["a", "b", "c"])
        chained_encodings = sum(encoded)
        encoded.clear()
        each = UnifiedReward(RoundByRound(tiny.model, tiny.processor), version=version, scoring="probs", num_frames=6)(videos, ["a", "b", "c"])
        round_encodings = sum(encoded)
    finally:
        hook.remove()
    positions = len(FORMATS[version].dimensions)
    per_request = 1 if version == "v1" else 6  # v1: one video; 2.0: six separate images
    assert chained_encodings == 3 * per_request and round_encodings == 3 * per_request * positions
    for a, b in zip(once.details, each.details):
        assert a["text"] == b["text"]
        for key in a["digit_probs"]:
            np.testing.assert_allclose(a["digit_probs"][key], b["digit_probs"][key], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(once.scores, each.scores, rtol=1e-6)


@pytest.mark.parametrize("kind, version", [("qwen2_5_vl", "v1"), ("qwen3_vl", "2.0")])
def test_tiny_models_through_both_scoring_ways(kind, version, tiny_qwen2_5_vl, tiny_qwen3_vl):
    tiny = tiny_qwen2_5_vl if kind == "qwen2_5_vl" else tiny_qwen3_vl
    backend = HFBackend(tiny.model, tiny.processor)
    fmt = FORMATS[version]
    videos = [_video(0, frames=12), _video(1, frames=12)]
    # probs: every sub-score is the expectation of the digit probabilities the model gave
    out = UnifiedReward(backend, version=version, scoring="probs", num_frames=6)(videos, ["a cat", "a dog"])
    assert out.valid.all()
    digits = np.arange(fmt.low, fmt.high + 1)
    for details in out.details:
        for key, _ in fmt.dimensions:
            row = np.array(details["digit_probs"][key])
            assert details["sub_scores"][key] == pytest.approx((digits * row).sum() / row.sum())
    # ... and the first position's probabilities are the backend's own for that prefix
    shown = authors_images(videos[0], 6) if version == "2.0" else [{"type": "video", "video": sample_uniform(videos[0], 6)}]
    request = [{"role": "user", "content": [*shown, {"type": "text", "text": fmt.template.replace("{prompt}", "a cat")}]}]
    head = fmt.line.split("{value}")[0].format(label=fmt.dimensions[0][1])
    direct = backend.choice_probs([request], [head], fmt.digits)[0]
    assert np.allclose(out.details[0]["digit_probs"][fmt.dimensions[0][0]], direct, rtol=1e-5, atol=1e-12)
    assert out.scores == pytest.approx([np.mean(list(d["sub_scores"].values())) for d in out.details])
    # text: a random model does not write the format; the sample is invalid and its raw answer kept
    text_out = UnifiedReward(backend, version=version, scoring="text", num_frames=6, max_new_tokens=8)(videos[:1], ["a cat"])
    generated = backend.generate([request], max_new_tokens=8)[0].text
    assert text_out.valid.tolist() == [False] and math.isnan(text_out.scores[0])
    assert text_out.details[0]["text"] == generated and "unparsable answer" in text_out.details[0]["error"]


def test_through_an_openai_compatible_server_both_ways():
    from chat_server import ChatServer, char_logprob

    from cac_align.vlm.openai import OpenAIBackend

    answer = "Alignment Score (1-5): 4.5\nPhysics Score (1-5): 2.0\nStyle Score (1-5): 3.25"
    with ChatServer(answer=lambda messages: answer) as server:
        backend = OpenAIBackend("ur", base_url=server.url, max_retries=0)
        text = UnifiedReward(backend, version="2.0", scoring="text", num_frames=4)([_video(0)], ["a cat"])
        probs = UnifiedReward(backend, version="2.0", scoring="probs", num_frames=4)([_video(0)], ["a cat"])
    assert text.scores[0] == pytest.approx((4.5 + 2.0 + 3.25) / 3)
    # The toy server gives character c the log-probability char_logprob(ord(c)); each digit is one
    # character, so p_d = exp(char_logprob(ord(d))) at every position and every sub-score is
    # sum_d d * p_d / sum_d p_d over d = 1..5.
    p = np.array([math.exp(char_logprob(ord(str(d)))) for d in range(1, 6)])
    expected = float((np.arange(1, 6) * p).sum() / p.sum())
    assert probs.valid.all() and probs.scores[0] == pytest.approx(expected)
    assert probs.details[0]["sub_scores"] == pytest.approx({"alignment": expected, "physics": expected, "style": expected})


def test_a_server_that_stops_answering_marks_only_those_samples_invalid():
    from chat_server import ChatServer

    from cac_align.vlm.openai import OpenAIBackend

    answer = "Alignment Score (1-5): 4\nPhysics Score (1-5): 2\nStyle Score (1-5): 3"

    def refuses(body):  # the server fails every request about the "storm" prompt
        return any("storm" in part.get("text", "") for m in body["messages"] if isinstance(m["content"], list) for part in m["content"])

    with ChatServer(answer=lambda messages: answer, fail_if=refuses) as server:
        backend = OpenAIBackend("ur", base_url=server.url, max_retries=0, backoff_s=0.0)
        reward = UnifiedReward(backend, version="2.0", num_frames=4, batch_size=3)
        out = reward([_video(0), _video(1), _video(2)], ["a cat", "a storm", "a dog"])
    assert out.valid.tolist() == [True, False, True]
    assert out.scores[0] == pytest.approx(3.0) and out.scores[2] == pytest.approx(3.0)
    assert list(out.errors) == [1] and server.url in out.errors[1] and "backend failed" in out.errors[1]
    assert out.details[1]["error_kind"] == "backend"
    # A server failing the whole call: every sample invalid with the URL while the requests that
    # failed in a row stay under the breaker's limit; past it, the call stops (ServerDown) instead
    # of waiting out every remaining sample's timeouts.
    from cac_align.vlm.openai import ServerDown

    with ChatServer(answer=lambda messages: answer, fail_if=lambda body: True) as server:
        down = UnifiedReward(OpenAIBackend("ur", base_url=server.url, max_retries=0, failure_limit=10), version="2.0", num_frames=4)(
            [_video(0), _video(1)], ["a", "b"]
        )
        assert not down.valid.any() and all(server.url in e for e in down.errors.values())
        # past the breaker's limit the rest are not asked: invalid as "down" (the job decides: score stops)
        asked = len(server.requests)
        out = UnifiedReward(OpenAIBackend("ur", base_url=server.url, max_retries=0, failure_limit=3), version="2.0", num_frames=4)(
            [_video(0), _video(1)], ["a", "b"]
        )
        kinds = [d["error_kind"] for d in out.details]
        assert not out.valid.any() and kinds.count("down") >= 1 and set(kinds) <= {"backend", "down"}
        assert all("3 requests in a row failed" in d["error"] for d in out.details if d["error_kind"] == "down")
        assert len(server.requests) - asked == 3  # two in the batch, one asked again alone, then the breaker opened
        assert issubclass(ServerDown, ConnectionError)
