"""UnifiedReward-Think and UnifiedReward-Flex as groupwise rewards: pairwise verdicts -> win rates.

Both models compare TWO videos of one prompt and say which is better (UnifiedReward-Think,
Wang et al., NeurIPS 2025; UnifiedReward-Flex, 2026). Pref-GRPO (github.com/CodeGoat24/Pref-GRPO,
``fastvideo/rewards/unifiedreward_think.py`` / ``unifiedreward_flex.py``) turns those verdicts into
a per-video reward: within one prompt's group every pair is asked once, and a video's reward is
its win rate over the pairs it was in. This module does the same over any
:class:`~cac_align.vlm.backend.Backend`.

**What one pair looks like** (their scripts, ``UnifiedReward-Think/inference_qwen/
UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py`` and
``UnifiedReward-Flex/flex_pair_rank_video_generation.py``, and Pref-GRPO's ``_extract_frames``):
8 frames of each video at ``floor(linspace(0, frames - 1, min(8, frames)))``, each encoded once
as a JPEG of quality 95, sent as separate images (no timestamps): the first video's 8, then the
second's, then the question. ``num_frames`` changes the 8. The first video of a pair is the one
earlier in the call (Pref-GRPO asks ``itertools.combinations`` of the group in order: one order
per pair); ``both_orders: true`` also asks the swapped order (a departure, against position bias).

**Which words.** The question is the authors' (their scripts, MIT), read at run time from your
checkout of github.com/CodeGoat24/UnifiedReward (``authors_repo`` or ``UNIFIED_REWARD_REPO``,
as :mod:`cac_align.rewards.unified` does; :data:`PAIR_SCRIPTS`), or ``template_file``; without
either, a built-in paraphrase in our own words with the same answer format, and a warning for a
real checkpoint. Pref-GRPO asks the same text as these scripts.

**Verdicts.**

- Think answers ``<think>...</think><answer>Video 1 is better</answer>``: the text inside the
  first ``<answer>...</answer>``; "Video 1 is better" in it (checked first) -> the first video
  wins, else "Video 2 is better" -> the second; anything else is unparsed.
- Flex answers a JSON object (parsed whole, else the span from the first ``{`` to the last
  ``}``) whose ``winner`` names exactly one of "video 1"/"video 2" (case-insensitive, whole
  words; "Video 1/2" names only video 1 by that rule, as in Pref-GRPO); its first three
  ``categories`` carry ``name`` and ``cat_winner``, read the same way.

**Win rates** (Pref-GRPO's ``_pairwise_win_rate``): a win counts 1, a loss 0; per video,
``round(wins / comparisons, 3)``. Pref-GRPO counts an unparsed verdict as a tie (0.5 to each
video, one comparison each); ``unparsed: tie`` (default) does too, ``unparsed: skip`` leaves such
pairs out. Either way they are counted in ``details["unparsed_pairs"]`` and never hidden, and a
video with no parsed pair at all is invalid (``parse``), not 0.5. A pair whose model call failed
is left out (``failed_pairs``; a video whose every pair failed is invalid, ``backend``).
Flex's reward mixes the overall win rate with the weighted mean of its per-category win rates:
``(overall_weight * overall + dim_weight * dim_mean) / (overall_weight + dim_weight)`` (both 1 by
default; ``dim_mean`` rounded to 3 decimals; the overall alone when a video has no category
verdict or ``dim_weight`` is 0). Categories are keyed by the name the model wrote; category
weights apply in the order names first appear in the group's pairs (as Pref-GRPO does).

**Groups.** Videos are grouped by prompt, or by metadata ``group``
(:func:`~cac_align.rewards.base.group_keys`); only videos of one call are compared. A group is
asked with its first video's prompt (Pref-GRPO: the first item's question). A video alone in its
group has nothing to be compared with: invalid (``score``), where Pref-GRPO gives 0.0.
**Cost**: ``n * (n - 1) / 2`` model calls per group of ``n`` (``n * (n - 1)`` with
``both_orders``): 120 for Flow-GRPO's group of 16, each a long reasoned answer.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from cac_align.rewards.base import (
    BatchReward,
    ErrorKind,
    backend_error_kind,
    RewardOutput,
    check_prompts,
    group_keys,
    load_inputs,
    score_in_chunks,
)
from cac_align.rewards.unified import AUTHORS_JPEG_QUALITY, BUILT_IN, authors_question
from cac_align.video import Video
from cac_align.vlm.backend import Backend, ChatRequest, jpeg_image_part, text_part
from cac_align.vlm.config import ModelConfig, build_backend

log = logging.getLogger(__name__)

__all__ = [
    "judges",
    "FlexVerdict",
    "PAIR_SCRIPTS",
    "PairwiseUnifiedReward",
    "UnifiedRewardFlexConfig",
    "UnifiedRewardThinkConfig",
    "build_flex",
    "build_think",
    "flex_scores",
    "pair_frame_indices",
    "pair_images",
    "parse_flex",
    "parse_think",
    "resolve_pair_template",
    "win_rates",
]

KINDS = ("think", "flex")
UNPARSED_POLICIES = ("tie", "skip")
# The authors' pairwise video-generation scripts in a checkout of github.com/CodeGoat24/UnifiedReward
PAIR_SCRIPTS: dict[str, str] = {
    "think": "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py",
    "flex": "UnifiedReward-Flex/flex_pair_rank_video_generation.py",
}
PAIR_FRAMES = 8  # frames per video in their scripts and Pref-GRPO's reward
ROUND_DIGITS = 3  # Pref-GRPO rounds every win rate to 3 decimals

# Built-in paraphrases (our words): the structure and the exact answer format of each model.
_THINK_TEMPLATE = (
    "You judge AI-generated videos. You are given a caption and the frames of two videos made from "
    "it: the first half of the frames is Video 1, the second half is Video 2. Decide which video is better.\n\n"
    "Rules:\n"
    "1. Put all reasoning and scores between <think> and </think>.\n"
    "2. Begin the <think> block directly with the first dimension.\n"
    "3. After </think>, give the verdict between <answer> and </answer>, exactly one of:\n"
    "- Video 1 is better\n"
    "- Video 2 is better\n"
    "4. Write nothing outside <think> and <answer>.\n\n"
    "How to judge:\n"
    "1. The caption is: 「{prompt}」. First half of the frames: Video 1; second half: Video 2.\n"
    "2. Compare them on semantic consistency (match with the caption), temporal coherence (smooth, "
    "logical motion) and authenticity (realism, detail); add at most two more dimensions if relevant.\n"
    "3. For every dimension give each video a score from 1 to 10 with a short reason, as\n"
    "    N. Dimension: \n"
    "        Video 1 (x/10) - reason; \n"
    "        Video 2 (y/10) - reason\n"
    "4. Then add up the totals:\n"
    "    Total score:\n"
    "    Video 1: x+x+x=total\n"
    "    Video 2: y+y+y=total\n\n"
    "Answer shape:\n"
    "<think>\n1. Semantic consistency: \n    Video 1 (8/10) - ...; \n    Video 2 (6/10) - ...\n...\n"
    "Total score:\nVideo 1: 8+7+7=22\nVideo 2: 6+6+5=17\n</think>\n"
    "<answer>Video 1 is better</answer>\n"
)

_FLEX_TEMPLATE = (
    "## Role\n"
    "You are an expert judge of AI-generated video. Compare Video 1 and Video 2 against the prompt, "
    "category by category.\n\n"
    "## Categories\n"
    "For each category choose 3-5 sub-dimensions that fit these videos:\n"
    "- A. Semantic alignment: subjects, attributes, spatial relations and setting as the prompt asks.\n"
    "- B. Video quality and dynamics: fidelity, temporal stability, identity persistence, plausible motion.\n"
    "- C. Aesthetics and cinematography: composition, colour, camera movement, narrative flow.\n"
    "You may add a Category D for traits particular to the prompt.\n\n"
    "## Rules\n"
    "- Pick sub-dimensions that tell the two videos apart.\n"
    "- For each sub-dimension the two scores add up to exactly 10.\n"
    "- Point to concrete visual or temporal evidence.\n\n"
    "## Input\n"
    "**Prompt:** [{prompt}]\n"
    "[Video 1] \n[Video 2] \n\n"
    "## Output\n"
    "One valid JSON object, in English:\n"
    '{"prompt": "...", "categories": [{"name": "...", "dims": [{"name": "...", "reason_1": "...", '
    '"reason_2": "...", "score_1": 6, "score_2": 4}], "cat_reason": "...", "cat_winner": "Video 1"}], '
    '"reason": "...", "winner": "Video 1"}\n'
)

BUILT_IN_TEMPLATES = {"think": _THINK_TEMPLATE, "flex": _FLEX_TEMPLATE}
DEFAULT_MODELS = {"think": "CodeGoat24/UnifiedReward-Think-qwen3vl-8b", "flex": "CodeGoat24/UnifiedReward-Flex-qwen3vl-8b"}


# ---------------------------------------------------------------------------------------
# What one pair shows the model
# ---------------------------------------------------------------------------------------
def pair_frame_indices(total: int, num_frames: int = PAIR_FRAMES) -> np.ndarray:
    """Which frames of a ``total``-frame video go into a pair: ``num_frames`` (at most ``total``)
    evenly spread from the first to the last, rounded down, as Pref-GRPO's ``_extract_frames``
    (``np.linspace(0, total - 1, min(num_frames, total), dtype=int)``). 81 frames -> 0, 11, 22,
    34, 45, 57, 68, 80."""
    if total < 1:
        raise ValueError("a video with no frames has nothing to compare")
    count = min(num_frames, total)
    return np.floor(np.linspace(0, total - 1, count)).astype(np.int64)


def pair_images(video: Video, num_frames: int = PAIR_FRAMES) -> list[dict[str, Any]]:
    """One video's half of a pair: image parts of its :func:`pair_frame_indices` frames, each
    what one JPEG of quality 95 decodes to, carrying that file (their scripts encode each frame
    once with PIL and send the base64 bytes; a server backend sends these very bytes)."""
    frames = video.select(pair_frame_indices(video.num_frames, num_frames), video.fps)
    return [jpeg_image_part(frame, quality=AUTHORS_JPEG_QUALITY, rounds=1) for frame in np.asarray(frames.frames)]


# ---------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_think(text: str) -> tuple[int | None, str | None]:
    """Think's verdict: ``(1 or 2, None)``, or ``(None, why it could not be read)``."""
    found = _ANSWER.search(text or "")
    if found is None:
        return None, "no <answer>...</answer> in the answer"
    verdict = found.group(1).strip()
    if not verdict:
        return None, "empty <answer>"
    if "Video 1 is better" in verdict:
        return 1, None
    if "Video 2 is better" in verdict:
        return 2, None
    return None, f"<answer> names neither video: {verdict[:80]!r}"


