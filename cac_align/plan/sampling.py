"""The memory plan of the jobs that sample a video model without training it: ``bon`` (the generator and
every judge in this process) and ``repair`` (the regenerator, Wan-VACE or LTX-2's condition pipeline, and the
judge), planned before anything loads from the models' configs (:func:`plan_bon`, :func:`plan_repair`), as a
trainer's are (:mod:`cac_align.plan.check`). Guide: docs/memory_plan.md, "Best-of-N and repair".

**The rows** (bytes on the job's one GPU; a phase is held only while it runs, the peak is the resident rows
plus the largest phase):

| row | phase | bytes | source |
| --- | --- | --- | --- |
| each transformer (the A14B's two experts) | resident; ``bon`` with ``offload``: the largest, while it samples (one expert at a time) | its parameters in ``dtype`` | counted |
| text encoder(s) | resident (the pipeline is on the GPU whole); ``offload``: while it encodes | parameters in ``dtype`` | counted |
| VAE(s), vocoder | resident; ``offload``: while they decode | parameters in ``vae_dtype`` | counted |
| the sampling forward (no gradient) | sample | ``rows x tokens x hidden x bytes x`` :data:`SAMPLING_WIDTHS` (+ one width a VACE layer's hint) | arithmetic |
| ``repair``: the segment's video, mask and masked copies, and the VAE's encode of it | condition | the copies: arithmetic; the encode: traced | |
| the VAE's decode of a batch (``bon``: ``batch_size`` videos; ``repair``: one segment) | decode | its live tensors, untiled, in ``vae_dtype`` | traced |
| each in-process judge | resident; ``offload``: while it scores | its parameters in its dtype | counted |
| the judges' KV cache | score | the largest judge's longest call, ``rows`` = the videos one call holds (``bon``: ``n`` at most; ``repair``: 1) | arithmetic |
| CUDA context, kernels | resident | 1 GiB | estimate |

``rows`` of a sampling forward: the videos of a call (``batch_size``; ``repair``: 1), twice where the family's
pipeline batches classifier-free guidance's two branches (LTX-2's: its family's ``guidance_batched``; Wan's,
Wan-VACE's and the others' run them one after the other: 1). The tokens are the video's on the transformer's latent grid (the
trainers' :func:`~cac_align.plan.rows.video_tokens`). ``repair``'s segment is planned at its longest, the whole
video, its frames rounded up to the regenerator's ``k * m + 1`` and its sides to its multiple.

Not counted: the decoded frames' uint8 copy on the way to the host (a few frames at a time), the prompts'
embeddings, the scheduler's latents (each a sliver of a hidden-sized tensor), a judge's prefill activations and
its vision tower's (as for the trainers), cuDNN's workspaces and the allocator's fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from cac_align.config import RecipeError
from cac_align.plan.counts import GIB, GeneratorCounts, counted_generator, counted_pipeline, dtype_bytes
from cac_align.plan.host import HostPlan
from cac_align.plan.job import Fix, JobPlan
from cac_align.plan.judges import JudgeCount, count_judges
from cac_align.plan.rows import PlanRow, fixed_overhead_bytes, judge_rows, video_tokens
from cac_align.plan.trace import audio_decode_bytes, vae_bytes

# Hidden-sized tensors a token of a sampling forward holds at once (arithmetic, an estimate). With no gradient
# nothing is kept for a backward: one block runs at a time, and at its feed-forward it holds the residual stream,
# its float32 copy in the norm and the gated residual add (two widths), the normed input, and the feed-forward's
# intermediate before and after its activation (Wan-2.1-1.3B's is 5.8 widths: 8,960 over 1,536). 1 + 2 + 1 + 2 x 5.8
# is about 16; a narrower feed-forward (the 14B's 2.7) holds less there and about as much in its attention (q, k, v,
# their rotated float32 copies, the output). Not yet measured: benchmarks/gpu_quick.sh's bon_wan step measures it.
SAMPLING_WIDTHS = 16

# The videos the judges of a repair recipe are planned for, where its inputs are files read only when it runs:
# Wan-2.1's 81 frames of 480 x 832 at 16 fps, as score's (cac_align.plan.check.SCORE_VIDEO)
REPAIR_VIDEO = (81, 480, 832, 16.0)


def sampling_bytes(tokens: int, hidden: int, rows: int, dtype: Any, hints: int = 0) -> int:
    """What a sampling forward (no gradient) holds at its fullest: ``rows x tokens x hidden x`` the bytes of
    ``dtype`` ``x (`` :data:`SAMPLING_WIDTHS` ``+ hints)``, where ``hints`` are hidden-sized tensors held for the
    whole forward (a VACE transformer's: one a VACE layer). Arithmetic, an estimate (module docstring)."""
    return rows * tokens * hidden * dtype_bytes(dtype) * (SAMPLING_WIDTHS + hints)


def capped_judges(judges: Sequence[JudgeCount], most: int) -> list[JudgeCount]:
    """``judges`` with each KV cache for at most ``most`` rows: a job that hands a judge ``most`` videos a call
    (``bon``: a prompt's ``n`` candidates; ``repair``: one video) never fills a larger ``max_batch_size``. The
    cache is linear in its rows (:func:`~cac_align.plan.judges.kv_cache_bytes`)."""
    capped = []
    for j in judges:
        rows = j.judge.call.rows
        if rows > most and j.kv_bytes:
            j = replace(j, judge=replace(j.judge, call=replace(j.judge.call, rows=most)), kv_bytes=j.kv_bytes * most // rows)
        capped.append(j)
    return capped


def served(judges: Sequence[JudgeCount]) -> list[JudgeCount]:
    """``judges`` served elsewhere: nothing of them on this GPU (a refusal's fix, planned)."""
    return [replace(j, weight_bytes=0, kv_bytes=0, note="served") for j in judges]


def judge_phase_rows(judges: Sequence[JudgeCount], unknown: Sequence[Any], resident: bool) -> list[PlanRow]:
    """The judges' rows (:func:`~cac_align.plan.rows.judge_rows`) in a sampling job's phases: their weights
    resident (``resident``) or only while they score, their KV cache while they score."""
    rows = []
    for row in judge_rows(judges, unknown):
        if row.phase == "video" or (not resident and row.phase == "resident" and row.bytes):
            row = replace(row, phase="score", label=row.label if row.phase == "video" else f"{row.label}: on the GPU while it scores (offload)")
        rows.append(row)
    return rows


def pipeline_rows(counts: GeneratorCounts, dtype: str, vae_dtype: str, offload: bool) -> list[PlanRow]:
    """A pipeline's weights as a sampling job holds them: every component resident (the pipeline on its GPU
    whole), or, with diffusers' model CPU offload, each only while it runs: the encoders while they encode, the
    largest expert while it samples (one at a time), the VAE(s) and vocoder while they decode."""
    weight, vae_weight = dtype_bytes(dtype), dtype_bytes(vae_dtype)
    rows = []
    if offload:
        largest = max(counts.transformers, key=lambda t: t.parameters)
        one = ", one expert at a time" if len(counts.transformers) > 1 else ""
        rows.append(PlanRow(f"{largest.name} ({dtype}): on the GPU while it samples (offload{one})", largest.parameters * weight, "counted", "sample"))
        rows += [PlanRow(f"{e.name} ({dtype}): on the GPU while it encodes (offload)", e.parameters * weight, "counted", "encode") for e in counts.encoders]
        rows += [PlanRow(f"{o.name} ({vae_dtype}): on the GPU while it decodes (offload)", o.parameters * vae_weight, "counted", "decode")
                 for o in counts.others]
        return rows
    rows += [PlanRow(f"{t.name} ({dtype})", t.parameters * weight, "counted") for t in counts.transformers]
    rows += [PlanRow(f"{e.name} ({dtype}; the pipeline is on the GPU whole)", e.parameters * weight, "counted") for e in counts.encoders]
    rows += [PlanRow(f"{o.name} ({vae_dtype})", o.parameters * vae_weight, "counted") for o in counts.others]
    return rows


def tokens_of(counts: GeneratorCounts, frames: int, height: int, width: int) -> int:
    """The transformer's tokens for one video of ``frames x height x width`` (the family's own count where it
    says one)."""
    if counts.tokens_of is not None:
        return counts.tokens_of(frames, height, width)
    return video_tokens(frames, height, width, counts.spatial_multiple, counts.frame_multiple, counts.patch_t)


def forward_rows(family: Any, guidance: Mapping[str, Any] | None, videos: int) -> int:
    """Rows of one sampling forward: ``videos``, twice where the family's pipeline batches classifier-free guidance's
    two branches (its ``guidance_batched``: LTX-2's; its other guidance runs forwards of its own), else one branch at a
    time; 1 where each row is its own forward (the family's ``one_row_a_forward``: Cosmos 3)."""
    if getattr(family, "one_row_a_forward", False):  # no batch axis: each row its own forward (Cosmos 3)
        return 1
    batched = bool(getattr(family, "guidance_batched", False)) and guidance is not None
    return videos * (2 if batched and (guidance.get("guidance_scale") or 0.0) > 1.0 else 1)


def decode_rows(counts: GeneratorCounts, batch: int, video: tuple[int, int, int], fps: float, vae_dtype: str) -> list[PlanRow]:
    """The VAE's decode of ``batch`` videos (their soundtracks' too, where the family traces it: the larger of the
    two, which run one after the other): one video's traced (:func:`~cac_align.plan.trace.vae_bytes`), times
    ``batch``. Every live tensor of a decode is a video's (batch x channels x frames x height x width), so the
    batch's trace is ``batch`` times one video's (tests/plan/test_sampling_plan.py compares the two); where a
    decode held something for the whole batch, this would count it ``batch`` times: an upper bound. One trace a
    video size serves every batch size (a refusal's smaller ones, and repair's segment of the same size)."""
    if counts.vae is None:
        return []
    decode = batch * vae_bytes(counts, "decode", 1, video, vae_dtype)
    sound = batch * audio_decode_bytes(counts, 1, video[0], fps, vae_dtype) if counts.audio_decode is not None else 0
    label = f"vae decode of {batch} video{'s' if batch != 1 else ''}, untiled ({vae_dtype}; one traced, x {batch})" + (
        f", or its sound's ({sound / GIB:.2f} GiB), the larger" if sound else "")
    return [PlanRow(label, max(decode, sound), "traced", "decode")]


def overhead_rows(rows: Sequence[PlanRow], on_gpu: bool) -> list[PlanRow]:
    """The CUDA context of the job's one process, where anything of it is on a GPU."""
    if on_gpu and any(r.bytes for r in rows):
        return [PlanRow("CUDA context, kernels (fixed)", fixed_overhead_bytes(1), "estimate")]
    return []


# -- bon -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BonInputs:
    """What a bon plan is computed from, counted once (its fixes re-plan from it)."""

    config: Any
    counts: GeneratorCounts | None
    judges: tuple[JudgeCount, ...]
    unknown: tuple[Any, ...]
    video: tuple[int, int, int, float]
    lora_bytes: int | None
    on_gpu: bool
    overhead: bool = True


def synthetic_video(name: str) -> tuple[int, int, int, float]:
    """``(frames, height, width, fps)`` of the synthetic stand-in generator's videos (its synth recipe's)."""
    from cac_align.gen.synthetic import load_synthetic_generator

    synth = load_synthetic_generator(name, 0.5).synth
    return max(2, int(round(synth.duration_s * synth.fps))), synth.height, synth.width, float(synth.fps)


def plan_bon(config: Any, on_gpu: bool = True, overhead: bool | None = None) -> JobPlan:
    """``bon``'s plan on its one GPU (module docstring): the generator as sampled (no gradient, no optimizer), the
    VAE's decode of ``batch_size`` videos, every in-process judge of ``reward`` and its KV cache for a prompt's
    ``n`` candidates, the CUDA context; the host's table beside it. Refused with the first fix that fits:
    ``offload=true``, a smaller ``batch_size``, both, then the judges served elsewhere.

    Args:
        config: the job's :class:`~cac_align.jobs.best_of_n.BonConfig`.
        on_gpu: the job's models are planned on a GPU where their ``device`` says so (False: everything on the CPU).
        overhead: count the CUDA context (None: where ``on_gpu``; a budget checked on a CPU counts none).

    Raises:
        ConfigsNotFound: the generator's configs are not on this machine (a judge's missing config is a row).
    """
    from cac_align.rewards.judges import VideoShape

    gen = config.generator
    if gen.is_synthetic:
        counts, video = None, synthetic_video(gen.name)
    else:
        counts, video = counted_generator(gen, None), (gen.num_frames, gen.height, gen.width, float(gen.fps))
    judges, unknown = count_judges({"reward": config.reward}, VideoShape(*video), strict=False)
    inputs = _BonInputs(config, counts, tuple(capped_judges(judges, config.n)), tuple(unknown), video, _lora_bytes(gen), on_gpu,
                        on_gpu if overhead is None else overhead)
    return _bon_plan(inputs, config.batch_size, config.offload, False)


def _lora_bytes(gen: Any) -> int | None:
    """The bytes of the LoRA ``generator.lora`` loads beside the transformer (its safetensors headers' tensors in
    ``generator.dtype``): 0 without one, None when its files are not here."""
    from pathlib import Path

    from cac_align.plan.judges import safetensors_bytes

    if gen.is_synthetic or not gen.lora:
        return 0
    files = sorted(str(p) for p in Path(gen.lora).glob("*.safetensors"))
    return safetensors_bytes(files, gen.dtype) if files else None


def _bon_plan(inputs: _BonInputs, batch: int, offload: bool, judges_served: bool) -> JobPlan:
    config, counts, (frames, height, width, fps) = inputs.config, inputs.counts, inputs.video
    gen = config.generator
    offload = offload and inputs.on_gpu  # offload does nothing without a CUDA device (the job says so)
    judges = served(inputs.judges) if judges_served else list(inputs.judges)
    rows: list[PlanRow] = []
    if counts is not None and not _generator_on_gpu(inputs):
        rows.append(PlanRow(f"the generator: on the CPU (generator.device={gen.device})", 0, "counted"))
    elif counts is not None:
        rows += pipeline_rows(counts, gen.dtype, gen.vae_dtype, offload)
        if inputs.lora_bytes is None:
            rows.append(PlanRow(f"generator.lora={gen.lora}: not counted (no safetensors file there)", 0, "unknown"))
        elif inputs.lora_bytes:
            rows.append(PlanRow(f"generator.lora ({gen.dtype}, beside the transformer)", inputs.lora_bytes, "counted", "sample" if offload else "resident"))
        tokens = tokens_of(counts, frames, height, width)
        forward = forward_rows(gen.family, gen.family.guidance(gen), batch)
        rows.append(PlanRow(f"sampling forward, no gradient ({forward} x {tokens:,} tokens, one block at a time)",
                            sampling_bytes(tokens, counts.hidden_size, forward, gen.dtype), "arithmetic", "sample"))
        rows += decode_rows(counts, batch, (frames, height, width), fps, gen.vae_dtype)
    rows += judge_phase_rows(judges, inputs.unknown, resident=not offload)
    rows += overhead_rows(rows, inputs.overhead)
    fixes = _bon_fixes(inputs, batch, offload, judges_served)
    layout = f"batch_size={batch}, offload={'true' if offload else 'false'}" + (", judges served" if judges_served else "")
    title = (f"memory plan of bon's GPU ({layout}; {frames} frames of {height} x {width} a video"
             + ("; the synthetic generator renders on the CPU" if counts is None else "") + ")")
    return JobPlan("bon", title, rows, layout=layout, host=_bon_host(inputs, offload),
                   replan=lambda **changes: _bon_plan(inputs, **{"batch": batch, "offload": offload, "judges_served": judges_served, **changes}),
                   fixes=fixes, floor=lambda: _bon_floor(inputs))


def _generator_on_gpu(inputs: _BonInputs) -> bool:
    """Whether bon's generator is a pipeline on the job's GPU (not the synthetic stand-in, not ``device: cpu``)."""
    return inputs.counts is not None and inputs.on_gpu and not str(inputs.config.generator.device).startswith("cpu")


def _bon_fixes(inputs: _BonInputs, batch: int, offload: bool, judges_served: bool) -> list[Fix]:
    """The fixes a bon refusal tries, in order: ``offload=true`` (when off, on a GPU), each smaller ``batch_size``
    (the largest that fits first), both, then the judges served (with those too)."""
    off = "offload=true: the pipeline's modules visit the GPU one at a time and the judges only while they score"
    here = _generator_on_gpu(inputs)
    sizes = list(range(batch - 1, 0, -1)) if here else []
    fixes = [] if offload or not here else [Fix(off, {"offload": True})]
    fixes += [Fix(f"batch_size={b}: fewer videos a sampling forward and a decode", {"batch": b}) for b in sizes]
    if not offload and here:
        fixes += [Fix(f"{off}, and batch_size={b}", {"offload": True, "batch": b}) for b in sizes]
    if not judges_served and any(j.weight_bytes or j.kv_bytes for j in inputs.judges):
        from cac_align.plan.refusal import SERVE_THE_JUDGES

        options = [({}, "")] + ([({"offload": True}, ", and offload=true")] if not offload and here else [])
        options += [({**changes, "batch": b}, f"{said}, and batch_size={b}") for changes, said in list(options) for b in sizes]
        fixes += [Fix(f"{SERVE_THE_JUDGES}{said}", {"judges_served": True, **changes}) for changes, said in options]
    return fixes


def _bon_floor(inputs: _BonInputs) -> str:
    """What a bon refusal says when no setting fits: its largest single part, even at its smallest."""
    least = _bon_plan(inputs, 1, inputs.on_gpu, True) if _generator_on_gpu(inputs) else None
    if least is None:
        return "no setting of bon fits it: put each judge on a GPU of its own (its model.device) or serve it"
    return (f"no setting of bon fits it: with batch_size=1, offload=true and the judges served it still needs {least.peak_bytes / GIB:.1f} GiB "
            "(the generator's largest part while it runs): use a GPU with more memory, or fewer or smaller frames (generator.num_frames, "
            "height, width)")


def _bon_host(inputs: _BonInputs, offload: bool) -> HostPlan | None:
    """What the host holds: the pipeline and the judges loaded through it (with ``offload``: held there between
    their turns on the GPU), and a prompt's ``n`` candidates decoded to uint8 while they are scored."""
    config, counts = inputs.config, inputs.counts
    frames, height, width, _ = inputs.video
    gen = config.generator
    rows = []
    if counts is not None:
        pipeline = (sum(t.parameters for t in counts.transformers) + sum(e.parameters for e in counts.encoders)) * dtype_bytes(gen.dtype) \
            + sum(o.parameters for o in counts.others) * dtype_bytes(gen.vae_dtype)
        held = "held on the host between its turns on the GPU (offload)" if offload else "read through host memory as it loads"
        rows.append(PlanRow(f"the pipeline, {held}", pipeline, "counted", "load"))
    judges = sum(j.weight_bytes for j in inputs.judges)
    if judges:
        held = "held on the host between scoring (offload)" if offload else "read through host memory as they load"
        rows.append(PlanRow(f"the in-process judges, {held}", judges, "counted", "load"))
    rows.append(PlanRow(f"a prompt's {config.n} candidates, decoded to uint8 while they are scored ({frames} x {height} x {width} x 3 each)",
                        config.n * frames * height * width * 3, "arithmetic", "video"))
    return HostPlan(rows, 1, False)


# -- repair --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VaceCounted:
    """What :func:`~cac_align.plan.counts.count_components` reads of a family, said for a Wan-VACE regenerator
    (a ``WanVACEPipeline``: its one or two experts, UMT5 its encoder, Wan's VAE); it splits no video."""

    regenerator: Any
    encoder_components: tuple[str, ...] = ("text_encoder",)
    block_classes: tuple[str, ...] = ()
    extra_components: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.regenerator.title

    @property
    def experts(self) -> int:
        return self.regenerator.experts

    @property
    def tiny_names(self) -> tuple[str, ...]:
        return self.regenerator.tiny_names

    @property
    def spatial_multiple(self) -> int:
        return self.regenerator.spatial_multiple

    @property
    def frame_multiple(self) -> int:
        return self.regenerator.frame_multiple

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return self.regenerator.build_tiny(name, seed)

    def context_parallel_plan(self, transformer: Any) -> Any:
        raise RecipeError(f"{self.regenerator.title} is not split over processes")


def counted_regenerator(regen_config: Any) -> GeneratorCounts:
    """The regenerator ``regen_config`` names (a :class:`~cac_align.gen.families.vace.RegeneratorConfig`), counted
    from its configs: LTX-2's condition pipeline as its generator family counts the same checkpoint, a Wan-VACE
    as :class:`_VaceCounted` says.

    Raises:
        ConfigsNotFound: its configs are not on this machine.
    """
    regen = regen_config.family
    family = getattr(regen, "family", None) or _VaceCounted(regen)
    return counted_pipeline(regen_config.name, family, key="regenerator.name")


def _segment(regen: Any, video: tuple[int, int, int, float]) -> tuple[int, int, int]:
    """The longest segment the regenerator is given for a video: all of it, its frames rounded up to ``k * m + 1``
    and its sides up to the regenerator's multiple."""
    frames, height, width, _ = video
    m, s = regen.frame_multiple, regen.spatial_multiple
    return (frames - 1 + m - 1) // m * m + 1, math.ceil(height / s) * s, math.ceil(width / s) * s


def repair_video(config: Any) -> tuple[tuple[int, int, int, float], str]:
    """``((frames, height, width, fps), where it comes from)`` of the videos a repair recipe is planned for: its
    demo's synth recipe (``synth_videos``), else :data:`REPAIR_VIDEO`, said so."""
    if config.synth_videos:
        from cac_align.config import load_config
        from cac_align.data.synthetic import SynthConfig

        if config.synth is None:  # render_demo_videos' small scenes
            return (16, 64, 96, 8.0), "its demo's videos"
        synth = load_config(SynthConfig, config.synth, ["out_dir=(plan)"], job="synth")
        return (max(2, int(round(synth.duration_s * synth.fps))), synth.height, synth.width, float(synth.fps)), f"its demo's videos ({config.synth})"
    return REPAIR_VIDEO, "Wan-2.1's videos: its inputs are read only when it runs; a longer or larger one, more"


def _regenerator_rows(inputs: "_RepairInputs", segment: tuple[int, int, int]) -> list[PlanRow]:
    """The regenerator's rows: its pipeline on the GPU whole, the segment's conditioning (its copies and the VAE's
    encode), a sampling forward of one video (a VACE's hints held throughout), the VAE's decode of the segment."""
    counts, regen_config = inputs.counts, inputs.config.regenerator
    regen, dtype, vae_dtype = regen_config.family, regen_config.dtype, regen_config.vae_dtype
    frames, height, width = segment
    rows = pipeline_rows(counts, dtype, vae_dtype, offload=False)
    copies = 10 * frames * height * width * dtype_bytes(vae_dtype)  # the video and its two masked copies (3 channels each), the mask
    rows.append(PlanRow(f"the segment's video, mask and masked copies ({frames} x {height} x {width}, {vae_dtype})", copies, "arithmetic", "condition"))
    if counts.vae is not None:
        rows.append(PlanRow(f"vae encode of the segment, untiled ({vae_dtype})", vae_bytes(counts, "encode", 1, segment, vae_dtype), "traced", "condition"))
    tokens = tokens_of(counts, frames, height, width)
    family = getattr(regen, "family", regen)
    guidance = family.guidance(regen_config, fps=inputs.video[3]) if getattr(family, "guidance_batched", False) else None
    forward = forward_rows(family, guidance, 1)
    hints = len((counts.transformer_config or {}).get("vace_layers") or ())
    label = f"sampling forward, no gradient ({forward} x {tokens:,} tokens, one block at a time" + (f", {hints} VACE hints held" if hints else "") + ")"
    rows.append(PlanRow(label, sampling_bytes(tokens, counts.hidden_size, forward, dtype, hints), "arithmetic", "sample"))
    return rows + decode_rows(counts, 1, segment, inputs.video[3], vae_dtype)


@dataclass(frozen=True)
class _RepairInputs:
    config: Any
    counts: GeneratorCounts
    judges: tuple[JudgeCount, ...]
    unknown: tuple[Any, ...]
    video: tuple[int, int, int, float]
    said: str
    on_gpu: bool
    overhead: bool = True


def plan_repair(config: Any, video: tuple[int, int, int, float] | None = None, on_gpu: bool = True, overhead: bool | None = None) -> JobPlan:
    """``repair``'s plan on each process's GPU (module docstring): the regenerator on the GPU whole (it has no
    offload), the segment's conditioning and the VAE's encode of it, a sampling forward of one video (with a
    VACE's hints), the VAE's decode of the segment, the judge and its KV cache for one video, the CUDA context.
    Refused with the judge served elsewhere, else what no setting of repair changes.

    Args:
        config: the job's :class:`~cac_align.jobs.repair.RepairConfig`.
        video: ``(frames, height, width, fps)`` of the largest input (the job's start reads them); None: the
            recipe's (:func:`repair_video`).
        on_gpu: the job's models are planned on a GPU where their ``device`` says so.
        overhead: count the CUDA context (None: where ``on_gpu``).

    Raises:
        ConfigsNotFound: the regenerator's configs are not on this machine.
    """
    from cac_align.rewards.judges import VideoShape

    said = "the largest of its inputs"
    if video is None:
        video, said = repair_video(config)
    counts = counted_regenerator(config.regenerator)
    judges, unknown = count_judges({"reward": config.reward}, VideoShape(*video), strict=False)
    inputs = _RepairInputs(config, counts, tuple(capped_judges(judges, 1)), tuple(unknown), video, said, on_gpu, on_gpu if overhead is None else overhead)
    return _repair_plan(inputs, False)


def _repair_plan(inputs: _RepairInputs, judges_served: bool) -> JobPlan:
    config, counts = inputs.config, inputs.counts
    regen_config, regen = config.regenerator, config.regenerator.family
    dtype, vae_dtype = regen_config.dtype, regen_config.vae_dtype
    frames, height, width = _segment(regen, inputs.video)
    judges = served(inputs.judges) if judges_served else list(inputs.judges)
    if inputs.on_gpu and not str(regen_config.device).startswith("cpu"):
        rows = _regenerator_rows(inputs, (frames, height, width))
    else:
        rows = [PlanRow(f"the regenerator: on the CPU (regenerator.device={regen_config.device})", 0, "counted")]
    rows += judge_phase_rows(judges, inputs.unknown, resident=True)
    rows += overhead_rows(rows, inputs.overhead)
    layout = f"one video at a time, a segment of {frames} x {height} x {width}" + (", the judge served" if judges_served else "")
    title = (f"memory plan of repair's GPU, each process ({regen.title}; segments planned at their longest, the whole video: "
             f"{inputs.video[0]} frames of {inputs.video[1]} x {inputs.video[2]} at {inputs.video[3]:g} fps, {inputs.said})")
    fixes = []
    if not judges_served and any(j.weight_bytes or j.kv_bytes for j in inputs.judges):
        from cac_align.plan.refusal import SERVE_THE_JUDGES

        fixes.append(Fix(SERVE_THE_JUDGES, {"judges_served": True}))
    serve = "serve the judge, and " if any(j.weight_bytes or j.kv_bytes for j in judges) else ""
    floor = (f"no setting of repair fits it (it keeps its regenerator on the GPU whole and has no offload): {serve}use a GPU with more memory, "
             f"or shorter or smaller videos (their whole length is planned: {frames} frames of {height} x {width})")
    host = HostPlan([PlanRow("the regenerator, read through host memory as it loads",
                             (sum(t.parameters for t in counts.transformers) + sum(e.parameters for e in counts.encoders)) * dtype_bytes(dtype)
                             + sum(o.parameters for o in counts.others) * dtype_bytes(vae_dtype), "counted", "load")]
                    + ([PlanRow("the in-process judge, read through host memory as it loads", sum(j.weight_bytes for j in inputs.judges), "counted", "load")]
                       if any(j.weight_bytes for j in inputs.judges) else [])
                    + [PlanRow(f"a video and its repair, uint8 ({inputs.video[0]} x {inputs.video[1]} x {inputs.video[2]} x 3 each)",
                               2 * inputs.video[0] * inputs.video[1] * inputs.video[2] * 3, "arithmetic", "video")], 1, False)
    return JobPlan("repair", title, rows, layout=layout, host=host, replan=lambda **changes: _repair_plan(inputs, **{"judges_served": judges_served, **changes}),
                   fixes=fixes, floor=floor)


# -- what check-recipe prints ---------------------------------------------------------------------------------


def shipped_note(name: str) -> list[str]:
    """The line ``check-recipe`` says above a plan read from the configs shipped with cac-align, as a trainer's."""
    from cac_align.plan.configs import planned_from_shipped

    if not planned_from_shipped(name):
        return []
    return [f"planned from the configs of {name} shipped with cac-align (config numbers only, each with its source: "
            "cac_align/plan/full_size/SOURCES.md); its own files in the Hugging Face cache take their place"]


def bon_recipe_plan(config: Any, processes: int = 1, recipe: Any = None) -> JobPlan:
    """``check-recipe``'s plan of a bon recipe (:func:`plan_bon`; bon runs one process)."""
    plan = plan_bon(config)
    plan.notes = [] if config.generator.is_synthetic else shipped_note(config.generator.name)
    return plan


def repair_recipe_plan(config: Any, processes: int = 1, recipe: Any = None) -> JobPlan:
    """``check-recipe``'s plan of a repair recipe (:func:`plan_repair`: each process's GPU holds the same)."""
    plan = plan_repair(config)
    plan.processes = processes
    plan.notes = shipped_note(config.regenerator.name)
    return plan


# -- what the jobs call at their start --------------------------------------------------------------------------


def _device(device: Any, key: str) -> Any:
    """The device a job's ``device`` setting ("auto", "cuda:1", ...) names here (a RecipeError naming ``key`` for one
    this machine lacks)."""
    from cac_align.loading import resolve_device

    return resolve_device(device, key)


def check_bon(config: Any) -> JobPlan | None:
    """What ``bon`` calls at its start, before any model loads: its plan (:func:`plan_bon`) checked against the
    generator's GPU, or ``memory_budget_gib`` (:func:`~cac_align.plan.check.check_job_plan`); refused with the fix
    (a RecipeError) when it cannot fit. None where the generator's configs are not on this machine (logged), or
    where there is nothing to check (no CUDA device and no budget: no plan is made)."""
    from cac_align.plan.check import check_job_plan, planned_or_none

    device = _device("auto" if config.generator.is_synthetic else config.generator.device, "generator.device")  # synthetic: the judges
    cuda = device.type == "cuda"
    if not cuda and config.memory_budget_gib is None:  # nothing to check on a CPU: no plan made (a CPU run starts as fast as ever)
        return None
    plan = planned_or_none(plan_bon, config, on_gpu=cuda or config.memory_budget_gib is not None, overhead=cuda)
    if plan is None:
        return None
    return check_job_plan(plan, device=device, budget_gib=config.memory_budget_gib)


def check_repair(config: Any, videos: Sequence[Any] = (), main_process: bool = True) -> JobPlan | None:
    """What ``repair`` calls at its start, on each process, before any model loads: its plan (:func:`plan_repair`)
    for the largest of ``videos`` (``(frames, height, width, fps)`` each, read from their files' headers; none: the
    recipe's), checked against the regenerator's GPU or ``memory_budget_gib``; refused with the fix when it cannot
    fit. None where the regenerator's configs are not on this machine (logged), or with nothing to check (no CUDA
    device, no budget)."""
    from cac_align.plan.check import check_job_plan, planned_or_none

    device = _device(config.regenerator.device, "regenerator.device")
    cuda = device.type == "cuda"
    if not cuda and config.memory_budget_gib is None:  # nothing to check on a CPU: no plan made
        return None
    largest = max(videos, key=lambda v: v[0] * v[1] * v[2]) if videos else None
    plan = planned_or_none(plan_repair, config, largest, on_gpu=cuda or config.memory_budget_gib is not None, overhead=cuda)
    if plan is None:
        return None
    return check_job_plan(plan, device=device, budget_gib=config.memory_budget_gib, main_process=main_process)
