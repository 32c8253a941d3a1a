"""Wan-2.1 text-to-video pipelines: loading by hub id or path, and a tiny offline one.

The generator is diffusers' own ``WanPipeline`` (UMT5 text encoder, ``WanTransformer3DModel``,
``AutoencoderKLWan``, ``FlowMatchEulerDiscreteScheduler``). Real runs name
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (or a local copy) in a recipe; tests and CI build
:func:`build_tiny_wan_pipeline`, the same classes at toy size with seeded random weights and a
word-level tokenizer built in-process, and save/load it through :func:`load_wan_pipeline`.
"""

from __future__ import annotations

from typing import Any

from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

__all__ = ["WAN_FPS", "build_tiny_wan_pipeline", "load_wan_pipeline"]

# Wan-2.1 writes its videos at 16 fps (diffusers' examples export with fps=16).
WAN_FPS = 16.0

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
