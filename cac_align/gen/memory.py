"""The memory plan of a generator trainer (``flow-grpo``, ``dpo``): how many bytes each GPU holds,
worked out before any weight loads, and a refusal, naming the fix, when that cannot fit the device.

**Where the numbers come from.** The generator's own configs: each component of the pipeline
(``model_index.json``'s transformers, text encoder(s), VAE(s)) is built from its ``config.json`` on
the meta device (``with torch.device("meta")``: no weight read, no memory taken) and its
parameters are counted; a tiny in-process pipeline (``tiny-random:...``) is built and counted as it
is. What the model does not say (the activations of a training forward) is **arithmetic**: a
formula of the token count, the width and the depth (:func:`activation_bytes`), labelled as such in
every table. Nothing is downloaded: a hub id whose configs are not in the local Hugging Face cache
gives no plan (a logged note), never a download.

**The rows** (bytes per GPU; :func:`memory_plan`), N processes, all holding the same model:

| row | phase | per GPU | source |
| --- | --- | --- | --- |
| each transformer's frozen base | resident | ``shard: none``: all of it; ``fsdp2``: ``ceil(P / N)`` parameters | counted |
| gathered block | train | ``fsdp2``: the largest block's parameters (FSDP2 gathers one block at a time); every block with ``reshard_after_forward: false`` | counted |
| LoRA weights, gradients, AdamW moments (, EMA) | resident | ``r * (in + out)`` per adapted Linear, fp32, x1 / x1 / x2 (/ x1); ``fsdp2``: 1/N of them | counted |
| text encoder(s) | resident, or encode | in ``generator.dtype``; off the device between encodes (``encoder_on_device: false``) it only counts while it encodes | counted |
| VAE(s), vocoder | resident | in ``generator.vae_dtype`` | counted |
| judges | resident | what the caller says (0 when served elsewhere) | given |
| activations | train | :func:`activation_bytes` | arithmetic |

The peak is the resident rows plus the larger phase: training (the gathered block and the
activations) or encoding (a text encoder that comes onto the device only to encode).

Not counted (each small beside the rows at full size, or outside the model): buffers (rope tables,
latent statistics), FSDP2's root unit (patch and condition embeddings, gathered for the whole
forward) and its prefetch of the next block, DDP's gradient buckets (one more copy of the LoRA's
gradients), the sampling forwards (no gradient: smaller than training's), the VAE's decode
activations, the recorded trajectories (``store_latents_on_cpu``), the CUDA context and allocator
fragmentation. The plan is an estimate, within 10% of the two peaks measured so far
(:data:`ACTIVATION_WIDTHS`): a plan that does not fit is refused; one that fits within a few GiB of
the device may still run out.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from cac_align.config import RecipeError
from cac_align.gen.parallel import ParallelSettings

__all__ = [
    "ACTIVATION_WIDTHS",
    "GIB",
    "ComponentCount",
    "GeneratorCounts",
    "MemoryPlan",
    "PlanRow",
    "activation_bytes",
    "check_memory",
    "count_components",
    "count_generator",
    "count_module",
    "device_bytes",
    "guided_rows",
    "lora_width",
    "memory_plan",
    "refusal",
    "sharded_parameters",
    "video_tokens",
]

log = logging.getLogger(__name__)

GIB = 2**30

# Hidden-sized tensors a transformer block keeps per token for its backward when nothing is
# recomputed (arithmetic, an estimate): the inputs of its norms, the q, k, v and output of its self-
# and cross-attention (and the LoRA's inputs, the same tensors), the residual stream and its gates,
# and the feed-forward's input with its intermediate in and out of the activation (Wan's feed-forward
# is 2.7x to 5.8x the width: about 8 widths). Held against the two measured Flow-GRPO steps (one
# process, gradient checkpointing, CFG, UMT5-XXL resident; benchmarks/memory_plan_full_size.py):
# Wan-2.1-1.3B at 480 x 832 x 81 peaked at 23.8 GiB on an H100, the plan says 24.2; Wan2.2-TI2V-5B
# at 704 x 1280 x 121 peaked at 43.8 GiB on an H200, the plan says 40.1.
ACTIVATION_WIDTHS = 24

_BYTES = {"float32": 4, "fp32": 4, "float": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "float64": 8, "fp64": 8}
_FP32 = 4


def dtype_bytes(name: Any) -> int:
    """Bytes of one element of dtype ``name`` ("bfloat16", "float32", a ``torch.dtype``)."""
    import torch

    if isinstance(name, torch.dtype):
        return torch.empty((), dtype=name).element_size()
    try:
        return _BYTES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_BYTES)}") from None


# ---------------------------------------------------------------------------------------
# Counting a model (real or on the meta device)
# ---------------------------------------------------------------------------------------
def lora_width(module: Any) -> int:
    """The LoRA parameters per unit of rank on ``module``: a LoRA of rank ``r`` adds ``r`` times this
    (peft's layers, no bias). Linear ``(in, out)``: ``in + out`` (A is ``r x in``, B is ``out x r``);
    a convolution: ``in * prod(kernel) + out`` (A a convolution to ``r`` channels, B a 1x1 one back);
    an embedding: ``num + dim``.

    Raises:
        ValueError: a module kind peft's LoRA does not adapt here (names the class).
    """
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features + module.out_features
    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return module.in_channels // module.groups * math.prod(module.kernel_size) + module.out_channels
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings + module.embedding_dim
    raise ValueError(f"lora.target_modules names a {type(module).__name__}, which this plan cannot size; target Linear layers")


def _lora_targets(model: Any, target_modules: Sequence[str]) -> list[tuple[str, Any]]:
    """The modules of ``model`` a peft LoRA with ``target_modules`` adapts, matched by peft's own rule
    (a name equal to a target or ending in ``.target``)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(r=1, target_modules=list(target_modules))
    return [(name, module) for name, module in model.named_modules() if name and check_target_module_exists(config, name)]


@dataclass(frozen=True)
class ComponentCount:
    """One pipeline component, counted.

    Attributes:
        name: its name in the pipeline ("transformer", "text_encoder", "vae", ...).
        class_name: its class ("WanTransformer3DModel").
        parameters: its parameters (elements; a tied weight once).
        blocks: the parameters of each of its blocks (the family's ``block_classes``: one FSDP2 unit
            each), in order; empty for a component that is not sharded.
        lora_width: the LoRA parameters per unit of rank on its target modules (:func:`lora_width`
            summed); 0 where no LoRA goes.
    """

    name: str
    class_name: str
    parameters: int
    blocks: tuple[int, ...] = ()
    lora_width: int = 0


def count_module(name: str, module: Any, block_classes: Sequence[str] = (), lora_targets: Sequence[str] = ()) -> ComponentCount:
    """Count ``module`` (real or on the meta device): its parameters, its blocks' and its LoRA width.

    Args:
        name: its pipeline name.
        module: a ``torch.nn.Module``.
        block_classes: class names of its blocks; nested blocks count once, in the outer one.
        lora_targets: peft ``target_modules``; empty: no LoRA on it.

    Raises:
        ValueError: ``block_classes`` given and none found (the family names the wrong class).
    """
    parameters = sum(p.numel() for p in module.parameters())
    blocks: list[int] = []
    if block_classes:
        inside: list[str] = []
        for sub_name, sub in module.named_modules():
            if type(sub).__name__ in block_classes and not any(sub_name.startswith(prefix + ".") for prefix in inside):
                inside.append(sub_name)
                blocks.append(sum(p.numel() for p in sub.parameters()))
        if not blocks:
            raise ValueError(f"{name} ({type(module).__name__}) has no block of the classes {tuple(block_classes)}: the family's block_classes "
                             "do not name its blocks")
    width = sum(lora_width(m) for _, m in _lora_targets(module, lora_targets)) if lora_targets else 0
    return ComponentCount(name, type(module).__name__, parameters, tuple(blocks), width)


@dataclass(frozen=True)
class GeneratorCounts:
    """A generator's components counted from its configs (:func:`count_generator`) and what the
    activation estimate needs from its transformer's config.

    Attributes:
        source: where the configs were read ("tiny-random:wan", a folder, a cache snapshot).
        family: the family's title ("Wan2.2-A14B").
        transformers: the experts ("transformer", and "transformer_2" for a two-expert model).
        encoders: the components that encode prompts (the family's ``encoder_components``).
        others: the rest of the pipeline's models (VAE(s), vocoder).
        hidden_size: the transformer's width (video heads x head dim).
        num_heads: its (video) attention heads.
        num_layers: its blocks (one expert's).
        patch_t: its patch in time (latent frames per token).
        spatial_multiple, frame_multiple: the family's (pixels per token side; the VAE's time
            compression).
        context_parallel: the family can split a video's tokens over processes (its
            ``context_parallel_plan`` does not refuse); a refusal offers context parallel only then.
    """

    source: str
    family: str
    transformers: tuple[ComponentCount, ...]
    encoders: tuple[ComponentCount, ...]
    others: tuple[ComponentCount, ...]
    hidden_size: int
    num_heads: int
    num_layers: int
    patch_t: int
    spatial_multiple: int
    frame_multiple: int
    context_parallel: bool = True


def _transformer_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(hidden, heads, patch_t)`` of a video transformer's config (Wan: ``patch_size`` (t, h, w);
    LTX-2: ``patch_size_t``)."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    patch = config.get("patch_size")
    patch_t = int(config["patch_size_t"]) if config.get("patch_size_t") is not None else int(patch[0]) if isinstance(patch, (list, tuple)) else 1
    return heads * head_dim, heads, patch_t


