"""What a reward section loads, said before anything loads: the judges the memory plan counts.

A generator trainer plans its GPUs' memory before any weight is read (:mod:`cac_align.plan`),
and the in-process judges of its reward sections are part of what a GPU holds. Each registered
reward says which models a section of its loads with a small function named at registration
(``register_reward(..., judges="module:function")``)::

    def judges(config, where, video) -> list[JudgeModel]

from its typed config (not from a built reward: nothing has loaded yet), the recipe key of the
section (``"reward"``, ``"eval_rewards.vs2"``) and the videos it will be shown
(:class:`VideoShape`). :func:`cac_align.rewards.registry.reward_judges` calls it. A reward that
loads no model returns ``[]``; one whose function is not known (a dotted-path reward, or a
registered one without ``judges``) is an :class:`UnknownJudge` there, which the plan names as not
counted.

A :class:`JudgeModel` says what the plan needs: the model's name (where its ``config.json`` is),
its dtype, whether it runs in this process (``backend: hf``; a served one holds nothing on the
trainer's GPU), its device, and the longest call it makes (:class:`JudgeCall`): the frames it
shows (:class:`Frames`, in pixels as the reward sends them), an estimate of its text tokens and
the tokens it may generate, with the rows one forward batches. The plan turns the frames into
visual tokens with the judge's own vision config, and the tokens into a KV cache with its text
config.

An **encoder** (``clap``, ``audiobox``, ``sync``: :func:`encoder_judge`) generates nothing and holds
no KV cache: the plan counts its weights from the header of its safetensors file(s) (each tensor's
shape and dtype; no tensor is read), wherever ``name`` is: a ``.safetensors`` file, a folder, or a
hub id already in the local Hugging Face cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["CHARS_PER_TOKEN", "Frames", "JudgeCall", "JudgeModel", "UnknownJudge", "VideoShape", "encoder_judge", "fit_pixels", "judge_of",
           "text_tokens"]

# English prompt text runs at about 4 characters a token in the Qwen tokenizers' BPE; 3 leaves a
# margin for numbers, JSON and the chat markup (an estimate, never a count).
CHARS_PER_TOKEN = 3


@dataclass(frozen=True)
class VideoShape:
    """The videos a judge will be shown: ``frames`` at ``fps``, ``height`` x ``width`` pixels."""

    frames: int
    height: int
    width: int
    fps: float

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def frames_at(self, fps: float, cap: int | None = None) -> int:
        """Frames sampled at ``fps`` (``cac_align.video.sample_times``' count), at most ``cap``."""
        count = max(1, math.ceil(self.duration_s * fps - 1e-9))
        return count if cap is None else min(count, cap)


@dataclass(frozen=True)
class Frames:
    """Frames shown to a judge in one request.

    Attributes:
        count: how many.
        height, width: their size in pixels as the reward sends them (the model's processor may
            still round them to its grid).
        images: sent as separate images (each image its own temporal patch group), not as one video.
    """

    count: int
    height: int
    width: int
    images: bool = False


@dataclass(frozen=True)
class JudgeCall:
    """The longest request a judge's call holds in its KV cache (CaC: its turn 2, which carries turn 1).

    Attributes:
        frames: the visual parts of the request.
        text_tokens: its text tokens (an estimate: prompt characters / :data:`CHARS_PER_TOKEN`,
            earlier answers at their full budget).
        new_tokens: tokens it may generate (the budget).
        rows: requests batched in one forward (the model's ``max_batch_size``).
    """

    frames: tuple[Frames, ...]
    text_tokens: int
    new_tokens: int
    rows: int


@dataclass(frozen=True)
class JudgeModel:
    """A model a reward section loads.

    Attributes:
        where: the recipe key of its model section (``"reward.cac.model"``).
        name: hub id, local folder, built-in name or ``tiny-random:...`` (with ``backend: openai``,
            the served name).
        dtype: its compute dtype, resolved.
        in_process: loaded in this process (``backend: hf``); False: served elsewhere.
        device: its ``device`` setting ("auto": this process's GPU).
        call: its longest call.
        cache: the hf backend's KV-cache mode ("auto", "dynamic", "static").
        length_multiple: the static cache's length granularity.
        tiny: builds the tiny random model a ``tiny-random:...`` name stands for (counted as built);
            None for a real checkpoint, counted from its ``config.json``.
        config_name: where its architecture's ``config.json`` is, when not at ``name`` (VideoReward:
            its base model).
        encoder: an encoder (no generation, no KV cache) whose weights are counted from the
            safetensors header(s) at ``name`` (a ``.safetensors`` file, a folder or a cached hub id),
            each floating tensor in ``dtype`` (the dtype it is held in), not from a ``config.json``.
    """

    where: str
    name: str
    dtype: str
    in_process: bool
    device: str
    call: JudgeCall
    cache: str = "auto"
    length_multiple: int = 256
    tiny: Callable[[], Any] | None = None
    config_name: str | None = None
    encoder: bool = False

    @property
    def on_gpu(self) -> bool:
        """Whether its weights sit on the trainer's GPU: in-process and not on the CPU."""
        return self.in_process and not str(self.device).startswith("cpu")


@dataclass(frozen=True)
class UnknownJudge:
    """A reward section whose models cannot be said before it loads (a dotted-path reward): not counted."""

    where: str
    reason: str


def fit_pixels(height: int, width: int, max_pixels: int | None) -> tuple[int, int]:
    """``height x width`` downscaled (aspect kept) to at most ``max_pixels`` pixels; unchanged
    without a cap or when it fits."""
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def text_tokens(*texts: str) -> int:
    """The estimated tokens of ``texts`` (characters / :data:`CHARS_PER_TOKEN`, rounded up)."""
    return sum(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts)


def judge_of(model: Any, where: str, call: JudgeCall) -> JudgeModel:
    """The :class:`JudgeModel` of a reward's ``model`` section (a
    :class:`~cac_align.vlm.config.ModelConfig`) at recipe key ``where``, making ``call``."""
    from cac_align.vlm.config import TINY_PREFIX, build_tiny_vlm, model_dtype

    tiny = None
    if model.name.startswith(TINY_PREFIX) and model.backend == "hf":
        name = model.name

        def tiny() -> Any:  # the model the hf backend runs for this name (cac_align.vlm.config._build_backend)
            return build_tiny_vlm(name, f"{where}.name").model

    return JudgeModel(where=where, name=model.name, dtype=model_dtype(model), in_process=model.backend == "hf", device=model.device, call=call,
                      cache=model.cache, length_multiple=model.length_multiple, tiny=tiny)


def encoder_judge(where: str, name: str, dtype: str, device: str, rows: int) -> JudgeModel:
    """The :class:`JudgeModel` of an encoder a reward loads in this process (``clap``'s CLAP,
    ``audiobox``'s WavLM, ``sync``'s Synchformer): its weights at ``name`` (a ``.safetensors`` file, a
    folder or a hub id) held in ``dtype`` on ``device``, ``rows`` samples a forward; no KV cache."""
    return JudgeModel(where=where, name=name, dtype=dtype, in_process=True, device=device, call=JudgeCall((), 0, 0, rows), encoder=True)
