"""VideoScore2 (He et al. 2025; github.com/TIGER-AI-Lab/VideoScore2) as a reward: visual quality,
text-to-video alignment and physical / common-sense consistency, each 1..5, after a reasoned answer.

VideoScore2 is a Qwen2.5-VL-7B fine-tune (HF ``TIGER-Lab/VideoScore2``; SFT then GRPO) that
thinks about a generated video and its prompt, then writes three integer scores. Its authors turn
each integer into a "soft" score read from the probabilities at the score's token.

**Asked as their inference script asks** (``vs2_inference.py`` at commit e6abe26, the script
their README runs):

- frames: qwen-vl-utils' video path at ``fps`` 2.0 (``process_vision_info``, unpinned in their
  README; 0.0.14 here): ``total / source_fps * 2`` frames, clamped to [4, min(768, total)] and
  **floored** to an even count (``smart_nframes``), at ``linspace(0, total - 1, n).round()``;
  every frame resized (bicubic, antialiased, on uint8) to qwen-vl-utils' ``smart_resize`` with
  factor 28 between 128*28*28 and 768*28*28 pixels, so a small video is **upscaled** to about
  100,352 pixels a frame (:func:`vs2_frames`);
- the chat: one user turn, the video then the question (their ``VS2_QUERY_TEMPLATE``, a
  ``string.Template`` with ``$t2v_prompt``), the processor's chat template with a generation
  prompt (no system turn of theirs: Qwen2.5-VL's template adds its default one);
- the video's frame rate: they call the processor with ``fps=2.0``, which the transformers they
  pin (4.53.2) turns into 2 / 2.0 = 1.0 s per temporal patch (``second_per_grid_ts``) for Qwen2.5-VL's
  time positions. transformers 5.x reads that argument differently (2 / 24 = 0.083 s); we hand
  the processor ``VideoMetadata(fps=2.0)`` instead, which gives their 1.0;
- decoding: **sampled**, ``temperature`` 0.7, 1024 new tokens, every other setting from the
  checkpoint's ``generation_config.json`` (top-k, top-p, repetition penalty), one answer per video.

**Scores.** Their regex reads the three integers from the answer (``visual quality: N ...
text-to-video alignment: N ... physical/common-sense consistency: N``, case-insensitive, across
lines). For each, the score token is the first digit after the label's first occurrence in the
generated text (special tokens kept), found as the shortest run of generated tokens that decodes
to the text up to that digit. At that step, with p_s the probability of digit s = 1..5 under the
distribution the token was sampled from (after temperature, top-k and top-p), the **soft score**
is ``s* x p_s* / sum_s p_s`` for the most probable digit s*, rounded to 4 decimals: between 1/5
and 5. Top-k and top-p therefore decide it: with top-k = 1 the share is 1 and the soft score is
s*. A dimension without an integer or a score token has no soft score (their None).

The reward (``score``) is the mean of the three soft scores (default) or one of them
(``visual_quality``, ``text_alignment``, ``physical``); ``scoring: hard`` uses the integers
instead. Every integer, soft score and digit distribution is in ``details``. A dimension the
reward needs that has no score is invalid (``parse``); digits 1..5 with no probability at the
score token (their code gives 0 then) are invalid (``score``). Sampling makes the reward noisy:
``seed`` fixes the draws of a call.

**Where the words come from.** The question is read at run time from your checkout of their
repository (``authors_repo`` or ``$VIDEOSCORE2_REPO``; ``vs2_inference.py`` parsed with ``ast``,
never run). Without one, a paraphrase of ours with the same three labels and answer format, and a
warning for a real checkpoint.

**In-process only.** Their code runs transformers only, and the soft score needs the sampling
distribution's probabilities, which a server's log-probabilities are not: ``model.backend`` must
be ``hf``.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cac_align.rewards.authors import authors_file, warn_paraphrase
from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video
from cac_align.vlm.backend import ChatRequest, text_part, video_part
from cac_align.vlm.config import ModelConfig, build_backend

log = logging.getLogger(__name__)

__all__ = [
    "judges",
    "DIMENSIONS",
    "LABELS",
    "VideoScore2Config",
    "VideoScore2Reward",
    "build",
    "parse_scores",
    "read_template",
    "resolve_template",
    "score_token_index",
    "soft_score",
    "vs2_frames",
]

AUTHORS_REPO_ENV = "VIDEOSCORE2_REPO"
AUTHORS_FILE = "vs2_inference.py"
TEMPLATE_NAME = "VS2_QUERY_TEMPLATE"
PROMPT_FIELD = "t2v_prompt"
DEFAULT_MODEL = "TIGER-Lab/VideoScore2"
BUILT_IN = "built_in_paraphrase"
# The three labels their answer format uses and their regex reads, in order, and our names for them.
LABELS = ("visual quality:", "text-to-video alignment:", "physical/common-sense consistency:")
DIMENSIONS = ("visual_quality", "text_alignment", "physical")
SCORES = ("mean", *DIMENSIONS)
SCORINGS = ("soft", "hard")
DIGITS = (1, 2, 3, 4, 5)
# qwen-vl-utils' video settings (0.0.14, vision_process.py): 14-pixel patches merged 2 x 2.
IMAGE_FACTOR = 28

# Our words, with their answer format's labels (the parser reads those) and $t2v_prompt.
_BUILT_IN_TEMPLATE = (
    "\nRate this AI-generated video on three things:\n"
    "(1) visual quality: is every frame sharp and smooth, free of artifacts?\n"
    "(2) text-to-video alignment: does the video show what its prompt asks for?\n"
    "(3) physical/common-sense consistency: do objects move and interact as they would in reality?\n\n"
    "The prompt was: $t2v_prompt\n\n"
    "Give each an integer from 1 to 5, written as:\n"
    "visual quality: <v_score>;\n"
    "text-to-video alignment: <t_score>,\n"
    "physical/common-sense consistency: <p_score>\n"
)


# ---------------------------------------------------------------------------------------
# The question
# ---------------------------------------------------------------------------------------
def read_template(path: str | os.PathLike) -> str:
    """The text of their ``VS2_QUERY_TEMPLATE = Template(\"\"\"...\"\"\")`` in ``vs2_inference.py``
    (parsed with ``ast``, never run).

    Raises:
        ValueError: the file has no such assignment of one string, or the string has no
            ``$t2v_prompt``.
    """
    path = Path(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == TEMPLATE_NAME for t in node.targets)):
            continue
        call = node.value
        func = getattr(call, "func", None)
        name = getattr(func, "id", None) or getattr(func, "attr", None)
        if isinstance(call, ast.Call) and name == "Template" and len(call.args) == 1:
            arg = call.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if f"${PROMPT_FIELD}" not in arg.value and f"${{{PROMPT_FIELD}}}" not in arg.value:
                    raise ValueError(f"{path}: {TEMPLATE_NAME} has no ${PROMPT_FIELD}")
                return arg.value
        raise ValueError(f"{path}: {TEMPLATE_NAME} is not Template(<one string>)")
    raise ValueError(f"{path}: no {TEMPLATE_NAME} = Template(...) (the layout of their commit e6abe26)")


_warned_paraphrase: set[str] = set()


def resolve_template(authors_repo: str | None, model_name: str, key: str = "reward") -> tuple[str, str]:
    """(template text, source) a section asks: from the authors' checkout (``authors_repo``, else
    ``$VIDEOSCORE2_REPO``), else the built-in paraphrase (with a warning once per real model)."""
    from cac_align.config import RecipeError

    found = authors_file(authors_repo, AUTHORS_REPO_ENV, AUTHORS_FILE, "github.com/TIGER-AI-Lab/VideoScore2", key)
    if found is None:
        warn_paraphrase("videoscore2", model_name, AUTHORS_REPO_ENV, "VideoScore2", key, _warned_paraphrase, what="question")
        return _BUILT_IN_TEMPLATE, BUILT_IN
    path, where = found
    try:
        return read_template(path), f"authors_script:{path.resolve()}"
    except (ValueError, SyntaxError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def vs2_frames(video: Video, fps: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The frames their script shows for ``video``: ``(frames (T, H, W, 3) uint8, source indices)``.

    qwen-vl-utils' own ``smart_nframes`` and ``smart_resize`` decide the count and the size, and
    torchvision resizes, as its ``fetch_video`` does for a video file (we hold decoded frames, not
    a path, so the file reading is ours: the same decord frames).
    """
    import torch
    from qwen_vl_utils import vision_process as qvu
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    total = video.num_frames
    count = qvu.smart_nframes({"fps": fps}, total_frames=total, video_fps=video.fps)
    indices = torch.linspace(0, total - 1, count).round().long().numpy()
    frames = torch.from_numpy(np.asarray(video.frames[indices])).permute(0, 3, 1, 2)
    min_pixels = qvu.VIDEO_MIN_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR
    total_pixels = qvu.MODEL_SEQ_LEN * IMAGE_FACTOR * IMAGE_FACTOR * 0.9
    max_pixels = max(min(qvu.VIDEO_MAX_TOKEN_NUM * IMAGE_FACTOR * IMAGE_FACTOR, total_pixels / count * qvu.FRAME_FACTOR), int(min_pixels * 1.05))
    height, width = qvu.smart_resize(video.height, video.width, factor=IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    resized = tvf.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy()), indices


