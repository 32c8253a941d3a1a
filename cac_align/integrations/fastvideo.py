"""Our rewards as FastVideo ``RewardScorer`` callables (hao-ai-lab/FastVideo; ``fastvideo`` 0.2.1 on PyPI).

How FastVideo's DiffusionNFT scores and uses rewards (read in the ``fastvideo`` 0.2.1 package;
paths under ``fastvideo/train/methods/rl/``):

- a reward is a ``RewardScorer = Callable[[media, prompts], Tensor]`` (``rewards/media.py``):
  ``media`` is ``[B, C, T, H, W]``, prompts one string per row, the result ``[B]``. Their
  ``MultiRewardScorer`` (``rewards/media.py``) calls each scorer by name, checks the ``[B]``
  shape, and sums ``weight * scores`` into ``"avg"``; ``build_multi_reward_scorer(weights,
  scorers=...)`` (``rewards/__init__.py``) builds it from any scorers given.
- ``media`` comes from the model's ``decode_latents`` (``train/models/wan/wan.py``,
  ``train/models/ltx2/ltx2.py``): ``(vae_output / 2 + 0.5).clamp(0, 1)``, float32, moved to the
  CPU in ``DiffusionNFTMethod._sample_epoch``. **No frame rate** travels with it. Their PickScore
  and CLIPScore scorers read only frame 0 (``select_first_frame``).
- ``DiffusionNFTMethod._score_samples`` (``diffusion_nft.py``) calls the scorer **once per outer
  step on every rank** with all of that rank's samples of the step (every sampling batch of the
  epoch, concatenated in order); ``_run_validation`` calls it once per validation batch, the same
  number of batches on every rank (``common/validation.py``: the shards are padded).
- ``DiffusionNFTMethod._compute_advantages``: the ``"avg"`` rewards of all ranks are gathered and
  grouped **by prompt text**; each group gets ``(r - mean) / (population std + 1e-4)``. There is
  no mask and no NaN handling: one NaN makes its whole group's advantages NaN, and through
  ``_training_timestep_loss`` (``torch.clamp`` keeps NaN) the loss and, after the gradient
  all-reduce, every rank's weights. The groups are spread over the ranks:
  ``common/prompt_sampling.py`` (``distributed_k_repeat_indices``) shuffles a prompt's
  ``num_video_per_prompt`` copies across ``world_size * batch_size`` slots.

What this module gives: :class:`CacAlignRewardScorer`, a ``RewardScorer`` over one of our reward
names (``ur_cac`` by default; sections from a YAML file or mapping, else ``$CAC_ALIGN_REWARDS``,
else the paper's checkpoints), usable alone or inside their ``MultiRewardScorer``:

- **Every frame.** Each row of ``media`` is handed to our reward as the whole clip, ``(T, H, W,
  3)``: ``media[b].permute(1, 2, 3, 0)``, float32, values unchanged. Our rewards read float frames
  in [0, 1] as ``round(255 * x)`` (:mod:`cac_align.video`), the conversion their PickScore applies
  to its one frame; values outside [0, 1] or non-finite make that sample invalid, never clipped.
  ``media`` that is not a float ``[B, 3, T, H, W]`` tensor, or prompts of another length, raise.
- **Frame rate.** The scorer's ``fps``, else the reward section's own ``source_fps``; with neither
  the scorer refuses to build, naming the keys (Wan-2.1 16, Wan2.2 / LTX-2 24). Never guessed.
- **Invalid samples** (a reward that could not score a sample: a parse failure, a dead server,
  a bad video). FastVideo's advantages can take no NaN and no mask (above), so:

  - ``group_mean`` (default): the invalid sample gets the mean of the valid samples of its prompt
    group **over all ranks** (the scorer gathers ``(prompts, scores, valid)`` across the process
    group with ``all_gather_object`` when ``torch.distributed`` is initialized: every rank calls
    the scorer the same number of times, above). Its advantage under their normalization is then
    0 (up to float32 rounding): in the NFT loss ``r = 0.5``, the weight every sample of a group
    whose rewards all tie gets. The group's mean is unchanged, so their logged ``reward/<name>``
    and ``mean_reward_100`` are too (their groups have equal sizes); the group's std shrinks by
    sqrt((n - k) / n) for k fills among n. A group with no valid sample gets the mean of all
    valid samples: every member equal, so their advantages are all 0. When at least 2, and more
    than ``max_invalid_fraction``, of the call's samples (all ranks) are invalid, every rank
    raises :class:`~cac_align.rewards.base.RewardError` naming the reasons: their loop has no
    recovery, so the run stops.
  - ``fail``: any invalid sample raises ``RewardError`` on every rank.

  Every invalid sample is logged with its reason and counted (:func:`invalid_counts`);
  ``scorer.last`` holds the last call's ``valid``, ``errors`` and ``filled`` for this rank.

Use in a FastVideo method (their ``DiffusionNFTMethod.__init__`` accepts only ``pickscore`` and
``clipscore`` in ``method.reward_fn``, so ours go in where it builds the scorer)::

    from fastvideo.train.methods.rl.diffusion_nft import DiffusionNFTMethod
    from fastvideo.train.methods.rl.rewards import build_multi_reward_scorer
    from cac_align.integrations.fastvideo import CacAlignRewardScorer

    class CacNFT(DiffusionNFTMethod):          # method: {_target_: mymodule.CacNFT, reward_fn: {pickscore: 1.0}, ...}
        def on_train_start(self):
            super().on_train_start()  # builds their PickScore + CLIPScore (downloads their weights) ...
            ours = CacAlignRewardScorer("ur_cac", sections="cac_rewards.yaml", fps=16, device=self.student.device)
            self._reward_scorer = build_multi_reward_scorer({"ur_cac": 1.0}, scorers={"ur_cac": ours})  # ... then ours replaces it

Their ``on_train_start`` always builds PickScore and CLIPScore, so this loads them once first.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

import numpy as np

from cac_align.integrations import adapter
from cac_align.rewards.base import RewardError, failure_summary

__all__ = ["POLICIES", "CacAlignRewardScorer", "fill_groups", "invalid_counts", "media_frames", "scorer_settings"]

log = logging.getLogger(__name__)

POLICIES = ("group_mean", "fail")
_counts = {"scored": 0, "invalid": 0, "filled": 0}
_counts_lock = threading.Lock()


def invalid_counts() -> dict[str, int]:
    """Samples scored, invalid and filled by this process's scorers so far (this rank's rows)."""
    with _counts_lock:
        return dict(_counts)


def scorer_settings(reward: Any = "ur_cac", sections: Any = None, invalid: str = "group_mean", max_invalid_fraction: float = 0.5,
                    fps: float | None = None, device: Any = "auto", max_batch: int = 16) -> dict[str, Any]:
    """The scorer's settings, checked; raises ``ValueError`` naming a bad one."""
    why = "FastVideo's advantages take no NaN and no mask (cac_align.integrations.fastvideo)"
    return adapter.batch_settings("fastvideo", POLICIES, why, reward=reward, sections=sections, invalid=invalid,
                                  max_invalid_fraction=max_invalid_fraction, fps=fps, device=str(device) if device is not None else None,
                                  max_batch=max_batch)


