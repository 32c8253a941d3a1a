"""The reward contract and the input conventions every reward shares.

One contract (shared/CONVENTIONS.md, "One reward contract")::

    reward(videos, prompts, metadata=None) -> RewardOutput(name, scores, valid, details, info)

and ``reward.components``: the parts a combined reward reports per sample (``()`` for one part).

- ``videos``: a list whose items are anything :func:`~cac_align.video.load_video` reads (paths,
  :class:`~cac_align.video.Video`, uint8 ``(T, H, W, 3)`` arrays, float ``(T, C, H, W)``
  tensors in [0, 1]), or one diffusers batch ``(B, F, C, H, W)`` float in [0, 1].
- ``prompts``: the generating prompt per video (same length as the videos).
- ``metadata``: optional; either one mapping for the whole call or one mapping per video
  (Flow-GRPO passes one per prompt). Keys read here: ``fps`` (frame rate of array input; files
  carry their own) and ``group`` (which videos share a prompt group; defaults to the prompt).
- ``scores[i]`` is a float for input ``i`` in input order; ``valid[i]`` says whether it was really
  scored. An invalid score is NaN (never a silent 0) and ``details[i]["error"]`` says why.

Rewards are built from recipe sections by :func:`cac_align.rewards.registry.build_reward`
(the one table of reward names every job and integration reads)::

    reward:
      name: unified_reward        # a registered short name, or "package.module:factory"
      model: {name: CodeGoat24/UnifiedReward-qwen-7b}
      scoring: probs

Each registered reward has a config dataclass, so a misspelled argument is an error naming the
key. Every reward here takes a lock around its call, so one object can be shared by a thread
pool (Flow-GRPO scores in a background thread while the next group samples).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from cac_align.video import Video, VideoError, load_video

__all__ = [
    "RewardBase",
    "BACKEND_ERRORS",
    "BackendFailure",
    "BatchReward",
    "ErrorKind",
    "MODALITIES",
    "all_failed_in_backend",
    "backend_error_kind",
    "Reward",
    "RewardError",
    "RewardOutput",
    "check_call",
    "check_prompts",
    "failure_summary",
    "group_keys",
    "load_inputs",
    "score_in_chunks",
]

# Failures of a model call that concern the samples in it, not the code: a server that stopped
# answering, a timeout, a GPU out of memory. Rewards retry such a batch one sample at a time and
# mark the samples that still fail invalid, with the error. Anything else is a bug and raises.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
try:  # torch is a dependency, but keep this module importable without initialising CUDA
    import torch

    BACKEND_ERRORS = BACKEND_ERRORS + (torch.OutOfMemoryError,)
except (ImportError, AttributeError):  # pragma: no cover - torch without OutOfMemoryError
    pass


class RewardError(RuntimeError):
    """A reward call that must not return scores (e.g. ``invalid: fail`` met an invalid sample)."""


def failure_summary(errors: Mapping[int, str], limit: int = 3, label: str = "sample") -> str:
    """Why samples failed, in one line for an error message or a log: the first ``limit``
    reasons and a count of the rest.

    >>> failure_summary({1: "non-finite score nan", 4: "no JSON", 6: "no JSON", 7: "x"})
    '4 failed: sample 1: non-finite score nan; sample 4: no JSON; sample 6: no JSON; and 1 more'
    """
    shown = "; ".join(f"{label} {i}: {why}" for i, why in list(errors.items())[:limit])
    rest = len(errors) - min(limit, len(errors))
    return f"{len(errors)} failed: {shown}" + (f"; and {rest} more" if rest else "")


# What a reward judges (the Reward contract's ``modality``): the frames, the soundtrack, or how the two
# fit (a synchrony reward). Trainers route each component's advantage to the latents of what it judges.
MODALITIES = ("video", "audio", "both")


class ErrorKind:
    """Why a sample is invalid: the ``error_kind`` of its details, as named constants (plain
    strings, so details stay JSON and compare equal to the words)."""

    VIDEO = "video"  # could not be decoded
    PROMPT = "prompt"  # the generating prompt is missing
    BACKEND = "backend"  # the model call failed (a server, a crash inside the reward's work)
    DOWN = "down"  # the served model is down (its circuit breaker is open): not asked, nothing learned of the sample
    PARSE = "parse"  # the answer could not be used
    SCORE = "score"  # a probability or score that is zero-mass or non-finite
    AUDIO = "audio"  # the soundtrack a reward needs is missing or unusable (silent, NaN, wrong rate, too short)
    OTHER = "other"  # a reward that did not say

    ALL = (VIDEO, PROMPT, BACKEND, DOWN, PARSE, SCORE, AUDIO, OTHER)


def backend_error_kind(exc: BaseException) -> str:
    """The ``error_kind`` of a sample whose model call failed with ``exc``: "down" when the model
    is down (:class:`~cac_align.vlm.backend.BackendDown`: a served judge whose breaker is open),
    else "backend"."""
    from cac_align.vlm.backend import BackendDown

    return ErrorKind.DOWN if isinstance(exc, BackendDown) else ErrorKind.BACKEND


class BackendFailure(RewardError):
    """A job whose samples all failed for a backend reason (a server that died, a model call that
    kept failing): it ends with an error, not with a result of nothing but invalid rows."""


def all_failed_in_backend(details: Sequence[Mapping]) -> bool:
    """Whether every sample failed, and every failure was the backend's (``error_kind``
    "backend" or "down"), so that nothing about the videos themselves was learned. False when
    empty."""
    return bool(details) and all(d.get("error") and d.get("error_kind") in (ErrorKind.BACKEND, ErrorKind.DOWN) for d in details)


@dataclass
class RewardOutput:
    """What a reward returns for a batch.

    Attributes:
        name: the reward's name ("cac", "unified_reward", "ur_cac", ...).
        scores: (B,) float64, NaN where ``valid`` is False.
        valid: (B,) bool.
        details: one dict per sample (sub-scores, raw text, evidence). An invalid sample has
            "error" (why) and "error_kind", one of :class:`ErrorKind`: "video" (could not be
            decoded), "prompt" (missing), "backend" (the model call failed), "down" (the served
            model is down: its requests were not answered), "parse" (the answer could not be
            used) or "score" (a probability or score that is zero-mass or non-finite).
        info: batch-level facts (e.g. invalid counts per component).

    A score that is NaN or infinite while marked valid is turned invalid here, with an error in
    its details: a non-finite number is never passed on as a reward.
    """

    name: str
    scores: np.ndarray
    valid: np.ndarray
    details: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1).copy()
        self.valid = np.asarray(self.valid, dtype=bool).reshape(-1).copy()
        n = len(self.scores)
        if not self.details:
            self.details = [{} for _ in range(n)]
        if len(self.valid) != n or len(self.details) != n:
            raise ValueError(
                f"reward {self.name!r}: {n} scores, {len(self.valid)} valid flags and {len(self.details)} details differ in length"
            )
        for i in np.flatnonzero(self.valid & ~np.isfinite(self.scores)):
            self.details[i] = {**self.details[i], "error": f"non-finite score {float(self.scores[i])}", "error_kind": ErrorKind.SCORE}
            self.valid[i] = False
        self.scores[~self.valid] = np.nan

    def __len__(self) -> int:
        return len(self.scores)

    def failure_counts(self) -> dict[str, int]:
        """How many samples failed, by ``error_kind`` (e.g. ``{"parse": 2, "backend": 1}``)."""
        counts: dict[str, int] = {}
        for i in np.flatnonzero(~self.valid):
            kind = str(self.details[i].get("error_kind", ErrorKind.OTHER))
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    @property
    def errors(self) -> dict[int, str]:
        """Index -> reason, for every invalid sample."""
        return {int(i): str(self.details[i].get("error", "invalid")) for i in np.flatnonzero(~self.valid)}


@runtime_checkable
class Reward(Protocol):
    """Anything that scores videos by the contract above; the whole of what callers ask of a
    reward (no caller looks for an ability with ``getattr``). :class:`RewardBase` gives the
    defaults of a stateless reward; subclass it and write ``name`` and ``__call__``.

    Attributes:
        name: the reward's name (keys of combined outputs, metrics and logs).
        score_range: ``(low, high)``, the scale of its raw scores (CaC: (0, 1); UnifiedReward
            v1: (1, 4)), or None if unknown; the Flow-GRPO drop-in warns when rewards on
            different scales are summed.
        components: the names of the rewards it combines (a combined reward: ``("unified_reward",
            "cac")``), each of whose per-sample raw and normalized scores its details carry under
            ``"components"``; ``()`` for a reward of one part. Fixed when the reward is built: a
            trainer logs (and, on many processes, gathers) one metric per name, read here and never
            from one batch's details, so every process makes the same gathers whatever its batches
            did (a failed batch has no details to read).
        modality: what it judges, one of :data:`MODALITIES`: "video" (the frames; every reward
            before sound), "audio" (the soundtrack: CLAP, AudioBox) or "both" (how they fit: a
            synchrony reward; a combined reward whose components judge both). A sample a reward of
            "audio" or "both" scores must carry its soundtrack (:attr:`cac_align.video.Video.audio`).
        reads_prompt: whether its score depends on the generating prompt (CLAP: yes; AudioBox's
            aesthetics and a synchrony reward: no). A trainer refuses a text-to-sound run whose
            audio components are all prompt-blind, unless the recipe allows it.
        needs_prompt: whether it cannot score a video without its prompt (UnifiedReward, CLAP: a
            sample without one is invalid); CaC reads a prompt where there is one and judges a video
            without (false). ``score`` refuses a manifest whose lines give some videos a prompt and
            not others for a reward that needs it.
        modalities: the modality of each component by name (a combined reward's); ``{name:
            modality}`` for a reward of one part.
    """

    name: str
    score_range: tuple[float, float] | None
    components: tuple[str, ...]
    modality: str
    reads_prompt: bool
    needs_prompt: bool
    modalities: Mapping[str, str]

    def __call__(self, videos: Any, prompts: Sequence[str | None], metadata: Any = None) -> RewardOutput: ...

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the reward (running normalizer statistics); ``{}`` if none."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run continues its statistics)."""
        ...

    def to(self, device: Any) -> Any:
        """Move its in-process models to ``device`` (Best-of-N offloading); returns itself.
        A reward asked through a server has nothing to move."""
        ...


