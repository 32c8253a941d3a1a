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
- :func:`collect_outputs`: the pool's scored batches collected, a failed or short one invalid;
  :func:`score_held_out`: an evaluation's videos scored by the trained reward and the held-out judges;
- :func:`routed_step`, :func:`routed_credit_maps`, :func:`step_credit`: the step's advantages per
  component and stream (``advantage.routing: routed``), and its credit maps over the latent grid
  (``advantage.localize``), the judge's evidence read from the outputs;
- :func:`check_step_scored`: a step none of whose samples was scored stops the run, unless its reward's
  server was down (then :data:`DOWN_STEPS_LIMIT` such steps in a row do);
- :func:`check_prompt_heard`: the guard on a sound trained by judges that all ignore the prompt.

Only the Reward contract is read (rewards/base.py; a combination's parts and weights:
rewards/combine.py): nothing here knows a generator, a process group or a job. What the credit needs
of them comes as numbers and callables: the latent grid ``(temporal, spatial, patch)`` the family
says, the generator's size and rate (``GeneratorConfig``), and a ``gather`` that returns a process's
column with every process's (one process: itself).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from cac_align.config import RecipeError
from cac_align.rewards.base import Reward, RewardError, RewardOutput, backend_error_kind
from cac_align.rewards.combine import CombinedReward
from cac_align.rl.credit import credit_maps
from cac_align.rl.routing import (audio_frame_spans, component_advantages, routed_advantages, routed_credit, sample_windows,
                                  video_frame_spans)
from cac_align.video import Video

__all__ = ["DOWN_STEPS_LIMIT", "check_prompt_heard", "check_step_scored", "collect_outputs", "component_column", "component_raw", "component_windows",
           "invalid_output", "reward_columns", "route_table", "routed_credit_maps", "routed_step", "score_batch", "score_held_out", "step_credit"]

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


def collect_outputs(reward: Reward | None, futures: list[tuple[int, Future]]) -> tuple[list[RewardOutput], float]:
    """The outputs of the scored batches ``(videos, future of score_batch)`` in order, and the seconds the
    reward computed. A batch whose call raised, or whose reward returned another count of scores (a bug
    met on this process only), is invalid and counted, never a silent 0, and the others go on. Only a
    process that scores has futures (and a ``reward``)."""
    outputs, compute = [], 0.0
    for n, future in futures:
        name = reward.name if reward is not None else "reward"
        try:
            output, seconds = future.result()
            compute += seconds
        except Exception as exc:  # a failed batch is invalid and counted, never a silent 0
            log.warning("reward failed on a batch of %d: %s", n, exc)
            output = invalid_output(name, n, exc)
        if len(output.scores) != n:  # a reward's bug, met on this process only: its batch is invalid, the others go on
            wrong = ValueError(f"reward {name!r} returned {len(output.scores)} scores for {n} videos")
            log.warning("reward failed on a batch of %d: %s", n, wrong)
            output = invalid_output(name, n, wrong)
        outputs.append(output)
    return outputs, compute


def score_held_out(pool: Any, reward: Reward, judges: dict[str, Reward], parts: list[str], videos: Any, prompts: list[str], indices: list[int],
                   fps: float, sound: tuple[np.ndarray, int] | None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, RewardOutput]]:
    """Held-out videos scored through ``pool`` like training batches (a failing call is invalid, not a crash):
    the trained ``reward``'s scores, each held-out judge's (``judges``: label -> reward) on the same videos,
    the raw score of each watched component of ``parts`` (its own units), and every output whole (``"reward"``
    and each judge's label: their details hold the evidence the run page shows)."""
    def scored(judge: Reward) -> RewardOutput:
        (output,), _ = collect_outputs(reward, [(len(indices), pool.submit(score_batch, judge, videos, prompts, indices, fps, sound))])
        return output

    outputs = {"reward": scored(reward), **{label: scored(judge) for label, judge in judges.items()}}
    return (outputs["reward"].scores, {label: outputs[label].scores for label in judges}, {part: component_raw(outputs["reward"], part) for part in parts},
            outputs)


