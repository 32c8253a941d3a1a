"""``cosmos_reason``: NVIDIA's Cosmos-Reason asked whether a video adheres to the physical laws, as a 1-5 score.

Cosmos-Reason (NVIDIA, 2025; Cosmos-Reason1-7B is a Qwen2.5-VL post-train, Cosmos-Reason2-2B/8B Qwen3-VL ones,
NVIDIA Open Model License) is a physical-AI VLM. Its cookbook's "physical plausibility check" recipe
(github.com/nvidia-cosmos/cosmos-cookbook, ``docs/recipes/post_training/reason1/physical-plausibility-check``,
read at commit 30ab56e) post-trains it as a video reward on VideoPhy-2's physical-commonsense ratings and
asks it with ``assets/video_reward.yaml``: a system prompt (four criteria: object behaviour, motion and
forces, interactions, consistency over time; what each score 1-5 means; the answer format
``<answer>\\nN\\n</answer>``) and one user question about the physical laws. There is no model named
"Cosmos-Reason 3": the line continues as Cosmos 3 (``nvidia/Cosmos3-*``), a reasoner of another
architecture (transformers' ``cosmos3_omni``), not covered here.

**What is asked.** A system turn with their system prompt; a user turn with the video, then their question.
The words are theirs, read at run time from your checkout of the cookbook (``authors_repo`` or
``$COSMOS_COOKBOOK_REPO``; the YAML file's ``system_prompt`` and ``user_prompt``, read as data); without one,
a paraphrase of ours with the same answer format, and a warning for a real checkpoint. The video is shown at
``fps`` (4: the rate Cosmos-Reason2's own examples send), at most ``max_frames`` frames (evenly thinned); the
model's processor sizes the frames. Greedy decoding.

**The score.** ``scoring: probs`` (default, ours): from the same generation, the probabilities of the digits
1-5 right after ``<answer>`` (and the blanks after it), renormalized over the five, and their expected value
``sum_k k p_k / sum_k p_k``, in [1, 5]: a rating that ranks N samples of one prompt where the integers tie.
``scoring: text``: the integer written in the answer (the cookbook's evaluation reads that). A generation
without ``<answer>``, or whose answer holds no integer 1-5 (``text``), is invalid (``parse``); digits with no
probability after ``<answer>`` (``probs``) are invalid (``score``), never 0.

Score range [1, 5]; modality ``video``; does not read the generating prompt. Served or in-process through
any :class:`~cac_align.vlm.backend.Backend` (``model.backend: hf`` or ``openai``: vLLM serves Qwen3-VL).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cac_align.rewards.authors import authors_file, warn_paraphrase
from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.rewards.skyra import answer_prefix
from cac_align.video import Video
from cac_align.vlm.backend import Backend, ChatRequest, generate_and_read, text_part, video_part
from cac_align.vlm.config import ModelConfig, build_backend

log = logging.getLogger(__name__)

__all__ = ["DIGITS", "CosmosPrompt", "CosmosReasonConfig", "CosmosReasonReward", "build", "built_in_prompt", "judges", "parse_rating",
           "read_prompt", "shown_frames"]

AUTHORS_REPO_ENV = "COSMOS_COOKBOOK_REPO"
AUTHORS_FILE = "docs/recipes/post_training/reason1/physical-plausibility-check/assets/video_reward.yaml"
DEFAULT_MODEL = "nvidia/Cosmos-Reason2-8B"
BUILT_IN = "built_in_paraphrase"
DIGITS = ("1", "2", "3", "4", "5")
SCORINGS = ("probs", "text")


@dataclass(frozen=True)
class CosmosPrompt:
    """The words of a request: the system prompt and the user's question, and where they came from."""

    system: str
    user: str
    source: str = BUILT_IN


def built_in_prompt() -> CosmosPrompt:
    """Our own words, with the answer format the model was post-trained to write."""
    return CosmosPrompt(
        system=("You judge whether a video obeys everyday physics: how objects behave for what they are, whether motion "
                "follows gravity and momentum, whether things touch, collide and react plausibly, and whether the scene "
                "stays consistent from frame to frame. Rate it from 1 (physics broken throughout) to 5 (nothing breaks "
                "physics). Write only the rating inside the answer tag:\n<answer>\n3\n</answer>"),
        user="Does the physics of this video hold?",
    )