class RewardBase:
    """Defaults of the :class:`Reward` protocol for a stateless reward of unknown scale. A
    subclass writes ``__call__`` (and ``name``); one that does not fails the contract check of
    :func:`build_reward`, naming ``__call__``."""

    name: str = "reward"
    score_range: tuple[float, float] | None = None
    components: tuple[str, ...] = ()
    modality: str = "video"
    reads_prompt: bool = True
    needs_prompt: bool = True

    @property
    def modalities(self) -> Mapping[str, str]:
        return {self.name: self.modality}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def to(self, device: Any) -> Any:
        return self


class BatchReward(RewardBase):
    """A reward that writes only how it scores a batch; the base does the rest of the contract.

    A subclass sets ``name``, ``score_range``, ``source_fps`` (frame rate of array input),
    ``batch_size`` (requests per :meth:`score_batch` call) and ``needs_prompt``, and writes:

    - :meth:`request` (optional): what one decoded video and its prompt become (default: the
      pair); it runs outside the lock;
    - :meth:`input_problem` (optional): why a decoded video cannot be scored at all (a missing or
      unusable soundtrack), which makes it invalid before it is asked;
    - :meth:`score_batch`: one detail dict per request, in order; a scored one has ``"score"``
      (taken out of the details by the base) and no ``"error"`` (or ``"error": None``), an
      unusable one ``"error"`` and ``"error_kind"`` (:class:`ErrorKind`).

    The base decodes the batch (a video that cannot be read is invalid, ``video``), checks the
    prompts (a missing one is invalid, ``prompt``, when ``needs_prompt``), holds one lock around the
    scoring (one object can be shared by a thread pool), chunks requests by ``batch_size``, retries
    a chunk that hit a backend error one request at a time (only the requests that still fail are
    invalid, ``backend``), and returns everything in input order. :meth:`invalid_detail` shapes the
    details of those three failures (CaC keeps its result's fields in them).
    """

    source_fps: float | None = 16.0
    batch_size: int = 8
    needs_prompt: bool = True

    @property
    def _lock(self) -> threading.Lock:
        lock = self.__dict__.get("_batch_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_batch_lock", threading.Lock())
        return lock

    def request(self, video: Video, prompt: str | None) -> Any:
        return (video, prompt)

    def score_batch(self, requests: list[Any]) -> list[dict]:
        raise NotImplementedError(f"{type(self).__name__} must define score_batch(requests) -> one detail dict per request")

    def input_problem(self, video: Video) -> tuple[str, str] | None:
        """Why this reward cannot score ``video`` at all, as ``(error, error_kind)``, or None: checked
        before anything is asked (an audio reward's soundtrack checks: :mod:`cac_align.rewards.audio`)."""
        return None

    def invalid_detail(self, error: str, kind: str) -> dict:
        return {"error": error, "error_kind": kind}

    def __call__(self, videos: Any, prompts: Sequence[str | None] | None = None, metadata: Any = None) -> RewardOutput:
        loaded = load_inputs(videos, metadata, self.source_fps, audio=self.modality != "video")
        prompts = check_prompts(len(loaded), prompts)
        details: list[dict] = [{} for _ in loaded]
        todo: list[tuple[int, Any]] = []
        for i, (video, prompt) in enumerate(zip(loaded, prompts)):
            if not isinstance(video, Video):
                details[i] = self.invalid_detail(str(video), ErrorKind.VIDEO)
            elif prompt is None and self.needs_prompt:
                details[i] = self.invalid_detail(f"{self.name} needs the generating prompt of each video", ErrorKind.PROMPT)
            elif (problem := self.input_problem(video)) is not None:  # e.g. a soundtrack it cannot hear
                details[i] = self.invalid_detail(*problem)
            else:
                todo.append((i, self.request(video, prompt)))
        with self._lock:
            answers = score_in_chunks(
                lambda chunk: self._score_chunk([request for _, request in chunk]),
                todo,
                self.batch_size,
                on_error=lambda item, exc: self.invalid_detail(f"backend failed: {exc}", backend_error_kind(exc)),
            )
        scores = np.full(len(loaded), np.nan)
        for (i, _), answer in zip(todo, answers):
            score = answer.pop("score", None)
            details[i] = answer
            if answer.get("error") is None:
                if score is None:
                    raise TypeError(f"{type(self).__name__}.score_batch gave a detail with neither 'score' nor 'error'")
                scores[i] = float(score)
        valid = np.array([d.get("error") is None for d in details], dtype=bool)
        return RewardOutput(self.name, scores, valid, details)

    def _score_chunk(self, requests: list[Any]) -> list[dict]:
        answers = list(self.score_batch(requests))
        if len(answers) != len(requests):
            raise TypeError(f"{type(self).__name__}.score_batch gave {len(answers)} details for {len(requests)} requests")
        return [dict(a) for a in answers]


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def _metadata_rows(metadata: Any, n: int) -> list[Mapping]:
    if metadata is None:
        return [{} for _ in range(n)]
    if isinstance(metadata, Mapping):
        return [metadata] * n
    rows = list(metadata)
    if len(rows) != n:
        raise ValueError(f"got {n} videos but {len(rows)} metadata entries")
    for row in rows:
        if row is not None and not isinstance(row, Mapping):
            raise ValueError(f"metadata entries must be mappings (or None), got {type(row).__name__}")
    return [row or {} for row in rows]


