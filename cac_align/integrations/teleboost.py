"""Our rewards, and our evidence map for ViPO, inside TeleBoost (github.com/Tele-AI/TeleBoost).

How TeleBoost scores a rollout without a reward model (read at d4279ac; paths under
``teleboost/``):

- with ``trainer.use_rm=false`` the trainer loads ``reward.custom_reward_function.{path, name}``
  (``reward/execution/custom.py`` 73-128: ``pkg://a.b`` or a module name is imported once; **a
  file path is executed again at every step**, so use ``pkg://``) and calls ``fn(data,
  **reward_kwargs)`` once per step in the driver (``training/core/trainer.py`` 536-543; a Ray
  task with one CPU and no GPU) with the step's whole rollout ``DataProto``:
  ``batch["video_frames"]`` ``(B, 3, F, H, W)`` float32 in [0, 1] on the CPU,
  ``non_tensor_batch["caption"]`` and ``["uid"]`` (one per prompt, its ``n`` samples contiguous),
  and, with ViPO on, ``batch["pixel_weight_maps"]`` ``(B, T_lat, H_lat, W_lat)`` float32 in [0, 1]
  (a DINOv2 saliency map min-max scaled per frame, then per video: ``algorithms/vipo.py``
  253-370). No frame rate is passed.
- a returned mapping's ``"rewards"`` (or a tensor) must have B entries (custom.py 131-159);
- advantages (``algorithms/grpo/advantage.py`` 60-121): ``(r - mean) / (std + 1e-4)`` over each
  prompt's ``n`` contiguous samples, std unbiased. A NaN reward makes its group's advantages NaN
  and the actor's finite-loss guard raises ``FloatingPointError`` (``algorithms/grpo/loss.py``
  121-122); a function that raises aborts ``fit``.
- ViPO (``programs/wan/vipo.py`` 48-75, ``_apply_vipo_broadcast``): ``A_dense = A * M`` with M the
  batch's ``pixel_weight_maps``; the actor clamps ``A_dense`` to ``+-adv_clip_max`` (5), takes the
  Gaussian log-density per latent position summed over the 16 channels, clips the ratio
  symmetrically and averages over positions (``training/families/wan/actor.py``): the estimator
  our Flow-GRPO runs as ``advantage.localize.estimator: vipo``.

What this module gives: :func:`compute_reward`, a function for that route. Its keys under
``reward_kwargs`` are those of our verl-omni function: ``reward`` (``ur_cac`` by default, any name
of ours or of your sections file), ``sections`` (a YAML file of reward sections; else
``$CAC_ALIGN_REWARDS``; else the paper's checkpoints), ``invalid`` (``group_mean`` or ``fail``),
``max_invalid_fraction`` (0.5), ``fps`` (the frame rate the frames are read at; TeleBoost
passes none, so set it, or ``source_fps`` in the reward's section: with neither the call is
refused naming the key, Wan-2.1 16, Wan2.2 / LTX-2 24), ``device`` (``auto``: CUDA if the driver sees one; it usually does not, so serve a
large judge with ``cac-align serve`` and ``backend: openai`` sections), ``max_batch`` (16), plus
``localize``. An unknown key is an error naming it.

- **Invalid samples.** NaN is never returned. ``group_mean`` (default): an invalid sample gets
  the mean of its group's valid samples, so its advantage is 0 (up to float32 rounding); a group
  with none valid gets the step's mean (all its members equal: advantage 0); a step with more than
  ``max_invalid_fraction`` invalid, or none valid, raises
  :class:`~cac_align.rewards.base.RewardError` naming each failed sample's reason
  (:func:`~cac_align.rewards.base.failure_summary`), which stops the run as any raise does.
  ``fail`` raises at the first invalid sample. Every invalid sample is logged and counted
  (:func:`invalid_counts`).
- **Our evidence as ViPO's map** (``localize: true``, or a mapping of settings). A sample whose
  verdict locates a defect (a CaC or Skyra ``window_s`` / ``boxes``, or such a component of a
  combined reward) and whose advantage has the sign ``apply_to`` names (``negative``: it scored
  below its group's mean) gets its region's map on their latent grid, computed as our Flow-GRPO
  computes it (:func:`cac_align.rl.credit.credit_maps` with ``estimator: vipo``: Wan's causal VAE
  frame grouping, 8x8 pixels per latent (16x16 on a Wan2.2-TI2V-5B grid, read off their map's
  shape), 1x2x2 patches, then ViPO's per-frame and per-video
  min-max, so values in [0, 1]); it is written into ``pixel_weight_maps`` in place, where ViPO
  reads it. ``combine: replace`` (default) puts ours in place of their saliency map on those
  samples; ``multiply`` keeps their saliency inside our region (``M_theirs * M_ours``, min-max
  scaled over the video again; where their saliency is 0 on the whole region, ours alone).
  ``others: keep`` (default) leaves their map on every other sample; ``uniform`` sets it to 1, so
  that every sample's ``A * M`` is what our Flow-GRPO's ``estimator: vipo`` trains on. With
  ``localize`` on and ViPO off (no ``pixel_weight_maps``), the call is refused: say
  ``TELEBOOST_METHOD=vipo``.

Overrides a user appends to their ``recipes/wan_grpo_fsdp/run.sh`` command (``TELEBOOST_METHOD=vipo``)::

    trainer.use_rm=false \\
    reward.custom_reward_function.path=pkg://cac_align.integrations.teleboost \\
    reward.custom_reward_function.name=compute_reward \\
    +reward.custom_reward_function.reward_kwargs.reward=ur_cac \\
    +reward.custom_reward_function.reward_kwargs.sections=/abs/path/cac_rewards.yaml \\
    +reward.custom_reward_function.reward_kwargs.fps=16 \\
    +reward.custom_reward_function.reward_kwargs.localize=true
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from cac_align.rl.credit import LocalizeSettings, credit_maps
from cac_align.integrations import adapter
from cac_align.rewards.base import RewardError, failure_summary

__all__ = ["COMBINE", "OTHERS", "POLICIES", "MapSettings", "compute_reward", "evidence_maps", "invalid_counts"]

log = logging.getLogger(__name__)

POLICIES = ("group_mean", "fail")
COMBINE = ("replace", "multiply")
OTHERS = ("keep", "uniform")
_counts = {"scored": 0, "invalid": 0, "filled": 0, "localized": 0, "evidence_missing": 0}
_counts_lock = threading.Lock()


def invalid_counts() -> dict[str, int]:
    """Samples scored, invalid and filled (``group_mean``), and samples given our map
    (``localized``) or that should have had one but whose evidence was unusable
    (``evidence_missing``), by :func:`compute_reward` in this process so far."""
    with _counts_lock:
        return dict(_counts)


@dataclass(frozen=True)
class MapSettings:
    """``localize`` of the reward kwargs (module docstring).

    Attributes:
        enabled: write our evidence maps into ``pixel_weight_maps``.
        apply_to: "negative" (a sample below its group's mean) or "all" (any sample off the mean).
        source: "auto" or a component's name in a combined reward ("cac" in ``ur_cac``).
        dilate: added to every side of every box, 0-1000 units.
        context_s: added to each side of the window, seconds.
        edges: "hard" or "soft" coverage of a latent position.
        combine: "replace" or "multiply" their saliency map on a localized sample.
        others: "keep" their map on every other sample, or "uniform" (1).
    """

    enabled: bool = False
    apply_to: str = "negative"
    source: str = "auto"
    dilate: float = 50.0
    context_s: float = 0.0
    edges: str = "hard"
    combine: str = "replace"
    others: str = "keep"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE:
            raise ValueError(f"teleboost localize.combine must be one of {COMBINE}, got {self.combine!r}")
        if self.others not in OTHERS:
            raise ValueError(f"teleboost localize.others must be one of {OTHERS}, got {self.others!r}")
        self.credit()  # apply_to, edges, dilate, context_s checked as Flow-GRPO checks them

    def credit(self) -> LocalizeSettings:
        """The same settings as our Flow-GRPO's ``advantage.localize`` with ViPO's estimator."""
        return LocalizeSettings(enabled=True, source=self.source, apply_to=self.apply_to, dilate=self.dilate, context_s=self.context_s,
                                edges=self.edges, estimator="vipo")

    @classmethod
    def parse(cls, value: Any) -> MapSettings:
        value = adapter.plain(value)
        if isinstance(value, bool) or value is None:
            return cls(enabled=bool(value))
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return cls(enabled=value.lower() == "true")
        if not isinstance(value, Mapping):
            raise ValueError(f"teleboost localize: true, false or a mapping of settings, got {value!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            why = " (ViPO scales the map itself and their actor clamps A * M)" if set(unknown) & {"inside", "outside", "estimator", "adv_clamp", "confine"} else ""
            raise ValueError(f"teleboost localize: unknown key(s) {unknown}{why}; known: {sorted(known)}")
        return cls(**{"enabled": True, **value})


def _settings(reward: Any, sections: Any, invalid: Any, max_invalid_fraction: Any, fps: Any, device: Any, max_batch: Any, localize: Any,
              extra: Mapping[str, Any]) -> dict[str, Any]:
    if extra:
        known = ["reward", "sections", "invalid", "max_invalid_fraction", "fps", "device", "max_batch", "localize"]
        raise ValueError(f"teleboost compute_reward: unknown key(s) {sorted(extra)} in reward_kwargs; known: {known}")
    why = "TeleBoost cannot mask a sample: a NaN reward makes its group's advantages NaN and the actor's loss guard stops the run"
    settings = adapter.batch_settings("teleboost", POLICIES, why, reward=reward, sections=sections, invalid=invalid,
                                      max_invalid_fraction=max_invalid_fraction, fps=fps, device=device, max_batch=max_batch)
    return {**settings, "localize": MapSettings.parse(localize)}


_SCORERS: dict[str, adapter.Scorer] = {}
_SCORERS_LOCK = threading.Lock()


def _scorer(settings: Mapping[str, Any]) -> tuple[adapter.Scorer, float]:
    """The reward's scorer, built once per setting in this process (the models themselves are
    shared through the adapter, so even a module executed again by path loads them once), and the
    frame rate its frames are read at: ``fps`` of the reward kwargs, else the reward section's
    own ``source_fps``; TeleBoost passes none, so with neither the call is refused (no default of
    16: Wan2.2 and LTX-2 videos are 24 fps)."""
    key = json.dumps({k: v for k, v in settings.items() if k != "localize"}, sort_keys=True, default=str)
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            slots = adapter.RewardSlots(where="teleboost")
            slots.configure(settings["sections"], "drop")  # typos in the sections raise here, before any model loads
            fps = adapter.frame_rate("teleboost compute_reward", "reward_kwargs.fps (or source_fps in the reward's section)",
                                     settings["fps"], adapter.section_fps(slots.section(settings["reward"])))
            _SCORERS[key] = (slots.scorer(settings["reward"], settings["device"]), fps)
        return _SCORERS[key]


def _column(data: Any, key: str) -> list[Any] | None:
    values = (getattr(data, "non_tensor_batch", None) or {}).get(key)
    return None if values is None else list(values)


def group_centered(scores: np.ndarray, groups: Sequence[Any]) -> np.ndarray:
    """``r - mean(r of its group)``: the sign of each sample's GRPO advantage (``(B,)``)."""
    keys = list(groups)
    out = np.zeros(len(scores))
    for key in dict.fromkeys(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        out[members] = scores[members] - scores[members].mean()
    return out


WAN_SPATIAL = (8, 16)  # pixels per latent of Wan's VAEs: Wan-2.1 and Wan2.2-A14B, Wan2.2-TI2V-5B


def evidence_maps(details: Sequence[Mapping[str, Any]], valid: Sequence[bool], centered: np.ndarray, theirs: np.ndarray, fps: float,
                  num_frames: int, height: int, width: int, settings: MapSettings, patch: Sequence[int] = (1, 2, 2)) -> tuple[np.ndarray, Any]:
    """ViPO's ``pixel_weight_maps`` with our evidence in them (module docstring).

    Args:
        details, valid: the reward's per-sample details and validity.
        centered: ``(B,)`` each sample's reward minus its group's mean (:func:`group_centered`).
        theirs: ``(B, T_lat, H_lat, W_lat)`` the rollout's maps (not modified).
        fps, num_frames, height, width: the decoded videos' geometry.
        settings: ``localize``.
        patch: the transformer's patch (Wan-2.1: 1 x 2 x 2 latents).

    Returns:
        ``(maps, credit)``: the new ``(B, T_lat, H_lat, W_lat)`` float32 maps in [0, 1], and
        :func:`~cac_align.rl.credit.credit_maps`'s result (which samples were localized, why
        others were not).

    Raises:
        ValueError: their latent grid is no Wan VAE's for these videos.
    """
    # Their grid says which VAE made it: 4 frames and 8 pixels a latent (Wan-2.1, Wan2.2-A14B) or
    # 16 (Wan2.2-TI2V-5B's VAE, with its 2 x 2 patchify): the map goes on that grid.
    grids = {spatial: ((num_frames - 1) // 4 + 1, height // spatial, width // spatial) for spatial in WAN_SPATIAL
             if height % spatial == 0 and width % spatial == 0}
    spatial = next((sp for sp, grid in grids.items() if grid == tuple(theirs.shape[1:])), None)
    if spatial is None:
        expected = " or ".join(f"{grid} ({sp} pixels per latent)" for sp, grid in grids.items()) or "no Wan grid"
        raise ValueError(
            f"teleboost localize: pixel_weight_maps has the latent grid {tuple(theirs.shape[1:])}, but {num_frames} frames of "
            f"{height}x{width} give {expected} on a Wan VAE (4 frames a latent; Wan-2.1 and Wan2.2-A14B: 8 pixels, Wan2.2-TI2V-5B: 16)"
        )
    credit = credit_maps(details, valid, centered, settings.credit(), num_frames=num_frames, fps=fps, height=height, width=width,
                         temporal=4, spatial=spatial, patch=patch)
    maps = np.array(theirs, dtype=np.float32, copy=True)
    if settings.others == "uniform":
        maps[~credit.localized] = 1.0
    for i in np.flatnonzero(credit.localized):
        ours = credit.maps[i]
        if settings.combine == "multiply":
            product = maps[i] * ours
            if product.max() > product.min():  # ViPO's last step: min-max over the video
                ours = ((product - product.min()) / (product.max() - product.min() + np.float32(1e-8))).astype(np.float32)
        maps[i] = ours
    return maps, credit


def compute_reward(
    data: Any,
    *,
    reward: str = "ur_cac",
    sections: Any = None,
    invalid: str = "group_mean",
    max_invalid_fraction: float = 0.5,
    fps: float | None = None,
    device: str = "auto",
    max_batch: int = 16,
    localize: Any = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score one TeleBoost rollout batch with a reward of ours (module docstring).

    Args:
        data: their ``DataProto`` (``batch["video_frames"]``, ``non_tensor_batch["caption"]``,
            ``["uid"]``; ``batch["pixel_weight_maps"]`` with ViPO).
        reward, sections, invalid, max_invalid_fraction, fps, device, max_batch, localize: the
            ``reward_kwargs`` (module docstring).

    Returns:
        ``{"rewards": (B,) float32 tensor}``, never NaN.

    Raises:
        RewardError: invalid samples the policy does not fill (the run stops with their reasons).
        ValueError: an unknown key, a bad setting, a batch without videos or captions.
    """
    import torch

    s = _settings(reward, sections, invalid, max_invalid_fraction, fps, device, max_batch, localize, kwargs)
    batch = getattr(data, "batch", None)
    if batch is None or "video_frames" not in batch.keys():
        raise ValueError("teleboost compute_reward: the batch has no 'video_frames' (B, 3, F, H, W); is this a TeleBoost Wan rollout?")
    videos = batch["video_frames"]
    n = int(videos.shape[0])
    captions = _column(data, "caption")
    if captions is None or len(captions) != n:
        raise ValueError(f"teleboost compute_reward: non_tensor_batch['caption'] must hold one prompt per video ({n})")
    prompts = [str(c) for c in captions]
    groups = _column(data, "uid") or prompts  # uid: one per prompt, its samples contiguous, as their advantage groups them
    scorer, rate = _scorer(s)
    meta = [{"fps": rate, "group": str(g)} for g in groups]

    # 1. score in model batches
    scores, valid, errors, details = np.full(n, np.nan), np.zeros(n, dtype=bool), {}, []
    for lo in range(0, n, s["max_batch"]):
        frames = [adapter.channels_first_frames(v) for v in videos[lo : lo + s["max_batch"]]]
        part = scorer(frames, prompts[lo : lo + s["max_batch"]], meta[lo : lo + s["max_batch"]])
        scores[lo : lo + len(frames)], valid[lo : lo + len(frames)] = part.scores, part.valid
        errors.update({lo + i: why for i, why in part.errors.items()})
        details.extend(part.details)

    # 2. invalid samples: filled by their group's mean, or the run stops with the reasons
    invalid_mask = ~valid
    filled: list[int] = []
    if invalid_mask.any():
        why = failure_summary({int(i): errors.get(int(i), "not scored") for i in np.flatnonzero(invalid_mask)})
        if s["invalid"] == "fail":
            raise RewardError(f"teleboost reward {s['reward']!r}: invalid rewards with invalid='fail': {why}")
        if invalid_mask.sum() > s["max_invalid_fraction"] * n:
            raise RewardError(
                f"teleboost reward {s['reward']!r}: {int(invalid_mask.sum())} of {n} samples could not be scored (more than "
                f"max_invalid_fraction={s['max_invalid_fraction']:g}); TeleBoost cannot leave a sample out, so the run stops. {why}"
            )
        scores, filled = adapter.fill_policy(scores, valid, prompts, meta, "group_mean", errors)
        log.warning("teleboost reward %r: %s; filled with their group's mean (advantage 0)", s["reward"], why)
    with _counts_lock:
        _counts["scored"] += n
        _counts["invalid"] += int(invalid_mask.sum())
        _counts["filled"] += len(filled)

    # 3. our evidence into ViPO's map
    if s["localize"].enabled:
        if "pixel_weight_maps" not in batch.keys():
            raise ValueError("teleboost localize: the batch has no pixel_weight_maps; turn ViPO on (TELEBOOST_METHOD=vipo, "
                             "actor_rollout_ref.pixel_weight.enable=true) or set localize: false")
        theirs = batch["pixel_weight_maps"]
        _, _, frames_n, height, width = (int(d) for d in videos.shape)
        maps, credit = evidence_maps(details, valid, group_centered(scores, groups), theirs.detach().float().cpu().numpy(), rate, frames_n,
                                     height, width, s["localize"])
        with torch.no_grad():  # in place: ViPO reads the batch's own tensor after the advantages
            theirs.copy_(torch.as_tensor(maps, dtype=theirs.dtype, device=theirs.device))
        for i, reason in credit.reasons.items():
            log.debug("teleboost localize: sample %d keeps %s map: %s", i, "their" if s["localize"].others == "keep" else "a uniform", reason)
        with _counts_lock:
            _counts["localized"] += int(credit.localized.sum())
            _counts["evidence_missing"] += int(credit.missing.sum())
        log.info("teleboost localize: %d of %d samples got our evidence map (%d should have but had no usable evidence)",
                 int(credit.localized.sum()), n, int(credit.missing.sum()))

    if not np.isfinite(scores).all():  # a bug of ours; never a NaN into their advantages
        raise RuntimeError(f"teleboost reward {s['reward']!r}: non-finite rewards survived the invalid policy: {scores.tolist()}")
    return {"rewards": torch.as_tensor(scores, dtype=torch.float32)}
