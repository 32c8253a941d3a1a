"""What a generator is, read from its own files, and the one interface the generator jobs call.

A **family** is a kind of text-to-video pipeline that the jobs (``bon``, ``flow-grpo``, ``dpo``,
``repair``) and :mod:`cac_align.rl.credit` can run: its diffusers pipeline class, its experts and
timesteps, its latent grid, its text encoding and decoding, its repair pipeline and its own
sampling settings. Each family lives in one module of ``gen/families/`` (:mod:`cac_align.gen.families.wan`:
Wan-2.1, Wan2.2-TI2V-5B, Wan2.2-A14B and the image-to-video Wan2.1-I2V-14B and Wan2.2-I2V-A14B;
:mod:`cac_align.gen.families.ltx2`: LTX-2, LTX-2.3, LTX-2.5; ``hunyuan15``, ``minimax_h3``, ``kandinsky6``, ``helios``, ``cosmos3``) and is
an object with the methods of :class:`GeneratorFamily`; a job asks the family, never the pipeline
object, what a pipeline has, and never branches on which family it is. Adding a family is one
module in ``gen/families/`` listed in :data:`FAMILY_MODULES` (its ``FAMILIES`` and
``family_for_index``, its repair pipelines' ``REGENERATORS`` and ``regenerator_for_index``, its
tiny layout at its end), its recipes, its tests and its docs (Wan's repair pipeline, Wan-VACE,
older than this layout, keeps its own module, :mod:`cac_align.gen.families.vace`; LTX-2, grown past
one module, keeps its repair pipeline, LTX-2.5's diffusion decoder and its tiny layouts beside it:
:mod:`cac_align.gen.families.ltx2_repair`, :mod:`cac_align.gen.families.ltx25_decoder`,
:mod:`cac_align.gen.families.ltx2_tiny`).

**Which family a model is** (:func:`family_of`) comes from the model's own ``model_index.json``,
the file diffusers writes beside every pipeline: its ``_class_name`` (``WanPipeline``,
``LTX2Pipeline``, ...) and what it holds (a ``transformer_2`` and ``boundary_ratio``: the A14B's
second expert; ``expand_timesteps``: the TI2V-5B's per-token timesteps). It is read wherever the
files are:

1. a tiny in-process pipeline (``tiny-random:...``): its builder's family;
2. a local folder: its ``model_index.json``;
3. a hub id in the local Hugging Face cache (offline too): the cached ``model_index.json``;
4. a hub id not in the cache, with the hub reachable: diffusers' ``load_config`` downloads that
   one file (not the weights; then the three small files that give the model's own shift and VAE
   ratios: ``scheduler/scheduler_config.json``, ``vae/config.json``, ``transformer/config.json``);
5. only when no file can be read (offline, not cached): a hub id a family lists (its release
   checkpoints) gives that family, so recipes validate on a machine without the weights; any
   other name is a one-line error saying how to get the files.

A pipeline class no family runs is a one-line error naming the supported ones, never a silent
Wan-2.1. A release whose files cannot tell it from one a family runs, and which the jobs refuse (Cosmos 3's
text-to-image checkpoints name the same pipeline class as its video ones), is refused by name first: a family
module's optional ``REFUSED_HUB_IDS`` (hub id -> the reason, one line).

**Modular pipelines** (MiniMax-H3, :mod:`cac_align.gen.families.minimax_h3`): diffusers runs some models
only as a ``ModularPipeline`` of blocks, whose folder has a ``modular_model_index.json`` (its
``_class_name`` and ``_blocks_class_name``; each component ``[library, class, spec]``) instead of a
``model_index.json``; it is read in its place (cases 2-4). Such a family's ``generate`` runs the
blocks whole; its sampler runs what the blocks compute a step (the layout, the row timesteps, the
transformer) through the same methods as every family. For it the interface grew by optional
members, which a family without them does not need:

- ``side_sigmas(pipe, config, sigmas)``: the noise levels the side latents (audio) step down, where
  they are not the video's (MiniMax-H3's audio scheduler has its own shift; LTX-2's audio steps on
  the video's sigmas, so it has none);
- ``frame_remainder``: a clip is ``k * frame_multiple + frame_remainder`` frames (MiniMax-H3's VAE:
  ``17k + 5``); the others' 1 when absent;
- for the memory plan (:mod:`cac_align.plan`), where the generic formulas do not hold:
  ``latent_frames(num_frames)`` (MiniMax-H3: ``5n + 2`` of ``17n + 5``), ``sequence_tokens(num_frames,
  height, width)`` (every row of its packed sequence: text, audio and video) and
  ``unloaded_components`` (components its folder holds that the jobs never load: its
  ``transformer_ref``);
- ``audio_decode(modules, batch, num_frames, fps, dtype) -> (decode, latents, kept)``: what the soundtracks'
  decode of a sample batch runs, on the meta device (Kandinsky 6: its audio VAE and vocoder), which the
  memory plan traces and weighs against the frames' decode; absent, the sound's decode is not traced;
- for training the sound (``audio: trained`` of flow-grpo and nft; docs/audio.md), a family with
  ``audio``: ``audio_lora_target_modules`` (the layers of its audio branch, which a trainer's LoRA adds
  to :attr:`GeneratorFamily.lora_target_modules` where the sound is trained) and
  ``side_frames(side) -> (B, T_a, K)`` (its side latents with time first: a time window of the clip
  maps onto audio latent frames, ``T_a`` of them spread evenly over the clip);
- ``localized_credit``: False where :mod:`cac_align.rl.credit` cannot map a judge's window onto the
  family's latent frames (MiniMax-H3's ``5n + 2`` of ``17n + 5``); flow-grpo and nft then refuse
  ``advantage.localize`` in one line. True when absent.
- ``converted_shift``: the flow shift the release's diffusers checkpoint writes into its scheduler file
  without sampling at it (diffusers' Wan conversion writes 3.0 for the A14Bs, whose releases sample at
  12.0 and 5.0): a model whose file says that shift samples at the release's; any other shift in its
  file is its own (:func:`model_flow_shift`). None when absent: the file's shift always counts.
- **the VAE's ratios** (``spatial_multiple``, ``frame_multiple``) are the release's, unless the model's
  own ``vae/config.json`` and ``transformer/config.json`` say others (:func:`with_own_ratios`:
  :func:`family_of` returns the family with them); :func:`cac_align.gen.generator.build_generator`
  checks the loaded pipeline against them (:func:`check_ratios`).
- ``check_size(pipe, config)``: a size or frame count the family's models cannot take, refused in one
  line naming what works, once the pipeline is built and before anything samples
  (:func:`cac_align.gen.generator.build_generator` calls it for every job; LTX-2.5: its diffusion
  decoder's neighbourhood-attention kernels, read from the decoder's config). Any size that
  ``spatial_multiple`` and ``frame_multiple`` allow when absent.
- ``check_settings(config)``: settings of a :class:`~cac_align.gen.generator.GeneratorConfig` the family's models
  cannot take, refused in one line as the config is made, before anything loads (Helios: a ``num_frames`` its
  33-frame chunks would not return as asked). Nothing more than ``frame_multiple`` checks when absent.
- ``latent_preview_for(name) -> decode | None``: a stand-in for :meth:`GeneratorFamily.decode` where the model
  ``name`` decodes with a tiny random VAE whose frames barely move with the latents (Wan's:
  :meth:`cac_align.gen.families.wan.WanFamily.latent_preview_for`, decided from the model's ``vae/config.json``
  or its tiny layout), None for a real one; ``generator.decode: latent_preview`` is refused in one line where it is
  absent or gives None (:func:`cac_align.gen.generator.video_decode`).
- for an **autoregressive** family (Helios: a video is chunks, each its own denoising loop conditioned on the chunks
  before it; docs/helios.md): ``chunks(config) -> K`` (the loops of one video; the sampler runs them in order and
  the :class:`~cac_align.gen.generator.Trajectory` flattens them, ``chunks = K``), ``chunk_conditioning(cond, finals,
  like)`` (the prompts' conditioning with what a chunk reads of the earlier chunks' final latents ``finals``; ``like``:
  a latent of the chunk), ``chunk_frames`` (pixel frames a chunk decodes to: its VAE restarts there, so a judge's
  window maps onto latent frames chunk by chunk, :mod:`cac_align.rl.credit`) and ``pure_noise_start`` (its schedule
  starts short of sigma 1 at pure noise: Flow-GRPO's noise scale takes the ``s = 1`` form at its first step). One
  loop, no history, no chunks when absent: every other family, unchanged.

**Image-to-video.** A family says whether it animates an image (:attr:`GeneratorFamily.image_input`:
"none", "optional" for a model that takes text alone or text and a first frame, as the TI2V-5B and
LTX-2 do, "required" for an image-to-video model such as ``WanImageToVideoPipeline``'s), and
encodes the images into the same :class:`Conditioning` as the prompts (:meth:`encode_images`). The
image conditions the generation in one of two ways, both carried as named tensors of that
conditioning:

- ``fixed`` ``(B, C, k, H', W')``: the first ``k`` latent frames are the image's and stay so at
  every step (the TI2V-5B's first frame at timestep 0; LTX-2's conditioned first frame). They are
  not part of what the sampler steps, records or scores: the sampler's latents and every
  log-probability and loss cover the generated frames only (:func:`fixed_frames`,
  :func:`whole_latents` puts them back for decoding);
- ``condition`` (channels concatenated to the transformer's input: ``WanImageToVideoPipeline``'s
  mask and image latents) and ``image_embeds`` (Wan2.1-I2V's CLIP tokens): inputs of the
  transformer only, never latents.

**A decoder that samples** (why :meth:`GeneratorFamily.decode` takes ``seeds``). From LTX-2.5 on,
a checkpoint's video decoder is itself a small diffusion model (diffusers 0.42.1
``LTX2VideoDiffusionDecoderModel``) that draws the pixel noise it denoises, so decoding is
sampling, not a function of the latents. For a seed to still name one video, decoding must know the
video's seed: the interface grew by that one argument (the family derives the decoder's generator
from it: :func:`cac_align.gen.families.ltx25_decoder.decoder_generator`), and ``flow-grpo`` passes the seeds it
sampled with; ``bon`` already gives a family its seeds (:meth:`GeneratorFamily.generate`). The
draw is never part of a log-probability: Flow-GRPO's ratios and losses cover the transformer's
latents only (the decoder is frozen, after the last step, and its noise is no action of the
policy), so a reward on such a video also scores the decoder's draw, as it scores a VAE's
decoding.

The prompt file gives the images (:func:`cac_align.run.input_files.read_prompt_rows`);
:func:`check_prompt_images` refuses, in one line, an image for a text-only model, text alone for
an image-to-video model and a last frame for a model that takes none.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

__all__ = ["FAMILY_MODULES", "IMAGE_INPUTS", "NoContextParallel", "Conditioning", "check_prompt_images", "fixed_frames", "image_runs", "whole_latents", "Generated", "GeneratorFamily", "Regenerator", "UnknownGeneratorError", "check_context_parallel_split", "families", "family_from_index", "family_of", "has_component",
           "check_ratios", "model_flow_shift", "ratios_from_configs", "read_model_file", "read_model_index", "read_scheduler_config", "regenerator_of",
           "check_parts", "take_model_settings", "with_own_ratios"]

# The modules that define families, in the order a model_index.json is offered to them: each lists
# its generators (``FAMILIES``, ``family_for_index``) and/or its repair pipelines (``REGENERATORS``,
# ``regenerator_for_index``); Wan's repair pipeline, Wan-VACE, and LTX-2's, its condition pipeline,
# each have a module of their own.
FAMILY_MODULES = (
    "cac_align.gen.families.wan",
    "cac_align.gen.families.vace",
    "cac_align.gen.families.ltx2",
    "cac_align.gen.families.ltx2_repair",
    "cac_align.gen.families.hunyuan15",
    "cac_align.gen.families.minimax_h3",
    "cac_align.gen.families.kandinsky6",
    "cac_align.gen.families.helios",
    "cac_align.gen.families.cosmos3",
)


# The index file of a modular pipeline (diffusers' ModularPipeline.save_pretrained), read where a folder or
# repository has no model_index.json: MiniMax-H3 ships only as one
MODULAR_INDEX = "modular_model_index.json"


# What a family's image_input says: it takes no image, text or text and an image, or needs an image.
IMAGE_INPUTS = ("none", "optional", "required")


class UnknownGeneratorError(ValueError):
    """A model whose files name a pipeline no family runs, or that is not a pipeline at all."""


class Conditioning:
    """A batch of text conditioning: named tensors whose first dimension is the prompt (Wan:
    ``embeds``; LTX-2: its connectors' video and audio embeddings and their attention mask). Rows are taken
    and joined like a tensor's (``cond[lo:hi]``, ``cond[[0, 0, 1]]``, :meth:`cat`), so the jobs
    handle any family's conditioning alike."""

    def __init__(self, **tensors: Any):
        if not tensors:
            raise ValueError("a Conditioning holds at least one tensor")
        self.tensors = tensors

    def __getattr__(self, name: str) -> Any:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def __getitem__(self, rows: Any) -> "Conditioning":
        return Conditioning(**{k: v[rows] for k, v in self.tensors.items()})

    def to(self, *args: Any, **kwargs: Any) -> "Conditioning":
        return Conditioning(**{k: v.to(*args, **kwargs) for k, v in self.tensors.items()})

    @staticmethod
    def cat(parts: Sequence["Conditioning"]) -> "Conditioning":
        import torch

        return Conditioning(**{k: torch.cat([p.tensors[k] for p in parts]) for k in parts[0].tensors})

    def join(self, other: "Conditioning | None") -> "Conditioning":
        """These tensors and ``other``'s (the same rows; an image's beside its prompt's)."""
        if other is None:
            return self
        clash = set(self.tensors) & set(other.tensors)
        if clash:
            raise ValueError(f"both conditionings hold {sorted(clash)}")
        return Conditioning(**self.tensors, **other.tensors)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i``'s tensors by name (what a cache file stores; :meth:`stack` reads them back)."""
        return {k: v[i].cpu().contiguous() for k, v in self.tensors.items()}

    @staticmethod
    def stack(rows: Sequence[dict[str, Any]]) -> "Conditioning":
        import torch

        return Conditioning(**{k: torch.stack([r[k] for r in rows]) for k in rows[0]})


@dataclass
class Generated:
    """Videos as a pipeline made them.

    Attributes:
        frames: uint8 ``(B, F, H, W, 3)``.
        audio: float32 ``(B, channels, samples)`` waveforms in [-1, 1] (LTX-2), or None.
        sample_rate: the audio's samples per second.
    """

    frames: Any
    audio: Any = None
    sample_rate: int | None = None


class GeneratorFamily(Protocol):
    """A kind of text-to-video pipeline, as the generator jobs use it (module docstring).

    Attributes:
        name: the family's short name ("wan2.1", "wan2.2-ti2v", "wan2.2-a14b", "wan2.1-i2v",
            "wan2.2-i2v-a14b", "ltx2").
        title: how messages name it ("Wan2.2-TI2V-5B").
        pipeline_class: the diffusers class of its pipeline (text-to-video, or image-to-video:
            ``WanImageToVideoPipeline``).
        experts: its transformers (the Wan2.2-A14B's high- and low-noise experts: 2).
        spatial_multiple: frame sides must be multiples of this (VAE compression x patch).
        frame_multiple: ``num_frames`` must be ``k * frame_multiple + 1`` (the VAE's causal time
            compression).
        audio: it generates an audio track with the video (LTX-2).
        defaults: the :class:`~cac_align.gen.generator.GeneratorConfig` settings a recipe may
            leave unset, with the family's values (its module says where each comes from); a
            setting not listed here does not apply to the family and must stay unset.
        tiny_names: ``generator.name`` of its tiny in-process pipelines.
        hub_ids: its release checkpoints, known by name when their files cannot be read.
        lora_target_modules: what a trainer's LoRA adapts when a recipe does not say (Wan: every
            attention projection; LTX-2: the video branch).
        min_inference_steps: the fewest sampling steps its schedule takes (LTX-2: 2).
        block_classes: the class names of its transformer's blocks: one FSDP2 unit each
            (:mod:`cac_align.gen.parallel`).
        encoder_components: the pipeline components that encode prompts (text encoder, LTX-2's
            connectors): on the device only while they encode when the generator is sharded.
        image_input: whether it animates an image (:data:`IMAGE_INPUTS`: "none", "optional",
            "required"; module docstring).
        last_image: it also takes the video's last frame (Wan's first-last-frame mode).
        extra_components: models of a checkpoint that its pipeline class does not hold, each in a
            folder of that name beside ``model_index.json`` and kept as an attribute of the loaded
            pipeline (LTX-2.5's ``diffusion_decoder``): the memory plan counts them too.
    """

    name: str
    title: str
    pipeline_class: str
    experts: int
    spatial_multiple: int
    frame_multiple: int
    audio: bool
    defaults: Mapping[str, Any]
    tiny_names: tuple[str, ...]
    hub_ids: tuple[str, ...]
    lora_target_modules: tuple[str, ...]
    min_inference_steps: int
    block_classes: tuple[str, ...]
    encoder_components: tuple[str, ...]
    image_input: str
    last_image: bool
    extra_components: tuple[str, ...]

    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline in ``source`` (a folder or hub id), safetensors only; ``components``: modules
        to take instead of loading them, by component name (diffusers' ``from_pretrained(...,
        transformer=...)``; a sharded run's empty transformers)."""
        ...

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        """The tiny random pipeline ``name`` (one of :attr:`tiny_names`), built in-process."""
        ...

    def context_parallel_plan(self, transformer: Any) -> Any:
        """The plan given to diffusers' ``enable_parallelism(cp_plan=...)`` for ``transformer``: which
        inputs are split over a context-parallel group and which output is gathered (diffusers'
        ``_cp_plan`` format); raises ``RecipeError`` with the reason where the family cannot split.
        Call it before ``enable_parallelism``: it may prepare the transformer (LTX-2 keeps some
        attentions on each process's own tokens; in one process that changes nothing)."""
        ...

    def check_context_parallel(self, config: Any, degree: int, transformer_config: Mapping[str, Any]) -> None:
        """Before anything loads: raises ``RecipeError`` naming the setting to change when a
        context-parallel group of ``degree`` cannot split ``config``'s video (its latent tokens, the
        heads of ``transformer_config``, the transformer's ``config.json``)."""
        ...

    def denoiser(self, pipe: Any) -> Any:
        """The ``torch.nn.Module`` that gives the guided velocity at a step, as the pipeline
        computes it: ``denoiser(latents, timestep, cond, negative, guidance, dtype, side=None)``
        (video velocity; with ``side`` latents, a pair of video and side velocities)."""
        ...

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, Any]:
        """The text conditioning of ``prompts`` and, when ``guidance`` (:meth:`guidance`) asks for
        classifier-free guidance, of the negative prompt (None: the model's default one):
        :class:`Conditioning` (rows = prompts), and None without CFG."""
        ...

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """The image conditioning of ``images`` (:class:`~cac_align.run.input_files.PromptImage`,
        one per row), fitted to ``config``'s frame size as the family's image-to-video pipeline fits
        it: a :class:`Conditioning` whose rows are the images (module docstring: ``fixed``,
        ``condition``, ``image_embeds``), to :meth:`Conditioning.join` with the prompts'. Only a
        family whose :attr:`image_input` is not "none"."""
        ...

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls one sample of ``num_inference_steps`` makes: the length of
        :meth:`schedule`'s timesteps, from the setting alone (the memory plan and the network table
        count what the sampler runs: MiniMax-H3's grid of N points is N - 1 steps)."""
        ...

    def schedule(self, pipe: Any, config: Any) -> tuple[Any, Any]:
        """``(sigmas (N + 1,), timesteps (N,))``: the pipeline's own sampling schedule."""
        ...

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[Any, Any]:
        """The initial noise as the pipeline draws it, sample ``i`` from ``generators[i]``:
        ``(latents (B, C, F', H', W') float32, side latents or None)``."""
        ...

    def decode(self, pipe: Any, latents: Any, side: Any = None, seeds: Sequence[int] | None = None) -> Any:
        """Final latents to uint8 frames ``(B, F, H, W, 3)``, as the pipeline decodes them.
        ``seeds``: each video's noise seed, for a decoder that samples (LTX-2.5's diffusion decoder
        draws from a generator derived from it; module docstring, "A decoder that samples"); a
        deterministic decoder ignores them. The jobs always pass them."""
        ...

    def encode_video(self, pipe: Any, frames: Any) -> Any:
        """uint8 frames ``(F, H, W, 3)`` to normalized latents ``(C, F', H', W')`` float32."""
        ...

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        """``(temporal, spatial, patch)``: pixel frames per latent frame (after the first),
        pixels per latent side, and the transformer's patch ``(t, h, w)`` in latents."""
        ...

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """The guidance settings of ``config`` the family's velocity uses; ``guided=False``: the
        plain conditional velocity (one forward a step). ``fps``: the frame rate the video plays
        at, where it differs from ``config.fps`` (a pair's, a repaired input's)."""
        ...

    def decode_audio(self, pipe: Any, side: Any) -> tuple[Any, int]:
        """Final side latents (LTX-2's audio) to waveforms ``(B, channels, samples)`` and their
        sample rate; only a family with ``audio``."""
        ...

    def side_shape(self, pipe: Any, num_frames: int, fps: float) -> tuple[int, ...]:
        """The shape of one video's side latents (LTX-2's packed audio) for ``num_frames`` at
        ``fps``; only a family with ``audio``."""
        ...

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """:class:`Generated` videos (and soundtracks), one per (prompt, seed), as the pipeline
        makes them; with ``images`` (one :class:`~cac_align.run.input_files.PromptImage` per
        prompt), as the family's image-to-video pipeline animates them."""
        ...