def media_frames(media: Any, prompts: Sequence[str]) -> list[np.ndarray]:
    """FastVideo's ``media`` ``[B, 3, T, H, W]`` float (their ``decode_latents``: [0, 1]) -> one
    ``(T, H, W, 3)`` float32 array per row, every frame, values unchanged.

    Raises:
        ValueError: not a float tensor of that layout, or ``len(prompts) != B``.
    """
    import torch

    if not torch.is_tensor(media):
        raise ValueError(f"fastvideo: media must be a torch.Tensor [B, 3, T, H, W], got {type(media).__name__}")
    if media.ndim != 5 or media.shape[1] != 3:
        raise ValueError(f"fastvideo: media must be [B, 3, T, H, W] (their decode_latents' layout), got {tuple(media.shape)}")
    if not media.is_floating_point():
        raise ValueError(f"fastvideo: media must be float in [0, 1] (their decode_latents' range), got {media.dtype}")
    if len(prompts) != media.shape[0]:
        raise ValueError(f"fastvideo: {media.shape[0]} videos but {len(prompts)} prompts")
    array = media.detach().to("cpu", torch.float32).permute(0, 2, 3, 4, 1).contiguous().numpy()
    return [array[b] for b in range(array.shape[0])]


def fill_groups(scores: np.ndarray, valid: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Invalid samples filled for FastVideo's advantages (module docstring, ``group_mean``).

    Args:
        scores: (N,) float; anything where invalid.
        valid: (N,) bool.
        prompts: (N,) their group keys (prompt text, as ``_compute_advantages`` groups).

    Returns:
        ``(filled scores (N,) float64, filled mask (N,) bool)``: an invalid sample gets its prompt
        group's valid mean, or, when its group has none, the mean of all valid samples.

    Raises:
        RewardError: no sample is valid.
    """
    scores, valid = np.asarray(scores, dtype=np.float64), np.asarray(valid, dtype=bool)
    if not valid.any():
        raise RewardError(f"fastvideo: none of the {len(scores)} samples could be scored; refusing to invent rewards")
    out = np.where(valid, scores, np.nan)
    overall = float(out[valid].mean())
    for i in np.flatnonzero(~valid):
        members = [j for j in range(len(prompts)) if prompts[j] == prompts[i] and valid[j]]
        out[i] = float(out[members].mean()) if members else overall
    return out, ~valid


def _gather_objects(item: Any) -> tuple[list[Any], int]:
    """``(item from every rank in rank order, this rank)``; ``([item], 0)`` without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [item], 0
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, item)
    return out, dist.get_rank()


