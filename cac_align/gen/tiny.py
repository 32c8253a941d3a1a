"""Tiny random Wan pipelines for offline runs and tests (the generator side's counterpart of
:mod:`cac_align.vlm.tiny`): diffusers' real ``WanPipeline`` and ``WanImageToVideoPipeline``
classes at toy sizes, a word-level tokenizer built in-process, random weights. Recipes name them:

- ``tiny-random:wan``: Wan-2.1 (one transformer, a VAE with 16 latent channels, 8x spatial and
  4x temporal compression);
- ``tiny-random:wan22-ti2v``: Wan2.2-TI2V-5B's layout (one transformer on 48 latent channels, the
  residual VAE with 16x spatial compression through a 2x2 patchify, per-token timesteps:
  ``expand_timesteps``);
- ``tiny-random:wan22-a14b``: Wan2.2-A14B's layout (two experts: ``transformer`` for the
  high-noise steps, ``transformer_2`` for the low-noise ones, switching at ``boundary_ratio``;
  Wan-2.1's VAE);
- ``tiny-random:wan21-i2v``: Wan2.1-I2V-14B's layout, a ``WanImageToVideoPipeline`` (Wan-2.1's text
  encoder and VAE, a 2-layer CLIP vision encoder and its image processor at 32 x 32, one
  transformer that reads 36 channels: the noise, the frame mask and the image's latents, and the
  image's CLIP tokens through a second key/value projection);
- ``tiny-random:wan22-i2v-a14b``: Wan2.2-I2V-A14B's layout, a ``WanImageToVideoPipeline`` with two
  such 36-channel experts and no CLIP encoder, switching at ``boundary_ratio`` 0.9, shift 5.0;
- ``tiny-random:ltx2`` and ``tiny-random:ltx2.3``: ``LTX2Pipeline``'s two layouts (LTX-2 and
  LTX-2.3, the two branches of diffusers' ``scripts/convert_ltx2_to_diffusers.py``, widths shrunk):
  a Gemma-3 text encoder with a character-level Gemma tokenizer, the text connectors (8 learnable
  registers: ``max_sequence_length`` a multiple of 8), a 2-block audio+video transformer, the
  video VAE at the real 32x spatial and 8x temporal compression (sides multiples of 32, 64 and up
  for LTX-2's reflect padding; ``8k + 1`` frames), the audio VAE and the vocoder at the real
  sample rates (24 kHz; 48 kHz through LTX-2.3's bandwidth extension), and the non-distilled
  checkpoints' scheduler (shift by the video's token count, terminal sigma 0.1);
- ``tiny-random:ltx2.5``: LTX-2.5's layout as diffusers 0.42.1 loads it: ``LTX2Pipeline`` with a
  Gemma-4 text encoder (``Gemma4UnifiedForConditionalGeneration``, on the same character-level
  tokenizer), a ``duration_head`` (``LTX2DurationHead``), LTX-2.3's transformer, connectors, VAE and
  48 kHz vocoder, and the diffusion video decoder that samples (``LTX2VideoDiffusionDecoderModel``,
  ``pipe.diffusion_decoder``: not a component ``LTX2Pipeline`` declares, saved in its own
  ``diffusion_decoder`` folder; :mod:`cac_align.gen.ltx2`). The Gemma-4 ``prompt_enhancer`` is an
  optional component of ``LTX2Pipeline`` and is left out (the jobs never enhance prompts).

**In a sharded run** (``parallel.shard: fsdp2``) only the first process builds a tiny pipeline's
transformers with their weights, as only it reads a real model's (:meth:`cac_align.gen.parallel.Layout.load_generator`).
Each builder draws its modules one after the other from torch's random generator, so the modules
built after a transformer (Wan's VAE, LTX-2's connectors and VAEs) depend on the draws the
transformer took. The first process records the generator's state after each transformer
(:func:`recording_transformer_draws`); the others build the transformers on the meta device and
take up the recorded state after each (:func:`transformers_on_meta`), so everything else they build
is what the first process built, and the transformers' weights reach them from it alone.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

__all__ = ["recording_transformer_draws", "transformers_on_meta", "I2V_A14B_BOUNDARY_RATIO", "TINY_LTX2_BUILDERS", "TINY_WAN_BUILDERS", "assemble_ltx2_pipeline", "build_tiny_ltx2_pipeline", "build_tiny_ltx25_pipeline",
           "build_tiny_wan21_i2v_pipeline", "build_tiny_wan22_a14b_pipeline", "build_tiny_wan22_i2v_a14b_pipeline", "build_tiny_wan22_ti2v_pipeline",
           "build_tiny_wan_pipeline"]

# The A14B's switch: its transformer serves timesteps >= 0.875 * 1000 (Wan2.2's wan_t2v_A14B.py:
# boundary 0.875; the diffusers model_index.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers: boundary_ratio 0.875)
A14B_BOUNDARY_RATIO = 0.875
# Wan2.2-I2V-A14B's switch, later: timesteps >= 0.900 * 1000 (Wan2.2's wan_i2v_A14B.py: boundary 0.900,
# github.com/Wan-Video/Wan2.2 at 42bf4cfaa384bc21833865abc2f9e6c0e67233dc)
I2V_A14B_BOUNDARY_RATIO = 0.9

# Image-to-video through channels: the transformer reads 16 noise + 4 frame-mask + 16 image-latent channels
_I2V_CHANNELS = 16 + 4 + 16
_CLIP_WIDTH = 32  # the tiny CLIP image encoder's width (Wan2.1-I2V's ViT-H/14: 1280), the transformer's image_dim

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


# ---------------------------------------------------------------------------------------
# The transformers of a sharded run's processes (module docstring, "In a sharded run")
# ---------------------------------------------------------------------------------------
class _Draws:
    """The random generator's state after each tiny transformer built: recorded (``replay`` False)
    or replayed, the transformers then on the meta device."""

    def __init__(self, replay: list[Any] | None):
        self.replay = replay is not None
        self.states: list[Any] = list(replay or [])
        self.taken = 0


_DRAWS: _Draws | None = None


@contextlib.contextmanager
def recording_transformer_draws() -> Iterator[list[Any]]:
    """Inside: every tiny builder records torch's CPU random state after each transformer it builds,
    into the yielded list (the states a process building the same pipeline with its transformers on
    the meta device takes up: :func:`transformers_on_meta`)."""
    global _DRAWS
    draws = _Draws(None)
    previous, _DRAWS = _DRAWS, draws
    try:
        yield draws.states
    finally:
        _DRAWS = previous


@contextlib.contextmanager
def transformers_on_meta(states: list[Any]) -> Iterator[None]:
    """Inside: every tiny builder builds its transformers on the meta device (no weight drawn) and
    sets torch's CPU random state after each to ``states`` in turn (what
    :func:`recording_transformer_draws` recorded where the same pipeline was built whole), so the
    modules it builds after them are those built there."""
    global _DRAWS
    previous, _DRAWS = _DRAWS, _Draws(states)
    try:
        yield
        if _DRAWS.taken != len(_DRAWS.states):
            raise RuntimeError(f"a tiny pipeline built {_DRAWS.taken} transformer(s) on the meta device where the pipeline built whole "
                               f"recorded {len(_DRAWS.states)}: not the same pipeline")
    finally:
        _DRAWS = previous


def _transformer_made(build: Callable[[], Any]) -> Any:
    """``build()``, a tiny pipeline's transformer, as the current mode says (module docstring)."""
    import torch

    draws = _DRAWS
    if draws is None:
        return build()
    if not draws.replay:
        transformer = build()
        draws.states.append(torch.get_rng_state())
        return transformer
    if draws.taken >= len(draws.states):
        raise RuntimeError(f"a tiny pipeline builds more transformers than the {len(draws.states)} recorded where it was built whole: "
                           "not the same pipeline")
    with torch.device("meta"):
        transformer = build()
    torch.set_rng_state(draws.states[draws.taken])
    draws.taken += 1
    return transformer


