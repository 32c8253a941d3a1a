"""How a generator trainer's processes share the work: data parallel (each process its own samples,
the whole generator on every process: today's default), FSDP2 sharding of the generator's transformers
(one unit per transformer block), and context parallel (one video's tokens split over a group of
processes, through diffusers' own ``enable_parallelism``, Ulysses).

The jobs (``flow-grpo``, ``dpo``) call :func:`setup_parallel` once in their setup and then use the
:class:`Layout` it returns: which samples this process takes (its data-parallel rank), whether it
decodes and scores them (the first rank of its context-parallel group does), how to gather numbers,
how to take a clipped optimizer step and where the LoRA's full tensors come from. A job never learns
which parallelism was applied (CONVENTIONS.md, "Parallelism is applied to a model").

The order follows torchtitan's ``parallelize``: context parallel on the attention first, then FSDP2:
each block, then the root. What differs per model (which classes are blocks, which context-parallel
plan splits its inputs) is the family's to say (:class:`~cac_align.gen.family.GeneratorFamily`).

Mesh. Ranks are laid out ``(dp, cp)`` with the context-parallel rank fastest: rank
``r = dp_rank * cp + cp_rank``. FSDP2 shards over every rank (a 1-D mesh of the world), as verl-omni
does; context parallel runs inside each group of ``cp`` consecutive ranks.

Gradients under context parallel. Every rank of a context-parallel group computes the same loss, but
diffusers' output gather hands each rank back only its own chunk's gradient in the backward, so each
rank's parameter gradient is a partial sum; the true gradient is their sum over the group. FSDP2 (and
DDP) average over all ``dp * cp`` ranks, so the loss is multiplied by ``cp``
(:meth:`Layout.loss_scale`), as verl-omni does; a test pins it against one process, with a control.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PARALLEL_SHARDS", "ParallelSettings"]

PARALLEL_SHARDS = ("none", "fsdp2")


@dataclass
class ParallelSettings:
    """The ``parallel`` section of ``flow-grpo`` and ``dpo`` (docs/flow_grpo.md, "Sharding and long
    videos"). The defaults are today's data parallel: every process holds the whole generator.

    Attributes:
        shard: "none" (accelerate's DDP: each process a full copy) or "fsdp2" (torch's
            ``fully_shard``: each transformer block's parameters split over every process, gathered
            one block at a time).
        context_parallel: processes that share one video's tokens (diffusers' Ulysses context
            parallel); the number of processes must be a multiple of it, and the transformer's
            attention heads and the video's tokens too.
        reshard_after_forward: FSDP2 frees a block's gathered parameters after its forward (less
            memory, one more all-gather in the backward).
        encoder_on_device: keep the text encoder on the device between steps; false (the default
            with ``shard: fsdp2``): it comes onto the device to encode a step's prompts and leaves it
            after. Null: true unless sharded.
    """

    shard: str = "none"
    context_parallel: int = 1
    reshard_after_forward: bool = True
    encoder_on_device: bool | None = None

    def __post_init__(self) -> None:
        if self.shard not in PARALLEL_SHARDS:
            raise ValueError(f"parallel.shard must be one of {PARALLEL_SHARDS}, got {self.shard!r}")
        if self.context_parallel < 1:
            raise ValueError(f"parallel.context_parallel must be >= 1, got {self.context_parallel}")

    @property
    def active(self) -> bool:
        """Anything beyond today's data parallel."""
        return self.shard != "none" or self.context_parallel > 1

    @property
    def keeps_encoder(self) -> bool:
        return self.shard == "none" if self.encoder_on_device is None else bool(self.encoder_on_device)
