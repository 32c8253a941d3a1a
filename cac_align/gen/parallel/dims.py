"""Who is where: the ``parallel`` section (:class:`ParallelSettings`), this process's place among a
trainer's processes (:class:`Layout`), and the meshes they form (:func:`layout_for`), in the manner of
torchtitan's ``parallel_dims.py`` (``ParallelDims``, ``build_mesh``). :class:`Layout` is data: the
degrees, the ranks, the meshes and groups, and what follows from them alone. What is done with it lives
beside it, as functions that take it (the package's docstring): loading the generator (:mod:`.loading`),
applying the parallelism to a model (:mod:`.parallelize`), when gradients reduce (:mod:`.gradients`),
what is gathered across the processes (:mod:`.gather`) and how the processes connect (:mod:`.connect`).
None of them is imported here: this module stands below them all.

Mesh. Ranks are laid out ``(dp, cp)`` with the context-parallel rank fastest: rank
``r = dp_rank * cp + cp_rank``. FSDP2 shards over every rank (a 1-D mesh of the world), as verl-omni
does; context parallel runs inside each group of ``cp`` consecutive ranks. With ``replicate: R`` the
mesh is 2-D, ``("replicate", "shard")``: a replica's shards on consecutive ranks (one node).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["DEFAULT_TIMEOUT_S", "PARALLEL_SHARDS", "Layout", "ParallelSettings", "check_layout", "close_layout", "layout_for", "node_place"]

PARALLEL_SHARDS = ("none", "fsdp2")
# parallel.timeout_s's default (ParallelSettings): 30 minutes, about four times the longest wait we can foresee
# in a real run. Under context parallel the other processes of a group wait in a gather while their
# leader decodes and scores the group's videos; on the first step the judge's static cache also
# compiles. On an H100 (ENVIRONMENT.md, 2026-11-23 and -26) CaC's first pass over a batch of 32 videos
# took 6.94 s/video with a cold compile (222 s), and every new batch size compiles again (70-160 s); a
# second judge (UnifiedReward beside CaC) about doubles it (not measured): some 450 s before the VAE
# decode, most of NCCL's own default (600 s). torch's default for gloo is the same 30 minutes.
DEFAULT_TIMEOUT_S = 1800.0


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
        replicate: with ``shard: fsdp2``, the number of replicas of the sharded model: 1 (the default)
            shards every block over every process; R > 1 is hybrid sharding (HSDP): a 2-D mesh of R
            replicas x ``world / R`` shards, each block sharded inside a replica (launch one replica a
            node: its shards talk over the node's links) and replicated across them, so a forward's
            gathers stay inside a node and only the LoRA's gradients are reduced across nodes
            (docs/flow_grpo.md, "Beyond one node"). Each GPU holds ``1 / (world / R)`` of the model.
        reshard_after_forward: FSDP2 frees a block's gathered parameters after its forward (less
            memory, one more all-gather in the backward).
        encoder_on_device: keep the text encoder on the device between steps; false (the default
            with ``shard: fsdp2``, and a fix the memory plan may name for one GPU): it comes onto the
            device to encode a step's prompts and leaves it after. Null: true unless sharded.
        share_encoders: the processes of a node hold one copy of the prompt encoders' weights in host
            memory, where each used to hold its own (:mod:`cac_align.gen.shared_weights`): the node's
            first process loads them and the others map its copy. Null (the default): shared wherever
            they live on the CPU between encodes (``encoder_on_device`` false, or a CPU run) with several
            processes on the node and a pipeline read from files; false: each its own copy. It changes
            no sample: a resumed run may change it.
        share_dir: the node-local folder the shared copy is written to (deleted once every process
            has mapped it). Null: ``/dev/shm`` where it has room for the encoders, else the system's
            temporary folder.
        timeout_s: how long one process waits in a collective (a gather, FSDP2's all-gather, a
            barrier) for the others before the run fails with one line naming this setting
            (:class:`CollectiveTimeout`). Every process group the run makes gets it. The default,
            1800 s, covers a context-parallel leader's decode and first scoring, when the judge's
            static cache compiles (:data:`DEFAULT_TIMEOUT_S`). It changes no sample: a resumed run
            may change it.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"shard": PARALLEL_SHARDS}

    shard: str = "none"
    context_parallel: int = 1
    replicate: int = 1
    reshard_after_forward: bool = True
    encoder_on_device: bool | None = None
    share_encoders: bool | None = None
    share_dir: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.shard not in PARALLEL_SHARDS:
            raise ValueError(f"parallel.shard must be one of {PARALLEL_SHARDS}, got {self.shard!r}")
        if self.context_parallel < 1:
            raise ValueError(f"parallel.context_parallel must be >= 1, got {self.context_parallel}")
        if self.replicate < 1:
            raise ValueError(f"parallel.replicate must be >= 1, got {self.replicate}")
        if self.replicate > 1 and self.shard != "fsdp2":
            raise ValueError(f"parallel.replicate={self.replicate} replicates a sharded model: set parallel.shard=fsdp2 (unsharded, every process "
                             "is a replica already)")
        if self.replicate > 1 and self.context_parallel > 1:
            raise ValueError("parallel.replicate > 1 with parallel.context_parallel > 1 is not supported yet (a 3-D mesh of replicas, shards and "
                             "context-parallel groups is not proven equal to one process here); use one of them")
        if not self.timeout_s > 0:
            raise ValueError(f"parallel.timeout_s must be > 0 seconds, got {self.timeout_s}")

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_s)

    @property
    def active(self) -> bool:
        """Anything beyond today's data parallel."""
        return self.shard != "none" or self.context_parallel > 1

    @property
    def keeps_encoder(self) -> bool:
        return self.shard == "none" if self.encoder_on_device is None else bool(self.encoder_on_device)

    def shares_encoders(self, processes_per_node: int, on_gpu: bool = True) -> bool:
        """Whether ``processes_per_node`` processes hold one copy of the encoders between them
        (``share_encoders``; null: where the encoders live on the CPU between encodes)."""
        if processes_per_node < 2 or self.share_encoders is False:
            return False
        return bool(self.share_encoders) or not self.keeps_encoder or not on_gpu


