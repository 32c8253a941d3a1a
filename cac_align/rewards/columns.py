"""A reward's outputs as a generator trainer reads them: the glue between a step's rewards and its advantages.

``cac-align flow-grpo`` (and ``cac-align nft``, whose trainer extends flow-grpo's) scores each sampled
batch in a thread pool and reads the step's :class:`~cac_align.rewards.base.RewardOutput` s into the
per-sample columns that the RL math takes (:mod:`cac_align.rl.advantages`, :mod:`cac_align.rl.routing`)
and that the step logs:

- :func:`score_batch`: one sampled batch scored (its frames, prompts, groups and soundtracks), in
  the pool; :func:`invalid_output`: a batch whose reward raised, every sample invalid and counted,
  never a silent 0;
- :func:`reward_columns`: the step's metric columns, keyed by what the reward declares, so every
  process gathers the same keys;
- :func:`route_table`, :func:`component_column`, :func:`component_raw`, :func:`component_windows`:
  each component's weight and modality, its normalized and raw scores per sample, and the span its
  verdict names (``advantage.routing: routed``, docs/audio.md "Routing");
- :func:`check_prompt_heard`: the guard on a sound trained by judges that all ignore the prompt.

Only the Reward contract is read (rewards/base.py; a combination's parts and weights:
rewards/combine.py): nothing here knows a generator, a process group or a job.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cac_align.config import RecipeError
from cac_align.rewards.base import Reward, RewardOutput, backend_error_kind
from cac_align.rewards.combine import CombinedReward
from cac_align.rl.routing import sample_windows
from cac_align.video import Video

__all__ = ["check_prompt_heard", "component_column", "component_raw", "component_windows", "invalid_output", "reward_columns", "route_table",
           "score_batch"]

log = logging.getLogger(__name__)


def score_batch(reward: Reward, videos: np.ndarray, prompts: list[str], groups: list[int], fps: float,
                sound: tuple[np.ndarray, int] | None = None) -> tuple[RewardOutput, float]:
    """Score one sampled batch (runs in the reward thread pool); returns the output and seconds.
    ``sound``: the batch's soundtracks ``(B, channels, samples)`` and their rate, where the generator
    makes sound: each sample's metadata carries its own (``audio``, ``sample_rate``: the Reward contract)."""

    start = time.perf_counter()
    batch = [Video(frames, fps=fps, source=f"sample {g}") for frames, g in zip(videos, groups)]
    metadata = [{"group": g, "fps": fps} for g in groups]
    if sound is not None:
        for row, track in zip(metadata, sound[0]):
            row.update(audio=track, sample_rate=int(sound[1]))
    output = reward(batch, prompts, metadata)
    return output, time.perf_counter() - start


def invalid_output(name: str, n: int, error: BaseException) -> RewardOutput:
    """The output of a batch of ``n`` whose reward ``name`` raised ``error`` (or answered wrong): every
    sample invalid (NaN), the error and its kind (:func:`~cac_align.rewards.base.backend_error_kind`) in
    each sample's details."""
    details = [{"error": f"{type(error).__name__}: {error}", "error_kind": backend_error_kind(error)} for _ in range(n)]
    return RewardOutput(name, np.full(n, np.nan), np.zeros(n, dtype=bool), details)


