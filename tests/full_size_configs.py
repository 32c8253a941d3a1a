"""The configs of full-size models the memory plan is tested against, as plain data, and a writer
that puts them into a Hugging Face cache folder (``huggingface_hub``'s layout:
``models--OWNER--NAME/snapshots/COMMIT/...`` with ``refs/main``), so that
``try_to_load_from_cache`` finds them offline. No weights: the plan builds each model on the meta
device from its config.

Sources (the values each repository's files publish on the Hugging Face Hub; we wrote them down,
nothing here is downloaded):

- ``Wan-AI/Wan2.2-T2V-A14B-Diffusers``: ``model_index.json`` (a ``WanPipeline`` with two experts
  and ``boundary_ratio`` 0.875), ``transformer/`` and ``transformer_2/config.json`` (Wan-2.1-14B's
  shape: 40 blocks, 40 heads of 128, FFN 13824; as ``benchmarks/memory/memory_plan_full_size.py`` builds
  them), ``text_encoder/config.json`` (UMT5-XXL, as ``benchmarks/generators/wan_grpo_step.py``'s
  ``_umt5_xxl``), ``vae/config.json`` (the Wan-2.1 VAE: diffusers' ``AutoencoderKLWan`` defaults).
- ``Qwen/Qwen3-VL-8B-Instruct``: ``config.json`` (as ``benchmarks/judge/score_throughput.py``'s
  ``_full_size_qwen3_vl_8b``).
- ``CodeGoat24/UnifiedReward-qwen-7b``: ``config.json``, a Qwen2.5-VL-7B-Instruct fine-tune (as
  ``benchmarks/judge/status_encoding.py``'s ``QWEN2_5_VL_7B``), in the flat layout Qwen2.5-VL's configs
  were published in.
"""

from __future__ import annotations

import json
from pathlib import Path

_WAN_EXPERT = {
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0.dev0", "added_kv_proj_dim": None, "attention_head_dim": 128,
    "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": None, "in_channels": 16, "num_attention_heads": 40,
    "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2], "pos_embed_seq_len": None, "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024, "text_dim": 4096,
}

WAN22_T2V_A14B = {
    "model_index.json": {
        "_class_name": "WanPipeline", "_diffusers_version": "0.35.0.dev0", "boundary_ratio": 0.875,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
    },
    "transformer/config.json": _WAN_EXPERT,
    "transformer_2/config.json": _WAN_EXPERT,
    "text_encoder/config.json": {
        "architectures": ["UMT5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
        "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
        "layer_norm_epsilon": 1e-06, "model_type": "umt5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "output_past": True,
        "pad_token_id": 0, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "scalable_attention": True,
        "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True, "vocab_size": 256384,
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKLWan", "_diffusers_version": "0.35.0.dev0", "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4],
        "dropout": 0.0,
        "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497,
                         0.2503, -0.2921],
        "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251,
                        1.916],
        "num_res_blocks": 2, "temperal_downsample": [False, True, True], "z_dim": 16,
    },
}

QWEN3_VL_8B_INSTRUCT = {
    "config.json": {
        "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
        "text_config": {
            "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16", "eos_token_id": 151645, "head_dim": 128,
            "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 262144,
            "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"}, "rope_theta": 5000000,
            "use_cache": True, "vocab_size": 151936,
        },
        "tie_word_embeddings": False, "video_token_id": 151656,
        "vision_config": {
            "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "in_channels": 3,
            "initializer_range": 0.02, "intermediate_size": 4304, "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304,
            "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
        "vision_end_token_id": 151653, "vision_start_token_id": 151652,
    },
}

UNIFIED_REWARD_QWEN_7B = {
    "config.json": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "hidden_size": 3584, "image_token_id": 151655, "initializer_range": 0.02, "intermediate_size": 18944,
        "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "use_sliding_window": False, "video_token_id": 151656,
        "vision_config": {
            "depth": 32, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "hidden_size": 1280, "in_chans": 3, "intermediate_size": 3420,
            "model_type": "qwen2_5_vl", "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112,
        },
        "vision_end_token_id": 151653, "vision_start_token_id": 151652, "vision_token_id": 151654, "vocab_size": 152064,
    },
}

