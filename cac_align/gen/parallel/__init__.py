"""How a generator trainer's processes share the work: data parallel (each process its own samples, the whole
generator on every process: the default), FSDP2 sharding of the generator's transformers (one unit per block;
over nodes, hybrid sharding) and context parallel (one video's tokens split over a group of processes, through
diffusers' own ``enable_parallelism``, Ulysses).

As torchtitan splits it (``parallel_dims.py``, ``parallelize.py``, ``distributed/``), the :class:`Layout` is data
(who is where: the degrees, the ranks, the meshes) and everything done with it is a function that takes it. A job
(``flow-grpo``, ``nft``, ``dpo``) runs under :func:`named_timeout`, calls :func:`connect_processes` before accelerate's
``Accelerator``, :func:`layout_for` once before anything loads, ``load_generator(layout, ...)``, and once the LoRA is on,
``apply_parallelism(layout, ...)`` and ``prepare_for_training(layout, ...)``; then it reads the layout (its
``dp_rank``: which samples; ``leader``: whether it decodes and scores them) and calls ``gather_numbers``,
``gradient_sync``, ``scaled_backward``, ``clip_grad_norm_``, ``encoders_on`` and ``full_trainable`` with it. It never
learns which parallelism was applied (CONVENTIONS.md, "Parallelism is applied to a model"). One module each, every
arrow down to :mod:`.dims`: :mod:`.dims` (the settings, the layout, the meshes), :mod:`.loading` (the generator read
once a node, the shared prompt encoders), :mod:`.parallelize` (context parallel, then FSDP2 per block, then the root),
:mod:`.gradients` (when an update's gradients reduce, the loss scale, the clipped norm), :mod:`.gather` (numbers over
the groups, sharded tensors whole), :mod:`.connect` (the process group, its timeout, a trainer's end), :mod:`.checks`
(before loading, at resume).
"""

from cac_align.gen.parallel.checks import check_context_parallel, check_parallel_resume, layout_state
from cac_align.gen.parallel.connect import CollectiveTimeout, collective_timed_out, connect_processes, named_timeout, release_trainer
from cac_align.gen.parallel.dims import DEFAULT_TIMEOUT_S, PARALLEL_SHARDS, Layout, ParallelSettings, check_layout, close_layout, layout_for, node_place
from cac_align.gen.parallel.gather import expert_states, full_tensor, full_tensors, full_trainable, gather_from_leaders, gather_numbers
from cac_align.gen.parallel.gradients import clip_grad_norm_, gradient_sync, reducing_backwards, scaled_backward
from cac_align.gen.parallel.loading import _share_folder, encoders_on, load_generator, remove_stale_copies, to_host
from cac_align.gen.parallel.parallelize import apply_parallelism, family_blocks, fsdp_units, own_view_outputs, prepare_for_training, setup_parallel

__all__ = ["DEFAULT_TIMEOUT_S", "PARALLEL_SHARDS", "CollectiveTimeout", "Layout", "ParallelSettings", "apply_parallelism", "check_context_parallel",
           "check_layout", "check_parallel_resume", "clip_grad_norm_", "close_layout", "collective_timed_out", "connect_processes", "encoders_on",
           "expert_states", "family_blocks", "fsdp_units", "full_tensor", "full_tensors", "full_trainable", "gather_from_leaders", "gather_numbers",
           "gradient_sync", "layout_for", "layout_state", "load_generator", "named_timeout", "node_place", "own_view_outputs", "prepare_for_training",
           "reducing_backwards", "release_trainer", "remove_stale_copies", "scaled_backward", "setup_parallel", "to_host"]
__all__ += ["_share_folder"]  # read by tests/gen/test_shared_weights.py
