"""What every trainer integration shares, so that each trainer's module stays thin.

A trainer asks a reward by a name in its own config (Flow-GRPO's ``config.reward_fn``, a
verl-omni ``reward_functions`` entry, a Flow-Factory reward class, a Pref-GRPO reward spec). Behind
every such name is one of our reward sections (as in recipes), kept by a :class:`RewardSlots`:

- **Names.** Every name of the reward registry (:func:`cac_align.rewards.reward_names`) is a slot
  whose default section is ``{name: <that name>}`` (``cac`` and ``unified_reward`` default to the
  paper's real checkpoints); a user's sections file can point a slot at their checkpoint, or add a
  slot of their own naming any registered reward (``cac_8b: {name: cac, model: ...}``). Sections are
  checked when configured, before any model loads: a typo fails at launch, not mid-training.
- **One model copy per process.** Rewards built through the slots share their loaded models
  (:func:`~cac_align.vlm.config.shared_backends`), whatever the number of names, builds, trainer
  threads or integrations in the process: each checkpoint is loaded once per process and device.
- **Calls that do not crash a trainer.** :meth:`RewardSlots.scorer` returns a function that checks
  the call's own arguments (which raise: a wrong call is a bug of the caller), then scores; whatever
  goes wrong inside the reward's work (a corrupt video, a dead server, an error from a processor,
  CUDA out of memory) marks that call's samples invalid with the reason, and the trainer goes on.
- **Invalid policies.** ``drop`` (NaN: the integration keeps the sample out of training by the
  trainer's own means), ``group_mean`` (the mean of the valid samples of its prompt group within
  the call; correct only when a group is scored in one call) or ``fail`` (raise
  :class:`~cac_align.rewards.base.RewardError`).
- **Sections from a file.** A trainer whose config cannot carry our sections reads them from a YAML
  file named by the environment variable ``CAC_ALIGN_REWARDS`` (:func:`sections_from_env`).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cac_align.rewards.base import ErrorKind, Reward, RewardError, check_call, check_prompts, failure_summary, group_keys
from cac_align.rewards.normalize import fill_invalid
from cac_align.rewards.registry import REWARDS, build_reward, reward_config
from cac_align.video import VideoError
from cac_align.vlm.config import shared_backends

__all__ = [
    "ENV_SECTIONS",
    "INVALID_POLICIES",
    "RewardSlots",
    "Scored",
    "batch_settings",
    "channels_first_frames",
    "fill_policy",
    "frame_rate",
    "frame_rates",
    "launch",
    "make_scorer",
    "loaded_models",
    "on_device",
    "plain",
    "read_sections",
    "release_models",
    "section_fps",
    "sections_from_env",
    "warn_mixed_scales",
]

log = logging.getLogger(__name__)

INVALID_POLICIES = ("drop", "group_mean", "fail")
ENV_SECTIONS = "CAC_ALIGN_REWARDS"

# Loaded models of this process, keyed by their model config (device included): every reward
# built through any RewardSlots shares them, so each checkpoint is loaded once per process/device.
_BACKENDS: dict[str, Any] = {}
_BACKENDS_LOCK = threading.Lock()


def loaded_models() -> list[str]:
    """The model configs (JSON) this process has loaded for the integrations, one per checkpoint
    and device."""
    return list(_BACKENDS)


def release_models() -> None:
    """Forget the shared models (the next build loads them again); frees their memory once no
    reward built earlier still holds them."""
    with _BACKENDS_LOCK:
        _BACKENDS.clear()


def read_sections(source: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """Reward sections by slot name, from a mapping or a YAML file holding one."""
    if source is None:
        return {}
    if isinstance(source, (str, Path)):
        from omegaconf import OmegaConf

        path = Path(source)
        if not path.is_file():
            raise ValueError(f"reward sections file not found: {path}")
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping of reward name -> reward section")
        return dict(data)
    if not isinstance(source, Mapping):
        raise ValueError(f"reward sections must be a mapping or a YAML file, got {type(source).__name__}")
    return dict(source)


def sections_from_env() -> str | None:
    """The sections file named by ``$CAC_ALIGN_REWARDS`` (None when unset); a name that is not a
    file is an error now, not a silent fall back to the default checkpoints."""
    path = os.environ.get(ENV_SECTIONS)
    if not path:
        return None
    if not Path(path).is_file():
        raise ValueError(f"${ENV_SECTIONS}={path!r}: no such file (a YAML mapping of reward name -> reward section)")
    return path


def on_device(section: Any, device: Any) -> Any:
    """The section with every in-process model placed on ``device`` (servers are left alone)."""
    if isinstance(section, Mapping):
        out = {k: on_device(v, device) for k, v in section.items()}
        model = out.get("model")
        if isinstance(model, Mapping) and model.get("backend", "hf") == "hf":
            out["model"] = {**model, "device": str(device)}
        return out
    if isinstance(section, list):
        return [on_device(v, device) for v in section]
    return section


def plain(value: Any) -> Any:
    """An OmegaConf node (a trainer's Hydra config passes them) as plain Python; else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


COMMON_FPS = "Wan-2.1 16, Wan2.2 / LTX-2 24"


def frame_rate(where: str, key: str, *candidates: Any) -> float:
    """The frame rate of a trainer's frames: the first of ``candidates`` that is not None (in the
    order the caller trusts them: what the trainer passed, then its own settings), checked > 0.

    The frame rate is never guessed: with none given, a one-line ``ValueError`` names ``key`` and
    the common values, because CaC's 4 fps scan and 8 fps window are timed from it (Wan-2.1's 16
    read for LTX-2's 24 puts every window 1.5x off, with no error).
    """
    for value in candidates:
        if value is None or value == "":
            continue
        try:
            fps = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} must be a number of frames per second, got {value!r}") from None
        if not (np.isfinite(fps) and fps > 0):
            raise ValueError(f"{where}: {key} must be > 0 (the frame rate of the frames the trainer passes), got {value!r}")
        return fps
    raise ValueError(f"{where}: no frame rate for the trainer's frames: set {key} to your pipeline's rate ({COMMON_FPS})")


