"""The memory plan of CaC's three training stages (``train-cac``) at the size the recipe names (Qwen3-VL-8B), per
process, before anything loads (:func:`plan_train_cac`): the model built from its ``config.json`` on the meta
device and counted, the rest arithmetic on the recipe's numbers. ``check-recipe`` prints it for the layout the
recipe's first line launches (accelerate's config: its processes, and FSDP's or ZeRO-3's sharding); the job
checks it at its start. Guide: docs/memory_plan.md, "The judge's training stages".

**The rows** (bytes per process; ``P`` parameters, ``L`` LoRA parameters, ``N`` processes):

| row | phase | bytes | source |
| --- | --- | --- | --- |
| the model | resident | full fine-tuning without sharding: ``P`` in the weights' dtype (stages 1-2: ``dtype``, trained as loaded; stage 3: float32 master weights); LoRA: ``P`` frozen in ``dtype``; FSDP (accelerate's, bf16 mixed precision): ``4 P / N``, float32 (accelerate upcasts the model it shards); ZeRO-3: ``2 P / N`` | counted |
| gradients, AdamW's two moments | resident | of what trains (``P`` or ``L``), in its dtype (LoRA: float32), ``x1`` and ``x2``; sharded: ``/ N`` | counted |
| DDP's gradient buckets | resident | ``N > 1`` unsharded: one more copy of the gradients (accelerate's DDP keeps them beside the parameters) | counted |
| ZeRO-3's float32 master weights | resident | ``4 P / N`` (its optimizer's copy) | counted |
| the frozen reference (stage 3, ``beta > 0``, full) | resident | ``P`` in ``dtype``; LoRA: none (the adapters switched off) | counted |
| FSDP's root unit, and the units it gathers | train | the parameters outside the decoder layers and vision blocks (embeddings, output head, merger), gathered for the whole step; the largest unit and the next one (prefetch), in bf16 | counted |
| activations of the language model | train | ``rows x tokens x hidden x 2 x (layers + 24)`` with gradient checkpointing (``layers x 24`` without): the trainers' estimate (:data:`~cac_align.plan.rows.ACTIVATION_WIDTHS`) | arithmetic |
| activations of the vision tower | train | the same over its patches (4 a visual token) and its width; 0 with ``freeze_vision`` | arithmetic |
| the logits | train | ``rows x positions x vocabulary x 10`` bytes: bf16 logits, their float32 copy and cross-entropy's float32 log-softmax (stages 1-2: every position; stage 3: from the first generated token, ``logits_to_keep``) | arithmetic |
| stage 3's rollouts: the policy's KV cache | rollout | ``2 x layers x kv_heads x head_dim x tokens x generation_batch_size x 2`` (bf16 under autocast): the whole two-turn conversation | arithmetic |
| stage 3's reward | | CaC Eq. 2-6 on the parsed answers: no model, nothing on a GPU | counted |
| CUDA context, kernels, NCCL | resident | 1 GiB, and 1 GiB more with several processes | estimate |

**The samples** are planned at the longest the recipe lets in: turn 1's ``data.max_frames_turn1`` frames at
``data.max_pixels`` (a 480 x 832 frame scaled to it; a stream's own size), turn 2's clip at ``data.max_frames_turn2``
(stage 2: a clip shorter than ``clip_max_s``), each answer at the token budget (the scoring one, 1,024, for the
supervised stages; stage 3's ``max_new_tokens_turn1/2``), the prompts at their characters / 3.

Not counted: the evaluation's generations (detection metrics), the dataloader's workers, the attention loss's
eager attention (``train.attention_loss_weight``: memory ~ length^2 per layer), cuDNN's workspaces and the
allocator's fragmentation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from cac_align.config import RecipeError
from cac_align.plan.counts import count_module, dtype_bytes, lora_width
from cac_align.plan.job import Fix, JobPlan
from cac_align.plan.judges import kv_cache_bytes, visual_tokens
from cac_align.plan.rows import ACTIVATION_WIDTHS, PlanRow, fixed_overhead_bytes

# Bytes a logit holds while the loss runs: the output head's bf16 logits, their float32 copy (the loss upcasts) and
# cross-entropy's float32 log-softmax, kept for the backward (arithmetic, an estimate).
LOGIT_BYTES = 10

# A video's frame where a recipe's annotations name videos read only when it runs: Wan-2.1's (480 x 832)
FRAME = (480, 832)

SHARDINGS = {"none": "not sharded", "fsdp": "FSDP", "zero3": "ZeRO-3"}


@dataclass(frozen=True)
class VlmCounts:
    """A vision-language model counted on the meta device (:func:`count_vlm`).

    Attributes:
        name: where its config was read.
        parameters: all of them (a tied weight once).
        vision: the vision tower's (``model.visual``).
        lora_width: LoRA parameters per unit of rank on the targets (``all-linear``: every Linear but the
            output head, as peft adapts them).
        units: the parameters of each FSDP unit (its decoder layers and vision blocks).
        root: the parameters outside every unit (embeddings, output head, merger, norms).
        hidden, layers, vocab, kv_heads, head_dim: the language model's.
        vision_hidden, vision_layers: the vision tower's width and depth.
        vision_config: its config (the visual tokens' grid).
    """

    name: str
    parameters: int
    vision: int
    lora_width: int
    units: tuple[int, ...]
    root: int
    hidden: int
    layers: int
    vocab: int
    kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_layers: int
    vision_config: Any


_VLM_COUNTS: dict[tuple, VlmCounts] = {}


def _built_vlm(name: str) -> Any:
    """The model ``name`` names as the job loads it: a tiny one built (its random weights), else its architecture
    from its ``config.json`` on the meta device.

    Raises:
        FileNotFoundError: its ``config.json`` is not on this machine.
    """
    from cac_align.plan.configs import judge_config_file
    from cac_align.plan.judges import _meta_judge
    from cac_align.vlm.config import TINY_PREFIX, build_tiny_vlm

    if name.startswith(TINY_PREFIX):
        from cac_align.cac.train.setup import SMALL_VLM

        return build_tiny_vlm(name, "model", 0, extra=SMALL_VLM).model
    found = judge_config_file(name)
    if found is None:
        raise FileNotFoundError(name)
    return _meta_judge(found, Path(found).stat().st_mtime_ns)


def count_vlm(name: str, target_modules: Any = "all-linear", unit_classes: Sequence[str] | None = None) -> VlmCounts:
    """Count the model ``name`` (a hub id, a local folder, a built-in or a ``tiny-random:`` name): its parameters,
    its vision tower's, its LoRA width on ``target_modules``, its FSDP units (``unit_classes``; None: the model's
    own ``_no_split_modules``, the blocks accelerate wraps) and the dimensions the activations need.

    Raises:
        FileNotFoundError: its ``config.json`` is not on this machine.
    """
    from cac_align.loading import looks_like_path

    key = (name, str(target_modules), tuple(unit_classes or ()))
    if key in _VLM_COUNTS and not looks_like_path(name):  # a folder's config may change between calls: counted again
        return _VLM_COUNTS[key]
    import torch

    model = _built_vlm(name)
    classes = tuple(unit_classes or getattr(model, "_no_split_modules", None) or ())
    counted = count_module("model", model, classes if any(type(m).__name__ in classes for m in model.modules()) else ())
    if target_modules == "all-linear":
        head = model.get_output_embeddings()
        width = sum(lora_width(m) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    else:
        from cac_align.plan.counts import _lora_targets

        width = sum(lora_width(m) for _, m in _lora_targets(model, list(target_modules)))
    text, vision_config = model.config.get_text_config(), getattr(model.config, "vision_config", None)
    visual = getattr(getattr(model, "model", model), "visual", None)
    heads = int(text.num_attention_heads)
    counts = VlmCounts(
        name, counted.parameters, sum(p.numel() for p in visual.parameters()) if visual is not None else 0, width, counted.blocks,
        counted.parameters - sum(counted.blocks), int(text.hidden_size), int(text.num_hidden_layers), int(text.vocab_size),
        int(getattr(text, "num_key_value_heads", None) or heads), int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        int(getattr(vision_config, "hidden_size", 0) or 0), int(getattr(vision_config, "depth", 0) or getattr(vision_config, "num_hidden_layers", 0) or 0),
        vision_config)
    _VLM_COUNTS[key] = counts
    return counts


@dataclass(frozen=True)
class StageSample:
    """One sample's tokens as a stage trains on it (:func:`stage_sequence`).

    Attributes:
        tokens: the whole sequence (visual + text + answers).
        visual: its visual tokens.
        patches: the vision tower's patches (4 a visual token, before the 2 x 2 merge).
        positions: the positions whose logits are computed.
        said: how it was planned, in a few words.
    """

    tokens: int
    visual: int
    patches: int
    positions: int
    said: str


def _frame(config: Any) -> tuple[int, int]:
    """The frame size a stage's samples are planned at: its stream's scenes or Wan-2.1's, scaled to ``data.max_pixels``."""
    from cac_align.rewards.judges import fit_pixels

    height, width = FRAME
    if config.stream is not None:
        from cac_align.cac.train.stream import load_stream_synth

        synth = load_stream_synth(config.stream)
        height, width = synth.height, synth.width
    return fit_pixels(height, width, config.data.max_pixels)


