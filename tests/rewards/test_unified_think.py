"""UnifiedReward-Think / -Flex as groupwise rewards: what one pair shows a tiny Qwen3-VL, verdict
parsing, Pref-GRPO's win-rate arithmetic, and both tiny recipes end to end.

Values below are worked out by hand from the sources at these commits:

- github.com/CodeGoat24/UnifiedReward @ ff6f520247a2d36e2aff7b2ba53a935afd437f66
  - ``UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py``:
    L17-41 ``extract_frames``: ``np.linspace(0, frame_count - 1, num_frames).astype(int)`` (L27);
    L10-14 each frame a PIL JPEG of quality 95, base64; L51 the question is an f-string assigned
    to ``problem`` with one ``{prompt}`` field; L117-126 8 frames of video 1, then 8 of video 2,
    as ``images`` beside ``problem``.
  - ``UnifiedReward-Flex/flex_pair_rank_video_generation.py``: the same frames and images
    (L17-41, L103-112); L51-100 the question, an f-string whose JSON braces are doubled.
  - ``vllm_qwen/vllm_request.py`` L72-98 ``build_messages``: one user turn, every image as an
    ``image_url`` (base64 JPEG) in order, then the text; L111-116 ``max_tokens: 4096``.
- github.com/CodeGoat24/Pref-GRPO @ 3e787f6dd5a3051b40d61f07e9578468ac26130a
  - ``fastvideo/rewards/unifiedreward_think.py``: L113-136 ``_extract_frames`` (L123
    ``min(num_frames, frame_count)``, L124 ``linspace(..., dtype=int)``); L150-160 pairs are
    ``itertools.combinations`` of the group in order, first video = lower index; L16-18 the
    verdict is the first ``<answer>(.*?)</answer>``, L42-52 "Video 1 is better" checked first,
    anything else (or no tag) 0.5 to each; L54-62 win rate ``round(wins / comparisons, 3)``,
    0.0 for an item in no pair.
  - ``fastvideo/rewards/unifiedreward_flex.py``: L81-94 JSON whole, else the greedy ``{.*}``
    span; L97-107 a winner names exactly one of video 1 / video 2 (``\\b(?:video|image)\\s*N\\b``);
    L110-118 first three categories keyed by name; L121-238 category win rates, their weighted
    mean rounded to 3, reward ``(ow * overall + dw * dim_mean) / (ow + dw)``.

Nothing of their text is copied here: the stand-in checkout below has their file layout and
shapes (an f-string ``problem`` with ``{prompt}``; doubled braces in Flex's) in our own words.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from cac_align.rewards.unified_think import (
    PAIR_SCRIPTS,
    FlexVerdict,
    PairwiseUnifiedReward,
    UnifiedRewardFlexConfig,
    UnifiedRewardThinkConfig,
    flex_scores,
    pair_frame_indices,
    parse_flex,
    parse_think,
    resolve_pair_template,
    win_rates,
)
from cac_align.video import Video
from cac_align.vlm.backend import BackendBase, Completion, images_of
from cac_align.vlm.hf import HFBackend
from conftest import REPO_ROOT, ForceAnswer

THINK_SCRIPT = """
import numpy as np
from vllm_qwen.vllm_request import evaluate_batch

def extract_frames(video_path, num_frames=8):
    return []

video_path_1 = "/path/to/first.mp4"
video_path_2 = "/path/to/second.mp4"
prompt = ""
problem = f'''Two videos made from one caption follow as frames: Video 1 first, then Video 2.
        Caption: 「{prompt}」
        Reason inside <think></think>, then write <answer>Video 1 is better</answer> or <answer>Video 2 is better</answer>.
        '''
