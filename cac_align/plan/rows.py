"""The memory plan's rows, pure arithmetic on what was counted (:mod:`cac_align.plan.counts`,
:mod:`cac_align.plan.judges`) and traced (:mod:`cac_align.plan.trace`): what each GPU of a generator
trainer holds, and its peak (:func:`memory_plan`).

**The rows** (bytes per GPU; :func:`memory_plan`, :func:`cac_align.plan.check.plan_generator`), N processes, all holding
the same model (under context parallel, the judges only on each group's leader, the GPU planned):

| row | phase | per GPU | source |
| --- | --- | --- | --- |
| each transformer's frozen base | resident | ``shard: none``: all of it; ``fsdp2``: ``ceil(P / N)`` parameters | counted |
| gathered block, and FSDP2's prefetch | train (flow-grpo: and video) | ``fsdp2``: the largest block's parameters (FSDP2 gathers one block at a time), and the next block's, whose all-gather overlaps the running one; every block with ``reshard_after_forward: false`` | counted |
| LoRA weights, gradients, AdamW moments (, EMA) | resident | ``r * (in + out)`` per adapted Linear, fp32, x1 / x1 / x2 (/ x1; no moments under ``optimizer: sgd``); ``fsdp2``: 1/N of them, but for the gradients, held whole while an update accumulates them (one reduction an update: :mod:`cac_align.gen.parallel.gradients`) and then 1/N, ``(1 + 1/N)`` in all | counted |
| text encoder(s) | resident, or encode | in ``generator.dtype``; off the device between encodes (``encoder_on_device: false``) it only counts while it encodes | counted |
| VAE(s), vocoder | resident | in ``generator.vae_dtype`` | counted |
| the VAE's decode of a sample batch (flow-grpo), or encode of a video (dpo's latent cache) | video | ``sample_batch_size`` videos at once (1 for dpo), untiled as the families run it; where the family traces its sound's decode too (Kandinsky 6's audio VAE and vocoder: ``audio_decode_bytes``), the larger of the two, which run one after the other | traced |
| each in-process judge (``reward``, each of ``eval_rewards``) | resident | its parameters in its dtype; an encoder's (``clap``, ``audiobox``, ``sync``) from the header of its safetensors file(s), each tensor's shape in its dtype (:func:`safetensors_bytes`); a served one (``backend: openai``) or one on the CPU: 0 | counted |
| the judges' KV cache | video | the largest judge's longest call: ``2 x layers x kv_heads x head_dim x tokens x rows x dtype bytes``, ``tokens`` = visual (frames on the judge's vision grid) + text (estimated) + its generation budget, ``rows`` = its ``max_batch_size`` (:func:`count_judge`); an encoder generates nothing and has none | arithmetic |
| activations | train | :func:`activation_bytes` | arithmetic |
| CUDA context, kernels, NCCL buffers | resident | 1 GiB, and 1 GiB more with several processes (:func:`fixed_overhead_bytes`); on a CUDA device only | estimate |

The peak is the resident rows plus the largest phase: training (the gathered blocks and the
activations), encoding (a text encoder that comes onto the device only to encode), or video
(flow-grpo: a sample batch decoded while the judges score the one before, the sampling forwards
gathering their blocks; dpo: a pair's video encoded).

Not counted (each small beside the rows at full size, or outside the model): buffers (rope tables,
latent statistics), FSDP2's root unit (patch and condition embeddings, gathered for the whole
forward), DDP's gradient buckets (one more copy of the LoRA's gradients), the sampling forwards'
activations (no gradient: smaller than training's), a judge's prefill activations and its vision
tower's, an encoder judge's forward, the audio VAE's and the vocoder's decode (LTX-2, MiniMax-H3; Kandinsky 6's is traced), the recorded trajectories
(``store_latents_on_cpu``), cuDNN's workspaces and the caching allocator's fragmentation, and a
reward named by dotted path (its models are its own: a row says it is not counted). The plan is an
estimate, within 10% of the two peaks measured so far (:data:`ACTIVATION_WIDTHS`): a plan that does
not fit is refused; one that fits within a few GiB of the device may still run out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cac_align.gen.parallel import ParallelSettings
from cac_align.plan.counts import GIB, GeneratorCounts, dtype_bytes
from cac_align.plan.judges import JudgeCount


# Hidden-sized tensors a transformer block keeps per token for its backward when nothing is
# recomputed (arithmetic, an estimate): the inputs of its norms, the q, k, v and output of its self-
# and cross-attention (and the LoRA's inputs, the same tensors), the residual stream and its gates,
# and the feed-forward's input with its intermediate in and out of the activation (Wan's feed-forward
# is 2.7x to 5.8x the width: about 8 widths). Held against the two measured Flow-GRPO steps (one
# process, gradient checkpointing, CFG, UMT5-XXL resident; benchmarks/memory/memory_plan_full_size.py):
# Wan-2.1-1.3B at 480 x 832 x 81 peaked at 23.8 GiB on an H100, the plan says 24.2; Wan2.2-TI2V-5B
# at 704 x 1280 x 121 peaked at 43.8 GiB on an H200, the plan says 40.1.
ACTIVATION_WIDTHS = 24


_FP32 = 4


PHASES = ("train", "encode", "video")  # what is held only for a while; the peak is the resident rows plus the largest


def fixed_overhead_bytes(num_processes: int) -> int:
    """What a process's GPU holds beyond its tensors, a constant (an estimate): 1 GiB for the CUDA
    context, its kernels and cuBLAS' workspaces (torch's first CUDA call alone shows 0.8 GB in
    nvidia-smi: pytorch/pytorch#34323), and 1 GiB more with other processes for NCCL's
    communicators (each keeps ``NCCL_BUFFSIZE``, 4 MiB by default, per channel and peer; a run makes
    two or three: the world, the data-parallel mesh, the leaders)."""
    return GIB + (GIB if num_processes > 1 else 0)


def sharded_parameters(total: int, blocks: Sequence[int], num_processes: int, shard: str, reshard_after_forward: bool = True) -> tuple[int, int]:
    """``(resident, gathered)`` parameters one process holds of a frozen model of ``total``
    parameters whose blocks hold ``blocks``.

    ``shard="none"``: ``(total, 0)``: every process the whole model. ``"fsdp2"``: ``ceil(total /
    N)`` resident (FSDP2 splits each parameter over the N processes, padding the last share), and
    while it runs the largest block gathered whole (one block at a time), or every block when
    ``reshard_after_forward`` is off (the gathered blocks stay for the backward).
    """
    if shard == "none":
        return total, 0
    gathered = (max(blocks) if reshard_after_forward else sum(blocks)) if blocks else 0
    return math.ceil(total / num_processes), gathered


def video_tokens(num_frames: int, height: int, width: int, spatial_multiple: int, frame_multiple: int, patch_t: int = 1) -> int:
    """The transformer's tokens for one video: latent frames ``(F - 1) / frame_multiple + 1`` over
    ``patch_t``, times ``(H / spatial_multiple) x (W / spatial_multiple)`` (the family's multiples are
    the VAE's compression times the transformer's patch). Wan-2.1 at 480 x 832 x 81: 21 x 30 x 52 =
    32,760; LTX-2 at 512 x 768 x 121: 16 x 16 x 24 = 6,144 (its audio tokens not counted)."""
    latent_frames = (num_frames - 1) // frame_multiple + 1
    return math.ceil(latent_frames / patch_t) * (height // spatial_multiple) * (width // spatial_multiple)


def activation_bytes(tokens: int, hidden_size: int, num_layers: int, batch_per_process: int, gradient_checkpointing: bool,
                     context_parallel: int = 1, dtype: Any = "bfloat16", one_row_a_forward: bool = False) -> int:
    """The activations one training forward keeps for its backward, per process (arithmetic, an
    estimate; module docstring).

    ``rows x ceil(tokens / cp) x hidden x bytes`` is one hidden-sized tensor over the process's
    tokens; a block keeps :data:`ACTIVATION_WIDTHS` of them. Without gradient checkpointing every
    block keeps its own: ``layers x 24`` of them; with it each block keeps its input, and the block
    being recomputed in the backward its 24: ``layers + 24``. A transformer with no batch axis
    (``one_row_a_forward``: Cosmos 3, one packed sequence a forward) keeps every row's block inputs
    but recomputes one row's block at a time: ``rows x layers + 24`` over one row's tokens.

    Args:
        tokens: the transformer's tokens per video (:func:`video_tokens`).
        hidden_size: its width.
        num_layers: its blocks (one expert's).
        batch_per_process: sample-forwards with gradient in one micro-batch on a process (videos x
            forwards each: 2 with batched classifier-free guidance; dpo: 2 per pair).
        gradient_checkpointing: recompute each block in the backward.
        context_parallel: processes sharing one video's tokens (each holds ``1/cp`` of them).
        dtype: the activations' dtype (the autocast one).
        one_row_a_forward: each row is its own forward (the family's ``one_row_a_forward``).

    Returns:
        Bytes per process.
    """
    per_row = math.ceil(tokens / context_parallel) * hidden_size * dtype_bytes(dtype)
    if gradient_checkpointing and one_row_a_forward:
        return per_row * (batch_per_process * num_layers + ACTIVATION_WIDTHS)
    widths = num_layers + ACTIVATION_WIDTHS if gradient_checkpointing else num_layers * ACTIVATION_WIDTHS
    return batch_per_process * per_row * widths


def guided_rows(guidance: Mapping[str, Any]) -> int:
    """Sample-forwards one video takes in a guided velocity (a family's ``guidance(config)`` dict):
    1, plus 1 for classifier-free guidance (any ``guidance_scale`` above 1: the negative prompt's
    row), 1 for spatio-temporal guidance (an ``stg_scale`` above 0) and 1 for modality guidance (a
    ``modality_scale`` above 1), video or audio (LTX-2; docs/flow_grpo.md, "LTX-2"). Wan with CFG: 2.
    """
    def above(keys: Sequence[str], floor: float) -> bool:
        return any((guidance.get(k) or 0.0) > floor for k in keys)

    return (1 + above(("guidance_scale", "guidance_scale_2", "audio_guidance_scale"), 1.0) + above(("stg_scale", "audio_stg_scale"), 0.0)
            + above(("modality_scale", "audio_modality_scale"), 1.0))


@dataclass(frozen=True)
class PlanRow:
    """One line of a memory plan.

    Attributes:
        label: what it holds ("transformer: frozen base, 1/8 shard").
        bytes: bytes per GPU.
        source: "counted" (from the model's configs), "arithmetic" (a formula: an estimate),
            "traced" (the live tensors of a run on the meta device), "estimate" (a constant),
            "given" (by the caller), "served" (a judge served elsewhere: 0 here) or "unknown" (a
            judge whose models cannot be said before it loads: not counted).
        phase: "resident" (held throughout), "train" (while a training forward and backward run),
            "encode" (while the prompts are encoded) or "video" (while a sample batch is decoded and
            scored, or dpo's pairs are encoded).
    """

    label: str
    bytes: int
    source: str
    phase: str = "resident"


class _Verdicts:
    """What a plan of ``rows`` says of itself (:class:`MemoryPlan`, :class:`JudgesPlan`): its peak, whether it
    fits a device, and the rows it could not count."""

    rows: list[PlanRow]

    @property
    def peak_bytes(self) -> int:
        """Resident bytes plus the largest phase's (:func:`peak_of`): training, encoding, or the videos'
        (decoded and scored while sampling, or encoded for dpo's cache)."""
        return peak_of(self.rows)

    def fits(self, device_bytes: int) -> bool:
        """Whether the counted rows' peak fits ``device_bytes`` (a row not counted adds nothing: see :attr:`unknown_rows`)."""
        return self.peak_bytes <= device_bytes

    @property
    def unknown_rows(self) -> list[PlanRow]:
        """The rows of models not counted (their files are not on this machine): a plan with any cannot say it fits."""
        return [r for r in self.rows if r.source == "unknown"]

    def unknown_verdict(self) -> str:
        """A few words: how many models were not counted, and where the recipe names each (:func:`unknown_verdict`)."""
        return unknown_verdict(self.rows)


@dataclass
class MemoryPlan(_Verdicts):
    """Per-GPU bytes of a generator trainer (module docstring) and what they were planned for.

    Attributes:
        rows: the rows.
        family: the generator's family title.
        num_processes: processes (GPUs) planned for.
        settings: the ``parallel`` section planned for.
        gradient_checkpointing: planned with it on.
        inputs: what the plan was computed from (to re-plan for a fix: :func:`refusal`).
    """

    rows: list[PlanRow]
    family: str
    num_processes: int
    settings: ParallelSettings
    gradient_checkpointing: bool
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)

    def phase_bytes(self, phase: str) -> int:
        return sum(r.bytes for r in self.rows if r.phase == phase)

    def describe(self) -> str:
        """``8 processes, parallel.shard=fsdp2, context_parallel=1, gradient checkpointing on``."""
        s = self.settings
        hybrid = f", replicate={s.replicate}" if s.replicate > 1 else ""
        return (f"{self.num_processes} process{'es' if self.num_processes != 1 else ''}, parallel.shard={s.shard}{hybrid}, "
                f"context_parallel={s.context_parallel}, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")

    def table(self, device_bytes: int | None = None, width: int | None = None) -> str:
        """The plan as a text table in GiB per GPU, each row's source and phase; the peak and, with
        ``device_bytes``, the device and whether it fits; each line at most ``width`` characters where
        it can be (:func:`table_lines`; None: each row on one line)."""
        return plan_table(f"memory plan per GPU for {self.family} ({self.describe()}):", self.rows, self.peak_bytes,
                          device_bytes, self.fits(device_bytes) if device_bytes is not None else True, width)


def judge_rows(judges: Sequence[JudgeCount], unknown_judges: Sequence[Any] = (), leaders: str = "") -> list[PlanRow]:
    """The rows of the in-process judges (:func:`~cac_align.plan.judges.count_judges`): each one's weights
    (resident; a served one or one on the CPU: 0, saying so), the largest KV cache (video: a reward scores
    its components one at a time), and a row for each judge not counted. ``leaders``: said after each
    judge held only on the context-parallel leaders' GPUs."""
    rows = []
    for j in judges:
        label = f"judge {j.judge.where}: {j.judge.name}"
        held = f"{j.dtype}, encoder: no KV cache" if getattr(j.judge, "encoder", False) else j.dtype
        rows.append(PlanRow(f"{label} ({j.note})" if j.note else f"{label} ({held}){leaders}", j.weight_bytes,
                            "served" if j.note == "served" else "counted"))
    if any(j.kv_bytes for j in judges):  # one call at a time (a reward scores its components in turn): the largest cache
        top = max(judges, key=lambda j: j.kv_bytes)
        rows.append(PlanRow(f"judges' KV cache: {top.judge.where}, {top.judge.call.rows} x {top.tokens:,} tokens ({top.visual_tokens:,} visual)",
                            top.kv_bytes, "arithmetic", "video"))
    for u in unknown_judges:
        rows.append(PlanRow(f"judge {u.where}: not counted ({u.reason})", 0, "unknown"))
    return rows


def peak_of(rows: Sequence[PlanRow]) -> int:
    """Resident bytes plus the largest phase's: a trainer's (:data:`PHASES`), or whatever phases a job's rows
    hold (``bon``'s encode, sample, decode and score), one at a time."""
    phases = dict.fromkeys([*PHASES, *(r.phase for r in rows if r.phase != "resident")])
    return sum(r.bytes for r in rows if r.phase == "resident") + max(sum(r.bytes for r in rows if r.phase == phase) for phase in phases)


def unknown_verdict(rows: Sequence[PlanRow]) -> str:
    """A few words: how many models the ``rows`` did not count, and where the recipe names each (the
    rows of :func:`judge_rows` say what to fetch)."""
    missing = [r for r in rows if r.source == "unknown"]
    wheres = [r.label.removeprefix("judge ").split(": not counted")[0] for r in missing]
    return f"{len(missing)} model{'s' if len(missing) != 1 else ''} not counted ({', '.join(wheres)}); the plan's rows say what to fetch"


# The narrowest a table's label column gets to fit a width (a narrower terminal wraps the rest itself).
MIN_LABEL_WIDTH = 24

# The width a plan's text is fitted to where no terminal says one (the output piped, or a log file).
FALLBACK_COLUMNS = 100


def output_width() -> int:
    """The columns a plan's text is fitted to (``check-recipe``, a trainer's log): the terminal's
    (``shutil.get_terminal_size``, which reads ``$COLUMNS`` first), else :data:`FALLBACK_COLUMNS`."""
    import shutil

    return shutil.get_terminal_size((FALLBACK_COLUMNS, 24)).columns


def table_lines(rows: Sequence[tuple[str, str]], width: int | None = None, indent: str = "  ", min_label: int = 54) -> list[str]:
    """The lines of a text table of ``(label, values)`` rows: the labels in a column as wide as the longest
    (at least ``min_label``), the values after it. With ``width``, the label column narrows so that a row
    fits ``width`` characters (down to :data:`MIN_LABEL_WIDTH`), and a longer label wraps at its spaces onto
    lines of its own under it, indented two more, its values staying on its first line beside the others.

    >>> table_lines([("judge reward.model: not counted (no config here)", "0.00"), ("short", "2.00")], width=40, min_label=0)
    ['  judge reward.model: not counted   0.00', '    (no config here)', '  short                             2.00']
    """
    import textwrap

    column = max([min_label, *(len(label) for label, _ in rows)])
    if width is not None:
        values = max((len(v) for _, v in rows), default=0)
        column = max(MIN_LABEL_WIDTH if column > MIN_LABEL_WIDTH else column, min(column, width - len(indent) - 1 - values))
    lines = []
    for label, values in rows:
        first, *rest = textwrap.wrap(label, column, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False) or [""]
        lines.append(f"{indent}{first:<{column}} {values}".rstrip())
        lines += [f"{indent}{more}" for more in rest]
    return lines


def plan_table(title: str, rows: Sequence[PlanRow], peak: int, device_bytes: int | None = None, fits: bool = True,
               width: int | None = None, phases: Sequence[str] = PHASES) -> str:
    """A plan as text (:meth:`MemoryPlan.table`, :meth:`JudgesPlan.table`): ``title``, each row in GiB with its
    source and phase, the peak (resident + the largest of ``phases``) and, with ``device_bytes``, the device and
    whether it fits."""
    cells = [("row", f"{'GiB':>8}  {'source':<10} phase")]
    cells += [(row.label, f"{row.bytes / GIB:>8.2f}  {row.source:<10} {row.phase}") for row in rows]
    cells.append((f"peak: resident + max({', '.join(phases)})" if phases else "peak: resident", f"{peak / GIB:>8.2f}"))
    if device_bytes is not None:
        unknown = sum(1 for r in rows if r.source == "unknown")
        verdict = "does NOT fit" if not fits else f"unknown ({unknown} not counted)" if unknown else "fits"
        cells.append(("device", f"{device_bytes / GIB:>8.2f}  {verdict}"))
    return "\n".join([title, *table_lines(cells, width)])


@dataclass
class JudgesPlan(_Verdicts):
    """What one GPU of a job that only scores (``score``) holds: its in-process judges, their largest KV cache,
    and the fixed overhead where a judge is on a GPU (:func:`cac_align.plan.check.plan_judges`).

    Attributes:
        rows: the rows (:func:`judge_rows`, and the fixed overhead).
        video: the videos planned for (:class:`~cac_align.rewards.judges.VideoShape`).
    """

    rows: list[PlanRow]
    video: Any

    def table(self, device_bytes: int | None = None, width: int | None = None) -> str:
        v = self.video
        title = (f"judges' memory per GPU (one process; videos planned as {v.frames} frames of {v.height} x {v.width} at {v.fps:g} fps: "
                 "a longer one, a longer KV cache):")
        return plan_table(title, self.rows, self.peak_bytes, device_bytes, self.fits(device_bytes) if device_bytes is not None else True, width)


def memory_plan(counts: GeneratorCounts, *, settings: ParallelSettings, num_processes: int, tokens: int, batch_per_process: int,
                gradient_checkpointing: bool, lora_rank: int, dtype: Any = "bfloat16", vae_dtype: Any = "float32", judges_bytes: int = 0,
                ema: bool = False, judges: Sequence[JudgeCount] = (), unknown_judges: Sequence[Any] = (), vae_phase_bytes: int = 0,
                vae_what: str = "", prefetch: bool = False, overhead_bytes: int = 0, audio_phase_bytes: int = 0,
                optimizer: str = "adamw") -> MemoryPlan:
    """Per-GPU bytes of a generator trainer (module docstring, "The rows"); pure arithmetic on
    ``counts`` and on what was counted or traced before.

    Args:
        counts: the generator counted from its configs (:func:`count_generator`).
        settings: the ``parallel`` section.
        num_processes: N, the processes (one GPU each).
        tokens: transformer tokens per video (:func:`video_tokens`).
        batch_per_process: sample-forwards with gradient in one micro-batch per process
            (:func:`activation_bytes`).
        gradient_checkpointing: the job's setting.
        lora_rank: the LoRA's rank.
        dtype: the transformers' and text encoders' dtype (``generator.dtype``; also the
            activations').
        vae_dtype: the VAE's (and the vocoder's) dtype (``generator.vae_dtype``).
        judges_bytes: bytes of other reward models resident on each GPU, given by the caller.
        ema: an fp32 EMA copy of the LoRA is kept (flow-grpo's ``ema_decay``).
        judges: the in-process judges, counted (:func:`count_judges`): their weights resident,
            the largest KV cache while videos are scored (phase ``video``); on the leaders' GPUs
            under context parallel (the peak GPU: the plan's).
        unknown_judges: reward sections whose models are not known before they load: named, not counted.
        vae_phase_bytes: the VAE's traced peak (:func:`vae_bytes`) of ``vae_what``: "decode"
            (flow-grpo: a sample batch, while sampling; the sampling forwards gather their blocks
            then too) or "encode" (dpo's latent cache); phase ``video``.
        prefetch: FSDP2 gathers the next block while one runs (its default): one more block in
            the train and video phases, sharded.
        overhead_bytes: the fixed CUDA/NCCL overhead (:func:`fixed_overhead_bytes`).
        audio_phase_bytes: the soundtracks' decode of that sample batch, traced (a family's
            ``audio_decode_bytes``: Kandinsky 6's audio VAE and vocoder), for the row's label;
            ``vae_phase_bytes`` is then already the larger of the two (they decode one after the other).
        optimizer: the LoRA's optimizer (flow-grpo's and nft's ``optimizer``): "adamw" keeps two
            fp32 moments per parameter, "sgd" (no momentum) none.

    Raises:
        ValueError: ``num_processes`` not a multiple of ``settings.context_parallel``.
    """
    if num_processes < 1 or num_processes % settings.context_parallel:
        raise ValueError(f"{num_processes} processes are not a multiple of parallel.context_parallel={settings.context_parallel}")
    n, shard, cp = num_processes, settings.shard, settings.context_parallel
    if n % settings.replicate:
        raise ValueError(f"{n} processes are not a multiple of parallel.replicate={settings.replicate}")
    shards = n // settings.replicate  # the processes one copy of the model is split over (HSDP: a replica's)
    weight, vae_weight = dtype_bytes(dtype), dtype_bytes(vae_dtype)
    part = f"1/{shards} shard" if shard == "fsdp2" else "whole"
    rows: list[PlanRow] = []
    gathered = largest = 0
    for t in counts.transformers:
        resident, block = sharded_parameters(t.parameters, t.blocks, shards, shard, settings.reshard_after_forward)
        rows.append(PlanRow(f"{t.name}: frozen base ({part})", resident * weight, "counted"))
        gathered = max(gathered, block)  # one expert runs at a time
        largest = max(largest, max(t.blocks, default=0))
    # FSDP2 issues the next block's all-gather while one runs (forward prefetch), so two are whole at once
    next_block = largest if prefetch and gathered and settings.reshard_after_forward else 0
    phases = ("train", "video") if vae_what == "decode" else ("train",)  # flow-grpo's sampling forwards gather them too
    for phase in phases:
        if gathered:
            what = "largest block" if settings.reshard_after_forward else "every block (reshard_after_forward off)"
            label = "gathered while it runs" if phase == "train" else "gathered while sampling"
            rows.append(PlanRow(f"{label}: {what}", gathered * weight, "counted", phase))
        if next_block:
            rows.append(PlanRow(f"FSDP2 prefetch{'' if phase == 'train' else ' while sampling'}: the next block", next_block * weight, "counted", phase))
    lora = sum(t.lora_width for t in counts.transformers) * lora_rank
    lora_local = math.ceil(lora / shards) if shard == "fsdp2" else lora
    if lora:
        rows.append(PlanRow(f"LoRA weights (fp32, rank {lora_rank}, {lora:,} parameters)", lora_local * _FP32, "counted"))
        if lora_local < lora:  # sharded: an update's gradients accumulate whole, unsynchronized, then reduce into the shards once
            rows.append(PlanRow("LoRA gradients (fp32: whole until the update's one reduction, then its shard)", (lora + lora_local) * _FP32,
                                "counted"))
        else:
            rows.append(PlanRow("LoRA gradients (fp32)", lora_local * _FP32, "counted"))
        if optimizer != "sgd":  # plain SGD keeps no state
            rows.append(PlanRow("AdamW moments (2 x fp32)", 2 * lora_local * _FP32, "counted"))
        if ema:
            rows.append(PlanRow("LoRA EMA (fp32)", lora_local * _FP32, "counted"))
    for e in counts.encoders:
        if settings.keeps_encoder:
            rows.append(PlanRow(f"{e.name} (resident)", e.parameters * weight, "counted"))
        else:
            rows.append(PlanRow(f"{e.name} (on the GPU only while encoding)", e.parameters * weight, "counted", "encode"))
    for o in counts.others:
        rows.append(PlanRow(o.name, o.parameters * vae_weight, "counted"))
    if vae_what:
        what = "decode of a sample batch, untiled" if vae_what == "decode" else "encode of a video (dpo's latent cache), untiled"
        if vae_what == "decode" and audio_phase_bytes:  # the soundtracks decode after the frames: the row holds the larger
            what += f", or its sound's (audio VAE + vocoder, {audio_phase_bytes / GIB:.2f} GiB), the larger"
        rows.append(PlanRow(f"vae {what} ({vae_dtype})", int(vae_phase_bytes), "traced", "video"))
    rows += judge_rows(judges, unknown_judges, " (the leaders' GPUs)" if cp > 1 else "")
    if judges_bytes:
        rows.append(PlanRow("judges (resident)", int(judges_bytes), "given"))
    act = activation_bytes(tokens, counts.hidden_size, counts.num_layers, batch_per_process, gradient_checkpointing, cp, dtype,
                           one_row_a_forward=counts.one_row_a_forward)
    tokens_note = f"{tokens:,} tokens" + (f" / cp {cp}" if cp > 1 else "") + (", one sequence a forward" if counts.one_row_a_forward else "")
    rows.append(PlanRow(f"activations ({batch_per_process} x {tokens_note}, {'checkpointed' if gradient_checkpointing else 'all kept'})", act,
                        "arithmetic", "train"))
    if overhead_bytes:
        rows.append(PlanRow("CUDA context, kernels" + (", NCCL buffers" if n > 1 else "") + " (fixed)", int(overhead_bytes), "estimate"))
    inputs = dict(counts=counts, tokens=tokens, batch_per_process=batch_per_process, lora_rank=lora_rank, dtype=dtype, vae_dtype=vae_dtype,
                  judges_bytes=judges_bytes, ema=ema, judges=tuple(judges), unknown_judges=tuple(unknown_judges), vae_phase_bytes=vae_phase_bytes,
                  vae_what=vae_what, prefetch=prefetch, overhead_bytes=overhead_bytes, audio_phase_bytes=audio_phase_bytes)
    return MemoryPlan(rows, counts.family, n, settings, gradient_checkpointing, inputs)