def count_components(source: str, family: Any, modules: Mapping[str, Any], lora_targets: Sequence[str], lora_experts: Sequence[int]) -> GeneratorCounts:
    """Count a pipeline's ``modules`` (name -> module, real or on the meta device) as ``family`` runs them:
    its experts (with a LoRA on ``lora_targets`` for the expert indices ``lora_experts``), its encoders,
    the rest; the activation estimate's width, heads, depth and patch from the transformer's config.

    Raises:
        ValueError: a component the family needs is missing.
    """
    expert_names = ("transformer", "transformer_2")[: family.experts]
    missing = [n for n in (*expert_names, *family.encoder_components) if n not in modules]
    if missing:
        raise ValueError(f"{source}: the pipeline has no {missing[0]!r}, which {family.title} needs")
    transformers = tuple(count_module(n, modules[n], family.block_classes, lora_targets if i in lora_experts else ())
                         for i, n in enumerate(expert_names))
    encoders = tuple(count_module(n, modules[n]) for n in family.encoder_components)
    others = tuple(count_module(n, m) for n, m in modules.items() if n not in expert_names and n not in family.encoder_components)
    hidden, heads, patch_t = _transformer_shape(dict(modules["transformer"].config))
    try:  # the family says whether it can split a video's tokens (its plan refuses where it cannot)
        family.context_parallel_plan(modules["transformer"])
        splits = True
    except RecipeError:
        splits = False
    return GeneratorCounts(source, family.title, transformers, encoders, others, hidden, heads, len(transformers[0].blocks), patch_t,
                           family.spatial_multiple, family.frame_multiple, splits)