def stage_sequence(config: Any, vision_config: Any) -> StageSample:
    """The longest sample ``config``'s stage trains on (module docstring, "The samples")."""
    from cac_align.cac.prompts import frame_prompt, turn1_prompt, turn2_prompt
    from cac_align.rewards.judges import Frames, text_tokens
    from cac_align.vlm.backend import MAX_NEW_TOKENS

    data, grpo = config.data, config.grpo
    height, width = _frame(config)
    style, caption = data.prompt_style, "x" * 200
    scan = Frames(data.max_frames_turn1, height, width)
    first = text_tokens(turn1_prompt(data.max_frames_turn1 / data.scan_fps, data.scan_fps, data.max_frames_turn1, caption, style=style))
    if config.stage == 1:
        parts, text, answers = [Frames(1, height, width, images=True)], text_tokens(frame_prompt(caption, style=style)), MAX_NEW_TOKENS
        said = f"a frame of {height} x {width}, its answer at most {MAX_NEW_TOKENS:,} tokens"
    elif config.stage == 2:
        clip = min(data.max_frames_turn2, max(1, math.ceil(data.clip_max_s * data.clip_fps)))
        second = text_tokens(turn2_prompt((0.0, clip / data.clip_fps), data.clip_fps, clip, style=style))
        if data.clip_context:  # a clip after the scan and its answer, as in inference
            parts, text, answers = [scan, Frames(clip, height, width)], first + second, 2 * MAX_NEW_TOKENS
        else:
            parts, text, answers = [scan], first, MAX_NEW_TOKENS
        said = f"a video of {data.max_frames_turn1} frames (data.max_frames_turn1) of {height} x {width}, its answer at most {MAX_NEW_TOKENS:,} tokens"
    else:
        second = text_tokens(turn2_prompt((0.0, data.max_frames_turn2 / data.clip_fps), data.clip_fps, data.max_frames_turn2, style=style))
        parts, text, answers = [scan, Frames(data.max_frames_turn2, height, width)], first + second, grpo.max_new_tokens_turn1 + grpo.max_new_tokens_turn2
        said = (f"both turns: {data.max_frames_turn1} + {data.max_frames_turn2} frames (data.max_frames_turn1/2) of {height} x {width}, answers of "
                f"{grpo.max_new_tokens_turn1:,} + {grpo.max_new_tokens_turn2:,} tokens")
    visual = visual_tokens(parts, vision_config)
    markup = sum(math.ceil(p.count / (1 if p.images else int(getattr(vision_config, "temporal_patch_size", 2) or 2))) for p in parts) * 8
    merge = int(getattr(vision_config, "spatial_merge_size", 2) or 2)
    patches = (visual - markup) * merge * merge
    tokens = visual + text + answers
    if config.stage == 3:  # logits from the first generated token on (logits_to_keep): turn 1's answer, the clip, turn 2
        positions = grpo.max_new_tokens_turn1 + visual_tokens(parts[1:], vision_config) + second + grpo.max_new_tokens_turn2
    else:
        positions = tokens
    return StageSample(tokens, visual, patches, positions, said)


