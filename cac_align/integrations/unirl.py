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

What this module gives: :class:`CacAlignRewardBackend`, a subclass of their ``RewardBackend``
(built when first asked for, so importing this module does not need UniRL), whose constructor
arguments are the keys of our other integrations: ``reward`` (a name of ours, ``ur_cac`` by
default), ``sections`` (a YAML file or mapping of reward sections; else ``$CAC_ALIGN_REWARDS``;
else the paper's checkpoints), ``invalid`` (``group_mean`` or ``fail``), ``max_invalid_fraction``
(0.5), ``fps``, ``device`` (``auto``), ``max_batch`` (16), and theirs (``model_name``,
``prompt_source``, ``batch_size``, ``timeout``). An unknown key is an error naming it (their base
class would swallow it).

- **Frame rate.** Their video tensors carry none: a sample's ``metadata["fps"]``, when their
  dataset rows carry one, is used; otherwise the backend's ``fps`` (default 16, Wan-2.1's). The
  first request logs which.
- **Loading.** The reward is built (its models loaded, once per process) in the constructor;
  ``is_available()`` is true only when that worked. A reward that failed to load keeps the reason,
  logs it, and every ``compute_rewards`` raises it.
- **Invalid samples.** NaN is never returned (their logs would show ``reward=nan``).
  ``group_mean`` (default): an invalid sample gets the mean of the valid samples of its prompt
  group in the request, so its advantage under their group normalization is 0 (up to float32
  rounding); a group with no valid sample gets the request's mean (every member equal: advantage
  0). ``fail``: the sample is marked failed with our reason and their service stops the run quoting
  it. Either way, a request with more than ``max_invalid_fraction`` invalid samples, or none valid,
  marks its invalid samples failed (the run stops with our reasons rather than train on filled
  numbers). Every invalid sample is logged with its reason and counted (:func:`invalid_counts`);
  ``component_rewards["valid"]`` (1.0 scored, 0.0 filled) becomes their metric
  ``<reward>_valid``.

Config a user copies (their run YAML, e.g. ``examples/diffusion/wan21_t2v.yaml``)::

    reward:
      _target_: unirl.reward.service.RewardService
      backend:
        _target_: cac_align.integrations.unirl.CacAlignRewardBackend
        reward: ur_cac
        sections: /abs/path/cac_rewards.yaml
        fps: 16
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np

from cac_align.integrations import adapter
from cac_align.rewards.base import failure_summary

__all__ = ["POLICIES", "CacAlignRewardBackend", "backend_settings", "invalid_counts", "score_request"]

log = logging.getLogger(__name__)

POLICIES = ("group_mean", "fail")
_THEIRS = frozenset({"model_name", "batch_size", "timeout", "prompt_source"})
_counts = {"scored": 0, "invalid": 0, "filled": 0}
_counts_lock = threading.Lock()


def invalid_counts() -> dict[str, int]:
    """Samples scored, invalid, and filled (``group_mean``) by the backend in this process so far."""
    with _counts_lock:
        return dict(_counts)


def backend_settings(reward: Any = "ur_cac", sections: Any = None, invalid: str = "group_mean", max_invalid_fraction: float = 0.5,
                     fps: float = 16.0, device: str = "auto", max_batch: int = 16) -> dict[str, Any]:
    """The backend's settings, checked (module docstring); raises ``ValueError`` naming a bad one."""
    why = "a NaN reward gets advantage 0 in UniRL but turns its logged mean reward into nan; a failed sample stops their whole batch"
    return adapter.batch_settings("unirl", POLICIES, why, reward=reward, sections=sections, invalid=invalid,
                                  max_invalid_fraction=max_invalid_fraction, fps=fps, device=device, max_batch=max_batch)


