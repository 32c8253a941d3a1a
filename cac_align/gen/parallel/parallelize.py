"""Applying the parallelism to a model, in a fixed order (torchtitan's ``parallelize``): context parallel
on the attention first (diffusers' own ``enable_parallelism``, Ulysses), then FSDP2: each block, then the
root. What differs per model (which classes are blocks, which context-parallel plan splits its inputs) is
the family's to say (:class:`~cac_align.gen.family.GeneratorFamily`). The training loop never learns which
was applied (CONVENTIONS.md, "Parallelism is applied to a model").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cac_align.gen.parallel.dims import Layout, ParallelSettings, layout_for
from cac_align.gen.parallel.loading import first_process_state, take_node_weights

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["apply_parallelism", "family_blocks", "fsdp_units", "own_view_outputs", "prepare_for_training", "setup_parallel"]


def apply_parallelism(layout: Layout, denoiser: Any, family: Any, pipe: Any = None, device: Any = None) -> None:
    """Apply the settings to ``denoiser``'s transformers (their LoRA already added; before the
    optimizer is made, since sharding replaces the parameters). Call once, on every process.

    1. context parallel (``context_parallel > 1``): each expert's attention through diffusers'
       ``enable_parallelism`` (Ulysses over the group's ranks) with the family's plan of which
       inputs are split (:meth:`~cac_align.gen.family.GeneratorFamily.context_parallel_plan`);
    2. FSDP2 (``shard: fsdp2``): ``fully_shard`` on each of the family's blocks
       (:attr:`~cac_align.gen.family.GeneratorFamily.block_classes`), then on the expert: blocks
       + 1 units per expert, the LoRA inside the units, the frozen base with no gradient; each
       process's shards go to ``device``. Over several processes every process then takes its
       node's first process's weights (its base and its LoRA, whatever it loaded itself: the
       others loaded the transformers empty, :func:`~.loading.load_generator`): each tensor broadcast
       whole in the node's group and kept as this process's shards, and the buffers a state
       dict leaves out (rope tables) whole; before sharding, each takes the first's dtypes, and a
       transformer of another shape is refused;
    3. the rest of ``pipe`` (sharded: loaded on the CPU): the VAE(s) and every other model to
       ``device``, except the encoders (:attr:`~cac_align.gen.family.GeneratorFamily.encoder_components`)
       when they do not stay (:func:`~.loading.encoders_on` brings them for each encoding).
    """
    experts = list(denoiser.experts)
    if layout.cp > 1:
        from diffusers import ContextParallelConfig

        for expert in experts:
            plan = family.context_parallel_plan(expert)
            expert.enable_parallelism(config=ContextParallelConfig(ulysses_degree=layout.cp, mesh=layout.cp_mesh), cp_plan=plan)
    if not layout.sharded:
        if pipe is not None and device is not None and not layout.settings.keeps_encoder:  # encoder_on_device: false, unsharded
            for name in family.encoder_components:
                if isinstance(pipe.components.get(name), torch.nn.Module):
                    pipe.components[name].to("cpu")
            layout.device = torch.device(device)
        return
    # torch FSDP2 directly: accelerate turns FSDP on for accelerators only (never for a CPU run),
    # and takes one model per prepare, where the A14B has two experts to shard
    from torch.distributed.fsdp import fully_shard

    from cac_align.config import RecipeError

    reshard = layout.settings.reshard_after_forward
    # the first process's weights, whole, taken before sharding frees them (they reach the others below)
    firsts = [first_process_state(expert, layout.rank, layout.reads_weights) for expert in experts] if layout.world > 1 else []
    for expert in experts:
        blocks = family_blocks(expert, family)
        if not blocks:
            raise RecipeError(f"parallel.shard=fsdp2: {type(expert).__name__} has no block of the classes {list(family.block_classes)} "
                              f"its family ({family.title}) names")
        for unit in (*blocks, expert):
            own_view_outputs(unit)  # before fully_shard: the hook runs before FSDP2's own (see its docstring)
            fully_shard(unit, mesh=layout.fsdp_mesh, reshard_after_forward=reshard)
    for expert, state in zip(experts, firsts):
        take_node_weights(expert, state, layout)
    del firsts
    if len(experts) > 1:  # a call with one level per sample runs every expert on every process (WanDenoiser)
        denoiser.every_expert = True
    if pipe is not None and device is not None:
        sharded = {id(e) for e in experts}
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and id(module) not in sharded:
                if name in family.encoder_components and not layout.settings.keeps_encoder:
                    continue
                module.to(device)
    layout.device = None if device is None else torch.device(device)


def prepare_for_training(layout: Layout, accelerator: Accelerator, denoiser: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
    """``(model, optimizer)`` for training: accelerate's ``prepare`` (DDP) unless sharded, when the
    denoiser is FSDP2's already (:func:`apply_parallelism`) and the optimizer steps on its shards."""
    if layout.sharded:
        return denoiser, optimizer
    return accelerator.prepare(denoiser, optimizer)


def setup_parallel(accelerator: Accelerator, settings: ParallelSettings, denoiser: Any, family: Any, pipe: Any = None) -> Layout:
    """:func:`~.dims.layout_for`, then :func:`apply_parallelism` to ``denoiser`` (a one-call form for scripts)."""
    layout = layout_for(accelerator, settings)
    apply_parallelism(layout, denoiser, family, pipe, accelerator.device)
    return layout



def _owned(output: Any) -> Any:
    """``output`` with each tensor that is a view of another replaced by its own copy."""
    from torch.utils._pytree import tree_map_only

    return tree_map_only(torch.Tensor, lambda t: t.clone() if t._base is not None and t.requires_grad else t, output)


def own_view_outputs(module: torch.nn.Module) -> Any:
    """Make ``module`` return tensors of their own, not views, before FSDP2 wraps it; returns the hook's
    handle.

    FSDP2 hangs its pre-backward hook (which all-gathers the unit's parameters again for the backward) on
    the unit's outputs, and warns when one is a view ("returned a view tensor ... can cause backward to
    fail or produce wrong gradients", torch ``_fsdp_state._register_pre_backward_hook``): an in-place op
    on that view by the caller would drop the hook. Wan's transformer returns a view (its unpatchify ends
    in ``flatten`` over a dimension of size 1), and no caller of ours changes it in place, so the
    gradients were right (tests/jobs/test_parallel.py pins the sharded gradients to one process's, and
    ``test_a_sharded_unit_returns_no_view``); the warning said so twice per run. A copy of the output
    (the size of the latents, small beside the unit's activations) removes the cause: the hook is
    registered before ``fully_shard``'s, so FSDP2 sees the copy."""
    return module.register_forward_hook(lambda _module, _inputs, output: _owned(output))


def family_blocks(transformer: torch.nn.Module, family: Any) -> list[torch.nn.Module]:
    """The transformer's blocks, by the family's class names (FSDP2 renames a sharded module's class
    ``FSDP<name>``, a subclass: its bases are read too)."""
    return [m for m in transformer.modules() if any(c.__name__ in family.block_classes for c in type(m).__mro__)]


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP2 made units of (``fully_shard``), in module order."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]