@dataclass(frozen=True)
class _StageInputs:
    config: Any
    counts: VlmCounts
    on_gpu: bool


def plan_train_cac(config: Any, processes: int = 1, sharding: str = "none", unit_classes: Sequence[str] | None = None,
                   on_gpu: bool = True) -> JobPlan:
    """``train-cac``'s plan for one process of ``config``'s stage on ``processes`` GPUs (module docstring).

    Args:
        config: the job's :class:`~cac_align.cac.train.settings.TrainCaCConfig`.
        processes: processes (GPUs) of the launch.
        sharding: "none" (one process, or DDP), "fsdp" (accelerate's FSDP, ``recipes/accelerate/fsdp.yaml``) or
            "zero3" (DeepSpeed ZeRO-3).
        unit_classes: FSDP's wrapped classes (its config's ``fsdp_transformer_layer_cls_to_wrap``); None: the model's.
        on_gpu: the processes have GPUs (the fixed overhead is counted).

    Raises:
        RecipeError: stage 3 launched sharded (it runs under data parallel, as the job says).
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {tuple(SHARDINGS)}, got {sharding!r}")
    if config.stage == 3 and sharding != "none":
        raise RecipeError("stage 3 runs under data parallel (recipes/accelerate/ddp.yaml), not sharded: each process generates its own rollouts "
                          "and needs the full parameters (docs/cac_training.md, Multi-process)")
    try:
        counts = count_vlm(config.model, config.lora.target_modules, unit_classes)
    except FileNotFoundError:
        return _unknown_model(config)
    return _stage_plan(_StageInputs(config, counts, on_gpu), processes, sharding)


def _unknown_model(config: Any) -> JobPlan:
    """The plan of a stage whose model's ``config.json`` is not here: one row saying so, and how to plan it."""
    from cac_align.loading import looks_like_path

    if looks_like_path(config.model):
        why = (f"{config.model}/config.json is not on this machine (an earlier stage writes it there); plan the architecture it will have: "
               "model=Qwen/Qwen3-VL-8B-Instruct, or your base model")
    else:
        why = f"{config.model}'s config.json is not on this machine: hf download {config.model} --include '*.json'"
    return JobPlan("train-cac", f"memory plan of train-cac stage {config.stage}, each process", [PlanRow(f"model: not counted ({why})", 0, "unknown")],
                   layout=f"stage {config.stage}")


