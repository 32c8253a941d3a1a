"""The plan a generator trainer makes before anything loads: its models counted, its decode traced,
its rows and host memory planned (:func:`plan_generator`), and refused with the fix when it cannot
fit (:func:`check_memory`, what ``flow-grpo``, ``nft`` and ``dpo`` call once in their setup;
``cac-align check-recipe`` prints the same plan offline). A job that only scores (``score``) holds its
judges alone: :func:`plan_judges`, what ``check-recipe`` prints for a score recipe.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from cac_align.config import RecipeError
from cac_align.gen.parallel import ParallelSettings
from cac_align.plan.configs import ConfigsNotFound
from cac_align.plan.counts import GIB, counted_generator
from cac_align.plan.host import HostPlan, host_plan, processes_per_node
from cac_align.plan.judges import count_judges, judge_models, missing_configs
from cac_align.plan.refusal import refusal
from cac_align.plan.rows import JudgesPlan, MemoryPlan, PlanRow, fixed_overhead_bytes, judge_rows, memory_plan, output_width, video_tokens
from cac_align.plan.trace import audio_decode_bytes, vae_bytes

log = logging.getLogger(__name__)


def device_bytes(device: Any = None, budget_gib: float | None = None) -> int | None:
    """The memory a plan must fit: ``budget_gib`` when given (a test, or a GPU shared with something
    else), else a CUDA device's total memory; None on a CPU (the plan is shown, not enforced)."""
    import torch

    if budget_gib is not None:
        if budget_gib <= 0:
            raise RecipeError(f"memory_budget_gib must be > 0, got {budget_gib}")
        return int(budget_gib * GIB)
    device = torch.device(device) if device is not None else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(torch.cuda.get_device_properties(index).total_memory)


