"""Work split over processes: which items a step takes, on which process, with which seed,
and gathers of per-process numbers (both GRPO trainers: ``flow-grpo`` and CaC's stage 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["derive_seed", "gather_floats", "next_setting", "per_process", "process_counts", "step_indices"]


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


def per_process(total: int, processes: int, what: str, hint: str, *, context_parallel: int = 1,
                fits: Callable[[int], bool] | None = None) -> int:
    """``total`` (a global per-step intent) split evenly over ``processes``.

    Args:
        total: the step's items (samples, pairs, videos), a global intent.
        processes: what it is split over: the processes, or the data-parallel groups
            (processes / ``context_parallel``) where a group shares its items.
        what: the setting(s) ``total`` comes from, as the message names them.
        hint: the settings to change instead of the launch, ending the message.
        context_parallel: processes per data-parallel group: the message offers process counts
            (group counts times this).
        fits: whether a share of this many items also suits the job's other settings (its
            micro-batches): the message offers only counts whose share does.

    Raises:
        RecipeError: ``total`` is not a multiple of ``processes``; the message names ``what``,
            the process counts that would split it (:func:`process_counts`) and ``hint``.
    """
    if total % processes:
        from cac_align.config import RecipeError

        counts = process_counts(total, context_parallel, fits)
        where = (f"{processes} processes" if context_parallel == 1 else
                 f"{processes} data-parallel groups ({processes * context_parallel} processes / parallel.context_parallel {context_parallel})")
        launch = f"launch {_either(counts)} processes, or " if counts else ""
        raise RecipeError(f"{what} = {total} cannot be split evenly over {where}; {launch}{hint}")
    return total // processes


def process_counts(total: int, context_parallel: int = 1, fits: Callable[[int], bool] | None = None) -> list[int]:
    """The process counts that split ``total`` items evenly: each divisor ``d`` of ``total``
    (data-parallel groups) times ``context_parallel``, where a share of ``total // d`` items
    ``fits`` (all, when ``fits`` is None). Ascending.

    Example: 32 samples, no context parallel: [1, 2, 4, 8, 16, 32]; with ``context_parallel=2``:
    [2, 4, 8, 16, 32, 64].
    """
    return [d * context_parallel for d in range(1, total + 1) if total % d == 0 and (fits is None or fits(total // d))]


def next_setting(current: int, works: Callable[[int], bool], limit: int = 100_000) -> int | None:
    """The smallest integer above ``current`` (at most ``limit``) that ``works``: the nearest
    larger value of a setting that would split, a refusal's suggestion; None if there is none."""
    return next((value for value in range(current + 1, limit + 1) if works(value)), None)


def _either(counts: Sequence[int]) -> str:
    shown = [str(c) for c in counts]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


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
