"""How a vision-language model is asked things: chat requests, completions, the Backend protocol.

A request is a chat in the Hugging Face message format, with videos as :class:`Video` values
(frames + fps + source timestamps) so every backend can state each frame's time, and still
images (CaC's single-frame warmup) as (H, W, 3) uint8 arrays:

    [{"role": "user", "content": [{"type": "video", "video": Video(...)},
                                  {"type": "text", "text": "Is this video normal?"}]}]

Two operations, batched over requests:

- ``generate``: sample (or greedily decode) an answer per request.
- ``choice_probs``: for each request, an assistant-side ``prefix`` (e.g. the generated JSON up to
  ``"status": "``) and candidate continuations (``["normal", "abnormal"]``), the probability of
  each *full* candidate, teacher-forcing every one of its tokens. Two words that share their
  first token are still told apart (CaC Eq. 7 needs P(normal) and P(abnormal)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from cac_align.video import Video

__all__ = [
    "Backend",
    "BackendBase",
    "BackendDown",
    "ChatRequest",
    "Completion",
    "MAX_NEW_TOKENS",
    "assistant",
    "generate_and_read",
    "image_part",
    "images_of",
    "jpeg_image_part",
    "model_frames",
    "text_part",
    "user",
    "video_part",
    "videos_of",
]

ChatRequest = list[dict[str, Any]]


class BackendDown(ConnectionError):
    """The model behind a backend is down (a served judge whose circuit breaker is open): the
    requests it did not answer fail with this, the ones it answered keep their answers. A reward
    marks such samples invalid with ``error_kind`` "down" (not "backend": nothing is wrong with
    them), and a job decides what a judge that is down means for it (``score`` stops and keeps
    its rows; ``flow-grpo`` skips the update of a step the judge missed whole)."""

# The generation budget wherever none is set, written once: every backend's default, CaC's
# answers (CaCOptions) and stage 3's rollouts of the same answers. The paper's two-turn answers
# (reasoning + JSON) fit in it.
MAX_NEW_TOKENS = 1024


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def video_part(video: Video) -> dict[str, Any]:
    if not isinstance(video, Video):
        raise TypeError(f"video parts hold a cac_align Video, got {type(video).__name__}")
    return {"type": "video", "video": video}


def image_part(image: np.ndarray, jpeg: bytes | None = None, png: bytes | None = None) -> dict[str, Any]:
    """A still image: (H, W, 3) uint8 RGB. Sent as an image (no timestamp), not a 1-frame video.

    ``jpeg``: the image's own JPEG file, when the pixels are what that file decodes to (see
    :func:`jpeg_image_part`). A server backend then sends these bytes as they are, instead of
    encoding the pixels again, so both backends show the model the same pixels. ``png``: the
    same for a lossless PNG file of the pixels (a reward whose authors read PNG frames).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise TypeError(f"image parts hold a uint8 (H, W, 3) array, got {getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    part: dict[str, Any] = {"type": "image", "image": image}
    if jpeg is not None:
        part["jpeg"] = bytes(jpeg)
    if png is not None:
        part["png"] = bytes(png)
    return part


def jpeg_image_part(image: np.ndarray, quality: int = 95, rounds: int = 1) -> dict[str, Any]:
    """An image part holding what a JPEG file of ``image`` decodes to, and that file.

    ``rounds`` > 1 re-encodes the decoded pixels that many times at ``quality`` (a client that
    reads a JPEG written by another tool and encodes it again, as UnifiedReward's does); the
    part's pixels and bytes are those of the last round.
    """
    import io

    from PIL import Image

    pixels = np.ascontiguousarray(image)
    data = b""
    for _ in range(rounds):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        pixels = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    return image_part(pixels, jpeg=data)


def user(*parts: str | Video | np.ndarray) -> dict[str, Any]:
    """A user message from text, Video and image ((H, W, 3) uint8 array) parts, in order."""
    content = []
    for part in parts:
        if isinstance(part, Video):
            content.append(video_part(part))
        elif isinstance(part, np.ndarray):
            content.append(image_part(part))
        else:
            content.append(text_part(part))
    return {"role": "user", "content": content}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [text_part(text)]}


def videos_of(request: ChatRequest) -> list[Video]:
    """The request's videos in the order they appear."""
    return [part["video"] for message in request for part in message["content"] if part.get("type") == "video"]


def images_of(request: ChatRequest) -> list[np.ndarray]:
    """The request's still images in the order they appear."""
    return [part["image"] for message in request for part in message["content"] if part.get("type") == "image"]


def model_frames(video: Video) -> tuple[np.ndarray, float, list[int]]:
    """A video as every backend hands it to a Qwen-VL processor: ``(frames, fps, frames_indices)``.

    The frames are the ones already sampled (the processor samples none); the vision tower
    patches frames in pairs, so an odd count repeats its last frame. Indices are on the clip's
    own fps grid, so ``index / fps`` = source seconds and the prompt's ``<t seconds>`` stamps are
    source times. The in-process backend (:func:`cac_align.vlm.hf.video_metadata`) and a vLLM
    server (:mod:`cac_align.integrations.vllm`) both receive exactly this.
    """
    frames, stamps = np.asarray(video.frames), np.asarray(video.timestamps)  # a lazy video's selected frames, decoded now
    if len(frames) % 2:
        frames = np.concatenate([frames, frames[-1:]])
        stamps = np.concatenate([stamps, stamps[-1:]])
    return frames, float(video.fps), np.round(stamps * video.fps).astype(int).tolist()


