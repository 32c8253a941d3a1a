"""Write the full-size configs shipped with cac-align (``cac_align/plan/full_size/``): the
``model_index.json`` and each model's ``config.json`` of every generator and judge a shipped big
recipe names, so that ``cac-align check-recipe`` and the jobs' memory plan work offline
(``cac_align.plan``: the Hugging Face cache first, these where it has nothing).

    python benchmarks/memory/write_full_size_configs.py          # rewrites cac_align/plan/full_size/

Config numbers only (facts: widths, depths, heads, channels), never weights, code or text. Each value
below is written down from the source named beside it; each file is written the way its library's
``save_pretrained`` writes it (the class built on the meta device from those numbers, its own
``to_json_string``), so that a default the source leaves out is the class's, as in the release.
``SOURCES.md`` in the output folder lists each file's source (from :data:`SOURCES`).

Where a release's own config is not in any source read here, a stand-in is shipped and said to be
one (:data:`SOURCES`): LTX-2.5's Gemma-4 text encoder (Gemma-3-12B's text dimensions in Gemma-4's
class), MiniMax-H3's text encoder (Qwen3-VL-32B-Instruct's config: the Qwen3-VL of its text width)
and audio VAE (diffusers' class defaults), Skyra-SFT (Qwen2.5-VL-7B-Instruct's architecture), Cosmos3-Nano (diffusers'
class defaults with its sound and action streams on, Wan2.2's VAE), Cosmos-Reason2-8B (Qwen3-VL-8B-Instruct's).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "cac_align" / "plan" / "full_size"

# diffusers' scripts/ at github.com/huggingface/diffusers, read at 58eb52c (2026-11), and diffusers 0.42.1's classes
WAN_SCRIPT = "diffusers scripts/convert_wan_to_diffusers.py"
LTX_SCRIPT = "diffusers scripts/convert_ltx2_to_diffusers.py"
HY_SCRIPT = "diffusers scripts/convert_hunyuan_video1_5_to_diffusers.py"
H3_SCRIPT = "diffusers scripts/convert_minimax_h3_to_diffusers.py"
# The VACE and Wan2.1 I2V entries of the same script, read at a later commit (where it has them)
WAN_SCRIPT_VACE = "diffusers scripts/convert_wan_to_diffusers.py at 7d56827"
# CLIP ViT-H/14, the Wan2.1 I2V models' image encoder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K): open_clip's own figures
OPEN_CLIP_VIT_H = "github.com/mlfoundations/open_clip 964981a, src/open_clip/model_configs/ViT-H-14.json"
# Helios has no conversion script in diffusers (the authors publish diffusers-format folders): its numbers are read from
# the authors' repository github.com/PKU-YuanGroup/Helios at 2276f8f (helios/modules/transformer_helios.py's
# HeliosTransformer3DModel, the switches of scripts/training/configs/stage_*.yaml's model_config), which diffusers
# 0.42.1's HeliosTransformer3DModel defaults and sglang's HeliosArchConfig (sgl-project/sglang 565570b,
# python/sglang/multimodal_gen/configs/models/dits/helios.py) repeat value for value
HELIOS_REPO = "github.com/PKU-YuanGroup/Helios 2276f8f"
# Cosmos 3 has no conversion script in diffusers 0.42.1 and its release's files were not readable offline: the numbers
# are diffusers 0.42.1's classes' (models/transformers/transformer_cosmos3.py, models/autoencoders/autoencoder_cosmos3_audio.py,
# pipelines/cosmos/pipeline_cosmos3_omni.py), with the switches the Nano's release-like config turns on (sound 64 channels,
# action 64 wide over 32 domains, as a release-like config seen in third-party code says), 15.17B parameters on the meta device
COSMOS3_CLASSES = "diffusers 0.42.1"

# -- shared parts -----------------------------------------------------------------------------
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                scalable_attention=True, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
WAN_TRANSFORMER = dict(patch_size=[1, 2, 2], attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
                       qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, added_kv_proj_dim=None)
WAN21_VAE: dict = {}  # AutoencoderKLWan's defaults are the Wan-2.1 VAE (base 96, z 16, temporal downsample F/T/T)
WAN22_VAE = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                 scale_factor_temporal=4, scale_factor_spatial=16)
GEMMA3_12B = dict(
    text_config=dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=256),
    vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896, patch_size=14),
    mm_tokens_per_image=256)
QWEN25_VL_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"})


def _ltx2_transformer(version: str) -> dict:
    common = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
                  cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20, base_height=2048, base_width=2048,
                  audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=32,
                  audio_attention_head_dim=64, audio_cross_attention_dim=2048, audio_scale_factor=4, audio_pos_embed_max_pos=20,
                  audio_sampling_rate=16000, audio_hop_length=160, num_layers=48, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
                  norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840, attention_bias=True, attention_out_bias=True,
                  rope_theta=10000.0, rope_double_precision=True, causal_offset=1, timestep_scale_multiplier=1000,
                  cross_attn_timestep_scale_multiplier=1000, rope_type="split")
    if version == "2.0":
        return {**common, "gated_attn": False, "cross_attn_mod": False, "audio_gated_attn": False, "audio_cross_attn_mod": False,
                "use_prompt_embeddings": True, "perturbed_attn": False}
    return {**common, "gated_attn": True, "cross_attn_mod": True, "audio_gated_attn": True, "audio_cross_attn_mod": True,
            "use_prompt_embeddings": False, "perturbed_attn": True, "ff_bias": False, "use_keyframes_abs_pos_embedding": True}


LTX2_CONNECTORS = dict(caption_channels=3840, text_proj_in_factor=49, video_connector_num_attention_heads=30, video_connector_attention_head_dim=128,
                       video_connector_num_layers=2, video_connector_num_learnable_registers=128, video_gated_attn=False,
                       audio_connector_num_attention_heads=30, audio_connector_attention_head_dim=128, audio_connector_num_layers=2,
                       audio_connector_num_learnable_registers=128, audio_gated_attn=False, connector_rope_base_seq_len=4096, rope_type="split",
                       per_modality_projections=False, proj_bias=False)
# LTX-2.5's: derived from its text encoder's width and depth (here the stand-in's: 3840, 48 + 1)
LTX25_CONNECTORS = dict(caption_channels=3840, text_proj_in_factor=49, video_connector_num_attention_heads=32, video_connector_attention_head_dim=128,
                        video_connector_num_layers=8, video_connector_num_learnable_registers=128, video_gated_attn=True,
                        audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64, audio_connector_num_layers=8,
                        audio_connector_num_learnable_registers=128, audio_gated_attn=True, connector_rope_base_seq_len=4096, rope_theta=10000.0,
                        rope_double_precision=True, causal_temporal_positioning=False, rope_type="split", per_modality_projections=True,
                        video_hidden_dim=4096, audio_hidden_dim=2048, proj_bias=True)
LTX2_VAE = dict(latent_channels=128, block_out_channels=(256, 512, 1024, 2048), decoder_block_out_channels=(256, 512, 1024),
                layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5), spatio_temporal_scaling=(True,) * 4,
                decoder_spatio_temporal_scaling=(True,) * 3, decoder_inject_noise=(False,) * 4,
                downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"), upsample_type=("spatiotemporal",) * 3,
                upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2), patch_size=4, decoder_causal=False, decoder_spatial_padding_mode="reflect",
                spatial_compression_ratio=32, temporal_compression_ratio=8)
LTX25_VAE = dict(in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(256, 512, 1024, 1024),
                 down_block_types=("LTX2VideoDownBlock3D",) * 4, decoder_block_out_channels=(256, 512, 512, 1024), layers_per_block=(4, 6, 4, 2, 2),
                 decoder_layers_per_block=(4, 6, 4, 2, 2), spatio_temporal_scaling=(True,) * 4, decoder_spatio_temporal_scaling=(True,) * 4,
                 decoder_inject_noise=(False,) * 5, downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                 upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"), upsample_residual=(False,) * 4,
                 upsample_factor=(2, 2, 1, 2), timestep_conditioning=False, patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, encoder_causal=True,
                 decoder_causal=False, encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="zeros", spatial_compression_ratio=32,
                 temporal_compression_ratio=8)
LTX2_AUDIO_VAE = dict(base_channels=128, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=None, in_channels=2, resolution=256,
                      latent_channels=8, norm_type="pixel", causality_axis="height", dropout=0.0, mid_block_add_attention=False, sample_rate=16000,
                      mel_hop_length=160, is_causal=True, mel_bins=64, double_z=True)
LTX2_VOCODER = dict(in_channels=128, hidden_channels=1024, out_channels=2, upsample_kernel_sizes=[16, 15, 8, 4, 4], upsample_factors=[6, 5, 2, 2, 2],
                    resnet_kernel_sizes=[3, 7, 11], resnet_dilations=[[1, 3, 5]] * 3, output_sampling_rate=24000)
LTX25_VOCODER: dict = {}  # LTX2VocoderWithBWE's defaults are the 2.3 / 2.5 vocoder's numbers, field for field
LTX25_DIFFUSION_DECODER = dict(out_channels=3, latent_channels=128, patch_size=4, decoder_head_dim=64, decoder_stage_channels=(2048, 1024, 512, 512, 256),
                               decoder_stage_depths=(4, 6, 4, 2, 8), decoder_stage_kernels=((3, 7, 7), (3, 7, 7), (3, 5, 5), (3, 5, 5)),
                               decoder_upsample_strides=((1, 2, 2), (2, 1, 1), (2, 2, 2), (2, 2, 2)), decoder_upsample_channel_reductions=(2, 2, 1, 2),
                               decoder_stage5_kernel=(11, 11, 11), decoder_t_emb_dim=384, decoder_timestep_scale_multiplier=1000.0,
                               decoder_model_output_type="x0", decoder_num_inference_steps=1, spatial_compression_ratio=32, temporal_compression_ratio=8)
HY15_TRANSFORMER = dict(in_channels=65, out_channels=32, num_attention_heads=16, attention_head_dim=128, num_layers=54, num_refiner_layers=2,
                        mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm", text_embed_dim=3584, text_embed_2_dim=1472,
                        image_embed_dim=1152, rope_theta=256.0, rope_axes_dim=(16, 56, 56), use_meanflow=False, target_size=640)
BYT5_SMALL = dict(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_decoder_layers=4, num_heads=6,
                  relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384, patch_size=14)
H3_TRANSFORMER = dict(num_attention_heads=56, attention_head_dim=128, hidden_size=5376, num_layers=50, num_refiner_layers=2, ffn_dim=14336,
                      in_channels=24, audio_in_channels=32, patch_size=[1, 2, 2], text_dim=5120, freq_dim=256, time_embed_hidden_dim=5376,
                      time_embed_dim=2688, rope_freq_dim=16, rope_theta=10000.0, norm_eps=1e-5, qk_norm_eps=1e-5, final_norm_eps=1e-5)
H3_VAE = dict(in_channels=3, out_channels=3, latent_channels=24, block_out_channels=[128, 256, 256, 512, 512, 1024], layers_per_block=2,
              spatial_downsample_factors=[2, 2, 2, 2, 1, 1], temporal_downsample_factors=[1, 2, 2, 1, 1, 1], norm_num_groups=32, norm_eps=1e-6,
              spatial_padding_mode="reflect", decoder_num_layers=36, decoder_num_attention_heads=32, decoder_attention_head_dim=64,
              decoder_num_register_tokens=4, decoder_ffn_mult=4, decoder_rope_theta=100.0, decoder_rope_dim_ratio=0.75, decoder_norm_eps=1e-5,
              clip_length=17, token_drop=3)
HELIOS_TRANSFORMER = dict(patch_size=[1, 2, 2], num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                          freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                          added_kv_proj_dim=None, rope_dim=[44, 42, 42], rope_theta=10000.0, guidance_cross_attn=True, zero_history_timestep=True,
                          has_multi_term_memory_patch=True, is_amplify_history=False, history_scale_mode="per_head")
HELIOS_INDEX = dict(scheduler=("diffusers", "HeliosScheduler"), text_encoder=("transformers", "UMT5EncoderModel"),
                    tokenizer=("transformers", "T5TokenizerFast"), transformer=("diffusers", "HeliosTransformer3DModel"), vae=("diffusers", "AutoencoderKLWan"))
# Cosmos3OmniTransformer's defaults are the Nano's Qwen3-8B widths (hidden 4096, 36 layers, 32 heads / 8 key-value heads of
# 128, FFN 12288, vocabulary 151936, mRoPE 24 + 20 + 20); the release turns on its sound (64 channels, 25 a second) and its
# action stream (64 wide, 32 embodiment domains), which the defaults leave off
COSMOS3_NANO_TRANSFORMER = dict(sound_gen=True, sound_dim=64, sound_latent_fps=25.0, action_gen=True, action_dim=64, num_embodiment_domains=32)
COSMOS3_SOUND_TOKENIZER: dict = {}  # Cosmos3AVAEAudioTokenizer's defaults: 48 kHz stereo, decoder strides 2 x 4 x 5 x 6 x 8, 64 latent channels
COSMOS3_INDEX = dict(default_use_system_prompt=True, enable_safety_checker=True, safety_checker=(None, None),
                     scheduler=("diffusers", "UniPCMultistepScheduler"), sound_tokenizer=("diffusers", "Cosmos3AVAEAudioTokenizer"),
                     text_tokenizer=("transformers", "Qwen2Tokenizer"), transformer=("diffusers", "Cosmos3OmniTransformer"),
                     use_native_flow_schedule=False, vae=("diffusers", "AutoencoderKLWan"))
VACE_1_3B_LAYERS = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28]  # every other of 30 blocks
VACE_14B_LAYERS = [0, 5, 10, 15, 20, 25, 30, 35]  # every fifth of 40
# open_clip ViT-H-14: image 224, 32 layers of width 1280, heads of 80 (16), patch 14, MLP ratio 4 (its default), embedding 1024
CLIP_VIT_H_14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14, image_size=224,
                     projection_dim=1024, hidden_act="gelu")
QWEN3_VL_32B = dict(
    text_config=dict(vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                     rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"}, rope_theta=5000000),
    vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=5120, patch_size=16, spatial_merge_size=2,
                       temporal_patch_size=2, deepstack_visual_indexes=[8, 16, 24], num_position_embeddings=2304),
    tie_word_embeddings=False, image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)


def _recorded(source: str) -> dict:
    """A repository's files as tests/full_size_configs.py records them (the sources are cited there)."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    import full_size_configs

    return {file: ("raw", data) for file, data in getattr(full_size_configs, source).items()}


