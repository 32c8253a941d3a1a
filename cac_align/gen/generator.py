"""The generator as the jobs see it, whatever its family: its settings, loading it, its LoRA, and
Flow-GRPO's sampler with per-step log-probabilities.

Everything here goes through the model's family (:mod:`cac_align.gen.family`: what the model's own
files say it is; :mod:`cac_align.gen.families.wan`, :mod:`cac_align.gen.families.ltx2`): the family loads the
pipeline, encodes the prompts, draws the initial noise, gives the guided velocity and decodes, so
``bon``, ``flow-grpo``, ``dpo`` and ``repair`` never branch on which model they run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

from cac_align.config import RecipeError
from cac_align.gen.family import Conditioning, Generated, check_ratios, fixed_frames, take_model_settings
from cac_align.loading import check_dtype, resolve_device
from cac_align.run.folder import share_modes

log = logging.getLogger(__name__)

__all__ = [
    "DECODES",
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_2",
    "MODEL_SETTINGS",
    "Conditioning",
    "Generated",
    "GeneratorConfig",
    "PipelineGenerator",
    "Trajectory",
    "VideoGenerator",
    "build_generator",
    "build_video_generator",
    "check_decode",
    "check_decoded_by_vae",
    "chunk_count",
    "chunk_finals",
    "empty_experts",
    "encode_conditioning",
    "expert_components",
    "frames_to_uint8",
    "generate_videos",
    "load_lora",
    "predict_velocity",
    "sample_with_log_probs",
    "save_lora",
    "scheduler_shift",
    "sde_transitions",
    "step_conditioning",
    "video_conditioning",
    "video_decode",
    "video_velocity",
]

# The settings of GeneratorConfig that are the model's own: left unset (null), they take the
# family's value (GeneratorFamily.defaults); set for a family that does not list them, an error.
MODEL_SETTINGS = (
    "height", "width", "num_frames", "fps", "num_inference_steps", "guidance_scale", "guidance_scale_2", "flow_shift",
    "stg_scale", "modality_scale", "guidance_rescale", "audio_guidance_scale", "audio_stg_scale", "audio_modality_scale",
    "audio_guidance_rescale", "stg_blocks",
)

# How a trainer turns its samples' final latents into frames (``generator.decode``): the model's own VAE,
# or, on the tiny random Wan only, the latent preview (its random VAE's frames barely move with the latents)
DECODES = ("vae", "latent_preview")

# The synthetic stand-in generator reads only ``fps`` of these; the rest are Wan-2.1's values, as
# they always were, so its recipes validate as before.
_SYNTHETIC_DEFAULTS = {"height": 480, "width": 832, "num_frames": 81, "fps": 16.0, "num_inference_steps": 50, "guidance_scale": 5.0}


@dataclass
class GeneratorConfig:
    """The text-to-video generator and how it samples.

    The sampling settings marked "the model's" may be left unset (null): they then take the
    generator family's own (:mod:`cac_align.gen.family`, read from the model's files: Wan-2.1,
    Wan2.2-TI2V-5B, Wan2.2-A14B, Wan2.1-I2V-14B, Wan2.2-I2V-A14B, LTX-2), so a recipe that names another model samples it as its
    release does. A setting that does not apply to the model (``guidance_scale_2`` on a
    one-transformer model, ``stg_scale`` on Wan) is an error when set.

    Attributes:
        name: hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``,
            ``Wan-AI/Wan2.2-T2V-A14B-Diffusers``, the image-to-video
            ``Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`` and ``Wan-AI/Wan2.2-I2V-A14B-Diffusers``,
            ``Lightricks/LTX-2``, or any fine-tune or mirror of them), a local ``save_pretrained``
            folder, a tiny in-process pipeline ("tiny-random:wan", "tiny-random:wan22-ti2v",
            "tiny-random:wan22-a14b", "tiny-random:wan21-i2v", "tiny-random:wan22-i2v-a14b",
            "tiny-random:ltx2"), or "synthetic:<synth recipe>" for the synthetic stand-in
            generator (:mod:`cac_align.gen.synthetic`: Best-of-N in miniature; the recipe sets
            the frame size, length and rate, and the keys below except ``fps`` do not apply).
        dtype: transformer and text-encoder dtype (bf16 on GPU).
        vae_dtype: VAE dtype; Wan recommends float32 for its VAE.
        device: "auto", "cpu", "cuda", "cuda:1", ...
        height, width, num_frames: the model's (Wan-2.1: 480 x 832, 81 frames, 5 s at 16 fps);
            ``num_frames`` must be ``k * m + 1`` for the VAE's time compression ``m`` (Wan: 4,
            LTX-2: 8), the sides multiples of the model's spatial multiple (Wan-2.1: 16, the
            TI2V-5B and LTX-2: 32): the release's, or the model's own where its ``vae/config.json``
            says others (:func:`cac_align.gen.family.with_own_ratios`).
        num_inference_steps: the model's (Wan-2.1: 50 sampling steps).
        guidance_scale: classifier-free guidance scale, the model's (Wan-2.1: 5.0); with two
            experts (Wan2.2-A14B), the high-noise expert's; LTX-2: the video's.
        guidance_scale_2: the low-noise expert's scale (Wan2.2-A14B; the model's: 3.0).
        stg_scale, modality_scale, guidance_rescale: LTX-2's spatio-temporal guidance, modality
            isolation guidance and guidance rescale for the video (``LTX2Pipeline``'s own names).
        audio_guidance_scale, audio_stg_scale, audio_modality_scale, audio_guidance_rescale: the
            same for LTX-2's audio.
        stg_blocks: LTX-2: the transformer blocks perturbed by spatio-temporal guidance.
        negative_prompt: None uses the model's default negative prompt; "" turns it off.
        flow_shift: the model's own, read from its ``scheduler/scheduler_config.json`` when the
            config is made (:func:`cac_align.gen.family.model_flow_shift`): a fine-tune's scheduler
            decides; the release's value (Wan2.2: 5.0 / 12.0; HunyuanVideo-1.5: 5.0) only where
            the files say nothing, or say the shift diffusers' conversion wrote without the release
            sampling at it (the A14Bs' 3.0); Wan-2.1 and Kandinsky 6: null, the checkpoint
            scheduler's, read when sampling; LTX-2: none, its scheduler shifts by the sequence
            length. A number set here overrides them all (Wan recommends 3.0 at 480p, 5.0 at 720p).
            The run's ``cac_align_run.json`` records the shift it sampled at.
        fps: frame rate the videos are written at and every reward reads them at: the model's
            (Wan: 16; the TI2V-5B and LTX-2: 24).
        max_sequence_length: text tokens the encoder sees (Wan: 512; LTX-2: 1024); Cosmos 3 has none (left unset).
        lora: a LoRA folder written by `cac-align flow-grpo` or `dpo` (``lora/`` or a
            checkpoint's ``lora/``), loaded with diffusers' ``load_lora_weights``; None = the
            base model.
        lora_scale: strength of that LoRA (1.0 = as trained).
        anomaly_probability: synthetic generator only: the chance that a candidate gets a
            planted anomaly.
        decode: how flow-grpo and nft turn their samples into the frames every reward scores: ``vae``,
            the model's own decode; ``latent_preview``, the tiny random Wan only (its random VAE's
            frames barely move with the latents, so a reward on them cannot teach the tiny policy
            anything): latent channels 0-2 as RGB (docs/flow_grpo.md, "Checking that a setup learns").
    """

    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"decode": DECODES}

    name: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    device: str = "auto"
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    stg_scale: float | None = None
    modality_scale: float | None = None
    guidance_rescale: float | None = None
    audio_guidance_scale: float | None = None
    audio_stg_scale: float | None = None
    audio_modality_scale: float | None = None
    audio_guidance_rescale: float | None = None
    stg_blocks: list[int] | None = None
    negative_prompt: str | None = None
    flow_shift: float | None = None
    fps: float | None = None
    max_sequence_length: int | None = None
    lora: str | None = None
    lora_scale: float = 1.0
    anomaly_probability: float = 0.5
    decode: str = "vae"

    @classmethod
    def unset(cls) -> "GeneratorConfig":
        """A config whose model settings are all unset, for a job config's default: a recipe
        section then fills them from the generator it names, not from the default's Wan-2.1
        (``field(default_factory=GeneratorConfig.unset)``; built without ``__post_init__``)."""
        config = object.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(config, f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        return config

    @property
    def is_synthetic(self) -> bool:
        from cac_align.gen.synthetic import PREFIX

        return self.name.startswith(PREFIX)

    @property
    def family(self) -> Any:
        """The model's family (:func:`cac_align.gen.family.family_of`: from its own files)."""
        from cac_align.gen.family import family_of

        return family_of(self.name)

    def __post_init__(self) -> None:
        if self.is_synthetic:
            defaults, title, spatial, frames = {**_SYNTHETIC_DEFAULTS, "max_sequence_length": 512}, "the synthetic generator", 16, 4
            remainder, family = 1, None
        else:
            family = self.family
            defaults, title, spatial, frames = family.defaults, family.title, family.spatial_multiple, family.frame_multiple
            if self.flow_shift is None and "flow_shift" in defaults:  # the model's own scheduler file, else the release's
                from cac_align.gen.family import model_flow_shift

                self.flow_shift = model_flow_shift(family, self.name)
            remainder = getattr(family, "frame_remainder", 1)  # cac_align.gen.family: MiniMax-H3's 17k + 5
        # the settings left unset take the model's own (cac_align.gen.family); one it has no use for must stay unset
        foreign = take_model_settings(self, MODEL_SETTINGS + ("max_sequence_length",), defaults)
        if "guidance_scale_2" in foreign and not self.is_synthetic:
            raise ValueError(f"guidance_scale_2 is the second expert's scale (Wan2.2-A14B); {self.name} ({title}) has one transformer")
        if foreign and not self.is_synthetic:
            raise ValueError(f"generator.{foreign[0]} does not apply to {self.name} ({title}); remove it")
        check_dtype(self.dtype, "generator.dtype")
        check_dtype(self.vae_dtype, "generator.vae_dtype")
        if not 0 <= self.anomaly_probability <= 1:
            raise ValueError(f"anomaly_probability must be in [0, 1], got {self.anomaly_probability}")
        check_decode(self, family, title)
        # what the model cannot take beyond the multiples, named before the generic checks and before anything loads
        # (cac_align.gen.family: Helios's chunks)
        check_settings = None if self.is_synthetic else getattr(family, "check_settings", None)
        if check_settings is not None:
            check_settings(self)
        if self.num_frames < remainder or (self.num_frames - remainder) % frames:
            raise ValueError(f"num_frames must be {frames}k + {remainder} ({title}'s VAE compresses time {frames}x), got {self.num_frames}")
        if self.height <= 0 or self.width <= 0 or self.height % spatial or self.width % spatial:
            raise ValueError(f"height and width must be positive multiples of {spatial} for {self.name}, got {self.height}x{self.width}")
        least = 1 if self.is_synthetic else self.family.min_inference_steps
        if self.num_inference_steps < least:
            raise ValueError(f"num_inference_steps must be >= {least} for {self.name} ({title}), got {self.num_inference_steps}")
        if self.max_sequence_length is not None and self.max_sequence_length < 1:  # None: the model has no such setting (Cosmos 3)
            raise ValueError(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")
        scales = [self.guidance_scale, self.guidance_scale_2, self.stg_scale, self.modality_scale, self.guidance_rescale, self.audio_guidance_scale,
                  self.audio_stg_scale, self.audio_modality_scale, self.audio_guidance_rescale]
        if any(s is not None and s < 0 for s in scales) or self.fps <= 0:
            raise ValueError("guidance scales must be >= 0 and fps > 0")


def check_decode(config: GeneratorConfig, family: Any, title: str) -> None:
    """Refuse ``config.decode`` in one line where it is not one of :data:`DECODES`, or is the latent
    preview on a model that does not decode with a tiny random VAE (the family's ``latent_preview_for``:
    decided from the model's own files, never its name)."""
    if config.decode not in DECODES:
        raise ValueError(f"generator.decode must be one of {' | '.join(DECODES)}, got {config.decode!r}")
    if config.decode == "latent_preview" and _preview(config, family) is None:
        raise ValueError(f"generator.decode=latent_preview stands in for the tiny random Wan's VAE only (tiny-random:wan, or a folder "
                         f"`cac-align make-tiny` saved from it: its vae/config.json), whose frames barely move with the latents; "
                         f"{config.name} ({title}) is another model, whose own decode is its video: remove generator.decode")


def _preview(config: GeneratorConfig, family: Any) -> Callable[..., Any] | None:
    finder = None if family is None else getattr(family, "latent_preview_for", None)
    return None if finder is None else finder(config.name)


def video_decode(config: GeneratorConfig, family: Any) -> Callable[..., Any]:
    """What turns a trainer's final latents into the frames its rewards score, as ``config.decode`` says:
    ``decode(pipe, latents, seeds=...) -> uint8 (B, F, H, W, 3)``, the family's own
    (:meth:`GeneratorFamily.decode`) or its latent preview (checked when the config was made)."""
    if config.decode == "latent_preview":
        preview = _preview(config, family)
        assert preview is not None, "GeneratorConfig.__post_init__ refuses a preview the model has none of"
        return preview
    return family.decode


def check_decoded_by_vae(config: GeneratorConfig, job: str) -> None:
    """Refuse ``generator.decode: latent_preview`` in a job that never decodes latents itself (``bon``
    writes what the pipeline decodes; ``dpo`` trains on videos), where it would be ignored."""
    if config.decode != "vae":
        raise ValueError(f"generator.decode={config.decode} is read by flow-grpo and nft, which decode their own samples; "
                         f"{job} does not: remove it")


# ---------------------------------------------------------------------------------------
# Loading, LoRA
# ---------------------------------------------------------------------------------------
def build_generator(config: GeneratorConfig, key: str = "generator", *, empty_transformers: bool = False, empty_encoders: bool = False) -> Any:
    """The pipeline ``config`` names, on its device, with its flow shift applied.

    ``empty_transformers``: the transformers (every expert: :func:`expert_components`) are built on
    the meta device from their ``config.json``, in ``config.dtype``, and no weight of theirs is read;
    everything else loads as before. A sharded run's processes other than the first load so, and
    receive their shards from it (:func:`cac_align.gen.parallel.load_generator`). A tiny
    pipeline's transformers are built empty by :func:`cac_align.gen.tiny.transformers_on_meta`
    instead (their random draws come from the process that built them whole).

    ``empty_encoders``: the prompt encoders (the family's ``encoder_components``) are built likewise on
    the meta device from their configs (:func:`empty_encoder_modules`); a process that takes them from a
    node's shared copy loads so (:mod:`cac_align.gen.shared_weights`)."""
    from cac_align.gen.synthetic import load_synthetic_generator

    if config.is_synthetic:
        return load_synthetic_generator(config.name, config.anomaly_probability, key=f"{key}.name")
    device = resolve_device(config.device, f"{key}.device")  # checked before any weight loads
    if config.lora is not None and not any((Path(config.lora) / name).is_file() for name in (LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2)):
        raise RecipeError(_no_lora(config.lora, f"{key}.lora"))
    if empty_encoders and config.name in config.family.tiny_names:
        raise ValueError(f"{config.name} is built in-process: its encoders cannot be built empty")
    if empty_transformers and config.lora is not None:
        raise ValueError(f"{key}.lora: a LoRA cannot be loaded into empty transformers (a trainer adds its own LoRA)")
    family = config.family
    if config.name in family.tiny_names:
        if empty_transformers:
            raise ValueError(f"{config.name} is built in-process: build it under cac_align.gen.tiny.transformers_on_meta for empty transformers")
        pipe = _on_device(family.build_tiny(config.name, seed=0), device)
    else:
        components = empty_experts(config, f"{key}.name") if empty_transformers else {}
        if empty_encoders:
            components.update(empty_encoder_modules(config, f"{key}.name"))
        pipe = _on_device(family.load(config.name, dtype=config.dtype, vae_dtype=config.vae_dtype, key=f"{key}.name", components=components), device)
    check_ratios(family, pipe, f"{key}.name")  # the VAE's ratios the recipe was validated for are the loaded pipeline's
    check_size = getattr(family, "check_size", None)  # a size its models cannot take, refused before sampling (cac_align.gen.family)
    if check_size is not None:
        check_size(pipe, config)
    if config.flow_shift is not None:
        # Flow-matching schedulers name the shift differently: UniPC (the Wan-2.1 checkpoints)
        # calls it flow_shift, FlowMatchEulerDiscrete calls it shift.
        scheduler_config = pipe.scheduler.config
        field_name = "flow_shift" if "flow_shift" in scheduler_config else "shift"
        if field_name not in scheduler_config:
            raise ValueError(f"{key}.flow_shift: scheduler {type(pipe.scheduler).__name__} has no shift setting")
        pipe.scheduler = type(pipe.scheduler).from_config(scheduler_config, **{field_name: config.flow_shift})
    if config.lora is not None:
        load_lora(pipe, family, config.lora, scale=config.lora_scale, key=f"{key}.lora")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The pipeline components that hold a family's experts, high-noise first: what a sharded run shards
# (the Wan2.2-A14B's two; LTX-2's one, its audio branch inside it)
EXPERT_COMPONENTS = ("transformer", "transformer_2")


def expert_components(family: Any) -> tuple[str, ...]:
    """The names of ``family``'s transformers in its pipeline (``transformer``, and ``transformer_2``
    for a two-expert family): what its denoiser runs."""
    return EXPERT_COMPONENTS[: family.experts]


def empty_experts(config: GeneratorConfig, key: str = "generator.name") -> dict[str, Any]:
    """The transformers of the pipeline ``config`` names (a folder or hub id), each built from its own
    ``config.json`` on the meta device (the class its ``model_index.json`` names), in ``config.dtype``
    and in eval mode as ``from_pretrained`` returns it: their structure without a byte of their
    weights, for diffusers' ``from_pretrained(..., transformer=...)`` to take instead of loading them."""
    import diffusers
    import torch

    from cac_align.gen.family import read_model_index
    from cac_align.loading import check_weights_source, resolve_dtype

    source = check_weights_source(config.name, key)
    index = read_model_index(source, key) or {}
    modules = {}
    for name in expert_components(config.family):
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]):
            raise RecipeError(f"{key}={config.name!r}: its model_index.json names no {name}, which {config.family.title} has")
        cls = getattr(diffusers, entry[1])
        with torch.device("meta"):
            module = cls.from_config(cls.load_config(source, subfolder=name))
        modules[name] = module.to(resolve_dtype(config.dtype)).eval()
    return modules


def empty_encoder_modules(config: GeneratorConfig, key: str = "generator.name") -> dict[str, Any]:
    """The prompt encoders of the pipeline ``config`` names (the family's ``encoder_components`` its
    index lists), each built from its own config on the meta device, in ``config.dtype`` and in eval
    mode as ``from_pretrained`` returns it: a transformers model through ``_from_config`` (as
    ``AutoModel.from_config`` builds one), a diffusers model through ``from_config``. No weight is read:
    they take a node's shared copy (:func:`cac_align.gen.shared_weights.attach`)."""
    import diffusers
    import torch
    import transformers

    from cac_align.gen.family import read_model_index
    from cac_align.loading import check_weights_source, resolve_dtype

    source = check_weights_source(config.name, key)
    index = read_model_index(source, key) or {}
    dtype = resolve_dtype(config.dtype)
    modules = {}
    for name in config.family.encoder_components:
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and len(entry) >= 2 and entry[1]):
            continue  # a component this pipeline does not have (an image encoder of a text-to-video folder)
        library, class_name = entry[0], entry[1]
        with torch.device("meta"):
            # transformers', diffusers' own, or a pipeline's module of diffusers (LTX-2's connectors: ["ltx2", "LTX2TextConnectors"])
            home = transformers if library == "transformers" else diffusers if library == "diffusers" else _library_module(library)
            cls = getattr(home, class_name, None)
            if cls is None or not (hasattr(cls, "_from_config") if library == "transformers" else hasattr(cls, "load_config")):
                raise RecipeError(f"{key}={config.name!r}: its {name} is a {library}.{class_name}, which cannot be built empty to share; "
                                  "set parallel.share_encoders: false")
            if library == "transformers":
                module = cls._from_config(transformers.AutoConfig.from_pretrained(source, subfolder=name), dtype=dtype)
            else:
                module = cls.from_config(cls.load_config(source, subfolder=name)).to(dtype)
        modules[name] = module.eval()
    return modules


