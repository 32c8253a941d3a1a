"""Weighted combination of normalized rewards; ``ur_cac`` is the paper's alignment reward.

CaC §4.2: "we average the normalized scores of UR and CaC as the final reward". In general::

    combined_i = sum_k w_k * n_k(i) / sum_k w_k,      n_k = normalizer_k(raw scores of reward k)

Weights must be finite and > 0 (a component you do not want is left out, not weighted 0).
Videos are decoded once and every component sees the same decoded frames.

When a component could not score a sample (``valid`` False), the ``invalid`` policy decides:

- ``drop`` (default): the sample is invalid in the combined output (NaN, ``valid`` False).
  Best-of-N never picks it; a GRPO trainer leaves it out of its group.
- ``group_mean``: the missing normalized score is replaced by the mean of that component's
  normalized scores over the valid samples of the same group (same prompt); the sample stays
  valid and ``details[i]["imputed"]`` names the components that were filled. A sample with no
  valid component, or whose group has no valid value to borrow, is still invalid.
- ``fail``: raise :class:`~cac_align.rewards.base.RewardError` naming the samples and reasons.

``details[i]["components"][name]`` holds each component's raw and normalized score, validity,
error and its own details; ``info["invalid"][name]`` counts each component's failures in the
call and ``info["failures"][name]`` splits them by kind (``{"parse": 2, "backend": 1}``).
"""

from __future__ import annotations

import difflib
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cac_align.rewards.base import ErrorKind, Reward, RewardBase, RewardError, RewardOutput, check_prompts, group_keys, load_inputs
from cac_align.rewards.cac import CaCRewardConfig
from cac_align.rewards.normalize import FixedNormalizer, build_normalizer, fill_invalid
from cac_align.rewards.unified import FORMATS, UnifiedRewardConfig

__all__ = ["INVALID_POLICIES", "CombinedConfig", "CombinedReward", "UrCacConfig", "build_combined", "build_ur_cac", "combined_judges", "ur_cac_judges"]

INVALID_POLICIES = ("drop", "group_mean", "fail")


