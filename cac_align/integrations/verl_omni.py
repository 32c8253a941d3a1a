"""Our rewards as verl-omni reward functions (github.com/verl-project/verl-omni), by path and name.

How verl-omni scores a rollout (read at verl-omni a1139ba, whose reward loop is verl's; verl 0.9.1
from PyPI has the same code: ``multi`` = ``verl_omni/reward_loop/reward_manager/multi.py``,
``loop`` = ``verl/experimental/reward_loop/reward_loop.py``):

- ``reward.reward_manager.name=MultiVisualRewardManager`` reads ``reward.reward_functions``: one
  entry per reward, ``path`` (``pkg://a.b`` imports a module; a file path executes that file)
  and ``name`` (the function in it), ``weight`` (1.0), ``required`` (false); every other key of
  the entry is passed to the function as a keyword argument (multi:65-106), all of them when the
  function takes ``**kwargs``, else only those it names (multi:35-46).
- ``reward.num_workers`` reward workers (Ray actors, default 8) each get a contiguous chunk of the
  batch (loop:343-358) and call the manager once per sample, all samples of the chunk
  concurrently (loop:138-143); with streaming rewards each sample goes to a random worker as its
  rollout ends. A call passes ``data_source``, ``solution_image`` (the sample's frames: a CPU
  uint8 tensor in [0, 255]; its layout is the pipeline's, (T, C, H, W) for Wan, and verl-omni's
  own scorers also meet (C, T, H, W)), ``ground_truth`` (the prompt) and ``extra_info``
  (multi:114-148). An async function is awaited on the worker's event loop (multi:166-170).
- The sample's reward is ``sum(weight * score)`` over the entries, not normalized (multi:150-190);
  keys of a returned dict other than ``score`` become metrics ``reward/<entry>/<key>``. A
  function that raises scores **0.0** and is trained on, unless the entry has ``required: true``,
  which stops the run (multi:181-185). The colocated path builds each metric from every sample
  with the keys of sample 0 (loop:365-369): a key missing from a later sample is a KeyError for
  the whole batch. A NaN reward makes every advantage of the step NaN (group mean, batch std), and
  their optimizer then skips the step (non-finite gradient norm).

What this module gives:

What the newest verl-omni adds (read in the code index after PR #524, which the issue names
@20e8232; ``multi`` is then ``reward_loop/reward_manager/multi.py``, whose ``MultiRewardManager``
holds the loop and ``MultiVisualRewardManager`` the visual arguments):

- an entry's keys ``path``, ``name``, ``weight``, ``required``, ``model``, ``independent`` and
  ``use_rollout_sampling_params`` are theirs and never reach the function; every other key does;
- with verl's reward model on, every call also carries ``reward_router_address``,
  ``reward_model_tokenizer``, ``model_name`` and ``sampling_params``; an entry bound to a named
  model of ``reward.models`` (PR #524, first ``reward.deployments``) gets that model's router
  arguments or ``reward_model`` (its in-worker executor). Ours takes ``**kwargs`` and ignores
  them: the judge is the one ``reward`` names;
- ``extra_info`` carries ``media_kind``, ``audio`` and ``audio_sample_rate`` for generated media
  (``media.py``, ``_reward_extra_info``); ``reward.multi_reward_concurrency`` (1) runs up to that
  many ``independent: true`` entries of one sample at once, and a raise in any of them is handled
  as above (``required`` stops the run, else 0.0 and ``reward/<entry>/errors`` = 1);
- optional accelerator reward workers (``accelerator_reward_workers.py``) are Ray actors bound to
  a bundle of the actor's GPU pool with a fraction ``1 / max_colocate_count`` of one GPU: there
  our ``device: auto`` finds that GPU and loads the judge beside the actor.

- :func:`compute_score`, an async function for an entry's ``name``. Its keys, beside theirs:
  ``reward`` (a name of ours: ``ur_cac`` by default, ``cac``, ``unified_reward``, any registered
  reward or a name your sections file adds), ``sections`` (a YAML file of reward sections; else
  ``$CAC_ALIGN_REWARDS``; else the paper's checkpoints), ``invalid`` (``fail`` or
  ``group_mean``), ``max_invalid_fraction`` (0.5), ``fps`` (the frame rate of the frames they
  pass, when their ``extra_info`` has no ``fps``; no default: with neither, nor ``source_fps`` in
  the reward's section, the call is refused naming the key: Wan-2.1 16, Wan2.2 / LTX-2 24),
  ``device`` (``auto``: CUDA when the worker sees a GPU), ``max_batch`` (16). An unknown key is an
  error naming it (their loader would drop it silently); the arguments they add (above) are not.
- **Samples.** ``media_kind`` "video" reads the frames as (T, C, H, W), their canonical layout;
  another kind is refused (our rewards score videos). A sample's ``audio`` and
  ``audio_sample_rate`` go to the reward with its frames (``Video.audio``): ``clap``, ``audiobox``
  and ``sync`` hear it, a video reward ignores it. One entry per component (``reward: clap``,
  ``reward: sync``, ...) keeps each component a score of its own in their manager, with its own
  ``reward/<entry>`` metric; an entry naming a ``combined`` reward gives them one number, its
  components' modalities lost there (docs/audio.md).
- **Batches.** The concurrent per-sample calls of a worker are gathered into model batches of up
  to ``max_batch`` (calls arriving while a batch runs form the next); the model runs in a thread,
  so the worker's event loop keeps receiving. Each sample gets its own score in its own call.
- **One model copy per process**, loaded at the first call and shared by every entry naming the
  same checkpoint. Their ``num_workers`` actors are processes: 8 workers load 8 copies. For a
  large judge set ``reward.num_workers`` low, or serve it once (``backend: openai`` sections and
  ``cac-align serve``) so that workers only send requests.
- **Every returned dict has the same keys**, ``score`` and ``valid`` (1.0 scored, 0.0 filled), so
  their batch assembly never meets a missing key; ``reward/<entry>/valid`` is logged as a metric.
- **Invalid samples.** verl-omni can neither mask nor drop a sample. ``invalid: fail`` (default)
  raises for that sample only: with ``required: true`` (set it) the run stops instead of training
  on 0.0. ``invalid: group_mean`` gives it the mean of the valid samples of its prompt among the
  samples gathered in the same model batch (with the whole group there, its GRPO advantage is
  exactly 0); a sample whose prompt has no valid sample in its batch, or a batch with more than
  ``max_invalid_fraction`` invalid samples, raises as under ``fail``. NaN is never returned.
  Every invalid sample is logged with its reason and counted (:func:`invalid_counts`).

Config lines a user copies (Hydra overrides of their run script)::

    reward.reward_manager.name=MultiVisualRewardManager \\
    +reward.reward_functions.ur_cac.path=pkg://cac_align.integrations.verl_omni \\
    +reward.reward_functions.ur_cac.name=compute_score \\
    +reward.reward_functions.ur_cac.weight=1.0 \\
    +reward.reward_functions.ur_cac.required=true \\
    +reward.reward_functions.ur_cac.reward=ur_cac \\
    +reward.reward_functions.ur_cac.sections=/abs/path/cac_rewards.yaml \\
    +reward.reward_functions.ur_cac.fps=16
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from typing import Any, Mapping

import numpy as np

from cac_align.integrations import adapter
from cac_align.rewards.base import RewardError
from cac_align.rewards.normalize import fill_invalid
from cac_align.video import VideoError

__all__ = ["POLICIES", "compute_score", "invalid_counts", "to_frames"]

log = logging.getLogger(__name__)

POLICIES = ("fail", "group_mean")
# Arguments verl-omni's manager adds to every call beside an entry's own keys (our function takes
# **kwargs, so their _filter_kwargs passes them all; newest multi.py, read in the code index after
# PR #524, the issue's @20e8232). Not ours: accepted and ignored, our judge is the one `reward` names.
# - a run with verl's reward model on (reward.reward_model.enable=true, so a router address):
#   reward_router_address, reward_model_tokenizer, model_name and sampling_params, the reward
#   model's rollout settings (multi.py, MultiVisualRewardManager._build_reward_kwargs, the last
#   lines of the file);
# - an entry bound to a named model of reward.models (its `model:` key, or an entry named like
#   the model: workers/config/reward.py resolve_reward_model_name): an engine model adds
#   reward_router_address and model_name (+ sampling_params with use_rollout_sampling_params), a
#   native model adds reward_model, the worker's executor (reward_loop/reward_model_executor.py,
#   EngineRouterClient.reward_kwargs and NativeRewardExecutor.reward_kwargs).
_THEIRS = frozenset({
    "data_source", "extra_info", "reward_router_address", "reward_model_tokenizer", "model_name", "sampling_params", "reward_model",
})
_counts = {"scored": 0, "invalid": 0, "filled": 0}
_counts_lock = threading.Lock()
_audio_logged = [False]


def invalid_counts() -> dict[str, int]:
    """Samples scored, invalid, and filled (``group_mean``) by :func:`compute_score` in this
    process so far."""
    with _counts_lock:
        return dict(_counts)


def to_frames(solution_image: Any, layout: str | None = None) -> np.ndarray:
    """One sample's frames as they arrive from verl-omni -> ``(T, H, W, 3)``.

    Accepts (T, C, H, W), (C, T, H, W) and (T, H, W, C), with or without a leading batch of one,
    as a tensor or an array; uint8 in [0, 255] stays uint8, float must lie in [0, 1] (checked when
    the reward decodes it). A layout with no axis of 3 channels is a :class:`VideoError`.
    ``layout="TCHW"`` (a sample whose ``media_kind`` says "video": their canonical layout) reads
    only that one, so a 3-frame video is never taken for channels first.
    """
    array = solution_image
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu()
        if not str(array.dtype).endswith("uint8"):
            array = array.float()
        array = array.numpy()
    array = np.asarray(array)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 4:
        raise VideoError(f"expected one video of 4 dimensions (T, C, H, W), got shape {tuple(array.shape)}")
    if layout == "TCHW":
        if array.shape[1] != 3:
            raise VideoError(f"media_kind 'video' frames are (T, 3, H, W), got shape {tuple(array.shape)}")
        hwc = array.transpose(0, 2, 3, 1)
    elif array.shape[-1] == 3 and array.shape[1] != 3:
        hwc = array  # (T, H, W, C)
    elif array.shape[1] == 3:
        hwc = array.transpose(0, 2, 3, 1)  # (T, C, H, W)
    elif array.shape[0] == 3:
        hwc = array.transpose(1, 2, 3, 0)  # (C, T, H, W)
    else:
        raise VideoError(f"no axis of 3 colour channels in a video of shape {tuple(array.shape)}")
    if hwc.dtype != np.uint8 and not np.issubdtype(hwc.dtype, np.floating):
        raise VideoError(f"frames must be uint8 in [0, 255] or float in [0, 1], got {hwc.dtype}")
    return np.ascontiguousarray(hwc)


class _Batcher:
    """The concurrent calls of one event loop for one reward setting, scored in model batches."""

    def __init__(self, settings: dict[str, Any], slots: adapter.RewardSlots) -> None:
        self.settings = settings
        self.slots = slots
        # per event loop (a worker has one; a test's asyncio.run makes a new one): its queued
        # calls and the task draining them
        self.queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._scorer: Any = None
        self._build_lock = threading.Lock()
        self.section_fps: float | None = None  # the reward section's own source_fps, when it states one

    async def submit(self, frames: Any, prompt: str, fps: float, sound: Mapping[str, Any] | None = None) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        queue = self.queues.setdefault(loop, {"pending": [], "worker": None})
        future = loop.create_future()
        queue["pending"].append((frames, prompt, {"fps": fps, **(sound or {})}, future))
        if queue["worker"] is None or queue["worker"].done():
            queue["worker"] = loop.create_task(self._drain(queue))
        return await future

    async def _drain(self, queue: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # the calls started together are queued before the first batch
        size = int(self.settings["max_batch"])
        while queue["pending"]:
            batch, queue["pending"] = queue["pending"][:size], queue["pending"][size:]
            try:
                results = await loop.run_in_executor(None, self._score, [(f, p, r) for f, p, r, _ in batch])
            except Exception as exc:  # building the reward failed: every caller of the batch hears it
                results = [exc] * len(batch)
            for (_, _, _, future), result in zip(batch, results):
                if future.done():  # the caller was cancelled
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        queue["worker"] = None  # nothing of the loop is kept, so a finished loop's entry goes away

    def scorer(self) -> Any:
        with self._build_lock:
            if self._scorer is None:
                self._scorer = self.slots.scorer(self.settings["reward"], self.settings["device"])
            return self._scorer

    def _score(self, items: list[tuple[Any, str, dict[str, Any]]]) -> list[dict[str, float] | Exception]:
        """One model batch (in a worker thread): a result dict or an exception per item."""
        s = self.settings
        prompts = [p for _, p, _ in items]
        metadata = [{**row, "group": p} for _, p, row in items]  # fps, and the soundtrack where the sample has one
        scored = self.scorer()([f for f, _, _ in items], prompts, metadata)
        n = len(items)
        invalid = ~scored.valid
        filled = np.zeros(n, dtype=bool)
        values = np.asarray(scored.scores, dtype=np.float64)
        too_many = invalid.sum() > s["max_invalid_fraction"] * n
        if s["invalid"] == "group_mean" and invalid.any() and not too_many:
            values, filled = fill_invalid(values, scored.valid, prompts)
        with _counts_lock:
            _counts["scored"] += n
            _counts["invalid"] += int(invalid.sum())
            _counts["filled"] += int(filled.sum())
            so_far = dict(_counts)
        results: list[dict[str, float] | Exception] = []
        for i in range(n):
            if scored.valid[i]:
                results.append({"score": float(values[i]), "valid": 1.0})
                continue
            why = scored.errors.get(i, "not scored")
            if filled[i]:
                log.warning("reward %r: a sample of prompt %r got its group's mean (%s); %d invalid of %d so far",
                            s["reward"], prompts[i], why, so_far["invalid"], so_far["scored"])
                results.append({"score": float(values[i]), "valid": 0.0})
                continue
            if s["invalid"] == "fail":
                reason = "invalid='fail'"
            elif not any(scored.valid[j] and prompts[j] == prompts[i] for j in range(n)):
                reason = "no sample of its prompt in its batch was valid to fill it from"
            else:
                reason = f"{int(invalid.sum())} of the {n} samples of its batch are invalid (more than max_invalid_fraction={s['max_invalid_fraction']:g})"
            log.error("reward %r: a sample of prompt %r could not be scored (%s; %s); %d invalid of %d so far. verl-omni "
                      "trains on 0.0 for it unless its entry has required: true (streaming or not)",
                      s["reward"], prompts[i], why, reason, so_far["invalid"], so_far["scored"])
            results.append(RewardError(
                f"reward {s['reward']!r} could not score a sample of prompt {prompts[i]!r}: {why} ({reason}). "
                "verl-omni trains on 0.0 for a failed reward unless its entry has required: true"
            ))
        return results


_BATCHERS: dict[str, _Batcher] = {}
_BATCHERS_LOCK = threading.Lock()


def _settings(reward: Any, sections: Any, invalid: Any, max_invalid_fraction: Any, fps: Any, device: Any, max_batch: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(extra) - _THEIRS)
    if unknown:
        known = ["reward", "sections", "invalid", "max_invalid_fraction", "fps", "device", "max_batch"]
        raise ValueError(f"verl_omni reward function: unknown key(s) {unknown} in its reward_functions entry; known: {known}")
    why = "verl-omni cannot mask or drop a sample, and a NaN reward makes every advantage of the step NaN"
    return adapter.batch_settings("verl_omni", POLICIES, why, reward=reward, sections=sections, invalid=invalid,
                                  max_invalid_fraction=max_invalid_fraction, fps=fps, device=device, max_batch=max_batch)


def _batcher(settings: dict[str, Any]) -> _Batcher:
    key = json.dumps(settings, sort_keys=True, default=str)
    with _BATCHERS_LOCK:
        if key not in _BATCHERS:
            slots = adapter.RewardSlots(where="verl_omni")
            slots.configure(settings["sections"], "drop")  # a typo in the sections fails at the first call, before any model loads
            batcher = _Batcher(settings, slots)
            batcher.section_fps = adapter.section_fps(slots.section(settings["reward"]))  # an unknown reward name fails here too
            _BATCHERS[key] = batcher
        return _BATCHERS[key]


def _sample_fields(extra_info: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(fps, layout, sound)`` of one sample from their ``extra_info``; raises for a sample that is
    not a video. ``sound`` is ``{"audio", "sample_rate"}`` for a sample with a soundtrack, else {}. verl-omni projects ``media_kind``, ``audio`` and ``audio_sample_rate`` of the rollout
    into ``extra_info`` (reward_manager/media.py, ``_reward_extra_info``); a dataset row may add
    ``fps`` (their visual reward helper reads ``extra_info["fps"]`` beside ``media_kind``)."""
    info = extra_info if isinstance(extra_info, Mapping) else {}
    kind = info.get("media_kind")
    if kind is not None and str(kind) != "video":
        raise ValueError(f"verl_omni reward function: this sample's media_kind is {kind!r}; cac_align's rewards score videos "
                         "(media_kind 'video'): point this entry at a video run")
    sound: dict[str, Any] = {}
    if info.get("audio") is not None:
        rate = info.get("audio_sample_rate")
        sound = {"audio": info["audio"], "sample_rate": int(rate.item() if hasattr(rate, "item") else rate) if rate is not None else None}
        if not _audio_logged[0]:
            _audio_logged[0] = True
            log.info("verl_omni: the samples carry audio (%s Hz): handed to the reward with the frames (a reward that hears judges it)",
                     rate if rate is not None else "unknown rate")
    return info.get("fps"), ("TCHW" if kind is not None else None), sound


