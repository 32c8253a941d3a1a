"""Work split over processes: which items a step takes, on which process, with which seed,
and gathers of per-process numbers (both GRPO trainers: ``flow-grpo`` and CaC's stage 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["derive_seed", "gather_floats", "per_process", "step_indices"]


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


def gather_floats(accelerator: Accelerator, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Concatenate a per-process float array over processes, in process order (every process
    gets the whole array; each must pass the same length)."""
    import torch

    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=accelerator.device)
    return accelerator.gather(tensor).cpu().numpy()