def _tiny_transformer(channels: int, in_channels: int | None = None, image_dim: int | None = None) -> Any:
    """A 2-block ``WanTransformer3DModel`` (2 heads of 12) on ``channels`` latent channels; an
    image-to-video one reads ``in_channels`` (the noise's, the mask's and the image latents'), and
    Wan2.1-I2V's reads ``image_dim``-wide CLIP tokens through a second key/value projection that
    the image embedder has already lifted to the hidden width (diffusers'
    ``scripts/convert_wan_to_diffusers.py``, "Wan-I2V-14B-480p": ``image_dim`` 1280,
    ``added_kv_proj_dim`` 5120 = 40 heads x 128)."""
    from diffusers import WanTransformer3DModel

    heads, head_dim = 2, 12
    return _transformer_made(lambda: WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels or channels,
        out_channels=channels,
        image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim is not None else None,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ))


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


def _tiny_clip(seed: int) -> tuple[Any, Any]:
    """A 2-layer ``CLIPVisionModel`` (32 wide, 32 x 32 images in 8 x 8 patches: 17 tokens) and the
    ``CLIPImageProcessor`` that feeds it (shortest side to 32, centre crop 32 x 32, CLIP's mean and
    std): the image encoder of Wan2.1-I2V's pipeline (the real one: ViT-H/14, 1280 wide, 224 x 224),
    whose second-to-last hidden state the transformer reads."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=_CLIP_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                               image_size=32, patch_size=8)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return encoder, processor


def build_tiny_wan21_i2v_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanImageToVideoPipeline`` of Wan2.1-I2V-14B's layout (module docstring): the
    text encoder and VAE of :func:`build_tiny_wan_pipeline`, a CLIP image encoder, and one
    transformer that reads 36 channels (16 of noise, 4 of the frame mask, 16 of the image's
    latents) and the image's CLIP tokens."""
    import torch
    from diffusers import WanImageToVideoPipeline

    base = build_tiny_wan_pipeline(seed)
    image_encoder, image_processor = _tiny_clip(seed + 2)
    torch.manual_seed(seed + 3)
    transformer = _tiny_transformer(16, in_channels=_I2V_CHANNELS, image_dim=_CLIP_WIDTH).eval()
    pipe = WanImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
                                   transformer=transformer, image_encoder=image_encoder, image_processor=image_processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22_i2v_a14b_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanImageToVideoPipeline`` of Wan2.2-I2V-A14B's layout (module docstring): two
    experts that read 36 channels (no CLIP image encoder), switching at ``boundary_ratio`` 0.9, the
    scheduler shifted by the release's 5.0; Wan-2.1's text encoder and VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    base = build_tiny_wan_pipeline(seed)
    torch.manual_seed(seed + 3)
    transformer = _tiny_transformer(16, in_channels=_I2V_CHANNELS).eval()
    transformer_2 = _tiny_transformer(16, in_channels=_I2V_CHANNELS).eval()
    pipe = WanImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),  # Wan2.2-I2V-A14B samples with shift 5
                                   transformer=transformer, transformer_2=transformer_2, boundary_ratio=I2V_A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ``generator.name`` -> the builder of that tiny pipeline
