"""The memory plan of a generator trainer (``flow-grpo``, ``dpo``): how many bytes each GPU holds,
worked out before any weight loads, and a refusal, naming the fix, when that cannot fit the device;
and what a node's host memory holds while the run loads.

**Where the numbers come from.** The models' own configs: each component of the pipeline
(``model_index.json``'s transformers, text encoder(s), VAE(s), and the models a family keeps beside
them: LTX-2.5's diffusion decoder, counted with the VAEs in ``generator.vae_dtype``) and each
in-process judge of the reward sections (its ``config.json``; which models a section loads, each reward says:
:func:`cac_align.rewards.registry.reward_judges`) is built on the meta device (``with
torch.device("meta")``: no weight read, no memory taken) and its parameters are counted; a tiny
in-process model (``tiny-random:...``) is built and counted as it is. The VAE's decode (or encode)
is **traced**: run on the meta device, its live tensors summed op by op (:func:`traced_peak_bytes`).
What the models do not say (the activations of a training forward, a judge's KV cache) is
**arithmetic**: a formula, labelled as such in every table; a fixed overhead is an **estimate**.
Nothing is downloaded. The configs of the releases the shipped recipes name are shipped with cac-align
(``cac_align/gen/full_size/``, config numbers only, each with its source in its ``SOURCES.md``): a
release whose files are not in the local Hugging Face cache is planned from them
(:func:`shipped_configs`; :func:`planned_from_shipped` says so). Any other model whose configs are not
in the cache gives no plan but one line naming what to fetch (:class:`ConfigsNotFound`).

**The rows** (bytes per GPU; :func:`memory_plan`, :func:`plan_generator`), N processes, all holding
the same model (under context parallel, the judges only on each group's leader, the GPU planned):

| row | phase | per GPU | source |
| --- | --- | --- | --- |
| each transformer's frozen base | resident | ``shard: none``: all of it; ``fsdp2``: ``ceil(P / N)`` parameters | counted |
| gathered block, and FSDP2's prefetch | train (flow-grpo: and video) | ``fsdp2``: the largest block's parameters (FSDP2 gathers one block at a time), and the next block's, whose all-gather overlaps the running one; every block with ``reshard_after_forward: false`` | counted |
| LoRA weights, gradients, AdamW moments (, EMA) | resident | ``r * (in + out)`` per adapted Linear, fp32, x1 / x1 / x2 (/ x1; no moments under ``optimizer: sgd``); ``fsdp2``: 1/N of them | counted |
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

**Host memory at load** (bytes on the node of global rank 0; :func:`host_plan`): sharded, global rank
0 reads the transformers whole and every other process builds them on the meta device and receives
its shards, while every process loads its own VAE on the CPU; the text encoder(s), kept on the CPU
between encodes, are one copy for the node's processes (``parallel.share_encoders``,
:mod:`cac_align.gen.shared_weights`): the transformers once plus ``processes per node`` x VAEs plus the
encoders once. Unsharded, every process its whole pipeline (the encoders once where shared).
In-process judges pass through host memory too, in each process that builds them. Processes per
node: torchrun's ``LOCAL_WORLD_SIZE``, else all on one node. While the run goes on, a process holds
the sample batch its rewards score (``sample_batch_size`` videos): uint8, ``frames x height x width
x 3`` bytes a video (decoded to uint8 on the device a few frames at a time, so the host never holds a
float32 copy, which is 4x that).

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

import functools
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
    "PHASES",
    "SERVE_THE_JUDGES",
    "ComponentCount",
    "ConfigsNotFound",
    "FULL_SIZE_CONFIGS",
    "ENCODER_FILES",
    "GeneratorCounts",
    "HostPlan",
    "JudgeCount",
    "MemoryPlan",
    "PlanRow",
    "activation_bytes",
    "check_memory",
    "count_components",
    "count_generator",
    "count_judge",
    "count_judges",
    "count_module",
    "encoder_weight_files",
    "counted_generator",
    "device_bytes",
    "fixed_overhead_bytes",
    "guided_rows",
    "holds_judges",
    "host_plan",
    "judge_module",
    "kv_cache_bytes",
    "planned_from_shipped",
    "safetensors_bytes",
    "lora_width",
    "memory_plan",
    "plan_generator",
    "processes_per_node",
    "refusal",
    "shipped_configs",
    "sharded_parameters",
    "traced_peak_bytes",
    "vae_bytes",
    "video_tokens",
    "visual_tokens",
]

log = logging.getLogger(__name__)

GIB = 2**30

# Hidden-sized tensors a transformer block keeps per token for its backward when nothing is
# recomputed (arithmetic, an estimate): the inputs of its norms, the q, k, v and output of its self-
# and cross-attention (and the LoRA's inputs, the same tensors), the residual stream and its gates,
# and the feed-forward's input with its intermediate in and out of the activation (Wan's feed-forward
# is 2.7x to 5.8x the width: about 8 widths). Held against the two measured Flow-GRPO steps (one
# process, gradient checkpointing, CFG, UMT5-XXL resident; benchmarks/memory/memory_plan_full_size.py):
# Wan-2.1-1.3B at 480 x 832 x 81 peaked at 23.8 GiB on an H100, the plan says 24.2; Wan2.2-TI2V-5B
# at 704 x 1280 x 121 peaked at 43.8 GiB on an H200, the plan says 40.1.
ACTIVATION_WIDTHS = 24

_BYTES = {"float32": 4, "fp32": 4, "float": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "float64": 8, "fp64": 8}
_FP32 = 4
PHASES = ("train", "encode", "video")  # what is held only for a while; the peak is the resident rows plus the largest


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
        vae: the pipeline's ``vae`` module (on the meta device, or the tiny one built), whose
            decode and encode the plan traces (:func:`vae_bytes`); None when it has none.
        vae_one_video: the family runs its VAE on one video at a time (its ``vae_one_video``:
            HunyuanVideo-1.5's VAE fails on a batch), so the plan traces a batch of one.
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
    vae: Any = field(default=None, compare=False, repr=False)
    vae_one_video: bool = False
    # the soundtracks' decode, traced (a family's ``audio_decode_bytes`` over these modules:
    # ``(batch, num_frames, fps, dtype) -> bytes``); None: not traced
    audio_decode: Any = field(default=None, compare=False, repr=False)
    # a family whose latent grid is not 1 + (F - 1) / frame_multiple frames says so (MiniMax-H3:
    # cac_align.gen.family, "Modular pipelines"): its latent frames of F frames, and every token its
    # transformer sees for one video (text and audio rows too); None: the formulas here
    latent_frames_of: Any = field(default=None, compare=False, repr=False)
    tokens_of: Any = field(default=None, compare=False, repr=False)


def _transformer_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(hidden, heads, patch_t)`` of a video transformer's config (Wan: ``patch_size`` (t, h, w);
    LTX-2: ``patch_size_t``; Kandinsky 6: ``model_dim`` wide, heads of ``sum(axes_dims)``, its rotary axes)."""
    if "num_attention_heads" not in config and "model_dim" in config:  # Kandinsky6Transformer3DModel: head_dim = sum(axes_dims)
        head_dim = sum(int(d) for d in config["axes_dims"])
        heads = int(config["model_dim"]) // head_dim
    else:
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
                           family.spatial_multiple, family.frame_multiple, splits, modules.get("vae"),
                           vae_one_video=bool(getattr(family, "vae_one_video", False)),
                           latent_frames_of=getattr(family, "latent_frames", None), tokens_of=getattr(family, "sequence_tokens", None),
                           audio_decode=functools.partial(family.audio_decode_bytes, modules) if hasattr(family, "audio_decode_bytes") else None)