def _weights_rows(inputs: _StageInputs, n: int, sharding: str) -> list[PlanRow]:
    """The model, what trains, its gradients and AdamW's moments, DDP's buckets, ZeRO-3's master weights and stage
    3's reference, per process (module docstring)."""
    config, c = inputs.config, inputs.counts
    lora, p, w = config.finetune == "lora", c.parameters, dtype_bytes(config.dtype)
    trained = c.lora_width * config.lora.r if lora else p - (c.vision if config.freeze_vision else 0)
    rows = []
    if sharding == "fsdp":  # accelerate shards with bf16 mixed precision over float32 parameters (it upcasts the model)
        rows.append(PlanRow(f"the model ({p:,} parameters, float32: accelerate's FSDP upcasts it; 1/{n} shard)", math.ceil(p / n) * 4, "counted"))
        grad, shard = 4, n
    elif sharding == "zero3":
        rows.append(PlanRow(f"the model ({p:,} parameters, {config.dtype}; ZeRO-3: 1/{n} shard)", math.ceil(p / n) * w, "counted"))
        rows.append(PlanRow(f"ZeRO-3's float32 master weights (1/{n})", math.ceil(trained / n) * 4, "counted"))
        grad, shard = w, n
    else:
        full_dtype = "float32" if config.stage == 3 and not lora else config.dtype  # stage 3 trains float32 master weights
        full = dtype_bytes(full_dtype)
        rows.append(PlanRow(f"the model ({p:,} parameters, {full_dtype}" + (", frozen" if lora else "") + ")", p * full, "counted"))
        grad, shard = (4 if lora else full), 1
    if lora:
        what, grad = f"LoRA (rank {config.lora.r}, {trained:,} parameters, float32)", 4
        rows.append(PlanRow(f"{what}: weights", math.ceil(trained / shard) * 4, "counted"))
    else:
        what = f"what trains ({trained:,} parameters" + (", the vision tower frozen" if config.freeze_vision else "") + ")"
    rows.append(PlanRow(f"{what}: gradients", math.ceil(trained / shard) * grad, "counted"))
    moment = 4 if lora or sharding != "none" else grad
    rows.append(PlanRow(f"AdamW's two moments ({'float32' if moment == 4 else config.dtype})", 2 * math.ceil(trained / shard) * moment, "counted"))
    if n > 1 and sharding == "none":
        rows.append(PlanRow("DDP's gradient buckets (a second copy of the gradients)", trained * grad, "counted"))
    if config.stage == 3 and config.grpo.beta > 0 and not lora:
        rows.append(PlanRow(f"the frozen reference ({config.dtype}, for the KL term)", p * w, "counted"))
    return rows