# ---------------------------------------------------------------------------------------
# The layout: who is where, and what follows from it
# ---------------------------------------------------------------------------------------
@dataclass
class Layout:
    """This process's place in a trainer's processes: data, as torchtitan's ``ParallelDims``. What is
    done with it (loading, parallelizing, reducing, gathering) is a function of
    :mod:`cac_align.gen.parallel` that takes it, never a method.

    Attributes:
        settings: the ``parallel`` section.
        world: every process; rank: this one's (``dp_rank * cp + cp_rank``).
        cp: the context-parallel degree (1: none).
        fsdp_mesh: FSDP2's mesh: 1-D over every process, 2-D ``(replicate, shard)`` under HSDP (None unless sharded).
        cp_mesh: the ``(dp, ring, ulysses)`` mesh diffusers' context parallel runs on (None unless cp > 1).
        leaders: the process group of each context-parallel group's first rank (None unless cp > 1).
        device: where the sharded transformers and the rest of the pipeline compute (set by
            :func:`~.parallelize.apply_parallelism`).
        encoder_homes: the encoders whose weights are the node's shared copy, by ``id``, each with
            its home pages (set by :func:`~.loading.load_generator`; :func:`~.loading.to_host`
            restores them there).
        own_group: whether :func:`layout_for` made a one-process group (sharded on one process),
            which :func:`close_layout` ends.
        local_rank, per_node: this process's place on its node and the processes on each node
            (torchrun's ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``).
        node_group: this node's processes, where the run spans several nodes (None: one node).
    """

    settings: ParallelSettings
    world: int
    rank: int
    cp: int = 1
    fsdp_mesh: Any = None
    cp_mesh: Any = None
    leaders: Any = None
    device: Any = None  # where the sharded transformers and the rest of the pipeline compute
    # the encoders whose weights are the node's shared copy, by id (restored there after each encode)
    encoder_homes: dict[int, Any] = dataclasses.field(default_factory=dict)
    own_group: bool = False  # a one-process group made here (sharded on one process), ended by close_layout()
    local_rank: int = 0  # this process's place on its node (torchrun's LOCAL_RANK)
    per_node: int = 1  # processes on each node (torchrun's LOCAL_WORLD_SIZE)
    node_group: Any = None  # this node's processes, where the run spans several nodes (None: one node, the world)

    # -- who takes what ------------------------------------------------------------------
    @property
    def dp(self) -> int:
        """Data-parallel groups: each takes its own samples."""
        return self.world // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp

    @property
    def leader(self) -> bool:
        """The first rank of its context-parallel group: it decodes and scores the group's videos
        (the others run the transformer with it and take its scores)."""
        return self.cp_rank == 0

    @property
    def sharded(self) -> bool:
        return self.settings.shard == "fsdp2"

    @property
    def loss_scale(self) -> float:
        """The factor on each rank's loss: ``cp`` (:mod:`.gradients`, "Gradients under context
        parallel"); 1 without context parallel."""
        return float(self.cp)

    def describe(self) -> str:
        """One line for the log: the processes, the degrees and how the generator is held."""
        shard = "FSDP2 (one unit per block)" if self.sharded else "whole on every process (DDP)"
        if self.sharded and self.settings.replicate > 1:
            shard = f"HSDP: {self.settings.replicate} replicas x {self.world // self.settings.replicate} shards (one unit per block)"
        return f"{self.world} process(es): data parallel {self.dp} x context parallel {self.cp}; generator {shard}"

    # -- whose weights: the generator is read once a node (loading.py) -------------------
    @property
    def reads_weights(self) -> bool:
        """Whether this process reads (or, for a tiny pipeline, draws) the generator transformers'
        weights: every process, except in a run sharded over several, where the first process of
        each node alone does and its node's others receive their shards from it in
        :func:`~.parallelize.apply_parallelism` (no byte of a weight crosses between nodes)."""
        return not (self.sharded and self.world > 1) or self.local_rank == 0

    @property
    def node_leader(self) -> int:
        """The global rank of this node's first process (the one that reads the weights)."""
        return self.rank - self.local_rank


