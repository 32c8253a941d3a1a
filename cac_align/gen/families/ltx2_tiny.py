"""The tiny LTX-2 pipelines (``tiny-random:ltx2``, ``tiny-random:ltx2.3``, ``tiny-random:ltx2.5``): diffusers'
``LTX2Pipeline`` at toy widths and the real compressions, random weights, a character-level Gemma
tokenizer built in-process (what every family's tiny layout shares: :mod:`cac_align.gen.tiny`).

LTX-2's layout (``version="2.0"``) and LTX-2.3's (``"2.3"``: gated attention, cross-attention
modulation, perturbed attention for STG, per-modality text connectors, the bandwidth-extending
vocoder) differ as the releases do; LTX-2.5's is LTX-2.3's with a Gemma-4 text encoder, a duration
head and the diffusion decoder (:mod:`cac_align.gen.families.ltx25_decoder`). The family and its
condition pipeline build them by name (:data:`TINY_LTX2_BUILDERS`: ``LTX2Family.build_tiny``,
``LTX2Regenerator.build_tiny``), as ``cac-align make-tiny`` and the tiny recipes do.
"""

from __future__ import annotations

from typing import Any

from cac_align.gen.tiny import transformer_made

__all__ = ["LTX2_REGISTERS", "TINY_LTX2_BUILDERS", "assemble_ltx2_pipeline", "build_tiny_ltx2_pipeline", "build_tiny_ltx25_pipeline",
           "gemma_tokenizer"]

LTX2_REGISTERS = 8  # learnable registers per text connector (the real ones: 128); max_sequence_length % 8 == 0
_GEMMA_HIDDEN, _GEMMA_LAYERS = 32, 2  # the real Gemma-3-12B: 3840, 48 (the connectors read all 49 hidden states)
_VIDEO_LATENT, _AUDIO_LATENT, _MEL_BINS = 8, 2, 16  # the real ones: 128, 8, 64
_AUDIO_TOKEN = _AUDIO_LATENT * (_MEL_BINS // 4)  # a packed audio token's width (the real one: 8 x 16 = 128)
_GEMMA_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?-"


def gemma_tokenizer() -> Any:
    """A ``GemmaTokenizer`` built in-process from a character vocabulary (no merges): Gemma's
    special tokens, lower- and upper-case letters, digits and some punctuation; padding on the left,
    as the pipeline sets it."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    for character in _GEMMA_CHARACTERS + _GEMMA_CHARACTERS.upper():
        vocab.setdefault(character, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=1024)


def _gemma_encoder(vocab_size: int) -> Any:
    """The class ``LTX2Pipeline`` types its text encoder as, at toy size (its vision tower, which
    the pipeline never runs, as small as it builds)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=dict(vocab_size=vocab_size, hidden_size=_GEMMA_HIDDEN, intermediate_size=64, num_hidden_layers=_GEMMA_LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=512,
                         rope_theta=10000.0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    ))


def _ltx2_transformer(new: bool) -> Any:
    """LTX-2's audio+video transformer at toy widths: video 2 heads of 8, audio 2 heads of 4, 2
    blocks (spatio-temporal guidance must name block 0 or 1). LTX-2.3 (``new``): gated attention,
    cross-attention modulation, perturbed attention for STG; LTX-2: a caption projection."""
    from diffusers import LTX2VideoTransformer3DModel

    return transformer_made(lambda: LTX2VideoTransformer3DModel(
        in_channels=_VIDEO_LATENT, out_channels=_VIDEO_LATENT, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, vae_scale_factors=(8, 32, 32), gated_attn=new, cross_attn_mod=new, audio_in_channels=_AUDIO_TOKEN,
        audio_out_channels=_AUDIO_TOKEN, audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8,
        audio_gated_attn=new, audio_cross_attn_mod=new, num_layers=2, caption_channels=_GEMMA_HIDDEN, rope_type="split",
        rope_double_precision=True, use_prompt_embeddings=not new, perturbed_attn=new,
    ))