def _model_class(library: str, class_name: str) -> Any:
    """The class a ``model_index.json`` entry ``[library, class]`` names (diffusers writes a
    pipeline-specific module's library as its pipeline folder: ``["ltx2", "LTX2TextConnectors"]``)."""
    if library in ("diffusers", "transformers"):
        return getattr(importlib.import_module(library), class_name)
    return getattr(importlib.import_module(f"diffusers.pipelines.{library}"), class_name)


def _meta_module(cls: Any, folder: Path) -> Any:
    """``cls`` built from ``folder/config.json`` on the meta device (torch's device context: its
    tensors take no memory and tied weights stay tied, which accelerate's ``init_empty_weights``
    does not keep: it would count UMT5's shared embedding twice)."""
    import torch

    with torch.device("meta"):
        if hasattr(cls, "load_config"):  # diffusers' ModelMixin and its configs
            return cls.from_config(cls.load_config(str(folder)))
        config = cls.config_class.from_pretrained(str(folder))  # a transformers model
        return cls._from_config(config)


def _config_folders(name: str, index: Mapping[str, Any]) -> dict[str, Path] | None:
    """The folder of each model component's ``config.json`` (tokenizers and schedulers left out):
    ``name``'s subfolders (a local folder), or the cached files of a hub id; None when one is not on
    this machine."""
    from cac_align.gen.family import has_component
    from cac_align.loading import looks_like_path

    folders: dict[str, Path] = {}
    for component in index:
        if component.startswith("_") or not has_component(index, component) or not _is_model_entry(index[component]):
            continue
        if looks_like_path(name):
            path = Path(name).expanduser() / component / "config.json"
            found: Any = str(path) if path.is_file() else None
        else:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, f"{component}/config.json")
        if not isinstance(found, str):
            return None
        folders[component] = Path(found).parent
    return folders


