"""What a plan that does not fit should change: the first fix that fits, found by re-planning
(:func:`refusal`), in one line.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cac_align.gen.parallel import ParallelSettings
from cac_align.plan.counts import GIB
from cac_align.plan.rows import MemoryPlan, fixed_overhead_bytes, memory_plan


def _replan(plan: MemoryPlan, settings: ParallelSettings, num_processes: int, gradient_checkpointing: bool, **changes: Any) -> MemoryPlan:
    inputs = {**plan.inputs, **changes}
    if inputs["overhead_bytes"]:  # NCCL's share comes with other processes
        inputs["overhead_bytes"] = fixed_overhead_bytes(num_processes)
    return memory_plan(settings=settings, num_processes=num_processes, gradient_checkpointing=gradient_checkpointing, **inputs)


def _smallest_sharded(plan: MemoryPlan, device: int, settings: ParallelSettings, gradient_checkpointing: bool, most: int) -> MemoryPlan | None:
    """The plan with ``settings`` (sharded) on the fewest processes (a multiple of the context-parallel
    degree, at most ``most``) that fits ``device`` bytes; None if none does."""
    cp = settings.context_parallel
    for n in range(cp, most + 1, cp):
        candidate = _replan(plan, settings, n, gradient_checkpointing)
        if candidate.fits(device):
            return candidate
    return None


def _gpus(n: int) -> str:
    return f"{n} GPU{'s' if n != 1 else ''}"


SERVE_THE_JUDGES = ("serve the judges: each reward model's section with backend: openai, reached through `cac-align serve` on GPUs of "
                    "their own (docs/rewards.md, \"Serving a judge with vLLM\")")


def holds_judges(plan: MemoryPlan) -> bool:
    """Whether ``plan``'s GPUs hold in-process judges (weights or KV cache, counted or given)."""
    return bool(plan.inputs.get("judges_bytes")) or any(j.weight_bytes or j.kv_bytes for j in plan.inputs.get("judges", ()))


def _served(plan: MemoryPlan, settings: ParallelSettings, num_processes: int, gradient_checkpointing: bool) -> MemoryPlan:
    """``plan`` re-planned with its judges served elsewhere (nothing of them on these GPUs)."""
    served = tuple(replace(j, weight_bytes=0, kv_bytes=0, note="served") for j in plan.inputs.get("judges", ()))
    return _replan(plan, settings, num_processes, gradient_checkpointing, judges=served, judges_bytes=0)