_VIDEO_1 = re.compile(r"\b(?:video|image)\s*1\b")
_VIDEO_2 = re.compile(r"\b(?:video|image)\s*2\b")


def _named_video(value: Any) -> int | None:
    """1 or 2 when ``value`` names exactly one of "video 1" / "video 2" (whole words, any case)."""
    lowered = str(value if value is not None else "").lower()
    first, second = bool(_VIDEO_1.search(lowered)), bool(_VIDEO_2.search(lowered))
    return 1 if first and not second else 2 if second and not first else None


def _json_object(text: str) -> dict | None:
    text = (text or "").strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])  # e.g. inside a ```json fence
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None


@dataclass(frozen=True)
class FlexVerdict:
    """Flex's answer for one pair: the overall winner (1, 2 or None), each of the first three
    categories as (name, winner or None), and why the overall winner could not be read."""

    winner: int | None
    categories: tuple[tuple[str, int | None], ...] = ()
    problem: str | None = None


def parse_flex(text: str) -> FlexVerdict:
    """Flex's verdict from its JSON answer (see the module docstring)."""
    data = _json_object(text)
    if data is None:
        return FlexVerdict(None, (), "no JSON object in the answer")
    categories = []
    listed = data.get("categories")
    for category in (listed if isinstance(listed, list) else [])[:3]:
        if isinstance(category, dict):
            name = str(category.get("name", "")).strip() or "category"
            categories.append((name, _named_video(category.get("cat_winner", ""))))
    winner = _named_video(data.get("winner", ""))
    problem = None if winner is not None else f"'winner' names neither video (or both): {str(data.get('winner', ''))[:80]!r}"
    return FlexVerdict(winner, tuple(categories), problem)