def plan_generator(generator: Any, lora: Any, parallel: ParallelSettings, num_processes: int, *, batch_per_process: int,
                   gradient_checkpointing: bool, ema: bool = False, video: tuple[int, int, int] | None = None,
                   rewards: Mapping[str, Any] | None = None, decode_batch: int = 0, encode_batch: int = 0, judges_bytes: int = 0,
                   on_gpu: bool = True, node_processes: int | None = None, optimizer: str = "adamw") -> tuple[MemoryPlan, HostPlan] | None:
    """The memory plan of a generator trainer (per GPU) and its host memory at load (per node),
    from the models' configs; loads nothing, downloads nothing.

    Args:
        generator, lora, parallel: the job's sections.
        num_processes: processes (GPUs) of the run.
        batch_per_process: sample-forwards with gradient in one micro-batch per process (flow-grpo:
            ``train_batch_size`` x the forwards a guided velocity batches, 2 with CFG; dpo:
            ``batch_size`` x 2, winner and loser).
        gradient_checkpointing: the job's setting.
        ema: an EMA of the LoRA is kept.
        video: ``(num_frames, height, width)`` of the trained videos (dpo: its pairs'); None:
            ``generator``'s.
        rewards: recipe key -> reward section of every reward the run builds on a GPU that trains
            (flow-grpo: ``reward`` and each of ``eval_rewards``), whose in-process judges are counted.
        decode_batch: videos the VAE decodes per call (flow-grpo: ``sample_batch_size``); 0: none.
        encode_batch: videos the VAE encodes per call (dpo's latent cache: 1); 0: none.
        judges_bytes: other judges' bytes on each GPU, given.
        on_gpu: the run's processes have GPUs (the fixed CUDA/NCCL overhead is counted).
        node_processes: processes per node (None: :func:`processes_per_node`).
        optimizer: the LoRA's optimizer ("adamw": its two moments counted; "sgd": none).

    Returns:
        ``(plan, host)``; None for the synthetic stand-in generator.

    Raises:
        ConfigsNotFound: the generator's configs are not on this machine; names every model whose
            configs are missing (with the generator's, its judges'). A judge alone missing is a
            row of the plan saying so, not counted.
    """
    from cac_align.rewards.judges import VideoShape

    missing: list[tuple[str, str]] = []
    try:
        counts = counted_generator(generator, lora)
    except ConfigsNotFound as exc:
        counts, missing = None, list(exc.needs)
    frames, height, width = video if video is not None else (generator.num_frames, generator.height, generator.width)
    shape = VideoShape(frames, height, width, float(generator.fps))
    if missing:  # say every missing config at once, building none of the judges
        raise ConfigsNotFound(missing + missing_configs(judge_models(rewards or {}, shape)[0]))
    # a judge whose config is not here is a row that says so (the generator is still planned, and refused if it cannot fit)
    judges, unknown = count_judges(rewards or {}, shape, strict=False)
    if counts is None:
        return None
    tokens = (counts.tokens_of(frames, height, width) if counts.tokens_of else
              video_tokens(frames, height, width, counts.spatial_multiple, counts.frame_multiple, counts.patch_t))
    what, batch = ("decode", decode_batch) if decode_batch else ("encode", encode_batch) if encode_batch else ("", 0)
    vae_peak = vae_bytes(counts, what, batch, (frames, height, width), generator.vae_dtype) if what else 0
    audio_peak = 0
    if what == "decode" and counts.audio_decode is not None:  # the soundtracks, decoded after the frames: the larger of the two
        audio_peak = audio_decode_bytes(counts, batch, frames, float(generator.fps), generator.vae_dtype)
        vae_peak = max(vae_peak, audio_peak)
    plan = memory_plan(counts, settings=parallel, num_processes=num_processes, tokens=tokens, batch_per_process=batch_per_process,
                       gradient_checkpointing=gradient_checkpointing, lora_rank=lora.rank, dtype=generator.dtype, vae_dtype=generator.vae_dtype,
                       judges_bytes=judges_bytes, ema=ema, judges=judges, unknown_judges=unknown, vae_phase_bytes=vae_peak,
                       vae_what=what, audio_phase_bytes=audio_peak,
                       prefetch=True, overhead_bytes=fixed_overhead_bytes(num_processes) if on_gpu else 0, optimizer=optimizer)
    per_node = node_processes or processes_per_node(num_processes)
    host = host_plan(counts, sharded=parallel.shard == "fsdp2", processes_per_node=per_node, dtype=generator.dtype, vae_dtype=generator.vae_dtype,
                     judges_bytes=sum(j.weight_bytes for j in judges), judge_processes=math.ceil(per_node / parallel.context_parallel),
                     reward_batch=(decode_batch, frames, height, width) if decode_batch else None,
                     shared_encoders=parallel.shares_encoders(per_node, on_gpu=on_gpu))
    return plan, host


def check_memory(generator: Any, lora: Any, parallel: ParallelSettings, num_processes: int, batch_per_process: int,
                 gradient_checkpointing: bool, *, budget_gib: float | None = None, judges_bytes: int = 0, ema: bool = False,
                 video: tuple[int, int, int] | None = None, device: Any = None, main_process: bool = True,
                 rewards: Mapping[str, Any] | None = None, decode_batch: int = 0, encode_batch: int = 0, optimizer: str = "adamw") -> MemoryPlan | None:
    """The memory plan of a generator trainer, checked before anything loads: what ``flow-grpo`` and
    ``dpo`` call once in their setup (:func:`plan_generator` for the arguments).

    Logs the plan and the host memory at load (on the main process) where it decides something (a
    GPU, or ``budget_gib``; at debug level otherwise: a CPU run's table of zeros says nothing) and
    refuses a plan that cannot fit the device.

    Args:
        budget_gib: the memory to plan for, GiB per GPU (overrides the device's; makes a CPU run
            enforce the plan).
        device: this process's device (None: the current CUDA device, or the CPU); the fixed
            CUDA/NCCL overhead is counted on a CUDA device only.
        main_process: log the tables (one process of the run).

    Returns:
        The plan, or None where no config can be read offline (logged).

    Raises:
        RecipeError: the plan does not fit; one line naming the fix (:func:`refusal`).
    """
    import torch

    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    try:
        planned = plan_generator(generator, lora, parallel, num_processes, batch_per_process=batch_per_process,
                                 gradient_checkpointing=gradient_checkpointing, ema=ema, video=video, rewards=rewards, decode_batch=decode_batch,
                                 encode_batch=encode_batch, judges_bytes=judges_bytes, on_gpu=cuda, optimizer=optimizer)
    except ConfigsNotFound as exc:
        if main_process:
            log.warning("%s", exc.line())
        return None
    if planned is None:
        log.info("memory plan: %s is the synthetic stand-in generator; nothing to plan", generator.name)
        return None
    plan, host = planned
    limit = device_bytes(device, budget_gib)
    if main_process:  # shown where it decides something (a device or a budget to fit); else at debug level
        log.log(logging.INFO if limit is not None else logging.DEBUG, "%s\n%s%s", plan.table(limit, output_width()), host.table(output_width()),
                "" if limit is not None else "\n  (no GPU and no memory_budget_gib: not enforced)")
    if limit is not None:
        reason = refusal(plan, limit)
        if reason is not None:
            raise RecipeError(reason)
    return plan


