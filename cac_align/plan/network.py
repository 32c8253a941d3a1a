"""What one training step of a sharded generator trainer sends between GPUs, inside a node and across nodes,
under full sharding (FSDP2 over every GPU) and under hybrid sharding (HSDP: sharded inside each node, one
replica per node), from the recipe's own numbers (arithmetic; :func:`network_plan`).

**What is counted.** The transformer's frozen base and its LoRA are gathered whole, block by block, for
every forward (and again in the backward where ``reshard_after_forward`` frees them): the sampling
forwards (the family's denoising steps a sampling call: MiniMax-H3 runs ``num_inference_steps - 1``),
and per trained timestep of each micro-batch the training forward, the backward's gather, the reference
forward (``beta > 0``) and, for DiffusionNFT, the old policy's forward (:func:`step_traffic`). The LoRA's
gradients (fp32) are reduced once per update (``updates_per_step``), whatever the backwards it
accumulates (:mod:`cac_align.gen.parallel.gradients`; tests/jobs/test_nodes.py counts the collectives).
A GPU's bytes are what the collectives deliver to it: every shard it lacks, once
(an all-gather of ``B`` bytes over ``n`` GPUs brings it ``(n - 1) / n x B``); a ring or a tree routes them
otherwise, but delivers these. Sends equal receives (the collectives are symmetric).

**The two layouts**, ``N = nodes x L`` GPUs, ``L`` a node's:

| collective | full sharding: inside / across nodes, per GPU | HSDP (``replicate = nodes``): inside / across |
| --- | --- | --- |
| gather of the ``B`` bytes of base + LoRA | ``(L - 1) / N x B`` / ``(N - L) / N x B`` | ``(L - 1) / L x B`` / 0 |
| reduction of the ``G`` bytes of LoRA gradients | reduce-scatter: ``(L - 1) / N x G`` / ``(N - L) / N x G`` | reduce-scatter in the node ``(L - 1) / L x G``, then an all-reduce of its ``G / L`` over the ``R`` replicas: across ``2 (R - 1) / R x G / L`` |

Not counted: the rewards' gathers (a few floats a sample), the prompts' encoding (the encoder is not
sharded), the evaluation (not every step) and the VAE (whole on every GPU).

**In seconds.** Each total is also timed at a link's rate (:func:`transfer_seconds`): inside a node at
:data:`NVLINK_GBPS`, across nodes at :data:`NETWORK_GBPS` (``check-recipe --nvlink-gbps``, ``--network-gbps``).
It is the time the wire needs, a lower bound on a step's: FSDP2 overlaps its gathers with the blocks'
compute, so a step takes at least the longer of the two, and a link seldom delivers its whole rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cac_align.plan.counts import GIB, GeneratorCounts, dtype_bytes

__all__ = ["NETWORK_GBPS", "NVLINK_GBPS", "NetworkPlan", "StepTraffic", "duration", "network_plan", "step_traffic", "transfer_seconds"]

# The links a step's bytes are timed at unless check-recipe is told others, Gbit/s a GPU and direction:
NVLINK_GBPS = 3600.0  # inside a node: NVLink 4 (H100, H200), 450 GB/s each way (--nvlink-gbps)
NETWORK_GBPS = 400.0  # across nodes: one 400 Gbit/s NIC a GPU (InfiniBand NDR, ConnectX-7), as DGX H100/H200 nodes have (--network-gbps)


def transfer_seconds(num_bytes: float, gbps: float) -> float:
    """The seconds ``num_bytes`` take over a link of ``gbps`` gigabits (10^9 bits) a second: 50 GB at
    400 Gbit/s (50 GB/s) is 1 s."""
    return num_bytes * 8 / (gbps * 1e9)


def duration(seconds: float) -> str:
    """Seconds as a person reads them: ``0.04 s``, ``29.8 s``, ``5.1 min``, ``2.3 h``."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class StepTraffic:
    """A training step's collectives on one GPU, counted from the recipe (:func:`step_traffic`).

    Attributes:
        sampling_gathers: gathers of the whole transformer in the step's sampling forwards.
        training_gathers: gathers in its training (forwards, backward re-gathers, reference and old-policy forwards).
        reductions: reductions of the LoRA's gradients (one per optimizer update).
    """

    sampling_gathers: int
    training_gathers: int
    reductions: int

    @property
    def gathers(self) -> int:
        return self.sampling_gathers + self.training_gathers


def step_traffic(config: Any, processes: int, job: str) -> StepTraffic:
    """The collectives one GPU makes in a step of a ``flow-grpo`` or ``nft`` recipe's ``config`` on
    ``processes`` GPUs (its context-parallel groups sharing their samples): its share of
    ``prompts_per_step x group_size`` samples, sampled ``sample_batch_size`` at a time with
    the family's denoising steps (its sampler's forwards) each, trained ``train_batch_size`` at a time on
    ``round(timestep_fraction x steps)`` timesteps."""
    groups = processes // config.parallel.context_parallel
    local = math.ceil(config.prompts_per_step * config.group_size / groups)
    steps = config.generator.family.denoising_steps(int(config.generator.num_inference_steps))  # what its sampler runs (MiniMax-H3: one fewer)
    sampling = math.ceil(local / config.sample_batch_size) * steps
    trained = max(1, round(steps * config.timestep_fraction))
    per_timestep = 1 + int(config.parallel.reshard_after_forward) + int(config.beta > 0) + int(job == "nft")
    training = math.ceil(local / config.train_batch_size) * trained * per_timestep
    return StepTraffic(sampling, training, int(config.updates_per_step))