def frame_rates(where: str, key: str, videos: Any, prompts: Any, metadata: Any, fallback: float | None) -> list[dict]:
    """One metadata mapping per video, each array video's carrying its frame rate: the row's own
    ``fps`` (what the trainer passed), else ``fallback`` (the section's ``source_fps``), else a
    one-line ``ValueError`` from :func:`frame_rate` naming ``key``. A file (a path) carries its own
    rate and is left as it is. The call's own errors (prompts or rows of another length, a row that
    is not a mapping) raise first, as :func:`~cac_align.rewards.base.check_call` words them."""
    from cac_align.rewards.base import check_call

    n = check_call(videos, prompts, metadata)
    items = [videos[b] for b in range(n)] if hasattr(videos, "ndim") else list(videos)
    if metadata is None:
        rows: list[Any] = [{} for _ in range(n)]
    elif isinstance(metadata, Mapping):
        rows = [metadata] * n
    else:
        rows = [row or {} for row in metadata]
    out = []
    for item, row in zip(items, rows):
        row = dict(row)
        if not isinstance(item, (str, Path)):
            row["fps"] = frame_rate(where, key, row.get("fps"), fallback)
        out.append(row)
    return out


def section_fps(section: Any) -> float | None:
    """A reward section's own ``source_fps`` when the section states it (top level), else None:
    the reward's built-in default (16) is not a statement about the trainer's videos."""
    if isinstance(section, Mapping) and section.get("source_fps") is not None:
        return float(section["source_fps"])
    return None