class CombinedReward(RewardBase):
    """The weighted average of normalized component rewards.

    Args:
        rewards: the components (each a :class:`Reward`; names must differ).
        weights: one per component, finite and > 0; they are divided by their sum.
        normalizers: one per component (see :mod:`cac_align.rewards.normalize`), or specs
            like ``{"name": "fixed", "low": 1, "high": 4}``.
        invalid: "drop", "group_mean" or "fail" (module docstring).
        source_fps: frame rate of array/tensor input without ``fps`` in metadata.
        name: the name outputs carry.
    """

    def __init__(
        self,
        rewards: Sequence[Reward],
        weights: Sequence[float] | None = None,
        normalizers: Sequence[Any] | None = None,
        invalid: str = "drop",
        source_fps: float | None = 16.0,
        name: str = "combined",
    ):
        rewards = list(rewards)
        if not rewards:
            raise ValueError("a combined reward needs at least one component")
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must differ, got {names}")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ValueError(f"{len(rewards)} rewards but {len(weights)} weights")
        for reward_name, weight in zip(names, weights):
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"weight of {reward_name!r} is {weight}: weights must be finite and > 0 (leave a component out instead of weighting it 0)"
                )
        normalizers = [{"name": "fixed", "low": 0.0, "high": 1.0}] * len(rewards) if normalizers is None else list(normalizers)
        if len(normalizers) != len(rewards):
            raise ValueError(f"{len(rewards)} rewards but {len(normalizers)} normalizers")
        if invalid not in INVALID_POLICIES:
            raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {invalid!r}")
        self.rewards = rewards
        self.components = tuple(names)  # what each sample's details["components"] holds (the Reward contract)
        self._modalities = {r.name: r.modality for r in rewards}  # what each component judges (trainers route by it)
        judged = set(self._modalities.values())
        self.modality = "video" if judged == {"video"} else "audio" if judged == {"audio"} else "both"
        self.reads_prompt = any(r.reads_prompt for r in rewards)
        self.needs_prompt = any(r.needs_prompt for r in rewards)  # a part that cannot score without it
        self.weights = np.array(weights) / sum(weights)
        self.normalizers = [build_normalizer(n, f"normalizer of {r}") for n, r in zip(normalizers, names)]
        self.invalid = invalid
        self.source_fps = source_fps
        self.name = name
        # [0, 1] when every component is mapped there by a clipping fixed normalizer; else unknown
        fixed = all(isinstance(n, FixedNormalizer) and n.clip for n in self.normalizers)
        self.score_range = (0.0, 1.0) if fixed else None
        self._lock = threading.Lock()

    def __call__(self, videos: Any, prompts: Sequence[str | None] | None = None, metadata: Any = None) -> RewardOutput:
        # 1. decode once; every component scores the same frames (undecodable ones fail in each)
        loaded = load_inputs(videos, metadata, self.source_fps, audio=self.modality != "video")
        prompts = check_prompts(len(loaded), prompts)
        groups = group_keys(prompts, metadata)
        n = len(loaded)
        with self._lock:
            # 2. raw scores of each component, then its normalized scores
            outputs = [reward(loaded, prompts, metadata) for reward in self.rewards]
            for reward, out in zip(self.rewards, outputs):
                if len(out) != n:
                    raise RewardError(f"component {reward.name!r} returned {len(out)} scores for {n} videos")
            normalized = np.stack([norm(out.scores, out.valid, groups) for norm, out in zip(self.normalizers, outputs)])
        valid_k = np.stack([out.valid for out in outputs]) & np.isfinite(normalized)  # (K, B)
        # 3. apply the invalid policy
        imputed = np.zeros_like(valid_k)
        if self.invalid == "fail" and not valid_k.all():
            problems = [
                f"sample {i} ({out.name}): {out.details[i].get('error', 'invalid')}"
                for i in range(n)
                for k, out in enumerate(outputs)
                if not valid_k[k, i]
            ]
            raise RewardError("invalid scores with invalid='fail': " + "; ".join(problems))
        if self.invalid == "group_mean":
            for k in range(len(outputs)):
                normalized[k], imputed[k] = fill_invalid(normalized[k], valid_k[k], groups)
            usable = valid_k.any(axis=0) & (valid_k | imputed).all(axis=0)
        else:
            usable = valid_k.all(axis=0)
        # 4. weighted average
        combined = np.where(usable, (self.weights[:, None] * np.nan_to_num(normalized)).sum(axis=0), np.nan)
        details = []
        for i in range(n):
            entry: dict[str, Any] = {
                "components": {
                    out.name: {
                        "raw": _num(out.scores[i]),
                        "normalized": _num(normalized[k, i]) if (valid_k[k, i] or imputed[k, i]) else None,
                        "valid": bool(out.valid[i]),
                        "error": out.details[i].get("error"),
                        "details": out.details[i],
                    }
                    for k, out in enumerate(outputs)
                },
                "imputed": [out.name for k, out in enumerate(outputs) if imputed[k, i]],
            }
            if not usable[i]:
                failed = [out for k, out in enumerate(outputs) if not valid_k[k, i]]
                reasons = [f"{out.name}: {out.details[i].get('error', 'invalid')}" for out in failed]
                entry["error"] = "; ".join(reasons) or "invalid"
                # the kind of the first component that failed ("video", "backend", "parse", ...)
                entry["error_kind"] = str(failed[0].details[i].get("error_kind", ErrorKind.SCORE)) if failed else "score"
            details.append(entry)
        info = {
            "invalid": {out.name: int((~valid_k[k]).sum()) for k, out in enumerate(outputs)},
            "failures": {out.name: out.failure_counts() for out in outputs},
            "imputed": {out.name: int(imputed[k].sum()) for k, out in enumerate(outputs)},
            "weights": {out.name: float(w) for out, w in zip(outputs, self.weights)},
            "modalities": dict(self._modalities),
        }
        sources = {k: v for out in outputs for k, v in out.info.get("prompt_sources", {}).items()}
        if sources:  # which question each prompted component asked (UnifiedReward)
            info["prompt_sources"] = sources
        return RewardOutput(self.name, combined, usable, details, info)

    @property
    def modalities(self) -> dict[str, str]:
        """What each component judges, by name (the Reward contract): trainers route each
        component's advantage to the latents of its modality."""
        return dict(self._modalities)

    def state_dict(self) -> dict[str, Any]:
        """State of the stateful normalizers (``running``), by component name, for checkpoints."""
        return {
            reward.name: norm.state_dict()
            for reward, norm in zip(self.rewards, self.normalizers)
            if norm.state_dict()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run continues its running statistics)."""
        for reward, norm in zip(self.rewards, self.normalizers):
            if reward.name in state:
                norm.load_state_dict(state[reward.name])

    def to(self, device: Any) -> "CombinedReward":
        """Move every component's in-process model (Best-of-N offloading)."""
        for reward in self.rewards:
            reward.to(device)
        return self


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# ---------------------------------------------------------------------------------------
# Recipe sections
# ---------------------------------------------------------------------------------------
@dataclass
class CombinedConfig:
    """Recipe section of ``name: combined``.

    Attributes:
        components: a list of reward sections, each with two extra keys: ``weight`` (default 1)
            and ``normalizer`` (default ``fixed`` over the reward's own ``score_range``: 1-4 for
            UnifiedReward v1, 0-1 for CaC; a reward without a fixed range must be given one).
        invalid: "drop", "group_mean" or "fail".
        source_fps: frame rate of array/tensor input.
    """

    components: list[Any] = field(default_factory=list)
    invalid: str = "drop"
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        from cac_align.rewards.registry import reward_config, section_keys

        if not self.components:
            raise ValueError("components: give at least one reward")
        if self.invalid not in INVALID_POLICIES:
            raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {self.invalid!r}")
        for k, component in enumerate(self.components):
            spec = dict(component)
            known = section_keys(spec.get("name"))
            if known is not None:  # a typo of a component's own keys (weight, normalizer) named as one
                keys = ["name", "weight", "normalizer", *known]
                for key in spec:
                    if key not in keys:
                        hint = difflib.get_close_matches(str(key), keys, n=1)
                        raise ValueError(f"components[{k}]: unknown key '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else "")
                                         + f" (known keys here: {', '.join(keys)})")
            weight = spec.pop("weight", 1.0)
            normalizer = spec.pop("normalizer", None)
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"components[{k}].weight must be a finite number > 0, got {weight!r}")
            if normalizer is not None:
                build_normalizer(normalizer, f"components[{k}].normalizer")
            reward_config(spec, f"components[{k}]")