# ---------------------------------------------------------------------------------------
# The degrees against the processes, and the meshes
# ---------------------------------------------------------------------------------------
def check_layout(settings: ParallelSettings, world: int) -> None:
    """The degrees against the number of processes, before anything loads."""
    from cac_align.config import RecipeError

    if world % settings.context_parallel:
        raise RecipeError(f"parallel.context_parallel={settings.context_parallel} does not divide the {world} processes; "
                          f"launch a multiple of {settings.context_parallel} processes or change parallel.context_parallel")
    if world % settings.replicate:
        raise RecipeError(f"parallel.replicate={settings.replicate} does not divide the {world} processes; launch a multiple of "
                          f"{settings.replicate} processes (one replica a node: nodes x GPUs per node) or change parallel.replicate")
    if world > 1 and not torch.distributed.is_initialized():
        raise RecipeError("parallel: the processes are not connected (torch.distributed is not initialized); launch with "
                          "torchrun or accelerate launch")


def node_place(rank: int, world: int) -> tuple[int, int]:
    """``(local rank, processes on this node)``: torchrun's ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
    (accelerate's launcher sets them too), else every process on one node."""
    local_rank, local_world = os.environ.get("LOCAL_RANK", ""), os.environ.get("LOCAL_WORLD_SIZE", "")
    if local_rank.isdigit() and local_world.isdigit() and int(local_world) > 0:
        return int(local_rank), int(local_world)
    return rank, world