def _is_model_entry(entry: Sequence[Any]) -> bool:
    """Whether a ``model_index.json`` entry names a ``torch.nn.Module`` (not a tokenizer or scheduler)."""
    import torch

    try:
        return isinstance(cls := _model_class(entry[0], entry[1]), type) and issubclass(cls, torch.nn.Module)
    except (ImportError, AttributeError):
        return False


def count_generator(config: Any, lora: Any) -> GeneratorCounts | None:
    """Count the generator ``config`` names (a :class:`~cac_align.gen.generator.GeneratorConfig`),
    with the LoRA ``lora`` (:class:`~cac_align.gen.lora.LoraSettings`) on its adapted experts, from
    its own configs (module docstring); nothing is downloaded.

    Returns:
        The counts, or None (logged) where nothing can be counted without the network: a hub id
        whose configs are not in the local cache, and the synthetic stand-in generator.
    """
    from cac_align.gen.family import read_model_index

    if config.is_synthetic:
        log.info("memory plan: %s is the synthetic stand-in generator; nothing to plan", config.name)
        return None
    family = config.family
    targets = list(lora.target_modules) if lora.target_modules else list(family.lora_target_modules)
    experts = {"high": [0], "low": [1], "both": [0, 1]}[lora.experts]
    if config.name in family.tiny_names:  # built in-process in seconds: counted as built
        pipe = family.build_tiny(config.name, seed=0)
        import torch

        modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        return count_components(config.name, family, modules, targets, experts)
    index = read_model_index(config.name, "generator.name")
    folders = _config_folders(config.name, index) if index is not None else None
    if folders is None:
        log.warning("memory plan: the configs of %s are not on this machine (not in the Hugging Face cache); no plan is made, nothing is "
                    "downloaded. Download them (`huggingface-cli download %s --include '*.json'`) to see the plan before loading",
                    config.name, config.name)
        return None
    modules = {}
    for component, folder in folders.items():
        library, class_name = index[component]
        modules[component] = _meta_module(_model_class(library, class_name), folder)
    return count_components(config.name, family, modules, targets, experts)


