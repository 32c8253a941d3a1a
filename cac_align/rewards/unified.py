"""UnifiedReward as a :class:`~cac_align.rewards.base.Reward`: pointwise video scores.

Two families, each asked in its own published prompt format for video generation
(UnifiedReward, Wang et al. 2025; the paper combines it with CaC, CaC §4.2):

- ``v1`` (``CodeGoat24/UnifiedReward-qwen-7b``, Qwen2.5-VL): five sub-scores on 1–4 (visual
  quality, temporal consistency, dynamic degree, text-to-video alignment, factual
  consistency) and a "Final Score" 1–10. Its authors describe the final score as untrained, so
  it is logged in ``details`` and never used.
- ``2.0`` (``CodeGoat24/UnifiedReward-2.0-qwen3vl-8b``, Qwen3-VL): Alignment, Physics and
  Style scores on 1–5 (it writes decimals, e.g. ``Physics Score (1-5): 3.0987``).

**Which words.** Each checkpoint should be asked in its authors' exact words, and those are in
their published inference scripts (MIT), which this project does not copy. Point one setting at
your checkout of github.com/CodeGoat24/UnifiedReward, ``authors_repo`` or the environment
variable ``UNIFIED_REWARD_REPO``, and the question is read from the script of the format
(:data:`AUTHORS_SCRIPTS`; parsed, never run, see :func:`read_template`). ``template_file`` names
one script or text file directly. With neither, the built-in prompts below are used: they follow
each format's structure (role, dimensions with their definitions, the scale, the exact answer
lines the model was trained to write) in our own words, a paraphrase; a real (not tiny)
checkpoint asked in it logs a warning once per process. Every result says which question was
asked (``details[i]["prompt_source"]``, and ``info["prompt_sources"]`` by reward name, which
combined rewards merge and jobs record: ``authors_script:PATH``, ``template_file:PATH`` or
``built_in_paraphrase``).

**Which frames**, by default as each format's authors send them (``num_frames: null``):

- v1: its script passes the video file through ``qwen-vl-utils`` at its default 2 fps, so we
  take the frame count from ``qwen_vl_utils``' own ``smart_nframes`` and the same evenly spaced
  indices (81 frames at 16 fps -> 10 frames), and resize them as it does (its ``smart_resize``:
  480x832 -> 476x840), see :func:`sample_like_qwen_vl_utils`; they go to the model as one video.
- 2.0: its script reads 16 frames at indices ``int(i * total / 16)``, writes each as a JPEG
  (quality 95), and its client sends them as 16 separate images, each encoded again as a JPEG of
  quality 95, with no timestamps: :func:`authors_images` does exactly that, and the same 16 JPEG
  files go to a server and (decoded) to an in-process model.

A number for ``num_frames`` takes that many frames instead (v1: uniform, as a video sized by the
processor; 2.0: that many images at ``int(i * total / n)``).

The scalar is the mean of the sub-scores, obtained one of two ways (``scoring``):

- ``text``: generate the answer and parse each sub-score line. A missing, unparsable or
  out-of-range sub-score makes the sample invalid, with the raw text kept.
- ``probs``: no free generation. The answer is teacher-forced line by line in the format's own
  words; at each score position the probabilities of the score digits are read and the
  sub-score is their expectation, ``sum_d d * p(d) / sum_d p(d)`` over the scale's digits.
  Earlier lines are filled with the values already read (the most likely digit for integer
  scales, the expectation to 4 decimals for decimal scales) and joined the way the real model
  writes them (v1 answers start lines 2-5 with a space: ``"visual quality: 3\n temporal
  consistency: 3"``, as quoted in UnifiedReward issues #44/#49), so each position sees the
  context the model would have written. Smoother than text and free of parse failures; only the
  leading digit is scored (decimal places would need a call per candidate digit).
"""

from __future__ import annotations