def read_prompt(path: Any) -> CosmosPrompt:
    """The prompt of the cookbook's ``video_reward.yaml``: its ``system_prompt`` and ``user_prompt`` strings.

    Raises:
        ValueError: naming what the file lacks.
    """
    from pathlib import Path

    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping of system_prompt and user_prompt")
    missing = [k for k in ("system_prompt", "user_prompt") if not isinstance(data.get(k), str) or not data[k].strip()]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} string (the layout of the cookbook's commit 30ab56e)")
    return CosmosPrompt(data["system_prompt"].strip(), data["user_prompt"].strip(), f"authors_file:{path.resolve()}")


_warned_paraphrase: set[str] = set()


def resolve_prompt(authors_repo: str | None, model_name: str, key: str = "reward") -> CosmosPrompt:
    """The prompt a section asks: from the cookbook checkout (``authors_repo``, else ``$COSMOS_COOKBOOK_REPO``),
    else our paraphrase (with a warning once per real model)."""
    from cac_align.config import RecipeError

    found = authors_file(authors_repo, AUTHORS_REPO_ENV, AUTHORS_FILE, "github.com/nvidia-cosmos/cosmos-cookbook", key)
    if found is None:
        warn_paraphrase("cosmos_reason", model_name, AUTHORS_REPO_ENV, "cosmos-cookbook", key, _warned_paraphrase)
        return built_in_prompt()
    path, where = found
    try:
        return read_prompt(path)
    except (ValueError, OSError) as exc:
        raise RecipeError(f"{where}: {exc}") from None


def parse_rating(text: str) -> int | None:
    """The integer 1-5 inside the first ``<answer>...</answer>``; None without the tag or such an integer.

    >>> parse_rating("<think>the cup floats</think><answer>\\n2\\n</answer>"), parse_rating("<answer>7</answer>")
    (2, None)
    """
    match = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    number = re.search(r"\d+", match.group(1)) if match else None
    return int(number.group(0)) if number and 1 <= int(number.group(0)) <= 5 else None


def shown_frames(video: Video, fps: float, max_frames: int) -> Video:
    """The frames shown: ``video`` at ``fps`` (the nearest source frame each ``1 / fps`` s), evenly thinned to
    ``max_frames`` by ``round(linspace(0, K - 1, max_frames))``; the frame rate stays ``fps`` for the
    processor's time positions when nothing is thinned."""
    shown = video.resample(fps)
    if shown.num_frames <= max_frames:
        return shown
    keep = np.round(np.linspace(0, shown.num_frames - 1, max_frames)).astype(np.int64)
    return shown.select(keep, fps * (max_frames - 1) / max(shown.num_frames - 1, 1))


@dataclass
class _Request:
    chat: ChatRequest
    frames: int


class CosmosReasonReward(BatchReward):
    """Cosmos-Reason's 1-5 physical-plausibility rating over any :class:`Backend` (module docstring).

    ``details``: ``rating`` (the integer written, or None), ``p_digits`` (P("1") .. P("5") after ``<answer>``,
    None where not read), ``answer`` (the raw text), ``frames``, ``prompt_source``.
    """

    name = "cosmos_reason"
    score_range = (1.0, 5.0)
    needs_prompt = False  # it judges the video alone
    reads_prompt = False

    def __init__(self, backend: Backend, prompt: CosmosPrompt | None = None, fps: float = 4.0, max_frames: int = 64, scoring: str = "probs",
                 max_new_tokens: int = 512, min_choice_mass: float = 1e-6, source_fps: float | None = 16.0, batch_size: int = 8):
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.backend, self.prompt = backend, prompt or built_in_prompt()
        self.fps, self.max_frames, self.scoring = fps, max_frames, scoring
        self.max_new_tokens, self.min_choice_mass = max_new_tokens, min_choice_mass
        self.source_fps, self.batch_size = source_fps, batch_size

    def to(self, device: Any) -> CosmosReasonReward:
        self.backend.to(device)
        return self

    def request(self, video: Video, prompt: str | None) -> _Request:
        shown = shown_frames(video, self.fps, self.max_frames)
        chat = [{"role": "system", "content": [text_part(self.prompt.system)]},
                {"role": "user", "content": [video_part(shown), text_part(self.prompt.user)]}]
        return _Request(chat, shown.num_frames)

    def score_batch(self, requests: list[_Request]) -> list[dict]:
        chats = [r.chat for r in requests]
        if self.scoring == "probs":
            completions, probs = generate_and_read(self.backend, chats, DIGITS, answer_prefix, self.max_new_tokens)
        else:  # the integer alone: what a generation reads along is kept, nothing is asked again
            completions, probs = self.backend.generate_scored(chats, list(DIGITS), answer_prefix, max_new_tokens=self.max_new_tokens)
            probs = np.array(probs, dtype=float)
        return [self._detail(r, c.text, p) for r, c, p in zip(requests, completions, probs)]

    def _detail(self, request: _Request, text: str, probs: np.ndarray) -> dict:
        rating = parse_rating(text)
        read = [float(p) for p in probs] if np.isfinite(probs).all() else None
        detail: dict[str, Any] = {"rating": rating, "p_digits": read, "answer": text, "frames": request.frames, "prompt_source": self.prompt.source}
        if answer_prefix(text) is None:
            return {**detail, "error": "no <answer> in Cosmos-Reason's answer", "error_kind": ErrorKind.PARSE}
        if self.scoring == "text":
            if rating is None:
                return {**detail, "error": "the answer holds no integer 1-5", "error_kind": ErrorKind.PARSE}
            return {**detail, "score": float(rating)}
        mass = float(np.sum(probs))
        if not math.isfinite(mass) or mass < self.min_choice_mass:
            return {**detail, "error": f"P(1) + ... + P(5) = {mass:.3g} after <answer> (below {self.min_choice_mass:g})", "error_kind": ErrorKind.SCORE}
        return {**detail, "score": float(np.dot(np.arange(1, 6), probs) / mass)}


@dataclass
class CosmosReasonConfig:
    """Recipe section of ``name: cosmos_reason``.

    Attributes:
        model: the checkpoint (default ``nvidia/Cosmos-Reason2-8B``; ``-2B``; ``nvidia/Cosmos-Reason1-7B``) or a
            served model (``backend: openai``).
        scoring: "probs" (the expected digit after ``<answer>``, in [1, 5]) or "text" (the integer written).
        fps: frames per second shown (4: Cosmos-Reason2's examples).
        max_frames: at most this many frames (evenly thinned).
        max_new_tokens: generation budget (the answer alone is a few tokens; a reasoning prompt needs more).
        min_choice_mass: P(1) + ... + P(5) below this is invalid (``score``).
        authors_repo: your checkout of github.com/nvidia-cosmos/cosmos-cookbook (the prompt is read from
            ``docs/recipes/post_training/reason1/physical-plausibility-check/assets/video_reward.yaml``); None
            reads ``$COSMOS_COOKBOOK_REPO``; with neither, our paraphrase.
        source_fps: frame rate of array/tensor input without ``fps`` in metadata.

    Videos scored together are the model's batch: ``model.max_batch_size``.
    """

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"scoring": SCORINGS}

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name=DEFAULT_MODEL))
    scoring: str = "probs"
    fps: float = 4.0
    max_frames: int = 64
    max_new_tokens: int = 512
    min_choice_mass: float = 1e-6
    authors_repo: str | None = None
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if not self.fps > 0 or self.max_frames < 1 or self.max_new_tokens < 1:
            raise ValueError(f"fps must be > 0, max_frames and max_new_tokens >= 1, got {self.fps}, {self.max_frames}, {self.max_new_tokens}")


