"""The memory plan of stage 3 on ms-swift (``recipes/cac/stage3_swift*.sh``: ``swift rlhf`` with our plugin), read from
the launcher's own arguments (``check-recipe recipes/cac/stage3_swift.sh MODEL=Qwen/Qwen3-VL-8B-Instruct``): what it
can count, and "unknown" for what it cannot (docs/memory_plan.md, "The judge's training stages").

Counted, per GPU of ``NPROC_PER_NODE x NNODES`` (the script's defaults, or the values given as ``NAME=value``): the
model's training state under DeepSpeed ZeRO-3 (``--deepspeed zero3``: bf16 weights and gradients, float32 master
weights and AdamW's moments, each ``1/N``; ``--offload_optimizer true`` moves the master weights and moments to the
CPU) or, with ``--tuner_type lora``, the frozen bf16 model and the float32 adapters' state; the frozen reference
(``--beta`` above 0, full fine-tuning: bf16, ``1/N`` under ZeRO-3); a training micro-batch's activations and logits
(``--per_device_train_batch_size`` rollouts of the two-turn conversation the stage-3 recipe's data section makes,
each answer at ``--max_completion_length``: :mod:`cac_align.plan.stages`' arithmetic); the CUDA context. Not
counted: vLLM colocated with training (``--use_vllm true --vllm_mode colocate``) takes
``--vllm_gpu_memory_utilization`` of each GPU while it generates (its weights and KV cache inside that share; asleep,
``--sleep_level``, while the model trains), a share of the device rather than bytes this plan can add; ms-swift's
own padding and packing of a batch. A script whose model is ``$MODEL`` is planned once ``MODEL=`` names one.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any, Mapping

from cac_align.plan.job import JobPlan
from cac_align.plan.rows import PlanRow, fixed_overhead_bytes

# the stage-3 recipe whose data section and rewards `python -m cac_align.integrations.ms_swift prepare` writes into
# the launcher's rows (docs/cac_training.md, "Stage 3 on ms-swift")
STAGE3_RECIPE = "cac/stage3_grpo"


def is_swift_launcher(path: Path) -> bool:
    """Whether ``path`` is a shell script that runs ``swift rlhf`` (a stage-3 launcher on ms-swift)."""
    return path.suffix == ".sh" and path.is_file() and re.search(r"swift\"?\s+rlhf", path.read_text(encoding="utf-8")) is not None


def swift_arguments(script: str) -> dict[str, str]:
    """The ``--name value`` arguments of the ``swift rlhf`` command in ``script``'s text (its continuation lines
    joined; quotes removed)."""
    text = script.replace("\\\n", " ")
    found = re.search(r"swift\"?\s+rlhf(.*)", text)
    if found is None:
        return {}
    words = shlex.split(found.group(1).split("\n")[0], comments=False)
    args: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            args[word[2:]] = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else "true"
    return args


def _variable(script: str, name: str, given: Mapping[str, str]) -> str | None:
    """A shell variable's value: given (``NAME=value``), else its ``${NAME:-default}`` in the script, else None."""
    if name in given:
        return given[name]
    found = re.search(r"\$\{" + name + r":-([^}]*)\}", script)
    return found.group(1) if found else None