def _ltx2_connectors(new: bool) -> Any:
    """The text connectors: LTX-2.3's project each modality to the transformer's widths; LTX-2's
    share one projection, as wide as the text encoder (4 heads of 8 = 32)."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    kwargs: dict[str, Any] = dict(
        caption_channels=_GEMMA_HIDDEN, text_proj_in_factor=_GEMMA_LAYERS + 1, video_connector_num_layers=1, audio_connector_num_layers=1,
        video_connector_num_learnable_registers=LTX2_REGISTERS, audio_connector_num_learnable_registers=LTX2_REGISTERS,
        connector_rope_base_seq_len=4096, rope_theta=10000.0, rope_double_precision=True, causal_temporal_positioning=False, rope_type="split",
        video_gated_attn=new, audio_gated_attn=new,
    )
    if new:
        kwargs.update(video_connector_num_attention_heads=2, video_connector_attention_head_dim=8, audio_connector_num_attention_heads=2,
                      audio_connector_attention_head_dim=4, per_modality_projections=True, video_hidden_dim=16, audio_hidden_dim=8, proj_bias=True)
    else:
        kwargs.update(video_connector_num_attention_heads=4, video_connector_attention_head_dim=8, audio_connector_num_attention_heads=4,
                      audio_connector_attention_head_dim=8, per_modality_projections=False, proj_bias=False)
    return LTX2TextConnectors(**kwargs)


def _ltx2_video_vae(new: bool) -> Any:
    """The video VAE with the real compression (a 4x patch and three 2x downsamples: 32x in space;
    three in time: 8x) at toy widths; the ratios are passed, as diffusers' conversion passes them."""
    from diffusers import AutoencoderKLLTX2Video

    common = dict(
        in_channels=3, out_channels=3, latent_channels=_VIDEO_LATENT, down_block_types=("LTX2VideoDownBlock3D",) * 4,
        spatio_temporal_scaling=(True, True, True, True), downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        timestep_conditioning=False, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, encoder_causal=True, decoder_causal=False,
        encoder_spatial_padding_mode="zeros", spatial_compression_ratio=32, temporal_compression_ratio=8,
    )
    if new:
        return AutoencoderKLLTX2Video(
            block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), decoder_spatio_temporal_scaling=(True, True, True, True), decoder_inject_noise=(False,) * 5,
            upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"), upsample_residual=(False,) * 4, upsample_factor=(2, 2, 1, 2),
            decoder_spatial_padding_mode="zeros", **common,
        )
    return AutoencoderKLLTX2Video(
        block_out_channels=(8, 16, 32, 64), decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
        upsample_type=("spatiotemporal",) * 3, upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2), decoder_spatial_padding_mode="reflect",
        **common,
    )


def _ltx2_audio_vae() -> Any:
    """The audio VAE (4x in time and in mel bins). Its latent statistics normalise packed audio
    tokens (latent channels x latent mel bins wide), so ``base_channels`` is that width."""
    from diffusers import AutoencoderKLLTX2Audio

    return AutoencoderKLLTX2Audio(
        base_channels=_AUDIO_TOKEN, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=_MEL_BINS, latent_channels=_AUDIO_LATENT, norm_type="pixel", causality_axis="height", dropout=0.0, mid_block_add_attention=False,
        sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=_MEL_BINS, double_z=True,
    )


