"""Counting a generator's weights from its configs: each pipeline component built on the meta
device (:mod:`cac_align.plan.configs`) or, tiny, as built, and its parameters, its blocks' (the FSDP2
units) and its LoRA's width counted (:func:`counted_generator`).
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cac_align.config import RecipeError
from cac_align.plan.configs import ConfigsNotFound, cached_model_index, config_folders, extra_folders, meta_module, model_class

log = logging.getLogger(__name__)

GIB = 2**30


_BYTES = {"float32": 4, "fp32": 4, "float": 4, "float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "float64": 8, "fp64": 8}


def dtype_bytes(name: Any) -> int:
    """Bytes of one element of dtype ``name`` ("bfloat16", "float32", a ``torch.dtype``)."""
    import torch

    if isinstance(name, torch.dtype):
        return torch.empty((), dtype=name).element_size()
    try:
        return _BYTES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(_BYTES)}") from None


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


# Counted modules: module -> {(block classes, LoRA targets): its count}. The models a folder of recipes plans are the
# same few (built once: cac_align.plan.configs.meta_module), each counted once; an entry goes with its module
_COUNTED: "weakref.WeakKeyDictionary[Any, dict[tuple, ComponentCount]]" = weakref.WeakKeyDictionary()


def count_module(name: str, module: Any, block_classes: Sequence[str] = (), lora_targets: Sequence[str] = ()) -> ComponentCount:
    """Count ``module`` (real or on the meta device): its parameters, its blocks' and its LoRA width (once a
    process for a module and the same classes and targets).

    Args:
        name: its pipeline name.
        module: a ``torch.nn.Module``.
        block_classes: class names of its blocks; nested blocks count once, in the outer one.
        lora_targets: peft ``target_modules``; empty: no LoRA on it.

    Raises:
        ValueError: ``block_classes`` given and none found (the family names the wrong class).
    """
    import dataclasses

    key = (tuple(block_classes), tuple(lora_targets))
    known = _COUNTED.setdefault(module, {})
    if key not in known:
        known[key] = _count_module(name, module, block_classes, lora_targets)
    return dataclasses.replace(known[key], name=name)


def _count_module(name: str, module: Any, block_classes: Sequence[str], lora_targets: Sequence[str]) -> ComponentCount:
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
        vae_clip: the latent frames of one VAE call where the family decodes and encodes a video
            clip by clip, the clips joined in time (its ``vae_clip_latent_frames``: Helios's chunk,
            9), so the plan traces that loop; 0: the whole video in one call.
        one_row_a_forward: the transformer has no batch axis, each row (and each guidance branch)
            is its own forward (the family's ``one_row_a_forward``: Cosmos 3), so the backward
            recomputes one row's block at a time (:func:`~cac_align.plan.rows.activation_bytes`).
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
    vae_clip: int = 0
    one_row_a_forward: bool = False
    # the soundtracks' decode, to trace (a family's ``audio_decode`` over these modules:
    # ``(batch, num_frames, fps, dtype) -> (decode, latents, kept)``); None: not traced
    audio_decode: Any = field(default=None, compare=False, repr=False)
    # a family whose latent grid is not 1 + (F - 1) / frame_multiple frames says so (MiniMax-H3:
    # cac_align.gen.family, "Modular pipelines"): its latent frames of F frames, and every token its
    # transformer sees for one video (text and audio rows too); None: the formulas here
    latent_frames_of: Any = field(default=None, compare=False, repr=False)
    tokens_of: Any = field(default=None, compare=False, repr=False)
    # the transformer's config as its model holds it (a VACE's ``vace_layers``: the hints a sampling forward
    # holds, cac_align.plan.sampling); None where it was not kept
    transformer_config: Any = field(default=None, compare=False, repr=False)


def _transformer_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(hidden, heads, patch_t)`` of a video transformer's config (Wan: ``patch_size`` (t, h, w);
    LTX-2: ``patch_size_t``; Kandinsky 6: ``model_dim`` wide, heads of ``sum(axes_dims)``, its rotary axes; Cosmos 3:
    ``head_dim``, its patch in space only)."""
    if "num_attention_heads" not in config and "model_dim" in config:  # Kandinsky6Transformer3DModel: head_dim = sum(axes_dims)
        head_dim = sum(int(d) for d in config["axes_dims"])
        heads = int(config["model_dim"]) // head_dim
    else:
        heads = int(config["num_attention_heads"])
        head_dim = int(config["attention_head_dim"] if "attention_head_dim" in config else config["head_dim"])  # Cosmos3OmniTransformer: head_dim
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
                           vae_one_video=bool(getattr(family, "vae_one_video", False)), vae_clip=int(getattr(family, "vae_clip_latent_frames", 0)),
                           one_row_a_forward=bool(getattr(family, "one_row_a_forward", False)),
                           latent_frames_of=getattr(family, "latent_frames", None), tokens_of=getattr(family, "sequence_tokens", None),
                           audio_decode=functools.partial(family.audio_decode, modules) if hasattr(family, "audio_decode") else None,
                           transformer_config=dict(modules["transformer"].config))