def _judge_files(source: str) -> dict:
    """A judge's ``config.json`` from tests/full_size_configs.py's records (Qwen3-VL-8B, UnifiedReward-qwen-7b)."""
    return {"config.json": _recorded(source)["config.json"]}


# repo -> {file: (library, class, kwargs) | ("raw", dict)}; model_index.json's entries are written as given
def _index(cls: str, **entries: Any) -> tuple:
    return ("raw", {"_class_name": cls, "_diffusers_version": "0.42.1", **{k: list(v) if isinstance(v, tuple) else v for k, v in entries.items()}})


WAN_T2V_INDEX = dict(scheduler=("diffusers", "UniPCMultistepScheduler"), text_encoder=("transformers", "UMT5EncoderModel"),
                     tokenizer=("transformers", "T5TokenizerFast"), transformer=("diffusers", "WanTransformer3DModel"), vae=("diffusers", "AutoencoderKLWan"))
LTX2_INDEX = dict(scheduler=("diffusers", "FlowMatchEulerDiscreteScheduler"), vae=("diffusers", "AutoencoderKLLTX2Video"),
                  audio_vae=("diffusers", "AutoencoderKLLTX2Audio"), text_encoder=("transformers", "Gemma3ForConditionalGeneration"),
                  tokenizer=("transformers", "GemmaTokenizerFast"), connectors=("ltx2", "LTX2TextConnectors"),
                  transformer=("diffusers", "LTX2VideoTransformer3DModel"), vocoder=("ltx2", "LTX2Vocoder"))
