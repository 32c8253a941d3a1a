"""Drop-in rewards for the public Flow-GRPO trainer (github.com/yifan123/flow_grpo).

How their trainer uses a reward (``scripts/train_wan2_1.py``): it builds
``reward_fn = flow_grpo.rewards.multi_score(accelerator.device, config.reward_fn)`` (and a
second one for eval), submits ``reward_fn(videos, prompts, metadata, only_strict=True)`` to a
thread pool while the next batch samples (videos: float ``(B, F, C, H, W)`` in [0, 1]), turns
every key of the returned score dict into a tensor, subtracts the KL reward from ``"avg"``,
gathers everything over processes, logs the mean of every key as ``reward_<key>``, and gives
``"avg"`` to ``PerPromptStatTracker.update(prompts, rewards)`` for per-prompt advantages.
Samples whose advantages are all 0 are masked out of training.

One call wires our rewards into that, without editing their files::

    import flow_grpo.rewards, flow_grpo.stat_tracking
    from cac_align.integrations import flow_grpo as cac_rewards

    cac_rewards.install(flow_grpo.rewards, flow_grpo.stat_tracking,
                        sections="cac_rewards.yaml")  # a copy of our examples/flow_grpo_rewards.yaml
    # config.reward_fn = {"ur_cac": 1.0}     (their own names keep working beside ours)

or, with no code at all, launch their script through
``python -m cac_align.integrations.flow_grpo --rewards FILE scripts/train_wan2_1.py ...``
(works under ``accelerate launch -m``).

:func:`install` does three things:

1. **Names.** Their ``multi_score`` (whose factory table is local to the function) is wrapped:
   our names (:data:`SCORE_FUNCTIONS`: ``cac``, ``unified_reward``, ``ur_cac``) are built here,
   every other name by their original function, and ``"avg"`` is the weighted sum over all.
2. **Invalid samples never train.** A sample that could not be scored is NaN in its reward's
   scores and in ``"avg"`` (a made-up value would be trained on; their prompt groups span calls
   and processes, so no reward call can fill one honestly). Their tracker's ``update`` is
   patched to be NaN-aware, for both of its signatures (``update(prompts, rewards, type)`` and,
   since GARDO, ``update(prompts, rewards, dists=None, type='grpo')``) and every advantage type:
   with every reward finite it returns exactly what theirs returns; otherwise invalid samples get
   advantage exactly 0 and take no part in the call, and valid samples get what their tracker
   gives over the valid samples alone (a GRPO group with one valid sample: 0, as theirs gives).
   Their mask (advantage ≠ 0) then drops invalid samples. A reward call never raises for
   per-sample failures: an all-invalid call returns all NaN, and anything raised inside a
   reward's work (a ``ValueError`` from a processor as much as a CUDA error) makes the call's
   samples invalid, logged. Only the call's own errors, checked before any model runs
   (:func:`~cac_align.rewards.base.check_call`), raise. A step in which *no* sample is valid
   raises :class:`~cac_align.rewards.base.RewardError` from the tracker, as ``cac-align
   flow-grpo`` does: training on nothing for days helps nobody. Per-prompt tracking must be on:
   with it off, their global advantages turn one NaN into NaN for all, so a training call warns
   once, and refuses at the first invalid sample.
3. **One model load.** Models are shared by every factory call of the process (their trainer
   builds ``multi_score`` twice; ``ur_cac`` beside ``cac`` shares the CaC checkpoint): one copy
   of each checkpoint per process and device.

What their logs and fallbacks make of invalid samples is in docs/rewards.md ("What their
trainer does with invalid samples"): ``reward_invalid`` is the fraction of the step's samples
that some reward of ours could not score (the returned dict carries an ``"invalid"`` key, 1.0
per invalid sample, filled or not); ``reward_avg``, ``reward_<name>`` and ``eval_reward_*``
read NaN in a step with an invalid sample.

**Frame rate.** Their videos are arrays, which carry no frame rate, and CaC's 4 fps scan and 8 fps
window are timed from it: a sample's rate is its metadata row's ``fps`` when their dataset rows
carry one, else the reward section's own ``source_fps`` (set it: Wan-2.1 16, Wan2.2 / LTX-2 24);
with neither, the call raises one line naming the key, never reading at the reward's default 16.

Raw scales differ (CaC 0–1, UnifiedReward v1 1–4): a weighted sum of rewards whose
``score_range`` differ is warned about at build time; ``ur_cac`` is the paper's combination on
one scale (CaC §4.2).

Without :func:`install` (a manual edit of their ``multi_score``, or another trainer), the
factories behave the same; the ``invalid`` policy of :func:`configure` can also be
``group_mean`` (fill within the call; correct only when each prompt's whole group is in one
call) or ``fail``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from cac_align.integrations import adapter
from cac_align.integrations.adapter import INVALID_POLICIES, loaded_models, release_models
from cac_align.rewards.base import RewardError, failure_summary
from cac_align.rewards.registry import REWARDS

__all__ = [
    "INVALID_POLICIES",
    "SCORE_FUNCTIONS",
    "cac_score",
    "configure",
    "install",
    "loaded_models",
    "multi_score",
    "release_models",
    "nan_aware_update",
    "uninstall",
    "unified_reward_score",
    "ur_cac_score",
]

log = logging.getLogger(__name__)

INVALID_KEY = "invalid"  # the per-sample flag added to the score dict (logged as reward_invalid)

# One slot per registered reward (cac, unified_reward, ur_cac, ...): the names config.reward_fn
# can use. Their factories are functions named in advance, so a sections file cannot add names.
_SLOTS = adapter.RewardSlots(fixed_names=True, where="flow_grpo")
_settings = _SLOTS.settings  # {"sections": ..., "invalid": ...}
_fill = adapter.fill_policy
_on_device = adapter.on_device


def configure(sections: Mapping[str, Any] | str | Path | None = None, invalid: str = "drop") -> None:
    """Choose the models behind the factories (defaults: the paper's real checkpoints).

    Args:
        sections: reward sections by factory name, e.g. ``{"cac": {"name": "cac", "model":
            {"name": "runs/cac_stage3"}}}``, or a YAML file holding such a mapping. Names not
            given keep their defaults. Every section is validated now, without loading models.
        invalid: "drop" (NaN; default), "group_mean" or "fail" (module docstring).
    """
    _SLOTS.configure(sections, invalid)


# Each of our rewards' failures in its latest call in this process (name -> index -> why): a
# stop raised later, where only NaN rewards are left (the stat tracker), names them.
_last_failures: dict[str, dict[int, str]] = {}


def _failures_so_far() -> str:
    said = [f"{name}: {failure_summary(errors)}" for name, errors in _last_failures.items() if errors]
    return "; ".join(said) if said else "no reason was recorded in this process (the rewards ran elsewhere?)"


def _factory(name: str) -> Callable[[Any], Callable]:
    def factory(device: Any = None) -> Callable:
        score = _SLOTS.scorer(name, device)
        stated_fps = adapter.section_fps(_SLOTS.section(name))  # the section's own source_fps, not the reward's default

        def _fn(images: Any, prompts: Any, metadata: Any = None) -> tuple[np.ndarray, dict]:
            # The call's own errors raise; a crash inside the reward makes the call's samples
            # invalid and the trainer goes on (one rank raising would leave the others waiting
            # at a gather): see adapter.RewardSlots.scorer.
            # Their arrays' frame rate: a metadata row's fps (their dataset rows rarely carry one),
            # else the section's source_fps, else the call is refused naming the key: never a guess.
            metadata = adapter.frame_rates(f"flow_grpo {name}", f"source_fps in the {name!r} reward section (or fps in the trainer's metadata)",
                                           images, prompts, metadata, stated_fps)
            scored = score(images, prompts, metadata)
            _last_failures[name] = dict(scored.errors)
            return np.asarray(scored.scores, dtype=np.float32), scored.info()

        _fn.reward = score.reward  # type: ignore[attr-defined]  # for scale checks and inspection
        return _fn

    factory.__name__ = f"{name}_score"
    factory.__doc__ = f"Flow-GRPO factory: ``{name}_score(device) -> fn(images, prompts, metadata) -> (scores, info)``."
    return factory


# Every registered reward is a factory (docs/rewards.md lists them); the three the paper uses
# are also module attributes.
SCORE_FUNCTIONS: dict[str, Callable[[Any], Callable]] = {name: _factory(name) for name in sorted(REWARDS)}
cac_score = SCORE_FUNCTIONS["cac"]
unified_reward_score = SCORE_FUNCTIONS["unified_reward"]
ur_cac_score = SCORE_FUNCTIONS["ur_cac"]


def _combine(device: Any, score_dict: Mapping[str, float], theirs: Callable | None) -> Callable:
    """A Flow-GRPO combiner over our names and, through ``theirs``, any other names."""
    if not score_dict:
        raise ValueError("score_dict is empty: name at least one reward, e.g. {'ur_cac': 1.0}")
    ours = {name: w for name, w in score_dict.items() if name in SCORE_FUNCTIONS}
    others = {name: w for name, w in score_dict.items() if name not in SCORE_FUNCTIONS}
    if others and theirs is None:
        raise ValueError(f"unknown reward(s) {sorted(others)}; available: {sorted(SCORE_FUNCTIONS)}")
    fns = {name: SCORE_FUNCTIONS[name](device) for name in ours}
    their_fn = theirs(device, others) if others else None
    adapter.warn_mixed_scales(score_dict, {name: fn.reward for name, fn in fns.items()}, "reward_fn", "'avg'", stacklevel=3)

    def _fn(images: Any, prompts: Any, metadata: Any = None, ref_images: Any = None, only_strict: bool = True) -> tuple[dict, dict]:
        del ref_images  # accepted for signature compatibility; unused by video rewards
        details: dict[str, Any] = {}
        infos: dict[str, dict] = {}
        if their_fn is not None:
            their_details, _ = their_fn(images, prompts, metadata, only_strict=only_strict)
            details.update({k: v for k, v in their_details.items() if k != "avg"})
        invalid = np.zeros(len(images), dtype=bool)
        for name in ours:
            scores, info = fns[name](images, prompts, metadata)
            details[name] = scores
            infos[name] = info
            invalid |= ~np.asarray(info["valid"], dtype=bool)  # a filled (group_mean) sample stays flagged
        _last_failures.clear()  # this combiner's rewards only: what a stop of this step names
        _last_failures.update({name: info["errors"] for name, info in infos.items()})
        if only_strict:  # their training calls (eval passes only_strict=False)
            _guard_tracking(bool(invalid.any()))
        total = np.zeros(len(images), dtype=np.float64)
        for name, weight in score_dict.items():
            total = total + weight * np.asarray(details[name], dtype=np.float64)
        details["avg"] = total.astype(np.float32)  # NaN where any of our rewards is invalid
        details[INVALID_KEY] = invalid.astype(np.float32)
        return details, infos

    return _fn


def multi_score(device: Any, score_dict: Mapping[str, float]) -> Callable:
    """Flow-GRPO's combiner shape over our factories.

    Args:
        device: where in-process reward models go (Flow-GRPO passes ``accelerator.device``).
        score_dict: ``{name: weight}`` with names from :data:`SCORE_FUNCTIONS`.

    Returns:
        ``fn(images, prompts, metadata, ref_images=None, only_strict=True) -> (scores, info)``
        where ``scores`` maps each name to its (B,) float32 array, ``"avg"`` to the weighted sum
        ``sum_k weight_k * scores_k`` (NaN for a sample any reward could not score) and
        ``"invalid"`` to 1.0 for such samples; ``info`` maps each name to its factory's info.
        (``ur_cac`` is already the paper's average of the normalized UR and CaC scores; use it
        alone with weight 1 to train as the paper does.)
    """
    return _combine(device, score_dict, None)


# ---------------------------------------------------------------------------------------
# install: their multi_score and stat tracker, patched in place
# ---------------------------------------------------------------------------------------
_ORIGINAL = "_cac_align_original"

# Whether install() is in force in this process, and how many of their trackers were built since.
# Their trainer builds its PerPromptStatTracker before the first reward call only when per-prompt
# tracking is on; with it off (config.per_prompt_stat_tracking=False, which their script also sets
# by itself at one sample per prompt) advantages are (avg - mean) / std over the whole step, so
# one NaN makes every advantage NaN and their mask (advantage != 0) keeps them all.
_tracking = {"installed": False, "trackers": 0, "warned": False}
_TRACKING_OFF = (
    "Flow-GRPO's per-prompt stat tracking is off in this process (no PerPromptStatTracker was built: "
    "config.per_prompt_stat_tracking=False, or one sample per prompt, where their script turns it off). "
    "Their global advantages cannot leave out a sample a reward could not score: one such sample makes "
    "every advantage NaN. Turn per-prompt tracking on (config.per_prompt_stat_tracking=True with "
    "num_image_per_prompt > 1)."
)


def _guard_tracking(any_invalid: bool) -> None:
    """On a training reward call after :func:`install`: warn once when per-prompt tracking is off,
    and refuse (raise) at the first invalid sample then, instead of letting NaN train."""
    if not _tracking["installed"] or _tracking["trackers"] > 0:
        return
    if any_invalid:
        raise RewardError(
            _TRACKING_OFF + f" A sample of this step could not be scored ({_failures_so_far()}); stopping rather than training on NaN."
        )
    if not _tracking["warned"]:
        _tracking["warned"] = True
        log.warning(_TRACKING_OFF + " Training stops at the first sample a reward cannot score.")
        warnings.warn(_TRACKING_OFF, stacklevel=3)


def _counting_init(original: Callable) -> Callable:
    """Their tracker's ``__init__``, counting the trackers built (see :func:`_guard_tracking`)."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _tracking["trackers"] += 1

    setattr(__init__, _ORIGINAL, original)
    return __init__


def nan_aware_update(original: Callable) -> Callable:
    """Wrap a ``PerPromptStatTracker.update`` so NaN rewards are invalid samples.

    Every argument is forwarded as given, positional or keyword, for both of their signatures:
    ``update(self, prompts, rewards, type='grpo')`` (before GARDO) and ``update(self, prompts,
    rewards, dists=None, type='grpo')`` (now; ``type`` one of 'grpo', 'gardo', 'rwr', 'sft',
    'dpo'). When every reward is finite, the result is exactly ``original``'s. Otherwise the
    invalid samples get advantage 0 and are left out of the call: ``original`` sees the valid
    samples' prompts, rewards and (if given) ``dists`` rows only, and its advantages go back to
    their places. ``rewards`` may be ``(N,)`` or ``(N, T)`` (Flow-GRPO subtracts a per-timestep
    KL reward); a row with any non-finite entry is invalid. Raises :class:`RewardError` when no
    sample is valid.
    """
    signature = inspect.signature(original)
    names = list(signature.parameters)
    if len(names) < 3:
        raise ValueError(f"expected PerPromptStatTracker.update(self, prompts, rewards, ...), got update{signature}")
    prompts_name, rewards_name = names[1], names[2]

    @functools.wraps(original)
    def update(*args: Any, **kwargs: Any) -> np.ndarray:
        bound = signature.bind(*args, **kwargs)
        rewards = np.asarray(bound.arguments[rewards_name], dtype=np.float64)
        valid = np.isfinite(rewards.reshape(len(rewards), -1)).all(axis=1)
        if valid.all():
            return original(*args, **kwargs)
        if not valid.any():
            raise RewardError(
                f"none of the {len(rewards)} samples of this step has a valid reward: every reward call failed "
                f"(e.g. a dead server or a wrong checkpoint). The latest calls in this process: {_failures_so_far()}"
            )
        bound.arguments[prompts_name] = np.asarray(bound.arguments[prompts_name])[valid]
        bound.arguments[rewards_name] = rewards[valid]
        if bound.arguments.get("dists") is not None:  # GARDO's per-sample features
            bound.arguments["dists"] = np.asarray(bound.arguments["dists"])[valid]
        advantages = np.zeros_like(rewards)
        advantages[valid] = np.asarray(original(*bound.args, **bound.kwargs), dtype=np.float64)
        return advantages

    setattr(update, _ORIGINAL, original)
    return update


def install(
    rewards_module: ModuleType,
    stat_tracking_module: ModuleType,
    sections: Mapping[str, Any] | str | Path | None = None,
) -> None:
    """Make our reward names work inside a Flow-GRPO checkout (module docstring).

    Args:
        rewards_module: their ``flow_grpo.rewards`` (its ``multi_score`` is wrapped).
        stat_tracking_module: their ``flow_grpo.stat_tracking`` (``PerPromptStatTracker.update``
            is made NaN-aware on the class itself, so a class imported before this call is
            patched too; its ``__init__`` counts the trackers built, so that a training call
            can tell that per-prompt tracking is off: see :func:`_guard_tracking`).
        sections: which models back our names (see :func:`configure`); None keeps the current
            configuration. The invalid policy is always "drop" (NaN) once installed.

    Calling it again is harmless (nothing is wrapped twice); :func:`uninstall` restores both.
    """
    original = getattr(rewards_module, "multi_score", None)
    tracker = getattr(stat_tracking_module, "PerPromptStatTracker", None)
    if not callable(original) or tracker is None or not callable(getattr(tracker, "update", None)):
        raise ValueError(
            "install() needs Flow-GRPO's flow_grpo.rewards (with multi_score) and flow_grpo.stat_tracking "
            f"(with PerPromptStatTracker); got {getattr(rewards_module, '__name__', rewards_module)!r} and "
            f"{getattr(stat_tracking_module, '__name__', stat_tracking_module)!r}"
        )
    if sections is None and _settings["invalid"] != "drop":
        log.warning("install(): invalid=%r replaced by 'drop': the installed tracker needs NaN for invalid samples", _settings["invalid"])
    configure(_settings["sections"] if sections is None else sections, invalid="drop")
    original = getattr(original, _ORIGINAL, original)

    def installed_multi_score(device: Any, score_dict: Mapping[str, float]) -> Callable:
        if not any(name in SCORE_FUNCTIONS for name in score_dict):
            return original(device, score_dict)  # only their names: exactly their function
        return _combine(device, score_dict, original)

    setattr(installed_multi_score, _ORIGINAL, original)
    installed_multi_score.__doc__ = f"Flow-GRPO's multi_score with cac_align's names {sorted(SCORE_FUNCTIONS)} added."
    rewards_module.multi_score = installed_multi_score
    if not hasattr(tracker.update, _ORIGINAL):
        tracker.update = nan_aware_update(tracker.update)
    if not hasattr(tracker.__init__, _ORIGINAL):
        tracker.__init__ = _counting_init(tracker.__init__)
    _tracking["installed"] = True


def uninstall(rewards_module: ModuleType, stat_tracking_module: ModuleType) -> None:
    """Undo :func:`install` (their functions back as they were)."""
    multi = getattr(rewards_module, "multi_score", None)
    if hasattr(multi, _ORIGINAL):
        rewards_module.multi_score = getattr(multi, _ORIGINAL)
    tracker = getattr(stat_tracking_module, "PerPromptStatTracker", None)
    if tracker is not None:
        for method in ("update", "__init__"):
            if hasattr(getattr(tracker, method), _ORIGINAL):
                setattr(tracker, method, getattr(getattr(tracker, method), _ORIGINAL))
    _tracking.update(installed=False, trackers=0, warned=False)


# ---------------------------------------------------------------------------------------
# The launcher: `python -m cac_align.integrations.flow_grpo --rewards FILE SCRIPT [ARGS...]`
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    adapter.launch("python -m cac_align.integrations.flow_grpo", "Flow-GRPO", ("flow_grpo.rewards", "flow_grpo.stat_tracking"), install, argv)


if __name__ == "__main__":
    # run from the imported module, not this `__main__` copy: the installed rewards, their
    # shared models and settings then live in the one module everybody imports
    from cac_align.integrations.flow_grpo import main as _main

    _main()