import ast
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from cac_align.rewards.base import BatchReward, ErrorKind, RewardOutput
from cac_align.video import Video
from cac_align.vlm.backend import Backend, ChatRequest, jpeg_image_part, text_part, user
from cac_align.vlm.config import TINY_PREFIX, ModelConfig, build_backend

log = logging.getLogger(__name__)

__all__ = [
    "AUTHORS_REPO_ENV",
    "judges",
    "AUTHORS_SCRIPTS",
    "authors_question",
    "BUILT_IN",
    "FORMATS",
    "ScoreFormat",
    "UnifiedReward",
    "UnifiedRewardConfig",
    "authors_images",
    "build",
    "parse_scores",
    "read_template",
    "resolve_template",
    "sample_like_qwen_vl_utils",
    "sample_uniform",
]

SCORINGS = ("text", "probs")


@dataclass(frozen=True)
class ScoreFormat:
    """One UnifiedReward answer format.

    Attributes:
        version: "v1" or "2.0".
        template: the user prompt, with ``{prompt}`` for the generating prompt.
        dimensions: (key, label) per sub-score, in answer order.
        line: how an answer line reads, with ``{label}`` and ``{value}``.
        low, high: the sub-score scale (inclusive).
        integer: whether the scale is whole numbers (v1) or decimals (2.0).
        final_label: a logged-only overall line ("Final Score" in v1), or None.
        separator: what the model writes between answer lines ("\n " for v1: a newline, then a
            space before each later line).
        frames: how its authors send frames by default: "qwen_vl_utils" (one video sampled by
            qwen-vl-utils at 2 fps) or "jpeg_images16" (16 separate JPEG images).
    """

    version: str
    template: str
    dimensions: tuple[tuple[str, str], ...]
    line: str
    low: int
    high: int
    integer: bool
    final_label: str | None = None
    separator: str = "\n"
    frames: str = "jpeg_images16"

    @property
    def digits(self) -> list[str]:
        return [str(d) for d in range(self.low, self.high + 1)]


_V1_TEMPLATE = (
    "You are an expert judge of AI-generated videos. Watch the frames of the given video and read "
    "the text prompt it was generated from.\n"
    "Then score it on 5 dimensions:\n"
    "(1) visual quality: how clear, sharp, well exposed and well coloured the video is\n"
    "(2) temporal consistency: whether objects and humans stay consistent across the video\n"
    "(3) dynamic degree: how much the content moves and changes\n"
    "(4) text-to-video alignment: how well the video content matches the text prompt\n"
    "(5) factual consistency: whether the content agrees with common sense and facts\n\n"
    "For each dimension, output a number from [1,2,3,4], \n"
    "where '1' means 'Bad', '2' means 'Average', '3' means 'Good', \n"
    "'4' means 'Real' or 'Perfect' (the video looks like a real video)\n"
    "Finally, based on the 5 dimensions above, give a score from 1 to 10 after 'Final Score:'\n"
    "An example of the output format:\n"
    "visual quality: 4\n"
    "temporal consistency: 4\n"
    "dynamic degree: 3\n"
    "text-to-video alignment: 1\n"
    "factual consistency: 2\n"
    "Final Score: 6\n\n"
    "**Note: the numbers in this example are placeholders that only show the format; your scores "
    "must come from the given video.**\n"
    "Your task is as follows: Text Prompt: [{prompt}]"
)

_V2_TEMPLATE = (
    "You are given a generated video and the text caption it was generated from. "
    "Analyse the video against the caption on several dimensions. Specifically:\n"
    "Rate the video on each of these axes, from 1 to 5:\n"
    "- Alignment Score: how well the video's content matches the caption.\n"
    "- Physics Score: whether gravity, motion, collisions and interactions make physical sense.\n"
    "- Style Score: how visually appealing the video is, whatever the caption says.\n\n"
    "Write your evaluation in exactly this format:\n\n"
    "Alignment Score (1-5): X\n"
    "Physics Score (1-5): Y\n"
    "Style Score (1-5): Z\n\n"
    "Your task is as follows:\n"
    "Text Caption: [{prompt}]"
)

