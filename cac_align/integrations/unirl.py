"""Our rewards as a UniRL reward backend (github.com/Tencent-Hunyuan/UniRL; ``unirl`` 0.2.0 on PyPI).

How UniRL scores a rollout (read in the ``unirl`` 0.2.0 package; paths under ``unirl/``):

- the run config's ``reward:`` is built by Hydra from ``_target_`` paths, nested sections first
  (``trainer/hydra.py``, ``distributed/group/worker.py`` 143-169): ``reward: {_target_:
  unirl.reward.service.RewardService, backend: {_target_: <any importable class>, ...}}``; the
  backend's other keys are its constructor's keyword arguments. It runs in a Ray actor per
  trainer rank.
- ``RewardService.score_and_attach`` (``reward/service.py`` 123-172) builds one
  ``RewardRequest`` from the step's samples (``types/reward.py`` 17-111: ``request.videos`` is a
  list of ``(C, T, H, W)`` tensors in [0, 1], in the VAE's dtype; prompts, ``group_ids`` (the
  prompt each sample was forked from), ``sample_ids``, per-sample ``metadata``; **no frame rate**)
  and calls ``backend.compute_rewards(request) -> RewardResponse(rewards, successes, errors,
  component_rewards)``. Any ``successes[i] == False`` raises for the whole batch, quoting the
  first few ``(i, error)`` (135-140); a backend that raises aborts the step, and under Ray poisons
  their device pool, so the run stops either way.
- advantages (``types/sample.py`` 267-330, ``Part.compute_advantages``): ``(r - mean) / (std +
  eps)`` per prompt group (population std; ``adv_use_global_std`` takes the std of the whole
  batch, their Wan example's setting). A non-finite reward is left out of its group's statistics
  and gets advantage 0, but the trainer's logged ``mean_reward`` (``trainer/diffusion.py`` 894) is
  a plain mean and becomes NaN; ``component_rewards`` are averaged into their eval metrics.
- ``RewardStack`` (``reward/stack.py`` 44-78, the ``reward_stack:`` of a run) generates a rank's
  shard in micro-batches of ``micro_batch_size`` rows and scores each as it comes. Its bounds run
  to the end of a group only when the rollout engine ``packs_groups`` (``rollout/engine/base.py``
  82-84: False unless an adapter says so), so a prompt's group can arrive in pieces, one row at a
  time with ``micro_batch_size: 1``; the pieces of a rollout share its ``r<n>:`` group-id prefix.

What this module gives: :class:`CacAlignRewardBackend`, a subclass of their ``RewardBackend``
(built when first asked for, so importing this module does not need UniRL), whose constructor
arguments are the keys of our other integrations: ``reward`` (a name of ours, ``ur_cac`` by
default), ``sections`` (a YAML file or mapping of reward sections; else ``$CAC_ALIGN_REWARDS``;
else the paper's checkpoints), ``invalid`` (``group_mean`` or ``fail``), ``max_invalid_fraction``
(0.5), ``fps``, ``device`` (``auto``), ``max_batch`` (16), ``samples_per_prompt`` (their sampling's
number; none by default), and theirs (``model_name``, ``prompt_source``, ``batch_size``,
``timeout``). An unknown key is an error naming it (their base class would swallow it).

- **Frame rate.** Their video tensors carry none: a sample's ``metadata["fps"]``, when their
  dataset rows carry one, is used; otherwise the backend's ``fps``, otherwise the reward
  section's own ``source_fps``. With none of them the request is refused, naming the key (Wan-2.1
  16, Wan2.2 / LTX-2 24): no rate is guessed. The first request logs which was used.
- **Loading.** The reward is built (its models loaded, once per process) in the constructor;
  ``is_available()`` is true only when that worked. A reward that failed to load keeps the reason,
  logs it, and every ``compute_rewards`` raises it.
- **Invalid samples, groups in pieces.** ``group_mean`` (default): an invalid sample whose whole
  group is in the request (``samples_per_prompt`` rows of its group id; the key must be set to
  know it) with a valid member gets the mean of that group's valid samples: its advantage under
  their group normalization is 0 (up to float32 rounding) and their logs stay finite. Any other
  invalid sample (its group in pieces, ``samples_per_prompt`` unset, or no valid member) is
  **excluded**: its reward is NaN, which their advantage leaves out of its group's mean and std
  and gives advantage 0 (``types/sample.py`` 286-327), so no number is made up for it; their logged
  mean reward of that rollout reads nan (``trainer/diffusion.py`` 894: a plain mean). Never a
  filled number from part of a group. ``fail``: the sample is marked failed with our reason and
  their service stops the step quoting it (``reward/service.py`` 135-140). The step also stops
  when two or more of the rollout's samples scored so far in this process, and more than
  ``max_invalid_fraction`` of them, are invalid (counted across the micro-batches of the rollout:
  :class:`RolloutTally`); one invalid row alone never stops a step. Every invalid sample is logged
  with its reason and counted (:func:`invalid_counts`); ``component_rewards["valid"]`` (1.0
  scored, 0.0 filled or excluded) becomes their metric ``<reward>_valid``.

Config a user copies (their run YAML, e.g. ``examples/diffusion/wan21_t2v.yaml``)::

    reward:
      _target_: unirl.reward.service.RewardService
      backend:
        _target_: cac_align.integrations.unirl.CacAlignRewardBackend
        reward: ur_cac
        sections: /abs/path/cac_rewards.yaml
        fps: 16                 # your pipeline's rate: Wan-2.1 16, Wan2.2 / LTX-2 24
        samples_per_prompt: 4   # their sampling's samples_per_prompt: fills need whole groups
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np

from cac_align.integrations import adapter
from cac_align.rewards.base import failure_summary

__all__ = ["POLICIES", "RolloutTally", "backend_settings", "invalid_counts", "score_request"]  # CacAlignRewardBackend: built on first use

log = logging.getLogger(__name__)

POLICIES = ("group_mean", "fail")
_THEIRS = frozenset({"model_name", "batch_size", "timeout", "prompt_source"})
_counts = {"scored": 0, "invalid": 0, "filled": 0, "excluded": 0}
_counts_lock = threading.Lock()


def invalid_counts() -> dict[str, int]:
    """Samples scored, invalid, filled (``group_mean`` over a whole group) and excluded (NaN: a
    group in pieces) by the backend in this process so far."""
    with _counts_lock:
        return dict(_counts)


def backend_settings(reward: Any = "ur_cac", sections: Any = None, invalid: str = "group_mean", max_invalid_fraction: float = 0.5,
                     fps: float | None = None, device: str = "auto", max_batch: int = 16, samples_per_prompt: int | None = None) -> dict[str, Any]:
    """The backend's settings, checked (module docstring); raises ``ValueError`` naming a bad one."""
    why = "a failed sample stops their whole step; a NaN is only ever an excluded sample of a group in pieces (module docstring)"
    settings = adapter.batch_settings("unirl", POLICIES, why, reward=reward, sections=sections, invalid=invalid,
                                      max_invalid_fraction=max_invalid_fraction, fps=fps, device=device, max_batch=max_batch)
    if samples_per_prompt is not None and (isinstance(samples_per_prompt, bool) or int(samples_per_prompt) < 1):
        raise ValueError(f"unirl: samples_per_prompt must be an integer >= 1 (their sampling's samples_per_prompt), got {samples_per_prompt!r}")
    return {**settings, "samples_per_prompt": None if samples_per_prompt is None else int(samples_per_prompt)}


