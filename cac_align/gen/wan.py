"""Wan-2.1 text-to-video pipelines: loading by hub id or path, and a tiny offline one.

The generator is diffusers' own ``WanPipeline`` (UMT5 text encoder, ``WanTransformer3DModel``,
``AutoencoderKLWan``, ``FlowMatchEulerDiscreteScheduler``). Real runs name
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (or a local copy) in a recipe; tests and CI build
:func:`build_tiny_wan_pipeline`, the same classes at toy size with seeded random weights and a
word-level tokenizer built in-process, and save/load it through :func:`load_wan_pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from cac_align.config import RecipeError
from cac_align.gen.tiny import TINY_WAN_BUILDERS, build_tiny_wan_pipeline
from cac_align.loading import check_dtype, check_weights_source, resolve_device, resolve_dtype, weights_error
from cac_align.run.folder import share_modes

__all__ = [
    "TINY_WAN",
    "WAN_FPS",
    "WAN_NEGATIVE_PROMPT",
    "GeneratorConfig",
    "VideoGenerator",
    "WanGenerator",
    "Trajectory",
    "build_generator",
    "build_video_generator",
    "build_tiny_wan_pipeline",
    "decode_latents",
    "encode_prompts",
    "encode_video",
    "generate_videos",
    "latent_preview",
    "load_wan_pipeline",
    "predict_velocity",
    "sample_with_log_probs",
    "scheduler_shift",
]

# Wan-2.1 writes its videos at 16 fps (diffusers' examples export with fps=16).
WAN_FPS = 16.0

# Wan-2.1's default negative prompt (``sample_neg_prompt`` in the Wan release's shared config);
# the model was tuned with it, so it is the default for classifier-free guidance here.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# ``generator.name`` of the tiny random pipeline built in-process (meaningless videos).
TINY_WAN = "tiny-random:wan"


@dataclass
class GeneratorConfig:
    """The text-to-video generator and how it samples (defaults: Wan-2.1-1.3B at 480p, CaC §4.2).

    The sampling settings marked "the model's" may be left unset (null): they then take the
    generator family's own (:mod:`cac_align.gen.family`: Wan-2.1, Wan2.2-TI2V-5B, Wan2.2-A14B,
    found from ``name``), so a recipe that names another Wan samples it as its release does.

    Attributes:
        name: hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``, ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``,
            ``Wan-AI/Wan2.2-T2V-A14B-Diffusers``), a local ``save_pretrained`` folder,
            "tiny-random:wan", "tiny-random:wan22-ti2v", "tiny-random:wan22-a14b", or
            "synthetic:<synth recipe>" for the synthetic stand-in generator
            (:mod:`cac_align.gen.synthetic`: Best-of-N in miniature; the recipe sets the frame
            size, length and rate, and the keys below except ``fps`` do not apply).
        dtype: transformer and text-encoder dtype (bf16 on GPU).
        vae_dtype: VAE dtype; Wan recommends float32 for its VAE.
        device: "auto", "cpu", "cuda", "cuda:1", ...
        height, width, num_frames: the model's (Wan-2.1: 480 x 832, 81 frames, 5 s at 16 fps);
            ``num_frames`` must be 4k + 1, the sides multiples of 16 (32 for the TI2V-5B).
        num_inference_steps: the model's (Wan-2.1: 50 sampling steps).
        guidance_scale: classifier-free guidance scale, the model's (Wan-2.1: 5.0); with two
            experts (Wan2.2-A14B), the high-noise expert's.
        guidance_scale_2: the low-noise expert's scale (Wan2.2-A14B; the model's: 3.0). Refused
            for a one-expert model.
        negative_prompt: None uses Wan's default negative prompt; "" turns it off.
        flow_shift: the model's (Wan-2.1: the checkpoint scheduler's; Wan2.2: the release's
            5.0 / 12.0); a number overrides it (Wan recommends 3.0 at 480p, 5.0 at 720p).
        fps: frame rate the videos are written at and every reward reads them at: the model's
            (16; the TI2V-5B: 24).
        max_sequence_length: text tokens the encoder sees (Wan: 512).
        lora: a LoRA folder written by `cac-align flow-grpo` (``lora/`` or a checkpoint's
            ``lora/``), loaded with diffusers' ``load_lora_weights``; None = the base model.
        lora_scale: strength of that LoRA (1.0 = as trained).
        anomaly_probability: synthetic generator only: the chance that a candidate gets a
            planted anomaly.
    """

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
    negative_prompt: str | None = None
    flow_shift: float | None = None
    fps: float | None = None
    max_sequence_length: int = 512
    lora: str | None = None
    lora_scale: float = 1.0
    anomaly_probability: float = 0.5

    @classmethod
    def unset(cls) -> "GeneratorConfig":
        """A config whose model settings are all unset, for a job config's default: a recipe
        section then fills them from the generator it names, not from the default's Wan-2.1
        (``field(default_factory=GeneratorConfig.unset)``; built without ``__post_init__``)."""
        import dataclasses

        config = object.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(config, f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        return config

    def __post_init__(self) -> None:
        from cac_align.gen.family import family_of

        # the settings left unset take the model's own (cac_align.gen.family)
        family = family_of(self.name)
        for key, value in family.defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.guidance_scale_2 is not None and family.experts == 1 and not self.name.startswith("synthetic:"):
            raise ValueError(f"guidance_scale_2 is the second expert's scale (Wan2.2-A14B); {self.name} has one transformer")
        if self.height % family.spatial_multiple or self.width % family.spatial_multiple:
            raise ValueError(f"height and width must be multiples of {family.spatial_multiple} for {self.name}, got {self.height}x{self.width}")
        check_dtype(self.dtype, "generator.dtype")
        check_dtype(self.vae_dtype, "generator.vae_dtype")
        if not 0 <= self.anomaly_probability <= 1:
            raise ValueError(f"anomaly_probability must be in [0, 1], got {self.anomaly_probability}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k + 1 (Wan's VAE compresses time 4x), got {self.num_frames}")
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 16, got {self.height}x{self.width}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.guidance_scale < 0 or self.fps <= 0 or (self.guidance_scale_2 is not None and self.guidance_scale_2 < 0):
            raise ValueError("guidance_scale (and guidance_scale_2) must be >= 0 and fps > 0")

def load_wan_pipeline(
    name_or_path: str,
    *,
    dtype: str = "bfloat16",
    vae_dtype: str = "float32",
    device: str = "auto",
    key: str = "model",
    pipeline: str = "WanPipeline",
) -> Any:
    """Load a ``WanPipeline`` by hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or local path.

    Args:
        name_or_path: hub id or a directory written by ``save_pretrained``.
        dtype: dtype of the transformer and text encoder.
        vae_dtype: dtype of the VAE; diffusers recommends float32 for Wan's VAE.
        device: "auto", "cpu", "cuda", ...
        key: recipe key holding ``name_or_path``, named in errors.
        pipeline: the diffusers class of the Wan family to load (``WanVACEPipeline`` for repair's
            regenerator, ``Wan-AI/Wan2.1-VACE-1.3B-diffusers``).
    """
    import diffusers
    from diffusers import AutoencoderKLWan

    source = check_weights_source(name_or_path, key)
    try:
        vae = AutoencoderKLWan.from_pretrained(
            source, subfolder="vae", dtype=resolve_dtype(vae_dtype), use_safetensors=True
        )
        pipe = getattr(diffusers, pipeline).from_pretrained(source, vae=vae, dtype=resolve_dtype(dtype), use_safetensors=True)
    except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
        raise weights_error(name_or_path, key, exc) from exc
    return pipe.to(resolve_device(device))


def build_generator(config: GeneratorConfig, key: str = "generator") -> Any:
    """The pipeline ``config`` names, on its device, with its flow shift applied."""
    from cac_align.gen.synthetic import PREFIX, load_synthetic_generator

    if config.name.startswith(PREFIX):
        return load_synthetic_generator(config.name, config.anomaly_probability, key=f"{key}.name")
    device = resolve_device(config.device, f"{key}.device")  # checked before any weight loads
    if config.lora is not None and not any((Path(config.lora) / name).is_file() for name in (LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_2)):
        raise RecipeError(_no_lora(config.lora, f"{key}.lora"))
    if config.name in TINY_WAN_BUILDERS:
        pipe = TINY_WAN_BUILDERS[config.name](seed=0).to(device)
    else:
        pipe = load_wan_pipeline(config.name, dtype=config.dtype, vae_dtype=config.vae_dtype, device=config.device, key=f"{key}.name")
    if config.flow_shift is not None:
        # Flow-matching schedulers name the shift differently: UniPC (the Wan-2.1 checkpoints)
        # calls it flow_shift, FlowMatchEulerDiscrete calls it shift.
        scheduler_config = pipe.scheduler.config
        field_name = "flow_shift" if "flow_shift" in scheduler_config else "shift"
        if field_name not in scheduler_config:
            raise ValueError(f"{key}.flow_shift: scheduler {type(pipe.scheduler).__name__} has no shift setting")
        pipe.scheduler = type(pipe.scheduler).from_config(scheduler_config, **{field_name: config.flow_shift})
    if config.guidance_scale_2 is not None and pipe.config.get("boundary_ratio") is None:
        raise RecipeError(f"{key}.guidance_scale_2: {config.name} has one transformer (guidance_scale_2 is the second expert's, Wan2.2-A14B)")
    if config.lora is not None:
        load_lora(pipe, config.lora, scale=config.lora_scale, key=f"{key}.lora")
    pipe.set_progress_bar_config(disable=True)
    return pipe


LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
LORA_WEIGHT_NAME_2 = "pytorch_lora_weights_transformer_2.safetensors"  # a two-expert model's low-noise LoRA


def _no_lora(path: str, key: str) -> str:
    return (
        f"{key}={path!r}: no {LORA_WEIGHT_NAME} there; point it at the lora/ folder a "
        "`cac-align flow-grpo` run writes (out_dir/lora or out_dir/checkpoints/step_N/lora)"
    )


def load_lora(pipe: Any, path: str, scale: float = 1.0, key: str = "generator.lora") -> None:
    """Load a LoRA folder written by a trainer (diffusers' LoRA format) into ``pipe``: its
    ``pytorch_lora_weights.safetensors`` into ``transformer`` and, for a two-expert model, its
    ``pytorch_lora_weights_transformer_2.safetensors`` into ``transformer_2``."""
    from pathlib import Path

    folder = Path(path)
    high, low = (folder / LORA_WEIGHT_NAME).is_file(), (folder / LORA_WEIGHT_NAME_2).is_file()
    if not (high or low):
        raise RecipeError(_no_lora(path, key))
    if low and getattr(pipe, "transformer_2", None) is None:
        raise RecipeError(f"{key}={path!r}: holds a LoRA of a second expert ({LORA_WEIGHT_NAME_2}), and this generator has one transformer")
    if high:
        pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, adapter_name="default")
    if low:
        pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME_2, adapter_name="default", load_into_transformer_2=True)
    if scale != 1.0:
        pipe.set_adapters(["default"], adapter_weights=[scale])


def save_lora(transformer: Any, folder: Any, weight_name: str = LORA_WEIGHT_NAME) -> None:
    """Write ``transformer``'s peft LoRA as diffusers' LoRA file (what :func:`load_lora` reads)."""
    from diffusers import WanPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer))
    # the adapter's LoraConfig travels in the file's metadata, so rank, alpha (the scale
    # alpha / rank) and target modules load back as trained
    # sets (target_modules) in a stable order: identical runs write identical files
    metadata = {k: sorted(v) if isinstance(v, (set, frozenset)) else v for k, v in transformer.peft_config["default"].to_dict().items()}
    WanPipeline.save_lora_weights(
        str(folder),
        transformer_lora_layers=state,
        weight_name=weight_name,
        safe_serialization=True,
        transformer_lora_adapter_metadata=metadata,
    )
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
# Sampling with per-step log-probabilities (Flow-GRPO's sampler; math in cac_align.gen.sde)
# ---------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """The SDE samples of a batch, everything a policy-gradient step needs.

    Attributes:
        latents: ``(B, N + 1, C, F', H', W')`` float32; ``latents[:, j]`` is the latent before
            step j, ``latents[:, N]`` the final one.
        log_probs: ``(B, N)`` float32, log p(latents[:, j + 1] | latents[:, j]) when sampling.
        sigmas: ``(N + 1,)`` float32 schedule; timesteps: ``(N,)`` transformer timesteps.
        log_prob_maps: ``(B, N, F', H', W')`` float32, the per-position log-densities of each
            step (localized credit, :mod:`cac_align.gen.credit`); None unless asked for.
    """

    latents: Any
    log_probs: Any
    sigmas: Any
    timesteps: Any
    log_prob_maps: Any = None


def encode_prompts(pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance_scale: float, max_sequence_length: int) -> tuple[Any, Any]:
    """UMT5 embeddings of ``prompts`` (and of the negative prompt when CFG is on), via the pipeline."""
    import torch

    negative = WAN_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
    with torch.no_grad():
        embeds, negative_embeds = pipe.encode_prompt(
            prompt=list(prompts),
            negative_prompt=[negative] * len(prompts) if guidance_scale > 1.0 else None,
            do_classifier_free_guidance=guidance_scale > 1.0,
            max_sequence_length=max_sequence_length,
            device=pipe._execution_device,
        )
    dtype = pipe.transformer.dtype
    return embeds.to(dtype), (negative_embeds.to(dtype) if negative_embeds is not None else None)


def predict_velocity(
    transformer: Any,
    latents: Any,
    timestep: Any,
    prompt_embeds: Any,
    negative_embeds: Any,
    guidance_scale: float,
    dtype: Any,
    guidance_scale_2: float | None = None,
) -> Any:
    """The (classifier-free guided) velocity, computed as ``WanPipeline`` does at one step.

    Sampling and the training recompute both call this, so on unchanged weights the recomputed
    log-probabilities equal the recorded ones exactly.

    Args:
        transformer: the (possibly accelerate-wrapped) ``WanTransformer3DModel``, or a
            :class:`~cac_align.gen.experts.WanDenoiser` (any family: the expert serving
            ``timestep``, per-token timesteps, ``guidance_scale_2`` for the low-noise expert).
        latents: ``(B, C, F', H', W')``; timestep: scalar tensor; embeds: ``(B, L, D)``.
        dtype: the transformer's parameter dtype (inputs are cast to it).
    """
    from cac_align.gen.experts import WanDenoiser

    if isinstance(getattr(transformer, "module", transformer), WanDenoiser):  # called through a DDP wrapper, if any
        return transformer(latents, timestep, prompt_embeds, negative_embeds, guidance_scale, guidance_scale_2, dtype)
    x = latents.to(dtype)
    t = timestep.expand(x.shape[0]).to(x.device)
    velocity = transformer(hidden_states=x, timestep=t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
    if guidance_scale > 1.0:
        uncond = transformer(hidden_states=x, timestep=t, encoder_hidden_states=negative_embeds, return_dict=False)[0]
        velocity = uncond + guidance_scale * (velocity - uncond)
    return velocity


def sample_with_log_probs(
    pipe: Any,
    transformer: Any,
    prompt_embeds: Any,
    negative_embeds: Any,
    generators: Sequence[Any],
    *,
    config: GeneratorConfig,
    sigmas: Any,
    timesteps: Any,
    noise_level: float,
    noise_schedule: str = "sqrt",
    store_device: Any = None,
    positions: bool = False,
) -> Trajectory:
    """Sample a batch with Flow-GRPO's SDE sampler, recording latents and per-step log-probs.

    Sample ``i`` draws its initial noise and every step's noise from ``generators[i]`` only,
    so it does not depend on which batch it was drawn in. ``noise_level=0`` (schedule "sqrt")
    is the deterministic Euler ODE sampler (its log-probs are meaningless).

    Args:
        pipe: the ``WanPipeline`` (for its latent shape and device).
        transformer: the model to sample with: the pipeline's transformer (one expert, one
            timestep per sample) or its :class:`~cac_align.gen.experts.WanDenoiser` (any Wan
            family), possibly wrapped for training.
        prompt_embeds / negative_embeds: ``(B, L, D)`` from :func:`encode_prompts`.
        generators: one ``torch.Generator`` per sample, on the pipeline's device.
        config: height, width, frames and guidance scale.
        sigmas, timesteps: the schedule (:func:`cac_align.gen.sde.flow_sigmas`).
        store_device: where the recorded latents are kept (default: the pipeline's device).
        positions: also record each step's per-position log-densities (``log_prob_maps``; the
            per-sample log-probs are then their means).
    """
    import torch

    from cac_align.gen.sde import SDESchedule

    device = pipe._execution_device
    batch = prompt_embeds.shape[0]
    if len(generators) != batch:
        raise ValueError(f"{batch} prompts but {len(generators)} generators")
    dtype = pipe.transformer.dtype
    channels = pipe.transformer.config.in_channels
    shape = (
        channels,
        (config.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
        config.height // pipe.vae_scale_factor_spatial,
        config.width // pipe.vae_scale_factor_spatial,
    )

    def noise() -> Any:
        return torch.stack([torch.randn(shape, generator=g, device=device, dtype=torch.float32) for g in generators])

    sigmas = sigmas.to(device)
    transitions = SDESchedule(sigmas, noise_level, noise_schedule)
    latents = noise()
    store = store_device or device
    recorded, log_probs, maps = [latents.to(store)], [], []
    with torch.no_grad():
        for j, t in enumerate(timesteps.to(device)):
            velocity = predict_velocity(transformer, latents, t, prompt_embeds, negative_embeds, config.guidance_scale, dtype, config.guidance_scale_2)
            step = transitions.step(j, latents, velocity, noise=noise(), positions=positions)
            latents = step.prev_sample
            recorded.append(latents.to(store))
            log_probs.append(step.log_prob.to(store))
            if positions:
                maps.append(step.log_prob_map.to(store))
    return Trajectory(
        latents=torch.stack(recorded, dim=1),
        log_probs=torch.stack(log_probs, dim=1),
        sigmas=sigmas.to(store),
        timesteps=timesteps.to(store),
        log_prob_maps=torch.stack(maps, dim=1) if positions else None,
    )


def decode_latents(pipe: Any, latents: Any) -> Any:
    """Final latents ``(B, C, F', H', W')`` to uint8 frames ``(B, F, H, W, 3)``, as ``WanPipeline`` decodes."""
    import torch

    vae = pipe.vae
    with torch.no_grad():
        z = latents.to(next(vae.parameters()).device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return _frames_to_uint8(frames)


def encode_video(pipe: Any, frames: Any) -> Any:
    """uint8 frames ``(F, H, W, 3)`` (``F = 4k + 1``) to Wan latents ``(C, F', H', W')`` float32,
    the inverse of :func:`decode_latents`: the mean of the VAE's latent distribution, normalized
    as ``WanPipeline`` normalizes (``(z - latents_mean) / latents_std``)."""
    import numpy as np
    import torch

    vae = pipe.vae
    x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, F, H, W)
    with torch.no_grad():
        x = x.to(next(vae.parameters()).device, vae.dtype) / 127.5 - 1.0
        z = vae.encode(x).latent_dist.mode()
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        return ((z - mean) * inv_std)[0].float()


def latent_preview(pipe: Any, latents: Any) -> Any:
    """A stand-in for :func:`decode_latents` in toy experiments: uint8 ``(B, 4 (F' - 1) + 1, 8 H',
    8 W', 3)``, the sigmoid of latent channels 0-2 as RGB laid out as Wan's VAE lays out pixels
    (latent frame 0 as pixel frame 0, latent frame k as pixel frames 4k - 3 .. 4k, each latent
    pixel as an 8 x 8 block).

    The tiny random ``AutoencoderKLWan`` decodes to frames that barely depend on the latents (its
    norms normalise them away), so a toy reward on its decode cannot move; this preview keeps what
    the policy changes visible, each latent position owning exactly its pixels. Never for a real
    model. Used by ``benchmarks/localized_credit.py`` and the tests that need a reward the tiny
    policy can move (``run(..., decode=latent_preview)``)."""
    import numpy as np
    import torch

    rgb = torch.sigmoid(latents[:, :3].float()).permute(0, 2, 3, 4, 1).cpu().numpy()
    frames = [0] + [k for k in range(1, rgb.shape[1]) for _ in range(4)]
    rgb = np.repeat(np.repeat(rgb[:, frames], 8, axis=2), 8, axis=3)
    return np.round(rgb * 255.0).astype(np.uint8)


def generate_videos(pipe: Any, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int]) -> Any:
    """One video per (prompt, seed), as uint8 ``(B, F, H, W, 3)``.

    Each video gets its own ``torch.Generator`` seeded with its seed, so a video depends only on
    its prompt and seed, not on which batch it was drawn in (up to float rounding: across batch
    sizes frames may differ by one level in rare pixels).
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = pipe._execution_device
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    negative = WAN_NEGATIVE_PROMPT if config.negative_prompt is None else config.negative_prompt
    output = pipe(
        prompt=list(prompts),
        negative_prompt=[negative] * len(prompts) if config.guidance_scale > 1.0 else None,
        height=config.height,
        width=config.width,
        num_frames=config.num_frames,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        **({"guidance_scale_2": config.guidance_scale_2} if config.guidance_scale_2 is not None else {}),
        generator=generators,
        output_type="np",
        max_sequence_length=config.max_sequence_length,
    )
    return _frames_to_uint8(output.frames)  # (B, F, H, W, 3) in [0, 1]


class VideoGenerator(Protocol):
    """What Best-of-N asks of a generator: the Wan pipeline (:class:`WanGenerator`) and the
    planted-anomaly renderer (:class:`~cac_align.gen.synthetic.SyntheticGenerator`) both give it."""

    def generate(self, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int]) -> Any:
        """One uint8 ``(F, H, W, 3)`` video per (prompt, seed), stacked: ``(B, F, H, W, 3)``."""
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


class WanGenerator:
    """A diffusers ``WanPipeline`` as a :class:`VideoGenerator` (``pipe`` stays reachable)."""

    def __init__(self, pipe: Any):
        self.pipe = pipe

    def generate(self, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int]) -> Any:
        return generate_videos(self.pipe, config, prompts, seeds)

    def on_gpu(self) -> bool:
        return str(self.pipe.device).startswith("cuda")

    def offload(self) -> None:
        self.pipe.enable_model_cpu_offload()

    def execution_device(self) -> str:
        return str(self.pipe._execution_device)


def build_video_generator(config: GeneratorConfig, key: str = "generator") -> VideoGenerator:
    """The :class:`VideoGenerator` ``config`` names: ``synthetic:<recipe>`` or a Wan pipeline."""
    from cac_align.gen.synthetic import PREFIX

    generator = build_generator(config, key)
    return generator if config.name.startswith(PREFIX) else WanGenerator(generator)


def _frames_to_uint8(frames: Any) -> Any:
    """Float frames in [0, 1] (diffusers' ``output_type="np"``) to uint8 (clipped, rounded)."""
    import numpy as np

    frames = np.asarray(frames, dtype=np.float32)
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
