"""When gradients reduce: the backward of an accumulated update, its loss scale, and the clipped step's
norm. One home for the collectives of a trainer's update (torchtitan keeps the same concern apart from
who is where and from applying the parallelism).

Gradients under context parallel. Every rank of a context-parallel group computes the same loss, but
diffusers' output gather hands each rank back only its own chunk's gradient in the backward, so each
rank's parameter gradient is a partial sum; the true gradient is their sum over the group. FSDP2 (and
DDP) average over all ``dp * cp`` ranks, so the loss is multiplied by ``cp``
(:attr:`~.dims.Layout.loss_scale`), as verl-omni does; a test pins it against one process, with a control.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch


if TYPE_CHECKING:
    from cac_align.gen.parallel.dims import Layout
    from accelerate import Accelerator

__all__ = ["backward", "clip_grad_norm_", "no_sync"]


def no_sync(layout: Layout, accelerator: Accelerator, model: Any, last: bool) -> Any:
    """The context of one backward of an accumulated update: DDP all-reduces on the ``last``
    only (``no_sync`` before it). Sharded, every backward reduce-scatters its gradients into
    the shards: FSDP2 reduces a unit's held-back gradients only in a backward that runs that
    unit, and a two-expert model's last backward may run one expert alone (the other's
    gradients would stay unreduced; measured: the A14B's high-noise LoRA off by 1e-4)."""
    if last or layout.sharded:
        return contextlib.nullcontext()
    return accelerator.no_sync(model)


def backward(layout: Layout, accelerator: Accelerator, loss: torch.Tensor) -> None:
    """``loss``'s backward, multiplied by the context-parallel degree (module docstring)."""
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