async def compute_score(
    data_source: Any = None,
    solution_image: Any = None,
    ground_truth: Any = None,
    extra_info: Any = None,
    *,
    reward: str = "ur_cac",
    sections: Any = None,
    invalid: str = "fail",
    max_invalid_fraction: float = 0.5,
    fps: float | None = None,
    device: str = "auto",
    max_batch: int = 16,
    **kwargs: Any,
) -> dict[str, float]:
    """Score one verl-omni sample with a reward of ours (module docstring).

    Args:
        data_source: theirs; unused.
        solution_image: the sample's frames (:func:`to_frames`).
        ground_truth: the prompt.
        extra_info: theirs: ``fps`` (when their dataset rows carry one), ``media_kind`` (read:
            "video" fixes the layout, anything else is refused), ``audio`` and
            ``audio_sample_rate`` (the soundtrack, handed to the reward).
        reward, sections, invalid, max_invalid_fraction, fps, device, max_batch: the keys of
            the reward_functions entry (module docstring).
        **kwargs: the arguments verl-omni adds for a reward model (``sampling_params``,
            ``reward_model``, ``reward_router_address``, ``reward_model_tokenizer``,
            ``model_name``): ignored. Any other key is an error.

    Returns:
        ``{"score": float, "valid": 1.0 | 0.0}``.

    Raises:
        RewardError: the sample could not be scored and is not filled (module docstring).
        ValueError: an unknown key, a bad setting, an unknown reward name, no frame rate, or a
            sample that is not a video.
    """
    settings = _settings(reward, sections, invalid, max_invalid_fraction, fps, device, max_batch, kwargs)
    batcher = _batcher(settings)
    passed_fps, layout, sound = _sample_fields(extra_info)
    # the trainer's own rate, then the entry's `fps`, then the reward section's `source_fps`; never a guess
    rate = adapter.frame_rate("verl_omni reward function", "fps in its reward_functions entry (or source_fps in the reward's section)",
                              passed_fps, settings["fps"], batcher.section_fps)
    prompt = ground_truth if isinstance(ground_truth, str) else None
    try:
        frames: Any = to_frames(solution_image, layout)
    except VideoError as exc:
        frames = exc  # the reward marks this sample invalid (the policy decides the rest)
    return await batcher.submit(frames, prompt, rate, sound)
