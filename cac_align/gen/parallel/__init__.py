"""How a generator trainer's processes share the work: data parallel (each process its own samples,
the whole generator on every process: today's default), FSDP2 sharding of the generator's transformers
(one unit per transformer block; over nodes, hybrid sharding), and context parallel (one video's tokens
split over a group of processes, through diffusers' own ``enable_parallelism``, Ulysses).

The jobs (``flow-grpo``, ``nft``, ``dpo``) run under :func:`named_timeout` (a stuck collective stops them
in one line naming ``parallel.timeout_s``), call :func:`connect_processes` before accelerate's
``Accelerator`` (the process group with the timeout, reconnecting after a torchrun restart),
:func:`layout_for` once in their setup, before anything loads, :meth:`Layout.load_generator` for the
pipeline, and :meth:`Layout.apply` once the LoRA is on the transformers, and then use the
:class:`Layout`: which samples this process takes (its data-parallel rank), whether it decodes and scores
them (the first rank of its context-parallel group does), how to gather numbers, when the gradients of
an update reduce, how to take a clipped optimizer step and where the LoRA's full tensors come from. A job
never learns which parallelism was applied (CONVENTIONS.md, "Parallelism is applied to a model").

The package follows torchtitan's separation of concerns (``parallel_dims.py``, ``parallelize.py`` and
``distributed/fsdp.py``), one module each:

- :mod:`.dims`: who is where: the ``parallel`` section, this process's :class:`Layout`, the meshes;
- :mod:`.loading`: the generator loaded once a node, the weights that reach the other processes, the
  prompt encoders shared in host memory;
- :mod:`.parallelize`: applying it to a model: context parallel on the attention, then FSDP2 per block,
  then the root;
- :mod:`.gradients`: when gradients reduce (an update's backwards), the loss scale, the clipped norm;
- :mod:`.connect`: connecting the processes, the timeout of a collective, a trainer's end;
- :mod:`.checks`: before anything loads (can the video be split) and at a resume (the same layout).
"""

from cac_align.gen.parallel.checks import check_context_parallel, check_parallel_resume, layout_state
from cac_align.gen.parallel.connect import CollectiveTimeout, collective_timed_out, connect_processes, named_timeout, release_trainer
from cac_align.gen.parallel.dims import DEFAULT_TIMEOUT_S, PARALLEL_SHARDS, Layout, ParallelSettings, check_layout, layout_for, node_place, setup_parallel
from cac_align.gen.parallel.loading import _share_folder, remove_stale_copies
from cac_align.gen.parallel.parallelize import family_blocks, fsdp_units, own_view_outputs

__all__ = ["DEFAULT_TIMEOUT_S", "PARALLEL_SHARDS", "CollectiveTimeout", "Layout", "ParallelSettings", "check_context_parallel", "check_layout",
           "check_parallel_resume", "collective_timed_out", "connect_processes", "family_blocks", "fsdp_units", "layout_for", "layout_state",
           "named_timeout", "node_place", "own_view_outputs", "release_trainer", "remove_stale_copies", "setup_parallel"]
__all__ += ["_share_folder"]  # read by tests/gen/test_shared_weights.py