def _model_class(library: str, class_name: str) -> Any:
    """The class a ``model_index.json`` entry ``[library, class]`` names (diffusers writes a
    pipeline-specific module's library as its pipeline folder: ``["ltx2", "LTX2TextConnectors"]``)."""
    if library in ("diffusers", "transformers"):
        return getattr(importlib.import_module(library), class_name)
    return getattr(importlib.import_module(f"diffusers.pipelines.{library}"), class_name)


def _meta_module(cls: Any, folder: Path) -> Any:
    """``cls`` built from ``folder/config.json`` on the meta device (torch's device context: its
    tensors take no memory and tied weights stay tied, which accelerate's ``init_empty_weights``
    does not keep: it would count UMT5's shared embedding twice). Built once per process for a
    config file as it is (a folder of recipes naming one model builds it once); read-only."""
    config = Path(folder) / "config.json"
    return _meta_module_cached(cls, str(folder), config.stat().st_mtime_ns if config.is_file() else 0)


@functools.lru_cache(maxsize=16)
def _meta_module_cached(cls: Any, folder: str, stamp: int) -> Any:
    import torch

    try:
        with torch.device("meta"):
            return _from_folder(cls, folder)
    except RuntimeError:
        # a module whose __init__ computes a buffer from Python numbers mixes devices under torch's meta
        # context (MMAudioVAE's mel filterbank: "Tensor on device cpu is not on the expected device meta"):
        # its parameters on the meta device, its buffers computed on the CPU (accelerate's init_empty_weights)
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            return _from_folder(cls, folder)


def _from_folder(cls: Any, folder: str) -> Any:
    if hasattr(cls, "load_config"):  # diffusers' ModelMixin and its configs
        return cls.from_config(cls.load_config(str(folder)))
    config = cls.config_class.from_pretrained(str(folder))  # a transformers model
    return cls._from_config(config)


def _component_folder(name: str, component: str) -> Path | None:
    """The folder of ``component/config.json`` under ``name``: a local folder's subfolder, or the cached
    file of a hub id; None when it is not on this machine."""
    from cac_align.loading import looks_like_path

    if looks_like_path(name):
        path = Path(name).expanduser() / component / "config.json"
        found: Any = str(path) if path.is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, f"{component}/config.json")
        if not isinstance(found, str) and _cached_model_index(name, shipped=False) is None:  # the release's own, shipped
            shipped = shipped_configs(name)
            found = str(shipped / component / "config.json") if shipped and (shipped / component / "config.json").is_file() else None
    return Path(found).parent if isinstance(found, str) else None