# ---------------------------------------------------------------------------------------
# The answer
# ---------------------------------------------------------------------------------------
_SCORES_RE = re.compile(
    r"visual quality:\s*(\d+).*?text-to-video alignment:\s*(\d+).*?physical/common-sense consistency:\s*(\d+)",
    re.DOTALL | re.IGNORECASE,
)


def parse_scores(text: str) -> tuple[int, int, int] | None:
    """The three integers of an answer (their regex), or None when it does not match."""
    match = _SCORES_RE.search(text)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None


def score_token_index(tokenizer: Any, ids: list[int], label: str) -> int:
    """Which generated token holds ``label``'s score: the first digit after the label's first
    occurrence (case-insensitive) in the decoded generation (special tokens kept), located as the
    shortest run of tokens that decodes to the text up to and including that digit; -1 if none."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    found = re.search(re.escape(label), text, flags=re.IGNORECASE)
    if found is None:
        return -1
    digit = re.search(r"\d", text[found.end():])
    if digit is None:
        return -1
    target = text[: found.end() + digit.start() + 1]
    for i in range(len(ids)):
        if tokenizer.decode(ids[: i + 1], skip_special_tokens=False) == target:
            return i
    return -1


def soft_score(digit_log_probs: np.ndarray, digits: tuple[int, ...] = DIGITS) -> dict[str, Any]:
    """Their soft score from the log-probabilities of ``digits`` at the score token: the most
    probable digit times its share of the digits' probability, rounded to 4 decimals.

    Returns ``{"soft", "best", "share", "probs"}``; ``soft`` and ``share`` are None when the
    digits have no probability at all (their code gives 0 there).
    """
    probs = [float(math.exp(v)) for v in digit_log_probs]
    total = sum(probs)
    best_at = probs.index(max(probs))  # the first of equal maxima, as list.index does
    if not total > 0:
        return {"soft": None, "best": None, "share": None, "probs": probs}
    share = probs[best_at] / total
    return {"soft": round(digits[best_at] * share, 4), "best": digits[best_at], "share": share, "probs": probs}


# ---------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------
@dataclass
class _Request:
    chat: ChatRequest
    frames: int
    size: tuple[int, int]


class VideoScore2Reward(BatchReward):
    """VideoScore2's three scores over an in-process :class:`~cac_align.vlm.hf.HFBackend`.

    ``details``: per dimension (``visual_quality``, ``text_alignment``, ``physical``) a dict with
    ``hard`` (the integer, or None), ``soft`` (or None), ``best`` and ``share`` (the soft score's
    digit and its share) and ``digit_probs`` (P(1..5) at the score token); ``answer`` (the text),
    ``frames``, ``frame_size``, ``prompt_source``.
    """

    name = "videoscore2"
    score_range = (0.0, 5.0)
    needs_prompt = True  # text-to-video alignment needs the generating prompt

    def __init__(
        self,
        backend: Any,
        template: str = _BUILT_IN_TEMPLATE,
        prompt_source: str = BUILT_IN,
        score: str = "mean",
        scoring: str = "soft",
        fps: float = 2.0,
        temperature: float = 0.7,
        max_new_tokens: int = 1024,
        seed: int | None = None,
        source_fps: float | None = 16.0,
        batch_size: int = 8,
    ):
        from cac_align.vlm.hf import HFBackend

        if not isinstance(backend, HFBackend):
            raise TypeError(f"videoscore2 reads the probabilities it sampled from, which only the in-process (hf) backend "
                            f"gives; got {type(backend).__name__}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.backend = backend
        self.template = string.Template(template)
        try:
            self.template.substitute({PROMPT_FIELD: "a prompt"})
        except (KeyError, ValueError) as exc:
            raise ValueError(f"the question template must hold ${PROMPT_FIELD} and no other $-field: {exc!r}") from None
        self.prompt_source = prompt_source
        self.score, self.scoring = score, scoring
        self.fps, self.temperature = fps, temperature
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.source_fps, self.batch_size = source_fps, batch_size
        self.digit_ids, self.digits = _single_token_digits(backend.tokenizer)

    def to(self, device: Any) -> "VideoScore2Reward":
        self.backend.to(device)
        return self

    def request(self, video: Video, prompt: str | None) -> _Request:
        frames, indices = vs2_frames(video, self.fps)
        # The processor is told fps = their 2.0 (VideoMetadata), whatever the frames' true spacing.
        shown = Video(frames, self.fps, np.asarray(video.timestamps)[indices], video.source)
        question = self.template.substitute({PROMPT_FIELD: prompt})
        chat = [{"role": "user", "content": [video_part(shown), text_part(question)]}]
        return _Request(chat, len(frames), (int(frames.shape[1]), int(frames.shape[2])))

    def score_batch(self, requests: list[_Request]) -> list[dict]:
        completions, log_probs = self.backend.sample_token_log_probs(
            [r.chat for r in requests], self.digit_ids, max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed
        )
        return [self._detail(r, c, lp) for r, c, lp in zip(requests, completions, log_probs)]

    def _detail(self, request: _Request, completion: Any, log_probs: np.ndarray) -> dict:
        tokenizer = self.backend.tokenizer
        ids = list(completion.token_ids)
        answer = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        hard = parse_scores(answer)
        detail: dict[str, Any] = {"answer": answer, "frames": request.frames, "frame_size": list(request.size),
                                  "prompt_source": self.prompt_source, "valid": False}
        for d, (dimension, label) in enumerate(zip(DIMENSIONS, LABELS)):
            value = hard[d] if hard is not None else None
            at = score_token_index(tokenizer, ids, label)
            read = soft_score(log_probs[at], self.digits) if value is not None and at >= 0 else None
            detail[dimension] = {"hard": value, "soft": read["soft"] if read else None, "best": read["best"] if read else None,
                                 "share": read["share"] if read else None, "digit_probs": read["probs"] if read else None,
                                 "token_index": at}
        wanted = DIMENSIONS if self.score == "mean" else (self.score,)
        key = "hard" if self.scoring == "hard" else "soft"
        if hard is None:
            return {**detail, "error": "no 'visual quality: N ... text-to-video alignment: N ... physical/common-sense consistency: N' "
                                       "in VideoScore2's answer", "error_kind": ErrorKind.PARSE}
        missing = [d for d in wanted if detail[d][key] is None]
        if missing:
            empty = [d for d in missing if detail[d]["digit_probs"] is not None]
            if empty:
                return {**detail, "error": f"digits 1-5 have no probability at the score token of {', '.join(empty)}",
                        "error_kind": ErrorKind.SCORE}
            return {**detail, "error": f"no score token found after the label of {', '.join(missing)}", "error_kind": ErrorKind.PARSE}
        values = [float(detail[d][key]) for d in wanted]
        return {**detail, "valid": True, "score": sum(values) / len(values)}


def _single_token_digits(tokenizer: Any) -> tuple[list[int], tuple[int, ...]]:
    """Token ids of the digits 1..5 that are one token each (their script skips any other)."""
    ids, digits = [], []
    for digit in DIGITS:
        encoded = tokenizer.encode(str(digit), add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(int(encoded[0]))
            digits.append(digit)
    if not ids:
        raise ValueError("none of the digits 1-5 is a single token of this tokenizer: VideoScore2's soft score cannot be read")
    return ids, tuple(digits)


# ---------------------------------------------------------------------------------------
# Recipe section
# ---------------------------------------------------------------------------------------
@dataclass
class VideoScore2Config:
    """Recipe section of ``name: videoscore2``.

    Attributes:
        model: the checkpoint (default ``TIGER-Lab/VideoScore2``), in-process (``backend: hf``).
            Their script loads it in float32 (no dtype given); bfloat16 halves the memory and
            moves the probabilities slightly.
        score: "mean" of the three dimensions (default), or "visual_quality", "text_alignment",
            "physical".
        scoring: "soft" (their soft scores, default) or "hard" (the integers).
        fps: frames per second sampled (their 2.0).
        temperature: sampling temperature (their 0.7); other sampling settings come from the
            checkpoint's generation_config.json.
        max_new_tokens: generation budget (their script: 1024).
        seed: seeds each call's sampling (None: not seeded, as theirs).
        authors_repo: your checkout of github.com/TIGER-AI-Lab/VideoScore2 (the question is read
            from ``vs2_inference.py`` there); None reads ``$VIDEOSCORE2_REPO``; with neither, our paraphrase.
        source_fps: frame rate of array/tensor input without ``fps`` in metadata.

    Videos scored together are the model's batch: ``model.max_batch_size``.
    """

    MOVED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {"batch_size": ("model.max_batch_size", "the videos scored together are the model's batch")}

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=DEFAULT_MODEL))
    score: str = "mean"
    scoring: str = "soft"
    fps: float = 2.0
    temperature: float = 0.7
    max_new_tokens: int = 1024
    seed: int | None = None
    authors_repo: str | None = None
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if not self.fps > 0 or not self.temperature > 0:
            raise ValueError(f"fps and temperature must be > 0 (VideoScore2 samples), got {self.fps} and {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.model.backend != "hf":
            raise ValueError("model.backend must be hf: VideoScore2's soft scores need the probabilities its answer was sampled "
                             "from, which a server does not return (their code runs transformers only)")


def build(config: VideoScore2Config, key: str = "reward") -> VideoScore2Reward:
    """Build the reward a ``name: videoscore2`` section describes (loads the model)."""
    template, source = resolve_template(config.authors_repo, config.model.name, key)
    backend = build_backend(config.model, key=f"{key}.model")
    return VideoScore2Reward(
        backend,
        template,
        source,
        score=config.score,
        scoring=config.scoring,
        fps=config.fps,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        source_fps=config.source_fps,
        batch_size=config.model.max_batch_size,
    )


def judges(config: VideoScore2Config, where: str, video: Any) -> list[Any]:
    """The one model a ``name: videoscore2`` section loads, for the memory plan
    (:mod:`cac_align.rewards.judges`): qwen-vl-utils' frames at ``fps`` (an even count, at least 4)
    within 100,352 pixels a frame (:func:`vs2_frames`), its question (an estimate of 2,000
    characters) and ``max_new_tokens``."""
    from cac_align.rewards.judges import Frames, JudgeCall, fit_pixels, judge_of, text_tokens

    height, width = fit_pixels(video.height, video.width, 100352)
    count = min(video.frames, max(4, 2 * int(video.duration_s * config.fps / 2)))
    call = JudgeCall((Frames(count, height, width),), text_tokens("x" * 2000), config.max_new_tokens, config.model.max_batch_size)
    return [judge_of(config.model, f"{where}.model", call)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "videoscore2",
    "cac_align.rewards.videoscore2:VideoScore2Config",
    "cac_align.rewards.videoscore2:build",
    "VideoScore2's visual quality, text alignment and physical consistency (1-5 soft scores from its sampled answer)",
    judges="cac_align.rewards.videoscore2:judges",
)