class RolloutTally:
    """Rows and invalid rows scored so far per rollout, across the calls of one process.

    UniRL names every group ``r<rollout>:<prompt>`` (``trainer/base.py`` 54 prefixes every sample
    id with its rollout; a group is its samples' parent id, ``types/sample.py`` 194-196), so the
    calls ``RewardStack`` makes for one rollout's micro-batches share the prefix. The
    ``max_invalid_fraction`` limit is judged over those rows, not over one micro-batch that may be
    a single row. A request whose group ids have no common ``r<n>:`` prefix is counted alone.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._seen: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def rollout(groups: Sequence[Any]) -> str | None:
        heads = {str(g).split(":", 1)[0] for g in groups if ":" in str(g)}
        return heads.pop() if len(heads) == 1 and all(":" in str(g) for g in groups) else None

    def add(self, groups: Sequence[Any], rows: int, invalid: int) -> tuple[int, int]:
        """Count one call; ``(rows, invalid)`` of its rollout so far, this call included."""
        key = self.rollout(groups)
        if key is None:
            return rows, invalid
        with self._lock:
            seen = self._seen.pop(key, [0, 0])
            seen[0] += rows
            seen[1] += invalid
            self._seen[key] = seen  # the newest last; a process holds only the last few rollouts
            while len(self._seen) > self.keep:
                self._seen.pop(next(iter(self._seen)))
            return seen[0], seen[1]


def score_request(
    scorer: adapter.Scorer,
    videos: Sequence[Any],
    prompts: Sequence[str],
    group_ids: Sequence[Any] | None,
    metadata: Sequence[Mapping[str, Any] | None] | None,
    settings: Mapping[str, Any],
    tally: RolloutTally | None = None,
    section_fps: float | None = None,
) -> dict[str, Any]:
    """Score one UniRL request's videos with our reward and apply the invalid policy.

    Args:
        scorer: :func:`~cac_align.integrations.adapter.make_scorer` of the reward, policy ``drop``.
        videos: ``(C, T, H, W)`` float tensors or arrays in [0, 1].
        prompts: one per video.
        group_ids: their prompt group per video (None: groups by prompt text).
        metadata: their per-sample metadata (``fps`` read when present).
        settings: :func:`backend_settings`.
        tally: the rollout's counts so far (None: this request alone).
        section_fps: the reward section's own ``source_fps``, the last source of the frame rate.

    Returns:
        ``{"rewards", "successes", "errors", "valid", "fps_source", "filled", "excluded"}``: lists
        of length B (indices for the last two). ``rewards`` is NaN only at an excluded sample
        (their advantage leaves it out); a failed sample holds 0.0 beside ``successes[i] =
        False``, which their service refuses before using it.

    Raises:
        ValueError: a row without a frame rate when the backend has none either.
    """
    n = len(videos)
    rows = [dict(m or {}) for m in (metadata or [None] * n)]
    if len(rows) != n or len(prompts) != n or (group_ids is not None and len(group_ids) != n):
        raise ValueError(f"unirl: a request of {n} videos with {len(prompts)} prompts and {len(rows)} metadata rows")
    fps = [adapter.frame_rate("unirl CacAlignRewardBackend", "fps (or source_fps in the reward's section; their videos carry none)",
                              row.get("fps"), settings["fps"], section_fps) for row in rows]
    from_rows = [bool(row.get("fps")) for row in rows]
    fps_source = "metadata" if all(from_rows) else ("backend fps" if not any(from_rows) else "mixed")
    groups = [str(g) for g in group_ids] if group_ids is not None else list(prompts)
    meta = [{"fps": f, "group": g} for f, g in zip(fps, groups)]
    frames = [adapter.channels_first_frames(v) for v in videos]

    # 1. score in model batches
    scores, valid, errors = np.full(n, np.nan), np.zeros(n, dtype=bool), {}
    size = int(settings["max_batch"])
    for lo in range(0, n, size):
        part = scorer(frames[lo : lo + size], list(prompts[lo : lo + size]), meta[lo : lo + size])
        scores[lo : lo + size], valid[lo : lo + size] = part.scores, part.valid
        errors.update({lo + i: why for i, why in part.errors.items()})

    # 2. invalid samples: filled from their whole group, excluded, or failed (module docstring)
    invalid = ~valid
    rollout_rows, rollout_invalid = (tally or RolloutTally()).add(groups, n, int(invalid.sum()))
    successes = [True] * n
    filled: list[int] = []
    excluded: list[int] = []
    if invalid.any():
        limit = settings["max_invalid_fraction"]
        too_many = rollout_invalid >= 2 and rollout_invalid > limit * rollout_rows  # one invalid row alone never stops a step
        if settings["invalid"] == "fail" or too_many:
            reason = "invalid='fail'" if settings["invalid"] == "fail" else (
                f"{rollout_invalid} of the {rollout_rows} samples of this rollout scored so far are invalid, more than "
                f"max_invalid_fraction={limit:g}")
            for i in np.flatnonzero(invalid):
                successes[i] = False
                errors[int(i)] = f"cac_align reward {settings['reward']!r}: {errors.get(int(i), 'not scored')} ({reason})"
            scores = np.where(invalid, 0.0, scores)  # never read: their service refuses a failed sample
        else:
            whole = settings["samples_per_prompt"]
            for i in np.flatnonzero(invalid):
                members = [j for j in range(n) if groups[j] == groups[i]]
                fill_from = [j for j in members if valid[j]]
                if whole is not None and len(members) == whole and fill_from:
                    scores[i] = float(np.mean(scores[fill_from]))  # the whole group's valid mean: advantage exactly 0
                    filled.append(int(i))
                    continue
                excluded.append(int(i))  # NaN: their advantage leaves it out of its group and gives it 0
                why = ("no sample of its group is valid" if whole is not None and len(members) == whole else
                       f"its group has {len(members)} of its samples in this call" if whole is not None else
                       "samples_per_prompt is not set, so whether its whole group is in this call is unknown")
                errors[int(i)] = f"{errors.get(int(i), 'not scored')} (excluded: {why})"
        log.warning("unirl reward %r: %s; %s", settings["reward"], failure_summary({int(i): errors.get(int(i), "?") for i in np.flatnonzero(invalid)}),
                    "marked failed: UniRL stops the step" if not all(successes) else
                    f"{len(filled)} filled with their whole group's mean, {len(excluded)} excluded (NaN: advantage 0, left out of their group)")
    with _counts_lock:
        _counts["scored"] += n
        _counts["invalid"] += int(invalid.sum())
        _counts["filled"] += len(filled)
        _counts["excluded"] += len(excluded)
    stray = ~np.isfinite(scores)
    stray[excluded] = False
    if stray.any():  # a bug of ours, never a NaN into their advantages but an excluded sample's
        raise RuntimeError(f"unirl reward {settings['reward']!r}: non-finite rewards survived the invalid policy: {scores.tolist()}")
    return {
        "rewards": [float(s) for s in scores],
        "successes": successes,
        "errors": [errors.get(i) if invalid[i] else None for i in range(n)],
        "valid": [1.0 if v else 0.0 for v in valid],
        "fps_source": fps_source,
        "filled": filled,
        "excluded": excluded,
    }


def _make_class() -> type:
    """Our backend, a subclass of *their* ``RewardBackend`` (built when first asked for)."""
    from unirl.reward.base import RewardBackend
    from unirl.types.reward import RewardResponse

    class CacAlignRewardBackend(RewardBackend):
        """A cac_align reward as a UniRL reward backend (module docstring)."""

        input_kind = "video"

        def __init__(self, reward: str = "ur_cac", sections: Any = None, invalid: str = "group_mean", max_invalid_fraction: float = 0.5,
                     fps: float | None = None, device: str = "auto", max_batch: int = 16, samples_per_prompt: int | None = None,
                     **kwargs: Any) -> None:
            unknown = sorted(set(kwargs) - _THEIRS)
            if unknown:
                raise ValueError(
                    f"unirl CacAlignRewardBackend: unknown key(s) {unknown}; ours: reward, sections, invalid, "
                    f"max_invalid_fraction, fps, device, max_batch, samples_per_prompt; theirs: {sorted(_THEIRS)}"
                )
            kwargs.setdefault("model_name", f"cac_align:{reward}")
            super().__init__(**kwargs)
            self.settings = backend_settings(reward, sections, invalid, max_invalid_fraction, fps, device, max_batch, samples_per_prompt)
            slots = adapter.RewardSlots(where="unirl")
            slots.configure(self.settings["sections"], "drop")  # typos in the sections raise here, before any model loads
            self.section_fps = adapter.section_fps(slots.section(self.settings["reward"]))  # an unknown reward name raises here too
            self.tally = RolloutTally()
            self.load_error: str | None = None
            self._scorer: Any = None
            self._fps_logged = False
            try:
                self._scorer = slots.scorer(self.settings["reward"], self.settings["device"])
            except Exception as exc:  # kept: is_available() says False, compute_rewards raises it
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("unirl: cac_align reward %r did not load: %s", self.settings["reward"], self.load_error)

        def is_available(self) -> bool:
            return self._scorer is not None

        def compute_rewards(self, request: Any) -> Any:
            from cac_align.rewards.base import RewardError

            if self._scorer is None:
                raise RewardError(f"cac_align reward {self.settings['reward']!r} is not available: it failed to load ({self.load_error})")
            start = time.perf_counter()
            out = score_request(self._scorer, request.videos, self.prompts(request), request.group_ids, request.metadata, self.settings,
                                self.tally, self.section_fps)
            if not self._fps_logged:
                log.info("unirl reward %r: frame rate from the %s (backend fps %s, section source_fps %s)",
                         self.settings["reward"], out["fps_source"], self.settings["fps"], self.section_fps)
                self._fps_logged = True
            return RewardResponse(rewards=out["rewards"], component_rewards={"valid": out["valid"]}, successes=out["successes"],
                                  errors=out["errors"], compute_time=time.perf_counter() - start)

        def dispose(self) -> None:
            self._scorer = None
            adapter.release_models()

    return CacAlignRewardBackend


_built: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "CacAlignRewardBackend":
        if name not in _built:
            _built[name] = _make_class()
        return _built[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