def _library_module(library: str) -> Any:
    """The module a pipeline index's library names: a pipeline's own module of diffusers
    (``diffusers.pipelines.<library>``, as diffusers resolves it), else an importable module."""
    import importlib

    for name in (f"diffusers.pipelines.{library}", library):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _on_device(pipe: Any, device: Any) -> Any:
    """``pipe`` on ``device``, its modules on the meta device (empty transformers) left there."""
    import torch

    modules = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    empty = {name for name, m in modules.items() if any(t.is_meta for t in m.parameters())}
    if not empty:
        return pipe.to(device)
    for name, module in modules.items():
        if name not in empty:
            module.to(device)
    return pipe


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
LORA_WEIGHT_NAME_2 = "pytorch_lora_weights_transformer_2.safetensors"  # a two-expert model's low-noise LoRA


def _no_lora(path: str, key: str) -> str:
    return (
        f"{key}={path!r}: no {LORA_WEIGHT_NAME} there; point it at the lora/ folder a "
        "`cac-align flow-grpo` or `dpo` run writes (out_dir/lora or out_dir/checkpoints/step_N/lora)"
    )


def load_lora(pipe: Any, family: Any, path: str, scale: float = 1.0, key: str = "generator.lora") -> None:
    """Load a LoRA folder written by a trainer (diffusers' LoRA format) into ``pipe``: its
    ``pytorch_lora_weights.safetensors`` into ``transformer`` and, for a two-expert family, its
    ``pytorch_lora_weights_transformer_2.safetensors`` into ``transformer_2``. Says which files it
    loaded (an INFO line: ``bon``, ``repair`` and the evaluations then show that a LoRA is in use)."""
    folder = Path(path)
    high, low = (folder / LORA_WEIGHT_NAME).is_file(), (folder / LORA_WEIGHT_NAME_2).is_file()
    if not (high or low):
        raise RecipeError(_no_lora(path, key))
    if low and family.experts < 2:
        raise RecipeError(f"{key}={path!r}: holds a LoRA of a second expert ({LORA_WEIGHT_NAME_2}), and this generator ({family.title}) has one "
                          "transformer")
    loaded = [f"{folder / name} into {part}" for name, part, there in ((LORA_WEIGHT_NAME, "transformer", high),
                                                                       (LORA_WEIGHT_NAME_2, "transformer_2", low)) if there]
    if high and not hasattr(pipe, "load_lora_weights"):
        # a pipeline without diffusers' LoRA loader (HunyuanVideo-1.5's in 0.42.1): the same file into the
        # transformer as the loaders put it (their load_lora_into_transformer: load_lora_adapter, prefix "transformer")
        pipe.transformer.load_lora_adapter(str(folder), weight_name=LORA_WEIGHT_NAME, prefix="transformer", adapter_name="default")
        if scale != 1.0:
            pipe.transformer.set_adapters(["default"], weights=[scale])
    else:
        if high:
            pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, adapter_name="default")
        if low:
            pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME_2, adapter_name="default", load_into_transformer_2=True)
        if scale != 1.0:
            pipe.set_adapters(["default"], adapter_weights=[scale])
    log.info("%s: loaded the LoRA %s (scale %g)", key, " and ".join(loaded), scale)


