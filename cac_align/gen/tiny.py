"""Tiny random Wan pipelines for offline runs and tests (the generator side's counterpart of
:mod:`cac_align.vlm.tiny`): diffusers' real ``WanPipeline`` classes at toy sizes, a word-level
tokenizer built in-process, random weights. Recipes name them:

- ``tiny-random:wan``: Wan-2.1 (one transformer, a VAE with 16 latent channels, 8x spatial and
  4x temporal compression);
- ``tiny-random:wan22-ti2v``: Wan2.2-TI2V-5B's layout (one transformer on 48 latent channels, the
  residual VAE with 16x spatial compression through a 2x2 patchify, per-token timesteps:
  ``expand_timesteps``);
- ``tiny-random:wan22-a14b``: Wan2.2-A14B's layout (two experts: ``transformer`` for the
  high-noise steps, ``transformer_2`` for the low-noise ones, switching at ``boundary_ratio``;
  Wan-2.1's VAE).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TINY_WAN_BUILDERS", "build_tiny_wan22_a14b_pipeline", "build_tiny_wan22_ti2v_pipeline", "build_tiny_wan_pipeline"]

# The A14B's switch: its transformer serves timesteps >= 0.875 * 1000 (Wan2.2's wan_t2v_A14B.py:
# boundary 0.875; the diffusers model_index.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers: boundary_ratio 0.875)
A14B_BOUNDARY_RATIO = 0.875

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


def _tiny_text_encoder(tokenizer: Any) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
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


def _tiny_transformer(channels: int) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )


def build_tiny_wan22_ti2v_pipeline(seed: int = 0) -> Any:
    """A tiny random pipeline of Wan2.2-TI2V-5B's layout (module docstring), text-to-video.

    Its VAE is the residual one of the 5B (48 latent channels; 2x2 patchify then 8x, so 16x
    spatial compression; 4x in time): frames must be multiples of 32 pixels on each side for the
    transformer's 2x2 patches, and ``num_frames`` ``4k + 1``. The pipeline gives every latent
    token its own timestep (``expand_timesteps``), as diffusers does for the 5B.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = _build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_text_encoder(tokenizer)
    transformer = _tiny_transformer(48)
    vae = AutoencoderKLWan(
        base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # Wan2.2-TI2V-5B samples with shift 5
    for module in (text_encoder, transformer, vae):
        module.eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
                       expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22_a14b_pipeline(seed: int = 0) -> Any:
    """A tiny random pipeline of Wan2.2-A14B's layout (module docstring): two experts of the same
    shape with their own random weights, switching at ``boundary_ratio`` 0.875; Wan-2.1's VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    base = build_tiny_wan_pipeline(seed)
    torch.manual_seed(seed + 1)
    transformer_2 = _tiny_transformer(16).eval()
    pipe = WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=12.0),  # Wan2.2-T2V-A14B samples with shift 12
                       transformer=base.transformer, transformer_2=transformer_2, boundary_ratio=A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanPipeline`` that runs on a CPU in seconds.

    2 prompts x 9 frames x 32x32 pixels with 4 steps take a few seconds. The VAE compresses
    time 4x and space 8x like the real one, so ``num_frames`` must be ``4k + 1``.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = _build_word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _tiny_text_encoder(tokenizer)
    transformer = _tiny_transformer(16)
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


# ``generator.name`` -> the builder of that tiny pipeline
TINY_WAN_BUILDERS = {
    "tiny-random:wan": build_tiny_wan_pipeline,
    "tiny-random:wan22-ti2v": build_tiny_wan22_ti2v_pipeline,
    "tiny-random:wan22-a14b": build_tiny_wan22_a14b_pipeline,
}