HY15_INDEX = dict(scheduler=("diffusers", "FlowMatchEulerDiscreteScheduler"), text_encoder=("transformers", "Qwen2_5_VLTextModel"),
                  tokenizer=("transformers", "Qwen2TokenizerFast"), text_encoder_2=("transformers", "T5EncoderModel"),
                  tokenizer_2=("transformers", "ByT5Tokenizer"), transformer=("diffusers", "HunyuanVideo15Transformer3DModel"),
                  vae=("diffusers", "AutoencoderKLHunyuanVideo15"), guider=("diffusers", "ClassifierFreeGuidance"))


def _h3_index(repo: str) -> tuple:
    entries = dict(text_encoder=("transformers", "Qwen3VLForConditionalGeneration"), tokenizer=("transformers", "Qwen2TokenizerFast"),
                   processor=("transformers", "Qwen3VLProcessor"), vae=("diffusers", "AutoencoderKLMiniMaxH3"),
                   audio_vae=("diffusers", "AutoencoderKLMiniMaxH3Audio"), transformer=("diffusers", "MiniMaxH3Transformer3DModel"),
                   transformer_ref=("diffusers", "MiniMaxH3Transformer3DModel"), scheduler=("diffusers", "MiniMaxH3Scheduler"),
                   audio_scheduler=("diffusers", "MiniMaxH3Scheduler"))
    return ("raw", {"_class_name": "MiniMaxH3ModularPipeline", "_diffusers_version": "0.42.1", "_blocks_class_name": "MiniMaxH3Blocks",
                    **{name: [lib, cls, {"type_hint": [lib, cls], "pretrained_model_name_or_path": repo, "subfolder": name, "variant": None,
                                         "revision": None}] for name, (lib, cls) in entries.items()}})