def save_lora(transformer: Any, folder: Any, weight_name: str = LORA_WEIGHT_NAME, pipeline_class: str = "WanPipeline",
              state_dict: dict[str, Any] | None = None) -> None:
    """Write ``transformer``'s peft LoRA as diffusers' LoRA file (what :func:`load_lora` reads),
    through the ``save_lora_weights`` of the model's pipeline class (its family's
    ``pipeline_class``: ``WanPipeline``, ``LTX2Pipeline``). ``state_dict``: its LoRA weights whole,
    keyed as its own ``state_dict`` (a sharded transformer's, gathered:
    :func:`cac_align.gen.parallel.expert_states`); None: the transformer's own."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer, state_dict=state_dict))
    # the adapter's LoraConfig travels in the file's metadata, so rank, alpha (the scale
    # alpha / rank) and target modules load back as trained
    # sets (target_modules) in a stable order: identical runs write identical files
    metadata = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in transformer.peft_config["default"].to_dict().items()}
    writer = getattr(diffusers, pipeline_class)
    if hasattr(writer, "save_lora_weights"):
        writer.save_lora_weights(
            str(folder),
            transformer_lora_layers=state,
            weight_name=weight_name,
            safe_serialization=True,
            transformer_lora_adapter_metadata=metadata,
        )
    else:  # no LoRA loader on the pipeline (HunyuanVideo-1.5's in 0.42.1): the helper every loader's save_lora_weights calls, the same file
        from diffusers.loaders.lora_base import LoraBaseMixin

        LoraBaseMixin._save_lora_weights(save_directory=str(folder), lora_layers={"transformer": state},
                                         lora_metadata={"transformer": metadata}, weight_name=weight_name, safe_serialization=True)
    _canonical_header(Path(folder) / weight_name)
    share_modes(folder)  # safetensors writes 0600 files


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors file's header in one fixed order, the tensor data untouched.

    safetensors keeps the ``__metadata__`` strings in a hash map whose order changes from process
    to process, so two identical runs wrote LoRA files that differ in bytes. The format is an
    8-byte little-endian header length, the JSON header (space-padded to a multiple of 8), then
    the data, whose offsets are relative to the data's start: the header may be rewritten freely.
    """
    import json
    import struct

    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    tmp.replace(path)