class NoContextParallel:
    """What a family that cannot split its forward over processes says (Kandinsky 6, MiniMax-H3, Helios): both
    context-parallel hooks of :class:`GeneratorFamily` refuse in one line, ``context_parallel_refusal`` (a class
    attribute of the family: why, and what to use instead)."""

    context_parallel_refusal: ClassVar[str] = ""

    def context_parallel_plan(self, transformer: Any) -> Any:
        from cac_align.config import RecipeError

        raise RecipeError(self.context_parallel_refusal)

    def check_context_parallel(self, config: Any, degree: int, transformer_config: Mapping[str, Any]) -> None:
        if degree > 1:
            from cac_align.config import RecipeError

            raise RecipeError(self.context_parallel_refusal)


class Regenerator(Protocol):
    """A family's repair pipeline, as ``cac-align repair`` uses it (Wan-VACE:
    :class:`cac_align.gen.families.vace.VaceRegenerator`; LTX-2's condition pipeline:
    :class:`cac_align.gen.families.ltx2_repair.LTX2Regenerator`).

    Attributes:
        name, title, pipeline_class, experts, tiny_names, hub_ids: as a generator family's.
        frame_multiple, spatial_multiple: the frames ``k * frame_multiple + 1`` and the sides'
            multiple it regenerates.
        boxes: it keeps pixels inside a frame (regenerates boxes), not only whole frames.
        defaults: the ``RegeneratorConfig`` settings a recipe may leave unset.
        min_inference_steps: the fewest sampling steps its schedule takes.
    """

    name: str
    title: str
    pipeline_class: str
    experts: int
    tiny_names: tuple[str, ...]
    hub_ids: tuple[str, ...]
    frame_multiple: int
    spatial_multiple: int
    boxes: bool
    defaults: Mapping[str, Any]
    min_inference_steps: int

    def load(self, name: str, *, dtype: str, vae_dtype: str, device: str, key: str) -> Any:
        """The pipeline ``name`` names, on ``device``."""
        ...

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        """The tiny random pipeline ``name``, built in-process."""
        ...

    def plan(self, region: Any, fps: float, condition_s: float) -> Any:
        """The segment, padding and mask that regenerate ``region``
        (:class:`cac_align.gen.families.vace.RepairPlan`)."""
        ...

    def regenerate(self, pipe: Any, frames: Any, plan: Any, prompt: str, seed: int, config: Any) -> Any:
        """The fill of ``plan``'s segment: uint8 ``(stop - start, H, W, 3)`` on the input's grid."""
        ...