def refusal(plan: MemoryPlan, device_bytes: int, max_processes: int = 1024) -> str | None:
    """None when ``plan`` fits ``device_bytes``; else one line: what it needs, what the device has,
    and the fix, computed by re-planning (the first that fits, in this order):

    1. ``gradient_checkpointing=true`` alone, on the same processes (when it is off);
    2. ``parallel.encoder_on_device=false`` alone (when the text encoder stays on the GPU);
    3. ``parallel.shard=fsdp2`` on these processes (then with checkpointing too), when that fits;
    4. serve the judges (:data:`SERVE_THE_JUDGES`), when the GPUs hold in-process ones: on these
       processes as they are, then with checkpointing, then sharded;
    5. ``parallel.shard=fsdp2`` on the fewest GPUs that fit (the rest as it is), then with
       checkpointing too;
    6. ``parallel.context_parallel=K`` (the smallest K above today's that divides the heads and the
       tokens), sharded, with checkpointing, on the fewest GPUs that fit, where the family can split
       a video (``GeneratorCounts.context_parallel``);
    and when nothing fits, what no sharding splits, on ``max_processes`` GPUs. Under hybrid sharding
    (``parallel.replicate`` above 1) the first fix tried is full sharding on the same GPUs, and the
    others are full sharding's.
    """
    if plan.fits(device_bytes):
        return None
    gib = lambda p: f"{p.peak_bytes / GIB:.1f} GiB per GPU"  # noqa: E731
    head = f"memory plan: {plan.family} needs {gib(plan)} ({plan.describe()}) but the device has {device_bytes / GIB:.1f} GiB"
    s, gc, n = plan.settings, plan.gradient_checkpointing, plan.num_processes
    counts, tokens = plan.inputs["counts"], plan.inputs["tokens"]
    if s.replicate > 1:  # 0. HSDP holds a copy per replica: full sharding on the same GPUs first, then its own fixes
        full = _replan(plan, replace(s, replicate=1), n, gc)
        first = (f"set parallel.replicate=1: full sharding splits the model over all {_gpus(n)}, not {n // s.replicate} "
                 "(its gathers cross nodes: check-recipe --nodes shows the network)")
        if full.fits(device_bytes):
            return f"{head}; {first} ({gib(full)})"
        then = refusal(full, device_bytes, max_processes) or ""
        return f"{head}; {first}, and then {then.split('; ', 1)[-1]}"
    if not gc and (candidate := _replan(plan, s, n, True)).fits(device_bytes):
        return f"{head}; set gradient_checkpointing=true ({gib(candidate)})"
    if s.keeps_encoder and counts.encoders and (candidate := _replan(plan, replace(s, encoder_on_device=False), n, gc)).fits(device_bytes):
        return f"{head}; set parallel.encoder_on_device=false: the text encoder leaves the GPU between encodes ({gib(candidate)})"
    sharded = replace(s, shard="fsdp2")
    more_gpus = None
    for with_gc in dict.fromkeys((gc, True)):
        candidate = _smallest_sharded(plan, device_bytes, sharded, with_gc, max_processes)
        if candidate is None:
            continue
        changes = ([] if s.shard == "fsdp2" else ["set parallel.shard=fsdp2"]) + ([] if with_gc == gc else ["gradient_checkpointing=true"])
        if candidate.num_processes <= n:  # it fits on the processes there are (a change of settings, not of GPUs)
            return f"{head}; {' and '.join(changes)} ({gib(_replan(plan, sharded, n, with_gc))} on these {_gpus(n)})"
        more_gpus = (changes, candidate)
        break
    if holds_judges(plan):  # the judges' GPUs of their own, before more GPUs of the generator's
        tries = [(s, gc), (s, True), (sharded, gc), (sharded, True)]
        for settings, with_gc in [t for k, t in enumerate(tries) if t not in tries[:k]]:
            candidate = _served(plan, settings, n, with_gc)
            if candidate.fits(device_bytes):
                changes = ([SERVE_THE_JUDGES] + ([] if settings.shard == s.shard else ["set parallel.shard=fsdp2"])
                           + ([] if with_gc == gc else ["gradient_checkpointing=true"]))
                return f"{head}; {' and '.join(changes)} ({gib(candidate)} on these {_gpus(n)})"
    if more_gpus is not None:
        changes, candidate = more_gpus
        launch = f"launch at least {_gpus(candidate.num_processes)} (processes)"
        return f"{head}; {' and '.join(changes + [launch])} ({gib(candidate)} on {candidate.num_processes})"
    for k in range(s.context_parallel + 1, counts.num_heads + 1 if counts.context_parallel else 0):
        if counts.num_heads % k or tokens % k:
            continue
        candidate = _smallest_sharded(plan, device_bytes, replace(sharded, context_parallel=k), True, max_processes)
        if candidate is not None:
            return (f"{head}; set parallel.context_parallel={k} and parallel.shard=fsdp2" + ("" if gc else " and gradient_checkpointing=true")
                    + f" on at least {_gpus(candidate.num_processes)} ({gib(candidate)})")
    floor = _replan(plan, replace(sharded, encoder_on_device=False), max_processes, True)
    tried = "sharding, checkpointing or context parallel" if counts.context_parallel else \
        f"sharding or checkpointing ({plan.family} cannot split a video over processes yet)"
    fewer = "decode fewer videos at once (sample_batch_size), " if plan.inputs.get("vae_what") == "decode" else ""
    return (f"{head}; no {tried} fits it: what is not split (encoder while encoding, VAE and its decode, judges, one block, activations) is "
            f"{gib(floor)} even on {_gpus(max_processes)}; serve the judges elsewhere, {fewer}or train on fewer or smaller videos per micro-batch")
