"""What the processes put together: per-sample numbers over the data-parallel groups (a reward's
scores, its components, the evaluation's), and a sharded model's tensors whole (the LoRA a checkpoint
or ``lora/`` writes, an EMA, a reference copy). Each is a collective: every process calls it, whatever
its data (CONVENTIONS.md, "Parallelism is applied to a model").

Numbers. Under context parallel the ``cp`` ranks of a group hold the same samples, so a group's values
count once: its leader's (:attr:`~.dims.Layout.leader`). Tensors. A sharded (FSDP2) parameter is a
``DTensor``: each process holds its shard, and ``full_tensor`` gathers the whole; an unsharded one is
whole already, so the same call serves every layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from cac_align.gen.parallel.dims import Layout

__all__ = ["expert_states", "full_tensor", "full_tensors", "full_trainable", "gather_from_leaders", "gather_numbers"]


def gather_numbers(layout: Layout, accelerator: Accelerator, values: Any) -> np.ndarray:
    """``values`` (this process's, one per sample of its group: ``(n,)`` float) concatenated over the
    data-parallel groups in order, on every process: ``(dp * n,)`` float64, each context-parallel
    group counted once (its leader's values)."""
    from cac_align.run.dist import gather_floats

    gathered = gather_floats(accelerator, values)
    if layout.cp == 1:
        return gathered
    return gathered.reshape(layout.dp, layout.cp, -1)[:, 0].reshape(-1)


def gather_from_leaders(layout: Layout, accelerator: Accelerator, values: Any) -> np.ndarray:
    """Like :func:`gather_numbers`, called by the leaders of the context-parallel groups alone (a
    number only a leader has, such as a reward's per-component scores): ``(dp * n,)`` float64. The
    other ranks must not call it (it raises there)."""
    if layout.cp == 1:
        from cac_align.run.dist import gather_floats

        return gather_floats(accelerator, values)
    if not layout.leader:
        raise RuntimeError("gather_from_leaders is called by the leaders of the context-parallel groups only")
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=accelerator.device)
    parts = [torch.empty_like(tensor) for _ in range(layout.dp)]
    torch.distributed.all_gather(parts, tensor, group=layout.leaders)
    return torch.cat(parts).cpu().numpy()


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole: a ``DTensor``'s shards gathered (a collective), any other as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) weights by name, whole, float32 on the CPU, on every process (a
    collective when sharded: every process must call it)."""
    return {name: full_tensor(p).detach().float().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` (an EMA of the shards, a reference copy) whole, float32 on the CPU (a collective
    when sharded)."""
    return {name: full_tensor(t).detach().float().cpu().contiguous() for name, t in tensors.items()}


def expert_states(denoiser: Any) -> list[dict[str, torch.Tensor] | None]:
    """Each expert's LoRA weights whole, keyed as the expert's own ``state_dict`` (what
    ``save_lora`` writes), None for an expert without one (a collective when sharded)."""
    states = []
    for index, expert in enumerate(denoiser.experts):
        if index not in denoiser.trained_experts():
            states.append(None)
            continue
        states.append({name: full_tensor(p).detach().cpu().contiguous() for name, p in expert.named_parameters() if p.requires_grad})
    return states