def _train_rows(inputs: _StageInputs, sequence: StageSample, n: int, sharding: str) -> list[PlanRow]:
    """What a training micro-batch adds while it runs: FSDP's gathered units, the activations, the logits."""
    config, c, t = inputs.config, inputs.counts, inputs.config.train
    rows_n, gc = t.per_device_batch_size, t.gradient_checkpointing
    rows = []
    if sharding != "none" and c.units:
        rows.append(PlanRow("FSDP's root unit, gathered for the step (embeddings, output head, merger; bf16)", c.root * 2, "counted", "train"))
        rows.append(PlanRow("the largest unit gathered, and the next (prefetch; bf16)", 2 * max(c.units) * 2, "counted", "train"))
    widths = c.layers + ACTIVATION_WIDTHS if gc else c.layers * ACTIVATION_WIDTHS
    rows.append(PlanRow(f"activations of the language model ({rows_n} x {sequence.tokens:,} tokens, {'checkpointed' if gc else 'all kept'})",
                        rows_n * sequence.tokens * c.hidden * 2 * widths, "arithmetic", "train"))
    if c.vision_hidden and not config.freeze_vision:
        vision_widths = c.vision_layers + ACTIVATION_WIDTHS if gc else c.vision_layers * ACTIVATION_WIDTHS
        rows.append(PlanRow(f"activations of the vision tower ({rows_n} x {sequence.patches:,} patches)",
                            rows_n * sequence.patches * c.vision_hidden * 2 * vision_widths, "arithmetic", "train"))
    rows.append(PlanRow(f"logits ({rows_n} x {sequence.positions:,} positions x {c.vocab:,}, bf16 and two float32 copies)",
                        rows_n * sequence.positions * c.vocab * LOGIT_BYTES, "arithmetic", "train"))
    return rows


def _rollout_rows(inputs: _StageInputs, sequence: StageSample) -> list[PlanRow]:
    """Stage 3's rollouts: the policy's KV cache over a generation batch of whole conversations; the reward holds nothing."""
    config, c = inputs.config, inputs.counts
    grpo = config.grpo
    reward = PlanRow("stage 3's reward (CaC Eq. 2-6 on the parsed answers: no model)", 0, "counted")
    if grpo.sampler == "simulated":
        return [PlanRow("rollouts: simulated (grpo.sampler=simulated: no generation)", 0, "counted"), reward]
    kv = kv_cache_bytes(c.layers, c.kv_heads, c.head_dim, sequence.tokens, grpo.generation_batch_size, "bfloat16")
    return [PlanRow(f"rollouts: the policy's KV cache ({grpo.generation_batch_size} x {sequence.tokens:,} tokens, bf16)", kv, "arithmetic", "rollout"),
            reward]


def _stage_plan(inputs: _StageInputs, n: int, sharding: str) -> JobPlan:
    config, c = inputs.config, inputs.counts
    sequence = stage_sequence(config, c.vision_config)
    rows = _weights_rows(inputs, n, sharding) + _train_rows(inputs, sequence, n, sharding)
    if config.stage == 3:
        rows += _rollout_rows(inputs, sequence)
    if inputs.on_gpu:
        rows.append(PlanRow("CUDA context, kernels" + (", NCCL buffers" if n > 1 else "") + " (fixed)", fixed_overhead_bytes(n), "estimate"))
    t = config.train
    layout = (f"stage {config.stage}, finetune={config.finetune}, {n} process{'es' if n != 1 else ''}, "
              f"{SHARDINGS[sharding]}, gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}")
    title = f"memory plan of train-cac, each process ({layout}; {c.name}; the longest sample: {sequence.said})"
    return JobPlan("train-cac", title, rows, layout=layout, processes=n, fixes=_stage_fixes(inputs, n, sharding),
                   replan=lambda **changes: _replanned(inputs, n, sharding, **changes),
                   floor="none of these fits it: shorter samples (data.max_frames_turn1, data.max_pixels), or GPUs with more memory")