frames_v1 = extract_frames(video_path_1, num_frames=8)
frames_v2 = extract_frames(video_path_2, num_frames=8)
input_data = [{'problem': problem, 'images': frames_v1 + frames_v2}]
output = evaluate_batch(input_data, "http://localhost:8080")[0]['model_output']
"""

FLEX_SCRIPT = '''
from vllm_qwen.vllm_request import evaluate_batch

prompt = ""
problem = f"""## Task
Compare [Video 1] and [Video 2] for the prompt [{prompt}].
Answer with JSON:
{{"categories": [{{"name": "...", "cat_winner": "Video 1/2"}}], "winner": "Video 1/2"}}
"""
input_data = [{'problem': problem, 'images': []}]
output = evaluate_batch(input_data, "http://localhost:8080")[0]['model_output']
'''

# The questions those scripts hold, filled with the prompt "a red kite" (written out by hand)
THINK_QUESTION = (
    "Two videos made from one caption follow as frames: Video 1 first, then Video 2.\n"
    "        Caption: 「a red kite」\n"
    "        Reason inside <think></think>, then write <answer>Video 1 is better</answer> or <answer>Video 2 is better</answer>.\n"
    "        "
)
FLEX_QUESTION = (
    "## Task\nCompare [Video 1] and [Video 2] for the prompt [a red kite].\nAnswer with JSON:\n"
    '{"categories": [{"name": "...", "cat_winner": "Video 1/2"}], "winner": "Video 1/2"}\n'
)


def _checkout(root):
    """A folder laid out like github.com/CodeGoat24/UnifiedReward with the two pairwise scripts."""
    for kind, text in [("think", THINK_SCRIPT), ("flex", FLEX_SCRIPT)]:
        path = root / PAIR_SCRIPTS[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _ramp(frames: int, step: int, height: int, width: int, fps: float) -> Video:
    """Frame i is flat grey at level step * i (a JPEG of quality 95 gives it back within 1)."""
    levels = (step * np.arange(frames)).astype(np.uint8)
    return Video(np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy(), fps)


def _flat(tag: int, frames: int = 9) -> Video:
    """Every frame flat grey at level 20 * tag + 10: the video's tag, readable from any image."""
    return Video(np.full((frames, 32, 32, 3), 20 * tag + 10, np.uint8), 16.0, source=f"video{tag}")


def _tag(image: np.ndarray) -> int:
    return int(round((float(image.mean()) - 10) / 20))


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def test_frame_indices_by_hand():
    # floor(linspace(0, 80, 8)): steps of 80/7 = 11.43 -> 0, 11, 22, 34, 45, 57, 68, 80
    assert pair_frame_indices(81).tolist() == [0, 11, 22, 34, 45, 57, 68, 80]
    # 33 frames (Pref-GRPO's Wan-2.1 t=33): steps of 32/7 = 4.571 -> 0, 4, 9, 13, 18, 22, 27, 32
    assert pair_frame_indices(33).tolist() == [0, 4, 9, 13, 18, 22, 27, 32]
    # 49 frames: steps of 48/7 = 6.857 -> 0, 6, 13, 20, 27, 34, 41, 48
    assert pair_frame_indices(49).tolist() == [0, 6, 13, 20, 27, 34, 41, 48]
    # fewer frames than 8: Pref-GRPO takes min(8, 5) = 5 -> each frame once
    assert pair_frame_indices(5).tolist() == [0, 1, 2, 3, 4]
    assert pair_frame_indices(81, num_frames=4).tolist() == [0, 26, 53, 80]  # 80/3 = 26.67