def _ltx2_vocoder(new: bool) -> Any:
    """LTX-2's vocoder (240 samples per mel frame: 24 kHz), or LTX-2.3's (16 kHz, then bandwidth
    extension to 48 kHz)."""
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

    if new:
        return LTX2VocoderWithBWE(
            in_channels=2 * _MEL_BINS, hidden_channels=64, out_channels=2, upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
            upsample_factors=[5, 2, 2, 2, 2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], bwe_in_channels=2 * _MEL_BINS,
            bwe_hidden_channels=32, bwe_out_channels=2, bwe_upsample_kernel_sizes=[12, 11, 4, 4, 4], bwe_upsample_factors=[6, 5, 2, 2, 2],
            bwe_resnet_kernel_sizes=[3], bwe_resnet_dilations=[[1, 3, 5]], filter_length=512, hop_length=80, window_length=512,
            num_mel_channels=_MEL_BINS, input_sampling_rate=16000, output_sampling_rate=48000,
        )
    return LTX2Vocoder(
        in_channels=2 * _MEL_BINS, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[16, 15, 8, 4, 4], upsample_factors=[6, 5, 2, 2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1, output_sampling_rate=24000,
    )


def build_tiny_ltx2_pipeline(seed: int = 0, version: str = "2.0") -> Any:
    """A tiny random ``LTX2Pipeline`` of LTX-2's (``version="2.0"``) or LTX-2.3's layout (module
    docstring): 2 prompts x 9 frames x 64x64 with 2 steps take well under a second on one core."""
    import torch

    if version not in ("2.0", "2.3"):
        raise ValueError(f"LTX-2 layouts: '2.0' or '2.3', got {version!r}")
    new = version == "2.3"
    tokenizer = gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma_encoder(len(tokenizer))
    transformer, connectors = _ltx2_transformer(new), _ltx2_connectors(new)
    vae, audio_vae, vocoder = _ltx2_video_vae(new), _ltx2_audio_vae(), _ltx2_vocoder(new)
    with torch.no_grad():  # latent statistics other than 0 and 1, as a checkpoint's, so (de)normalising is exercised
        # the vocoder's upsampling convolutions at 3x diffusers' initial scale: at its own, the tiny vocoder's waveform
        # is its biases' (two latents 3x apart gave waveforms 3e-6 apart), so no reward that hears could tell two
        # samples apart, and a sound demo could not show routing (issue #100); at 3x they are 0.19 apart
        for module in vocoder.modules():
            if isinstance(module, torch.nn.ConvTranspose1d):
                module.weight.mul_(3.0)
        vae.latents_mean.copy_(0.1 * torch.randn(_VIDEO_LATENT))
        vae.latents_std.copy_(0.5 + torch.rand(_VIDEO_LATENT))
        audio_vae.latents_mean.copy_(0.1 * torch.randn(_AUDIO_TOKEN))
        audio_vae.latents_std.copy_(0.5 + torch.rand(_AUDIO_TOKEN))
    return assemble_ltx2_pipeline(tokenizer, text_encoder, connectors, transformer, vae, audio_vae, vocoder)


def _gemma4_encoder(vocab_size: int) -> Any:
    """LTX-2.5's text encoder class (``Gemma4UnifiedForConditionalGeneration``) at toy size, as wide
    as the tiny Gemma 3 (the connectors read ``_GEMMA_LAYERS + 1`` hidden states of 32); its vision
    and audio embedders, which the pipeline never runs, as small as they build."""
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    return Gemma4UnifiedForConditionalGeneration(Gemma4UnifiedConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=_GEMMA_HIDDEN, intermediate_size=64, num_hidden_layers=_GEMMA_LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=512,
                         layer_types=["sliding_attention", "full_attention"]),
        vision_config=dict(patch_size=4, pooling_kernel_size=1, mm_embed_dim=16, mm_posemb_size=8, output_proj_dims=_GEMMA_HIDDEN),
        audio_config=dict(audio_embed_dim=16),
    ))


def _ltx25_duration_head() -> Any:
    """``LTX2DurationHead`` over the tiny connectors' widths (video 16, audio 8; the real: 4096, 2048)."""
    from diffusers.pipelines.ltx2.duration_head import LTX2DurationHead

    return LTX2DurationHead(video_cross_attention_dim=16, audio_cross_attention_dim=8, pooler_hidden_dim=16, num_queries=1, num_pooler_heads=2,
                            mlp_hidden_dim=16)