def _replanned(inputs: _StageInputs, n: int, sharding: str, processes: int | None = None, shard: str | None = None, **settings: Any) -> JobPlan:
    """The plan with a fix: ``processes``, ``shard`` and the recipe's own keys (``finetune``, ``train.*``,
    ``data.*``, ``grpo.*`` as ``train__per_device_batch_size``)."""
    config = inputs.config
    for key, value in settings.items():
        section, _, field_name = key.partition("__")
        config = replace(config, **{section: replace(getattr(config, section), **{field_name: value})}) if field_name else replace(config, **{key: value})
    return _stage_plan(_StageInputs(config, inputs.counts, inputs.on_gpu), processes or n, shard or sharding)


def _stage_fixes(inputs: _StageInputs, n: int, sharding: str) -> list[Fix]:
    """A stage's fixes, the first that fits named, on the GPUs there are before on more: gradient checkpointing (on
    with every other fix, where it is off); the method's changes on these GPUs (sharding it with FSDP: stages 1-2;
    LoRA instead of full fine-tuning: stages 1 and 3), alone and with the loop's changes (fewer rows a forward, a
    smaller generation batch for stage 3: one, then both); FSDP on more GPUs, alone and with those; then all of these
    with a shorter scan (what the stage learns from changes last)."""
    config = inputs.config
    t, data = config.train, config.data
    gc = ("", {}) if t.gradient_checkpointing else ("train.gradient_checkpointing=true", {"train__gradient_checkpointing": True})
    here: list[tuple[str, dict]] = [("", {})]
    more: list[tuple[str, dict]] = []
    if config.stage != 3:
        fsdp = "launch with recipes/accelerate/fsdp.yaml (FSDP2: weights, gradients and AdamW's moments sharded)"
        if sharding != "fsdp" and n > 1:
            here.append((f"{fsdp} on these {n} GPUs", {"processes": n, "shard": "fsdp"}))
        more = [(f"{fsdp} on {k} GPUs", {"processes": k, "shard": "fsdp"}) for k in (2, 4, 8, 16, 32, 64) if k > n]
    if config.finetune == "full" and config.stage in (1, 3):
        said = "finetune=lora train.learning_rate=1.0e-5 (ours: the stage-2 weights frozen, adapters trained)" if config.stage == 3 else "finetune=lora"
        here.append((said, {"finetune": "lora"}))
    loop: list[list[tuple[str, dict]]] = [[(f"train.per_device_batch_size={b}", {"train__per_device_batch_size": b})
                                           for b in range(t.per_device_batch_size - 1, 0, -1)]]
    if config.stage == 3 and config.grpo.sampler != "simulated":
        g = config.grpo.generation_batch_size
        loop.append([(f"grpo.generation_batch_size={b}: fewer rollouts generated at once", {"grpo__generation_batch_size": b})
                     for b in dict.fromkeys((g // 2, g // 4, 1)) if 0 < b < g])
    frames = data.max_frames_turn1
    shorter = [(f"data.max_frames_turn1={f}: a shorter scan ({f / data.scan_fps:g} s at {data.scan_fps:g} fps)", {"data__max_frames_turn1": f})
               for f in dict.fromkeys((frames // 2, frames // 4)) if f >= 2]
    # what the loop runs at once (what it learns stays the same): none, then one axis changed, then two (each axis's
    # options the mildest first); then the same with a shorter scan (what it learns from changes)
    picks = sorted(itertools.product(*[[("", {})] + axis for axis in loop]), key=lambda picked: sum(bool(changes) for _, changes in picked))
    runs = [(" and ".join(said for said, _ in picked if said), {k: v for _, changes in picked for k, v in changes.items()}) for picked in picks]
    samples = [(" and ".join(x for x in (run_says, short_says) if x), {**run, **short}) for short_says, short in shorter for run_says, run in runs]
    order = ([(method, run) for run in runs for method in here] + [(method, run) for method in more for run in runs]
             + [(method, sample) for sample in samples for method in here] + [(method, sample) for method in more for sample in samples])
    fixes = []
    for (method_says, method), (sample_says, sample) in order:
        changes = {**gc[1], **method, **sample}
        if changes:
            fixes.append(Fix(" and ".join(said for said in (gc[0], method_says, sample_says) if said), changes))
    return fixes


def launch_sharding(recipe: Path | None) -> tuple[str, tuple[str, ...] | None]:
    """``(sharding, FSDP's wrapped classes)`` of the launch on a recipe's first line: its accelerate
    ``--config_file`` (a shipped one from any folder) says FSDP (``distributed_type: FSDP``, its
    ``fsdp_transformer_layer_cls_to_wrap``) or ZeRO-3 (``DEEPSPEED`` at ``zero_stage: 3``); anything else "none"."""
    import re

    import yaml

    from cac_align.config import SHIPPED_RECIPES

    first = recipe.read_text(encoding="utf-8").splitlines()[:1] if recipe is not None and recipe.is_file() else []
    found = re.search(r"--config_file[ =](\S+)", first[0]) if first else None
    if found is None:
        return "none", None
    path = Path(found.group(1))
    path = path if path.is_file() or path.parts[:1] != ("recipes",) else SHIPPED_RECIPES.joinpath(*path.parts[1:])
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(settings, dict):
        return "none", None
    kind = str(settings.get("distributed_type", "")).upper()
    if kind == "FSDP":
        wrap = (settings.get("fsdp_config") or {}).get("fsdp_transformer_layer_cls_to_wrap")
        return "fsdp", tuple(c.strip() for c in str(wrap).split(",")) if wrap else None
    if kind == "DEEPSPEED" and int((settings.get("deepspeed_config") or {}).get("zero_stage", 0)) == 3:
        return "zero3", None
    return "none", None


def environment_sharding(environ: Any = None) -> tuple[int, str, tuple[str, ...] | None]:
    """``(processes, sharding, FSDP's wrapped classes)`` of the launch this process is in, from what ``accelerate
    launch`` and torchrun set: ``WORLD_SIZE``, ``ACCELERATE_USE_FSDP`` (with ``FSDP_TRANSFORMER_CLS_TO_WRAP``),
    ``ACCELERATE_USE_DEEPSPEED`` at ``ACCELERATE_DEEPSPEED_ZERO_STAGE`` 3."""
    import os

    environ = os.environ if environ is None else environ
    processes = int(environ.get("WORLD_SIZE", "1") or 1)
    if str(environ.get("ACCELERATE_USE_FSDP", "false")).lower() == "true":
        wrap = environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
        return processes, "fsdp", tuple(c.strip() for c in wrap.split(",")) if wrap else None
    if str(environ.get("ACCELERATE_USE_DEEPSPEED", "false")).lower() == "true" and str(environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")) == "3":
        return processes, "zero3", None
    return processes, "none", None


def train_cac_recipe_plan(config: Any, processes: int = 1, recipe: Path | None = None) -> JobPlan:
    """``check-recipe``'s plan of a train-cac recipe on ``processes`` GPUs, sharded as its first line's launch says
    (:func:`launch_sharding`)."""
    from cac_align.plan.sampling import shipped_note

    sharding, units = launch_sharding(recipe)
    plan = plan_train_cac(config, processes, sharding, units)
    plan.notes = shipped_note(config.model)
    return plan


def check_train_cac(config: Any) -> JobPlan | None:
    """What ``train-cac`` calls at its start, on each process, before the model loads: the stage's plan for the
    launch this process is in (:func:`environment_sharding`), checked against its GPU or ``memory_budget_gib``
    (:func:`~cac_align.plan.check.check_job_plan`); refused with the fix when it cannot fit. None with nothing to
    check (no CUDA device, no budget: no plan is made) and for stage 3 launched sharded (the stage refuses that itself)."""
    import os

    import torch

    from cac_align.plan.check import check_job_plan

    cuda = torch.cuda.is_available()
    if not cuda and config.memory_budget_gib is None:
        return None
    processes, sharding, units = environment_sharding()
    if config.stage == 3 and sharding != "none":
        return None
    plan = plan_train_cac(config, processes, sharding, units, on_gpu=cuda)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0)) if cuda else torch.device("cpu")
    return check_job_plan(plan, device=device, budget_gib=config.memory_budget_gib, main_process=int(os.environ.get("RANK", "0") or 0) == 0)
