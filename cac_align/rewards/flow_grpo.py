"""Drop-in reward functions for Flow-GRPO-style trainers.

The public Flow-GRPO code configures rewards as ``config.reward_fn = {name: weight}`` and
builds them with ``multi_score(device, score_dict)``, which looks each name up in a table of
factories ``factory(device) -> fn(images, prompts, metadata) -> (scores, info)``. Its trainer
submits the combined function to a thread pool while the next batch samples, with videos as a
float tensor ``(B, F, C, H, W)`` in [0, 1], and reads back ``(dict of name -> scores plus
"avg", info)``. This module provides factories and a combiner of exactly those shapes:

    # in flow_grpo/rewards.py of a Flow-GRPO checkout
    from cac_align.rewards import flow_grpo as cac_rewards

    cac_rewards.configure("examples/flow_grpo_rewards.yaml")   # which models; optional
    score_functions.update(cac_rewards.SCORE_FUNCTIONS)        # adds cac, unified_reward, ur_cac

    # in the training config
    config.reward_fn = {"ur_cac": 1.0}

Every call returns a float32 numpy array of length B. Flow-GRPO's advantage code cannot take
NaN, so invalid samples follow ``invalid`` (set in :func:`configure`):

- ``group_mean`` (default): an invalid sample gets the mean score of the valid samples with
  the same prompt in this call, or of the whole call if its prompt has none; a call with no
  valid sample raises :class:`~cac_align.rewards.base.RewardError` rather than invent scores.
- ``drop``: invalid samples are NaN (for trainers that mask them).
- ``fail``: raise on any invalid sample.

``info`` always says which samples were invalid and why (``invalid_indices``, ``errors``) and
which were filled (``filled_indices``), so nothing is silently replaced.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from cac_align.rewards.base import RewardError, build_reward, check_prompts, group_keys, reward_config
from cac_align.rewards.normalize import fill_invalid

__all__ = ["SCORE_FUNCTIONS", "cac_score", "configure", "multi_score", "unified_reward_score", "ur_cac_score"]

INVALID_POLICIES = ("group_mean", "drop", "fail")

_DEFAULT_SECTIONS: dict[str, dict[str, Any]] = {
    "cac": {"name": "cac"},
    "unified_reward": {"name": "unified_reward"},
    "ur_cac": {"name": "ur_cac"},
}
_settings: dict[str, Any] = {"sections": copy.deepcopy(_DEFAULT_SECTIONS), "invalid": "group_mean"}
_settings_lock = threading.Lock()


def configure(sections: Mapping[str, Any] | str | Path | None = None, invalid: str = "group_mean") -> None:
    """Choose the models behind the factories (defaults: the paper's real checkpoints).

    Args:
        sections: reward sections by factory name, e.g. ``{"cac": {"name": "cac", "model":
            {"name": "runs/cac_stage3"}}}``, or a YAML file holding such a mapping. Names not
            given keep their defaults. Every section is validated now, without loading models.
        invalid: "group_mean", "drop" or "fail" (module docstring).
    """
    if invalid not in INVALID_POLICIES:
        raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {invalid!r}")
    if isinstance(sections, (str, Path)):
        from omegaconf import OmegaConf

        path = Path(sections)
        if not path.is_file():
            raise ValueError(f"reward sections file not found: {path}")
        sections = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[assignment]
        if not isinstance(sections, Mapping):
            raise ValueError(f"{path}: expected a mapping of factory name -> reward section")
    merged = copy.deepcopy(_DEFAULT_SECTIONS)
    for name, section in dict(sections or {}).items():
        if name not in SCORE_FUNCTIONS:
            raise ValueError(f"unknown factory {name!r}; configurable: {sorted(SCORE_FUNCTIONS)}")
        reward_config(section, f"flow_grpo {name}")  # typos fail here, not mid-training
        merged[name] = dict(section)
    with _settings_lock:
        _settings["sections"] = merged
        _settings["invalid"] = invalid


def _on_device(section: Any, device: Any) -> Any:
    """The section with every in-process model placed on ``device`` (servers are left alone)."""
    if isinstance(section, Mapping):
        out = {k: _on_device(v, device) for k, v in section.items()}
        model = out.get("model")
        if isinstance(model, Mapping) and model.get("backend", "hf") == "hf":
            out["model"] = {**model, "device": str(device)}
        return out
    if isinstance(section, list):
        return [_on_device(v, device) for v in section]
    return section


def _fill(scores: np.ndarray, valid: np.ndarray, prompts: list, metadata: Any, policy: str) -> tuple[np.ndarray, list[int]]:
    if policy == "drop" or valid.all():
        return scores, []
    if policy == "fail":
        raise RewardError(f"invalid rewards for samples {np.flatnonzero(~valid).tolist()} with invalid='fail'")
    if not valid.any():
        raise RewardError("no sample in this reward call could be scored; refusing to invent rewards")
    filled, by_group = fill_invalid(scores, valid, group_keys(prompts, metadata))
    rest = ~valid & ~by_group
    filled[rest] = float(scores[valid].mean())  # groups with no valid member: the call's mean
    return filled, np.flatnonzero(~valid).tolist()


def _factory(name: str) -> Callable[[Any], Callable]:
    def factory(device: Any = None) -> Callable:
        with _settings_lock:
            section = copy.deepcopy(_settings["sections"][name])
            policy = _settings["invalid"]
        reward = build_reward(_on_device(section, device) if device is not None else section, f"flow_grpo {name}")

        def _fn(images: Any, prompts: Any, metadata: Any = None) -> tuple[np.ndarray, dict]:
            prompts = check_prompts(len(images), prompts)
            out = reward(images, prompts, metadata)
            scores, filled = _fill(out.scores, out.valid, prompts, metadata, policy)
            info = {
                "valid": out.valid.tolist(),
                "invalid_indices": np.flatnonzero(~out.valid).tolist(),
                "errors": out.errors,
                "filled_indices": filled,
                "details": out.details,
            }
            return scores.astype(np.float32), info

        return _fn

    factory.__name__ = f"{name}_score"
    factory.__doc__ = f"Flow-GRPO factory: ``{name}_score(device) -> fn(images, prompts, metadata) -> (scores, info)``."
    return factory


cac_score = _factory("cac")
unified_reward_score = _factory("unified_reward")
ur_cac_score = _factory("ur_cac")

SCORE_FUNCTIONS: dict[str, Callable[[Any], Callable]] = {
    "cac": cac_score,
    "unified_reward": unified_reward_score,
    "ur_cac": ur_cac_score,
}


def multi_score(device: Any, score_dict: Mapping[str, float]) -> Callable:
    """Flow-GRPO's combiner shape over our factories.

    Args:
        device: where in-process reward models go (Flow-GRPO passes ``accelerator.device``).
        score_dict: ``{name: weight}`` with names from :data:`SCORE_FUNCTIONS`.

    Returns:
        ``fn(images, prompts, metadata, ref_images=None, only_strict=True) -> (scores, info)``
        where ``scores`` maps each name to its (B,) array and ``"avg"`` to the weighted sum
        ``sum_k weight_k * scores_k``, as Flow-GRPO's own combiner computes it; ``info`` maps
        each name to its factory's info. (``ur_cac`` is already the paper's average of the
        normalized UR and CaC scores; use it alone with weight 1 to train as the paper does.)
    """
    if not score_dict:
        raise ValueError("score_dict is empty: name at least one reward, e.g. {'ur_cac': 1.0}")
    unknown = sorted(set(score_dict) - set(SCORE_FUNCTIONS))
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; available: {sorted(SCORE_FUNCTIONS)}")
    fns = {name: SCORE_FUNCTIONS[name](device) for name in score_dict}

    def _fn(images: Any, prompts: Any, metadata: Any = None, ref_images: Any = None, only_strict: bool = True) -> tuple[dict, dict]:
        del ref_images, only_strict  # accepted for signature compatibility; unused by video rewards
        details: dict[str, np.ndarray] = {}
        infos: dict[str, dict] = {}
        total = None
        for name, weight in score_dict.items():
            scores, info = fns[name](images, prompts, metadata)
            details[name] = scores
            infos[name] = info
            total = weight * scores if total is None else total + weight * scores
        details["avg"] = np.asarray(total, dtype=np.float32)
        return details, infos

    return _fn