# What each family module lists: its generators, and its repair pipelines (regenerators).
_KINDS = {"generator": ("FAMILIES", "family_for_index"), "regenerator": ("REGENERATORS", "regenerator_for_index")}


def families(kind: str = "generator") -> tuple[Any, ...]:
    """Every family of :data:`FAMILY_MODULES`, in order (``kind="regenerator"``: their repair
    pipelines, e.g. Wan-VACE)."""
    found: list[Any] = []
    for module in FAMILY_MODULES:
        found.extend(getattr(importlib.import_module(module), _KINDS[kind][0], ()))
    return tuple(found)


def _supported(kind: str = "generator") -> str:
    by_class: dict[str, list[str]] = {}
    for family in families(kind):
        by_class.setdefault(family.pipeline_class, []).append(family.title)
    return "; ".join(f"{cls} ({', '.join(titles)})" for cls, titles in by_class.items())


def family_from_index(index: Mapping[str, Any], where: str, key: str = "generator.name", kind: str = "generator") -> Any:
    """The family whose pipeline ``index`` (a ``model_index.json``) describes.

    Raises:
        UnknownGeneratorError: no family runs that pipeline class (one line, naming those that do).
    """
    for module in FAMILY_MODULES:
        recognize = getattr(importlib.import_module(module), _KINDS[kind][1], None)
        try:
            family = recognize(index) if recognize is not None else None
        except UnknownGeneratorError as exc:  # a pipeline class a family runs, of a release it does not know
            raise UnknownGeneratorError(f"{key}={where!r} is {exc}") from None
        if family is not None:
            return family
    name = index.get("_class_name")
    job = "generator job" if kind == "generator" else "repair"
    raise UnknownGeneratorError(f"{key}={where!r} is a {name or 'model without a pipeline class'}, which no {job} runs; supported: {_supported(kind)}")