class CacAlignRewardScorer:
    """One of our rewards as a FastVideo ``RewardScorer`` (module docstring).

    Args:
        reward: the name of ours it scores (a registry name, or a name in ``sections``).
        sections: reward sections by name (YAML file or mapping); else ``$CAC_ALIGN_REWARDS``.
        fps: the frame rate of their videos; else the section's ``source_fps``; neither: error.
        invalid: ``group_mean`` or ``fail``.
        max_invalid_fraction: above it (and at least 2 invalid) the call raises.
        device: where our in-process models go ("auto": CUDA when this process sees one).
        max_batch: samples per call to our reward.
        gather: ``fn(obj) -> ([obj of each rank], this rank)``; default
            ``torch.distributed.all_gather_object`` when a process group is initialized, else
            ``([obj], 0)``.
    """

    def __init__(self, reward: str = "ur_cac", sections: Any = None, *, fps: float | None = None, invalid: str = "group_mean",
                 max_invalid_fraction: float = 0.5, device: Any = "auto", max_batch: int = 16,
                 gather: Callable[[Any], tuple[list[Any], int]] | None = None) -> None:
        self.settings = scorer_settings(reward, sections, invalid, max_invalid_fraction, fps, device, max_batch)
        slots = adapter.RewardSlots(where="fastvideo")
        slots.configure(self.settings["sections"], "drop")  # typos in the sections raise here, before any model loads
        section = slots.section(self.settings["reward"])  # an unknown name raises here too
        self.fps = adapter.frame_rate("fastvideo CacAlignRewardScorer", "fps (or source_fps in the reward's section; their media carry none)",
                                      self.settings["fps"], adapter.section_fps(section))
        self._score = slots.scorer(self.settings["reward"], self.settings["device"])
        self._gather = gather or _gather_objects
        self.last: dict[str, Any] = {}

    @property
    def reward(self) -> Any:
        return self._score.reward  # type: ignore[attr-defined]

    def __call__(self, media: Any, prompts: Sequence[str]) -> Any:
        """``media [B, 3, T, H, W]`` float in [0, 1], ``prompts`` (B) -> scores ``[B]`` float32 on
        ``media``'s device, in input order."""
        import torch

        prompts = [str(p) for p in prompts]
        frames = media_frames(media, prompts)
        n, name = len(frames), self.settings["reward"]

        # 1. score this rank's rows in model batches, every frame at the section's frame rate
        scores, valid, errors = np.full(n, np.nan), np.zeros(n, dtype=bool), {}
        size = self.settings["max_batch"]
        for lo in range(0, n, size):
            part = self._score(frames[lo : lo + size], prompts[lo : lo + size], [{"fps": self.fps}] * len(frames[lo : lo + size]))
            scores[lo : lo + size], valid[lo : lo + size] = part.scores, part.valid
            errors.update({lo + i: why for i, why in part.errors.items()})

        # 2. every rank's rows (their advantages group across ranks), then one decision on all ranks
        rows, rank = self._gather((prompts, scores.tolist(), valid.tolist(), {int(k): v for k, v in errors.items()}))
        offsets = np.cumsum([0] + [len(row[0]) for row in rows])
        all_prompts = [p for row in rows for p in row[0]]
        all_scores = np.array([s for row in rows for s in row[1]], dtype=np.float64)
        all_valid = np.array([v for row in rows for v in row[2]], dtype=bool)
        all_errors = {int(offsets[r] + i): why for r, row in enumerate(rows) for i, why in row[3].items()}
        bad = int((~all_valid).sum())

        # 3. invalid samples: a group's mean (advantage 0) or a stop (module docstring)
        filled = np.zeros(n, dtype=bool)
        if bad:
            why = failure_summary(all_errors or {int(i): "invalid (no reason given)" for i in np.flatnonzero(~all_valid)})
            total = len(all_valid)
            if self.settings["invalid"] == "fail":
                raise RewardError(f"fastvideo reward {name!r}: invalid rewards with invalid='fail': {why}")
            if bad >= 2 and bad > self.settings["max_invalid_fraction"] * total:
                raise RewardError(f"fastvideo reward {name!r}: {bad} of {total} samples invalid, more than "
                                  f"max_invalid_fraction={self.settings['max_invalid_fraction']:g}: {why}")
            all_filled, all_mask = fill_groups(all_scores, all_valid, all_prompts)
            lo, hi = int(offsets[rank]), int(offsets[rank + 1])
            scores, filled = all_filled[lo:hi], all_mask[lo:hi]
            if filled.any():
                log.warning("fastvideo reward %r: %s; filled with their prompt group's valid mean (advantage 0)", name,
                            failure_summary({int(i): errors.get(int(i), "?") for i in np.flatnonzero(filled)}))
        if not np.isfinite(scores).all():  # a bug of ours: never a NaN into their advantages
            raise RuntimeError(f"fastvideo reward {name!r}: non-finite rewards survived the invalid policy: {scores.tolist()}")
        with _counts_lock:
            _counts["scored"] += n
            _counts["invalid"] += int((~valid).sum())
            _counts["filled"] += int(filled.sum())
        self.last = {"valid": valid.tolist(), "errors": errors, "filled": np.flatnonzero(filled).tolist()}
        return torch.as_tensor(scores, dtype=torch.float32, device=media.device)