@dataclass
class UrCacConfig:
    """Recipe section of ``name: ur_cac``: the paper's UR + CaC average (CaC §4.2).

    Attributes:
        unified_reward: the UnifiedReward section (default v1, 1–4 scale).
        cac: the CaC section.
        weights: [UR, CaC]; the paper averages them (0.5, 0.5).
        unified_reward_normalizer / cac_normalizer: how each is normalized. The defaults map
            the known scales to [0, 1]: UR's format scale (1–4 for v1, 1–5 for 2.0) when left
            unset, and CaC's [0, 1] (already a probability).
        invalid: "drop", "group_mean" or "fail".
        source_fps: frame rate of array/tensor input.
    """

    unified_reward: UnifiedRewardConfig = field(default_factory=UnifiedRewardConfig)
    cac: CaCRewardConfig = field(default_factory=CaCRewardConfig)
    weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    unified_reward_normalizer: dict[str, Any] | None = None
    cac_normalizer: dict[str, Any] = field(default_factory=lambda: {"name": "fixed", "low": 0.0, "high": 1.0})
    invalid: str = "drop"
    source_fps: float | None = 16.0

    def __post_init__(self) -> None:
        if len(self.weights) != 2:
            raise ValueError(f"weights holds [UR, CaC], got {list(self.weights)}")
        for weight in self.weights:
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"weights must be finite and > 0, got {list(self.weights)}")
        if self.invalid not in INVALID_POLICIES:
            raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {self.invalid!r}")
        if self.unified_reward_normalizer is None:
            fmt = FORMATS[self.unified_reward.version]
            self.unified_reward_normalizer = {"name": "fixed", "low": float(fmt.low), "high": float(fmt.high)}
        build_normalizer(dict(self.unified_reward_normalizer), "unified_reward_normalizer")
        build_normalizer(dict(self.cac_normalizer), "cac_normalizer")