FORMATS: dict[str, ScoreFormat] = {
    "v1": ScoreFormat(
        version="v1",
        template=_V1_TEMPLATE,
        dimensions=(
            ("visual_quality", "visual quality"),
            ("temporal_consistency", "temporal consistency"),
            ("dynamic_degree", "dynamic degree"),
            ("text_alignment", "text-to-video alignment"),
            ("factual_consistency", "factual consistency"),
        ),
        line="{label}: {value}",
        low=1,
        high=4,
        integer=True,
        final_label="Final Score",
        separator="\n ",
        frames="qwen_vl_utils",
    ),
    "2.0": ScoreFormat(
        version="2.0",
        template=_V2_TEMPLATE,
        dimensions=(("alignment", "Alignment Score"), ("physics", "Physics Score"), ("style", "Style Score")),
        line="{label} (1-5): {value}",
        low=1,
        high=5,
        integer=False,
    ),
}

# Where each format's question lives in a checkout of github.com/CodeGoat24/UnifiedReward: the
# authors' pointwise video-generation scripts (v1: in-process Qwen2.5-VL; 2.0: a vLLM client).
AUTHORS_SCRIPTS: dict[str, str] = {
    "v1": "inference_qwen/video_generation/qwen_point_score_video_generation.py",
    "2.0": "inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py",
}
AUTHORS_REPO_ENV = "UNIFIED_REWARD_REPO"  # the checkout, when no recipe sets authors_repo
BUILT_IN = "built_in_paraphrase"  # prompt_source of the built-in prompts
AUTHORS_JPEG_QUALITY = 95  # 2.0: cv2.imwrite's default quality, and their client's re-encoding

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))"


def _label_pattern(label: str) -> re.Pattern:
    """A line holding ``label`` and a number: tolerant of markdown (**, -, #), a "(1-5)" scale
    note, a numbered "(1)" prefix, and ':' or '=' separators; case-insensitive."""
    return re.compile(
        r"^[ \t>#*\-]*(?:\(\d\)\s*)?\**\s*" + re.escape(label) + r"\s*\**\s*(?:\(\s*\d+\s*-\s*\d+\s*\))?\s*\**\s*[:=]\s*\**\s*" + _NUMBER,
        re.IGNORECASE | re.MULTILINE,
    )


def parse_scores(text: str, fmt: ScoreFormat) -> tuple[dict[str, float], float | None, list[str]]:
    """Read every sub-score of ``fmt`` from an answer.

    Returns:
        (sub-scores found in range, the logged final score or None, problems). The answer is
        usable only when ``problems`` is empty: every dimension present, finite and on the scale.
    """
    scores: dict[str, float] = {}
    problems: list[str] = []
    for key, label in fmt.dimensions:
        match = _label_pattern(label).search(text)
        if match is None:
            problems.append(f"no '{label}' score")
            continue
        value = float(match.group(1))
        if not (fmt.low <= value <= fmt.high):
            problems.append(f"'{label}' = {match.group(1)} outside [{fmt.low}, {fmt.high}]")
            continue
        scores[key] = value
    final = None
    if fmt.final_label is not None:
        match = _label_pattern(fmt.final_label).search(text)
        final = float(match.group(1)) if match else None
    return scores, final, problems


QWEN_VL_UTILS_FPS = 2.0  # qwen-vl-utils' default sampling rate (its FPS constant)