def check_prompt_images(family: Any, images: Sequence[Any], where: str, key: str = "generator.name") -> None:
    """Refuse, in one line, prompts whose images do not fit ``family``: an image for a text-only
    model, a prompt without one for an image-to-video model, a last frame for a model that takes
    none, or a file that mixes lines with and without images.

    Args:
        family: the generator's family.
        images: each prompt's :class:`~cac_align.run.input_files.PromptImage`, or None.
        where: the prompt file (named in the error).

    Raises:
        RecipeError: as above.
    """
    from cac_align.config import RecipeError

    given = [i for i, image in enumerate(images) if image is not None]
    if given and family.image_input == "none":
        raise RecipeError(f"{where}: prompt {given[0] + 1} gives an image, and {family.title} ({key}) is a text-to-video model that takes "
                          "none; name an image-to-video model (Wan2.1-I2V, Wan2.2-I2V-A14B, Wan2.2-TI2V-5B, LTX-2) or drop the images")
    if len(given) < len(images) and (family.image_input == "required" or given):
        missing = next(i for i, image in enumerate(images) if image is None)
        what = f"{family.title} ({key}) is an image-to-video model" if family.image_input == "required" else "other lines of the file give one"
        how = "give every line an \"image\"" if str(where).endswith(".jsonl") else 'write the prompts as JSONL, {"prompt": ..., "image": PATH} per line'
        raise RecipeError(f"{where}: prompt {missing + 1} gives no image, and {what}: {how}")
    last = [i for i, image in enumerate(images) if image is not None and image.last_image is not None]
    if last and not family.last_image:
        raise RecipeError(f"{where}: prompt {last[0] + 1} gives a last_image, and {family.title} takes a first frame only; "
                          "drop \"last_image\" (Wan2.1-I2V and Wan2.2-I2V-A14B take one)")