# ---------------------------------------------------------------------------------------
# What reaches the model
# ---------------------------------------------------------------------------------------
class _Inputs:
    """Records what each generate call (one pair: max_new_tokens=1, batch 1) gives the model: the
    vision tower's pixels and grids, and the token ids of the language model's prefill."""

    def __init__(self, model):
        self.vision: list[dict] = []
        self.tokens: list[list[int]] = []
        self.handles = [
            model.model.visual.register_forward_pre_hook(self.on_vision, with_kwargs=True),
            model.register_forward_pre_hook(self.on_prefill, with_kwargs=True),
        ]

    def on_vision(self, module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.vision.append({"pixel_values": args[0].detach().clone(), "image_grid_thw": grid.detach().clone()})

    def on_prefill(self, module, args, kwargs):
        self.tokens.append(kwargs["input_ids"][0].tolist())

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _image_levels(call, processor) -> list[int]:
    """Each image's grey level, read back from its normalized patches (channel 0)."""
    mean, std = processor.image_processor.image_mean[0], processor.image_processor.image_std[0]
    rows = call["image_grid_thw"].prod(dim=1).tolist()
    levels, start = [], 0
    for count in rows:
        patch = call["pixel_values"][start : start + count]
        channel0 = patch.reshape(count, 3, -1)[:, 0]
        levels.append(round((float(channel0.mean()) * std + mean) * 255))
        start += count
    return levels


def _expected_ids(tokenizer, tokens_per_image: list[int], question: str) -> list[int]:
    """The tokens of one user turn of these images (each ``n`` merged image tokens) and this
    question, written out in the tiny model's chat template (Qwen's structure: role header, each
    image as vision_start + pads + vision_end, the text, then the assistant header; the tiny
    template writes no newline after the headers)."""
    images = "".join("<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>" for n in tokens_per_image)
    text = "<|im_start|>user" + images + question + "<|im_end|><|im_start|>assistant"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind, question", [("think", THINK_QUESTION), ("flex", FLEX_QUESTION)])
def test_what_one_pair_shows_a_tiny_qwen3_vl(kind, question, tiny_qwen3_vl, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFIED_REWARD_REPO", str(_checkout(tmp_path / "UnifiedReward")))
    config = (UnifiedRewardThinkConfig if kind == "think" else UnifiedRewardFlexConfig)()
    template, source = resolve_pair_template(config)
    assert source == f"authors_script:{(tmp_path / 'UnifiedReward' / PAIR_SCRIPTS[kind]).resolve()}"
    backend = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor, max_batch_size=1)
    reward = PairwiseUnifiedReward(backend, kind=kind, max_new_tokens=1, template=template, prompt_source=source)
    # Three videos of one prompt, of several lengths, sizes and frame rates (the rate does not
    # move the indices: their script picks frames by count).
    a = _ramp(81, 3, 48, 64, 16.0)  # frame i at level 3i
    b = _ramp(33, 7, 40, 72, 24.0)  # frame i at level 7i
    c = _ramp(5, 50, 48, 64, 8.0)  # frame i at level 50i
    recorder = _Inputs(tiny_qwen3_vl.model)
    try:
        out = reward([a, b, c], ["a red kite"] * 3)
    finally:
        recorder.remove()
    assert out.info["model_calls"] == 3  # 3 * 2 / 2 pairs, one order each
    assert len(recorder.vision) == len(recorder.tokens) == 3
    # Frame indices: a 81 -> 0, 11, 22, 34, 45, 57, 68, 80; b 33 -> 0, 4, 9, 13, 18, 22, 27, 32;
    # c 5 -> 0..4. Pairs in order (a, b), (a, c), (b, c), the earlier video's frames first.
    a_idx, b_idx, c_idx = [0, 11, 22, 34, 45, 57, 68, 80], [0, 4, 9, 13, 18, 22, 27, 32], [0, 1, 2, 3, 4]
    expected_levels = [
        [3 * i for i in a_idx] + [7 * i for i in b_idx],
        [3 * i for i in a_idx] + [50 * i for i in c_idx],
        [7 * i for i in b_idx] + [50 * i for i in c_idx],
    ]
    # Sizes: each frame one image, resized by the processor's smart_resize (32-pixel grid: 16-pixel
    # patches merged 2x2; the tiny processor's bounds 1024..16384 pixels): 48x64 -> round(1.5)=2,
    # round(2)=2 -> 64x64 -> grid (1, 4, 4), 4 tokens; 40x72 -> round(1.25)=1, round(2.25)=2 ->
    # 32x64 -> grid (1, 2, 4), 2 tokens.
    grid_a, grid_b = [1, 4, 4], [1, 2, 4]
    expected_grids = [[grid_a] * 8 + [grid_b] * 8, [grid_a] * 8 + [grid_a] * 5, [grid_b] * 8 + [grid_a] * 5]
    tokens = {tuple(grid_a): 4, tuple(grid_b): 2}
    tokenizer = tiny_qwen3_vl.processor.tokenizer
    for call, ids, levels, grids in zip(recorder.vision, recorder.tokens, expected_levels, expected_grids):
        assert call["image_grid_thw"].tolist() == grids
        assert np.abs(np.array(_image_levels(call, tiny_qwen3_vl.processor)) - np.array(levels)).max() <= 1  # JPEG q95 of flat grey
        assert ids == _expected_ids(tokenizer, [tokens[tuple(g)] for g in grids], question)
    assert all(d["prompt_source"] == source for d in out.details)


def test_each_frame_is_one_jpeg_of_quality_95_and_the_order_follows_the_call():
    import io

    from PIL import Image

    backend = _Scripted({})
    PairwiseUnifiedReward(backend, kind="think")([_ramp(9, 20, 24, 40, 16.0), _flat(3)], ["p", "p"])
    images = [p for p in backend.requests[0][0]["content"] if p["type"] == "image"]
    assert [p["type"] for p in backend.requests[0][0]["content"]] == ["image"] * 16 + ["text"]
    # 9 frames -> floor(linspace(0, 8, 8)) = 0, 1, 2, 3, 4, 5, 6, 8 (8/7 = 1.143 apart)
    assert [round(float(p["image"].mean()) / 20) for p in images[:8]] == [0, 1, 2, 3, 4, 5, 6, 8]
    assert {_tag(p["image"]) for p in images[8:]} == {3}  # the second video of the call is Video 2
    frame = np.full((24, 40, 3), 20 * 6, np.uint8)
    once = io.BytesIO()
    Image.fromarray(frame).save(once, format="JPEG", quality=95)  # their _encode_image: one encoding
    assert images[6]["jpeg"] == once.getvalue()
    assert np.array_equal(images[6]["image"], np.asarray(Image.open(io.BytesIO(once.getvalue())).convert("RGB")))


# ---------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------
def test_think_verdicts():
    assert parse_think("<think>1. ...\nTotal score: ...</think>\n<answer>Video 2 is better</answer>") == (2, None)
    assert parse_think("<answer> Video 1 is better </answer>")[0] == 1
    # both phrases: "Video 1 is better" is checked first, as Pref-GRPO does
    assert parse_think("<answer>Video 1 is better. Video 2 is better.</answer>")[0] == 1
    # only the first <answer> counts
    assert parse_think("<answer>Video 2 is better</answer><answer>Video 1 is better</answer>")[0] == 2
    for text, problem in [
        ("Video 1 is better", "no <answer>"),
        ("<answer>Video 1 is better", "no <answer>"),
        ("<answer>  </answer>", "empty <answer>"),
        ("<answer>Both are equally good</answer>", "names neither video"),
        ("<answer>video 1 is better</answer>", "names neither video"),  # their check is case-sensitive
        ("", "no <answer>"),
    ]:
        winner, why = parse_think(text)
        assert winner is None and problem in why, (text, why)


def test_flex_verdicts():
    fenced = '```json\n{"categories": [{"name": "Semantic", "cat_winner": "Video 2"}], "winner": "Video 1"}\n```'
    assert parse_flex(fenced) == FlexVerdict(1, (("Semantic", 2),), None)
    # only the first three categories; a missing name is "category"; an unreadable cat_winner is None
    four = {"categories": [{"name": "A", "cat_winner": "video 1"}, {"cat_winner": "VIDEO2"}, {"name": "C", "cat_winner": "tie"},
                           {"name": "D", "cat_winner": "Video 1"}], "winner": "Video 2 is better"}
    import json

    assert parse_flex(json.dumps(four)) == FlexVerdict(2, (("A", 1), ("category", 2), ("C", None)), None)
    # "Video 1/2" names "video 1" as a whole word but never "video 2": video 1 (as Pref-GRPO reads it)
    assert parse_flex('{"winner": "Video 1/2"}').winner == 1
    for text, problem in [
        ('{"winner": "Both videos"}', "names neither video"),
        ('{"winner": "Video 1 and Video 2 tie"}', "names neither video"),
        ('{"reason": "no winner key"}', "names neither video"),
        ("Video 1 wins", "no JSON object"),
        ('{"winner": "Video 1",}', "no JSON object"),
        ('["Video 1"]', "no JSON object"),
    ]:
        verdict = parse_flex(text)
        assert verdict.winner is None and problem in verdict.problem, (text, verdict)


# ---------------------------------------------------------------------------------------
# Win rates by hand
# ---------------------------------------------------------------------------------------
def test_win_rates_by_hand():
    # 3 items; (0,1) first wins, (0,2) unreadable, (1,2) second wins.
    outcomes = [(0, 1, 1), (0, 2, None), (1, 2, 2)]
    # tie (Pref-GRPO): 0: (1 + 0.5) / 2 = 0.75; 1: 0 / 2 = 0; 2: (0.5 + 1) / 2 = 0.75
    assert win_rates(3, outcomes, "tie") == [0.75, 0.0, 0.75]
    # skip: 0: 1 / 1; 1: 0 / 2; 2: 1 / 1
    assert win_rates(3, outcomes, "skip") == [1.0, 0.0, 1.0]
    # all read: (0,1) second, (0,2) second, (1,2) first -> 0: 0/2, 1: 2/2, 2: 1/2
    assert win_rates(3, [(0, 1, 2), (0, 2, 2), (1, 2, 1)]) == [0.0, 1.0, 0.5]
    # rounded to 3 decimals. 4 items: 0 beats 1; 2 beats 0; 3 beats 0; 1 beats 2 and 3; 2 beats 3
    # -> 0: 1/3, 1: 2/3, 2: 2/3, 3: 1/3
    four = [(0, 1, 1), (0, 2, 2), (0, 3, 2), (1, 2, 1), (1, 3, 1), (2, 3, 1)]
    assert win_rates(4, four) == [0.333, 0.667, 0.667, 0.333]
    # a group of one, or items in no counted pair: no rate (Pref-GRPO: 0.0)
    assert win_rates(1, []) == [None]
    assert win_rates(2, [(0, 1, None)], "skip") == [None, None]
    with pytest.raises(ValueError, match="unparsed must be one of"):
        win_rates(2, [], "half")


def test_flex_scores_by_hand():
    verdicts = [
        (0, 1, FlexVerdict(1, (("A", 1), ("B", 2)))),
        (0, 2, FlexVerdict(2, (("A", 2), ("C", None)))),
        (1, 2, FlexVerdict(None, (("A", 1),), "unreadable")),
    ]
    # tie. overall: 0: 1/2 = 0.5; 1: (0 + 0.5)/2 = 0.25; 2: (1 + 0.5)/2 = 0.75
    # A: (0,1)->0, (0,2)->2, (1,2)->1: each 1/2. B: 0: 0/1, 1: 1/1. C (tie): 0: 0.5, 2: 0.5.
    # dim_mean: 0: (0.5 + 0 + 0.5)/3 = 0.333; 1: (0.5 + 1)/2 = 0.75; 2: (0.5 + 0.5)/2 = 0.5
    # score = (overall + dim_mean) / 2: 0.4165, 0.5, 0.625
    out = flex_scores(3, verdicts)
    assert [r["overall"] for r in out] == [0.5, 0.25, 0.75]
    assert out[0]["categories"] == {"A": 0.5, "B": 0.0, "C": 0.5} and out[1]["categories"] == {"A": 0.5, "B": 1.0}
    assert [r["dim_mean"] for r in out] == [0.333, 0.75, 0.5]
    assert [r["score"] for r in out] == pytest.approx([0.4165, 0.5, 0.625])
    # category weights by first appearance (A, B, C): [2] -> A 2, B 1, C 1.
    # dim_mean: 0: (2*0.5 + 0 + 0.5)/4 = 0.375; 1: (2*0.5 + 1)/3 = 0.667; 2: (2*0.5 + 0.5)/3 = 0.5
    weighted = flex_scores(3, verdicts, category_weights=[2.0])
    assert [r["dim_mean"] for r in weighted] == [0.375, 0.667, 0.5]
    assert [r["score"] for r in weighted] == pytest.approx([0.4375, 0.4585, 0.625])
    # skip: overall 0: 1/2, 1: 0/1, 2: 1/1; C has no counted pair; dim_mean 0: 0.25, 1: 0.75, 2: 0.5
    skipped = flex_scores(3, verdicts, unparsed="skip")
    assert [r["overall"] for r in skipped] == [0.5, 0.0, 1.0] and "C" not in skipped[0]["categories"]
    assert [r["score"] for r in skipped] == pytest.approx([0.375, 0.375, 0.75])
    # dim_weight 0: the overall win rate alone; overall_weight 3: (3 * 0.5 + 0.333) / 4 = 0.45825
    assert [r["score"] for r in flex_scores(3, verdicts, dim_weight=0.0)] == [0.5, 0.25, 0.75]
    assert flex_scores(3, verdicts, overall_weight=3.0)[0]["score"] == pytest.approx(0.45825)


# ---------------------------------------------------------------------------------------
# The reward on scripted answers
# ---------------------------------------------------------------------------------------
class _Scripted(BackendBase):
    """Answers each pair from a table keyed by the two videos' tags (first, second)."""

    def __init__(self, answers: dict[tuple[int, int], str], fail: set[int] | None = None):
        self.answers, self.fail = answers, fail or set()
        self.requests: list = []

    def generate(self, requests, max_new_tokens=1024, temperature=0.0, top_p=1.0, seed=None):
        out = []
        for request in requests:
            images = images_of(request)
            pair = (_tag(images[0]), _tag(images[-1]))
            if self.fail & set(pair):
                raise ConnectionError(f"server refused pair {pair}")
            self.requests.append(request)
            out.append(Completion(self.answers.get(pair, "")))
        return out

    def choice_probs(self, requests, prefixes, choices):  # pragma: no cover - not used
        raise NotImplementedError


WIN1 = "<think>...</think>\n<answer>Video 1 is better</answer>"
WIN2 = "<think>...</think>\n<answer>Video 2 is better</answer>"


def test_groups_ties_unparsed_and_alone():
    # Group "p": videos 0, 1, 2 (and a video that cannot be read); group "q": video 3 alone.
    backend = _Scripted({(0, 1): WIN1, (0, 2): "I prefer video 2", (1, 2): WIN2})
    reward = PairwiseUnifiedReward(backend, kind="think", batch_size=2)
    videos = [_flat(0), _flat(1), "/no/such/video.mp4", _flat(2), _flat(3)]
    out = reward(videos, ["p", "p", "p", "p", "q"])
    # as test_win_rates_by_hand: 0.75, 0.0, 0.75 (the unreadable pair half a win to each)
    assert out.valid.tolist() == [True, True, False, True, False]
    assert out.scores[[0, 1, 3]].tolist() == [0.75, 0.0, 0.75]
    assert out.details[2]["error_kind"] == "video" and "no/such/video.mp4" in out.details[2]["error"]
    assert out.details[4]["error_kind"] == "score" and "no other valid video in its group" in out.details[4]["error"]
    assert math.isnan(out.scores[4])
    d0 = out.details[0]
    assert (d0["group_size"], d0["wins"], d0["comparisons"], d0["unparsed_pairs"], d0["failed_pairs"]) == (3, 1.5, 2, 1, 0)
    assert [(p["against"], p["position"], p["result"]) for p in d0["pairs"]] == [(1, 1, "win"), (3, 1, "unparsed")]
    assert d0["pairs"][1]["text"] == "I prefer video 2" and "no <answer>" in d0["pairs"][1]["problem"]
    assert [(p["against"], p["position"], p["result"]) for p in out.details[3]["pairs"]] == [(0, 2, "unparsed"), (1, 2, "win")]
    assert out.info["model_calls"] == 3 and out.info["unparsed_pairs"] == 1 and out.info["failed_pairs"] == 0
    # the same answers under "skip": 1.0, 0.0, 1.0
    skip = PairwiseUnifiedReward(_Scripted(backend.answers), kind="think", unparsed="skip")(videos, ["p", "p", "p", "p", "q"])
    assert skip.scores[[0, 1, 3]].tolist() == [1.0, 0.0, 1.0]
    # a video whose every verdict is unreadable is invalid (Pref-GRPO would give it 0.5), raw text kept
    dead = PairwiseUnifiedReward(_Scripted({(0, 1): "no verdict"}), kind="think")([_flat(0), _flat(1)], ["p", "p"])
    assert dead.valid.tolist() == [False, False] and dead.failure_counts() == {"parse": 2}
    assert "no verdict could be read" in dead.details[0]["error"] and dead.details[0]["win_rate"] is None
    assert dead.details[1]["pairs"][0]["text"] == "no verdict"


def test_both_orders_metadata_groups_and_failed_calls():
    # both_orders: n(n - 1) = 6 calls for 3 videos, each pair also swapped. Video 0 always wins:
    # every answer names the position video 0 holds.
    answers = {(0, 1): WIN1, (1, 0): WIN2, (0, 2): WIN1, (2, 0): WIN2, (1, 2): WIN1, (2, 1): WIN1}
    backend = _Scripted(answers)
    out = PairwiseUnifiedReward(backend, kind="think", both_orders=True)([_flat(0), _flat(1), _flat(2)], ["p"] * 3)
    assert out.info["model_calls"] == 6
    order = [(_tag(images_of(r)[0]), _tag(images_of(r)[-1])) for r in backend.requests]
    assert order == [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]
    # 0: 4/4; 1: (1,2) win, (2,1) loss -> 1/4; 2: (2,1) win -> 1/4
    assert out.scores.tolist() == [1.0, 0.25, 0.25]
    # metadata "group" over prompts; the group is asked with its first video's prompt
    backend = _Scripted({(0, 1): WIN2})
    grouped = PairwiseUnifiedReward(backend, kind="think")([_flat(0), _flat(1)], ["first prompt", "other words"], [{"group": 7}, {"group": 7}])
    assert grouped.scores.tolist() == [0.0, 1.0]
    assert "first prompt" in backend.requests[0][0]["content"][-1]["text"]
    # a call that fails fails only its pairs: video 2's pairs are left out; with no pair left it is
    # invalid "backend"
    failing = _Scripted({(0, 1): WIN1}, fail={2})
    out = PairwiseUnifiedReward(failing, kind="think", batch_size=3)([_flat(0), _flat(1), _flat(2)], ["p"] * 3)
    assert out.valid.tolist() == [True, True, False]
    assert out.scores[:2].tolist() == [1.0, 0.0]
    assert out.details[0]["failed_pairs"] == 1 and out.details[0]["comparisons"] == 1
    assert out.details[2]["error_kind"] == "backend" and "server refused" in out.details[2]["error"]
    assert out.info["failed_pairs"] == 2


def test_flex_details_per_category():
    import json

    def answer(winner, semantic, quality):
        return json.dumps({"categories": [{"name": "Semantic", "cat_winner": semantic}, {"name": "Quality", "cat_winner": quality}],
                           "winner": winner})

    backend = _Scripted({(0, 1): answer("Video 1", "Video 1", "Video 2"), (0, 2): answer("Video 2", "Video 2", "Video 2"),
                         (1, 2): "not json"})
    out = PairwiseUnifiedReward(backend, kind="flex")([_flat(0), _flat(1), _flat(2)], ["p"] * 3)
    # overall (tie for the unreadable pair): 0: 1/2 = 0.5; 1: 0.5/2 = 0.25; 2: 1.5/2 = 0.75
    # Semantic: 0: 1/2, 1: 0/1, 2: 1/1; Quality: 0: 0/2, 1: 1/1, 2: 1/1 (no categories from "not json")
    # dim_mean: 0: 0.25, 1: 0.5, 2: 1.0; score: 0: 0.375, 1: 0.375, 2: 0.875
    assert [d["win_rate"] for d in out.details] == [0.5, 0.25, 0.75]
    assert out.details[0]["categories"] == {"Semantic": 0.5, "Quality": 0.0}
    assert [d["dim_mean"] for d in out.details] == [0.25, 0.5, 1.0]
    assert out.scores.tolist() == pytest.approx([0.375, 0.375, 0.875])
    assert out.details[0]["pairs"][0]["categories"] == {"Semantic": "win", "Quality": "loss"}
    assert out.details[1]["pairs"][1]["result"] == "unparsed" and "no JSON object" in out.details[1]["pairs"][1]["problem"]


def test_template_settings_and_errors(tmp_path, monkeypatch, caplog):
    import logging

    from cac_align.rewards import unified_think
    from cac_align.vlm.config import ModelConfig

    repo = _checkout(tmp_path / "UnifiedReward")
    monkeypatch.delenv("UNIFIED_REWARD_REPO", raising=False)
    template, _ = resolve_pair_template(UnifiedRewardFlexConfig(authors_repo=str(repo)))
    assert template.replace("{prompt}", "a red kite") == FLEX_QUESTION  # doubled braces read as single
    assert resolve_pair_template(UnifiedRewardThinkConfig(authors_repo=str(repo)))[0].replace("{prompt}", "a red kite") == THINK_QUESTION
    with pytest.raises(ValueError, match=r"reward.authors_repo=.*: no UnifiedReward-Flex/flex_pair_rank_video_generation.py there"):
        resolve_pair_template(UnifiedRewardFlexConfig(authors_repo=str(tmp_path)), "reward")
    monkeypatch.setattr(unified_think, "_warned_paraphrase", set())
    with caplog.at_level(logging.WARNING, logger="cac_align.rewards.unified_think"):
        for _ in range(2):
            assert resolve_pair_template(UnifiedRewardThinkConfig()) == (None, "built_in_paraphrase")
        resolve_pair_template(UnifiedRewardThinkConfig(model=ModelConfig(name="tiny-random:qwen3_vl")))
    warnings = [r.getMessage() for r in caplog.records if "built-in paraphrase" in r.getMessage()]
    assert len(warnings) == 1 and "UnifiedReward-Think-qwen3vl-8b" in warnings[0]
    with pytest.raises(ValueError, match="unparsed must be one of"):
        UnifiedRewardThinkConfig(unparsed="half")


# ---------------------------------------------------------------------------------------
# End to end: the tiny recipes through build_reward
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe, forced, expected",
    [
        # Think always answers "Video 1 is better": in a group of 3, (0,1) 0, (0,2) 0, (1,2) 1 win
        ("unified_reward_think_tiny.yaml", "<think>ok</think><answer>Video 1 is better</answer>", [1.0, 0.5, 0.0]),
        # Flex always says Video 2, overall and in its one category: the mirror image
        ("unified_reward_flex_tiny.yaml", '{"winner": "Video 2", "categories": [{"name": "A", "cat_winner": "Video 2"}]}', [0.0, 0.5, 1.0]),
    ],
)
def test_tiny_recipe_end_to_end(recipe, forced, expected, tmp_path, monkeypatch):
    from transformers import LogitsProcessorList

    from cac_align.rewards.registry import build_reward

    monkeypatch.setenv("UNIFIED_REWARD_REPO", str(_checkout(tmp_path / "UnifiedReward")))
    section = yaml.safe_load((REPO_ROOT / "recipes/score" / recipe).read_text())["reward"]
    reward = build_reward({**section, "max_new_tokens": 48}, "reward")
    videos = [_ramp(12, 20, 32, 48, 16.0), _ramp(10, 25, 32, 48, 16.0), _ramp(12, 15, 32, 48, 8.0), _ramp(8, 30, 32, 48, 16.0)]
    prompts = ["a red kite"] * 3 + ["a lone boat"]
    # the random model writes no verdict: every video invalid, with its raw answers
    raw = reward(videos, prompts)
    assert not raw.valid.any() and raw.failure_counts() == {"parse": 3, "score": 1}
    assert raw.info["prompt_sources"][reward.name].startswith("authors_script:")
    # the same model made to write a verdict: the win rates from its parsed answers
    tokenizer = reward.backend.tokenizer
    ids = tokenizer(forced, add_special_tokens=False)["input_ids"]
    reward.backend.generate_kwargs = {"logits_processor": LogitsProcessorList([ForceAnswer(ids, tokenizer.eos_token_id)])}
    out = reward(videos, prompts)
    assert out.valid.tolist() == [True, True, True, False]
    assert out.scores[:3].tolist() == pytest.approx(expected)
    assert out.details[0]["pairs"][0]["text"] == forced
    if "flex" in recipe:
        assert [d["categories"] for d in out.details[:3]] == [{"A": expected[0]}, {"A": expected[1]}, {"A": expected[2]}]


