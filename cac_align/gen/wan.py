"""Wan-2.1 text-to-video pipelines: loading by hub id or path, and a tiny offline one.

The generator is diffusers' own ``WanPipeline`` (UMT5 text encoder, ``WanTransformer3DModel``,
``AutoencoderKLWan``, ``FlowMatchEulerDiscreteScheduler``). Real runs name
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (or a local copy) in a recipe; tests and CI build
:func:`build_tiny_wan_pipeline`, the same classes at toy size with seeded random weights and a
word-level tokenizer built in-process, and save/load it through :func:`load_wan_pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

__all__ = [
    "TINY_WAN",
    "WAN_FPS",
    "WAN_NEGATIVE_PROMPT",
    "GeneratorConfig",
    "build_generator",
    "build_tiny_wan_pipeline",
    "generate_videos",
    "load_wan_pipeline",
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

    Attributes:
        name: hub id, a local ``save_pretrained`` folder, or "tiny-random:wan".
        dtype: transformer and text-encoder dtype (bf16 on GPU).
        vae_dtype: VAE dtype; Wan recommends float32 for its VAE.
        device: "auto", "cpu", "cuda", "cuda:1", ...
        height, width, num_frames: 480 x 832, 81 frames (5 s at 16 fps); ``num_frames`` must be 4k + 1.
        num_inference_steps: 50 sampling steps.
        guidance_scale: classifier-free guidance scale (5.0).
        negative_prompt: None uses Wan's default negative prompt; "" turns it off.
        flow_shift: None keeps the checkpoint scheduler's shift; a number overrides it
            (Wan recommends 3.0 at 480p, 5.0 at 720p).
        fps: frame rate the videos are written at.
        max_sequence_length: text tokens the encoder sees (Wan: 512).
    """

    name: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    device: str = "auto"
    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    negative_prompt: str | None = None
    flow_shift: float | None = None
    fps: float = WAN_FPS
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k + 1 (Wan's VAE compresses time 4x), got {self.num_frames}")
        if self.height % 16 or self.width % 16 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 16, got {self.height}x{self.width}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.guidance_scale < 0 or self.fps <= 0:
            raise ValueError("guidance_scale must be >= 0 and fps > 0")

_TINY_WORDS = (
    "a the of in on with and to is are at by from video person man woman dog cat car ball cup "
    "phone hand sign street park room kitchen walking running playing holding red blue green "
    "small large slowly quickly camera scene light water tree sky"
).split()


def _build_word_tokenizer() -> Any:
    """A whitespace word-level tokenizer with T5-style pad/eos/unk tokens, built in-process."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(_TINY_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def build_tiny_wan_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanPipeline`` that runs on a CPU in seconds.

    2 prompts x 9 frames x 32x32 pixels with 4 steps take a few seconds. The VAE compresses
    time 4x and space 8x like the real one, so ``num_frames`` must be ``4k + 1``.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    # Freshly built modules start in train mode (UMT5 dropout on); from_pretrained returns eval.
    for module in (text_encoder, transformer, vae):
        module.eval()
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_wan_pipeline(
    name_or_path: str,
    *,
    dtype: str = "bfloat16",
    vae_dtype: str = "float32",
    device: str = "auto",
    key: str = "model",
) -> Any:
    """Load a ``WanPipeline`` by hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or local path.

    Args:
        name_or_path: hub id or a directory written by ``save_pretrained``.
        dtype: dtype of the transformer and text encoder.
        vae_dtype: dtype of the VAE; diffusers recommends float32 for Wan's VAE.
        device: "auto", "cpu", "cuda", ...
        key: recipe key holding ``name_or_path``, named in errors.
    """
    from diffusers import AutoencoderKLWan, WanPipeline

    source = check_weights_source(name_or_path, key)
    try:
        vae = AutoencoderKLWan.from_pretrained(
            source, subfolder="vae", dtype=resolve_dtype(vae_dtype), use_safetensors=True
        )
        pipe = WanPipeline.from_pretrained(source, vae=vae, dtype=resolve_dtype(dtype), use_safetensors=True)
    except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
        raise weights_error(name_or_path, key, exc) from exc
    return pipe.to(resolve_device(device))


def build_generator(config: GeneratorConfig, key: str = "generator") -> Any:
    """The pipeline ``config`` names, on its device, with its flow shift applied."""
    if config.name == TINY_WAN:
        pipe = build_tiny_wan_pipeline(seed=0).to(resolve_device(config.device))
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
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_videos(pipe: Any, config: GeneratorConfig, prompts: Sequence[str], seeds: Sequence[int]) -> Any:
    """One video per (prompt, seed), as uint8 ``(B, F, H, W, 3)``.

    Each video gets its own ``torch.Generator`` seeded with its seed, so a video depends only on
    its prompt and seed, not on which batch it was drawn in (up to float rounding: across batch
    sizes frames may differ by one level in rare pixels).
    """
    import numpy as np
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = pipe._execution_device if hasattr(pipe, "_execution_device") else "cpu"
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
        generator=generators,
        output_type="np",
        max_sequence_length=config.max_sequence_length,
    )
    frames = np.asarray(output.frames, dtype=np.float32)  # (B, F, H, W, 3) in [0, 1]
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