# ---------------------------------------------------------------------------------------
# Win rates (pure)
# ---------------------------------------------------------------------------------------
Outcome = tuple[int, int, "int | None"]  # (first, second, winner: 1, 2 or None = unparsed)


def _count(n: int, outcomes: Sequence[Outcome], unparsed: str) -> tuple[list[float], list[int]]:
    if unparsed not in UNPARSED_POLICIES:
        raise ValueError(f"unparsed must be one of {UNPARSED_POLICIES}, got {unparsed!r}")
    wins, compared = [0.0] * n, [0] * n
    for first, second, winner in outcomes:
        if winner is None and unparsed == "skip":
            continue
        compared[first] += 1
        compared[second] += 1
        if winner == 1:
            wins[first] += 1.0
        elif winner == 2:
            wins[second] += 1.0
        else:  # Pref-GRPO: an unreadable verdict is half a win to each
            wins[first] += 0.5
            wins[second] += 0.5
    return wins, compared


def win_rates(n: int, outcomes: Sequence[Outcome], unparsed: str = "tie") -> list[float | None]:
    """Per item, ``round(wins / comparisons, 3)``; None for an item in no counted pair.

    Args:
        n: items in the group (indices 0..n-1).
        outcomes: one ``(first, second, winner)`` per asked pair, ``winner`` 1 (first won), 2
            (second won) or None (the verdict could not be read).
        unparsed: "tie" counts a None as half a win to each (Pref-GRPO), "skip" leaves it out.
    """
    wins, compared = _count(n, outcomes, unparsed)
    return [round(w / c, ROUND_DIGITS) if c else None for w, c in zip(wins, compared)]