def plan_swift(path: Path, given: Mapping[str, str] | None = None, processes: int | None = None) -> JobPlan:
    """A ms-swift stage-3 launcher's plan per GPU (module docstring); ``given``: ``NAME=value`` for its variables
    (``MODEL``, ``NPROC_PER_NODE``, ``NNODES``); ``processes`` overrides their product."""
    from cac_align.cac.train.settings import TrainCaCConfig
    from cac_align.config import find_recipe, load_config
    from cac_align.plan.stages import _StageInputs, _train_rows, count_vlm, stage_sequence

    given = dict(given or {})
    script = path.read_text(encoding="utf-8")
    args = swift_arguments(script)
    n = processes or int(_variable(script, "NPROC_PER_NODE", given) or 1) * int(_variable(script, "NNODES", given) or 1)
    title = f"memory plan of stage 3 on ms-swift, each GPU ({path.name}; {n} process{'es' if n != 1 else ''})"
    model = given.get("MODEL") if args.get("model", "").startswith("$") else args.get("model")
    if not model:
        why = "$MODEL is the stage-2 weights the script is given when it runs: plan them with MODEL=Qwen/Qwen3-VL-8B-Instruct (or your folder)"
        return JobPlan("stage 3 (ms-swift)", title, [PlanRow(f"model: not counted ({why})", 0, "unknown")], layout=f"{n} processes", processes=n)
    lora = args.get("tuner_type") == "lora"
    budget = int(args.get("max_completion_length", 1024))
    overrides = [f"model={model}", f"finetune={'lora' if lora else 'full'}", f"train.per_device_batch_size={args.get('per_device_train_batch_size', 1)}",
                 f"grpo.max_new_tokens_turn1={budget}", f"grpo.max_new_tokens_turn2={budget}",
                 f"train.gradient_checkpointing={args.get('gradient_checkpointing', 'false')}", f"dtype={args.get('torch_dtype', 'bfloat16')}"]
    if lora:
        overrides += [f"lora.r={args.get('lora_rank', 8)}"]
    config = load_config(TrainCaCConfig, find_recipe(STAGE3_RECIPE), overrides, job="train-cac")
    try:
        counts = count_vlm(model, config.lora.target_modules)
    except FileNotFoundError:
        why = f"{model}'s config.json is not on this machine"
        return JobPlan("stage 3 (ms-swift)", title, [PlanRow(f"model: not counted ({why})", 0, "unknown")], layout=f"{n} processes", processes=n)
    rows = _state_rows(counts, config, args, n)
    rows += _train_rows(_StageInputs(config, counts, True), stage_sequence(config, counts.vision_config), n, "none")
    if args.get("use_vllm") == "true":
        share = args.get("vllm_gpu_memory_utilization", "0.9")
        rows.append(PlanRow(f"vLLM colocated: not counted (it takes {share} of each GPU while it generates, its weights and KV cache inside; "
                            f"asleep while the model trains, --sleep_level {args.get('sleep_level', '0')}: a share of the device, not bytes)",
                            0, "unknown", "rollout"))
    rows.append(PlanRow("CUDA context, kernels" + (", NCCL buffers" if n > 1 else "") + " (fixed)", fixed_overhead_bytes(n), "estimate"))
    layout = f"{'LoRA' if lora else 'full'}, {args.get('deepspeed', 'no ZeRO')}, {n} process{'es' if n != 1 else ''}"
    floor = ("fewer rollouts a micro-batch (--per_device_train_batch_size, with --gradient_accumulation_steps keeping 64 rollouts a step), "
             "gradient checkpointing, LoRA (--tuner_type lora), shorter scans (the stage-3 recipe's data.max_frames_turn1 before `prepare`), "
             "or GPUs with more memory")
    return JobPlan("stage 3 (ms-swift)", f"{title[:-1]}; {layout}; the longest sample as the stage-3 recipe's data section makes it)", rows,
                   layout=layout, processes=n, floor=floor)


def _state_rows(counts: Any, config: Any, args: Mapping[str, str], n: int) -> list[PlanRow]:
    """The model and its training state per GPU: ZeRO-3's shards (the optimizer's on the CPU with
    ``--offload_optimizer``), or the frozen model and the adapters' state; the frozen reference."""
    p = counts.parameters
    zero3 = args.get("deepspeed") == "zero3"
    shard = n if zero3 else 1
    if config.finetune == "lora":
        lora = counts.lora_width * config.lora.r
        return [PlanRow(f"the model ({p:,} parameters, bf16, frozen)", 2 * p, "counted"),
                PlanRow(f"LoRA (rank {config.lora.r}, {lora:,} parameters): float32 weights, gradients, AdamW's moments", 16 * lora, "counted")]
    rows = [PlanRow(f"the model's bf16 weights and gradients ({p:,} parameters" + (f"; ZeRO-3: 1/{n})" if zero3 else ")"), 4 * math.ceil(p / shard),
                    "counted")]
    if args.get("offload_optimizer") == "true":
        rows.append(PlanRow("float32 master weights and AdamW's moments: on the CPU (--offload_optimizer true)", 0, "counted"))
    else:
        rows.append(PlanRow("float32 master weights and AdamW's moments" + (f" (1/{n})" if zero3 else ""), 12 * math.ceil(p / shard), "counted"))
    if float(args.get("beta", "0.04")) > 0:
        rows.append(PlanRow("the frozen reference (bf16" + (f", 1/{n}" if zero3 else "") + ", for the KL term)", 2 * math.ceil(p / shard), "counted"))
    return rows