# ---------------------------------------------------------------------------------------
# The plan (pure arithmetic on the counts)
# ---------------------------------------------------------------------------------------
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
                     context_parallel: int = 1, dtype: Any = "bfloat16") -> int:
    """The activations one training forward keeps for its backward, per process (arithmetic, an
    estimate; module docstring).

    ``rows x ceil(tokens / cp) x hidden x bytes`` is one hidden-sized tensor over the process's
    tokens; a block keeps :data:`ACTIVATION_WIDTHS` of them. Without gradient checkpointing every
    block keeps its own: ``layers x 24`` of them; with it each block keeps its input, and the block
    being recomputed in the backward its 24: ``layers + 24``.

    Args:
        tokens: the transformer's tokens per video (:func:`video_tokens`).
        hidden_size: its width.
        num_layers: its blocks (one expert's).
        batch_per_process: sample-forwards with gradient in one micro-batch on a process (videos x
            forwards each: 2 with batched classifier-free guidance; dpo: 2 per pair).
        gradient_checkpointing: recompute each block in the backward.
        context_parallel: processes sharing one video's tokens (each holds ``1/cp`` of them).
        dtype: the activations' dtype (the autocast one).

    Returns:
        Bytes per process.
    """
    per_width = batch_per_process * math.ceil(tokens / context_parallel) * hidden_size * dtype_bytes(dtype)
    widths = num_layers + ACTIVATION_WIDTHS if gradient_checkpointing else num_layers * ACTIVATION_WIDTHS
    return per_width * widths


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
        source: "counted" (from the model's configs), "arithmetic" (an estimate) or "given" (by the
            caller: the judges).
        phase: "resident" (held throughout), "train" (while a training forward and backward run) or
            "encode" (while the prompts are encoded).
    """

    label: str
    bytes: int
    source: str
    phase: str = "resident"


@dataclass
class MemoryPlan:
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

    @property
    def peak_bytes(self) -> int:
        """Resident bytes plus the larger of the training and the encoding phase's."""
        return self.phase_bytes("resident") + max(self.phase_bytes("train"), self.phase_bytes("encode"))

    def fits(self, device_bytes: int) -> bool:
        return self.peak_bytes <= device_bytes

    def describe(self) -> str:
        """``8 processes, parallel.shard=fsdp2, context_parallel=1, gradient checkpointing on``."""
        s = self.settings
        return (f"{self.num_processes} process{'es' if self.num_processes != 1 else ''}, parallel.shard={s.shard}, "
                f"context_parallel={s.context_parallel}, gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")

    def table(self, device_bytes: int | None = None) -> str:
        """The plan as a text table in GiB per GPU, each row's source and phase; the peak and, with
        ``device_bytes``, the device and whether it fits."""
        lines = [f"memory plan per GPU for {self.family} ({self.describe()}):",
                 f"  {'row':<54} {'GiB':>8}  {'source':<10} phase"]
        for row in self.rows:
            lines.append(f"  {row.label:<54} {row.bytes / GIB:>8.2f}  {row.source:<10} {row.phase}")
        lines.append(f"  {'peak: resident + max(train, encode)':<54} {self.peak_bytes / GIB:>8.2f}")
        if device_bytes is not None:
            verdict = "fits" if self.fits(device_bytes) else "does NOT fit"
            lines.append(f"  {'device':<54} {device_bytes / GIB:>8.2f}  {verdict}")
        return "\n".join(lines)