def _hy15(task: str) -> dict:
    index = dict(HY15_INDEX)
    files = {"transformer/config.json": ("diffusers", "HunyuanVideo15Transformer3DModel", {**HY15_TRANSFORMER, "task_type": task}),
             "vae/config.json": ("diffusers", "AutoencoderKLHunyuanVideo15", {}),
             "text_encoder/config.json": ("transformers", "Qwen2_5_VLTextModel", QWEN25_VL_7B_TEXT),
             "text_encoder_2/config.json": ("transformers", "T5EncoderModel", BYT5_SMALL)}
    if task == "i2v":
        index.update(image_encoder=("transformers", "SiglipVisionModel"), feature_extractor=("transformers", "SiglipImageProcessor"))
        files["image_encoder/config.json"] = ("transformers", "SiglipVisionModel", SIGLIP_SO400M)
    pipeline = "HunyuanVideo15ImageToVideoPipeline" if task == "i2v" else "HunyuanVideo15Pipeline"
    return {"model_index.json": _index(pipeline, **index), **files}


REPOS: dict[str, dict] = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {
        "model_index.json": _index("WanPipeline", **WAN_T2V_INDEX),
        "transformer/config.json": ("diffusers", "WanTransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 12, "in_channels": 16,
                                                                            "out_channels": 16, "ffn_dim": 8960, "num_layers": 30}),
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": {
        "model_index.json": ("raw", {**_index("WanPipeline", **WAN_T2V_INDEX)[1], "expand_timesteps": True}),
        "transformer/config.json": ("diffusers", "WanTransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 24, "in_channels": 48,
                                                                            "out_channels": 48, "ffn_dim": 14336, "num_layers": 30}),
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN22_VAE),
    },
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": {
        "model_index.json": ("raw", {**_index("WanPipeline", **WAN_T2V_INDEX, transformer_2=("diffusers", "WanTransformer3DModel"))[1],
                                     "boundary_ratio": 0.875}),
        **{f"{t}/config.json": ("diffusers", "WanTransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 40, "in_channels": 16,
                                                                        "out_channels": 16, "ffn_dim": 13824, "num_layers": 40})
           for t in ("transformer", "transformer_2")},
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": {
        "model_index.json": ("raw", {**_index("WanImageToVideoPipeline", **WAN_T2V_INDEX, transformer_2=("diffusers", "WanTransformer3DModel"),
                                              image_encoder=(None, None), image_processor=(None, None))[1], "boundary_ratio": 0.9}),
        **{f"{t}/config.json": ("diffusers", "WanTransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 40, "in_channels": 36,
                                                                        "out_channels": 16, "ffn_dim": 13824, "num_layers": 40})
           for t in ("transformer", "transformer_2")},
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": {
        "model_index.json": _index("WanImageToVideoPipeline", **WAN_T2V_INDEX, image_encoder=("transformers", "CLIPVisionModelWithProjection"),
                                   image_processor=("transformers", "CLIPImageProcessor")),
        "transformer/config.json": ("diffusers", "WanTransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 40, "in_channels": 36,
                                                                            "out_channels": 16, "ffn_dim": 13824, "num_layers": 40, "image_dim": 1280,
                                                                            "added_kv_proj_dim": 5120}),
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "image_encoder/config.json": ("transformers", "CLIPVisionModelWithProjection", CLIP_VIT_H_14),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "Wan-AI/Wan2.1-VACE-1.3B-diffusers": {
        "model_index.json": _index("WanVACEPipeline", **{**WAN_T2V_INDEX, "transformer": ("diffusers", "WanVACETransformer3DModel")}),
        "transformer/config.json": ("diffusers", "WanVACETransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 12, "in_channels": 16,
                                                                                "out_channels": 16, "ffn_dim": 8960, "num_layers": 30,
                                                                                "vace_layers": VACE_1_3B_LAYERS, "vace_in_channels": 96}),
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "linoyts/Wan2.2-VACE-Fun-14B-diffusers": {
        "model_index.json": ("raw", {**_index("WanVACEPipeline", **{**WAN_T2V_INDEX, "transformer": ("diffusers", "WanVACETransformer3DModel")},
                                              transformer_2=("diffusers", "WanVACETransformer3DModel"))[1], "boundary_ratio": 0.875}),
        **{f"{t}/config.json": ("diffusers", "WanVACETransformer3DModel", {**WAN_TRANSFORMER, "num_attention_heads": 40, "in_channels": 16,
                                                                            "out_channels": 16, "ffn_dim": 13824, "num_layers": 40,
                                                                            "vace_layers": VACE_14B_LAYERS, "vace_in_channels": 96})
           for t in ("transformer", "transformer_2")},
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "Lightricks/LTX-2": {
        "model_index.json": _index("LTX2Pipeline", **LTX2_INDEX),
        "transformer/config.json": ("diffusers", "LTX2VideoTransformer3DModel", _ltx2_transformer("2.0")),
        "connectors/config.json": ("ltx2", "LTX2TextConnectors", LTX2_CONNECTORS),
        "vae/config.json": ("diffusers", "AutoencoderKLLTX2Video", LTX2_VAE),
        "audio_vae/config.json": ("diffusers", "AutoencoderKLLTX2Audio", LTX2_AUDIO_VAE),
        "vocoder/config.json": ("ltx2", "LTX2Vocoder", LTX2_VOCODER),
        "text_encoder/config.json": ("transformers", "Gemma3ForConditionalGeneration", GEMMA3_12B),
    },
    "Lightricks/LTX-2.5-Diffusers": {
        "model_index.json": _index("LTX2Pipeline", **{**LTX2_INDEX, "text_encoder": ("transformers", "Gemma4UnifiedForConditionalGeneration"),
                                                      "vocoder": ("ltx2", "LTX2VocoderWithBWE")}),
        "transformer/config.json": ("diffusers", "LTX2VideoTransformer3DModel", _ltx2_transformer("2.5")),
        "connectors/config.json": ("ltx2", "LTX2TextConnectors", LTX25_CONNECTORS),
        "vae/config.json": ("diffusers", "AutoencoderKLLTX2Video", LTX25_VAE),
        "audio_vae/config.json": ("diffusers", "AutoencoderKLLTX2Audio", LTX2_AUDIO_VAE),
        "vocoder/config.json": ("ltx2", "LTX2VocoderWithBWE", LTX25_VOCODER),
        "diffusion_decoder/config.json": ("diffusers", "LTX2VideoDiffusionDecoderModel", LTX25_DIFFUSION_DECODER),
        "text_encoder/config.json": ("transformers", "Gemma4UnifiedForConditionalGeneration", dict(text_config=GEMMA3_12B["text_config"])),
    },
    "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v": _hy15("t2v"),
    "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v": _hy15("i2v"),
    "MiniMaxAI/MiniMax-H3": {
        "modular_model_index.json": _h3_index("MiniMaxAI/MiniMax-H3"),
        "transformer/config.json": ("diffusers", "MiniMaxH3Transformer3DModel", H3_TRANSFORMER),
        "vae/config.json": ("diffusers", "AutoencoderKLMiniMaxH3", H3_VAE),
        "audio_vae/config.json": ("diffusers", "AutoencoderKLMiniMaxH3Audio", {}),
        "text_encoder/config.json": ("transformers", "Qwen3VLForConditionalGeneration", QWEN3_VL_32B),
    },
    "kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers": _recorded("KANDINSKY6_PRO"),
    "BestWishYsh/Helios-Base": {
        "model_index.json": _index("HeliosPipeline", **HELIOS_INDEX),
        "transformer/config.json": ("diffusers", "HeliosTransformer3DModel", HELIOS_TRANSFORMER),
        "text_encoder/config.json": ("transformers", "UMT5EncoderModel", UMT5_XXL),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN21_VAE),
    },
    "nvidia/Cosmos3-Nano": {
        "model_index.json": _index("Cosmos3OmniPipeline", **COSMOS3_INDEX),
        "transformer/config.json": ("diffusers", "Cosmos3OmniTransformer", COSMOS3_NANO_TRANSFORMER),
        "vae/config.json": ("diffusers", "AutoencoderKLWan", WAN22_VAE),
        "sound_tokenizer/config.json": ("diffusers", "Cosmos3AVAEAudioTokenizer", COSMOS3_SOUND_TOKENIZER),
    },
    "Qwen/Qwen3-VL-8B-Instruct": _judge_files("QWEN3_VL_8B_INSTRUCT"),
    "CodeGoat24/UnifiedReward-qwen-7b": _judge_files("UNIFIED_REWARD_QWEN_7B"),
    "JoeLeelyf/Skyra-SFT": _judge_files("UNIFIED_REWARD_QWEN_7B"),
    "nvidia/Cosmos-Reason2-8B": _judge_files("QWEN3_VL_8B_INSTRUCT"),
}