def build(config: CosmosReasonConfig, key: str = "reward") -> CosmosReasonReward:
    """Build the reward a ``name: cosmos_reason`` section describes (loads the model, or connects to its server)."""
    prompt = resolve_prompt(config.authors_repo, config.model.name, key)
    backend = build_backend(config.model, key=f"{key}.model")
    return CosmosReasonReward(backend, prompt, fps=config.fps, max_frames=config.max_frames, scoring=config.scoring,
                              max_new_tokens=config.max_new_tokens, min_choice_mass=config.min_choice_mass, source_fps=config.source_fps,
                              batch_size=config.model.max_batch_size)


def judges(config: CosmosReasonConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: cosmos_reason`` section loads, for the memory plan: the video at ``fps`` (at
    most ``max_frames`` frames), the cookbook's prompt (about 1,600 characters) and ``max_new_tokens``."""
    from cac_align.rewards.judges import Frames, JudgeCall, judge_of, text_tokens

    frames = Frames(video.frames_at(config.fps, config.max_frames), video.height, video.width)
    call = JudgeCall((frames,), text_tokens("x" * 1600), config.max_new_tokens, config.model.max_batch_size)
    return [judge_of(config.model, f"{where}.model", call)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "cosmos_reason",
    "cac_align.rewards.cosmos_reason:CosmosReasonConfig",
    "cac_align.rewards.cosmos_reason:build",
    "Cosmos-Reason (NVIDIA) asked whether a video adheres to the physical laws, as its cookbook's video reward asks: "
    "the expected 1-5 rating after <answer>",
    judges="cac_align.rewards.cosmos_reason:judges",
)