def counted_generator(config: Any, lora: Any) -> GeneratorCounts | None:
    """Count the generator ``config`` names (a :class:`~cac_align.gen.generator.GeneratorConfig`),
    with the LoRA ``lora`` (:class:`~cac_align.gen.lora.LoraSettings`) on its adapted experts, from
    its own configs (module docstring); nothing is downloaded. ``lora`` None: no LoRA is counted (a
    job that samples the model as it is: ``bon``).

    Returns:
        The counts; None for the synthetic stand-in generator (nothing to plan).

    Raises:
        ConfigsNotFound: a hub id whose configs are not in the local cache.
    """
    if config.is_synthetic:
        return None
    family = config.family
    if lora is None:
        targets, experts = [], []
    else:
        targets = list(lora.target_modules) if lora.target_modules else list(family.lora_target_modules)
        experts = {"high": [0], "low": [1], "both": [0, 1]}[lora.experts]
    return counted_pipeline(config.name, family, targets, experts)


# A tiny in-process pipeline's counts, by (name, LoRA targets, adapted experts): built from a fixed seed, so
# the same every time; a folder's or the cache's are counted again (their files may change between calls)
_TINY_COUNTS: dict[tuple, GeneratorCounts] = {}
_TINY_MODULES: dict[tuple, dict[str, Any]] = {}  # its modules, built once, by (name, family)


def counted_pipeline(name: str, family: Any, targets: Sequence[str] = (), experts: Sequence[int] = (), key: str = "generator.name") -> GeneratorCounts:
    """Count the pipeline ``name`` as ``family`` runs it (:func:`count_components`), a LoRA on ``targets``
    of the experts ``experts`` (none: no LoRA), from its own configs: a tiny in-process pipeline built
    (once per process), a local folder's or a hub id's (the local Hugging Face cache, else the configs
    shipped with cac-align) on the meta device. Nothing is downloaded. ``key``: the recipe key naming it, for a
    local folder's error.

    Raises:
        ConfigsNotFound: a hub id whose configs are not in the local cache nor shipped.
    """
    from cac_align.gen.family import read_model_index
    from cac_align.loading import looks_like_path

    if name in family.tiny_names:  # built in-process in seconds (once a process), counted as built
        key = (name, family.title, tuple(targets), tuple(experts))
        if key not in _TINY_COUNTS:
            if (name, family.title) not in _TINY_MODULES:
                pipe = family.build_tiny(name, seed=0)
                import torch

                modules = {n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
                modules.update({n: getattr(pipe, n) for n in getattr(family, "extra_components", ())})  # LTX-2.5's diffusion decoder
                _TINY_MODULES[(name, family.title)] = modules
            _TINY_COUNTS[key] = count_components(name, family, _TINY_MODULES[(name, family.title)], targets, experts)
        return _TINY_COUNTS[key]
    index = read_model_index(name, key) if looks_like_path(name) else cached_model_index(name)
    folders = config_folders(name, index, family) if index is not None else None
    if folders is None:
        raise ConfigsNotFound([(name, "model_index.json and */config.json")])
    extra = extra_folders(name, getattr(family, "extra_components", ()))
    if extra is None:
        raise ConfigsNotFound([(name, f"{', '.join(f'{n}/config.json' for n in family.extra_components)}")])
    modules = {}
    for component, folder in folders.items():
        library, class_name = index[component][:2]  # a modular pipeline's entries add a loading spec
        modules[component] = meta_module(model_class(library, class_name), folder)
    for component, folder in extra.items():  # a model its pipeline class does not hold: the class its config.json names
        import json

        class_name = json.loads((folder / "config.json").read_text(encoding="utf-8"))["_class_name"]
        modules[component] = meta_module(model_class("diffusers", class_name), folder)
    return count_components(name, family, modules, targets, experts)


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