def flex_scores(
    n: int,
    verdicts: Sequence[tuple[int, int, FlexVerdict]],
    unparsed: str = "tie",
    overall_weight: float = 1.0,
    dim_weight: float = 1.0,
    category_weights: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Flex's per-item reward from its pairs' verdicts (Pref-GRPO's ``_pairwise_win_rate`` for Flex).

    Returns:
        Per item: ``overall`` (win rate of the overall winners, None if in no counted pair),
        ``categories`` (name -> win rate), ``dim_mean`` (weighted mean of the category win rates,
        None without any) and ``score`` (the mix, None when ``overall`` is None).
    """
    overall = win_rates(n, [(a, b, v.winner) for a, b, v in verdicts], unparsed)
    names: list[str] = []  # in order of first appearance: category weights follow this order
    per_name: dict[str, list[Outcome]] = {}
    for a, b, verdict in verdicts:
        for name, winner in verdict.categories:
            if name not in per_name:
                names.append(name)
                per_name[name] = []
            per_name[name].append((a, b, winner))
    weights = [float(w) for w in (category_weights or [])][: len(names)]
    weights += [1.0] * (len(names) - len(weights))
    counted = {name: _count(n, per_name[name], unparsed) for name in names}
    results = []
    for i in range(n):
        rates, used = {}, []
        for name, weight in zip(names, weights):
            wins, compared = counted[name]
            if compared[i]:
                rates[name] = round(wins[i] / compared[i], ROUND_DIGITS)
                used.append((wins[i] / compared[i], weight))
        dim_mean = None
        if used:
            total = sum(w for _, w in used)
            mean = sum(r * w for r, w in used) / total if total > 0 else float(np.mean([r for r, _ in used]))
            dim_mean = round(mean, ROUND_DIGITS)
        score = overall[i]
        if score is not None and dim_mean is not None and dim_weight > 0:
            score = (overall_weight * score + dim_weight * dim_mean) / (overall_weight + dim_weight)
        results.append({"overall": overall[i], "categories": rates, "dim_mean": dim_mean, "score": score})
    return results


# ---------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------
class PairwiseUnifiedReward(BatchReward):
    """UnifiedReward-Think / -Flex over any :class:`Backend`: per video, its win rate in its group.

    Scores are in [0, 1]. ``details[i]``: ``group_size``, ``win_rate`` (overall), ``wins``,
    ``comparisons``, ``unparsed_pairs``, ``failed_pairs``, ``pairs`` (one entry per pair the video
    was in: ``against`` (input index), ``position`` (1 or 2: which video it was in the request),
    ``result`` ("win", "loss", "unparsed" or "failed"), ``text`` (the raw answer) or ``error``;
    Flex adds the pair's ``categories``), ``prompt_source``; Flex adds ``categories`` (name ->
    win rate) and ``dim_mean``. ``info``: ``model_calls``, ``unparsed_pairs``, ``failed_pairs``,
    ``prompt_sources``.
    """

    score_range = (0.0, 1.0)

    def __init__(
        self,
        backend: Backend,
        kind: str = "think",
        num_frames: int = PAIR_FRAMES,
        max_new_tokens: int = 4096,
        temperature: float = 0.0,
        unparsed: str = "tie",
        both_orders: bool = False,
        overall_weight: float = 1.0,
        dim_weight: float = 1.0,
        category_weights: Sequence[float] | None = None,
        template: str | None = None,
        prompt_source: str | None = None,
        source_fps: float | None = 16.0,
        batch_size: int = 8,
        name: str | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if unparsed not in UNPARSED_POLICIES:
            raise ValueError(f"unparsed must be one of {UNPARSED_POLICIES}, got {unparsed!r}")
        self.backend = backend
        self.kind = kind
        self.template = template if template is not None else BUILT_IN_TEMPLATES[kind]
        if "{prompt}" not in self.template:
            raise ValueError(f"the UnifiedReward-{kind} question needs a {{prompt}} placeholder")
        self.prompt_source = prompt_source or (BUILT_IN if template is None else "template")
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.unparsed = unparsed
        self.both_orders = both_orders
        self.overall_weight = overall_weight
        self.dim_weight = dim_weight
        self.category_weights = list(category_weights) if category_weights else None
        self.source_fps = source_fps
        self.batch_size = batch_size
        self.name = name or f"unified_reward_{kind}"

    def to(self, device: Any) -> "PairwiseUnifiedReward":
        self.backend.to(device)
        return self

    def request(self, video: Video, prompt: str | None) -> list[dict[str, Any]]:
        """One video's image parts (its half of every pair it is in); built once per video."""
        return pair_images(video, self.num_frames)

    def pair_request(self, first: list[dict[str, Any]], second: list[dict[str, Any]], prompt: str) -> ChatRequest:
        """The first video's frames, the second's, then the question: one user turn."""
        return [{"role": "user", "content": [*first, *second, text_part(self.template.replace("{prompt}", prompt))]}]

    def score_batch(self, requests: list[ChatRequest]) -> list[dict]:
        """One answer per pair request: ``{"text", "winner", "problem"}`` (+ Flex's ``verdict``)."""
        completions = self.backend.generate(requests, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        answers = []
        for completion in completions:
            if self.kind == "think":
                winner, problem = parse_think(completion.text)
                answers.append({"text": completion.text, "winner": winner, "problem": problem})
            else:
                verdict = parse_flex(completion.text)
                answers.append({"text": completion.text, "winner": verdict.winner, "problem": verdict.problem, "verdict": verdict})
        return answers

    def __call__(self, videos: Any, prompts: Sequence[str | None] | None = None, metadata: Any = None) -> RewardOutput:
        # 1. decode, check prompts, group (the base's helpers)
        loaded = load_inputs(videos, metadata, self.source_fps)
        prompts = check_prompts(len(loaded), prompts)
        keys = group_keys(prompts, metadata)
        details: list[dict] = [{} for _ in loaded]
        halves: dict[int, list[dict[str, Any]]] = {}
        groups: dict[Any, list[int]] = {}
        for i, (video, prompt) in enumerate(zip(loaded, prompts)):
            if not isinstance(video, Video):
                details[i] = self.invalid_detail(str(video), ErrorKind.VIDEO)
            elif prompt is None:
                details[i] = self.invalid_detail(f"{self.name} needs the generating prompt of each video", ErrorKind.PROMPT)
            else:
                halves[i] = self.request(video, prompt)
                groups.setdefault(keys[i], []).append(i)
        # 2. the pairs of each group, in order (Pref-GRPO: itertools.combinations), and their requests
        pairs: list[tuple[list[int], int, int]] = []
        for members in groups.values():
            if len(members) < 2:
                details[members[0]] = self.invalid_detail(
                    f"{self.name} compares videos of one prompt pairwise; this one has no other valid video in its group "
                    "(score a prompt's videos in one call, or set metadata 'group')",
                    ErrorKind.SCORE,
                )
                continue
            for a, b in itertools.combinations(members, 2):
                pairs.append((members, a, b))
                if self.both_orders:
                    pairs.append((members, b, a))
        todo = [(k, self.pair_request(halves[a], halves[b], prompts[members[0]])) for k, (members, a, b) in enumerate(pairs)]
        # 3. ask the model, pairs chunked by the batch size; a failed call fails only its pairs
        with self._lock:
            answers = score_in_chunks(
                lambda chunk: self._score_chunk([request for _, request in chunk]),
                todo,
                self.batch_size,
                on_error=lambda item, exc: {"error": f"backend failed: {exc}", "error_kind": backend_error_kind(exc)},
            )
        # 4. win rates per group
        scores = np.full(len(loaded), np.nan)
        for members in groups.values():
            if len(members) >= 2:
                in_group = [(a, b, answer) for (owner, a, b), answer in zip(pairs, answers) if owner is members]
                self._score_group(members, in_group, details, scores)
        for i in halves:
            details[i]["prompt_source"] = self.prompt_source
        valid = np.array([d.get("error") is None for d in details], dtype=bool)
        info = {
            "model_calls": len(pairs),
            "unparsed_pairs": sum(1 for a in answers if "error" not in a and a["winner"] is None),
            "failed_pairs": sum(1 for a in answers if "error" in a),
            "prompt_sources": {self.name: self.prompt_source},
        }
        return RewardOutput(self.name, scores, valid, details, info)

    def _score_group(self, members: list[int], in_group: list[tuple[int, int, dict]], details: list[dict], scores: np.ndarray) -> None:
        """Fill ``details`` and ``scores`` of one group's videos from its pairs' answers."""
        local = {index: k for k, index in enumerate(members)}
        answered = [(local[a], local[b], answer) for a, b, answer in in_group if "error" not in answer]
        if self.kind == "think":
            rates = win_rates(len(members), [(a, b, ans["winner"]) for a, b, ans in answered], self.unparsed)
            results = [{"overall": rate, "score": rate} for rate in rates]
        else:
            results = flex_scores(
                len(members),
                [(a, b, ans["verdict"]) for a, b, ans in answered],
                self.unparsed,
                self.overall_weight,
                self.dim_weight,
                self.category_weights,
            )
        wins, compared = _count(len(members), [(a, b, ans["winner"]) for a, b, ans in answered], self.unparsed)
        for k, index in enumerate(members):
            entries = [self._pair_entry(index, a, b, answer) for a, b, answer in in_group if index in (a, b)]
            detail = {
                "group_size": len(members),
                "win_rate": results[k]["overall"],
                "wins": wins[k],
                "comparisons": compared[k],
                "unparsed_pairs": sum(e["result"] == "unparsed" for e in entries),
                "failed_pairs": sum(e["result"] == "failed" for e in entries),
                "pairs": entries,
            }
            if self.kind == "flex":
                detail["categories"] = results[k]["categories"]
                detail["dim_mean"] = results[k]["dim_mean"]
            parsed = len(entries) - detail["unparsed_pairs"] - detail["failed_pairs"]
            if parsed == 0 and detail["failed_pairs"] == len(entries):
                down = all(e.get("error_kind") == ErrorKind.DOWN for e in entries)  # the judge was down for every pair
                detail.update(self.invalid_detail(f"every model call for its {len(entries)} pairs failed", ErrorKind.DOWN if down else ErrorKind.BACKEND))
                detail["error"] = f"{detail['error']}: {next(e['error'] for e in entries)}"
                detail["win_rate"] = None
            elif parsed == 0:
                problems = sorted({e["problem"] for e in entries if e.get("problem")})
                detail.update(self.invalid_detail(f"no verdict could be read in any of its {len(entries)} pairs: " + "; ".join(problems), ErrorKind.PARSE))
                detail["win_rate"] = None  # only unreadable verdicts: no rate of its own (Pref-GRPO would say 0.5)
            else:
                scores[index] = results[k]["score"]
            details[index] = detail

    @staticmethod
    def _pair_entry(index: int, a: int, b: int, answer: dict) -> dict[str, Any]:
        position = 1 if index == a else 2
        entry: dict[str, Any] = {"against": b if position == 1 else a, "position": position}
        if "error" in answer:
            entry.update(result="failed", error=answer["error"], error_kind=answer.get("error_kind", ErrorKind.BACKEND))
            return entry
        winner = answer["winner"]
        entry["result"] = "unparsed" if winner is None else "win" if winner == position else "loss"
        entry["text"] = answer["text"]
        if answer.get("problem"):
            entry["problem"] = answer["problem"]
        if "verdict" in answer:
            entry["categories"] = {name: ("unparsed" if w is None else "win" if w == position else "loss") for name, w in answer["verdict"].categories}
        return entry


# ---------------------------------------------------------------------------------------
# Recipe sections
# ---------------------------------------------------------------------------------------
@dataclass
class UnifiedRewardThinkConfig:
    """Recipe section of ``name: unified_reward_think``.

    Attributes:
        model: the checkpoint (default CodeGoat24/UnifiedReward-Think-qwen3vl-8b; also -2b, -4b,
            -32b, and CodeGoat24/UnifiedReward-Think-qwen35-9b).
        num_frames: frames per video in a pair (their scripts: 8).
        max_new_tokens: generation budget per pair (their client: 4096; the answers reason at length).
        temperature: 0 decodes greedily.
        unparsed: "tie" (an unreadable verdict is half a win to each video, as Pref-GRPO counts
            it) or "skip" (left out of the win rate). Counted in details either way.
        both_orders: also ask each pair with the videos swapped (twice the calls; not done by the
            authors or Pref-GRPO).
        authors_repo: your checkout of github.com/CodeGoat24/UnifiedReward (the question is read
            from :data:`PAIR_SCRIPTS` there); None reads ``UNIFIED_REWARD_REPO``; with neither,
            the built-in paraphrase is asked.
        template_file: one question file (a script or a text file with ``{prompt}``), taking
            precedence over ``authors_repo``.
        source_fps: frame rate of array/tensor input without ``fps`` in metadata.

    Pairs asked together are the model's batch: ``model.max_batch_size`` pairs per backend call.
    """

    KIND: ClassVar[str] = "think"
    MOVED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {"batch_size": ("model.max_batch_size", "the pairs asked together are the model's batch")}

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=DEFAULT_MODELS["think"]))
    num_frames: int = PAIR_FRAMES
    max_new_tokens: int = 4096
    temperature: float = 0.0
    unparsed: str = "tie"
    both_orders: bool = False
    authors_repo: str | None = None
    template_file: str | None = None
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.unparsed not in UNPARSED_POLICIES:
            raise ValueError(f"unparsed must be one of {UNPARSED_POLICIES}, got {self.unparsed!r}")


@dataclass
class UnifiedRewardFlexConfig(UnifiedRewardThinkConfig):
    """Recipe section of ``name: unified_reward_flex``: the Think keys, and how Flex's reward mixes
    its overall and per-category win rates (Pref-GRPO's ``OVERALL_WEIGHT``, ``DIM_WEIGHT`` and
    ``CATEGORY_WEIGHTS``, defaults 1, 1 and all 1).

    Attributes:
        model: default CodeGoat24/UnifiedReward-Flex-qwen3vl-8b (also CodeGoat24/UnifiedReward-Flex-qwen35-9b).
        overall_weight, dim_weight: the mix ``(ow * overall + dw * dim_mean) / (ow + dw)``.
        category_weights: weights of the categories in the order their names first appear in a
            group's pairs (missing ones 1); None: all 1.
    """

    KIND: ClassVar[str] = "flex"

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=DEFAULT_MODELS["flex"]))
    overall_weight: float = 1.0
    dim_weight: float = 1.0
    category_weights: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.overall_weight < 0 or self.dim_weight < 0 or self.overall_weight + self.dim_weight <= 0:
            raise ValueError(f"overall_weight and dim_weight must be >= 0 with a positive sum, got {self.overall_weight}, {self.dim_weight}")