def image_runs(images: Sequence[Any]) -> list[tuple[int, int]]:
    """``(lo, hi)`` of each run of consecutive rows whose images are equal: a family's
    image-to-video pipeline takes one image per call."""
    starts = [i for i in range(len(images)) if i == 0 or images[i] != images[i - 1]]
    return list(zip(starts, starts[1:] + [len(images)]))


def fixed_frames(cond: Any) -> int:
    """How many leading latent frames an image fixes in ``cond`` (its ``fixed`` tensor; module
    docstring): 0 for text-to-video and for channel-conditioned image-to-video."""
    return int(cond.fixed.shape[2]) if cond is not None and cond.has("fixed") else 0


def whole_latents(cond: Any, latents: Any) -> Any:
    """The generated ``latents`` ``(B, C, F' - k, H', W')`` with the ``k`` frames the image fixes
    in front: the whole video's latents, as the pipeline decodes them (``latents`` unchanged
    when nothing is fixed)."""
    import torch

    k = fixed_frames(cond)
    if not k:
        return latents
    return torch.cat([cond.fixed.to(latents.device, latents.dtype), latents], dim=2)


def take_model_settings(config: Any, keys: Sequence[str], defaults: Mapping[str, Any]) -> list[str]:
    """Fill each of ``config``'s ``keys`` left unset (None) with the model's value in ``defaults``
    (a family's); return the keys set that the model does not list (for the caller's error)."""
    foreign = []
    for key in keys:
        if key in defaults:
            if getattr(config, key) is None:
                setattr(config, key, copy.deepcopy(defaults[key]))
        elif getattr(config, key) is not None:
            foreign.append(key)
    return foreign