def batch_settings(where: str, policies: Sequence[str], why: str, *, reward: Any, sections: Any, invalid: Any, max_invalid_fraction: Any,
                   fps: Any, device: Any, max_batch: Any) -> dict[str, Any]:
    """The keys every integration that hands us a trainer's batch takes (verl-omni, TeleBoost,
    UniRL), checked: ``reward`` (a name of ours), ``sections`` (else ``$CAC_ALIGN_REWARDS``),
    ``invalid`` (one of ``policies``; ``why`` says why the others are not offered), ``max_invalid_fraction``
    in [0, 1], ``fps`` (None or > 0: the frame rate their frames are read at when the trainer
    passes none; :func:`frame_rate` decides per call), ``device`` ("auto": CUDA when this
    process sees one) and ``max_batch`` >= 1. Raises ``ValueError`` naming the key."""
    if invalid not in policies:
        raise ValueError(f"{where}: invalid must be one of {tuple(policies)}, got {invalid!r} ({why})")
    if not 0.0 <= float(max_invalid_fraction) <= 1.0:
        raise ValueError(f"{where}: max_invalid_fraction must be in [0, 1], got {max_invalid_fraction}")
    if fps is not None:
        fps = frame_rate(where, "fps", fps)
    if int(max_batch) < 1:
        raise ValueError(f"{where}: max_batch must be >= 1, got {max_batch!r}")
    if device in (None, "auto"):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "reward": str(reward),
        "sections": plain(sections) if sections is not None else sections_from_env(),
        "invalid": invalid,
        "max_invalid_fraction": float(max_invalid_fraction),
        "fps": fps,
        "device": str(device),
        "max_batch": int(max_batch),
    }