_warned_paraphrase: set[str] = set()  # models already warned about, once per process


def resolve_pair_template(config: UnifiedRewardThinkConfig, key: str = "reward") -> tuple[str | None, str]:
    """Which question a section asks: ``(template or None, prompt_source)``, in the order of
    :func:`cac_align.rewards.unified.resolve_template`: ``template_file``; the kind's script
    (:data:`PAIR_SCRIPTS`) in ``authors_repo`` or ``UNIFIED_REWARD_REPO``; else the built-in
    paraphrase (None), with a warning once per process and real model.

    Raises:
        RecipeError: a named file or checkout without a readable question; names the key to fix.
    """
    kind = config.KIND
    return authors_question(
        key,
        config.template_file,
        config.authors_repo,
        PAIR_SCRIPTS[kind],
        f"the authors' UnifiedReward-{kind.title()} video script",
        config.model.name,
        f"UnifiedReward-{kind.title()} {config.model.name}",
        warned=_warned_paraphrase,
    )


def _build(config: UnifiedRewardThinkConfig, key: str, **extra: Any) -> PairwiseUnifiedReward:
    template, prompt_source = resolve_pair_template(config, key)
    backend = build_backend(config.model, key=f"{key}.model")
    return PairwiseUnifiedReward(
        backend,
        kind=config.KIND,
        num_frames=config.num_frames,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        unparsed=config.unparsed,
        both_orders=config.both_orders,
        template=template,
        prompt_source=prompt_source,
        source_fps=config.source_fps,
        batch_size=config.model.max_batch_size,
        **extra,
    )