def memory_plan(counts: GeneratorCounts, *, settings: ParallelSettings, num_processes: int, tokens: int, batch_per_process: int,
                gradient_checkpointing: bool, lora_rank: int, dtype: Any = "bfloat16", vae_dtype: Any = "float32", judges_bytes: int = 0,
                ema: bool = False) -> MemoryPlan:
    """Per-GPU bytes of a generator trainer (module docstring, "The rows"); pure arithmetic on
    ``counts``.

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
        judges_bytes: bytes of reward models resident on each GPU (0: served elsewhere).
        ema: an fp32 EMA copy of the LoRA is kept (flow-grpo's ``ema_decay``).

    Raises:
        ValueError: ``num_processes`` not a multiple of ``settings.context_parallel``.
    """
    if num_processes < 1 or num_processes % settings.context_parallel:
        raise ValueError(f"{num_processes} processes are not a multiple of parallel.context_parallel={settings.context_parallel}")
    n, shard = num_processes, settings.shard
    weight, vae_weight = dtype_bytes(dtype), dtype_bytes(vae_dtype)
    part = f"1/{n} shard" if shard == "fsdp2" else "whole"
    rows: list[PlanRow] = []
    gathered = 0
    for t in counts.transformers:
        resident, block = sharded_parameters(t.parameters, t.blocks, n, shard, settings.reshard_after_forward)
        rows.append(PlanRow(f"{t.name}: frozen base ({part})", resident * weight, "counted"))
        gathered = max(gathered, block)  # one expert runs at a time
    if gathered:
        what = "largest block" if settings.reshard_after_forward else "every block (reshard_after_forward off)"
        rows.append(PlanRow(f"gathered while it runs: {what}", gathered * weight, "counted", "train"))
    lora = sum(t.lora_width for t in counts.transformers) * lora_rank
    lora_local = math.ceil(lora / n) if shard == "fsdp2" else lora
    if lora:
        rows.append(PlanRow(f"LoRA weights (fp32, rank {lora_rank}, {lora:,} parameters)", lora_local * _FP32, "counted"))
        rows.append(PlanRow("LoRA gradients (fp32)", lora_local * _FP32, "counted"))
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
    rows.append(PlanRow("judges (resident)", int(judges_bytes), "given"))
    cp = settings.context_parallel
    act = activation_bytes(tokens, counts.hidden_size, counts.num_layers, batch_per_process, gradient_checkpointing, cp, dtype)
    tokens_note = f"{tokens:,} tokens" + (f" / cp {cp}" if cp > 1 else "")
    rows.append(PlanRow(f"activations ({batch_per_process} x {tokens_note}, {'checkpointed' if gradient_checkpointing else 'all kept'})", act,
                        "arithmetic", "train"))
    inputs = dict(counts=counts, tokens=tokens, batch_per_process=batch_per_process, lora_rank=lora_rank, dtype=dtype, vae_dtype=vae_dtype,
                  judges_bytes=judges_bytes, ema=ema)
    return MemoryPlan(rows, counts.family, n, settings, gradient_checkpointing, inputs)


def _replan(plan: MemoryPlan, settings: ParallelSettings, num_processes: int, gradient_checkpointing: bool) -> MemoryPlan:
    return memory_plan(settings=settings, num_processes=num_processes, gradient_checkpointing=gradient_checkpointing, **plan.inputs)


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


def refusal(plan: MemoryPlan, device_bytes: int, max_processes: int = 1024) -> str | None:
    """None when ``plan`` fits ``device_bytes``; else one line: what it needs, what the device has,
    and the fix, computed by re-planning (the first that fits, in this order):

    1. ``gradient_checkpointing=true`` alone, on the same processes (when it is off);
    2. ``parallel.encoder_on_device=false`` alone (when the text encoder stays on the GPU);
    3. ``parallel.shard=fsdp2`` on the fewest GPUs that fit (the rest as it is), then with
       checkpointing too;
    4. ``parallel.context_parallel=K`` (the smallest K above today's that divides the heads and the
       tokens), sharded, with checkpointing, on the fewest GPUs that fit, where the family can split
       a video (``GeneratorCounts.context_parallel``);
    and when nothing fits, what no sharding splits, on ``max_processes`` GPUs.
    """
    if plan.fits(device_bytes):
        return None
    gib = lambda p: f"{p.peak_bytes / GIB:.1f} GiB per GPU"  # noqa: E731
    head = f"memory plan: {plan.family} needs {gib(plan)} ({plan.describe()}) but the device has {device_bytes / GIB:.1f} GiB"
    s, gc, n = plan.settings, plan.gradient_checkpointing, plan.num_processes
    counts, tokens = plan.inputs["counts"], plan.inputs["tokens"]
    if not gc and (candidate := _replan(plan, s, n, True)).fits(device_bytes):
        return f"{head}; set gradient_checkpointing=true ({gib(candidate)})"
    if s.keeps_encoder and counts.encoders and (candidate := _replan(plan, replace(s, encoder_on_device=False), n, gc)).fits(device_bytes):
        return f"{head}; set parallel.encoder_on_device=false: the text encoder leaves the GPU between encodes ({gib(candidate)})"
    sharded = replace(s, shard="fsdp2")
    for with_gc in dict.fromkeys((gc, True)):
        candidate = _smallest_sharded(plan, device_bytes, sharded, with_gc, max_processes)
        if candidate is None:
            continue
        changes = ([] if s.shard == "fsdp2" else ["set parallel.shard=fsdp2"]) + ([] if with_gc == gc else ["gradient_checkpointing=true"])
        if candidate.num_processes <= n:  # it fits on the processes there are (a change of settings, not of GPUs)
            return f"{head}; {' and '.join(changes)} ({gib(_replan(plan, sharded, n, with_gc))} on these {_gpus(n)})"
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
    return (f"{head}; no {tried} fits it: what is not split (encoder while encoding, VAE, judges, one block, activations) is "
            f"{gib(floor)} even on {_gpus(max_processes)}; serve the judges elsewhere, or train on fewer or smaller videos per micro-batch")