def layout_for(accelerator: Accelerator, settings: ParallelSettings) -> Layout:
    """This process's :class:`Layout` (no model touched): the meshes of ``settings`` over the
    processes accelerate launched."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if settings.context_parallel > 1 and not torch.accelerator.device_count():
        from cac_align.config import RecipeError

        # diffusers 0.42.1's ModelMixin._resolve_parallel_config takes the device as
        # rank % torch.accelerator.device_count(): zero on a machine without one
        raise RecipeError("parallel.context_parallel > 1 runs on GPUs (diffusers' context parallel picks its device among the "
                          "accelerators, and this machine has none); use context_parallel: 1 here, or see docs/flow_grpo.md "
                          "'Sharding and long videos' for how the tests run it on a CPU")
    if settings.active:
        check_layout(settings, world)
    layout = Layout(settings, world, rank, cp=settings.context_parallel)
    layout.local_rank, layout.per_node = node_place(rank, world)
    if not settings.active:
        return layout
    if world == 1 and not torch.distributed.is_initialized():
        # sharded on one process (a single GPU's peak on the sharded path; the tests): FSDP2 needs a
        # process group, and accelerate makes none for one process; a one-member group in memory
        backend = "nccl" if accelerator.device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1, timeout=settings.timeout)
        layout.own_group = True
    from torch.distributed.device_mesh import init_device_mesh

    device_type = accelerator.device.type
    if settings.shard == "fsdp2" and settings.replicate > 1:  # HSDP: replicas x shards, a replica's shards on consecutive ranks (a node)
        layout.fsdp_mesh = init_device_mesh(device_type, (settings.replicate, world // settings.replicate), mesh_dim_names=("replicate", "shard"))
        for name in layout.fsdp_mesh.mesh_dim_names:
            _set_timeout(layout.fsdp_mesh.get_group(name), settings.timeout)
    elif settings.shard == "fsdp2":
        layout.fsdp_mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))
    if settings.shard == "fsdp2" and layout.per_node < world:  # several nodes: each node's group, for its weights (apply_parallelism)
        if world % layout.per_node:
            from cac_align.config import RecipeError

            raise RecipeError(f"{world} processes are not whole nodes of {layout.per_node} (torchrun's LOCAL_WORLD_SIZE); launch the same "
                              "number of processes on every node")
        for node in range(world // layout.per_node):  # every process takes part in making each group (torch.distributed's rule)
            group = torch.distributed.new_group(ranks=list(range(node * layout.per_node, (node + 1) * layout.per_node)), timeout=settings.timeout)
            if node == rank // layout.per_node:
                layout.node_group = group
    if layout.cp > 1:
        layout.cp_mesh = init_device_mesh(device_type, (layout.dp, 1, layout.cp), mesh_dim_names=("dp", "ring", "ulysses"))
        for name in layout.cp_mesh.mesh_dim_names:  # a mesh's own groups take torch's default timeout, not the world's
            _set_timeout(layout.cp_mesh.get_group(name), settings.timeout)
        # every process takes part in making the group (torch.distributed's rule); only leaders use it
        leader_ranks = [d * layout.cp for d in range(layout.dp)]
        layout.leaders = torch.distributed.new_group(ranks=leader_ranks, timeout=settings.timeout)
    return layout


def _set_timeout(group: Any, timeout: timedelta) -> None:
    """``group``'s collectives wait ``timeout`` (torch's ``set_timeout``, or the private
    ``_set_pg_timeout`` of a torch without it)."""
    from torch.distributed import distributed_c10d

    setter = getattr(distributed_c10d, "set_timeout", None) or distributed_c10d._set_pg_timeout
    setter(timeout, group)


def close_layout(layout: Layout) -> None:
    """End the one-process group :func:`layout_for` made for a sharded run on one process (nothing
    otherwise: the processes' own group is the launcher's, ended with the run)."""
    if layout.own_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        layout.own_group = False