def score_request(
    scorer: adapter.Scorer,
    videos: Sequence[Any],
    prompts: Sequence[str],
    group_ids: Sequence[Any] | None,
    metadata: Sequence[Mapping[str, Any] | None] | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Score one UniRL request's videos with our reward and apply the invalid policy.

    Args:
        scorer: :func:`~cac_align.integrations.adapter.make_scorer` of the reward, policy ``drop``.
        videos: ``(C, T, H, W)`` float tensors or arrays in [0, 1].
        prompts: one per video.
        group_ids: their prompt group per video (None: groups by prompt text).
        metadata: their per-sample metadata (``fps`` read when present).
        settings: :func:`backend_settings`.

    Returns:
        ``{"rewards", "successes", "errors", "valid", "fps_source"}``: lists of length B, no NaN
        in ``rewards`` (a failed sample holds 0.0 beside ``successes[i] = False``, which their
        service refuses before using it).
    """
    n = len(videos)
    rows = [dict(m or {}) for m in (metadata or [None] * n)]
    if len(rows) != n or len(prompts) != n or (group_ids is not None and len(group_ids) != n):
        raise ValueError(f"unirl: a request of {n} videos with {len(prompts)} prompts and {len(rows)} metadata rows")
    fps = [float(row["fps"]) if row.get("fps") else settings["fps"] for row in rows]
    fps_source = "metadata" if all(row.get("fps") for row in rows) else ("backend fps" if not any(row.get("fps") for row in rows) else "mixed")
    groups = list(group_ids) if group_ids is not None else list(prompts)
    meta = [{"fps": f, "group": str(g)} for f, g in zip(fps, groups)]
    frames = [adapter.channels_first_frames(v) for v in videos]

    scores, valid, errors = np.full(n, np.nan), np.zeros(n, dtype=bool), {}
    size = int(settings["max_batch"])
    for lo in range(0, n, size):  # model batches; the policy is applied over the whole request
        part = scorer(frames[lo : lo + size], list(prompts[lo : lo + size]), meta[lo : lo + size])
        scores[lo : lo + size], valid[lo : lo + size] = part.scores, part.valid
        errors.update({lo + i: why for i, why in part.errors.items()})
    invalid = ~valid
    successes = [True] * n
    filled: list[int] = []
    if invalid.any():
        too_many = invalid.sum() > settings["max_invalid_fraction"] * n or not valid.any()
        if settings["invalid"] == "group_mean" and not too_many:
            scores, filled = adapter.fill_policy(scores, valid, prompts, meta, "group_mean", errors)
        else:
            reason = "invalid='fail'" if settings["invalid"] == "fail" else (
                f"{int(invalid.sum())} of {n} samples invalid, more than max_invalid_fraction={settings['max_invalid_fraction']:g}")
            for i in np.flatnonzero(invalid):
                successes[i] = False
                errors[int(i)] = f"cac_align reward {settings['reward']!r}: {errors.get(int(i), 'not scored')} ({reason})"
            scores = np.where(invalid, 0.0, scores)  # never read: their service refuses a failed sample
        log.warning("unirl reward %r: %s; %s", settings["reward"], failure_summary({int(i): errors.get(int(i), "?") for i in np.flatnonzero(invalid)}),
                    "filled with their group's mean" if filled else "marked failed: UniRL stops the step")
    with _counts_lock:
        _counts["scored"] += n
        _counts["invalid"] += int(invalid.sum())
        _counts["filled"] += len(filled)
    if not np.isfinite(scores).all():  # a bug of ours, never a NaN into their advantages
        raise RuntimeError(f"unirl reward {settings['reward']!r}: non-finite rewards survived the invalid policy: {scores.tolist()}")
    return {
        "rewards": [float(s) for s in scores],
        "successes": successes,
        "errors": [errors.get(i) if not successes[i] or invalid[i] else None for i in range(n)],
        "valid": [1.0 if v else 0.0 for v in valid],
        "fps_source": fps_source,
    }


def _make_class() -> type:
    """Our backend, a subclass of *their* ``RewardBackend`` (built when first asked for)."""
    from unirl.reward.base import RewardBackend
    from unirl.types.reward import RewardResponse

    class CacAlignRewardBackend(RewardBackend):
        """A cac_align reward as a UniRL reward backend (module docstring)."""

        input_kind = "video"

        def __init__(self, reward: str = "ur_cac", sections: Any = None, invalid: str = "group_mean", max_invalid_fraction: float = 0.5,
                     fps: float = 16.0, device: str = "auto", max_batch: int = 16, **kwargs: Any) -> None:
            unknown = sorted(set(kwargs) - _THEIRS)
            if unknown:
                raise ValueError(
                    f"unirl CacAlignRewardBackend: unknown key(s) {unknown}; ours: reward, sections, invalid, "
                    f"max_invalid_fraction, fps, device, max_batch; theirs: {sorted(_THEIRS)}"
                )
            kwargs.setdefault("model_name", f"cac_align:{reward}")
            super().__init__(**kwargs)
            self.settings = backend_settings(reward, sections, invalid, max_invalid_fraction, fps, device, max_batch)
            slots = adapter.RewardSlots(where="unirl")
            slots.configure(self.settings["sections"], "drop")  # typos in the sections raise here, before any model loads
            slots.section(self.settings["reward"])  # so does an unknown reward name
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
            out = score_request(self._scorer, request.videos, self.prompts(request), request.group_ids, request.metadata, self.settings)
            if not self._fps_logged:
                log.info("unirl reward %r: frame rate from the %s (%g fps unless a sample's metadata says otherwise)",
                         self.settings["reward"], out["fps_source"], self.settings["fps"])
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