def has_component(index: Mapping[str, Any], name: str) -> bool:
    """Whether a ``model_index.json`` holds component ``name`` (diffusers writes ``[library,
    class]``, and ``[null, null]`` for an optional component that is absent)."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) in (2, 3) and entry[1] is not None  # 3: a modular pipeline's, with its loading spec


def read_model_index(name: str, key: str = "generator.name") -> dict[str, Any] | None:
    """The ``model_index.json`` of ``name`` (a local folder or a hub id; module docstring, cases
    2-4), or None when it cannot be read without a network the machine does not have.

    Raises:
        WeightsNotFoundError: a local path that is not a folder, or an unreadable file.
        UnknownGeneratorError: a folder or repository without a ``model_index.json`` (not a
            diffusers pipeline).
    """
    from cac_align.loading import WeightsNotFoundError, looks_like_path

    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise WeightsNotFoundError(f"{key}={name!r}: no such directory. Point '{key}' at a folder written by a diffusers pipeline's "
                                       "save_pretrained (or `hf download <repo> --local-dir <dir>`), or at a hub id")
        index_file = folder / "model_index.json"
        if not index_file.is_file() and (folder / MODULAR_INDEX).is_file():  # a modular pipeline's folder (MiniMax-H3)
            index_file = folder / MODULAR_INDEX
        return _read_index_file(index_file, name, key)
    return _hub_index(name, key)


def _read_index_file(path: Path, name: str, key: str) -> dict[str, Any]:
    from cac_align.loading import WeightsNotFoundError

    if not path.is_file():
        raise UnknownGeneratorError(f"{key}={name!r} has no model_index.json: it is not a diffusers pipeline (save one with the pipeline's "
                                    f"save_pretrained); supported: {_supported()}")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"{key}={name!r}: cannot read {path}: {exc}") from exc
    if not isinstance(index, dict):
        raise UnknownGeneratorError(f"{key}={name!r}: {path} is not a diffusers model_index.json (not a JSON object)")
    return index


@functools.lru_cache(maxsize=64)
def _hub_index_cached(name: str) -> tuple[str, str] | None:
    """``(path, text)`` of a hub id's model_index.json from the cache or a download; None when
    neither can be had (offline, not cached). Asked once per process per name."""
    from huggingface_hub import try_to_load_from_cache

    from cac_align.loading import hub_reachable

    try:
        cached = try_to_load_from_cache(name, "model_index.json")
        if not isinstance(cached, str):  # a modular pipeline's repository (MiniMax-H3)
            cached = try_to_load_from_cache(name, MODULAR_INDEX)
    except ValueError:  # not a valid repo id
        cached = None
    if isinstance(cached, str):
        return cached, Path(cached).read_text(encoding="utf-8")
    if not hub_reachable():
        return None
    from diffusers import DiffusionPipeline

    try:  # only this file, not the weights
        index = DiffusionPipeline.load_config(name)
    except (OSError, ValueError):
        try:  # a modular pipeline's repository has modular_model_index.json instead
            from huggingface_hub import hf_hub_download

            return f"{name} ({MODULAR_INDEX})", Path(hf_hub_download(name, MODULAR_INDEX)).read_text(encoding="utf-8")
        except (OSError, ValueError):
            return None
    return f"{name} (model_index.json)", json.dumps(dict(index))


def _hub_index(name: str, key: str) -> dict[str, Any] | None:
    found = _hub_index_cached(name)
    if found is None:
        return None
    where, text = found
    try:
        index = json.loads(text)
    except ValueError as exc:
        from cac_align.loading import WeightsNotFoundError

        raise WeightsNotFoundError(f"{key}={name!r}: cannot read {where}: {exc}") from exc
    return index if isinstance(index, dict) else None


# Where a pipeline's folder or repository keeps its scheduler's settings (diffusers' save_pretrained)
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def read_scheduler_config(name: str) -> dict[str, Any] | None:
    """The ``scheduler/scheduler_config.json`` of ``name`` (a local folder or a hub id), read where
    its ``model_index.json`` is (module docstring, cases 2-4: the folder, the local hub cache, or a
    download of that one file); None where there is none to read (a tiny in-process pipeline, a
    folder or repository without it, offline and not cached) or it is not a JSON object."""
    return read_model_file(name, SCHEDULER_CONFIG)


def read_model_file(name: str, filename: str) -> dict[str, Any] | None:
    """The JSON object in ``filename`` (``vae/config.json``, ...) of the model ``name``, read as
    :func:`read_scheduler_config` reads its file; None where it cannot be read."""
    from cac_align.loading import looks_like_path

    if looks_like_path(name):
        path: Path | None = Path(name).expanduser() / filename
    else:
        path = _hub_file(name, filename)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_file(name: str, filename: str) -> Path | None:
    """A hub id's ``filename`` from the local cache, else downloaded alone where the hub is reachable."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    from cac_align.loading import hub_reachable

    try:
        cached = try_to_load_from_cache(name, filename)
    except ValueError:  # not a valid repo id
        return None
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None or not hub_reachable():  # cached as absent (huggingface_hub's marker), or offline
        return None
    try:
        return Path(hf_hub_download(name, filename))
    except (OSError, ValueError, EntryNotFoundError):  # no such file there (a modular pipeline has no scheduler/), no access
        return None


def model_flow_shift(family: Any, name: str) -> float | None:
    """The flow shift the model ``name`` of ``family`` samples at when a recipe leaves
    ``generator.flow_shift`` unset: its own scheduler file's, or the release's (``family.defaults``).

    The rule (for every family whose ``defaults`` hold a shift): the shift in the model's
    ``scheduler/scheduler_config.json`` (``flow_shift`` or ``shift``) counts, unless it is the one
    the release's own diffusers checkpoint carries without sampling at it (``family.converted_shift``:
    diffusers' Wan conversion writes 3.0 into the A14Bs' schedulers, whose releases sample at 12.0
    and 5.0), or the file says nothing or cannot be read (a tiny in-process pipeline, a listed hub id
    offline): then the release's value. A family whose release value is None (Wan-2.1, Kandinsky 6)
    reads its checkpoint's scheduler when it samples, and one with no shift setting (LTX-2's
    shift by the sequence length, MiniMax-H3's two schedulers) reads its own files already."""
    release = family.defaults.get("flow_shift")
    if release is None or name in family.tiny_names:
        return release
    settings = read_scheduler_config(name) or {}
    own = next((settings[k] for k in ("flow_shift", "shift") if isinstance(settings.get(k), (int, float)) and not isinstance(settings.get(k), bool)), None)
    if own is None or settings.get("use_dynamic_shifting") or float(own) == getattr(family, "converted_shift", None):
        return release
    return float(own)