# repo -> where its numbers come from (SOURCES.md)
SOURCES = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": f"transformer: {WAN_SCRIPT} `Wan-T2V-1.3B`; vae: AutoencoderKLWan's defaults (the Wan-2.1 VAE the "
                                        f"script builds); text_encoder: UMT5-XXL (google/umt5-xxl's config, which the script loads); "
                                        f"model_index.json: the script's WanPipeline.",
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": f"transformer: {WAN_SCRIPT} `Wan2.2-TI2V-5B`; vae: the same script's Wan2.2 VAE (base 160, decoder "
                                       f"base 256, z 48, residual, patch 2, 16x / 4x); text_encoder: UMT5-XXL; model_index.json: WanPipeline "
                                       f"with expand_timesteps.",
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": f"transformer and transformer_2: {WAN_SCRIPT} `Wan2.2-T2V-A14B`; vae: the Wan-2.1 VAE; "
                                        f"text_encoder: UMT5-XXL; model_index.json: WanPipeline, boundary_ratio 0.875 (the script).",
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": f"transformer and transformer_2: {WAN_SCRIPT} `Wan2.2-I2V-14B-720p` (in_channels 36); vae: the "
                                        f"Wan-2.1 VAE; text_encoder: UMT5-XXL; model_index.json: WanImageToVideoPipeline, boundary_ratio 0.9, "
                                        f"no image encoder (the script).",
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": f"transformer: {WAN_SCRIPT_VACE} `Wan-I2V-14B-480p` (in_channels 36, image_dim 1280, "
                                            f"added_kv_proj_dim 5120); image_encoder: CLIP ViT-H/14 (the script loads "
                                            f"laion/CLIP-ViT-H-14-laion2B-s32B-b79K's CLIPVisionModelWithProjection; its figures from "
                                            f"{OPEN_CLIP_VIT_H}: width 1280, 32 layers, heads of 80, patch 14 at 224, MLP x4, embedding 1024); "
                                            f"vae: the Wan-2.1 VAE; text_encoder: UMT5-XXL; model_index.json: the script's WanImageToVideoPipeline "
                                            f"with its image encoder.",
    "Wan-AI/Wan2.1-VACE-1.3B-diffusers": f"transformer: {WAN_SCRIPT_VACE} `Wan-VACE-1.3B` (WanVACETransformer3DModel: the 1.3B's shape, VACE "
                                         f"blocks at every other of its 30 layers, vace_in_channels 96); vae: the Wan-2.1 VAE; text_encoder: "
                                         f"UMT5-XXL; model_index.json: the script's WanVACEPipeline.",
    "linoyts/Wan2.2-VACE-Fun-14B-diffusers": f"transformer and transformer_2: {WAN_SCRIPT_VACE} `Wan2.2-VACE-Fun-14B` (the converted "
                                             f"alibaba-pai/Wan2.2-VACE-Fun-A14B: the 14B's shape, VACE blocks at every fifth of its 40 layers, "
                                             f"vace_in_channels 96); vae: the Wan-2.1 VAE; text_encoder: UMT5-XXL; model_index.json: the "
                                             f"script's WanVACEPipeline, boundary_ratio 0.875.",
    "Lightricks/LTX-2": f"transformer, connectors, vae, audio_vae, vocoder: {LTX_SCRIPT}, version 2.0; text_encoder: Gemma-3-12B "
                        f"(google/gemma-3-12b-it's config).",
    "Lightricks/LTX-2.5-Diffusers": f"transformer, connectors, vae, audio_vae, vocoder, diffusion_decoder: {LTX_SCRIPT}, version 2.5 "
                                    f"(the vocoder: LTX2VocoderWithBWE's defaults, the script's 2.5 numbers field for field). "
                                    f"**Stand-in**: text_encoder. Gemma-4-12B's config.json is in no source read here; shipped is "
                                    f"Gemma4UnifiedForConditionalGeneration with Gemma-3-12B's text dimensions (width 3840, 48 layers, 16 "
                                    f"heads of 256, 8 key-value heads, FFN 15360) and the class's default vision and audio towers; the "
                                    f"connectors' caption_channels and text_proj_in_factor follow it (the script derives them from the "
                                    f"text encoder: width, layers + 1). Put the release's own configs in the Hugging Face cache for its "
                                    f"exact plan.",
    "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v": f"transformer: {HY_SCRIPT} `480p_t2v`; vae: AutoencoderKLHunyuanVideo15's "
                                                         f"defaults (the script builds it so); text_encoder: Qwen2.5-VL-7B-Instruct's "
                                                         f"language model (the script's load_mllm); text_encoder_2: google/byt5-small's "
                                                         f"config (the script's load_byt5; its added glyph tokens not counted).",
    "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v": "as 480p_t2v, transformer `480p_i2v`; image_encoder: SigLIP so400m/14 at 384 "
                                                         "(google/siglip-so400m-patch14-384's vision config: width 1152, the "
                                                         "transformer's image_embed_dim).",
    "MiniMaxAI/MiniMax-H3": f"transformer: {H3_SCRIPT} MINIMAX_H3_TRANSFORMER_CONFIG; vae: MINIMAX_H3_VIDEO_VAE_CONFIG; "
                            f"modular_model_index.json: the script's write_model_index. **Stand-ins**: text_encoder: the script names a "
                            f"Qwen3-VL whose text width is the transformer's text_dim 5120; shipped is Qwen3-VL-32B-Instruct's config "
                            f"(the Qwen3-VL of that width; all 64 layers counted, where the pipeline reads hidden state 50); audio_vae: "
                            f"AutoencoderKLMiniMaxH3Audio's defaults (the script reads the release's from its metadata.json, which is in "
                            f"no source read here; 32 kHz, 800 samples a latent, as the family module's docstring says).",
    "kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers": "every file: tests/full_size_configs.py's KANDINSKY6_PRO, which cites its sources "
                                                   "(the transformer's config.json as published for the Pro bundle; the VAE, audio VAE and "
                                                   "vocoder at diffusers' class defaults; Qwen2.5-VL-7B and CLIP ViT-L/14's text model).",
    "BestWishYsh/Helios-Base": f"transformer: {HELIOS_REPO}, helios/modules/transformer_helios.py's HeliosTransformer3DModel (Wan2.1-T2V-14B's "
                               f"shape: 40 blocks, 40 heads of 128, FFN 13824, text width 4096; rotary axes 44 + 42 + 42) with the release's "
                               f"switches from scripts/training/configs/stage_*.yaml (multi-term memory patch, history at timestep 0, "
                               f"guidance cross-attention on; history amplification off, per-head scale); diffusers 0.42.1's "
                               f"HeliosTransformer3DModel defaults and sglang's HeliosArchConfig give the same numbers. vae: the Wan-2.1 VAE "
                               f"(infer_helios.py loads AutoencoderKLWan from the release's vae/); text_encoder: UMT5-XXL; model_index.json: "
                               f"HeliosPipeline with HeliosScheduler (diffusers 0.42.1's HeliosPipeline components). The release's "
                               f"transformer/config.json itself is in no source read here: a value it changes from those defaults is not "
                               f"known here (put its own files in the Hugging Face cache for its exact plan).",
    "nvidia/Cosmos3-Nano": f"**Stand-ins**, every file: the release's own files were not readable offline (its scheduler, index flags, "
                           f"transformer config and which revision holds bf16 weights are not known here). transformer: "
                           f"{COSMOS3_CLASSES}'s Cosmos3OmniTransformer defaults (Qwen3-8B's widths: hidden 4096, 36 layers, 32 heads and 8 "
                           f"key-value heads of 128, FFN 12288, vocabulary 151936) with the sound (64 channels, 25 a second) and the action "
                           f"stream (64 wide, 32 embodiment domains) on, as a release-like config seen in third-party code says: 15.17B "
                           f"parameters on the meta device (the \"16B\" of its name); vae: Wan2.2's VAE (z 48, 16x / 4x: the pipeline's "
                           f"_encode_video says it matches Wan2.2's VAE; the numbers of Wan-AI/Wan2.2-TI2V-5B-Diffusers' above); "
                           f"sound_tokenizer: Cosmos3AVAEAudioTokenizer's defaults (48 kHz stereo, hop 1920, 64 latent channels, encoder "
                           f"included); model_index.json: Cosmos3OmniPipeline's components and its register_to_config defaults "
                           f"(enable_safety_checker true, default_use_system_prompt true, use_native_flow_schedule false). Put the "
                           f"release's own files in the Hugging Face cache for its exact plan.",
    "Qwen/Qwen3-VL-8B-Instruct": "config.json: tests/full_size_configs.py's record of the repository's config.json.",
    "CodeGoat24/UnifiedReward-qwen-7b": "config.json: tests/full_size_configs.py's record of the repository's config.json.",
    "JoeLeelyf/Skyra-SFT": "**Stand-in**: a Qwen2.5-VL-7B fine-tune (cac_align/rewards/skyra.py); shipped is UnifiedReward-qwen-7b's "
                           "config.json, Qwen2.5-VL-7B-Instruct's architecture.",
    "nvidia/Cosmos-Reason2-8B": "**Stand-in**: Qwen3-VL-8B post-trained by NVIDIA (docs/rewards.md, cosmos_reason); its own config.json is "
                                "in no source read here; shipped is Qwen3-VL-8B-Instruct's config.json (tests/full_size_configs.py's "
                                "record), the architecture it was trained from.",
}


