"""Work split over processes: which items a step takes, on which process, with which seed,
and gathers of per-process numbers (both GRPO trainers: ``flow-grpo`` and CaC's stage 3); and how a
process of a multi-process run ends (:func:`end_processes`, every job's, through the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["StepPlan", "derive_seed", "end_processes", "gather_floats", "next_setting", "per_process", "plan_step", "process_counts", "sample_seed",
           "step_indices", "trained_timesteps"]


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


def sample_seed(seed: int, step: int, index: int) -> int:
    """The noise seed of sample ``index`` of training step ``step`` (eval uses step = -1)."""
    return int(np.random.default_rng([seed, step + 1, index]).integers(0, 2**62))


def trained_timesteps(num_steps: int, fraction: float, step: int, seed: int) -> list[int]:
    """The sampling steps trained at ``step``: all, or a seeded random subset in order."""
    count = max(1, round(num_steps * fraction))
    if count >= num_steps:
        return list(range(num_steps))
    chosen = np.random.default_rng([seed, step, 7]).choice(num_steps, size=count, replace=False)
    return sorted(int(j) for j in chosen)


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


# ---------------------------------------------------------------------------------------
# A generator trainer's step (flow-grpo, nft): prompts_per_step x group_size samples over the processes
# ---------------------------------------------------------------------------------------
@dataclass
class StepPlan:
    """Per-process numbers derived from the config (the one place they are derived)."""

    num_processes: int
    rank: int
    total_samples: int  # prompts_per_step * group_size
    local_samples: int

    @property
    def local_range(self) -> range:
        return range(self.rank * self.local_samples, (self.rank + 1) * self.local_samples)


def _fits_updates(config: Any, local: int) -> bool:
    """Whether ``local`` samples per process give the ``updates_per_step`` micro-batches a step needs."""
    return math.ceil(local / config.train_batch_size) >= config.updates_per_step


def _split_hint(config: Any, groups: int) -> str:
    """The nearest larger ``prompts_per_step`` and ``group_size`` whose samples split over ``groups``
    (a refusal's suggestion: :func:`plan_step`)."""
    p, g = config.prompts_per_step, config.group_size

    def works(total: int) -> bool:
        return total % groups == 0 and _fits_updates(config, total // groups)

    options = [f"{key}={value} ({value * other} samples)" for key, value, other in
               (("prompts_per_step", next_setting(p, lambda v: works(v * g)), g), ("group_size", next_setting(g, lambda v: works(p * v)), p))
               if value is not None]
    return "set " + " or ".join(options) if options else "change prompts_per_step or group_size"


def plan_step(config: Any, num_processes: int, rank: int) -> StepPlan:
    """This process's share of a step (``prompts_per_step * group_size`` samples, a global
    intent), over ``num_processes`` data-parallel groups (a context-parallel group shares its
    samples); raises :class:`~cac_align.config.RecipeError` when it cannot be split evenly (naming
    the process counts and the settings that would split it) or gives fewer micro-batches than
    ``updates_per_step``."""
    total = config.prompts_per_step * config.group_size
    local = per_process(total, num_processes, "prompts_per_step * group_size (samples per step)", _split_hint(config, num_processes),
                        context_parallel=config.parallel.context_parallel, fits=lambda share: _fits_updates(config, share))
    micro_batches = math.ceil(local / config.train_batch_size)
    if config.updates_per_step > micro_batches:
        from cac_align.config import RecipeError

        raise RecipeError(
            f"updates_per_step={config.updates_per_step} but each process has only {micro_batches} training "
            f"micro-batch(es) ({local} samples / train_batch_size {config.train_batch_size}); lower updates_per_step "
            "or train_batch_size"
        )
    return StepPlan(num_processes, rank, total, local)


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


def end_processes(completed: bool = True) -> None:
    """End this process's part of a multi-process run, the same way for every job (the CLI calls it once
    a job returns or raises: ``train-cac``'s stages, ``flow-grpo``, ``nft``, ``dpo``, ``bon``, ``score``).

    The objects a run leaves in reference cycles (a DDP- or FSDP-wrapped model with its hooks, a Trainer,
    an Accelerator) are collected first, while the interpreter is whole; then, where a default process
    group exists, every process waits for the others (``completed``: a run that failed on this process
    does not wait for peers that may be gone) and the group is destroyed. Left to the interpreter's own
    teardown, the group and its C++ threads were destroyed after Python's finalization had begun, and a
    2-process gloo launch could abort there ("terminate called without an active exception") after its
    files were written: a finished job reported as failed."""
    import gc
    import sys

    gc.collect()
    dist = sys.modules.get("torch.distributed")  # never imported: no group to end (and no torch to load for it)
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return
    if completed:
        try:
            dist.barrier()
        except Exception:  # a peer died after this process finished (its own failure is what the launch reports)
            pass
    dist.destroy_process_group()
    try:  # accelerate's shared state still names the group it made: a later Accelerator in this process makes its own
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    except (ImportError, AttributeError):  # pragma: no cover
        pass