def scheduler_shift(pipe: Any, override: float | None = None) -> float:
    """The flow shift of ``pipe``'s scheduler (UniPC calls it ``flow_shift``, FlowMatchEuler ``shift``)."""
    if override is not None:
        return float(override)
    config = pipe.scheduler.config
    for field_name in ("flow_shift", "shift"):
        if config.get(field_name) is not None:
            return float(config[field_name])
    return 1.0


# ---------------------------------------------------------------------------------------
# Sampling with per-step log-probabilities (Flow-GRPO's sampler; math in cac_align.rl.sde)
# ---------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """The SDE samples of a batch, everything a policy-gradient step needs.

    Attributes:
        latents: ``(B, N + 1, C, F', H', W')`` float32; ``latents[:, j]`` is the latent before
            step j, ``latents[:, N]`` the final one. Only what the policy generates: the latent
            frames an image fixes are not here (:func:`~cac_align.gen.family.whole_latents` puts
            them back from the conditioning).
        log_probs: ``(B, N)`` float32, log p(latents[:, j + 1] | latents[:, j]) when sampling.
        sigmas: ``(N + 1,)`` float32 schedule; timesteps: ``(N,)`` transformer timesteps.
        log_prob_maps: ``(B, N, F', H', W')`` float32, the per-position log-densities of each
            step (localized credit, :mod:`cac_align.rl.credit`); None unless asked for.
        side: ``(B, N + 1, ...)`` float32, the latents that step with the video (LTX-2's and
            MiniMax-H3's audio), before each step and the final ones; None for a video-only model.
            On the deterministic path unless the side is trained (``train_side``).
        side_log_probs: ``(B, N)`` float32, the side's own log p(side[:, j + 1] | side[:, j]) of
            its SDE step, where the side is trained; else None.
        side_log_prob_maps: ``(B, N, T_a)`` float32, the side's log-density per audio latent frame
            (the family's ``side_frames``), where the side is trained and positions were asked for.
        chunks: the denoising loops of one video, one after the other (an autoregressive family's
            chunks, Helios's: :func:`chunk_count`), 1 for every other family.
            ``K`` loops of ``N`` steps are flattened in order: ``latents`` ``(B, K (N + 1), C, f, H', W')``
            (chunk ``k``'s states at ``k (N + 1) .. k (N + 1) + N``, ``f`` its latent frames),
            ``log_probs`` ``(B, K N)`` and ``log_prob_maps`` ``(B, K N, f, H', W')`` (step ``s = k N + j``
            goes from state ``s + k`` to ``s + k + 1`` on sigmas ``j``, ``j + 1``); ``sigmas`` and
            ``timesteps`` are one loop's, the same for every chunk. With ``K = 1`` it is the layout above.
    """

    latents: Any
    log_probs: Any
    sigmas: Any
    timesteps: Any
    log_prob_maps: Any = None
    side: Any = None
    side_log_probs: Any = None
    side_log_prob_maps: Any = None
    chunks: int = 1

    @property
    def final(self) -> Any:
        """The videos' final latents ``(B, C, F', H', W')``: the last state (``K = 1``), or every chunk's
        last state joined in time, as the family decodes them."""
        import torch

        return torch.cat(chunk_finals(self.latents, self.chunks, self.chunks), dim=2) if self.chunks > 1 else self.latents[:, -1]


def chunk_finals(latents: Any, chunks: int, upto: int) -> list[Any]:
    """The final latents ``(B, C, f, H', W')`` of chunks ``0 .. upto - 1``, read from recorded states
    ``(B, K (N + 1), C, f, H', W')`` of ``K = chunks`` loops (:class:`Trajectory`): what a chunked family
    rebuilds a chunk's history from, and, joined, a whole video."""
    per_chunk = latents.shape[1] // chunks
    return [latents[:, k * per_chunk + per_chunk - 1] for k in range(upto)]


def chunk_count(family: Any, config: Any) -> int:
    """The denoising loops one video of ``config`` takes: the family's ``chunks`` (an autoregressive
    family's, Helios's), 1 for every other family."""
    chunks = getattr(family, "chunks", None)
    return 1 if chunks is None else int(chunks(config))


def step_conditioning(family: Any, cond: Conditioning, latents: Any, chunk: int, chunks: int) -> Conditioning:
    """The conditioning of chunk ``chunk``'s steps: the prompts' ``cond`` with what the family reads of the
    chunks before it (Helios's history, rebuilt from their recorded final latents ``latents``, the
    :class:`Trajectory` states of the same rows: state, like the prompt, never trained through); ``cond``
    itself for a family without chunks."""
    history = getattr(family, "chunk_conditioning", None)
    return cond if history is None else history(cond, chunk_finals(latents, chunks, chunk), latents[:, 0])


def video_conditioning(family: Any, cond: Conditioning, video: Any, chunk: int, chunks: int) -> Conditioning:
    """:func:`step_conditioning` from a whole video's clean latents ``(B, C, K f, H', W')`` (``K = chunks``) in
    place of the recorded states: chunk ``chunk``'s history is the video's own earlier chunks (nft's teacher
    forcing, which for a sampled video is the history it was sampled with); ``cond`` itself for a family
    without chunks."""
    history = getattr(family, "chunk_conditioning", None)
    if history is None:
        return cond
    frames = video.shape[2] // chunks
    return history(cond, [video[:, :, c * frames:(c + 1) * frames] for c in range(chunk)], video[:, :, :frames])


def sde_transitions(family: Any, sigmas: Any, noise_level: float, schedule: str = "sqrt") -> Any:
    """The SDE transitions of ``family``'s schedule (:class:`~cac_align.rl.sde.SDESchedule`), its first sigma
    taken as pure noise where the family's schedule starts short of 1 (``pure_noise_start``, Helios's)."""
    from cac_align.rl.sde import SDESchedule

    return SDESchedule(sigmas, noise_level, schedule, pure_noise_start=getattr(family, "pure_noise_start", False))


def side_frame_density(family: Any, prev_sample: Any, mean: Any, std: Any) -> Any:
    """The side step's log-density per audio latent frame ``(B, T_a)``: the Gaussian's log-density
    at each element, the side's elements laid out time first by the family (``side_frames``), averaged
    over each frame's elements (its mean over frames is the side's log-prob)."""
    from cac_align.rl.sde import gaussian_log_density

    return family.side_frames(gaussian_log_density(prev_sample, mean, std)).mean(dim=-1)


def predict_velocity(model: Any, latents: Any, timestep: Any, cond: Conditioning, negative: Conditioning | None, guidance: dict[str, Any],
                     dtype: Any, side: Any = None) -> Any:
    """The guided velocity at one step, as the model's pipeline computes it.

    Sampling and the training recompute both call this, so on unchanged weights the recomputed
    log-probabilities equal the recorded ones exactly.

    Args:
        model: the family's denoiser (:meth:`~cac_align.gen.family.GeneratorFamily.denoiser`),
            possibly wrapped for training (DDP).
        latents: ``(B, C, F', H', W')``; timestep: a scalar tensor (a sampling step) or one per
            sample ``(B,)``.
        cond / negative: the prompts' and the negative prompt's conditioning.
        guidance: the family's guidance settings (``family.guidance(config)``, or
            ``family.guidance(config, guided=False)``).
        dtype: the transformer's parameter dtype (inputs are cast to it).
        side: latents that step with the video (LTX-2's audio), or None.

    Returns:
        The video velocity ``(B, C, F', H', W')``; with ``side``, ``(video, side)`` velocities.
    """
    return model(latents, timestep, cond, negative, guidance, dtype, side)


def video_velocity(model: Any, latents: Any, timestep: Any, cond: Conditioning, negative: Conditioning | None, guidance: dict[str, Any],
                   dtype: Any, side: Any = None) -> Any:
    """The video's velocity alone (:func:`predict_velocity`; with ``side`` latents, the video's of
    the pair): what a trainer's loss reads, the side stream (LTX-2's audio) being an input only."""
    out = predict_velocity(model, latents, timestep, cond, negative, guidance, dtype, side)
    return out if side is None else out[0]


def _step_side(family: Any, side: Any, velocity: Any, j: int, side_sigmas: Any, transitions: Any, noise: Any, positions: bool) -> tuple:
    """Step ``j`` of the side latents (the audio) beside the video's: the deterministic Euler step where ``transitions``
    is None, else their own SDE step, their noise drawn (``noise(side)``) only where its scale is above 0. Returns the
    new side latents, and with the SDE their log-probability and (``positions``) their per-frame density, else None."""
    if transitions is None:
        return side + (side_sigmas[j + 1] - side_sigmas[j]) * velocity.float(), None, None
    step = transitions.step(j, side, velocity, noise=noise(side) if transitions.noise_scale(j) > 0 else None)
    density = side_frame_density(family, step.prev_sample, step.mean, step.std) if positions else None
    return step.prev_sample, step.log_prob, density


def sample_with_log_probs(
    pipe: Any,
    model: Any,
    cond: Conditioning,
    negative: Conditioning | None,
    generators: Sequence[Any],
    *,
    config: GeneratorConfig,
    sigmas: Any,
    timesteps: Any,
    noise_level: float,
    noise_schedule: str = "sqrt",
    store_device: Any = None,
    positions: bool = False,
    guidance: dict[str, Any] | None = None,
    train_side: bool = False,
) -> Trajectory:
    """Sample a batch with Flow-GRPO's SDE sampler, recording latents and per-step log-probs.

    Sample ``i`` draws its initial noise and every step's noise from ``generators[i]`` only,
    so it does not depend on which batch it was drawn in. With an image that fixes the first
    latent frames (``cond``'s ``fixed``), the initial noise is drawn whole, as the pipeline draws
    it, and those frames are dropped: the sampler steps, records and scores the generated frames
    only, and the denoiser puts the image's frames in front of them for each forward. ``noise_level=0`` (schedule "sqrt")
    is the deterministic Euler ODE sampler (its log-probs are meaningless), the pipeline's own.
    Latents that step with the video (LTX-2's and MiniMax-H3's audio) take the deterministic Euler
    step, unless ``train_side``: then they take the SDE step too, on their own noise levels (the
    family's ``side_sigmas``), in the same forward as the video, their noise drawn from the sample's
    generator after the video's at each step, with their own log-probability (docs/audio.md).
    A step whose noise scale is 0 draws no noise (nothing after it in one loop reads the generators).

    An autoregressive family (Helios: :func:`chunk_count` > 1) is sampled one chunk after the other, each
    chunk a whole loop over ``sigmas``: its initial noise drawn then (after the earlier chunks' draws, as
    its pipeline draws them), its steps conditioned on the earlier chunks' final latents (the family's
    ``chunk_conditioning``); the :class:`Trajectory` flattens the chunks (its ``chunks``).

    Args:
        pipe: the pipeline (its family draws the initial noise on its device).
        model: the family's denoiser (possibly wrapped for training).
        cond / negative: from the family's ``encode_prompts``.
        generators: one ``torch.Generator`` per sample, on the pipeline's device.
        config: the generator settings (size, frames, guidance).
        sigmas, timesteps: the schedule (``family.schedule``).
        store_device: where the recorded latents are kept (default: the pipeline's device).
        positions: also record each step's per-position log-densities (``log_prob_maps``; the
            per-sample log-probs are then their means).
        guidance: the guidance settings (default: ``config``'s, ``family.guidance(config)``).
        train_side: the side latents (the audio) take the SDE step with their log-probability
            (``audio: trained``); off, they take the Euler step, as before.
    """
    import torch

    from cac_align.rl.sde import SDESchedule

    family = config.family
    batch = len(cond)
    if len(generators) != batch:
        raise ValueError(f"{batch} prompts but {len(generators)} generators")
    device = pipe._execution_device
    dtype = pipe.transformer.dtype
    guidance = family.guidance(config) if guidance is None else guidance
    chunks = chunk_count(family, config)
    sigmas = sigmas.to(device)
    # the side latents' own noise levels where the family has them (MiniMax-H3's audio; cac_align.gen.family)
    side_sigmas = family.side_sigmas(pipe, config, sigmas).to(device) if hasattr(family, "side_sigmas") else sigmas
    transitions = sde_transitions(family, sigmas, noise_level, noise_schedule)
    store = store_device or device
    recorded, log_probs, maps, finals = [], [], [], []
    sides = None
    side_log_probs, side_maps = [], []
    for k in range(chunks):  # one denoising loop per chunk (Helios's), each conditioned on the chunks before it; one loop for the others
        # the initial noise, drawn per generator (a chunked family's: this chunk's, after the earlier chunks' draws)
        latents, side = family.initial_latents(pipe, config, generators)
        latents = latents[:, :, fixed_frames(cond):]  # the frames an image fixes are not sampled
        history = getattr(family, "chunk_conditioning", None)  # what the chunk reads of the chunks before it (Helios's history)
        step_cond = cond if history is None else history(cond, finals, latents)
        shape = tuple(latents.shape[1:])

        def noise(like: Any = None) -> Any:
            size = shape if like is None else tuple(like.shape[1:])
            return torch.stack([torch.randn(size, generator=g, device=device, dtype=torch.float32) for g in generators])

        if side is not None and chunks > 1:
            raise ValueError(f"{family.title}: side latents (sound) beside chunked video are not sampled here")
        recorded.append(latents.to(store))
        if side is not None:
            sides = [side.to(store)]
        train_side = train_side and side is not None
        side_transitions = SDESchedule(side_sigmas, noise_level, noise_schedule) if train_side else None
        with torch.no_grad():
            for j, t in enumerate(timesteps.to(device)):
                out = predict_velocity(model, latents, t, step_cond, negative, guidance, dtype, side)
                velocity, side_velocity = (out, None) if side is None else out
                # a step whose noise scale is 0 (the ODE: evaluation) draws nothing, so the next chunk's noise is the pipeline's
                random = bool(transitions.noise_scale(j) > 0)
                step = transitions.step(j, latents, velocity, noise=noise() if random else None, positions=positions)
                if side_velocity is not None:  # the side latents' step, after the video's draw
                    side, side_log_prob, side_map = _step_side(family, side, side_velocity, j, side_sigmas, side_transitions, noise, positions)
                    sides.append(side.to(store))
                    side_log_probs += [] if side_log_prob is None else [side_log_prob.to(store)]
                    side_maps += [] if side_map is None else [side_map.to(store)]
                latents = step.prev_sample
                recorded.append(latents.to(store))
                log_probs.append(step.log_prob.to(store))
                if positions:
                    maps.append(step.log_prob_map.to(store))
        finals.append(latents)
    return Trajectory(
        latents=torch.stack(recorded, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        sigmas=sigmas.to(store),
        timesteps=timesteps.to(store),
        log_prob_maps=torch.stack(maps, dim=1) if positions else None,
        side=torch.stack(sides, dim=1) if sides is not None else None,
        side_log_probs=torch.stack(side_log_probs, dim=1) if side_log_probs else None,
        side_log_prob_maps=torch.stack(side_maps, dim=1) if side_maps else None,
        chunks=chunks,
    )


# ---------------------------------------------------------------------------------------
# Generation (Best-of-N)
# ---------------------------------------------------------------------------------------
def encode_conditioning(pipe: Any, family: Any, prompts: Sequence[str], images: Sequence[Any] | None, config: GeneratorConfig,
                        guidance: dict[str, Any]) -> tuple[Conditioning, Conditioning | None]:
    """The conditioning of ``prompts`` (and, for image-to-video, of their ``images``: one
    :class:`~cac_align.run.input_files.PromptImage` per prompt, or None) and the negative
    prompt's, as the family's pipeline encodes them; the images' tensors join the prompts'
    (the negative conditioning holds the negative prompt only: the image is the same for both)."""
    cond, negative = family.encode_prompts(pipe, prompts, config.negative_prompt, guidance, config.max_sequence_length)
    if images is not None and any(image is not None for image in images):
        cond = cond.join(family.encode_images(pipe, config, list(images)))
    return cond, negative


def generate_videos(pipe: Any, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Generated:
    """One video per (prompt, seed), as the model's pipeline makes it (with its audio, if any);
    with ``images`` (one :class:`~cac_align.run.input_files.PromptImage` per prompt), as its
    image-to-video pipeline animates them.

    Each video gets its own ``torch.Generator`` seeded with its seed, so a video depends only on
    its prompt and seed, not on which batch it was drawn in (up to float rounding: across batch
    sizes frames may differ by one level in rare pixels).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if images is not None and any(image is not None for image in images):
        return config.family.generate(pipe, config, prompts, seeds, images=list(images))
    return config.family.generate(pipe, config, prompts, seeds)


class VideoGenerator(Protocol):
    """What Best-of-N asks of a generator: a diffusers pipeline (:class:`PipelineGenerator`) and
    the planted-anomaly renderer (:class:`~cac_align.gen.synthetic.SyntheticGenerator`) both give it."""

    def generate(self, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Generated:
        """One video per (prompt, seed): :class:`Generated` (uint8 ``(B, F, H, W, 3)``, audio);
        ``images``: one :class:`~cac_align.run.input_files.PromptImage` per prompt to animate."""
        ...

    def on_gpu(self) -> bool:
        """Whether its models sit on a CUDA device (only then can it offload)."""
        ...

    def offload(self) -> None:
        """Keep its modules on the CPU, each visiting the GPU only while it runs."""
        ...

    def execution_device(self) -> str:
        """Where its models compute (a reward model offloaded beside it moves there to score)."""
        ...


class PipelineGenerator:
    """A diffusers pipeline of any family as a :class:`VideoGenerator` (``pipe`` stays reachable)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe

    def generate(self, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Generated:
        return generate_videos(self.pipe, config, prompts, seeds, images)

    def on_gpu(self) -> bool:
        return str(self.pipe.device).startswith("cuda")

    def offload(self) -> None:
        self.pipe.enable_model_cpu_offload()

    def execution_device(self) -> str:
        return str(self.pipe._execution_device)


def build_video_generator(config: GeneratorConfig, key: str = "generator") -> VideoGenerator:
    """The :class:`VideoGenerator` ``config`` names: ``synthetic:<recipe>`` or a pipeline."""
    generator = build_generator(config, key)
    return generator if config.is_synthetic else PipelineGenerator(generator)


def frames_to_uint8(frames: Any) -> Any:
    """A pipeline's decoded frames in [0, 1] to host uint8 ``(..., H, W, 3)`` (clipped, rounded).

    ``frames``: a torch tensor ``(..., 3, H, W)`` as diffusers' ``output_type="pt"`` leaves it on
    the GPU (what our families ask for: converted there a few frames at a time, so the host never
    holds a float32 copy of a video), or an array ``(..., H, W, 3)`` of ``output_type="np"``.
    """
    import numpy as np

    from cac_align.video import float_frames_to_uint8

    if isinstance(frames, list):  # a list of (F, H, W, 3) arrays (some pipelines' "np" output)
        frames = np.stack(frames)
    return float_frames_to_uint8(frames, "decoded frames", channels_first=not isinstance(frames, np.ndarray), strict=False)
