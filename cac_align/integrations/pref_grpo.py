"""Our rewards inside the Pref-GRPO trainer (github.com/CodeGoat24/Pref-GRPO), editing none of its files.

How their trainer uses rewards (read at commit 3e787f6; ``disp`` = ``fastvideo/rewards/dispatcher.py``,
``w21`` = ``fastvideo/train_wan21.py``):

- ``--reward_spec`` names rewards with weights (``'{"videoalign": 0.7, "clip": 0.3}'``); each name
  must be in the module-level set ``SUPPORTED_REWARDS`` (disp:40-55, checked in
  ``RewardDispatcher.__init__``, disp:149-153). There is no plug-in point: every supported reward is
  a branch of ``compute_rewards``.
- Every rank builds its own ``RewardDispatcher(args=..., device=<cuda index>, reward_weights=...,
  modality="video")`` (w21:1026-1032). Per step it asks ``build_reward_inputs()`` for one empty list
  per reward (disp:262-263), writes each sampled video as an mp4 (16 fps, diffusers'
  ``export_to_video``) and appends ``{"path", "prompt"}`` to every list (w21:660-670), then calls
  ``compute_rewards(reward_inputs) -> (reward_tensors, dim_reward)`` once (w21:672): one float 1-D
  tensor of length B per reward on the rank's device, and per-dimension lists that rank 0 logs.
- ``compute_weighted_advantages`` standardizes each reward on its own (per prompt group of
  ``num_generations`` contiguous samples with ``--use_group``, else over all ranks), then sums
  ``weight * advantage`` (disp:614-703); ``--apply_gdpo`` re-standardizes the sum over all ranks.
- Nothing catches a raise (the run stops), and nothing masks a sample: one NaN reward makes every
  advantage of the step NaN under their defaults and under their shipped scripts (GDPO).

:func:`install` adds our reward names to that dispatcher, on the class and its module:

1. **Names.** Every slot of ours (``cac``, ``unified_reward``, ``ur_cac``, any registered reward,
   and any name your sections file adds) joins ``SUPPORTED_REWARDS``; ``--reward_spec
   '{"ur_cac": 1.0}'`` then trains as the paper does, and their names keep working beside ours.
2. **Scoring.** ``__init__`` builds our rewards named in the spec on the dispatcher's device (one
   model copy per process); ``build_reward_inputs`` adds a list per name of ours; ``compute_rewards``
   scores our lists in one call each (in input order: the order of the mp4s the trainer wrote),
   leaves theirs to their code, and adds ``<name>`` to ``reward_tensors`` (float32) and
   ``<name>`` and ``<name>_invalid`` (1.0 per invalid sample) to ``dim_reward`` (logged by rank 0).
3. **Invalid samples.** Their trainer can neither mask nor drop a sample, so NaN (our ``drop``) is
   refused. ``group_mean`` (the default) gives an invalid sample the mean of the valid samples of
   its prompt group in the call: with ``--use_group`` (their scripts' setting; groups are the
   ``num_generations`` contiguous samples of the rank's call) its advantage for that reward is
   exactly 0, so it teaches nothing. Without ``--use_group`` advantages are global and the fill is
   only close. Every fill is logged with its reason and counted in ``dim_reward``; a call in which
   more than ``max_invalid_fraction`` of the samples are invalid, or none is valid, raises
   :class:`~cac_align.rewards.base.RewardError` and stops the run (their trainer stops on any
   raise), rather than training a step on made-up numbers. ``fail`` stops at the first.

Launch with no code (under ``torchrun -m`` the same)::

    python -m cac_align.integrations.pref_grpo --rewards cac_rewards.yaml \\
        fastvideo/train_wan21.py ... --reward_spec '{"ur_cac": 1.0}'
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from cac_align.integrations import adapter
from cac_align.rewards.base import RewardError

__all__ = ["configure", "install", "main", "uninstall"]

log = logging.getLogger(__name__)

POLICIES = ("group_mean", "fail")
_SLOTS = adapter.RewardSlots(where="pref_grpo")
_SLOTS.configure(None, "group_mean")
_settings: dict[str, Any] = {"max_invalid_fraction": 0.5}
_ORIGINAL = "_cac_align_original"
_counts = {"scored": 0, "invalid": 0}


def configure(sections: Mapping[str, Any] | str | Path | None = None, invalid: str = "group_mean", max_invalid_fraction: float = 0.5) -> None:
    """Choose the models behind our names and what happens to samples they cannot score.

    Args:
        sections: reward sections by name (a mapping or a YAML file); a new name is a new reward
            name in ``--reward_spec`` (``cac_8b: {name: cac, model: {name: runs/cac_8b}}``).
        invalid: "group_mean" (default) or "fail" (module docstring); "drop" is refused here.
        max_invalid_fraction: a call with more invalid samples than this fraction stops the run.
    """
    if invalid not in POLICIES:
        raise ValueError(
            f"invalid must be one of {POLICIES} for Pref-GRPO, got {invalid!r}: its trainer cannot mask or drop a "
            "sample, and one NaN reward makes every advantage of the step NaN"
        )
    if not 0.0 <= float(max_invalid_fraction) <= 1.0:
        raise ValueError(f"max_invalid_fraction must be in [0, 1], got {max_invalid_fraction}")
    _SLOTS.configure(sections, invalid)
    _settings["max_invalid_fraction"] = float(max_invalid_fraction)


def invalid_counts() -> dict[str, int]:
    """Samples scored and samples invalid (filled or not) by our rewards in this process so far."""
    return dict(_counts)


def _groups(args: Any, n: int) -> list[dict] | None:
    """Their prompt groups within one rank's call (``--use_group``: contiguous ``num_generations``)."""
    size = int(getattr(args, "num_generations", 0) or 0)
    if getattr(args, "use_group", False) and size > 0:
        return [{"group": i // size} for i in range(n)]
    return None  # no groups of theirs: a prompt's samples (by its text) are its group


def _score_ours(dispatcher: Any, name: str, items: list[Mapping]) -> tuple[Any, dict[str, list[float]]]:
    import torch

    scorer = dispatcher._cac_align_scorers[name]
    paths = [str(item["path"]) for item in items]
    prompts = [item["prompt"] for item in items]
    scored = scorer(paths, prompts, _groups(getattr(dispatcher, "args", None), len(paths)))
    n_invalid = int((~scored.valid).sum())
    _counts["scored"] += len(paths)
    _counts["invalid"] += n_invalid
    if n_invalid:
        fraction = n_invalid / len(paths)
        reasons = "; ".join(f"{paths[i]}: {why}" for i, why in list(scored.errors.items())[:3])
        if fraction > _settings["max_invalid_fraction"]:
            raise RewardError(
                f"reward {name!r}: {n_invalid} of {len(paths)} samples of this step could not be scored "
                f"(more than max_invalid_fraction={_settings['max_invalid_fraction']:g}); Pref-GRPO cannot leave a "
                f"sample out, so the run stops rather than train on filled rewards. First: {reasons}"
            )
        log.warning(
            "reward %r: %d of %d samples could not be scored and got their group's mean (advantage 0 with "
            "--use_group): %s (%d invalid of %d in this process so far)",
            name, n_invalid, len(paths), reasons, _counts["invalid"], _counts["scored"],
        )
    tensor = torch.as_tensor(np.asarray(scored.scores, dtype=np.float32), device=dispatcher.device)
    dims = {name: tensor.tolist(), f"{name}_invalid": (~scored.valid).astype(np.float32).tolist()}
    return tensor, dims


def install(dispatcher_module: ModuleType, sections: Mapping[str, Any] | str | Path | None = None) -> None:
    """Add our reward names to Pref-GRPO's ``fastvideo.rewards.dispatcher`` (module docstring).

    Args:
        dispatcher_module: their ``fastvideo.rewards.dispatcher`` (with ``SUPPORTED_REWARDS`` and
            ``RewardDispatcher``); the class is patched in place, so a ``from ... import
            RewardDispatcher`` made before this call is covered.
        sections: which models back our names (see :func:`configure`; the current invalid policy
            is kept). None keeps the current configuration.

    Calling it again is harmless; :func:`uninstall` restores their class and name set.
    """
    supported = getattr(dispatcher_module, "SUPPORTED_REWARDS", None)
    cls = getattr(dispatcher_module, "RewardDispatcher", None)
    if not isinstance(supported, set) or cls is None or not all(callable(getattr(cls, m, None)) for m in ("build_reward_inputs", "compute_rewards")):
        raise ValueError(
            "install() needs Pref-GRPO's fastvideo.rewards.dispatcher (with the set SUPPORTED_REWARDS and the class "
            f"RewardDispatcher); got {getattr(dispatcher_module, '__name__', dispatcher_module)!r}"
        )
    if sections is not None:
        configure(sections, _SLOTS.invalid, _settings["max_invalid_fraction"])
    ours = set(_SLOTS.names())
    already = getattr(dispatcher_module, "_cac_align_names", set())
    clash = sorted((ours & supported) - already)
    if clash:
        raise ValueError(f"reward name(s) {clash} are Pref-GRPO's own; name your sections differently")
    supported -= already - ours  # a name an earlier install added and this one does not have
    supported |= ours
    dispatcher_module._cac_align_names = ours

    if not hasattr(cls.__init__, _ORIGINAL):
        cls.__init__ = _wrap_init(cls.__init__)
        cls.build_reward_inputs = _wrap_inputs(cls.build_reward_inputs)
        cls.compute_rewards = _wrap_compute(cls.compute_rewards)


def uninstall(dispatcher_module: ModuleType) -> None:
    """Undo :func:`install`."""
    cls = dispatcher_module.RewardDispatcher
    for method in ("__init__", "build_reward_inputs", "compute_rewards"):
        if hasattr(getattr(cls, method), _ORIGINAL):
            setattr(cls, method, getattr(getattr(cls, method), _ORIGINAL))
    dispatcher_module.SUPPORTED_REWARDS -= getattr(dispatcher_module, "_cac_align_names", set())
    dispatcher_module._cac_align_names = set()


def _ours(dispatcher: Any) -> list[str]:
    return list(getattr(dispatcher, "_cac_align_scorers", {}))


def _wrap_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)  # checks every name against SUPPORTED_REWARDS (ours are in it)
        names = [name for name in self.reward_weights if name in _SLOTS.settings["sections"]]
        self._cac_align_scorers = {name: _SLOTS.scorer(name, self.device) for name in names}

    setattr(__init__, _ORIGINAL, original)
    return __init__


def _wrap_inputs(original: Callable) -> Callable:
    @functools.wraps(original)
    def build_reward_inputs(self: Any) -> dict:
        inputs = original(self)
        for name in _ours(self):
            inputs[name] = []
        return inputs

    setattr(build_reward_inputs, _ORIGINAL, original)
    return build_reward_inputs


def _wrap_compute(original: Callable) -> Callable:
    @functools.wraps(original)
    def compute_rewards(self: Any, reward_inputs: dict) -> tuple[dict, dict]:
        ours = [name for name in _ours(self) if name in reward_inputs]
        theirs = {k: v for k, v in reward_inputs.items() if k not in ours}
        if any(theirs.values()) or not ours:
            reward_tensors, dim_reward = original(self, theirs)  # their "No reward inputs" error stays theirs
        else:
            reward_tensors, dim_reward = {}, {}
        for name in ours:
            if not reward_inputs[name]:
                raise ValueError(f"no reward inputs for {name!r}")
            reward_tensors[name], dims = _score_ours(self, name, reward_inputs[name])
            dim_reward.update(dims)
        return reward_tensors, dim_reward

    setattr(compute_rewards, _ORIGINAL, original)
    return compute_rewards


def main(argv: list[str] | None = None) -> None:
    adapter.launch("python -m cac_align.integrations.pref_grpo", "Pref-GRPO", ("fastvideo.rewards.dispatcher",), install, argv)


if __name__ == "__main__":
    # run from the imported module, not this `__main__` copy: the installed rewards and their
    # shared models then live in the one module everybody imports
    from cac_align.integrations.pref_grpo import main as _main

    _main()
