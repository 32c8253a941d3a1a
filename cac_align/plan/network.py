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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cac_align.plan.counts import GIB, GeneratorCounts, dtype_bytes

__all__ = ["NetworkPlan", "StepTraffic", "network_plan", "step_traffic"]


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

    def choice(self, full_fits: bool, hybrid_fits: bool) -> str:
        """Which layout the recipe should take, and why, in one line."""
        across_full, across_hybrid = self.total(2), self.total(4)
        saved = f"{across_full / GIB:.1f} GiB across nodes per GPU and step under full sharding against {across_hybrid / GIB:.2f} under HSDP"
        if self.nodes == 1:
            return "one node: full sharding (HSDP is the same on one node)"
        if hybrid_fits:
            return f"HSDP (parallel.replicate={self.nodes}): it fits, and {saved}"
        if full_fits:
            return f"full sharding (parallel.replicate=1): HSDP does not fit a GPU (each holds 1/{self.per_node} of the model, not 1/{self.nodes * self.per_node}); {saved}"
        return f"neither fits; {saved}"

    def table(self) -> str:
        lines = [f"network per GPU and training step ({self.nodes} node{'s' if self.nodes != 1 else ''} x {self.per_node} GPUs; "
                 f"{self.traffic.gathers} gathers of {self.weights / GIB:.2f} GiB, {self.traffic.reductions} reduction(s) of "
                 f"{self.gradients / GIB:.3f} GiB of LoRA gradients), GiB:",
                 f"  {'':<46} {'full sharding':>27} {'HSDP (one replica a node)':>27}",
                 f"  {'':<46} {'inside':>13} {'across':>13} {'inside':>13} {'across':>13}"]
        for label, *values in self.rows:
            lines.append(f"  {label:<46} " + " ".join(f"{v / GIB:>13.2f}" for v in values))
        lines.append(f"  {'total':<46} " + " ".join(f"{self.total(k) / GIB:>13.2f}" for k in range(1, 5)))
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