def sample_like_qwen_vl_utils(video: Video, fps: float = QWEN_VL_UTILS_FPS, patch_size: int = 14) -> Video:
    """The frames ``qwen-vl-utils`` gives a model for this video at ``fps``, at the size it gives them.

    Its ``smart_nframes`` decides how many (``frames / source fps * fps``, kept within its
    bounds and rounded to an even count); they are spread evenly from the first frame to the last
    and rounded, as its video readers do. Its ``smart_resize`` decides the size: sides rounded to
    multiples of ``2 * patch_size`` (28 for Qwen2.5-VL) within its per-frame pixel bounds (480x832
    -> 476x840), resized bicubic with antialiasing as it does, so the processor has nothing left to
    change. The result's fps is the rate it reports to the processor, ``n / frames * source fps``.
    A video of fewer than 2 frames is kept whole.
    """
    import torch
    from qwen_vl_utils import vision_process as qvu
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf

    total = video.num_frames
    if total < 2:
        return video
    count = qvu.smart_nframes({"fps": fps}, total_frames=total, video_fps=video.fps)
    indices = torch.linspace(0, total - 1, count).round().long().numpy()
    sampled = video.select(indices, count / total * video.fps)
    factor = 2 * patch_size
    min_pixels = qvu.VIDEO_MIN_TOKEN_NUM * factor * factor
    budget = qvu.MODEL_SEQ_LEN * factor * factor * 0.9 / count * qvu.FRAME_FACTOR
    max_pixels = max(min(qvu.VIDEO_MAX_TOKEN_NUM * factor * factor, budget), int(min_pixels * 1.05))
    height, width = qvu.smart_resize(sampled.height, sampled.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    if (height, width) == (sampled.height, sampled.width):
        return sampled
    frames = torch.from_numpy(np.asarray(sampled.frames)).permute(0, 3, 1, 2).float()
    resized = tvf.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    array = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return Video(array, sampled.fps, sampled.timestamps, sampled.source)


def authors_images(video: Video, num_frames: int = 16, max_pixels: int | None = None) -> list[dict[str, Any]]:
    """The images UnifiedReward 2.0's authors send for a video, as image parts with their JPEG files.

    Their script picks frames ``int(i * total / num_frames)`` for ``i < num_frames`` (each index
    once: a video shorter than ``num_frames`` gives all its frames), saves each as a JPEG of
    quality 95 (``cv2.imwrite``'s default), and their client opens each file and encodes it again
    as a JPEG of quality 95 before sending it. Each part's pixels are what that second file
    decodes to, and the part carries the file, so a server backend sends the very bytes their
    client sends and an in-process model sees the pixels their server decodes. ``max_pixels``
    downscales the frames first (aspect kept); None keeps their size, as the authors do.
    """
    total = video.num_frames
    indices = sorted({int(i * total / num_frames) for i in range(num_frames)})
    frames = video.select(np.asarray(indices), video.fps)
    if max_pixels:
        frames = frames.fit_pixels(max_pixels)
    return [jpeg_image_part(frame, quality=AUTHORS_JPEG_QUALITY, rounds=2) for frame in frames.frames]


def sample_uniform(video: Video, num_frames: int) -> Video:
    """``num_frames`` frames evenly spread from the first to the last (all frames if fewer).

    The result keeps each frame's source timestamp; its nominal fps is frames / duration.
    """
    if video.num_frames <= num_frames:
        return video
    indices = np.unique(np.round(np.linspace(0, video.num_frames - 1, num_frames)).astype(np.int64))
    return video.select(indices, len(indices) / video.duration_s)


@dataclass
class UnifiedRewardConfig:
    """Recipe section of ``name: unified_reward``.

    Attributes:
        model: the UnifiedReward checkpoint (v1 default: CodeGoat24/UnifiedReward-qwen-7b).
        version: the answer format, "v1" or "2.0" (must match the checkpoint).
        scoring: "text" (parse the generated answer) or "probs" (digit-probability expectation).
        num_frames: None (default) sends frames as the format's authors do (v1: one video
            sampled by qwen-vl-utils at 2 fps, e.g. 10 of a Wan video's 81; 2.0: 16 JPEG images
            at ``int(i * total / 16)``); a number takes that many frames instead.
        max_pixels: downscale frames to at most this many pixels (aspect kept); None keeps them.
        max_new_tokens: generation budget in text scoring.
        authors_repo: your checkout of github.com/CodeGoat24/UnifiedReward; the question is read
            from the format's script there (:data:`AUTHORS_SCRIPTS`). None reads the environment
            variable ``UNIFIED_REWARD_REPO``; with neither, the built-in paraphrase is asked.
        template_file: one question file, taking precedence over ``authors_repo``: an inference
            script (a ``.py`` file, read by :func:`read_template`) or a text file with a
            ``{prompt}`` placeholder.
        min_digit_mass: in probs scoring, a sample whose score digits get less total probability
            than this at any position is invalid (the model was not answering in format).
        source_fps: frame rate of array/tensor input without ``fps`` in metadata.

    The batch is the model's: ``model.max_batch_size`` videos per backend call.
    """

    MOVED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {"batch_size": ("model.max_batch_size", "the videos scored together are the model's batch")}

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="CodeGoat24/UnifiedReward-qwen-7b"))
    version: str = "v1"
    scoring: str = "text"
    num_frames: int | None = None
    max_pixels: int | None = None
    max_new_tokens: int = 256
    authors_repo: str | None = None
    template_file: str | None = None
    min_digit_mass: float = 0.0
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if self.version not in FORMATS:
            raise ValueError(f"version must be one of {list(FORMATS)}, got {self.version!r}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.num_frames is not None and self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (or null: as the format's authors sample), got {self.num_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.min_digit_mass < 1.0:
            raise ValueError(f"min_digit_mass must be in [0, 1), got {self.min_digit_mass}")


class UnifiedReward(BatchReward):
    """UnifiedReward pointwise scoring over any :class:`Backend`.

    Scores are the mean sub-score on the format's scale (1–4 for v1, 1–5 for 2.0); normalize
    them with ``fixed`` (see :mod:`cac_align.rewards.normalize`) before combining.

    ``details[i]``: ``sub_scores``, ``text`` (the raw answer, or the teacher-forced answer in
    probs scoring), ``final_score`` (v1, logged only), ``digit_probs`` (probs scoring),
    ``prompt_source`` (which question was asked), ``error`` when invalid.

    ``template`` and ``prompt_source`` come from :func:`resolve_template` when built from a
    recipe; by default the format's built-in paraphrase.
    """

    def __init__(
        self,
        backend: Backend,
        version: str = "v1",
        scoring: str = "text",
        num_frames: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = 256,
        template: str | None = None,
        min_digit_mass: float = 0.0,
        source_fps: float | None = 16.0,
        batch_size: int = 8,
        name: str = "unified_reward",
        prompt_source: str | None = None,
    ):
        if version not in FORMATS:
            raise ValueError(f"version must be one of {list(FORMATS)}, got {version!r}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.backend = backend
        self.format = FORMATS[version]
        self.template = template if template is not None else self.format.template
        self.prompt_source = prompt_source or (BUILT_IN if template is None else "template")
        if "{prompt}" not in self.template:
            raise ValueError("the UnifiedReward prompt template needs a {prompt} placeholder")
        self.scoring = scoring
        self.num_frames = num_frames
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.min_digit_mass = min_digit_mass
        self.source_fps = source_fps
        self.batch_size = batch_size
        self.name = name
        self.score_range = (float(self.format.low), float(self.format.high))

    # -- public -----------------------------------------------------------------------------
    def __call__(self, videos: Any, prompts: Sequence[str | None] | None = None, metadata: Any = None) -> RewardOutput:
        out = super().__call__(videos, prompts, metadata)
        for entry in out.details:
            entry["prompt_source"] = self.prompt_source
        out.info = {"prompt_sources": {self.name: self.prompt_source}}
        return out

    def request(self, video: Video, prompt: str) -> ChatRequest:
        """Uniformly sampled frames and the format's question, as one user turn."""
        question = text_part(self.template.replace("{prompt}", prompt))
        return [{"role": "user", "content": [*self._frames(video), question]}]

    def score_batch(self, requests: list[ChatRequest]) -> list[dict]:
        """The answers; the scalar is the mean of the sub-scores."""
        answers = self._score_text(requests) if self.scoring == "text" else self._score_probs(requests)
        for answer in answers:
            if "error" not in answer:
                answer["score"] = float(np.mean(list(answer["sub_scores"].values())))
        return answers

    def to(self, device: Any) -> "UnifiedReward":
        """Move the in-process model, if any (Best-of-N offloading)."""
        self.backend.to(device)
        return self

    # -- steps ------------------------------------------------------------------------------
    def _frames(self, video: Video) -> list[dict[str, Any]]:
        """The content parts that show ``video`` to the model, as the format's authors send it."""
        if self.format.frames == "jpeg_images16":  # 2.0: separate JPEG images, no timestamps
            return authors_images(video, self.num_frames or 16, self.max_pixels)
        if self.num_frames is not None:
            sampled = sample_uniform(video, self.num_frames)
        else:
            sampled = sample_like_qwen_vl_utils(video)
        sampled = sampled.fit_pixels(self.max_pixels) if self.max_pixels else sampled
        return user(sampled)["content"]

    def _score_text(self, requests: list[ChatRequest]) -> list[dict]:
        completions = self.backend.generate(requests, max_new_tokens=self.max_new_tokens, temperature=0.0)
        answers = []
        for completion in completions:
            sub_scores, final, problems = parse_scores(completion.text, self.format)
            answer: dict[str, Any] = {"scoring": "text", "text": completion.text, "sub_scores": sub_scores}
            if self.format.final_label is not None:
                answer["final_score"] = final  # logged only: documented as untrained by its authors
            if problems:
                answer["error"] = "unparsable answer: " + "; ".join(problems)
                answer["error_kind"] = ErrorKind.PARSE
            answers.append(answer)
        return answers

    def _score_probs(self, requests: list[ChatRequest]) -> list[dict]:
        fmt = self.format
        digits = fmt.digits
        values = np.arange(fmt.low, fmt.high + 1, dtype=np.float64)
        heads = [fmt.line.split("{value}")[0].format(label=label) for _, label in fmt.dimensions]
        texts = [""] * len(requests)  # each answer as written so far
        answers: list[dict[str, Any]] = [
            {"scoring": "probs", "sub_scores": {}, "digit_probs": {}, "digit_mass": {}} for _ in requests
        ]

        def read(step: int, j: int, row: np.ndarray) -> str:
            """Record sub-score ``step`` of answer ``j``; return what the model writes next: this
            line's value, the line break, and the next line's head."""
            key, label = fmt.dimensions[step]
            row = np.asarray(row, dtype=np.float64)
            mass = float(row.sum())
            answers[j]["digit_probs"][key] = row.tolist()
            answers[j]["digit_mass"][key] = mass
            if not (np.isfinite(mass) and mass > 0) or mass < self.min_digit_mass:
                answers[j].setdefault("error", f"'{label}': score digits got probability mass {mass:.3g}")
                answers[j]["error_kind"] = ErrorKind.SCORE
                expected = float(values[0])
            else:
                expected = float((values * row).sum() / mass)
            answers[j]["sub_scores"][key] = expected
            written = digits[int(np.argmax(row))] if fmt.integer else f"{expected:.4f}"
            texts[j] += fmt.line.format(label=label, value=written)
            if step + 1 < len(fmt.dimensions):
                texts[j] += fmt.separator
                return written + fmt.separator + heads[step + 1]
            return written

        # One score position per sub-score; each position's prefix holds the lines read so far.
        # (in-process the video is encoded once for all positions; the backend calls read() after
        # every position but the last, to grow the prefixes)
        steps = len(fmt.dimensions)
        last = self.backend.choice_probs_steps(requests, [heads[0]] * len(requests), digits, steps, read)[-1]
        for j, row in enumerate(last):
            read(steps - 1, j, row)
        for answer, text in zip(answers, texts):
            answer["text"] = text
        return answers


_warned_paraphrase: set[str] = set()  # models already warned about, once per process


def resolve_template(config: UnifiedRewardConfig, key: str = "reward") -> tuple[str | None, str]:
    """Which question a ``unified_reward`` section asks: ``(template or None, prompt_source)``.

    In order: ``template_file``; the format's script (:data:`AUTHORS_SCRIPTS`) in
    ``authors_repo``, or else in the checkout the environment variable ``UNIFIED_REWARD_REPO``
    names; else None, the built-in paraphrase, with a warning (once per process and model) when
    the model is a real checkpoint rather than a tiny random one.

    Raises:
        RecipeError: a named file or checkout that does not hold a readable question; the message
            names the key (or the variable) to fix.
    """
    return authors_question(
        key,
        config.template_file,
        config.authors_repo,
        AUTHORS_SCRIPTS[config.version],
        f"the authors' version {config.version} script",
        config.model.name,
        f"UnifiedReward {config.model.name} (version {config.version})",
    )


def authors_question(
    key: str, template_file: str | None, authors_repo: str | None, script: str, described: str, model_name: str, label: str,
    warned: set[str] | None = None,
) -> tuple[str | None, str]:
    """Where a UnifiedReward-family reward's question comes from: ``(template or None, prompt_source)``.

    In order: ``template_file``; ``script`` (a path inside github.com/CodeGoat24/UnifiedReward) in
    ``authors_repo``, or else in the checkout ``$UNIFIED_REWARD_REPO`` names; else None (the
    reward's built-in paraphrase), with a warning once per process and model (``warned``, default
    this module's set) when the model is a real checkpoint rather than a tiny random one.
    ``described`` says in errors what the script is; ``label`` names the model in the warning.

    Raises:
        RecipeError: a named file or checkout that does not hold a readable question; the message
            names the key (or the variable) to fix.
    """
    from cac_align.config import RecipeError

    if template_file is not None:
        try:
            return read_template(template_file), f"template_file:{Path(template_file).resolve()}"
        except ValueError as exc:
            raise RecipeError(f"{key}.template_file: {exc}") from None
    repo, where = authors_repo, f"{key}.authors_repo"
    if repo is None and os.environ.get(AUTHORS_REPO_ENV):
        repo, where = os.environ[AUTHORS_REPO_ENV], f"the environment variable {AUTHORS_REPO_ENV}"
    if repo is not None:
        root = Path(repo).expanduser()
        if not root.is_dir():
            raise RecipeError(f"{where}={repo!r}: no such folder; point it at your checkout of github.com/CodeGoat24/UnifiedReward")
        if not (root / script).is_file():
            raise RecipeError(f"{where}={repo!r}: no {script} there ({described}); is it a checkout of github.com/CodeGoat24/UnifiedReward?")
        try:
            return read_template(root / script), f"authors_script:{(root / script).resolve()}"
        except ValueError as exc:
            raise RecipeError(f"{where}: {exc}") from None
    warned = _warned_paraphrase if warned is None else warned
    if not model_name.startswith(TINY_PREFIX) and model_name not in warned:
        warned.add(model_name)
        log.warning(
            "%s is asked cac_align's built-in paraphrase of its authors' question, not their words, and may score "
            "differently. Set %s=/path/to/your/UnifiedReward checkout (or %s) to ask it as they do.",
            label, AUTHORS_REPO_ENV, f"{key}.authors_repo",
        )
    return None, BUILT_IN


def build(config: UnifiedRewardConfig, key: str = "reward") -> UnifiedReward:
    """Build the reward a ``name: unified_reward`` section describes (loads the model)."""
    template, prompt_source = resolve_template(config, key)
    backend = build_backend(config.model, key=f"{key}.model")
    return UnifiedReward(
        backend,
        version=config.version,
        scoring=config.scoring,
        num_frames=config.num_frames,
        max_pixels=config.max_pixels,
        max_new_tokens=config.max_new_tokens,
        template=template,
        min_digit_mass=config.min_digit_mass,
        source_fps=config.source_fps,
        batch_size=config.model.max_batch_size,
        prompt_source=prompt_source,
    )


def read_template(path: str | Path) -> str:
    """The question a template file holds, with ``{prompt}`` where the video's prompt goes.

    A ``.py`` file is the authors' inference script: its source is parsed (never run) and the
    one question string with a ``{prompt}`` field is taken, with that field kept as the
    placeholder. Both of their script shapes are read: v1 gives the question as a message's
    ``"text"`` (an f-string in the ``messages`` list), 2.0 assigns it to a variable
    (``problem = ("..." "..." f"Text Caption: [{prompt}]")``, adjacent strings joined as Python
    joins them). Any other file is read as text and must contain ``{prompt}``.

    Raises:
        ValueError: no such file, no ``{prompt}`` placeholder, or a script with none or several
            candidate questions.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{str(path)!r}: no such file")
    source = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        if "{prompt}" not in source:
            raise ValueError(f"{path}: the template needs a {{prompt}} placeholder")
        return source
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}: not a readable Python script ({exc.msg}, line {exc.lineno})") from None
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):  # {"type": "text", "text": f"...{prompt}..."}
            values = [v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant) and k.value == "text"]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:  # problem = f"...{prompt}..."
            values = [node.value]
        else:
            continue
        found.extend(text for text in map(_literal_with_prompt, values) if text is not None)
    found = list(dict.fromkeys(found))
    if len(found) != 1:
        raise ValueError(
            f"{path}: expected one question (a message text or an assigned string) with a {{prompt}} field, found {len(found)}; "
            "copy the question into a text file with a {prompt} placeholder instead"
        )
    return found[0]


def _literal_with_prompt(node: ast.AST) -> str | None:
    """A string literal or f-string with a ``{prompt}`` field, as a template; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value if "{prompt}" in node.value else None
    if not isinstance(node, ast.JoinedStr):
        return None
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            parts.append(value.value)
        elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) and value.value.id == "prompt":
            parts.append("{prompt}")
        else:
            return None  # some other field: not a question we can fill
    text = "".join(parts)
    return text if "{prompt}" in text else None


_CAPTION_CHARS = 600  # the generating prompt's share of the question (an estimate)
_ANSWER_LINE_TOKENS = 16  # one teacher-forced answer line ("visual quality: 3"), an estimate


def judges(config: UnifiedRewardConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: unified_reward`` section loads, for the memory plan
    (:mod:`cac_align.rewards.judges`): one request per video, its frames as the format's authors
    send them (v1: one video at qwen-vl-utils' 2 fps, an even count of at least 4; 2.0: 16 images;
    ``num_frames`` when set), at ``max_pixels`` when set, else at the video's size; the question and
    the caption; ``max_new_tokens`` generated (text scoring) or the answer lines teacher-forced
    (probs)."""
    from cac_align.rewards.judges import Frames, JudgeCall, fit_pixels, judge_of, text_tokens

    form = FORMATS[config.version]
    height, width = fit_pixels(video.height, video.width, config.max_pixels)
    if config.num_frames is not None:
        count = config.num_frames
    elif form.frames == "qwen_vl_utils":  # smart_nframes: total / fps x 2, floored to an even count, at least 4
        count = max(4, 2 * int(video.duration_s * QWEN_VL_UTILS_FPS / 2))
    else:
        count = 16
    frames = Frames(min(count, video.frames), height, width, images=form.frames != "qwen_vl_utils")
    answer = len(form.dimensions) * _ANSWER_LINE_TOKENS
    new = config.max_new_tokens if config.scoring == "text" else answer
    call = JudgeCall((frames,), text_tokens(form.template) + text_tokens("x" * _CAPTION_CHARS), new, config.model.max_batch_size)
    return [judge_of(config.model, f"{where}.model", call)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "unified_reward",
    "cac_align.rewards.unified:UnifiedRewardConfig",
    "cac_align.rewards.unified:build",
    "UnifiedReward pointwise video score (mean of sub-scores)",
    judges="cac_align.rewards.unified:judges",
)