def _ltx25_diffusion_decoder() -> Any:
    """LTX-2.5's diffusion video decoder at toy size, with the real compression (32x in space: two
    2x upsamples and a 16-pixel patch, where the release has four and a 4-pixel one, so that its
    last stage attends over 408 tokens, not 6,528, at 17 x 64 x 96; 8x in time) and the release's
    one x0 step. Its neighbourhood kernels fit the tiny latent grid (2 x 3 latents at 64 x 96)."""
    from diffusers import LTX2VideoDiffusionDecoderModel

    return LTX2VideoDiffusionDecoderModel(
        out_channels=3, latent_channels=_VIDEO_LATENT, patch_size=16, decoder_head_dim=8, decoder_stage_channels=(16, 16, 16, 16, 16),
        decoder_stage_depths=(1, 1, 1, 1, 1), decoder_stage_kernels=((3, 1, 1), (3, 1, 1), (3, 1, 3), (3, 3, 3)),
        decoder_upsample_strides=((1, 1, 1), (2, 1, 1), (2, 2, 2), (2, 1, 1)), decoder_upsample_channel_reductions=(1, 1, 1, 1),
        decoder_stage5_kernel=(3, 3, 3), decoder_t_emb_dim=16, decoder_model_output_type="x0", decoder_num_inference_steps=1,
    )


def build_tiny_ltx25_pipeline(seed: int = 0) -> Any:
    """A tiny random LTX-2.5 (module docstring): ``LTX2Pipeline`` with a Gemma-4 text encoder and a
    duration head, LTX-2.3's other modules, and ``pipe.diffusion_decoder`` (its latent statistics
    the VAE's, as a checkpoint's carry the same ones)."""
    import torch

    tokenizer = gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma4_encoder(len(tokenizer))
    transformer, connectors = _ltx2_transformer(True), _ltx2_connectors(True)
    vae, audio_vae, vocoder = _ltx2_video_vae(True), _ltx2_audio_vae(), _ltx2_vocoder(True)
    duration_head, decoder = _ltx25_duration_head(), _ltx25_diffusion_decoder()
    with torch.no_grad():
        vae.latents_mean.copy_(0.1 * torch.randn(_VIDEO_LATENT))
        vae.latents_std.copy_(0.5 + torch.rand(_VIDEO_LATENT))
        audio_vae.latents_mean.copy_(0.1 * torch.randn(_AUDIO_TOKEN))
        audio_vae.latents_std.copy_(0.5 + torch.rand(_AUDIO_TOKEN))
        decoder.latents_mean.copy_(vae.latents_mean)
        decoder.latents_std.copy_(vae.latents_std)
    pipe = assemble_ltx2_pipeline(tokenizer, text_encoder, connectors, transformer, vae, audio_vae, vocoder, duration_head=duration_head)
    pipe.diffusion_decoder = decoder.eval()
    return pipe


def assemble_ltx2_pipeline(tokenizer: Any, text_encoder: Any, connectors: Any, transformer: Any, vae: Any, audio_vae: Any, vocoder: Any,
                           duration_head: Any = None) -> Any:
    """An ``LTX2Pipeline`` of freshly built modules (in eval mode) and the non-distilled
    checkpoints' scheduler (diffusers' conversion: shifted by the video's token count, ending at
    sigma 0.1), its progress bar off."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline

    for module in (text_encoder, transformer, connectors, vae, audio_vae, vocoder, duration_head):
        if module is not None:
            module.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                                                max_image_seq_len=4096, shift_terminal=0.1)
    pipe = LTX2Pipeline(scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer, connectors=connectors,
                        transformer=transformer, vocoder=vocoder, duration_head=duration_head)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ``generator.name`` -> the builder of that tiny LTX-2
TINY_LTX2_BUILDERS = {
    "tiny-random:ltx2": lambda seed=0: build_tiny_ltx2_pipeline(seed, "2.0"),
    "tiny-random:ltx2.3": lambda seed=0: build_tiny_ltx2_pipeline(seed, "2.3"),
    "tiny-random:ltx2.5": lambda seed=0: build_tiny_ltx25_pipeline(seed),
}