def routed_step(reward: Reward, outputs: list[RewardOutput], scores: np.ndarray, step_groups: list[int], gather: Callable[[np.ndarray], np.ndarray],
                std: bool, clip: float | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """``advantage.routing: routed`` (rl/routing.py): each component's group advantage over the step
    (its normalized scores gathered from every process; a sample whose combined ``scores`` is invalid is
    out of every component's statistics, as it is out of the summed one), the advantage of each latent
    stream, and which samples train (a valid combined score, and a component whose group has variance)."""
    table = route_table(reward)
    columns = {}
    for name in table:
        values = gather(component_column(outputs, name, len(table) == 1))
        values[~np.isfinite(scores)] = np.nan
        columns[name] = values
    per = component_advantages(columns, step_groups, std=std, clip=clip)
    advantages = {name: result.advantages for name, result in per.items()}
    streams = routed_advantages(advantages, {k: w for k, (w, _) in table.items()}, {k: m for k, (_, m) in table.items()})
    trainable = np.isfinite(scores) & np.any([result.trainable for result in per.values()], axis=0)
    return streams, advantages, trainable


def latent_grid_of(generator: Any, temporal: int, spatial: int) -> tuple[int, int, int]:
    """The latent grid ``(T, H, W)`` of ``generator``'s videos (:func:`credit_maps`'s maps)."""
    return ((generator.num_frames - 1) // temporal + 1, generator.height // spatial, generator.width // spatial)


def routed_credit_maps(reward: Reward, outputs: list[RewardOutput], advantages: dict[str, np.ndarray], localize: Any, grid: tuple[int, int, int],
                       generator: Any, audio_frames: int, gather: Callable[[np.ndarray], np.ndarray],
                       metrics: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Routed localized credit: per-position advantages of the video latents ``(B_local, T, H, W)`` and
    of the audio latent frames ``(B_local, T_a)`` (``audio_frames`` of them). The video-only components'
    advantage takes the judge's credit map (:func:`credit_maps`, as unrouted); a component judging both
    whose verdict names a span (``window_s``) weights the latent frames of that span in both streams
    (:func:`~cac_align.rl.routing.window_map`); everything else is uniform (docs/audio.md, "Routing").
    ``grid``: the family's ``(temporal, spatial, patch)``; the share of samples windowed goes to ``metrics``."""
    g = generator
    temporal, spatial, patch = grid
    table = route_table(reward)
    details = [d for o in outputs for d in o.details]
    video_only = sum((w * advantages[k] for k, (w, m) in table.items() if m == "video"), np.zeros(len(details), dtype=np.float32))
    seen = [name for name, (_, m) in table.items() if m == "video"]  # the judge's map reads the video components' evidence only
    judged = details if len(table) == 1 else [{"components": {k: v for k, v in (d.get("components") or {}).items() if k in seen}} for d in details]
    judge = credit_maps(judged, np.concatenate([o.valid for o in outputs]), video_only, localize, num_frames=g.num_frames, fps=g.fps,
                        height=g.height, width=g.width, temporal=temporal, spatial=spatial, patch=patch) if seen else None
    judge_maps = judge.maps if judge is not None else np.ones((len(details), *latent_grid_of(g, temporal, spatial)), dtype=np.float32)
    windows = {name: [component_windows(d, name, len(table) == 1) for d in details] for name, (_, m) in table.items() if m == "both"}
    video, audio, windowed = routed_credit(table, advantages, windows, judge_maps, video_frame_spans(g.num_frames, g.fps, temporal),
                                           audio_frame_spans(audio_frames, g.num_frames / g.fps), localize.inside, localize.outside)
    metrics["localize/windowed_fraction"] = float(gather(np.array([windowed / max(len(details), 1)])).mean())
    return video, audio


def step_credit(outputs: list[RewardOutput], advantages: np.ndarray, localize: Any, grid: tuple[int, int, int], generator: Any,
                gather: Callable[[np.ndarray], np.ndarray], metrics: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """This process's credit maps ``(B_local, T_lat, H_lat, W_lat)`` (:func:`credit_maps`) and
    confinement's KL weights of the same shape (None when ``confine`` is 0), and the step's
    localization metrics over every process (into ``metrics``). ``grid``: the family's ``(temporal,
    spatial, patch)``, the model's own latent grid; an autoregressive family's VAE restarts every chunk (its
    ``chunk_frames``: Helios's 33), and the window's frames map onto latent frames chunk by chunk."""
    g = generator
    temporal, spatial, patch = grid
    maps = credit_maps(
        [d for o in outputs for d in o.details], np.concatenate([o.valid for o in outputs]), advantages, localize,
        num_frames=g.num_frames, fps=g.fps, height=g.height, width=g.width, temporal=temporal, spatial=spatial, patch=patch,
        chunk_frames=getattr(g.family, "chunk_frames", None),
    )
    for i, why in maps.reasons.items():
        log.debug("localized credit: sample %d keeps a uniform map: %s", i, why)
    localized = gather(maps.localized.astype(np.float64))
    inside = gather(maps.inside_mass)
    metrics["localize/localized_fraction"] = float(localized.mean())
    metrics["localize/map_inside_mass"] = float(np.nanmean(inside)) if np.isfinite(inside).any() else math.nan
    metrics["localize/evidence_missing"] = int(gather(maps.missing.astype(np.float64)).sum())
    if maps.hold is None:
        return maps.maps, None
    # confinement: the share of samples held to the reference off their defect
    metrics["localize/held_fraction"] = float(gather(maps.hold.reshape(len(maps.hold), -1).any(axis=1).astype(np.float64)).mean())
    return maps.maps, maps.hold


# A reward server down for this many whole steps in a row (every sample unanswered) stops the run
# (check_step_scored); fewer, and those steps train nothing while the next ask it again.
DOWN_STEPS_LIMIT = 3


def check_step_scored(step: int, scores: np.ndarray, down: np.ndarray, outputs: list[RewardOutput], down_steps: int) -> int:
    """Stop the run when no sample of step ``step`` (an index) got a reward, naming the step as the
    checkpoints count it (``step_000002`` is "step 2": index + 1) and why; unless every sample is one the
    reward's server did not answer because it was down (``down``, its breaker open): that step trains
    nothing and says so, the next asks the server again, and only a server down for
    :data:`DOWN_STEPS_LIMIT` steps in a row stops the run. Decided on gathered numbers, so every process
    decides alike. Returns the steps in a row the server has been down (0 after a scored step)."""
    if np.isfinite(scores).any():
        return 0
    errors = "; ".join(sorted({str(d.get("error")) for o in outputs for d in o.details if d.get("error")})[:3])
    if not down.all():
        raise RewardError(f"step {step + 1}: no valid reward for any sample ({errors}); check the reward section")
    down_steps += 1
    if down_steps >= DOWN_STEPS_LIMIT:
        raise RewardError(f"step {step + 1}: the reward server has been down for {down_steps} steps in a row ({errors}); "
                          "rerun with resume=true when it is back")
    log.warning("step %d: the reward server is down, no sample was scored (%s); no update, the next step asks it again", step + 1, errors)
    return down_steps