# The VAE config fields that say how much it compresses (diffusers: AutoencoderKLHunyuanVideo15,
# AutoencoderKLHunyuanVideo, AutoencoderKLLTX2Video name them so; AutoencoderKLWan scale_factor_*)
_SPATIAL_FIELDS = ("spatial_compression_ratio", "scale_factor_spatial")
_TEMPORAL_FIELDS = ("temporal_compression_ratio", "scale_factor_temporal")


def _positive_int(data: Mapping[str, Any], fields: Sequence[str]) -> int | None:
    for field in fields:
        value = data.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@functools.lru_cache(maxsize=32)
def _derived_ratios(vae_config: str) -> tuple[int | None, int | None]:
    """``(spatial, temporal)`` compression of a VAE whose ``config.json`` leaves them null, as its diffusers class
    derives them (AutoencoderKLLTX2Video: from ``patch_size``, ``patch_size_t`` and ``spatio_temporal_scaling``):
    the class named by ``_class_name`` built from the config on the meta device (no weight, no memory) and its
    ``spatial_compression_ratio`` / ``temporal_compression_ratio`` read; ``(None, None)`` where that cannot be done."""
    import warnings

    import diffusers
    import torch

    config = json.loads(vae_config)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_config"):
        return None, None
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            module = cls.from_config(config)
    except Exception:  # a config its class refuses: the file says nothing we can read
        return None, None
    values = (getattr(module, "spatial_compression_ratio", None), getattr(module, "temporal_compression_ratio", None))
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None for v in values)  # type: ignore[return-value]


def ratios_from_configs(vae: Mapping[str, Any], transformer: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(spatial_multiple, frame_multiple)`` from a model's ``vae/config.json`` and
    ``transformer/config.json``: the VAE's space compression x the transformer's patch side, and its
    time compression x the patch's frames; None where either file does not say (the VAE names no
    compression, the transformer no patch)."""
    spatial, temporal = _positive_int(vae, _SPATIAL_FIELDS), _positive_int(vae, _TEMPORAL_FIELDS)
    nulls = [field for field in (*_SPATIAL_FIELDS, *_TEMPORAL_FIELDS) if field in vae and vae[field] is None]
    if (spatial is None or temporal is None) and nulls:  # null in the file: diffusers writes null where its class derives them
        derived = _derived_ratios(json.dumps(dict(vae), sort_keys=True, default=str))
        spatial, temporal = spatial or derived[0], temporal or derived[1]
    patch = transformer.get("patch_size")
    if isinstance(patch, (list, tuple)) and len(patch) == 3:  # Wan, Kandinsky: (t, h, w)
        patch_t, patch_h = patch[0], patch[1]
    else:  # HunyuanVideo-1.5, LTX-2: one side, and patch_size_t apart
        patch_t, patch_h = transformer.get("patch_size_t", 1), patch
    if spatial is None or temporal is None or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (patch_t, patch_h)):
        return None
    return spatial * patch_h, temporal * patch_t


def with_own_ratios(family: Any, name: str) -> Any:
    """``family`` with the frame sides' and the frame count's multiples of the model ``name``'s own
    files (:func:`ratios_from_configs`: a fine-tune whose VAE compresses 4x in space and 2x in time
    takes sides of 4 x patch and ``2k + 1`` frames), or ``family`` itself where they are the
    release's, the files say nothing, or the family counts frames otherwise (``frame_remainder``:
    MiniMax-H3's ``17k + 5``). Every job reads the ratios from the family its config names, so a
    recipe is validated for the model's own VAE before anything loads."""
    import dataclasses

    if getattr(family, "frame_remainder", 1) != 1 or not dataclasses.is_dataclass(family):
        return family
    vae, transformer = read_model_file(name, "vae/config.json"), read_model_file(name, "transformer/config.json")
    own = ratios_from_configs(vae, transformer) if vae is not None and transformer is not None else None
    if own is None or own == (family.spatial_multiple, family.frame_multiple):
        return family
    return dataclasses.replace(family, spatial_multiple=own[0], frame_multiple=own[1])


def check_ratios(family: Any, pipe: Any, key: str = "generator.name") -> None:
    """Raises ``ValueError`` in one line where the loaded ``pipe``'s VAE and patch (``family.latent_grid``)
    are not the ratios its recipe was validated for (``family.spatial_multiple`` / ``frame_multiple``:
    the release's, or its files' where :func:`with_own_ratios` read them). The time ratio is not
    checked for a family that counts frames otherwise (``frame_remainder``)."""
    temporal, spatial, patch = family.latent_grid(pipe)
    sides, frames = spatial * patch[1], temporal * patch[0]
    if sides != family.spatial_multiple or (getattr(family, "frame_remainder", 1) == 1 and frames != family.frame_multiple):
        raise ValueError(f"{key}: the loaded pipeline's VAE and patch take sides in multiples of {sides} and {frames}k + 1 frames, but the "
                         f"recipe was validated for {family.spatial_multiple} and {family.frame_multiple}k + 1 ({family.title}'s, from its files): "
                         "write the VAE's spatial_compression_ratio and temporal_compression_ratio into its vae/config.json")


def family_of(name: str, key: str = "generator.name") -> GeneratorFamily:
    """The family of the model ``name`` (module docstring: its own files decide).

    Raises:
        UnknownGeneratorError: its files name a pipeline no family runs.
        WeightsNotFoundError: its files cannot be read and its name is not a listed one.
    """
    return _resolve(name, key, "generator")


