"""When gradients reduce: the backward of an accumulated update, its loss scale, and the clipped step's
norm. One home for the collectives of a trainer's update (torchtitan keeps the same concern apart from
who is where and from applying the parallelism).

Gradients under context parallel. Every rank of a context-parallel group computes the same loss, but
diffusers' output gather hands each rank back only its own chunk's gradient in the backward, so each
rank's parameter gradient is a partial sum; the true gradient is their sum over the group. FSDP2 (and
DDP) average over all ``dp * cp`` ranks, so the loss is multiplied by ``cp``
(:attr:`~.dims.Layout.loss_scale`), as verl-omni does; a test pins it against one process, with a control.

One reduction per update. An update accumulates the gradients of many backwards (flow-grpo and nft: a
chunk's micro-batches x trained timesteps, MiniMax-H3's 98 a step; dpo: its micro-batches). They are
reduced once, at the update's last backward (:func:`gradient_sync`): DDP by accelerate's ``no_sync`` before
it; FSDP2 by ``set_requires_gradient_sync(False)`` on every backward but the last that runs an expert,
the way torchtitan defers a reduction (its ``ChunkedLossWrapper``). Each expert of a two-expert model is
its own FSDP root, and FSDP2 reduces a unit's held-back gradients only in a backward that runs that unit:
so an expert reduces at the last backward that runs *it* (the trainer knows which expert each backward
runs before the loop: :func:`reducing_backwards`), not at the update's last, which may run the other
expert alone. torchtitan reduce-scatters every microbatch to save memory and defers only HSDP's
all-reduce across replicas (its PR #4505); here only the LoRA has gradients, so both are deferred: a
process holds its LoRA's gradients whole (fp32) until the reduction, 0.1 to 1.6 GiB in the shipped recipes (the memory plan counts
them: plan/rows.py), and a step sends one reduction of them across nodes where it sent one a backward.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Collection, Sequence

import torch


if TYPE_CHECKING:
    from cac_align.gen.parallel.dims import Layout
    from accelerate import Accelerator

__all__ = ["clip_grad_norm_", "gradient_sync", "reducing_backwards", "scaled_backward"]


def reducing_backwards(runs: Sequence[Collection[int]]) -> list[frozenset[int]]:
    """Which experts' gradients reduce at each backward of an update whose backwards run the experts
    ``runs[k]`` (indices into the denoiser's ``experts``): each expert at the last backward that runs it,
    none at the others (module docstring, "One reduction per update").

    Hand-worked: ``[{0}, {0}, {1}, {1}]`` (flow-grpo on a two-expert model: the high-noise steps first)
    -> ``[{}, {0}, {}, {1}]``; ``[{0, 1}, {0, 1}]`` (sharded dpo: both experts every call) -> ``[{}, {0, 1}]``;
    an expert no backward runs reduces nowhere (it has no gradient)."""
    last: dict[int, int] = {}
    for k, experts in enumerate(runs):
        for expert in experts:
            last[expert] = k
    out: list[set[int]] = [set() for _ in runs]
    for expert, k in last.items():
        out[k].add(expert)
    return [frozenset(s) for s in out]


@contextlib.contextmanager
def gradient_sync(layout: Layout, accelerator: Accelerator, model: Any, index: int, runs: Sequence[Collection[int]]):
    """The context of backward ``index`` of an accumulated update whose backwards run the experts ``runs``
    (one entry a backward; module docstring, "One reduction per update").

    - Data parallel (DDP): accelerate's ``no_sync`` on every backward but the update's last, which
      all-reduces what the others accumulated.
    - Sharded (FSDP2, HSDP): each expert is its own FSDP root. Before the backward, the experts whose
      last backward this is (:func:`reducing_backwards`) reduce (``set_requires_gradient_sync(True)``:
      the reduce-scatter of their accumulated gradients into the shards and, under HSDP, the all-reduce
      across the replicas); the others accumulate their gradients whole, unsynchronized. After it, every
      expert is set back to reduce, FSDP2's default, for whatever runs outside an update.
    """
    if not layout.sharded:
        with contextlib.nullcontext() if index == len(runs) - 1 else accelerator.no_sync(model):
            yield
        return
    roots = list(model.experts)
    reducing = reducing_backwards(runs)[index]
    for expert, root in enumerate(roots):
        root.set_requires_gradient_sync(expert in reducing)
    try:
        yield
    finally:
        for root in roots:
            root.set_requires_gradient_sync(True)


def scaled_backward(layout: Layout, accelerator: Accelerator, loss: torch.Tensor) -> None:
    """``loss``'s backward (a scalar tensor), multiplied by the context-parallel degree
    (:attr:`~.dims.Layout.loss_scale`; module docstring, "Gradients under context parallel")."""
    accelerator.backward(loss * layout.loss_scale if layout.cp > 1 else loss)


def clip_grad_norm_(layout: Layout, accelerator: Accelerator, model: Any, max_norm: float) -> float:
    """Clip the trainable gradients to ``max_norm`` by their global norm; returns the norm
    before clipping. Sharded: the norm of the whole gradient (each shard's squares summed over
    every process), the same number one process computes."""
    if not layout.sharded:
        return float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(total, "full_tensor"):  # a DTensor: each process holds its shards' part of the sum
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters() if p.grad is not None], max_norm, total)
    return float(total)
