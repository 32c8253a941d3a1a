"""CaC as a :class:`~cac_align.rewards.base.Reward`: P(normal) / (P(normal) + P(abnormal)).

The two-turn protocol itself lives in :mod:`cac_align.cac.infer`; this module adapts it to the
reward contract: any video input, scores in input order, failures per sample. A score is in
[0, 1], higher meaning "more likely free of anomalies" (CaC Eq. 7).

Recipe section::

    reward:
      name: cac
      model: {name: Qwen/Qwen3-VL-8B-Instruct}   # or your CaC checkpoint; backend: openai for vLLM
      options: {mode: two_turn}                # CaCOptions; unset: the model folder's cac_align.json, else the paper's
      source_fps: 16.0                         # frame rate of tensor input (Wan-2.1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cac_align.cac.infer import CaCOptions, CaCResult, CaCScorer
from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video
from cac_align.vlm.backend import Backend
from cac_align.vlm.config import ModelConfig, build_backend

__all__ = ["CaCReward", "CaCRewardConfig", "build", "judges"]


@dataclass
class CaCRewardConfig:
    """Recipe section of ``name: cac``.

    Attributes:
        model: the CaC VLM (a trained CaC checkpoint; the Qwen3-VL-8B base by default).
        options: the protocol (fps of both turns, frame caps, token budget, fallback).
        source_fps: frame rate of array/tensor input without an ``fps`` in metadata
            (Wan-2.1 writes 16 fps); files carry their own.

    The batch is the model's: ``model.max_batch_size`` videos are scored together (turn 1 of all
    of them as one forward pass).
    """

    MOVED_KEYS: ClassVar[dict[str, tuple[str, str]]] = {"batch_size": ("model.max_batch_size", "the videos scored together are the model's batch")}

    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="Qwen/Qwen3-VL-8B-Instruct"))
    options: CaCOptions = field(default_factory=CaCOptions)
    source_fps: float | None = 16.0

    def with_model_settings(self) -> "CaCRewardConfig":
        """This section with the options left to the model filled in from its folder's
        ``cac_align.json`` (:meth:`~cac_align.cac.infer.CaCOptions.for_model`)."""
        import dataclasses

        from cac_align.models import model_settings

        return dataclasses.replace(self, options=self.options.for_model(model_settings(self.model.name)), model=self.model.with_model_settings())


class CaCReward(BatchReward):
    """The CaC reward over a :class:`Backend` (in-process or an OpenAI-compatible server).

    Args:
        backend: the VLM.
        options: CaC protocol options (defaults: the paper's 4 fps scan / 8 fps clip).
        source_fps: default frame rate of array/tensor inputs.
        batch_size: videos per scorer call (from a recipe: the model's ``max_batch_size``).
        name: the name outputs carry.

    ``details[i]`` is the :class:`~cac_align.cac.infer.CaCResult` as a dict (status, window,
    boxes, both turns' text and probabilities), plus ``error`` and ``error_kind`` when invalid
    ("video", "backend", or "parse" for an answer that could not be used). A prompt is optional.
    """

    needs_prompt = False

    def __init__(
        self,
        backend: Backend,
        options: CaCOptions | None = None,
        source_fps: float | None = 16.0,
        batch_size: int = 8,
        name: str = "cac",
    ):
        self.scorer = CaCScorer(backend, options)
        self.source_fps = source_fps
        self.batch_size = batch_size
        self.name = name
        self.score_range = (0.0, 1.0)  # P(normal) / (P(normal) + P(abnormal)), CaC Eq. 7

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        results = self.scorer.score([video for video, _ in requests], [prompt for _, prompt in requests])
        return [
            {**r.to_dict(), "score": r.reward} if r.valid else {**r.to_dict(), "error": r.error or "not scored", "error_kind": ErrorKind.PARSE}
            for r in results
        ]

    def invalid_detail(self, error: str, kind: str) -> dict:
        return {**CaCResult(error=error).to_dict(), "error_kind": kind}

    def to(self, device: Any) -> "CaCReward":
        """Move the in-process model, if any (Best-of-N offloading)."""
        self.scorer.backend.to(device)
        return self


def build(config: CaCRewardConfig, key: str = "reward") -> CaCReward:
    """Build the reward a ``name: cac`` section describes (loads the model).

    Options left to the model (:class:`~cac_align.cac.infer.CaCOptions`: frame rates and caps,
    pixel grid, token budget, wording) take the model folder's ``cac_align.json`` settings (the
    built-in ``cac-demo`` has one), so a model is asked the way it was trained, through a recipe,
    the Python API or an integration alike. A served model (``backend: openai``) is read the same
    way when its served name is a built-in name or a folder this process sees (``cac-demo``
    served as ``cac-demo``); otherwise set the options in the section."""
    from cac_align.config import RecipeError

    try:
        options = config.with_model_settings().options
    except ValueError as exc:
        raise RecipeError(f"{key}.model.name={config.model.name!r}: {exc}") from None
    backend = build_backend(config.model, key=f"{key}.model")
    return CaCReward(backend, options, source_fps=config.source_fps, batch_size=config.model.max_batch_size)


# A caption's share of a prompt (the generating prompt, shown to the judge): an estimate.
_CAPTION_CHARS = 600


def judges(config: CaCRewardConfig, where: str, video: Any) -> list[Any]:
    """The one model a ``name: cac`` section loads, for the memory plan (:mod:`cac_align.rewards.judges`).

    Its longest call is turn 2 (``mode: two_turn``), which holds turn 1 in its context: the whole
    video at ``scan_fps`` (at most ``max_frames_turn1`` frames), turn 1's answer at its full
    ``max_new_tokens``, then the clip at ``clip_fps`` (at most ``max_frames_turn2``; the whole video
    when turn 1 gives no window, the ``whole_video`` fallback) and turn 2's answer. Frames at
    ``max_pixels`` when set, else at the video's size. One turn otherwise."""
    from cac_align.cac.prompts import turn1_prompt, turn2_prompt
    from cac_align.rewards.judges import Frames, JudgeCall, fit_pixels, judge_of, text_tokens

    options = config.with_model_settings().options
    height, width = fit_pixels(video.height, video.width, options.max_pixels)
    scan = video.frames_at(options.scan_fps, options.max_frames_turn1)
    style = options.prompt_style
    frames = [Frames(scan, height, width)]
    text = text_tokens(turn1_prompt(video.duration_s, options.scan_fps, scan, "x" * _CAPTION_CHARS, style=style))
    new = options.max_new_tokens if options.mode != "no_cot" else 1
    if options.mode == "two_turn":
        clip = video.frames_at(options.clip_fps, options.max_frames_turn2)
        frames.append(Frames(clip, height, width))
        text += new + text_tokens(turn2_prompt((0.0, video.duration_s), options.clip_fps, clip, style=style))
    call = JudgeCall(tuple(frames), text, new, config.model.max_batch_size)
    return [judge_of(config.model, f"{where}.model", call)]


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward("cac", "cac_align.rewards.cac:CaCRewardConfig", "cac_align.rewards.cac:build", "CaC two-turn anomaly reward (CaC Eq. 7)",
                judges="cac_align.rewards.cac:judges")
