"""The RL core both GRPO trainers share.

Used by ``cac-align flow-grpo`` (:mod:`cac_align.gen.grpo_trainer`: groups of videos per prompt,
Flow-GRPO's per-prompt stat tracking) and by CaC's stage-3 GRPO (:mod:`cac_align.cac.train.grpo`:
groups of rollouts per video); a module of its own so that neither trainer imports the other's
side. Both trainers run the same step order:

1. the step's items (prompts or videos) from :func:`step_indices`, split over the processes by
   :func:`per_process` (the batch is a global intent; the code derives each device's share);
2. rollouts, seeded by :func:`derive_seed` from (seed, step, ...);
3. rewards and :func:`group_advantages`;
4. the loss around :func:`clipped_surrogate`, gradients all-reduced once per update;
5. metrics gathered over processes (:func:`gather_floats`, :func:`merge_sums`) and logged by
   :func:`log_metrics` (``metrics.jsonl`` + accelerate's trackers);
6. a checkpoint every N steps through :func:`save_checkpoint` (``checkpoints/step_NNNNNN/``,
   ``state.json`` written last: a folder without it was interrupted and is never resumed from).

GRPO draws a group of G samples per prompt and scores each sample against its own group:

    A_i = (r_i - mean(r of i's group)) / (std + eps)

``std`` is the group's own standard deviation (``std="group"``, Flow-GRPO's default) or the
standard deviation of all rewards in the step (``std="global"``, steadier when groups are small).
Standard deviations are population ones (``ddof=0``), as numpy's default in Flow-GRPO.

Invalid rewards (NaN, or ``valid=False``) take no part in any statistic and get advantage 0.
A group whose valid rewards are all equal (or has fewer than two) teaches nothing: its samples
get advantage 0 and ``trainable=False``, and the trainer drops them and logs their fraction.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np

from cac_align.runlog import share_modes

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

__all__ = [
    "GroupAdvantages",
    "checkpoints",
    "clipped_surrogate",
    "derive_seed",
    "gather_floats",
    "group_advantages",
    "log_metrics",
    "merge_sums",
    "nan_mean_std",
    "per_process",
    "read_checkpoint_state",
    "save_checkpoint",
    "step_indices",
]


# ---------------------------------------------------------------------------------------
# 1-2. Which items a step takes, on which process, with which seed
# ---------------------------------------------------------------------------------------
def step_indices(count: int, per_step: int, step: int, seed: int | Sequence[int]) -> list[int]:
    """Indices into ``count`` items for ``step``: epochs of seeded permutations laid end to end.

    Step ``s`` takes positions ``[s * per_step, (s + 1) * per_step)`` of that endless sequence,
    so every item is used once per epoch and any step's items can be recomputed (exact resume).
    ``seed`` may be a tuple (a trainer's own salt): epoch ``e`` is permuted by
    ``default_rng([*seed, e])``.
    """
    if count < 1:
        raise ValueError("step_indices needs at least one item")
    salt = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    orders: dict[int, np.ndarray] = {}
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, count)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([*salt, epoch]).permutation(count)
        out.append(int(orders[epoch][offset]))
    return out


def per_process(total: int, processes: int, what: str, hint: str) -> int:
    """``total`` (a global per-step intent) split evenly over ``processes``.

    Raises:
        RecipeError: ``total`` is not a multiple of ``processes`` (the message names ``what``
            and ends with ``hint``, what to change).
    """
    if total % processes:
        from cac_align.config import RecipeError

        raise RecipeError(f"{what} = {total} cannot be split evenly over {processes} processes; {hint}")
    return total // processes


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integer parts (seed, step, rank, turn, ...): distinct parts give
    independent streams, the same parts the same seed on every machine."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class GroupAdvantages:
    """Result of :func:`group_advantages`.

    Attributes:
        advantages: ``(B,)`` float32; 0 where invalid or in a zero-variance group.
        trainable: ``(B,)`` bool; valid and in a group with variance.
        zero_std_fraction: fraction of groups with zero variance (fewer than two valid rewards,
            or all valid rewards equal).
        num_groups: number of distinct groups.
    """

    advantages: np.ndarray
    trainable: np.ndarray
    zero_std_fraction: float
    num_groups: int


def group_advantages(
    rewards: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable],
    *,
    valid: Sequence[bool] | np.ndarray | None = None,
    std: str = "group",
    eps: float = 1e-4,
    clip: float | None = None,
    zero_std_tol: float = 1e-8,
) -> GroupAdvantages:
    """Advantages of ``rewards`` within their ``groups`` (module docstring).

    Args:
        rewards: ``(B,)`` rewards; NaN means invalid.
        groups: ``(B,)`` group keys (the prompt, or its index).
        valid: optional ``(B,)`` validity mask, combined with ``isfinite(rewards)``.
        std: "group" (each group's own std) or "global" (std of all valid rewards).
        eps: added to the std (Flow-GRPO: 1e-4).
        clip: clip advantages to ``[-clip, clip]`` (Flow-GRPO's ``adv_clip_max``: 5); None = no clip.
        zero_std_tol: a group std at or below this counts as zero variance.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if len(groups) != len(r):
        raise ValueError(f"{len(r)} rewards but {len(groups)} group keys")
    ok = np.isfinite(r)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    if std not in ("group", "global"):
        raise ValueError(f"std must be 'group' or 'global', got {std!r}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    global_std = float(r[ok].std()) if ok.any() else 0.0
    advantages = np.zeros(len(r))
    trainable = np.zeros(len(r), dtype=bool)
    keys = list(dict.fromkeys(groups))
    zero_std = 0
    for key in keys:
        members = np.array([g == key for g in groups]) & ok
        values = r[members]
        group_std = float(values.std()) if len(values) else 0.0
        if len(values) < 2 or group_std <= zero_std_tol:
            zero_std += 1
            continue
        scale = group_std if std == "group" else global_std
        advantages[members] = (values - values.mean()) / (scale + eps)
        trainable[members] = True
    if clip is not None:
        advantages = np.clip(advantages, -clip, clip)
    return GroupAdvantages(
        advantages=advantages.astype(np.float32),
        trainable=trainable,
        zero_std_fraction=zero_std / len(keys) if keys else 0.0,
        num_groups=len(keys),
    )


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """PPO's clipped surrogate loss, elementwise: ``max(-A * r, -A * clip(r, 1 - low, 1 + high))``
    with ``r = exp(log_ratio)`` (= ``-min(r A, clip(r) A)``). The core of both GRPO losses:
    per denoising step in Flow-GRPO (:func:`cac_align.gen.sde.flow_grpo_loss`), per generated
    token in CaC's stage 3 (:func:`cac_align.cac.train.grpo.grpo_loss`); ``advantages``
    broadcasts against ``log_ratio``."""
    import torch

    ratio = torch.exp(log_ratio)
    return torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high))


# ---------------------------------------------------------------------------------------
# 5. Metrics over processes, and the one metrics logger
# ---------------------------------------------------------------------------------------
def gather_floats(accelerator: Accelerator, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Concatenate a per-process float array over processes, in process order (every process
    gets the whole array; each must pass the same length)."""
    import torch

    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=accelerator.device)
    return accelerator.gather(tensor).cpu().numpy()


def nan_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std of the finite entries (NaN, NaN when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return (float(finite.mean()), float(finite.std())) if len(finite) else (math.nan, math.nan)


def merge_sums(parts: Sequence[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Merge per-process ``{name: (sum, count)}`` into means over all processes; names whose
    total count is 0 are left out."""
    totals: dict[str, list[float]] = {}
    for part in parts:
        for name, (value, count) in part.items():
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += value
            entry[1] += count
    return {name: value / count for name, (value, count) in totals.items() if count > 0}


def log_metrics(accelerator: Accelerator, out: str | Path, step: int, metrics: dict[str, Any], trackers: bool = True) -> None:
    """Log one step: a ``metrics.jsonl`` line on the main process (non-finite numbers as null)
    and, with ``trackers``, accelerate's trackers (finite numbers only). Call on every process."""
    if trackers:
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}, step=step)
    if accelerator.is_main_process:
        line = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with open(Path(out) / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


# ---------------------------------------------------------------------------------------
# 6. Checkpoints
# ---------------------------------------------------------------------------------------
def checkpoints(out: str | Path) -> list[Path]:
    """The complete checkpoints of the run in ``out`` (``checkpoints/step_NNNNNN/`` holding
    ``state.json``), oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())


def save_checkpoint(accelerator: Accelerator, out: str | Path, step: int, write: Callable[[Path], None], state: dict, keep: int | None) -> Path:
    """Write checkpoint ``step`` of the run in ``out``; call on every process.

    ``write(folder)`` runs on every process into a temporary folder (accelerate's
    ``save_state`` writes each process's RNG state; a writer with one copy of everything writes
    on the main process only); then the main process adds ``state.json`` (``{"step": step,
    **state}``), renames the folder to ``checkpoints/step_NNNNNN`` and keeps the newest ``keep``.
    A run killed midway leaves only the temporary folder, which resuming ignores.
    """
    root = Path(out) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    write(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2), encoding="utf-8")
        share_modes(tmp)  # safetensors writes 0600 files
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint folder exists only once it is complete
        if keep:
            for old in checkpoints(out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_checkpoint_state(folder: str | Path) -> dict:
    """The ``state.json`` of a checkpoint written by :func:`save_checkpoint`."""
    return json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