def build_think(config: UnifiedRewardThinkConfig, key: str = "reward") -> PairwiseUnifiedReward:
    """Build the reward a ``name: unified_reward_think`` section describes (loads the model)."""
    return _build(config, key)


def build_flex(config: UnifiedRewardFlexConfig, key: str = "reward") -> PairwiseUnifiedReward:
    """Build the reward a ``name: unified_reward_flex`` section describes (loads the model)."""
    return _build(config, key, overall_weight=config.overall_weight, dim_weight=config.dim_weight, category_weights=config.category_weights)


def judges(config: UnifiedRewardThinkConfig, where: str, video: Any) -> list[Any]:
    """The one model a pairwise section loads, for the memory plan (:mod:`cac_align.rewards.judges`):
    one request per pair, ``num_frames`` images of each video at its size, the question (an
    estimate of 1,500 characters with the caption), ``max_new_tokens`` of reasoning."""
    from cac_align.rewards.judges import Frames, JudgeCall, judge_of, text_tokens

    frames = Frames(2 * min(config.num_frames, video.frames), video.height, video.width, images=True)
    call = JudgeCall((frames,), text_tokens("x" * 1500), config.max_new_tokens, config.model.max_batch_size)
    return [judge_of(config.model, f"{where}.model", call)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "unified_reward_think",
    "cac_align.rewards.unified_think:UnifiedRewardThinkConfig",
    "cac_align.rewards.unified_think:build_think",
    "UnifiedReward-Think pairwise CoT verdicts -> each video's win rate in its prompt group (Pref-GRPO)",
    judges="cac_align.rewards.unified_think:judges",
)
register_reward(
    "unified_reward_flex",
    "cac_align.rewards.unified_think:UnifiedRewardFlexConfig",
    "cac_align.rewards.unified_think:build_flex",
    "UnifiedReward-Flex pairwise JSON verdicts -> overall + per-category win rates in its prompt group (Pref-GRPO)",
    judges="cac_align.rewards.unified_think:judges",
)