def channels_first_frames(video: Any) -> np.ndarray | VideoError:
    """One video as trainers that keep channels first hold it, ``(C, T, H, W)`` float in [0, 1]
    (UniRL's ``request.videos``, a row of TeleBoost's ``video_frames``; any float dtype, bf16
    included) -> ``(T, H, W, 3)`` float32 for our rewards, or a :class:`~cac_align.video.VideoError`
    saying why it cannot be (the reward then marks that sample invalid; values outside [0, 1],
    NaN or inf are caught when the reward reads the frames)."""
    array = video
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 4 or array.shape[0] != 3:
        return VideoError(f"expected one video of shape (3, T, H, W), channels first, got {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        return VideoError(f"expected float frames in [0, 1], got {array.dtype}")
    return np.ascontiguousarray(array.transpose(1, 2, 3, 0), dtype=np.float32)


def fill_policy(
    scores: np.ndarray, valid: np.ndarray, prompts: Sequence, metadata: Any, policy: str, errors: Mapping[int, str] | None = None
) -> tuple[np.ndarray, list[int]]:
    """Apply an invalid policy to one call's scores: ``(scores, indices filled)``.

    ``drop`` leaves invalid samples NaN; ``fail`` raises :class:`RewardError` naming them;
    ``group_mean`` gives each the mean of its group's valid samples (groups as
    :func:`~cac_align.rewards.base.group_keys` makes them), or the call's mean where its group has
    none, and raises when no sample of the call is valid. A raise names each failed sample's
    reason from ``errors`` (index -> why; the first few and a count).
    """
    if policy == "drop" or valid.all():
        return scores, []
    why = failure_summary(errors or {int(i): "invalid (no reason given)" for i in np.flatnonzero(~valid)})
    if policy == "fail":
        raise RewardError(f"invalid rewards with invalid='fail': {why}")
    if not valid.any():
        raise RewardError(f"no sample in this reward call could be scored; refusing to invent rewards. {why}")
    filled, by_group = fill_invalid(scores, valid, group_keys(list(prompts), metadata))
    rest = ~valid & ~by_group
    filled[rest] = float(scores[valid].mean())  # groups with no valid member: the call's mean
    return filled, np.flatnonzero(~valid).tolist()


@dataclass
class Scored:
    """One reward call's result as an integration passes it on.

    Attributes:
        name: the slot's name.
        scores: (B,) float64; NaN where invalid under ``drop``, a filled value under ``group_mean``.
        valid: (B,) bool: whether the sample was really scored (a filled sample stays False).
        errors: index -> why, for each invalid sample.
        failures: counts by error kind (``{"parse": 2}``).
        details: one dict per sample (sub-scores, evidence; ``error`` where invalid).
        filled: indices whose score was filled by ``group_mean``.
    """

    name: str
    scores: np.ndarray
    valid: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    details: list[dict] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The per-call facts as a plain dict (what Flow-GRPO's factories return beside scores)."""
        return {
            "valid": self.valid.tolist(),
            "invalid_indices": np.flatnonzero(~self.valid).tolist(),
            "errors": self.errors,
            "failures": self.failures,
            "filled_indices": self.filled,
            "details": self.details,
        }


Scorer = Callable[..., Scored]


class RewardSlots:
    """Reward sections by name, an invalid policy, and scorers built from them (module docstring).

    Args:
        defaults: the sections every slot starts with; by default ``{name: {"name": name}}`` for
            every registered reward.
        fixed_names: when True, only the default names are slots (Flow-GRPO's factories are
            functions named in advance); otherwise a sections file may add slots of its own.
        where: how errors name this integration ("flow_grpo cac: unknown key ...").
    """

    def __init__(self, defaults: Mapping[str, Any] | None = None, fixed_names: bool = False, where: str = "rewards") -> None:
        self.defaults = copy.deepcopy(dict(defaults)) if defaults is not None else {name: {"name": name} for name in REWARDS}
        self.fixed_names = fixed_names
        self.where = where
        self.settings: dict[str, Any] = {"sections": copy.deepcopy(self.defaults), "invalid": "drop"}
        self._lock = threading.Lock()

    # -- configuration ------------------------------------------------------------------
    def configure(self, sections: Mapping[str, Any] | str | Path | None = None, invalid: str = "drop") -> None:
        """Choose the models behind the names (defaults: the paper's real checkpoints).

        Args:
            sections: reward sections by slot name (a mapping or a YAML file of one). Names not
                given keep their defaults. Every section is validated now, without loading models.
            invalid: "drop" (NaN; default), "group_mean" or "fail".
        """
        if invalid not in INVALID_POLICIES:
            raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {invalid!r}")
        merged = copy.deepcopy(self.defaults)
        for name, section in read_sections(sections).items():
            if self.fixed_names and name not in self.defaults:
                raise ValueError(f"unknown factory {name!r}; configurable: {sorted(self.defaults)}")
            if section != self.defaults.get(name):  # a default is checked when it is built
                reward_config(section, f"{self.where} {name}")  # typos fail here, not mid-training
            merged[name] = dict(section)
        with self._lock:
            self.settings["sections"] = merged
            self.settings["invalid"] = invalid

    def names(self) -> list[str]:
        return sorted(self.settings["sections"])

    def section(self, name: str) -> dict[str, Any]:
        with self._lock:
            sections = self.settings["sections"]
            if name not in sections:
                import difflib

                hint = difflib.get_close_matches(name, list(sections), n=1)
                extra = f"; did you mean '{hint[0]}'?" if hint else ""
                raise ValueError(f"{self.where}: unknown reward '{name}'{extra} (known: {', '.join(sorted(sections))})")
            return copy.deepcopy(sections[name])

    @property
    def invalid(self) -> str:
        return self.settings["invalid"]

    # -- building and scoring -----------------------------------------------------------
    def build(self, name: str, device: Any = None) -> Reward:
        """The reward behind ``name``, its in-process models on ``device``, sharing the models this
        process has loaded already."""
        section = self.section(name)
        if device is not None:
            section = on_device(section, device)
        with _BACKENDS_LOCK, shared_backends(_BACKENDS):
            return build_reward(section, f"{self.where} {name}")

    def scorer(self, name: str, device: Any = None, invalid: str | None = None) -> Scorer:
        """``fn(videos, prompts, metadata=None) -> Scored`` for the reward behind ``name``.

        The call's own errors (:func:`~cac_align.rewards.base.check_call`) raise, as does a
        ``fail`` policy or a reward's deliberate :class:`RewardError`; any other exception raised
        inside the reward makes every sample of the call invalid (``error_kind`` "backend"),
        logged, and the call returns.
        """
        reward = self.build(name, device)
        policy = invalid or self.invalid
        return make_scorer(name, reward, policy)


def make_scorer(name: str, reward: Reward, policy: str = "drop") -> Scorer:
    """:meth:`RewardSlots.scorer` for a reward already built."""
    if policy not in INVALID_POLICIES:
        raise ValueError(f"invalid must be one of {INVALID_POLICIES}, got {policy!r}")

    def score(videos: Any, prompts: Sequence[str | None], metadata: Any = None) -> Scored:
        n = check_call(videos, prompts, metadata)
        prompts = check_prompts(n, prompts)
        try:
            out = reward(videos, prompts, metadata)
        except RewardError:  # a policy's deliberate refusal (invalid: fail), not a crash
            raise
        except Exception as exc:  # a crashed call: its samples are invalid, the run goes on
            log.warning("reward %r failed on a call of %d samples: %s: %s", name, n, type(exc).__name__, exc)
            error = f"{type(exc).__name__}: {exc}"
            scores, valid = np.full(n, np.nan), np.zeros(n, dtype=bool)
            errors = {i: error for i in range(n)}
            failures, details = {ErrorKind.BACKEND: n}, [{"error": error, "error_kind": ErrorKind.BACKEND} for _ in range(n)]
        else:
            scores, valid, errors, failures, details = out.scores, out.valid, out.errors, out.failure_counts(), out.details
            if not valid.all():
                log.warning("reward %r: %d of %d samples invalid %s: %s", name, int((~valid).sum()), n, failures, failure_summary(errors))
        scores, filled = fill_policy(np.asarray(scores, dtype=np.float64), valid, prompts, metadata, policy, errors)
        return Scored(name, np.asarray(scores, dtype=np.float64), valid, errors, failures, details, filled)

    score.reward = reward  # type: ignore[attr-defined]  # for scale checks and inspection
    return score


def warn_mixed_scales(
    weights: Mapping[str, float], rewards: Mapping[str, Reward], label: str = "reward weights", total: str = "the sum", stacklevel: int = 3
) -> None:
    """Warn when a weighted sum adds raw scores on different scales (CaC 0-1, UnifiedReward 1-4)."""
    ranges = {}
    for name, reward in rewards.items():
        known = reward.score_range
        if known is not None and weights.get(name, 0) != 0:
            ranges[name] = tuple(float(v) for v in known)
    if len(set(ranges.values())) > 1:
        listed = ", ".join(f"{n} on [{lo:g}, {hi:g}]" for n, (lo, hi) in ranges.items())
        warnings.warn(
            f"{label} {dict(weights)} sums raw scores on different scales ({listed}): the widest dominates "
            f"{total}. Use 'ur_cac' (UnifiedReward and CaC normalized to [0, 1] and averaged, CaC §4.2) or weights "
            "that account for the scales.",
            stacklevel=stacklevel + 1,
        )


def launch(prog: str, trainer: str, modules: Sequence[str], install: Callable[..., None], argv: list[str] | None = None) -> None:
    """``python -m cac_align.integrations.<trainer> --rewards FILE SCRIPT [ARGS...]``: import the
    trainer's ``modules`` (from a checkout root or an installed package), call
    ``install(*modules, sections=FILE)``, then run their script as ``python SCRIPT ARGS`` would.
    Works under ``torchrun -m`` and ``accelerate launch -m``: each process installs, then runs."""
    import argparse
    import importlib
    import runpy
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=f"Run a {trainer} training script with cac_align's rewards installed.")
    parser.add_argument("--rewards", help="YAML file of reward sections by name (docs/rewards.md)")
    parser.add_argument("script", help=f"the {trainer} training script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    args = parser.parse_args(argv)
    script = Path(args.script)
    if not script.is_file():
        parser.error(f"no such script: {script}")
    if args.rewards is not None and not Path(args.rewards).is_file():
        parser.error(f"--rewards: no such file: {args.rewards}")
    # As `python script.py` would: the script's folder first on the path; the working directory
    # (their checkout root, if their package is not pip-installed) after it.
    for entry in (str(Path.cwd()), str(script.resolve().parent)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        imported = [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        parser.error(f"cannot import {trainer} ({exc}); run from the root of a {trainer} checkout or pip install it")
    install(*imported, sections=args.rewards)
    sys.argv = [str(script), *args.script_args]
    runpy.run_path(str(script), run_name="__main__")