def _video_items(videos: Any) -> list[Any]:
    """The batch as one item per video (no decoding)."""
    if isinstance(videos, (str, Video)) or (hasattr(videos, "ndim") and videos.ndim == 4):
        raise ValueError("pass a list of videos (or a (B, F, C, H, W) batch), not a single video")
    return [videos[b] for b in range(videos.shape[0])] if hasattr(videos, "ndim") else list(videos)


def check_call(videos: Any, prompts: Sequence[str | None] | None = None, metadata: Any = None) -> int:
    """Check a reward call's own arguments, before any video is decoded or any model runs.

    A wrong call (a single video instead of a list, prompts or metadata of another length,
    metadata entries that are not mappings) raises ``ValueError`` here. Whatever goes wrong after
    this point happens inside a reward's work (decoding, a model, a server) and concerns the
    samples, not the caller: the Flow-GRPO drop-in marks such a call's samples invalid instead
    of raising into its trainer (:mod:`cac_align.integrations.flow_grpo`).

    Returns:
        The number of videos in the call.
    """
    n = len(_video_items(videos))
    check_prompts(n, prompts)
    _metadata_rows(metadata, n)
    return n


def load_inputs(videos: Any, metadata: Any = None, source_fps: float | None = None, audio: bool = False) -> list[Video | VideoError]:
    """Decode a batch into Videos, keeping per-sample failures as :class:`VideoError` values.

    Args:
        videos: a list of inputs :func:`load_video` reads, or one (B, F, C, H, W) batch.
        metadata: None, one mapping, or one mapping per video; an ``fps`` key there is the
            frame rate of array input, taking precedence over ``source_fps``; ``audio`` and
            ``sample_rate`` keys there are the video's soundtrack (:attr:`Video.audio`), which a
            trainer passes with the frames it sampled.
        source_fps: the default frame rate of array input (Wan-2.1: 16).
        audio: a file's soundtrack is decoded too (a reward that hears: its ``modality`` is not
            "video"); one that cannot be decoded is said in :attr:`Video.audio_problem`.

    Returns:
        One Video or VideoError per input, in input order. A corrupt or missing file fails only
        its own sample.
    """
    items = _video_items(videos)
    rows = _metadata_rows(metadata, len(items))
    loaded: list[Video | VideoError] = []
    for item, row in zip(items, rows):
        if isinstance(item, VideoError):  # already failed upstream (e.g. in a combined reward)
            loaded.append(item)
            continue
        fps = row.get("fps", source_fps)
        try:
            video = load_video(item, source_fps=fps, lazy=True, audio=audio)  # a file: only the frames a reward reads are decoded
            if not isinstance(video, Video):  # a 5-d batch nested inside the list
                raise VideoError(f"item {len(loaded)} is a batch of {len(video)} videos; pass videos one per item")
            if row.get("audio") is not None:
                try:
                    video = dataclasses.replace(video, audio=row["audio"], sample_rate=row.get("sample_rate"))
                except VideoError as exc:  # a track of another shape, or no rate: the frames stay whole for a reward that only sees
                    video = dataclasses.replace(video, audio=None, sample_rate=None, audio_problem=str(exc))
            loaded.append(video)
        except VideoError as exc:
            loaded.append(exc)
    return loaded