@dataclass
class NetworkPlan:
    """Bytes per GPU per training step inside its node and across nodes, for full sharding and for HSDP
    (module docstring).

    Attributes:
        nodes, per_node: the layout planned for (``N = nodes x per_node`` GPUs).
        weights, gradients: ``B`` (the base and LoRA bytes one forward gathers) and ``G`` (the LoRA's
            gradient bytes).
        traffic: the step's collectives (:func:`step_traffic`).
        rows: ``(label, full sharding inside, full across, HSDP inside, HSDP across)``, bytes.
    """

    nodes: int
    per_node: int
    weights: int
    gradients: int
    traffic: StepTraffic
    rows: list[tuple[str, int, int, int, int]]

    def total(self, column: int) -> int:
        return sum(row[column] for row in self.rows)

    def choice(self, full_fits: bool | None, hybrid_fits: bool | None, across_gbps: float | None = None) -> str:
        """Which layout the recipe should take, and why, in one line (None: whether it fits is not known, no GPU
        named; with ``across_gbps``, the bytes across nodes timed at that rate too)."""
        across_full, across_hybrid = self.total(2), self.total(4)

        def timed(num_bytes: int) -> str:
            return f" ({duration(transfer_seconds(num_bytes, across_gbps))})" if across_gbps else ""

        saved = (f"{across_full / GIB:.1f} GiB{timed(across_full)} across nodes per GPU and step under full sharding against "
                 f"{across_hybrid / GIB:.2f}{timed(across_hybrid)} under HSDP")
        if self.nodes == 1:
            return "one node: full sharding (HSDP is the same on one node)"
        if hybrid_fits is None:  # no GPU named
            return f"HSDP (parallel.replicate={self.nodes}) where it fits a GPU (check-recipe --gpu-gb says which fits): {saved}"
        if hybrid_fits:
            return f"HSDP (parallel.replicate={self.nodes}): it fits, and {saved}"
        if full_fits:
            return f"full sharding (parallel.replicate=1): HSDP does not fit a GPU (each holds 1/{self.per_node} of the model, not 1/{self.nodes * self.per_node}); {saved}"
        return f"neither fits; {saved}"

    def table(self, inside_gbps: float = NVLINK_GBPS, across_gbps: float = NETWORK_GBPS) -> str:
        """The table in GiB, its totals also in seconds at ``inside_gbps`` inside a node and ``across_gbps``
        across nodes (module docstring, "In seconds")."""
        timed = "seconds (the wire's, a lower bound)"
        w = max(len(label) for label in [timed, *(row[0] for row in self.rows)])
        seconds = [transfer_seconds(self.total(k), inside_gbps if k % 2 else across_gbps) for k in range(1, 5)]
        lines = [f"network per GPU and training step ({self.nodes} node{'s' if self.nodes != 1 else ''} x {self.per_node} GPUs; "
                 f"{self.traffic.gathers} gathers of {self.weights / GIB:.2f} GiB, {self.traffic.reductions} reduction(s) of "
                 f"{self.gradients / GIB:.3f} GiB of LoRA gradients), GiB:",
                 f"  {'':<{w}} {'full sharding':>27} {'HSDP (one replica a node)':>27}",
                 f"  {'':<{w}} {'inside':>13} {'across':>13} {'inside':>13} {'across':>13}"]
        for label, *values in self.rows:
            lines.append(f"  {label:<{w}} " + " ".join(f"{v / GIB:>13.2f}" for v in values))
        lines.append(f"  {'total':<{w}} " + " ".join(f"{self.total(k) / GIB:>13.2f}" for k in range(1, 5)))
        lines.append(f"  {timed:<{w}} " + " ".join(f"{s:>13.2f}" for s in seconds))
        lines.append(f"timed at {inside_gbps:g} Gbit/s a GPU inside a node (--nvlink-gbps; default {NVLINK_GBPS:g}: NVLink 4 of an H100 or H200) "
                     f"and {across_gbps:g} Gbit/s across nodes (--network-gbps; default {NETWORK_GBPS:g}: a 400 Gbit/s NIC a GPU)")
        return "\n".join(lines)


def network_plan(counts: GeneratorCounts, traffic: StepTraffic, *, nodes: int, per_node: int, lora_rank: int, dtype: Any = "bfloat16") -> NetworkPlan:
    """The network table of a step (module docstring) for ``nodes x per_node`` GPUs: ``B`` is the largest
    expert's parameters in ``dtype`` plus its LoRA in fp32 (one expert runs a forward), ``G`` every adapted
    expert's LoRA gradients in fp32."""
    if nodes < 1 or per_node < 1:
        raise ValueError(f"nodes and GPUs per node must be >= 1, got {nodes} and {per_node}")
    n, local, replicas = nodes * per_node, per_node, nodes
    weights = max(t.parameters * dtype_bytes(dtype) + t.lora_width * lora_rank * 4 for t in counts.transformers)
    gradients = sum(t.lora_width for t in counts.transformers) * lora_rank * 4

    def full(b: int) -> tuple[int, int]:
        return (local - 1) * b // n, (n - local) * b // n

    rows = []
    for label, count in (("gathers while sampling", traffic.sampling_gathers), ("gathers while training", traffic.training_gathers)):
        inside, across = full(count * weights)
        rows.append((f"{label} ({count})", inside, across, (local - 1) * count * weights // local, 0))
    inside, across = full(traffic.reductions * gradients)
    rows.append((f"LoRA gradient reductions ({traffic.reductions})", inside, across, (local - 1) * traffic.reductions * gradients // local,
                 2 * (replicas - 1) * traffic.reductions * gradients // (replicas * local)))
    return NetworkPlan(nodes, per_node, weights, gradients, traffic, rows)