def _config_folders(name: str, index: Mapping[str, Any], family: Any = None) -> dict[str, Path] | None:
    """The folder of each model component's ``config.json`` (tokenizers and schedulers left out):
    ``name``'s subfolders (a local folder), or the cached files of a hub id; None when one is not on
    this machine."""
    from cac_align.gen.family import has_component

    folders: dict[str, Path] = {}
    skipped = getattr(family, "unloaded_components", ()) if family is not None else ()
    for component in index:
        if component.startswith("_") or component in skipped or not has_component(index, component) or not _is_model_entry(index[component]):
            continue
        folder = _component_folder(name, component)
        if folder is None:
            return None
        folders[component] = folder
    return folders


def _is_model_entry(entry: Sequence[Any]) -> bool:
    """Whether a ``model_index.json`` entry names a ``torch.nn.Module`` (not a tokenizer or scheduler)."""
    import torch

    try:
        return isinstance(cls := _model_class(entry[0], entry[1]), type) and issubclass(cls, torch.nn.Module)
    except (ImportError, AttributeError):
        return False


class ConfigsNotFound(LookupError):
    """The configs a plan needs are not on this machine (nothing is downloaded).

    Attributes:
        needs: ``(repo or folder, files)`` for each model whose configs are missing, e.g.
            ``("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "model_index.json and */config.json")``.
    """

    def __init__(self, needs: Sequence[tuple[str, str]]):
        self.needs = list(needs)
        super().__init__(self.line())

    def line(self) -> str:
        """One line: what to put in the Hugging Face cache, and the command that does it."""
        what = "; ".join(f"{files} of {repo}" for repo, files in self.needs)
        configs = [repo for repo, files in self.needs if files != ENCODER_FILES]
        encoders = [repo for repo, files in self.needs if files == ENCODER_FILES]  # an encoder judge is counted from its weights' header
        commands = [(f"hf download {repos[0]} --include '{pattern}'" if len(repos) == 1 else
                     f"for r in {' '.join(repos)}; do hf download $r --include '{pattern}'; done")
                    for repos, pattern in ((configs, "*.json"), (encoders, ENCODER_FILES)) if repos]
        fetched = "configs only" if not encoders else ("the encoders' safetensors weights" if not configs else "configs, and the encoders' safetensors weights")
        return (f"memory plan: not made, the models' configs are not on this machine; put {what} in the Hugging Face cache "
                f"(`{'; '.join(commands)}`: {fetched})")


# The configs of the releases the shipped recipes name, shipped with cac-align (config numbers only,
# each with its source: full_size/SOURCES.md, written by benchmarks/memory/write_full_size_configs.py):
# a plan is made offline from them where the Hugging Face cache holds none of the repository's files.
FULL_SIZE_CONFIGS = Path(__file__).resolve().parent / "full_size"


def shipped_configs(name: str) -> Path | None:
    """The folder of hub id ``name``'s configs shipped with cac-align (:data:`FULL_SIZE_CONFIGS`), or None."""
    if name.count("/") != 1:
        return None
    folder = FULL_SIZE_CONFIGS / name.replace("/", "--")
    return folder if folder.is_dir() else None


def planned_from_shipped(name: str) -> bool:
    """Whether hub id ``name``'s plan reads the configs shipped with cac-align: they are shipped and
    the local Hugging Face cache holds neither its pipeline index nor its ``config.json``."""
    from huggingface_hub import try_to_load_from_cache

    if shipped_configs(name) is None:
        return False
    try:
        cached = any(isinstance(try_to_load_from_cache(name, f), str) for f in ("model_index.json", "modular_model_index.json", "config.json"))
    except ValueError:
        return False
    return not cached


def _cached_model_index(name: str, shipped: bool = True) -> dict[str, Any] | None:
    """A hub id's ``model_index.json`` from the local Hugging Face cache only (never downloaded), or
    (``shipped``) the one shipped with cac-align for a release (:func:`shipped_configs`); None when
    neither is there."""
    import json

    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "model_index.json")
        if not isinstance(found, str):  # a modular pipeline's repository (MiniMax-H3)
            found = try_to_load_from_cache(name, "modular_model_index.json")
    except ValueError:  # not a repo id
        return None
    folder = shipped_configs(name) if shipped and not isinstance(found, str) else None
    if folder is not None:
        found = next((str(folder / f) for f in ("model_index.json", "modular_model_index.json") if (folder / f).is_file()), None)
    if not isinstance(found, str):
        return None
    index = json.loads(Path(found).read_text(encoding="utf-8"))
    return index if isinstance(index, dict) else None