# The videos a score recipe's judges are planned for: its videos are read only when it runs, so the plan
# takes Wan-2.1's (81 frames of 480 x 832 at 16 fps, 5 s: the videos the CaC paper aligns) and says so.
SCORE_VIDEO = (81, 480, 832, 16.0)


def plan_judges(rewards: Mapping[str, Any], video: tuple[int, int, int, float] = SCORE_VIDEO, on_gpu: bool = True) -> JudgesPlan:
    """The memory a job that only scores holds on its GPU: the in-process judges of ``rewards`` (recipe key ->
    reward section) counted as a trainer's are (:func:`~cac_align.plan.judges.count_judges`, each judge whose
    configs are not here a row that says so), their largest KV cache for ``video`` (``(frames, height, width,
    fps)``), and, where a judge is on a GPU and ``on_gpu``, the fixed CUDA overhead of one process. Loads
    nothing, downloads nothing."""
    from cac_align.rewards.judges import VideoShape

    shape = VideoShape(*video)
    judges, unknown = count_judges(rewards, shape, strict=False)
    rows = judge_rows(judges, unknown)
    if on_gpu and any(j.judge.in_process and j.judge.on_gpu for j in judges):
        rows.append(PlanRow("CUDA context, kernels (fixed)", fixed_overhead_bytes(1), "estimate"))
    return JudgesPlan(rows, shape)


def check_job_plan(plan: Any, *, device: Any = None, budget_gib: float | None = None, main_process: bool = True) -> Any:
    """A job's own plan (:class:`~cac_align.plan.job.JobPlan`: ``bon``, ``repair``, ``train-cac``), checked at its start
    before anything loads, as :func:`check_memory` checks a trainer's: logged where it decides something (a CUDA
    device, or ``budget_gib``; at debug level otherwise) and refused with the fix when it cannot fit.

    Args:
        plan: the plan, made from the job's config.
        device: this process's device (None: the current CUDA device, or the CPU: not enforced).
        budget_gib: the memory to plan for, GiB per GPU (the job's ``memory_budget_gib``: overrides the device's and
            makes a CPU run enforce the plan).
        main_process: log the table (one process of the run).

    Returns:
        The plan.

    Raises:
        RecipeError: the plan does not fit; one line naming the fix (:meth:`~cac_align.plan.job.JobPlan.refusal`).
    """
    limit = device_bytes(device, budget_gib)
    if main_process and not plan.nothing:
        lines = [*plan.notes, plan.table(limit, output_width())]
        log.log(logging.INFO if limit is not None else logging.DEBUG, "%s%s", "\n".join(lines),
                "" if limit is not None else "\n  (no GPU and no memory_budget_gib: not enforced)")
    if limit is not None:
        reason = plan.refusal(limit)
        if reason is not None:
            raise RecipeError(reason)
    return plan


def planned_or_none(make: Any, *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)`` (a job's plan), or None where the models' configs are not on this machine (logged:
    the job still runs, as a trainer's does without a plan)."""
    try:
        return make(*args, **kwargs)
    except ConfigsNotFound as exc:
        log.warning("%s", exc.line())
        return None
