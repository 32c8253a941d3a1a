"""Normalizers: put rewards on comparable scales before they are averaged.

Every normalizer is called as ``normalizer(scores, valid, groups) -> normalized`` over one
batch, with ``scores`` (B,) float, ``valid`` (B,) bool and ``groups`` one hashable key per
sample (samples drawn for the same prompt share a key). Invalid or non-finite scores are left
out of every statistic and come back as NaN.

- ``fixed``: ``(x - low) / (high - low)``, clipped to [0, 1] by default. A known scale: UnifiedReward
  v1 is 1–4, 2.0 is 1–5, CaC is already 0–1. Stateless and the same for every batch, so scores
  from different calls compare directly (Best-of-N, evaluation).
- ``batch``: z-score over the valid scores of this call.
- ``group``: z-score within each group (the per-prompt standardisation GRPO uses).
- ``running``: z-score with a mean and variance tracked over all calls so far (this call
  included), with ``state_dict`` / ``load_state_dict`` so a resumed run continues them.

Z-scores use the population standard deviation: ``(x - mean) / (std + eps)``. When a group or
batch has a single valid member, or all its members are equal, the standard deviation is 0 and
every member gets exactly 0: there is nothing to rank them against, and 0 is neutral.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "BatchNormalizer",
    "FixedNormalizer",
    "GroupNormalizer",
    "NORMALIZERS",
    "Normalizer",
    "RunningNormalizer",
    "build_normalizer",
    "fill_invalid",
    "zscore",
]


def _usable(scores: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    mask = np.isfinite(scores)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool).reshape(-1)
        if valid.shape != scores.shape:
            raise ValueError(f"{len(scores)} scores but {len(valid)} valid flags")
        mask &= valid
    return scores, mask


def zscore(values: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """``(values - mean) / (std + eps)`` with the population std; all zeros when std == 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    centred = values - values.mean()
    std = values.std()
    if std == 0.0:
        return np.zeros_like(values)
    return centred / (std + eps)


@runtime_checkable
class Normalizer(Protocol):
    """What a combined reward asks of a normalizer: map scores (NaN where invalid) to a common
    scale, and keep or restore its state in checkpoints (``{}`` when it keeps none)."""

    def __call__(self, scores: Any, valid: Any = None, groups: Sequence[Hashable] | None = None) -> np.ndarray: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: Mapping[str, float]) -> None: ...


class _Stateless:
    """The checkpoint half of the normalizer contract for a normalizer that keeps nothing
    between calls (:class:`RunningNormalizer` keeps its statistics)."""

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        pass


@dataclass
class FixedNormalizer(_Stateless):
    """Map a known range [low, high] to [0, 1] (clipped unless ``clip`` is False)."""

    low: float = 0.0
    high: float = 1.0
    clip: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.high <= self.low:
            raise ValueError(f"fixed normalizer needs finite low < high, got low={self.low}, high={self.high}")

    def __call__(self, scores: Any, valid: Any = None, groups: Sequence[Hashable] | None = None) -> np.ndarray:
        scores, mask = _usable(scores, valid)
        out = np.full_like(scores, np.nan)
        out[mask] = (scores[mask] - self.low) / (self.high - self.low)
        if self.clip:
            out[mask] = np.clip(out[mask], 0.0, 1.0)
        return out


@dataclass
class BatchNormalizer(_Stateless):
    """Z-score over the valid scores of the call."""

    eps: float = 1e-8

    def __call__(self, scores: Any, valid: Any = None, groups: Sequence[Hashable] | None = None) -> np.ndarray:
        scores, mask = _usable(scores, valid)
        out = np.full_like(scores, np.nan)
        out[mask] = zscore(scores[mask], self.eps)
        return out