def counted_generator(config: Any, lora: Any) -> GeneratorCounts | None:
    """Count the generator ``config`` names (a :class:`~cac_align.gen.generator.GeneratorConfig`),
    with the LoRA ``lora`` (:class:`~cac_align.gen.lora.LoraSettings`) on its adapted experts, from
    its own configs (module docstring); nothing is downloaded.

    Returns:
        The counts; None for the synthetic stand-in generator (nothing to plan).

    Raises:
        ConfigsNotFound: a hub id whose configs are not in the local cache.
    """
    from cac_align.gen.family import read_model_index
    from cac_align.loading import looks_like_path

    if config.is_synthetic:
        return None
    family = config.family
    targets = list(lora.target_modules) if lora.target_modules else list(family.lora_target_modules)
    experts = {"high": [0], "low": [1], "both": [0, 1]}[lora.experts]
    if config.name in family.tiny_names:  # built in-process in seconds: counted as built
        pipe = family.build_tiny(config.name, seed=0)
        import torch

        modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        modules.update({n: getattr(pipe, n) for n in family.extra_components})  # LTX-2.5's diffusion decoder
        return count_components(config.name, family, modules, targets, experts)
    index = read_model_index(config.name, "generator.name") if looks_like_path(config.name) else _cached_model_index(config.name)
    folders = _config_folders(config.name, index, family) if index is not None else None
    if folders is None:
        raise ConfigsNotFound([(config.name, "model_index.json and */config.json")])
    extra = _extra_folders(config.name, family.extra_components)
    if extra is None:
        raise ConfigsNotFound([(config.name, f"{', '.join(f'{n}/config.json' for n in family.extra_components)}")])
    modules = {}
    for component, folder in folders.items():
        library, class_name = index[component][:2]  # a modular pipeline's entries add a loading spec
        modules[component] = _meta_module(_model_class(library, class_name), folder)
    for component, folder in extra.items():  # a model its pipeline class does not hold: the class its config.json names
        import json

        class_name = json.loads((folder / "config.json").read_text(encoding="utf-8"))["_class_name"]
        modules[component] = _meta_module(_model_class("diffusers", class_name), folder)
    return count_components(config.name, family, modules, targets, experts)


def _extra_folders(name: str, components: Sequence[str]) -> dict[str, Path] | None:
    """The folders of a family's ``extra_components`` (beside ``model_index.json``, not in it), as
    :func:`_config_folders` finds a component's; None when one is not on this machine."""
    folders: dict[str, Path] = {}
    for component in components:
        folder = _component_folder(name, component)
        if folder is None:
            return None
        folders[component] = folder
    return folders


def count_generator(config: Any, lora: Any) -> GeneratorCounts | None:
    """:func:`counted_generator`, or None (logged) where nothing can be counted without the network:
    a hub id whose configs are not in the local cache, and the synthetic stand-in generator."""
    if config.is_synthetic:
        log.info("memory plan: %s is the synthetic stand-in generator; nothing to plan", config.name)
        return None
    try:
        return counted_generator(config, lora)
    except ConfigsNotFound:
        log.warning("memory plan: the configs of %s are not on this machine (not in the Hugging Face cache); no plan is made, nothing is "
                    "downloaded. Download them (`hf download %s --include '*.json'`) to see the plan before loading",
                    config.name, config.name)
        return None


# ---------------------------------------------------------------------------------------
# Judges (in-process reward models) counted from their configs
# ---------------------------------------------------------------------------------------
# Markup tokens around each group of frames a Qwen-VL prompt holds (vision start and end, a
# Qwen3-VL "<t seconds>" stamp): an estimate.
_FRAME_GROUP_MARKUP = 8
# Without a vision config that says its grid: a token per 28 x 28 pixels, 2 frames a group (Qwen2.5-VL's).
_DEFAULT_GRID = (14, 2, 2)


@dataclass(frozen=True)
class JudgeCount:
    """A judge as a GPU holds it (:func:`count_judge`).

    Attributes:
        judge: what the reward section says it loads (:class:`~cac_align.rewards.judges.JudgeModel`).
        weight_bytes: its parameters in its dtype (counted; 0 when it holds nothing on the GPU).
        kv_bytes: its KV cache at its longest call (arithmetic; 0 when it holds nothing on the GPU).
        tokens: the cache's length per row (the longest call's visual + text + generated tokens,
            rounded up to ``length_multiple`` for a static cache).
        visual_tokens: the visual tokens in it (estimated from the frames and the judge's vision grid).
        note: how it is held ("served", "on the CPU") when not on the GPU.
        dtype: the dtype it is held in (a tiny one's as built).
    """

    judge: Any
    weight_bytes: int
    kv_bytes: int
    tokens: int = 0
    visual_tokens: int = 0
    note: str = ""
    dtype: str = ""


def _judge_config_file(name: str) -> str | None:
    """The ``config.json`` of a judge named ``name``: a built-in model's or a local folder's, or the
    cached one of a hub id (never downloaded); None when not on this machine."""
    from cac_align.loading import looks_like_path
    from cac_align.models import builtin_path

    folder = builtin_path(name) or (Path(name).expanduser() if looks_like_path(name) else None)
    if folder is not None:
        path = folder / "config.json"
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a repo id
        return None
    if not isinstance(found, str) and (shipped := shipped_configs(name)) is not None and (shipped / "config.json").is_file():
        found = str(shipped / "config.json")  # the release's, shipped with cac-align
    return found if isinstance(found, str) else None


