"""The memory plans of the jobs that neither sample a video model nor train one: ``serve`` (a vLLM server of a
judge), ``synth-cot`` (its teacher), ``eval vbench`` (vbench's backbones), and the jobs that hold nothing on a
GPU (``convert``, ``synth``, ``make-tiny``, ``eval bench``, ``eval expert``, ``report``, ``export``), so that
``check-recipe`` says of every recipe what its GPU holds, or what it cannot count (docs/memory_plan.md, "Every
job"). Each is a :class:`~cac_align.plan.job.JobPlan`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from cac_align.plan.configs import ConfigsNotFound
from cac_align.plan.job import Fix, JobPlan, nothing_on_a_gpu
from cac_align.plan.rows import PlanRow, fixed_overhead_bytes

# What the jobs that hold nothing on a GPU do instead (check-recipe's verdict says it)
ON_THE_CPU = {
    "convert": "it converts labelled rows into annotations on the CPU: no model",
    "synth": "it renders synthetic videos with numpy on the CPU: no model",
    "make-tiny": "it builds tiny random models on the CPU and saves them",
    "eval-bench": "it computes metrics from results files: no model",
    "eval-expert": "it writes a labelling sheet or reads the experts' labels: no model",
    "report": "it tabulates and charts finished runs: no model",
    "export": "it rewrites a model folder's weights on the CPU",
}

# vLLM's --gpu-memory-utilization when the recipe does not set it (vLLM 0.32's default)
VLLM_UTILIZATION = 0.9


# The configs of the jobs that run on the CPU, by class name
_CPU_CONFIGS = {"ConvertConfig": "convert", "SynthConfig": "synth", "MakeTinyConfig": "make-tiny", "BenchConfig": "eval-bench",
                "ReportConfig": "report", "ExportConfig": "export", "ExpertConfig": "eval-expert"}


def cpu_job_plan(config: Any, processes: int = 1, recipe: Path | None = None) -> JobPlan:
    """The plan of a job that runs on the CPU (:data:`ON_THE_CPU`), known by its config: nothing on a GPU, and why."""
    job = _CPU_CONFIGS[type(config).__name__]
    return nothing_on_a_gpu(job, ON_THE_CPU[job])


def _flag(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in a command line's ``args``, or None."""
    args = [str(a) for a in args]
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def serve_plan(config: Any, processes: int = 1, recipe: Path | None = None, *, utilization: float | None = None,
               tensor_parallel: int | None = None, max_model_len: int | None = None) -> JobPlan:
    """What each GPU of ``serve`` must hold inside the share vLLM takes of it (``--gpu-memory-utilization``, 0.9
    unless ``extra_args`` say): the judge's weights (counted from its ``config.json``; split over
    ``--tensor-parallel-size`` GPUs), the KV cache of one ``max_model_len`` sequence (vLLM refuses to start without
    room for it; it fills the rest of its share with more), and the CUDA context. A replica is one such GPU (or
    ``--tensor-parallel-size`` of them); a fleet has ``replicas``. The model's activations and CUDA graphs are vLLM's
    to size inside its share (not counted). Refused with more tensor parallelism, a shorter ``max_model_len`` or a
    larger share. The arguments override the recipe's (a fix, planned)."""
    from cac_align.plan.judges import count_judge, kv_cache_bytes
    from cac_align.rewards.judges import JudgeCall, JudgeModel
    from cac_align.vlm.config import TINY_PREFIX

    share = utilization or float(_flag(config.extra_args, "--gpu-memory-utilization") or VLLM_UTILIZATION)
    tp = tensor_parallel or int(_flag(config.extra_args, "--tensor-parallel-size") or 1)
    dtype = config.dtype if config.dtype != "auto" else "bfloat16"
    if config.model.startswith(TINY_PREFIX):
        return nothing_on_a_gpu("serve", "a tiny random model is served on the CPU")
    judge = JudgeModel(where="model", name=config.model, dtype=dtype, in_process=True, device="cuda", call=JudgeCall((), 0, 0, 1))
    try:
        counted = count_judge(judge)
    except ConfigsNotFound:
        from cac_align.plan.judges import _not_here

        return JobPlan("serve", "memory plan of each serving GPU", [PlanRow(f"model: not counted ({_not_here(judge, config.model)})", 0, "unknown")],
                       layout="the model not counted")
    from cac_align.plan.judges import judge_module

    text = judge_module(judge).config.get_text_config()
    heads = int(text.num_attention_heads)
    kv_heads, head_dim = int(getattr(text, "num_key_value_heads", None) or heads), int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    length = max_model_len or config.max_model_len or int(getattr(text, "max_position_embeddings", 0) or 0)
    rows = [PlanRow(f"the judge's weights ({dtype}" + (f", 1/{tp}: --tensor-parallel-size {tp}" if tp > 1 else "") + ")",
                    math.ceil(counted.weight_bytes / tp), "counted"),
            PlanRow(f"one max_model_len sequence's KV cache ({length:,} tokens; vLLM fills the rest of its share with more)",
                    math.ceil(kv_cache_bytes(int(text.num_hidden_layers), kv_heads, head_dim, length, 1, dtype) / tp), "arithmetic"),
            PlanRow("CUDA context, kernels (fixed)", fixed_overhead_bytes(tp), "estimate")]
    layout = f"--gpu-memory-utilization {share:g}, --tensor-parallel-size {tp}, max_model_len {length:,}"
    fixes = [Fix(f'extra_args=["--tensor-parallel-size", "{k}"] (each replica on {k} GPUs: its devices)', {"tensor_parallel": k}) for k in (2, 4, 8) if k > tp]
    fixes += [Fix(f"max_model_len={m}", {"max_model_len": m}) for m in (length // 2, length // 4) if m >= 1024]
    fixes += [Fix('extra_args=["--gpu-memory-utilization", "0.95"]', {"utilization": 0.95})] if share < 0.95 else []
    return JobPlan("serve", f"memory plan of each serving GPU (vLLM's share: {share:g} of it; {config.model})", rows, layout=layout, share=share,
                   replan=lambda **changes: serve_plan(config, processes, recipe, **{"utilization": share, "tensor_parallel": tp,
                                                                                       "max_model_len": length, **changes}),
                   fixes=fixes, floor="the judge does not fit the GPUs vLLM is given: more GPUs a replica, or GPUs with more memory")


def synth_cot_plan(config: Any, processes: int = 1, recipe: Path | None = None) -> JobPlan:
    """``synth-cot``'s teacher on its GPU: nothing without one (template reasoning) or when it is served; an
    in-process teacher (``backend: hf``) is counted as a judge is (:func:`~cac_align.plan.judges.count_judge`): its
    weights and the KV cache of its longest request, ``max_frames`` frames at ``fps`` (as images where its
    ``video_input`` says so) and the crops, its prompt and answer, ``max_batch_size`` rows; the CUDA context."""
    from cac_align.plan.judges import count_judge, missing_configs
    from cac_align.plan.rows import judge_rows
    from cac_align.rewards.judges import Frames, JudgeCall, fit_pixels, judge_of

    teacher = config.teacher
    if teacher is None:
        return nothing_on_a_gpu("synth-cot", "no teacher: the template reasoning, written on the CPU")
    height, width = fit_pixels(480, 832, config.max_pixels)
    images = getattr(teacher, "video_input", "video") == "images"
    frames = (Frames(config.max_frames, height, width, images=images), Frames(config.crops_per_anomaly, height, width, images=True))
    call = JudgeCall(frames, 1024, config.max_new_tokens, teacher.max_batch_size)
    judge = judge_of(teacher, "teacher", call)
    if not judge.on_gpu:
        return nothing_on_a_gpu("synth-cot", "its teacher is served (backend: openai)" if not judge.in_process else "its teacher runs on the CPU")
    missing = missing_configs([judge])
    if missing:
        from cac_align.plan.judges import _not_here
        from cac_align.rewards.judges import UnknownJudge

        rows = judge_rows([], [UnknownJudge("teacher", _not_here(judge, missing[0][0]))])
    else:
        rows = judge_rows([count_judge(judge)])
        rows.append(PlanRow("CUDA context, kernels (fixed)", fixed_overhead_bytes(1), "estimate"))
    title = (f"memory plan of synth-cot's GPU (its teacher; {config.max_frames} frames of {height} x {width} a request, a 480 x 832 video at "
             "max_pixels, the prompt estimated at 1,024 tokens)")
    return JobPlan("synth-cot", title, rows, layout=f"max_batch_size {teacher.max_batch_size}",
                   floor="serve the teacher (teacher.backend: openai) or lower teacher.max_batch_size")


def vbench_plan(config: Any, processes: int = 1, recipe: Path | None = None) -> JobPlan:
    """``eval vbench``'s GPU: each dimension's backbone weights, counted from their files' sizes where they are in
    the vbench cache (else a row naming the file and the command that fetches it), one backbone at a time; their
    forwards are not counted (RAFT's correlation volume grows with the square of a frame's pixels: vbench sizes
    it, not this plan), so the plan is never whole: UNKNOWN, saying so."""
    from cac_align.eval.vbench import WEIGHTS, vbench_cache_dir

    if str(config.device).startswith("cpu"):
        return nothing_on_a_gpu("eval-vbench", "device=cpu: vbench's backbones run on the CPU")
    cache = vbench_cache_dir(config.cache_dir)
    rows = []
    for dimension in config.dimensions:
        for item in WEIGHTS[dimension]:
            path = cache / item.path
            if not item.path.endswith((".pth", ".pt", ".ckpt")):
                continue  # a repository's code (DINO's hubconf.py), not weights
            if path.is_file():
                rows.append(PlanRow(f"{dimension}: {item.key} weights ({path.name}, its file's size)", path.stat().st_size, "counted", dimension))
            else:
                rows.append(PlanRow(f"{dimension}: {item.key} weights: not counted ({path} is not in the vbench cache: "
                                    f"{item.fetch.replace('$CACHE', str(cache))})", 0, "unknown", dimension))
        rows.append(PlanRow(f"{dimension}: its backbone's forward on a video's frames: not counted (vbench sizes it)", 0, "unknown", dimension))
    rows.append(PlanRow("CUDA context, kernels (fixed)", fixed_overhead_bytes(1), "estimate"))
    return JobPlan("eval-vbench", f"memory plan of eval vbench's GPU (one dimension at a time; the vbench cache: {cache})", rows,
                   layout=", ".join(config.dimensions))


def expert_plan(config: Any, processes: int = 1, recipe: Path | None = None) -> JobPlan:
    """``eval expert`` holds nothing on a GPU: it writes a blinded sheet of the systems' videos, or reads labels."""
    return nothing_on_a_gpu("eval-expert", ON_THE_CPU["eval-expert"])