def regenerator_of(name: str, key: str = "regenerator.name") -> Any:
    """The repair pipeline (regenerator) the model ``name`` is, found as :func:`family_of` finds a
    generator: Wan-VACE (:class:`cac_align.gen.families.vace.VaceRegenerator`), LTX-2's condition pipeline."""
    return _resolve(name, key, "regenerator")


def _resolve(name: str, key: str, kind: str) -> Any:
    if kind == "generator":
        for module in FAMILY_MODULES:  # releases refused by name (module docstring)
            reason = getattr(importlib.import_module(module), "REFUSED_HUB_IDS", {}).get(name)
            if reason is not None:
                raise UnknownGeneratorError(f"{key}={name!r} is {reason}")
    for family in families(kind):
        if name in family.tiny_names:
            return family
    index = read_model_index(name, key)
    if index is not None:
        found = family_from_index(index, name, key, kind)
        check_parts(found, index, name, key)
        return with_own_ratios(found, name) if kind == "generator" else found
    for family in families(kind):
        if name in family.hub_ids:
            return family
    from huggingface_hub import constants

    from cac_align.loading import WeightsNotFoundError

    raise WeightsNotFoundError(
        f"{key}={name!r}: cannot tell which model it is: its model_index.json is not in the local cache and the hub "
        f"({constants.ENDPOINT}) cannot be reached. Download it where there is network (`hf download {name} "
        f"--local-dir DIR`) and set {key}=DIR"
    )


def check_parts(family: Any, index: Mapping[str, Any], name: str, key: str = "generator.name") -> None:
    """Refuse, in one line naming it, a local pipeline folder that lacks a part: a component its
    ``model_index.json`` (or ``modular_model_index.json``) lists, or one its family loads beside them
    (``extra_components``: LTX-2.5's ``diffusion_decoder``). A partial download or a deleted part
    otherwise reaches the user as diffusers' "no file named config.json found in directory <folder>",
    of the folder's top, which never has one. Parts the family never loads (``unloaded_components``:
    MiniMax-H3's ``transformer_ref``) are not asked for; a hub id is not looked at (from_pretrained
    fetches its parts, or says it cannot).

    Raises:
        WeightsNotFoundError: ``<folder>/<part>/ is missing; model_index.json lists it``, with the fix.
    """
    from cac_align.loading import WeightsNotFoundError, looks_like_path

    if not looks_like_path(name):
        return
    folder = Path(name).expanduser()
    listed_in = "model_index.json" if (folder / "model_index.json").is_file() else MODULAR_INDEX
    never = set(getattr(family, "unloaded_components", ()))
    wanted = [(part, f"{listed_in} lists it") for part in index if not part.startswith("_") and has_component(index, part) and part not in never]
    wanted += [(part, f"{family.title} loads it beside the parts {listed_in} lists") for part in getattr(family, "extra_components", ())]
    for part, why in wanted:
        if not (folder / part).is_dir():
            raise WeightsNotFoundError(f"{key}={name!r}: {folder / part}/ is missing; {why}. Fill the folder (a partial download: "
                                       f"`hf download <repo> --local-dir {folder}`), or point {key} at a whole one")


def check_trainable(config: Any, key: str = "generator.name") -> None:
    """Refuse, as a trainer's recipe is made, a generator its family cannot train (the family's optional
    ``check_trainable(name, key)``: Cosmos 3's FP8 weights), before any weight loads."""
    if config.is_synthetic or config.name in config.family.tiny_names:
        return
    hook = getattr(config.family, "check_trainable", None)
    if hook is not None:
        hook(config.name, key)


def check_context_parallel_split(family: Any, config: Any, degree: int, transformer_config: Mapping[str, Any], head_keys: Sequence[str]) -> None:
    """What every family's ``check_context_parallel`` checks before anything loads: diffusers'
    Ulysses context parallel splits the video's latent tokens into ``degree`` equal chunks
    (``EquipartitionSharder.shard`` asserts it, diffusers 0.42.1 ``hooks/context_parallel.py:274``)
    and then the heads of every attention that exchanges them (``attention_dispatch.py:2566``:
    ``H // world_size``). Raises ``RecipeError`` naming the setting to change.

    Args:
        family: the generator family (``title``, ``frame_multiple``, ``spatial_multiple``: its
            VAE's compression in time and its VAE x patch in space, one latent token per cell).
        config: the ``GeneratorConfig`` (``height``, ``width``, ``num_frames`` resolved).
        degree: ``parallel.context_parallel``.
        transformer_config: the transformer's ``config.json``.
        head_keys: the config keys of the head counts that the degree must divide.
    """
    import math

    from cac_align.config import RecipeError

    if degree <= 1:
        return
    for key in head_keys:
        heads = int(transformer_config[key])
        if heads % degree:
            divisors = [d for d in range(2, heads + 1) if heads % d == 0][:6]
            raise RecipeError(f"parallel.context_parallel={degree} does not divide the {heads} attention heads of {family.title}'s transformer "
                              f"({key} in its config.json): Ulysses gives each process {heads} / {degree} of them; set parallel.context_parallel "
                              f"to one that divides {heads} ({', '.join(map(str, divisors))}, ...)")
    frames = (config.num_frames - 1) // family.frame_multiple + 1
    rows, columns = config.height // family.spatial_multiple, config.width // family.spatial_multiple
    tokens = frames * rows * columns
    if tokens % degree:
        step = degree // math.gcd(rows * columns, degree)  # the latent frames must be a multiple of this
        frames_needed = -(-frames // step) * step
        raise RecipeError(
            f"parallel.context_parallel={degree} does not divide the video's {frames} x {rows} x {columns} = {tokens} latent tokens "
            f"(generator.num_frames={config.num_frames}, height={config.height}, width={config.width}; {family.title}: one token per "
            f"{family.frame_multiple} frames after the first and per {family.spatial_multiple} x {family.spatial_multiple} pixels): "
            f"set generator.num_frames={(frames_needed - 1) * family.frame_multiple + 1} ({frames_needed} latent frames), or a height or width "
            f"whose latent rows x columns the degree divides, or another parallel.context_parallel")