@dataclass
class Completion:
    """One generated answer: its text (special tokens removed), the generated token ids, and the
    number of prompt tokens the model read to answer (None where the backend cannot say)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None


@runtime_checkable
class Backend(Protocol):
    """What CaC inference and VLM rewards need from a model, in-process or behind a server.

    Every ability is part of the contract, so no caller looks for one: a backend with no cheaper
    way to ``generate_scored`` and ``choice_probs_steps`` inherits them from :class:`BackendBase`,
    built from the first two, and says it has no image processor of its own there.
    """

    def generate(
        self,
        requests: Sequence[ChatRequest],
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Completion]:
        """One completion per request, in order. ``temperature=0`` decodes greedily."""
        ...

    def choice_probs(
        self,
        requests: Sequence[ChatRequest],
        prefixes: Sequence[str],
        choices: Sequence[str],
    ) -> np.ndarray:
        """(N, C) float64: P(choice | request, assistant prefix), each choice teacher-forced in full.

        Not renormalized over the choices: callers do that (CaC Eq. 7).
        """
        ...

    def generate_scored(
        self,
        requests: Sequence[ChatRequest],
        choices: Sequence[str],
        prefix_of: Callable[[str], str | None],
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 0.0,
    ) -> tuple[list[Completion], np.ndarray]:
        """Generate, and read ``choices`` after ``prefix_of(answer text)`` with the generation:
        (completions, (N, C) probabilities). A row the backend did not read with the generation
        (or whose ``prefix_of`` is None) is NaN; the caller asks :meth:`choice_probs` where it
        needs that row."""
        ...

    def choice_probs_steps(
        self,
        requests: Sequence[ChatRequest],
        prefixes: Sequence[str],
        choices: Sequence[str],
        steps: int,
        extend: Callable[[int, int, np.ndarray], str],
    ) -> list[np.ndarray]:
        """``steps`` rounds of :meth:`choice_probs`, each round's prefixes grown by what
        ``extend(round, row, probs_row)`` returns (called after every round but the last).
        Returns one (N, C) array per round."""
        ...

    def to(self, device: Any) -> Any:
        """Move an in-process model to ``device`` (Best-of-N offloading); returns itself. A
        server backend has nothing to move."""
        ...

    def image_pixel_bounds(self) -> tuple[int, int] | None:
        """``(min_pixels, max_pixels)`` between which the model's own image processor resizes an
        image, for a caller that leaves the resizing to it; None where the processor is not ours to
        read (a served model's is the server's)."""
        ...


def generate_and_read(backend: Any, requests: Sequence[ChatRequest], choices: Sequence[str], prefix_of: Callable[[str], str | None],
                      max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[Completion], np.ndarray]:
    """Generate, and the probabilities of ``choices`` after ``prefix_of(answer text)`` for every row: read with
    the generation where the backend can (:meth:`Backend.generate_scored`: in-process), else asked again with
    :meth:`Backend.choice_probs` (a server). A row whose ``prefix_of`` is None (no answer tag) stays NaN.
    Rewards that read a verdict word after an answer tag (Skyra, Cosmos-Reason) call this."""
    completions, probs = backend.generate_scored(requests, list(choices), prefix_of, max_new_tokens=max_new_tokens)
    probs = np.array(probs, dtype=float)
    redo = [(i, prefix_of(c.text)) for i, c in enumerate(completions) if np.isnan(probs[i]).any()]
    redo = [(i, prefix) for i, prefix in redo if prefix is not None]
    if redo:
        probs[[i for i, _ in redo]] = backend.choice_probs([requests[i] for i, _ in redo], [p for _, p in redo], list(choices))
    return completions, probs


class BackendBase:
    """``generate_scored`` and ``choice_probs_steps`` from ``generate`` and ``choice_probs``, for a
    backend with no cheaper way (behind a server every call is a request of its own). The
    in-process backend overrides both to reuse the video's encoding."""

    def to(self, device: Any) -> Any:
        """Nothing to move (a server backend); the in-process backend overrides it."""
        return self

    def image_pixel_bounds(self) -> tuple[int, int] | None:
        """None: no image processor here (a server backend); the in-process backend overrides it."""
        return None

    def generate_scored(self, requests, choices, prefix_of, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0):  # noqa: ANN001, ANN201
        """The completions, and NaN for every row: nothing is read with the generation here."""
        completions = self.generate(requests, max_new_tokens=max_new_tokens, temperature=temperature)  # type: ignore[attr-defined]
        return completions, np.full((len(requests), len(choices)), np.nan)

    def choice_probs_steps(self, requests, prefixes, choices, steps, extend):  # noqa: ANN001, ANN201
        """One :meth:`choice_probs` call per round, the prefixes grown between rounds."""
        prefixes = list(prefixes)
        rounds = []
        for step in range(steps):
            probs = self.choice_probs(requests, prefixes, choices)  # type: ignore[attr-defined]
            rounds.append(probs)
            if step + 1 < steps:
                for row, values in enumerate(probs):
                    prefixes[row] += extend(step, row, values)
        return rounds