def reward_columns(reward: Reward, outputs: list[RewardOutput]) -> dict[str, np.ndarray]:
    """A step's per-sample reward numbers by metric key, over this process's scored batches in order:
    ``reward/<name>`` (the trained score) and, for each part the reward declares
    (:attr:`~cac_align.rewards.base.Reward.components`), ``reward/<part>_raw`` and
    ``reward/<part>_normalized``; NaN where a sample has no such number (an invalid one, or a batch
    whose reward raised and has no details at all).

    The keys come from the reward, never from the batches: every process gathers the same keys in the
    same order whatever its own batches did (a process whose first batch failed used to make one
    gather where the others made five, and the run hung).
    """
    keys = [f"reward/{reward.name}"] + [f"reward/{part}_{kind}" for part in reward.components for kind in ("raw", "normalized")]
    n = sum(len(o.scores) for o in outputs)
    columns = {key: np.full(n, np.nan) for key in keys}
    row = 0
    for output in outputs:
        columns[keys[0]][row : row + len(output.scores)] = output.scores
        for i, detail in enumerate(output.details):
            parts = detail.get("components")
            for part in reward.components:
                entry = parts.get(part) if isinstance(parts, dict) else None
                for kind in ("raw", "normalized"):
                    value = entry.get(kind) if isinstance(entry, dict) else None
                    if value is not None:
                        columns[f"reward/{part}_{kind}"][row + i] = float(value)
        row += len(output.scores)
    return columns


def check_prompt_heard(reward: Reward) -> None:
    """Refuse, in one line, a reward whose components that hear (modality audio or both) all ignore
    the prompt (``reads_prompt`` false): trained on them, a text-to-sound model is free to make any
    sound that scores (UniRL #418: ImageBind's audio-video mode never saw the prompt; on MiniMax-H3
    the total rose while CLAP fell and the video collapsed). ``audio_rewards_blind_ok: true`` allows it."""
    parts = reward.rewards if isinstance(reward, CombinedReward) else [reward]
    heard = [part.name for part in parts if part.modality != "video"]
    if heard and not any(part.reads_prompt for part in parts if part.modality != "video"):
        raise RecipeError(f"reward: its audio components {heard} all ignore the prompt (reads_prompt false), so the sound is "
                          "trained to score, not to fit the text (UniRL #418); add one that reads it (clap) or set audio_rewards_blind_ok=true")


def route_table(reward: Reward) -> dict[str, tuple[float, str]]:
    """``{component: (weight, modality)}`` of a reward (the Reward contract): a combined reward's
    components with its weights and their modalities; any other reward, one component of weight 1."""
    if isinstance(reward, CombinedReward):
        return {part.name: (float(w), part.modality) for part, w in zip(reward.rewards, reward.weights)}
    return {reward.name: (1.0, reward.modality)}


def component_column(outputs: list[RewardOutput], name: str, whole: bool) -> np.ndarray:
    """This process's samples' normalized score of component ``name`` (``details["components"]``), NaN
    where it has none (invalid, or a batch that failed); ``whole``: the reward is its one component (its scores)."""
    if whole:
        return np.concatenate([o.scores for o in outputs]).astype(np.float64)
    values = []
    for output in outputs:
        for detail in output.details:
            entry = (detail.get("components") or {}).get(name)
            value = entry.get("normalized") if isinstance(entry, dict) else None
            values.append(np.nan if value is None else float(value))
    return np.asarray(values, dtype=np.float64)


def component_raw(output: RewardOutput, name: str) -> np.ndarray:
    """Each sample's raw score of component ``name`` of a combined reward's output, NaN where it has none."""
    values = []
    for detail in output.details:
        entry = (detail.get("components") or {}).get(name)
        value = entry.get("raw") if isinstance(entry, dict) and entry.get("valid") else None
        values.append(np.nan if value is None else float(value))
    return np.asarray(values, dtype=np.float64)


def component_windows(detail: dict[str, Any], name: str, whole: bool) -> list[tuple[float, float]] | None:
    """The span where component ``name`` says the sound slips in a sample's details (rl/routing.py:
    ``status: abnormal`` with ``window_s``); None when none, or unreadable (logged: the uniform map stays).
    ``whole``: the reward is its one component (the details are its own)."""
    own = detail if whole else (((detail.get("components") or {}).get(name) or {}).get("details") or {})
    try:
        return sample_windows(own)
    except ValueError as exc:
        log.debug("routed credit: a sample of %s keeps a uniform map: %s", name, exc)
        return None