def judge_module(judge: Any) -> Any:
    """The model a judge runs: the tiny one built (``tiny-random:...``), or its architecture built
    from its ``config.json`` on the meta device (no weight read, no memory taken).

    Raises:
        ConfigsNotFound: its ``config.json`` is not on this machine.
    """

    if judge.tiny is not None:
        return judge.tiny()
    name = judge.config_name or judge.name
    found = _judge_config_file(name)
    if found is None:
        raise ConfigsNotFound([(name, "config.json")])
    return _meta_judge(found, Path(found).stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _meta_judge(config_file: str, stamp: int) -> Any:
    """An image-text-to-text model built from ``config_file`` on the meta device, once per process
    for a file as it is; read-only."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(Path(config_file).parent))
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def visual_tokens(frames: Sequence[Any], vision_config: Any) -> int:
    """The visual tokens of ``frames`` (:class:`~cac_align.rewards.judges.Frames`) for a Qwen-VL
    vision tower (an estimate): each side rounded to its grid of ``patch_size x spatial_merge_size``
    pixels, ``temporal_patch_size`` frames of a video in one group (an image is a group of its own),
    and a few markup tokens a group. Qwen2.5-VL at 480 x 832: 17 x 30 = 510 tokens a group; Qwen3-VL
    (32-pixel grid): 15 x 26 = 390."""
    patch, merge, temporal = (int(getattr(vision_config, key, default) or default)
                              for key, default in zip(("patch_size", "spatial_merge_size", "temporal_patch_size"), _DEFAULT_GRID))
    grid = patch * merge
    total = 0
    for part in frames:
        groups = part.count if part.images else math.ceil(part.count / temporal)
        cells = max(1, round(part.height / grid)) * max(1, round(part.width / grid))
        total += groups * (cells + _FRAME_GROUP_MARKUP)
    return total


# An encoder judge's weights: what a hint names, and the bytes of an element of each safetensors dtype
ENCODER_FILES = "*.safetensors"
_SAFETENSORS_ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                        "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def encoder_weight_files(name: str) -> list[str] | None:
    """The safetensors file(s) of an encoder judge at ``name``: the file itself (``*.safetensors``); a
    folder's ``model.safetensors``, or the shards its ``model.safetensors.index.json`` names; the same
    of a hub id from the local Hugging Face cache (never downloaded). None when they are not all on
    this machine."""
    import json

    from cac_align.loading import looks_like_path

    if not name:
        return None
    path = Path(name).expanduser()
    if name.endswith(".safetensors"):
        return [str(path)] if path.is_file() else None
    if looks_like_path(name):
        def find(file: str) -> str | None:
            return str(path / file) if (path / file).is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        def find(file: str) -> str | None:
            try:
                found = try_to_load_from_cache(name, file)
            except ValueError:  # not a repo id
                return None
            return found if isinstance(found, str) else None
    single = find("model.safetensors")
    if single is not None:
        return [single]
    index = find("model.safetensors.index.json")
    if index is None:
        return None
    shards = [find(shard) for shard in sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))]
    return None if any(shard is None for shard in shards) else list(shards)


def safetensors_bytes(files: Sequence[str], dtype: Any) -> int:
    """The bytes the tensors of ``files`` take held in ``dtype``, from their headers only (shape and
    dtype of each; no tensor is read): ``numel x`` the bytes of ``dtype`` for a floating tensor
    (``from_pretrained(dtype=...)`` and ``load_state_dict`` into a model built in ``dtype`` both hold
    it so), ``numel x`` its stored element size for an integer or boolean one (kept as it is)."""
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for key in weights.keys():
                piece = weights.get_slice(key)
                kind = piece.get_dtype()
                size = dtype_bytes(dtype) if kind.startswith(("F", "BF")) else _SAFETENSORS_ELEMENT[kind]
                total += math.prod(piece.get_shape()) * size
    return total


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int, rows: int, dtype: Any) -> int:
    """A KV cache: ``2 (K and V) x layers x kv_heads x head_dim x tokens x rows x dtype bytes``
    (arithmetic). Qwen3-VL-8B (36 layers, 8 KV heads of 128) in bf16: 144 KiB a token."""
    return 2 * layers * kv_heads * head_dim * tokens * rows * dtype_bytes(dtype)


def count_judge(judge: Any) -> JudgeCount:
    """Count a judge (:class:`~cac_align.rewards.judges.JudgeModel`) as its GPU holds it: its
    parameters in its dtype (a tiny one as built: ``numel x element_size`` of each parameter) and
    its KV cache at its longest call (:func:`kv_cache_bytes` of its text config at the call's
    tokens and rows). An encoder (``judge.encoder``): its safetensors header's tensors in its dtype
    (:func:`safetensors_bytes`) and no KV cache. A served judge, or one on the CPU, holds nothing on
    the GPU: 0.

    Raises:
        ConfigsNotFound: an in-process judge's ``config.json`` (an encoder's safetensors file) is not
            on this machine.
    """
    if not judge.in_process:
        return JudgeCount(judge, 0, 0, note="served")
    if not judge.on_gpu:
        return JudgeCount(judge, 0, 0, note="on the CPU")
    if judge.encoder:  # no generation, no KV cache: its weights from its safetensors header(s)
        files = encoder_weight_files(judge.name)
        if files is None:
            raise ConfigsNotFound([(judge.name, ENCODER_FILES)])
        return JudgeCount(judge, safetensors_bytes(files, judge.dtype), 0, dtype=judge.dtype)
    model = judge_module(judge)
    params = list(model.parameters())
    if judge.tiny is not None:  # as built: its own dtypes
        weights, dtype = sum(p.numel() * p.element_size() for p in params), params[0].dtype
    else:
        weights, dtype = sum(p.numel() for p in params) * dtype_bytes(judge.dtype), judge.dtype
    text = model.config.get_text_config()
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    call = judge.call
    seen = visual_tokens(call.frames, getattr(model.config, "vision_config", None))
    tokens = seen + call.text_tokens + call.new_tokens
    if judge.cache != "dynamic":  # a static cache is as long as its prompt and budget, rounded up
        tokens = -(-tokens // judge.length_multiple) * judge.length_multiple
    kv = kv_cache_bytes(int(text.num_hidden_layers), kv_heads, head_dim, tokens, call.rows, dtype)
    return JudgeCount(judge, int(weights), kv, tokens, seen, dtype=str(dtype).removeprefix("torch."))


def _judge_models(sections: Mapping[str, Any], video: Any) -> tuple[list[Any], list[Any]]:
    """The judges ``sections`` load and the sections whose models are unknown, said by each reward."""
    from cac_align.rewards.judges import UnknownJudge
    from cac_align.rewards.registry import reward_judges

    said = [judge for where, section in sections.items() for judge in reward_judges(section, where, video)]
    return [j for j in said if not isinstance(j, UnknownJudge)], [j for j in said if isinstance(j, UnknownJudge)]


def _judge_missing(judge: Any) -> tuple[str, str] | None:
    """``(name, what)`` when ``judge`` is held on the GPU and what the plan counts it from is not on
    this machine: a judge's ``config.json``, an encoder's safetensors file(s); None otherwise."""
    if not judge.on_gpu or judge.tiny is not None:
        return None
    if judge.encoder:
        return None if encoder_weight_files(judge.name) is not None else (judge.name, ENCODER_FILES)
    name = judge.config_name or judge.name
    return None if _judge_config_file(name) is not None else (name, "config.json")


def _missing_configs(judges: Sequence[Any]) -> list[tuple[str, str]]:
    """``(name, what)`` of each judge on the GPU whose config (an encoder's weights) is not on this machine."""
    missing: list[tuple[str, str]] = []
    for judge in judges:
        need = _judge_missing(judge)
        if need is not None and need not in missing:
            missing.append(need)
    return missing


def _not_here(judge: Any, name: str) -> str:
    """Why ``judge`` is not counted: what is missing, and how to get it."""
    from cac_align.loading import looks_like_path

    if not judge.encoder:
        return f"{name}'s config.json is not on this machine: hf download {name} --include '*.json'"
    if not name:
        return f"{judge.where} is not set (its safetensors weights are what the plan counts)"
    if name.endswith(".safetensors") or looks_like_path(name):
        return f"{name}: no safetensors weights there (a .safetensors file, or a folder with model.safetensors or its shards)"
    return f"{name}'s safetensors weights are not on this machine: hf download {name} --include '{ENCODER_FILES}'"


def count_judges(sections: Mapping[str, Any], video: Any, strict: bool = True) -> tuple[list[JudgeCount], list[Any]]:
    """The judges of ``sections`` (recipe key -> reward section: the ``reward``, each of
    ``eval_rewards``), counted (:func:`count_judge`), and those that are not: the sections whose
    models are not known before they load (:class:`~cac_align.rewards.judges.UnknownJudge`) and,
    unless ``strict``, the judges whose ``config.json`` (an encoder's safetensors weights) is not on
    this machine.

    Args:
        video: the videos they score (:class:`~cac_align.rewards.judges.VideoShape`).
        strict: raise for a missing config instead of leaving that judge uncounted.

    Raises:
        ConfigsNotFound: ``strict``, naming every in-process judge whose ``config.json`` (an
            encoder's weights) is not here.
    """
    from cac_align.rewards.judges import UnknownJudge

    judges, unknown = _judge_models(sections, video)
    missing = _missing_configs(judges)
    if missing and strict:
        raise ConfigsNotFound(missing)
    needs = [(j, _judge_missing(j)) for j in judges]
    counted = [count_judge(j) for j, need in needs if need is None]
    unknown += [UnknownJudge(j.where, _not_here(j, need[0])) for j, need in needs if need is not None]
    return counted, unknown


# ---------------------------------------------------------------------------------------
# The VAE's decode and encode, traced on the meta device
# ---------------------------------------------------------------------------------------
def traced_peak_bytes(fn: Any, *args: Any, keep: Sequence[Any] = ()) -> int:
    """The most bytes of tensors alive at once while ``fn(*args)`` runs, beyond what existed before
    it (``args`` and the tensors of ``keep``, e.g. a module's parameters): each new storage counted
    from the op that makes it until it is freed. Run on the meta device it takes no memory and no
    time per element, and it is the eager allocator's live total (not the CUDA caching allocator's
    reserve, its fragmentation or cuDNN's workspaces).
    """
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    before = {id(t.untyped_storage()) for t in [*tree_flatten(args)[0], *keep] if isinstance(t, torch.Tensor)}

    class _Live(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.tracked: set[int] = set()

        def _freed(self, key: int, size: int) -> None:
            self.live -= size
            self.tracked.discard(key)

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()  # one Python object per storage, for its life (views share it)
                key = id(storage)
                if key in before or key in self.tracked:
                    continue
                size = storage.nbytes()
                self.tracked.add(key)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, key, size)
            return out

    with torch.no_grad(), _Live() as mode:
        fn(*args)
    return mode.peak


def _meta_copy(module: Any, dtype: Any) -> Any:
    """``module`` on the meta device in ``dtype`` (a copy when it is not there already)."""
    import copy

    import torch

    resolved = getattr(torch, str(dtype)) if isinstance(dtype, str) else dtype
    first = next(module.parameters())
    if first.device.type != "meta" or first.dtype != resolved:  # a copy: the counted module stays as it is
        module = copy.deepcopy(module).to(device="meta")
    if first.dtype != resolved:  # on the meta device a cast costs nothing; diffusers' warning about it says nothing here
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            module = module.to(dtype=resolved)
        finally:
            diffusers_logging.set_verbosity(level)
    return module


_VAE_TRACES: dict[tuple, int] = {}  # (the VAE's class and config, what, shape, dtype) -> bytes: one trace per process


def _vae_trace(vae: Any, what: str, batch: int, frames: int, height: int, width: int, dtype: str, frame_multiple: int, latent_frames: int) -> int:
    import json

    key = (type(vae).__name__, json.dumps(dict(getattr(vae, "config", {})), sort_keys=True, default=str), what, batch, frames, height, width,
           dtype, frame_multiple, latent_frames)
    if key not in _VAE_TRACES:
        _VAE_TRACES[key] = _traced_vae(vae, what, batch, frames, height, width, dtype, frame_multiple, latent_frames)
    return _VAE_TRACES[key]


def _traced_vae(vae: Any, what: str, batch: int, frames: int, height: int, width: int, dtype: str, frame_multiple: int, latent_frames: int) -> int:
    import torch

    meta = _meta_copy(vae, dtype)
    resolved = next(meta.parameters()).dtype
    params = [*meta.parameters(), *meta.buffers()]
    if what == "encode":
        video = torch.empty(batch, 3, frames, height, width, device="meta", dtype=resolved)
        return traced_peak_bytes(lambda x: meta.encode(x).latent_dist.mode(), video, keep=params)
    # the latents' shape: one small encode (1 + frame_multiple frames, 64 x 64 pixels) gives the
    # channels and the compression in space; in time, latent_frames (vae_bytes: the family's, or (F - 1) / frame_multiple + 1)
    probe = torch.empty(1, 3, 1 + frame_multiple, 64, 64, device="meta", dtype=resolved)
    with torch.no_grad():
        small = meta.encode(probe).latent_dist.mode()
    scale = 64 // small.shape[-1]
    latents = torch.empty(batch, small.shape[1], latent_frames, height // scale, width // scale, device="meta", dtype=resolved)
    return traced_peak_bytes(lambda z: meta.decode(z, return_dict=False)[0], latents, keep=params)


def vae_bytes(counts: GeneratorCounts, what: str, batch: int, video: tuple[int, int, int], dtype: Any) -> int:
    """The most bytes the VAE's ``what`` ("decode" or "encode") of ``batch`` videos of ``video``
    ``(frames, height, width)`` holds at once, in ``dtype`` (its weights aside): traced on the meta
    device (:func:`traced_peak_bytes`) with the pipeline's own VAE, untiled as the families run it.
    0 when the pipeline has no ``vae``.
    """
    if counts.vae is None or batch < 1:
        return 0
    frames = int(video[0])
    latent_frames = counts.latent_frames_of(frames) if counts.latent_frames_of else (frames - 1) // counts.frame_multiple + 1
    if counts.vae_one_video:  # the family decodes and encodes video by video
        batch = 1
    return _vae_trace(counts.vae, what, int(batch), frames, *(int(v) for v in video[1:]), str(dtype), counts.frame_multiple, latent_frames)


def fixed_overhead_bytes(num_processes: int) -> int:
    """What a process's GPU holds beyond its tensors, a constant (an estimate): 1 GiB for the CUDA
    context, its kernels and cuBLAS' workspaces (torch's first CUDA call alone shows 0.8 GB in
    nvidia-smi: pytorch/pytorch#34323), and 1 GiB more with other processes for NCCL's
    communicators (each keeps ``NCCL_BUFFSIZE``, 4 MiB by default, per channel and peer; a run makes
    two or three: the world, the data-parallel mesh, the leaders)."""
    return GIB + (GIB if num_processes > 1 else 0)


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
        """Resident bytes plus the largest phase's: training, encoding, or the videos' (decoded and
        scored while sampling, or encoded for dpo's cache)."""
        return self.phase_bytes("resident") + max(self.phase_bytes(phase) for phase in PHASES)

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
        w = max([54, *(len(row.label) for row in self.rows)])
        lines = [f"memory plan per GPU for {self.family} ({self.describe()}):",
                 f"  {'row':<{w}} {'GiB':>8}  {'source':<10} phase"]
        for row in self.rows:
            lines.append(f"  {row.label:<{w}} {row.bytes / GIB:>8.2f}  {row.source:<10} {row.phase}")
        lines.append(f"  {'peak: resident + max(train, encode, video)':<{w}} {self.peak_bytes / GIB:>8.2f}")
        if device_bytes is not None:
            verdict = "fits" if self.fits(device_bytes) else "does NOT fit"
            lines.append(f"  {'device':<{w}} {device_bytes / GIB:>8.2f}  {verdict}")
        return "\n".join(lines)


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
    weight, vae_weight = dtype_bytes(dtype), dtype_bytes(vae_dtype)
    part = f"1/{n} shard" if shard == "fsdp2" else "whole"
    rows: list[PlanRow] = []
    gathered = largest = 0
    for t in counts.transformers:
        resident, block = sharded_parameters(t.parameters, t.blocks, n, shard, settings.reshard_after_forward)
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
    lora_local = math.ceil(lora / n) if shard == "fsdp2" else lora
    if lora:
        rows.append(PlanRow(f"LoRA weights (fp32, rank {lora_rank}, {lora:,} parameters)", lora_local * _FP32, "counted"))
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
    leaders = " (the leaders' GPUs)" if cp > 1 else ""
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
    if judges_bytes:
        rows.append(PlanRow("judges (resident)", int(judges_bytes), "given"))
    act = activation_bytes(tokens, counts.hidden_size, counts.num_layers, batch_per_process, gradient_checkpointing, cp, dtype)
    tokens_note = f"{tokens:,} tokens" + (f" / cp {cp}" if cp > 1 else "")
    rows.append(PlanRow(f"activations ({batch_per_process} x {tokens_note}, {'checkpointed' if gradient_checkpointing else 'all kept'})", act,
                        "arithmetic", "train"))
    if overhead_bytes:
        rows.append(PlanRow("CUDA context, kernels" + (", NCCL buffers" if n > 1 else "") + " (fixed)", int(overhead_bytes), "estimate"))
    inputs = dict(counts=counts, tokens=tokens, batch_per_process=batch_per_process, lora_rank=lora_rank, dtype=dtype, vae_dtype=vae_dtype,
                  judges_bytes=judges_bytes, ema=ema, judges=tuple(judges), unknown_judges=tuple(unknown_judges), vae_phase_bytes=vae_phase_bytes,
                  vae_what=vae_what, prefetch=prefetch, overhead_bytes=overhead_bytes, audio_phase_bytes=audio_phase_bytes)
    return MemoryPlan(rows, counts.family, n, settings, gradient_checkpointing, inputs)


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

    def table(self) -> str:
        p = self.processes_per_node
        w = max([54, *(len(row.label) for row in self.rows)])
        lines = [f"host memory at load (and a reward batch), on the node of global rank 0 ({p} process{'es' if p != 1 else ''} on it):"]
        lines += [f"  {row.label:<{w}} {row.bytes / GIB:>8.2f}  {row.source}" for row in self.rows]
        lines.append(f"  {'total, all at once (an upper bound: the loads overlap)':<{w}} {self.total_bytes / GIB:>8.2f}")
        return "\n".join(lines)


def host_plan(counts: GeneratorCounts, *, sharded: bool, processes_per_node: int, dtype: Any = "bfloat16", vae_dtype: Any = "float32",
              judges_bytes: int = 0, judge_processes: int | None = None, reward_batch: tuple[int, int, int, int] | None = None,
              shared_encoders: bool = False) -> HostPlan:
    """Host memory per node while a run loads (bytes), on the node of global rank 0 (the fullest).

    Sharded, only global rank 0 reads the transformers' weights whole; every other process builds
    them on the meta device and receives its shards. Every process still loads its own VAE(s) on the
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
        raise ConfigsNotFound(missing + _missing_configs(_judge_models(rewards or {}, shape)[0]))
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
        audio_peak = counts.audio_decode(batch, frames, float(generator.fps), generator.vae_dtype)
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
        log.log(logging.INFO if limit is not None else logging.DEBUG, "%s\n%s%s", plan.table(limit), host.table(),
                "" if limit is not None else "\n  (no GPU and no memory_budget_gib: not enforced)")
    if limit is not None:
        reason = refusal(plan, limit)
        if reason is not None:
            raise RecipeError(reason)
    return plan