def _scale_of(reward: Reward, where: str) -> dict[str, Any]:
    """The default normalizer of a component: ``fixed`` over the reward's own ``score_range``
    (UnifiedReward v1 1-4, CaC 0-1, ...; [0, 1] when it gives none); a reward with an unbounded
    scale must be given one."""
    scale = reward.score_range
    if scale is None:  # a reward that does not say: assumed in [0, 1], as before score ranges existed
        return {"name": "fixed", "low": 0.0, "high": 1.0}
    low, high = scale
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(
            f"{where}: {reward.name}'s scores have no fixed range ({low}, {high}); give it a normalizer, "
            "e.g. normalizer: {name: group} (per prompt, for GRPO) or {name: running}"
        )
    return {"name": "fixed", "low": float(low), "high": float(high)}


def build_combined(config: CombinedConfig, key: str = "reward") -> CombinedReward:
    from cac_align.rewards.registry import build_reward

    rewards, weights, normalizers = [], [], []
    for k, component in enumerate(config.components):
        spec = dict(component)
        weights.append(float(spec.pop("weight", 1.0)))
        normalizer = spec.pop("normalizer", None)
        reward = build_reward(spec, f"{key}.components[{k}]")
        normalizers.append(normalizer or _scale_of(reward, f"{key}.components[{k}]"))
        rewards.append(reward)
    return CombinedReward(rewards, weights, normalizers, config.invalid, config.source_fps)


def build_ur_cac(config: UrCacConfig, key: str = "reward") -> CombinedReward:
    from cac_align.rewards import cac, unified

    ur = unified.build(config.unified_reward, f"{key}.unified_reward")
    cac_reward = cac.build(config.cac, f"{key}.cac")
    return CombinedReward(
        [ur, cac_reward],
        config.weights,
        [dict(config.unified_reward_normalizer or {}), dict(config.cac_normalizer)],
        config.invalid,
        config.source_fps,
        name="ur_cac",
    )


def combined_judges(config: CombinedConfig, where: str, video: Any) -> list[Any]:
    """Every component's models, in order (:mod:`cac_align.rewards.judges`)."""
    from cac_align.rewards.registry import reward_judges

    found: list[Any] = []
    for k, component in enumerate(config.components):
        spec = {key: value for key, value in dict(component).items() if key not in ("weight", "normalizer")}
        found += reward_judges(spec, f"{where}.components[{k}]", video)
    return found


def ur_cac_judges(config: UrCacConfig, where: str, video: Any) -> list[Any]:
    """UnifiedReward's model and CaC's (:mod:`cac_align.rewards.judges`)."""
    from cac_align.rewards import cac, unified

    return unified.judges(config.unified_reward, f"{where}.unified_reward", video) + cac.judges(config.cac, f"{where}.cac", video)


from cac_align.rewards.registry import register_reward  # noqa: E402  (the registry imports this module)

register_reward(
    "ur_cac",
    "cac_align.rewards.combine:UrCacConfig",
    "cac_align.rewards.combine:build_ur_cac",
    "the paper's alignment reward: average of normalized UnifiedReward and CaC (CaC §4.2)",
    judges="cac_align.rewards.combine:ur_cac_judges",
)
register_reward(
    "combined",
    "cac_align.rewards.combine:CombinedConfig",
    "cac_align.rewards.combine:build_combined",
    "weighted average of any normalized rewards",
    judges="cac_align.rewards.combine:combined_judges",
)