TINY_WAN_BUILDERS = {
    "tiny-random:wan": build_tiny_wan_pipeline,
    "tiny-random:wan22-ti2v": build_tiny_wan22_ti2v_pipeline,
    "tiny-random:wan22-a14b": build_tiny_wan22_a14b_pipeline,
    "tiny-random:wan21-i2v": build_tiny_wan21_i2v_pipeline,
    "tiny-random:wan22-i2v-a14b": build_tiny_wan22_i2v_a14b_pipeline,
}


# ---------------------------------------------------------------------------------------
# LTX-2
# ---------------------------------------------------------------------------------------
LTX2_REGISTERS = 8  # learnable registers per text connector (the real ones: 128); max_sequence_length % 8 == 0
_GEMMA_HIDDEN, _GEMMA_LAYERS = 32, 2  # the real Gemma-3-12B: 3840, 48 (the connectors read all 49 hidden states)
_VIDEO_LATENT, _AUDIO_LATENT, _MEL_BINS = 8, 2, 16  # the real ones: 128, 8, 64
_AUDIO_TOKEN = _AUDIO_LATENT * (_MEL_BINS // 4)  # a packed audio token's width (the real one: 8 x 16 = 128)
_GEMMA_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?-"


def _gemma_tokenizer() -> Any:
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

    return _transformer_made(lambda: LTX2VideoTransformer3DModel(
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
    tokenizer = _gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = _gemma_encoder(len(tokenizer))
    transformer, connectors = _ltx2_transformer(new), _ltx2_connectors(new)
    vae, audio_vae, vocoder = _ltx2_video_vae(new), _ltx2_audio_vae(), _ltx2_vocoder(new)
    with torch.no_grad():  # latent statistics other than 0 and 1, as a checkpoint's, so (de)normalising is exercised
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

    tokenizer = _gemma_tokenizer()
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