# ---------------------------------------------------------------------------------------
# The jobs' call
# ---------------------------------------------------------------------------------------
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


def check_memory(generator: Any, lora: Any, parallel: ParallelSettings, num_processes: int, batch_per_process: int,
                 gradient_checkpointing: bool, *, budget_gib: float | None = None, judges_bytes: int = 0, ema: bool = False,
                 video: tuple[int, int, int] | None = None, device: Any = None, main_process: bool = True) -> MemoryPlan | None:
    """The memory plan of a generator trainer, checked before anything loads: what ``flow-grpo`` and
    ``dpo`` call once in their setup.

    Logs the table (on the main process) and refuses a plan that cannot fit the device.

    Args:
        generator: the job's :class:`~cac_align.gen.generator.GeneratorConfig`.
        lora: the job's :class:`~cac_align.gen.lora.LoraSettings`.
        parallel: the job's ``parallel`` section.
        num_processes: processes (GPUs) of the run.
        batch_per_process: sample-forwards with gradient in one micro-batch per process (flow-grpo:
            ``train_batch_size`` x the forwards a guided velocity batches, 2 with CFG; dpo:
            ``batch_size`` x 2, winner and loser).
        gradient_checkpointing: the job's setting.
        budget_gib: the memory to plan for, GiB per GPU (overrides the device's; makes a CPU run
            enforce the plan).
        judges_bytes: bytes of reward models resident on each GPU (0 when served elsewhere).
        ema: an EMA of the LoRA is kept.
        video: ``(num_frames, height, width)`` of the trained videos (dpo: its pairs'); None:
            ``generator``'s.
        device: this process's device (None: the current CUDA device, or the CPU).
        main_process: log the table (one process of the run).

    Returns:
        The plan, or None where no config can be read offline (logged).

    Raises:
        RecipeError: the plan does not fit; one line naming the fix (:func:`refusal`).
    """
    counts = count_generator(generator, lora)
    if counts is None:
        return None
    frames, height, width = video if video is not None else (generator.num_frames, generator.height, generator.width)
    tokens = video_tokens(frames, height, width, counts.spatial_multiple, counts.frame_multiple, counts.patch_t)
    plan = memory_plan(counts, settings=parallel, num_processes=num_processes, tokens=tokens, batch_per_process=batch_per_process,
                       gradient_checkpointing=gradient_checkpointing, lora_rank=lora.rank, dtype=generator.dtype, vae_dtype=generator.vae_dtype,
                       judges_bytes=judges_bytes, ema=ema)
    limit = device_bytes(device, budget_gib)
    if main_process:
        note = "" if limit is not None else "\n  (no GPU and no memory_budget_gib: shown, not enforced)"
        log.info("%s%s", plan.table(limit), note)
    if limit is not None:
        reason = refusal(plan, limit)
        if reason is not None:
            raise RecipeError(reason)
    return plan
