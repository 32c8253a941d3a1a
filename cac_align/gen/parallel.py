"""How a generator trainer's processes share the work: data parallel (each process its own samples,
the whole generator on every process: today's default), FSDP2 sharding of the generator's transformers
(one unit per transformer block), and context parallel (one video's tokens split over a group of
processes, through diffusers' own ``enable_parallelism``, Ulysses).

The jobs (``flow-grpo``, ``dpo``) run under :func:`named_timeout` (a stuck collective stops them in one
line naming ``parallel.timeout_s``), call :func:`connect_processes` before accelerate's ``Accelerator``
(the process group with the timeout, reconnecting after a torchrun restart), :func:`layout_for` once in
their setup, before anything loads, :meth:`Layout.load_generator` for the pipeline, and
:meth:`Layout.apply` once the LoRA is on the transformers, and then use the :class:`Layout`: which samples this process takes (its data-parallel rank), whether it
decodes and scores them (the first rank of its context-parallel group does), how to gather numbers,
how to take a clipped optimizer step and where the LoRA's full tensors come from. A job never learns
which parallelism was applied (CONVENTIONS.md, "Parallelism is applied to a model").

Loading once a node. Sharded over several processes, only the first process of each node (its
``LOCAL_RANK`` 0; on one node, global rank 0) reads the transformers' weights (every expert) into host
memory, as one process does; every other process builds them on the meta device from their configs
(:meth:`Layout.load_generator`), adds the same LoRA (on the meta device too), applies the same context
parallel and ``fully_shard``, and then receives every weight, the LoRA's included, from its node's
first process, one tensor at a time in the node's group, keeping its shards (:meth:`Layout.apply`),
and the buffers a state dict leaves out (the rope tables). No byte of a weight crosses between nodes.
So every process holds what its node's first process loaded, which is what one process loads. The
VAE(s) load on every process as before: each decodes its own samples. The text encoder(s) too, except
where they live on the CPU between encodes with several processes on a node: then the node's first
process loads them and the others map its copy, one copy per node (:mod:`cac_align.gen.shared_weights`,
``parallel.share_encoders``); each still encodes its own prompts.

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

import contextlib
import dataclasses
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["DEFAULT_TIMEOUT_S", "PARALLEL_SHARDS", "CollectiveTimeout", "Layout", "ParallelSettings", "check_context_parallel", "check_layout", "release_trainer",
           "collective_timed_out", "connect_processes", "family_blocks", "fsdp_units", "layout_for", "named_timeout", "node_place", "own_view_outputs",
           "remove_stale_copies",
           "setup_parallel"]

PARALLEL_SHARDS = ("none", "fsdp2")
# parallel.timeout_s's default (ParallelSettings): 30 minutes, about four times the longest wait we can foresee
# in a real run. Under context parallel the other processes of a group wait in a gather while their
# leader decodes and scores the group's videos; on the first step the judge's static cache also
# compiles. On an H100 (ENVIRONMENT.md, 2026-11-23 and -26) CaC's first pass over a batch of 32 videos
# took 6.94 s/video with a cold compile (222 s), and every new batch size compiles again (70-160 s); a
# second judge (UnifiedReward beside CaC) about doubles it (not measured): some 450 s before the VAE
# decode, most of NCCL's own default (600 s). torch's default for gloo is the same 30 minutes.
DEFAULT_TIMEOUT_S = 1800.0

log = logging.getLogger(__name__)


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
# The layout: who takes which samples, and the steps that differ once a model is parallel
# ---------------------------------------------------------------------------------------
@dataclass
class Layout:
    """This process's place in a trainer's processes, and what it does differently there.

    Attributes:
        settings: the ``parallel`` section.
        world: every process; rank: this one's (``dp_rank * cp + cp_rank``).
        cp: the context-parallel degree (1: none).
        fsdp_mesh: FSDP2's 1-D mesh over every process (None unless sharded).
        cp_mesh: the ``(dp, ring, ulysses)`` mesh diffusers' context parallel runs on (None unless cp > 1).
        leaders: the process group of each context-parallel group's first rank (None unless cp > 1).
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
    own_group: bool = False  # a one-process group made here (sharded on one process), ended by close()
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
        """The factor on each rank's loss: ``cp`` (module docstring, "Gradients under context
        parallel"); 1 without context parallel."""
        return float(self.cp)

    def close(self) -> None:
        """End the one-process group :func:`layout_for` made for a sharded run on one process."""
        if self.own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.own_group = False

    def describe(self) -> str:
        shard = "FSDP2 (one unit per block)" if self.sharded else "whole on every process (DDP)"
        if self.sharded and self.settings.replicate > 1:
            shard = f"HSDP: {self.settings.replicate} replicas x {self.world // self.settings.replicate} shards (one unit per block)"
        return f"{self.world} process(es): data parallel {self.dp} x context parallel {self.cp}; generator {shard}"

    # -- numbers across processes --------------------------------------------------------
    def gather(self, accelerator: Accelerator, values: Any) -> np.ndarray:
        """A per-group float array concatenated over the data-parallel groups in order, on every
        process (each context-parallel group counted once: its leader's values)."""
        from cac_align.run.dist import gather_floats

        gathered = gather_floats(accelerator, values)
        if self.cp == 1:
            return gathered
        return gathered.reshape(self.dp, self.cp, -1)[:, 0].reshape(-1)

    def gather_leaders(self, accelerator: Accelerator, values: Any) -> np.ndarray | None:
        """Like :meth:`gather`, called by the leaders alone (a number only a leader has, such as a
        reward's per-component scores); None on the other ranks, which must not call it."""
        if self.cp == 1:
            from cac_align.run.dist import gather_floats

            return gather_floats(accelerator, values)
        if not self.leader:
            raise RuntimeError("gather_leaders is called by the leaders of the context-parallel groups only")
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=accelerator.device)
        parts = [torch.empty_like(tensor) for _ in range(self.dp)]
        torch.distributed.all_gather(parts, tensor, group=self.leaders)
        return torch.cat(parts).cpu().numpy()

    # -- the model -----------------------------------------------------------------------
    def prepare(self, accelerator: Accelerator, denoiser: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """``(model, optimizer)`` for training: accelerate's ``prepare`` (DDP) unless sharded, when
        the denoiser is already FSDP2's (:meth:`apply`) and the optimizer steps on its shards."""
        if self.sharded:
            return denoiser, optimizer
        return accelerator.prepare(denoiser, optimizer)

    def no_sync(self, accelerator: Accelerator, model: Any, last: bool) -> Any:
        """The context of one backward of an accumulated update: DDP all-reduces on the ``last``
        only (``no_sync`` before it). Sharded, every backward reduce-scatters its gradients into
        the shards: FSDP2 reduces a unit's held-back gradients only in a backward that runs that
        unit, and a two-expert model's last backward may run one expert alone (the other's
        gradients would stay unreduced; measured: the A14B's high-noise LoRA off by 1e-4)."""
        if last or self.sharded:
            return contextlib.nullcontext()
        return accelerator.no_sync(model)

    def backward(self, accelerator: Accelerator, loss: torch.Tensor) -> None:
        accelerator.backward(loss * self.loss_scale if self.cp > 1 else loss)

    def clip_grad_norm_(self, accelerator: Accelerator, model: Any, max_norm: float) -> float:
        """Clip the trainable gradients to ``max_norm`` by their global norm; returns the norm
        before clipping. Sharded: the norm of the whole gradient (each shard's squares summed over
        every process), the same number one process computes."""
        if not self.sharded:
            return float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if hasattr(total, "full_tensor"):  # a DTensor: each process holds its shards' part of the sum
            total = total.full_tensor()
        torch.nn.utils.clip_grads_with_norm_([p for p in model.parameters() if p.grad is not None], max_norm, total)
        return float(total)

    @property
    def reads_weights(self) -> bool:
        """Whether this process reads (or, for a tiny pipeline, draws) the generator transformers'
        weights: every process, except in a run sharded over several, where the first process of
        each node alone does and its node's others receive their shards from it in :meth:`apply`
        (no byte of a weight crosses between nodes)."""
        return not (self.sharded and self.world > 1) or self.local_rank == 0

    @property
    def node_leader(self) -> int:
        """The global rank of this node's first process (the one that reads the weights)."""
        return self.rank - self.local_rank

    def load_generator(self, config: Any, device: Any) -> Any:
        """The pipeline ``config`` (a :class:`~cac_align.gen.generator.GeneratorConfig`) names, as this
        process needs it before the LoRA and :meth:`apply`. Call once, on every process.

        - Not sharded: loaded whole on ``device``, as one process loads it.
        - Sharded: loaded on the CPU (:meth:`apply` puts each process's shards on its device). Over
          several processes, only the first reads the transformers' weights; the others build them on
          the meta device from their configs (:func:`~cac_align.gen.generator.build_generator`'s
          ``empty_transformers``: no weight read, no host memory) and take their shards from the first
          in :meth:`apply`. The VAE(s) load whole on every process.
        - The text encoder(s): where they live on the CPU between encodes and several processes share
          a node (``share_encoders``), the node's first process loads them and the others build them
          empty and map its copy (:meth:`_share_encoders`); else each process loads its own.
        - A tiny pipeline (drawn in-process from torch's random generator, not read): the first
          process builds it whole and shares the random state after each transformer; the others
          build the transformers on the meta device and the rest from those states
          (:mod:`cac_align.gen.tiny`, "In a sharded run"), so the rest is what the first built.
        """
        from cac_align.gen.generator import build_generator

        share = self._shares_encoders(config, device)
        empty_encoders = share and node_place(self.rank, self.world)[0] != 0  # the node's other processes map its first one's copy
        if not self.sharded:
            pipe = build_generator(dataclasses.replace(config, device=str(device)), empty_encoders=empty_encoders)
        elif self.world == 1:
            return build_generator(dataclasses.replace(config, device="cpu"))
        elif config.is_synthetic or config.name not in config.family.tiny_names:
            pipe = build_generator(dataclasses.replace(config, device="cpu"), empty_transformers=not self.reads_weights, empty_encoders=empty_encoders)
        else:
            return self._load_tiny_sharded(dataclasses.replace(config, device="cpu"))
        if share:
            self._share_encoders(pipe, config.family)
        return pipe

    def _shares_encoders(self, config: Any, device: Any) -> bool:
        """Whether this run's encoders are one copy per node (``share_encoders``): several processes
        on the node, and a pipeline read from files (a tiny one is drawn in each process)."""
        if self.world < 2 or config.is_synthetic or config.name in config.family.tiny_names:
            return False
        on_gpu = device is not None and torch.device(device).type != "cpu"
        return self.settings.shares_encoders(node_place(self.rank, self.world)[1], on_gpu=on_gpu)

    def _share_encoders(self, pipe: Any, family: Any) -> None:
        """The node's first process publishes its encoders' weights to a shared file, the others map it
        (:mod:`cac_align.gen.shared_weights`); every process calls it. A failure on any process fails
        every process in one line, and the file is gone either way."""
        from cac_align.config import RecipeError
        from cac_align.gen.shared_weights import attach

        local_rank, _ = node_place(self.rank, self.world)
        modules = {name: pipe.components[name] for name in family.encoder_components if isinstance(pipe.components.get(name), torch.nn.Module)}
        folder, mine, homes = None, {"node": _node_name(), "local_rank": local_rank}, {}
        if local_rank == 0:
            folder, published, homes = _publish_encoders(modules, self.settings.share_dir)
            mine.update(published)
        placed = [None] * self.world
        torch.distributed.all_gather_object(placed, mine)
        first = next((p for p in placed if p["node"] == mine["node"] and p["local_rank"] == 0), None)
        error = None if first is not None else f"no process with LOCAL_RANK 0 runs on this node ({mine['node']})"
        error = error or (first or {}).get("error")
        if error is None and local_rank != 0:
            try:
                homes = {name: attach(modules[name], layout) for name, layout in first["layouts"].items()}
            except (ValueError, RuntimeError, OSError) as exc:
                error = f"mapping the shared copy failed: {exc}"
        self.encoder_homes = {id(modules[name]): home for name, home in homes.items()}
        outcomes = [None] * self.world
        torch.distributed.all_gather_object(outcomes, error)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)  # every process has mapped it (or failed): the mappings keep the pages
        failed = next((o for o in outcomes if o), None)
        if failed:
            raise RecipeError(f"parallel.share_encoders: {failed}; set parallel.share_encoders: false to load a copy in each process")
        if local_rank == 0:
            gib = sum(h.bytes for h in self.encoder_homes.values()) / 2**30
            log.info("the prompt encoders (%s, %.2f GiB) are one copy in host memory for this node's processes (parallel.share_encoders)",
                     ", ".join(modules), gib)

    def _load_tiny_sharded(self, config: Any) -> Any:
        from cac_align.gen.generator import build_generator
        from cac_align.gen import tiny

        states = None
        if self.reads_weights:
            with tiny.recording_transformer_draws() as states:
                pipe = build_generator(config)
        shared = [states]
        torch.distributed.broadcast_object_list(shared, src=0)
        if not self.reads_weights:
            with tiny.transformers_on_meta(shared[0]):
                pipe = build_generator(config)
        return pipe

    def apply(self, denoiser: Any, family: Any, pipe: Any = None, device: Any = None) -> None:
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
           others loaded the transformers empty, :meth:`load_generator`): each tensor broadcast
           whole in the node's group and kept as this process's shards, and the buffers a state
           dict leaves out (rope tables) whole; before sharding, each takes the first's dtypes, and a
           transformer of another shape is refused;
        3. the rest of ``pipe`` (sharded: loaded on the CPU): the VAE(s) and every other model to
           ``device``, except the encoders (:attr:`~cac_align.gen.family.GeneratorFamily.encoder_components`)
           when they do not stay (:meth:`encoders_on` brings them for each encoding).
        """
        experts = list(denoiser.experts)
        if self.cp > 1:
            from diffusers import ContextParallelConfig

            for expert in experts:
                plan = family.context_parallel_plan(expert)
                expert.enable_parallelism(config=ContextParallelConfig(ulysses_degree=self.cp, mesh=self.cp_mesh), cp_plan=plan)
        if not self.sharded:
            if pipe is not None and device is not None and not self.settings.keeps_encoder:  # encoder_on_device: false, unsharded
                for name in family.encoder_components:
                    if isinstance(pipe.components.get(name), torch.nn.Module):
                        pipe.components[name].to("cpu")
                self.device = torch.device(device)
            return
        # torch FSDP2 directly: accelerate turns FSDP on for accelerators only (never for a CPU run),
        # and takes one model per prepare, where the A14B has two experts to shard
        from torch.distributed.fsdp import fully_shard

        from cac_align.config import RecipeError

        reshard = self.settings.reshard_after_forward
        # the first process's weights, whole, taken before sharding frees them (they reach the others below)
        firsts = [_first_process_state(expert, self.rank, self.reads_weights) for expert in experts] if self.world > 1 else []
        for expert in experts:
            blocks = family_blocks(expert, family)
            if not blocks:
                raise RecipeError(f"parallel.shard=fsdp2: {type(expert).__name__} has no block of the classes {list(family.block_classes)} "
                                  f"its family ({family.title}) names")
            for unit in (*blocks, expert):
                own_view_outputs(unit)  # before fully_shard: the hook runs before FSDP2's own (see its docstring)
                fully_shard(unit, mesh=self.fsdp_mesh, reshard_after_forward=reshard)
        for expert, state in zip(experts, firsts):
            _take_node_weights(expert, state, self)
        del firsts
        if len(experts) > 1:  # a call with one level per sample runs every expert on every process (WanDenoiser)
            denoiser.every_expert = True
        if pipe is not None and device is not None:
            sharded = {id(e) for e in experts}
            for name, module in pipe.components.items():
                if isinstance(module, torch.nn.Module) and id(module) not in sharded:
                    if name in family.encoder_components and not self.settings.keeps_encoder:
                        continue
                    module.to(device)
        self.device = None if device is None else torch.device(device)

    def to_host(self, module: torch.nn.Module) -> None:
        """``module`` back on the CPU: an encoder whose weights are the node's shared copy back to its
        pages (:meth:`~cac_align.gen.shared_weights.MappedTensors.restore`; ``module.to("cpu")`` would
        give this process a private copy), any other by ``module.to("cpu")``."""
        home = self.encoder_homes.get(id(module))
        if home is not None:
            home.restore()
        else:
            module.to("cpu")

    @contextlib.contextmanager
    def encoders_on(self, pipe: Any, family: Any):
        """The prompt encoders on the device while they encode, and back on the CPU after, when
        ``encoder_on_device`` says they do not stay (sharded on an accelerator); else nothing moves."""
        device = self.device
        if self.settings.keeps_encoder or device is None or device.type == "cpu":
            yield
            return
        modules = [pipe.components[name] for name in family.encoder_components if isinstance(pipe.components.get(name), torch.nn.Module)]
        for module in modules:
            module.to(device)
        try:
            yield
        finally:
            for module in modules:
                self.to_host(module)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def full_trainable(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The trainable (LoRA) weights by name, whole, float32 on the CPU, on every process (a
        collective when sharded: every process must call it)."""
        out = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                out[name] = _full(p).detach().float().cpu().contiguous()
        return out

    def full_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` (an EMA of the shards) whole, float32 on the CPU (a collective when sharded)."""
        return {name: _full(t).detach().float().cpu().contiguous() for name, t in tensors.items()}

    def expert_states(self, denoiser: Any) -> list[dict[str, torch.Tensor] | None]:
        """Each expert's LoRA weights whole, keyed as the expert's own ``state_dict`` (what
        ``save_lora`` writes), None for an expert without one (a collective when sharded)."""
        states = []
        for index, expert in enumerate(denoiser.experts):
            if index not in denoiser.trained_experts():
                states.append(None)
                continue
            states.append({name: _full(p).detach().cpu().contiguous() for name, p in expert.named_parameters() if p.requires_grad})
        return states


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


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def family_blocks(transformer: torch.nn.Module, family: Any) -> list[torch.nn.Module]:
    """The transformer's blocks, by the family's class names (FSDP2 renames a sharded module's class
    ``FSDP<name>``, a subclass: its bases are read too)."""
    return [m for m in transformer.modules() if any(c.__name__ in family.block_classes for c in type(m).__mro__)]


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP2 made units of (``fully_shard``), in module order."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


# ---------------------------------------------------------------------------------------
# Loading once: the first process's weights reach the others' shards (module docstring)
# ---------------------------------------------------------------------------------------
def _tensors(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, bool]]:
    """Every parameter and buffer of ``module`` as ``(qualified name, owner, attribute, is_buffer)``,
    in module order (the same on every process that built the same module)."""
    out = []
    for prefix, owner in module.named_modules():
        for kind, tensors in ((False, owner._parameters), (True, owner._buffers)):
            for attr, tensor in tensors.items():
                if tensor is not None:
                    out.append((f"{prefix}.{attr}" if prefix else attr, owner, attr, kind))
    return out


def _first_process_state(expert: torch.nn.Module, rank: int, reads: bool) -> dict[str, torch.Tensor]:
    """Before sharding, on every process: the first process says each tensor's name, shape and dtype;
    the others take its dtypes (their empty transformers were built in ``generator.dtype``, where
    ``from_pretrained`` keeps some modules in float32) and are refused on another name or shape.
    Returns the state dict of a process that read the weights (``reads``: each node's first; its
    tensors kept alive through the sharding), {} on the others."""

    entries = _tensors(expert)
    spec: list[Any] = [[(name, tuple(getattr(owner, attr).shape), getattr(owner, attr).dtype) for name, owner, attr, _ in entries] if rank == 0
                       else None]
    torch.distributed.broadcast_object_list(spec, src=0)
    if rank == 0:
        return expert.state_dict()
    first = spec[0]
    _check_built_alike(expert, entries, first, rank)
    if reads:  # another node's first process: it read the same files, and is its node's source
        return expert.state_dict()
    for (_, owner, attr, is_buffer), (_, _, dtype) in zip(entries, first):
        tensor = getattr(owner, attr)
        if tensor.dtype != dtype:
            if is_buffer:
                owner._buffers[attr] = tensor.to(dtype)
            else:
                tensor.data = tensor.data.to(dtype)
    return {}


def _check_built_alike(expert: torch.nn.Module, entries: list, first: list, rank: int) -> None:
    """Refuse, in one line, a process whose transformer has other tensors than the first process's."""
    from cac_align.config import RecipeError

    mine = [(name, tuple(getattr(owner, attr).shape)) for name, owner, attr, _ in entries]
    if mine != [(name, shape) for name, shape, _ in first]:
        differ = next((f"{a} against {b[:2]}" for a, b in zip(mine, first) if a != b[:2]), f"{len(mine)} tensors against {len(first)}")
        raise RecipeError(f"parallel.shard=fsdp2: process {rank} built {type(expert).__name__} unlike process 0 ({differ}); every process "
                          "must load the same generator (generator.name)")


def _take_node_weights(expert: torch.nn.Module, state: dict[str, torch.Tensor], layout: "Layout") -> None:
    """After ``fully_shard``, on every process: the (empty) shards of the processes that did not read the
    weights materialised on the mesh's device, then every tensor of the expert's state dict sent whole
    from its node's first process to its node's processes only (a broadcast in the node's group: no
    byte crosses between nodes), one at a time, each process keeping its shard (``distribute_tensor``
    of the whole tensor with its own placements, from its own copy); then the buffers a state dict
    leaves out (non-persistent: the rope tables), whole, the same way."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    device = _mesh_device(layout.fsdp_mesh)
    if not layout.reads_weights:
        expert.to_empty(device=device)
    source = layout.node_leader
    for name, target in expert.state_dict().items():
        shape, dtype = tuple(target.shape), target.dtype
        whole = state[name].detach().to(device=device, dtype=dtype) if layout.reads_weights else torch.empty(shape, dtype=dtype, device=device)
        torch.distributed.broadcast(whole, src=source, group=layout.node_group)
        with torch.no_grad():
            if isinstance(target, DTensor):
                target.to_local().copy_(distribute_tensor(whole, target.device_mesh, target.placements, src_data_rank=None).to_local())
            else:
                target.copy_(whole)
        del whole
    for _, owner, attr, is_buffer in _tensors(expert):
        if is_buffer and attr in owner._non_persistent_buffers_set:
            torch.distributed.broadcast(owner._buffers[attr], src=source, group=layout.node_group)


def _mesh_device(mesh: Any) -> torch.device:
    """The device FSDP2 puts a mesh's shards on: the CPU, or this process's current accelerator."""
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())


# ---------------------------------------------------------------------------------------
# Applying it: context parallel on the attention, then FSDP2 per block, then the root
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


def _node_name() -> str:
    import socket

    return socket.gethostname()


def _share_folder(needed: int, chosen: str | None) -> str:
    """Where the shared copy goes: ``chosen`` (``parallel.share_dir``), else ``/dev/shm`` where it has
    room for ``needed`` bytes, else the system's temporary folder; raises ``OSError`` without room."""
    import tempfile

    candidates = [chosen] if chosen else ["/dev/shm", tempfile.gettempdir()]
    room = {}
    for folder in candidates:
        if os.path.isdir(folder):
            room[folder] = shutil.disk_usage(folder).free
            if room[folder] >= needed:
                return folder
    free = ", ".join(f"{f} {b / 2**30:.1f} GiB free" for f, b in room.items()) or f"{', '.join(candidates)}: no such folder"
    raise OSError(f"the encoders' shared copy needs {needed / 2**30:.1f} GiB ({free}); set parallel.share_dir to a node-local folder with room")


def remove_stale_copies(base: str) -> list[str]:
    """Remove the shared copies in ``base`` that a process which has ended left behind (it was killed
    between writing its copy and deleting it, once mapped): a folder ``cac_align-encoders-<pid>-*``
    whose process no longer runs on this node. Returns the folders removed."""
    removed = []
    for entry in os.scandir(base):
        found = re.fullmatch(r"cac_align-encoders-(\d+)-\w+", entry.name)
        if found is None or not entry.is_dir(follow_symlinks=False) or _runs(int(found.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        log.warning("removed %s: the shared copy of the prompt encoders a process that has ended left behind", entry.path)
        removed.append(entry.path)
    return removed


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _publish_encoders(modules: dict[str, torch.nn.Module], chosen: str | None) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """The node's first process: ``(folder, what the others need, homes)``: each module published to
    a file of its own in a new folder (:func:`~cac_align.gen.shared_weights.publish`); on a failure,
    ``{"error": ...}`` and the folder removed."""
    import tempfile

    from cac_align.gen.shared_weights import module_bytes, publish

    folder = None
    try:
        base = _share_folder(sum(map(module_bytes, modules.values())), chosen)
        remove_stale_copies(base)
        folder = tempfile.mkdtemp(prefix=f"cac_align-encoders-{os.getpid()}-", dir=base)
        layouts, homes = {}, {}
        for name, module in modules.items():
            layouts[name], homes[name] = publish(module, os.path.join(folder, f"{name}.bin"))
        return folder, {"layouts": layouts}, homes
    except (OSError, ValueError, RuntimeError) as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return None, {"error": f"publishing the shared copy failed: {exc}"}, {}


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
    if settings.shard == "fsdp2" and layout.per_node < world:  # several nodes: each node's group, for its weights (Layout.apply)
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


def setup_parallel(accelerator: Accelerator, settings: ParallelSettings, denoiser: Any, family: Any, pipe: Any = None) -> Layout:
    """:func:`layout_for`, then :meth:`Layout.apply` to ``denoiser`` (a one-call form for scripts)."""
    layout = layout_for(accelerator, settings)
    layout.apply(denoiser, family, pipe, accelerator.device)
    return layout


# ---------------------------------------------------------------------------------------
# Connecting the processes: a restarted group, and how long a collective may wait
# ---------------------------------------------------------------------------------------
class CollectiveTimeout(RuntimeError):
    """A collective waited longer than ``parallel.timeout_s`` for another process; the message is
    one line naming the setting, this process and what torch said."""


def connect_processes(settings: ParallelSettings, cpu: bool) -> list[Any]:
    """Connect this process to the others of its launch before accelerate would, and return the
    ``kwargs_handlers`` entry that gives accelerate ``parallel.timeout_s`` where it connects them
    itself (call before ``Accelerator(...)``, on every process).

    Launched by torchrun (or ``accelerate launch``, which runs torchrun's agent) with two processes
    or more on gloo or NCCL, the default process group is made here, with ``parallel.timeout_s``, on
    the agent's store under a prefix of the restart round (``TORCHELASTIC_RESTART_COUNT``). Why:
    torchrun's agent keeps one store for the whole launch and hands it to every round of workers
    (torch 2.14: ``StaticTCPRendezvous.next_rendezvous`` makes its ``TCPStore`` once;
    ``DynamicRendezvousHandler.next_rendezvous`` reuses its shared store server; workers reach it as
    clients, ``rendezvous._create_c10d_store``). A group restarted by ``--max-restarts`` then reads
    the killed round's addresses under the same keys (gloo: ``Gloo connectFullMesh failed ...
    Connection refused``; NCCL's unique id the same way) and dies. torch keyed the workers' store by
    the restart count itself once (``/worker/attempt_N``) and dropped it, because the count is each
    node's own (pytorch#135712): one node restarts its workers for a failure and another for the
    new round. So the prefix holds on one node; on several, launch with ``--rdzv-backend c10d`` and
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (each round's first worker then serves a new store, and
    no prefix is needed; a warning says so at the start of such a launch).
    """
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=settings.timeout)]
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if torch.distributed.is_initialized() or world < 2 or not all(k in env for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        return handlers  # one process, or a launch of another kind: accelerate connects them (with the timeout)
    # the backend accelerate would pick (its PartialState._prepare_backend); others (MPI) are left to it
    if cpu and not torch.distributed.is_mpi_available():
        backend = "gloo"
    elif not cpu and torch.cuda.is_available():
        backend = "nccl"
    else:
        return handlers
    store, rank, world = next(torch.distributed.rendezvous("env://", int(env["RANK"]), world, timeout=settings.timeout))
    store.set_timeout(settings.timeout)
    prefix = "default_pg"  # what init_process_group itself puts before its keys
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # the agent's store, kept over the rounds
        prefix += f"/restart_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        if int(env.get("GROUP_WORLD_SIZE", "1")) > 1 and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and rank == 0:
            log.warning("torchrun --max-restarts on %s nodes with the agent's shared store: a restart may not reconnect (each node counts its "
                        "own restarts); launch with --rdzv-backend c10d and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/flow_grpo.md, "
                        "'Long runs')", env.get("GROUP_WORLD_SIZE"))
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore(prefix, store), rank=rank, world_size=world,
                                         timeout=settings.timeout)
    return handlers


# What torch raises in a process whose collective outlived its group's timeout (torch 2.14):
# gloo: "[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 1800000ms for recv operation
# to complete" (send alike), measured on this CPU; NCCL (ProcessGroupNCCL.cpp): "... timed out in
# blocking wait" under TORCH_NCCL_BLOCKING_WAIT=1, and the watchdog's "Watchdog caught collective
# operation timeout: WorkNCCL(..., Timeout(ms)=...)" where it reaches Python (by default the
# watchdog tears the process down itself, after logging that line); a store wait (a barrier
# through the store, a group's set-up): "wait timeout after ...ms".
_TIMEOUT_PATTERNS = re.compile(r"Timed out waiting \d+ms for (send|recv) operation|timed out in blocking wait|"
                               r"Watchdog caught collective operation timeout|wait timeout after \d+ms")


def collective_timed_out(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of a collective (or a store wait) that outlived its timeout."""
    return isinstance(error, RuntimeError) and not isinstance(error, CollectiveTimeout) and bool(_TIMEOUT_PATTERNS.search(str(error)))


@contextlib.contextmanager
def named_timeout(settings: ParallelSettings):
    """Run a trainer (its setup, loop and cleanup) so that a collective that waited longer than
    ``parallel.timeout_s`` stops it with a :class:`CollectiveTimeout`: one line naming the setting,
    this process and torch's own words (the original chained as its cause)."""
    try:
        yield
    except RuntimeError as error:
        if not collective_timed_out(error):
            raise
        if torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        said = " ".join(str(error).split())
        said = said if len(said) <= 200 else said[:197] + "..."
        raise CollectiveTimeout(
            f"a collective waited longer than parallel.timeout_s={settings.timeout_s:g} s on process {rank} of {world} ({said}): another "
            "process did not reach it in time; if that process is slow (a judge's first scoring compiles for minutes, a big model "
            "loads), raise parallel.timeout_s; if it stopped, its own error says why") from error


# ---------------------------------------------------------------------------------------
# Checkpoints: which layout wrote one, and resuming on the same
# ---------------------------------------------------------------------------------------
def layout_state(layout: Layout) -> dict[str, Any]:
    """What a checkpoint's ``state.json`` records of the layout that wrote it (nothing for plain
    data parallel, whose checkpoints are as before)."""
    if not layout.settings.active:
        return {}
    record = {"processes": layout.world, "data_parallel": layout.dp, "context_parallel": layout.cp, "shard": layout.settings.shard}
    if layout.settings.replicate > 1:  # HSDP (a checkpoint of before it, or of full sharding, records none: replicate 1)
        record["replicate"] = layout.settings.replicate
    return {"parallel": record}


def check_parallel_resume(state: dict[str, Any], layout: Layout, folder: Any) -> None:
    """Refuse to resume checkpoint ``folder`` (its ``state.json`` is ``state``) on another layout
    than the one that wrote it, with what to do instead."""
    from cac_align.config import RecipeError

    written, now = state.get("parallel"), layout_state(layout).get("parallel")
    if written == now:
        return

    def say(record: dict[str, Any] | None) -> str:
        if record is None:
            return "data parallel (parallel.shard=none, context_parallel=1)"
        return (f"{record['processes']} processes, parallel.shard={record['shard']}, "
                f"context_parallel={record['context_parallel']}, replicate={record.get('replicate', 1)}")

    raise RecipeError(f"checkpoint {folder} was written by {say(written)}, and this run is {say(now)}: resume it with the same "
                      f"processes and parallel section, or start a new run in another out_dir (its LoRA is in {folder}/lora)")


# ---------------------------------------------------------------------------------------
# Before anything loads: can the video be split at all
# ---------------------------------------------------------------------------------------
def _transformer_config(generator: Any) -> dict[str, Any] | None:
    """The generator's transformer ``config.json`` as a dict, from its own files (a tiny pipeline's,
    a local folder's, the Hugging Face cache's), or None where none can be read offline."""
    import json
    from pathlib import Path

    family = generator.family
    if generator.name in family.tiny_names:
        return dict(family.build_tiny(generator.name, seed=0).transformer.config)
    folder = Path(generator.name)
    if (folder / "transformer" / "config.json").is_file():
        return json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(generator.name, "transformer/config.json")
    except Exception:  # not a hub id
        return None
    if isinstance(cached, str) and Path(cached).is_file():
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def check_context_parallel(family: Any, generator: Any, settings: ParallelSettings) -> None:
    """Refuse, before anything loads, a ``context_parallel`` degree that the video's latent tokens
    or the transformer's heads do not divide (the family's
    :meth:`~cac_align.gen.family.GeneratorFamily.check_context_parallel`), with the setting to
    change. Where the transformer's config cannot be read offline, the check is left to the first
    forward (diffusers asserts the split) and a note is logged."""
    import logging

    if settings.context_parallel <= 1:
        return
    config = _transformer_config(generator)
    if config is None:
        logging.getLogger(__name__).warning("parallel.context_parallel=%d: %s's transformer config is not on this machine; the split is "
                                            "checked at the first forward", settings.context_parallel, generator.name)
        return
    family.check_context_parallel(generator, settings.context_parallel, config)


def release_trainer(trainer: Any) -> None:
    """End a generator trainer's run (call in the ``finally`` of a job's ``run``, on every process):
    close its layout's own group (:meth:`Layout.close`), drop everything the trainer holds (the
    FSDP-wrapped model, its optimizer, the Accelerator) and collect the garbage now.

    Why now: the wrapped model sits in reference cycles (hooks, FSDP's state), so without a
    collection it lives until the interpreter finalizes, and its process-group objects and collective
    handles die there, after Python's own teardown began. A 2-process gloo run (FSDP2, CI under load,
    2026-11-27) then aborted at exit in 1 of about 30 launches: "terminate called without an active
    exception", after its last step had finished and its files were written (the C++ threads of a
    group destroyed during finalization; pytorch PR #179291 describes the same class of exit-time
    abort). Collected here, they die while everything they need is alive."""
    import gc

    layout = getattr(trainer, "layout", None)
    if layout is not None:
        layout.close()  # a one-process group of a sharded run on one process
    trainer.__dict__.clear()
    gc.collect()