def test_served_by_an_openai_compatible_server():
    """The authors serve Think with vLLM: through our openai backend each pair is one request of
    16 JPEG images (the same bytes as in-process) then the question, and verdicts become win rates."""
    import base64

    from chat_server import ChatServer

    from cac_align.rewards.unified_think import PairwiseUnifiedReward, pair_images
    from cac_align.vlm.openai import OpenAIBackend

    videos = [_ramp(12, 20, 32, 48, 16.0), _ramp(10, 25, 32, 48, 16.0), _ramp(12, 15, 32, 48, 8.0)]
    with ChatServer(answer=lambda messages: "<think>fine</think><answer>Video 1 is better</answer>") as server:
        reward = PairwiseUnifiedReward(OpenAIBackend("think", base_url=server.url, max_retries=0), kind="think")
        out = reward(videos, ["a red kite"] * 3)
    # pairs (0,1), (0,2), (1,2), the earlier video first, each won by Video 1
    assert out.valid.all() and out.scores.tolist() == pytest.approx([1.0, 0.5, 0.0])
    sent = []  # the requests arrive concurrently, in any order
    for request in server.requests:
        parts = request["messages"][0]["content"]
        assert [p["type"] for p in parts] == ["image_url"] * 16 + ["text"]
        sent.append(tuple(base64.b64decode(p["image_url"]["url"].removeprefix("data:image/jpeg;base64,")) for p in parts[:16]))
    expected = [tuple(p["jpeg"] for p in pair_images(videos[a]) + pair_images(videos[b])) for a, b in [(0, 1), (0, 2), (1, 2)]]
    assert sorted(sent) == sorted(expected)