def _class(library: str, name: str) -> Any:
    import importlib

    if library in ("diffusers", "transformers"):
        return getattr(importlib.import_module(library), name)
    return getattr(importlib.import_module(f"diffusers.pipelines.{library}"), name)


def config_json(library: str, name: str, kwargs: dict) -> str:
    """The ``config.json`` the class ``name`` writes when built from ``kwargs`` (only the arguments
    its constructor takes: a source's key the class does not know is left out)."""
    import torch

    cls = _class(library, name)
    if library == "transformers":
        config = cls.config_class(**kwargs)
        config.architectures = [name]
        return config.to_json_string(use_diff=True)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise SystemExit(f"{name} (diffusers installed) takes no {unknown}: update the numbers")
    with torch.device("meta"):
        model = cls(**kwargs)
    return model.to_json_string()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    lines = ["# Full-size configs shipped with cac-align", "",
             "Written by `benchmarks/memory/write_full_size_configs.py` (config numbers only: no weights). "
             "`cac_align.plan` reads a release's files from here where the Hugging Face cache has none of its own. "
             "Sources (diffusers' conversion scripts at github.com/huggingface/diffusers 58eb52c, diffusers 0.42.1's classes):", ""]
    for repo, files in REPOS.items():
        root = args.out / repo.replace("/", "--")
        for file, spec in files.items():
            text = json.dumps(spec[1], indent=2) + "\n" if spec[0] == "raw" else config_json(*spec)
            path = root / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        lines.append(f"- `{repo}`: {SOURCES[repo]}")
    (args.out / "SOURCES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(REPOS)} repositories' configs under {args.out}")


if __name__ == "__main__":
    main()
