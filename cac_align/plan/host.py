"""**Host memory at load** (bytes on the node of global rank 0, and on every node alike; :func:`host_plan`):
sharded, the node's first process (``LOCAL_RANK`` 0) reads the transformers whole and every other
process builds them on the meta device and receives its shards, while every process loads its own VAE on the CPU; the text encoder(s), kept on the CPU
between encodes, are one copy for the node's processes (``parallel.share_encoders``,
:mod:`cac_align.gen.shared_weights`): the transformers once plus ``processes per node`` x VAEs plus the
encoders once. Unsharded, every process its whole pipeline (the encoders once where shared).
In-process judges pass through host memory too, in each process that builds them. Processes per
node: torchrun's ``LOCAL_WORLD_SIZE``, else all on one node. While the run goes on, a process holds
the sample batch its rewards score (``sample_batch_size`` videos): uint8, ``frames x height x width
x 3`` bytes a video (decoded to uint8 on the device a few frames at a time, so the host never holds a
float32 copy, which is 4x that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cac_align.plan.counts import GIB, GeneratorCounts, dtype_bytes
from cac_align.plan.rows import PlanRow, table_lines


@dataclass
class HostPlan:
    """What a node's host memory holds while a run loads, and the reward batch it scores while it
    runs (:func:`host_plan`), in bytes per node.

    Attributes:
        rows: the rows (phase "load", source "counted"; the reward batch: phase "video", source
            "arithmetic").
        processes_per_node: processes on the node planned for.
        sharded: whether the run is sharded (the transformers read once).
    """

    rows: list[PlanRow]
    processes_per_node: int
    sharded: bool

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    def table(self, width: int | None = None) -> str:
        """The rows as text in GiB, each line at most ``width`` characters where it can be
        (:func:`~cac_align.plan.rows.table_lines`; None: each row on one line)."""
        p = self.processes_per_node
        cells = [(row.label, f"{row.bytes / GIB:>8.2f}  {row.source}") for row in self.rows]
        cells.append(("total, all at once (an upper bound: the loads overlap)", f"{self.total_bytes / GIB:>8.2f}"))
        return "\n".join([f"host memory at load (and a reward batch), on the node of global rank 0 ({p} process{'es' if p != 1 else ''} on it):",
                          *table_lines(cells, width)])


def host_plan(counts: GeneratorCounts, *, sharded: bool, processes_per_node: int, dtype: Any = "bfloat16", vae_dtype: Any = "float32",
              judges_bytes: int = 0, judge_processes: int | None = None, reward_batch: tuple[int, int, int, int] | None = None,
              shared_encoders: bool = False) -> HostPlan:
    """Host memory per node while a run loads (bytes), on the node of global rank 0 (the fullest).

    Sharded, only the node's first process (``LOCAL_RANK`` 0; every node holds the same) reads the
    transformers' weights whole; every other process builds them on the meta device and receives
    its shards. Every process still loads its own VAE(s) on the
    CPU, and its own text encoder(s) unless they are one copy for the node (``shared_encoders``:
    :mod:`cac_align.gen.shared_weights`, where a sharded run keeps them on the CPU between encodes).
    So the node holds the transformers once plus ``processes_per_node`` x VAEs, plus the encoders once
    (shared) or ``processes_per_node`` times. Unsharded, every process loads its whole pipeline
    through host memory, its encoders once for the node where they are shared. In-process judges are
    read into host memory before they move to their GPU, by each process that builds them
    (``judge_processes``: the leaders on the node; default every process).

    Args:
        counts: the generator counted (:func:`counted_generator`).
        sharded: ``parallel.shard=fsdp2``.
        processes_per_node: processes on the node (torchrun's ``LOCAL_WORLD_SIZE``).
        dtype, vae_dtype: the generator's dtypes.
        judges_bytes: one process's in-process judges (their weights).
        judge_processes: processes on the node that build the judges.
        shared_encoders: the text encoder(s) are one copy for the node's processes
            (:meth:`~cac_align.gen.parallel.ParallelSettings.shares_encoders`).
        reward_batch: ``(videos, frames, height, width)`` a process holds while its rewards score
            them: decoded to uint8 on the device a few frames at a time
            (:func:`~cac_align.video.float_frames_to_uint8`), so each video is ``frames x height x
            width x 3`` bytes on the host, never a float32 copy (4x that). A row of its own.
    """
    weight, vae_weight = dtype_bytes(dtype), dtype_bytes(vae_dtype)
    p = processes_per_node
    transformers = sum(t.parameters for t in counts.transformers) * weight
    encoders = sum(e.parameters for e in counts.encoders) * weight
    others = sum(o.parameters for o in counts.others) * vae_weight
    each = f"each of {p} process{'es' if p != 1 else ''}"
    shared = shared_encoders and p > 1 and bool(counts.encoders)
    per_process = [c.name for c in (counts.others if shared else counts.encoders + counts.others)]
    rows = []
    if sharded:
        rows.append(PlanRow("transformers, whole, once (global rank 0; the others: meta device)", transformers, "counted", "load"))
        if per_process:
            rows.append(PlanRow(f"{', '.join(per_process)}: {each}", p * (others + (0 if shared else encoders)), "counted", "load"))
    elif shared:
        rows.append(PlanRow(f"the pipeline but its encoders: {each} (unsharded)", p * (transformers + others), "counted", "load"))
    else:
        rows.append(PlanRow(f"the whole pipeline: {each} (unsharded)", p * (transformers + encoders + others), "counted", "load"))
    if shared:
        rows.append(PlanRow(f"{', '.join(c.name for c in counts.encoders)}: one copy for the node (parallel.share_encoders)", encoders, "counted", "load"))
    if judges_bytes:
        k = p if judge_processes is None else judge_processes
        rows.append(PlanRow(f"in-process judges while they load: each of {k} process{'es' if k != 1 else ''} that build{'s' if k == 1 else ''} them",
                            k * judges_bytes, "counted", "load"))
    if reward_batch is not None:
        videos, frames, height, width = reward_batch
        rows.append(PlanRow(f"a reward batch, while scored: {videos} video{'s' if videos != 1 else ''} of {frames} x {height} x {width} x 3 uint8, "
                            f"each of {p} process{'es' if p != 1 else ''}", p * videos * frames * height * width * 3, "arithmetic", "video"))
    return HostPlan(rows, p, sharded)


def processes_per_node(num_processes: int) -> int:
    """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE`` (accelerate's launcher sets it too),
    else all ``num_processes`` on one node."""
    import os

    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local and local.isdigit() and int(local) > 0 else num_processes