def check_prompts(n: int, prompts: Sequence[str | None] | None) -> list[str | None]:
    """The prompts as a list of length ``n``; a length mismatch is an error, not a silent zip."""
    if prompts is None:
        return [None] * n
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list with one prompt per video, got a single string")
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {n} videos but {len(prompts)} prompts")
    for i, prompt in enumerate(prompts):
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt {i} must be a string (or None), got {type(prompt).__name__} {prompt!r}")
    return prompts


def group_keys(prompts: Sequence[str | None], metadata: Any = None) -> list[Any]:
    """Which group each sample belongs to: metadata ``group`` if given, else its prompt text.

    Best-of-N and Flow-GRPO draw several videos per prompt; normalizers and the ``group_mean``
    invalid policy work within these groups. Samples with no prompt and no group form one
    group each.
    """
    rows = _metadata_rows(metadata, len(prompts))
    keys: list[Any] = []
    for i, (prompt, row) in enumerate(zip(prompts, rows)):
        if "group" in row:
            keys.append(("group", row["group"]))
        elif prompt is not None:
            keys.append(("prompt", prompt))
        else:
            keys.append(("sample", i))
    return keys


def score_in_chunks(
    score: Callable[[list[Any]], list[Any]],
    items: list[Any],
    batch_size: int,
    on_error: Callable[[Any, BaseException], Any],
) -> list[Any]:
    """Run ``score`` over ``items`` in chunks; a chunk that hits a backend error is retried one
    item at a time, and items that still fail become ``on_error(item, exc)``.

    This is how "a server that stops answering mid-batch" marks just the samples it could not
    answer invalid, and says which, while every sample it did answer keeps its score: a served
    backend remembers its answers (:class:`~cac_align.vlm.openai.OpenAIBackend`), so asking again
    for an answered item sends nothing, and a server that is down fails the others at once.
    """
    out: list[Any] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        try:
            out.extend(score(chunk))
            continue
        except BACKEND_ERRORS as exc:
            if len(chunk) == 1:
                out.append(on_error(chunk[0], exc))
                continue
        for item in chunk:
            try:
                out.extend(score([item]))
            except BACKEND_ERRORS as exc:
                out.append(on_error(item, exc))
    return out