@dataclass
class GroupNormalizer(_Stateless):
    """Z-score within each group (one key per sample; groups of one get 0)."""

    eps: float = 1e-8

    def __call__(self, scores: Any, valid: Any = None, groups: Sequence[Hashable] | None = None) -> np.ndarray:
        scores, mask = _usable(scores, valid)
        if groups is None:
            raise ValueError("the group normalizer needs a group key per sample (prompts or metadata 'group')")
        if len(groups) != len(scores):
            raise ValueError(f"{len(scores)} scores but {len(groups)} group keys")
        out = np.full_like(scores, np.nan)
        members: dict[Hashable, list[int]] = {}
        for i, key in enumerate(groups):
            if mask[i]:
                members.setdefault(key, []).append(i)
        for idx in members.values():
            out[idx] = zscore(scores[idx], self.eps)
        return out


@dataclass
class RunningNormalizer:
    """Z-score with mean and variance tracked over every valid score seen so far.

    Each call first folds its valid scores into the statistics (Chan et al.'s parallel update
    of count, mean and sum of squared deviations), then normalizes with them. Until two
    scores have been seen the std is 0 and the output is 0.
    """

    eps: float = 1e-8
    count: int = field(default=0, init=False)
    mean: float = field(default=0.0, init=False)
    m2: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        n = int(values.size)
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(((values - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def __call__(self, scores: Any, valid: Any = None, groups: Sequence[Hashable] | None = None) -> np.ndarray:
        scores, mask = _usable(scores, valid)
        out = np.full_like(scores, np.nan)
        with self._lock:
            self.update(scores[mask])
            std = self.std
            out[mask] = 0.0 if std == 0.0 else (scores[mask] - self.mean) / (std + self.eps)
        return out

    def state_dict(self) -> dict[str, float]:
        """What to save with a checkpoint to resume the statistics."""
        with self._lock:
            return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        missing = {"count", "mean", "m2"} - set(state)
        if missing:
            raise ValueError(f"running normalizer state lacks {sorted(missing)}")
        if int(state["count"]) < 0 or float(state["m2"]) < 0:
            raise ValueError(f"running normalizer state is corrupt: {dict(state)}")
        with self._lock:
            self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


NORMALIZERS: dict[str, type] = {
    "fixed": FixedNormalizer,
    "batch": BatchNormalizer,
    "group": GroupNormalizer,
    "running": RunningNormalizer,
}


def build_normalizer(spec: Any, where: str = "normalizer") -> Any:
    """A normalizer from ``{name: fixed, low: 1, high: 4}`` (or an instance, returned as is)."""
    from cac_align.rewards.registry import load_section

    if isinstance(spec, Normalizer):
        return spec
    if callable(spec) and not isinstance(spec, Mapping):
        raise ValueError(f"{where}: {type(spec).__name__} lacks state_dict / load_state_dict of the Normalizer contract (cac_align.rewards.normalize)")
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"{where}: a normalizer is a mapping with a 'name' (one of {sorted(NORMALIZERS)})")
    data = dict(spec)
    name = data.pop("name")
    if name not in NORMALIZERS:
        raise ValueError(f"{where}: unknown normalizer {name!r} (one of {sorted(NORMALIZERS)})")
    return load_section(NORMALIZERS[name], data, where)


def fill_invalid(
    values: np.ndarray, valid: np.ndarray, groups: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray]:
    """Replace each invalid value by the mean of the valid values of its group.

    Returns:
        (filled values, filled mask): ``filled[i]`` is True where a value was imputed. A sample
        whose group has no valid member stays NaN with ``filled[i]`` False.
    """
    values, mask = _usable(values, valid)
    out = values.copy()
    out[~mask] = np.nan
    filled = np.zeros(len(values), dtype=bool)
    sums: dict[Hashable, list[float]] = {}
    for i, key in enumerate(groups):
        if mask[i]:
            sums.setdefault(key, []).append(values[i])
    for i, key in enumerate(groups):
        if not mask[i] and key in sums:
            out[i] = float(np.mean(sums[key]))
            filled[i] = True
    return out, filled