# Kandinsky 6.0 Pro (SFT), kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers, as diffusers 0.42.1's Kandinsky6TI2VAPipeline
# holds it. Its transformer's shape as published for the Pro bundle (transformer/config.json: 60 fused blocks of 4096 and
# 2048 for the audio, 4 text blocks, heads of sum(axes_dims) = 128, 40 audio latent channels, the four released switches
# on; recorded from snapshot 7a1a4033 of the Pro-distill bundle in a public vLLM-Omni benchmark; the SFT checkpoint has the
# same blocks, one grid of outputs where pi-Flow's has n_grid); 16 latent channels: HunyuanVideo's VAE. The VAE, audio
# VAE and vocoder as diffusers' classes default (their docstrings: HunyuanVideo's VAE; MMAudio's 44.1 kHz front end,
# BigVGAN-v2); text encoders Qwen2.5-VL-7B (UNIFIED_REWARD_QWEN_7B's shape) and CLIP ViT-L/14's text model. 30.2 B
# transformer parameters counted, where the authors' README says 29 B.
KANDINSKY6_PRO = {
    "model_index.json": {
        "_class_name": "Kandinsky6TI2VAPipeline", "_diffusers_version": "0.42.1", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "Kandinsky6Transformer3DModel"], "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"], "tokenizer": ["transformers", "Qwen2_5_VLProcessor"],
        "text_encoder_2": ["transformers", "CLIPTextModel"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "audio_vae": ["diffusers", "MMAudioVAE"], "vocoder": ["diffusers", "MMAudioVocoder"],
    },
    "transformer/config.json": {
        "_class_name": "Kandinsky6Transformer3DModel", "in_visual_dim": 16, "out_visual_dim": 16, "in_text_dim": 3584, "in_text_dim2": 768,
        "time_dim": 1024, "patch_size": [1, 2, 2], "model_dim": 4096, "ff_dim": 16384, "num_text_blocks": 4, "num_visual_blocks": 60,
        "axes_dims": [32, 48, 48], "visual_cond": True, "in_audio_dim": 40, "out_audio_dim": 40, "model_dim_a": 2048, "ff_dim_a": 7168,
        "axes_dims_a": [32, 48, 48], "text_token_padding": True, "ca_rope": True, "cross_gates": True, "fix_modulation": True,
        "visual_token_type_num_embeddings": 2,
    },
    "vae/config.json": {"_class_name": "AutoencoderKLHunyuanVideo"},
    "audio_vae/config.json": {"_class_name": "MMAudioVAE"},
    "vocoder/config.json": {"_class_name": "MMAudioVocoder"},
    "text_encoder/config.json": UNIFIED_REWARD_QWEN_7B["config.json"],
    "text_encoder_2/config.json": {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768, "torch_dtype": "bfloat16",
    },
}

REPOS = {
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": WAN22_T2V_A14B,
    "Qwen/Qwen3-VL-8B-Instruct": QWEN3_VL_8B_INSTRUCT,
    "CodeGoat24/UnifiedReward-qwen-7b": UNIFIED_REWARD_QWEN_7B,
}


def write_hub_cache(cache: Path, repos: dict[str, dict] | None = None) -> Path:
    """Write ``repos`` (default :data:`REPOS`: repo id -> {file: JSON}) into the Hugging Face cache
    folder ``cache`` in ``huggingface_hub``'s layout; returns ``cache``."""
    commit = "0" * 40
    for repo, files in (REPOS if repos is None else repos).items():
        root = Path(cache) / ("models--" + repo.replace("/", "--"))
        for name, data in files.items():
            path = root / "snapshots" / commit / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1))
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(commit)
    return Path(cache)
