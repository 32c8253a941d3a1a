"""Flow-GRPO steps of Wan-2.1-1.3B's, Wan2.2-TI2V-5B's and LTX-2's architectures (random weights): seconds and peak GPU memory.

    python benchmarks/generators/wan_grpo_step.py --mode gpu-1.3b                  # 480x832x81, one GPU
    python benchmarks/generators/wan_grpo_step.py --mode gpu-1.3b --with-rewards   # + CaC-8B and UR-7B resident
    python benchmarks/generators/wan_grpo_step.py --mode gpu-ti2v-5b               # Wan2.2-TI2V-5B at its recipe's 704x1280x121
    python benchmarks/generators/wan_grpo_step.py --mode gpu-ti2v-5b --shard fsdp2 --with-judge   # sharded path, CaC-8B resident, vs the plan
    python benchmarks/generators/wan_grpo_step.py --mode gpu-ltx2                  # LTX-2 at its recipe's 512x768x121 (video + audio)
    python benchmarks/generators/wan_grpo_step.py --mode cpu-check                 # the same code path, tiny Wan, seconds
    python benchmarks/generators/wan_grpo_step.py --mode cpu-check-ti2v            # ... and the tiny TI2V-5B layout
    python benchmarks/generators/wan_grpo_step.py --mode cpu-check-ltx2            # ... and the tiny LTX-2

Runs the shipped trainer (:func:`cac_align.jobs.flow_grpo.run`) on the paper's recipe
(``recipes/align/flow_grpo_wan_ur_cac.yaml``: 480x832, 81 frames, CFG 5, LoRA rank 32 on the
attention projections, bf16, gradient checkpointing, latents stored on the CPU, KL to the
base) for ``--steps`` steps of one prompt x ``--group`` videos, with ``--sampling-steps``
denoising steps (the paper: 50). The pipeline is Wan-2.1-1.3B's architecture built from its
published config values with random weights: the UMT5-XXL text encoder, the 1.3B transformer
(30 blocks, width 1536, 12 heads, FFN 8960) and the Wan-2.1 VAE (diffusers' defaults). Nothing
is downloaded; the prompt tokenizer is the tiny word tokenizer (the text encoder still runs at
Wan's 512 tokens).

The reward is the model-free ``brightness`` reward, so the figures are the generator's own:
sampling (per video and denoising step) and training (per video and trained timestep, policy
+ reference forward and the backward). ``--with-rewards`` also builds Qwen3-VL-8B's (CaC) and
Qwen2.5-VL-7B's (UnifiedReward) architectures in bf16 on the same GPU and keeps them there
during the step, the memory of a single-GPU UR + CaC run without offloading; their scoring
time is measured by ``score_throughput.py --mode gpu-8b`` and ``status_encoding.py --mode
gpu-ur7b``.

The paper's step (2 prompts x 16 videos, 50 sampling steps, every timestep trained) on 8 GPUs
is 4 videos per GPU; the script prints that extrapolation from the per-unit figures next to
what it measured.

``--mode gpu-ti2v-5b`` runs ``recipes/align/flow_grpo_wan22_ti2v_ur_cac.yaml`` (704x1280, 121
frames, LoRA rank 32, bf16, gradient checkpointing) on Wan2.2-TI2V-5B's architecture: the same
UMT5-XXL, the 5B transformer (30 blocks, 24 heads of 128, FFN 14336, 48 latent channels) and the
Wan2.2 VAE (base 160, decoder base 256, z 48, 2x2 patchify, 16x in space, residual), the values
of diffusers' ``scripts/convert_wan_to_diffusers.py`` for ``Wan2.2-TI2V-5B``; the pipeline gives
every latent token its timestep (``expand_timesteps``). Its latent is 31 x 44 x 80 (27,280 tokens
after the 2x2 patches, against Wan-2.1's 21 x 60 x 104 and 32,760).

``--mode gpu-ltx2`` runs ``recipes/align/flow_grpo_ltx2_ur_cac.yaml`` (512x768, 121 frames, CFG
3.0 with rescale 0.7 and audio CFG 7.0: 2 sample-forwards a sampling step; LoRA rank 32 on the video
branch, bf16, gradient checkpointing) on LTX-2's architecture: the 48-block audio+video transformer
(18.9B: video 32 heads of 128, audio 32 of 64), the text connectors (1.4B) and the video VAE (1.2B,
128 latent channels, 32x / 8x), the audio VAE and the 24 kHz vocoder, the values of diffusers'
``scripts/convert_ltx2_to_diffusers.py`` for LTX-2 ("2.0"). Its latent is 16 x 16 x 24 (6,144 video
tokens, one per latent) beside 126 audio tokens and 1,024 text tokens. The text encoder is
**not** Gemma-3-12B: a Gemma-3 of its width (3840) and depth (48 layers: the connectors read all 49
hidden states) with one 16-wide attention head and a 16-wide MLP, so that the figures are the
generator's step without the encoder's 24.4 GB (12.2B parameters in bf16, arithmetic; it runs once
a step on the prompts and may leave the GPU between: what the script prints beside the measured peak).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAPER_RECIPE = REPO / "recipes/align/flow_grpo_wan_ur_cac.yaml"
TI2V_RECIPE = REPO / "recipes/align/flow_grpo_wan22_ti2v_ur_cac.yaml"
LTX2_RECIPE = REPO / "recipes/align/flow_grpo_ltx2_ur_cac.yaml"
GEMMA_3_12B_PARAMETERS = 12.2e9  # Gemma-3-12B (text 11.77B incl. its 1.0B tied embedding, SigLIP + projector 0.44B), counted from its config


def _umt5_xxl(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    )


def _random_wan_pipeline(device: str, dtype, transformer: dict, vae: dict, flow_shift: float, expand_timesteps: bool = False):
    """A ``WanPipeline`` of random weights on ``device``: UMT5-XXL and a ``WanTransformer3DModel``
    of ``transformer``'s sizes built in ``dtype``, an ``AutoencoderKLWan`` of ``vae``'s in float32."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    from cac_align.gen.families.wan import build_tiny_wan_pipeline

    tokenizer = build_tiny_wan_pipeline(seed=0).tokenizer  # offline: words only, no UMT5 vocabulary file
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16: no fp32 copy of billions of parameters on the way
    try:
        with torch.device(device):
            text_encoder = _umt5_xxl(tokenizer)
            model = WanTransformer3DModel(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, num_layers=30,
                                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **transformer)
    finally:
        torch.set_default_dtype(previous)
    with torch.device(device):
        autoencoder = AutoencoderKLWan(**vae)  # float32, as Wan recommends
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift)
    for module in (text_encoder, model, autoencoder):
        module.eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=autoencoder, scheduler=scheduler, transformer=model,
                       expand_timesteps=expand_timesteps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_1_3b_pipeline(device: str, dtype):
    """``WanPipeline`` with Wan-2.1-T2V-1.3B's architecture and random weights on ``device``: the
    1.3B transformer and the Wan-2.1 VAE (diffusers' defaults), shift 3."""
    transformer = dict(num_attention_heads=12, in_channels=16, out_channels=16, ffn_dim=8960)
    return _random_wan_pipeline(device, dtype, transformer, {}, flow_shift=3.0)


def wan22_ti2v_5b_pipeline(device: str, dtype):
    """``WanPipeline`` with Wan2.2-TI2V-5B's architecture and random weights on ``device`` (module
    docstring); the VAE's latents_mean/std are statistics of real weights, 0/1 here; shift 5."""
    transformer = dict(num_attention_heads=24, in_channels=48, out_channels=48, ffn_dim=14336)
    vae = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
               scale_factor_temporal=4, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    return _random_wan_pipeline(device, dtype, transformer, vae, flow_shift=5.0, expand_timesteps=True)


def ltx2_pipeline(device: str, dtype):
    """``LTX2Pipeline`` with LTX-2's architecture and random weights on ``device`` (module
    docstring: the transformer, connectors, VAEs and vocoder at their published sizes, a Gemma-3 of
    Gemma-3-12B's width and depth but one thin head, our character tokenizer); built in ``dtype``."""
    import torch
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from cac_align.gen.families.ltx2_tiny import assemble_ltx2_pipeline, gemma_tokenizer

    tokenizer = gemma_tokenizer()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16: no fp32 copy of 20B parameters on the way
    try:
        with torch.device(device):
            text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
                text_config=dict(vocab_size=len(tokenizer), hidden_size=3840, intermediate_size=16, num_hidden_layers=48, num_attention_heads=1,
                                 num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=512),
                vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
                mm_tokens_per_image=4))
            transformer = LTX2VideoTransformer3DModel(
                in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32, attention_head_dim=128,
                cross_attention_dim=4096, vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20, base_height=2048, base_width=2048,
                audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1, audio_num_attention_heads=32,
                audio_attention_head_dim=64, audio_cross_attention_dim=2048, audio_scale_factor=4, audio_pos_embed_max_pos=20,
                audio_sampling_rate=16000, audio_hop_length=160, num_layers=48, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
                norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840, attention_bias=True, attention_out_bias=True, rope_theta=10000.0,
                rope_double_precision=True, causal_offset=1, timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000,
                rope_type="split", gated_attn=False, cross_attn_mod=False, audio_gated_attn=False, audio_cross_attn_mod=False,
                use_prompt_embeddings=True, perturbed_attn=False)
            connectors = LTX2TextConnectors(
                caption_channels=3840, text_proj_in_factor=49, video_connector_num_attention_heads=30, video_connector_attention_head_dim=128,
                video_connector_num_layers=2, video_connector_num_learnable_registers=128, video_gated_attn=False,
                audio_connector_num_attention_heads=30, audio_connector_attention_head_dim=128, audio_connector_num_layers=2,
                audio_connector_num_learnable_registers=128, audio_gated_attn=False, connector_rope_base_seq_len=4096, rope_type="split",
                per_modality_projections=False, proj_bias=False)
            vae = AutoencoderKLLTX2Video(
                latent_channels=128, block_out_channels=(256, 512, 1024, 2048), decoder_block_out_channels=(256, 512, 1024),
                layers_per_block=(4, 6, 6, 2, 2), decoder_layers_per_block=(5, 5, 5, 5), spatio_temporal_scaling=(True,) * 4,
                decoder_spatio_temporal_scaling=(True,) * 3, decoder_inject_noise=(False,) * 4,
                downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"), upsample_type=("spatiotemporal",) * 3,
                upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2), patch_size=4, decoder_causal=False, decoder_spatial_padding_mode="reflect",
                spatial_compression_ratio=32, temporal_compression_ratio=8)
            audio_vae = AutoencoderKLLTX2Audio(base_channels=128, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=2, latent_channels=8,
                                               mel_bins=64, sample_rate=16000, mel_hop_length=160)
            vocoder = LTX2Vocoder(in_channels=128, hidden_channels=1024, out_channels=2, upsample_kernel_sizes=[16, 15, 8, 4, 4],
                                  upsample_factors=[6, 5, 2, 2, 2], resnet_kernel_sizes=[3, 7, 11], resnet_dilations=[[1, 3, 5]] * 3,
                                  output_sampling_rate=24000)
    finally:
        torch.set_default_dtype(previous)
    return assemble_ltx2_pipeline(tokenizer, text_encoder, connectors, transformer, vae, audio_vae, vocoder)


def reward_models_on_gpu() -> list:
    """Qwen3-VL-8B's and Qwen2.5-VL-7B's architectures, random weights, bf16, on the GPU."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks" / "judge"))
    from score_throughput import _full_size_qwen3_vl_8b
    from status_encoding import QWEN2_5_VL_7B, _qwen2_5_vl

    cac, _ = _full_size_qwen3_vl_8b()
    ur, _ = _qwen2_5_vl(QWEN2_5_VL_7B, "cuda", torch.bfloat16)
    return [cac, ur]


def cac_judge_on_gpu():
    """Qwen3-VL-8B's architecture (CaC's judge), random weights, bf16, on the GPU: one in-process judge."""
    sys.path.insert(0, str(REPO / "benchmarks" / "judge"))
    from score_throughput import _full_size_qwen3_vl_8b

    return _full_size_qwen3_vl_8b()[0]


def planned_peak_gib(model: str, pipe, config, judges_bytes: int) -> float:
    """The memory plan's peak per GPU (:mod:`cac_align.plan`) for this run: the generator counted
    from ``pipe``'s own modules (full size on the GPU, tiny on the CPU), one process, the run's
    ``parallel`` section and sizes, the judges' ``judges_bytes`` resident (counted from the built
    judge), the VAE's decode of one video traced, FSDP2's prefetch and the fixed overhead."""
    from cac_align.plan.counts import GIB, count_components
    from cac_align.plan.rows import fixed_overhead_bytes, guided_rows, memory_plan, video_tokens
    from cac_align.plan.trace import vae_bytes

    family = config.generator.family
    modules = {name: module for name, module in pipe.components.items() if hasattr(module, "parameters")}
    counts = count_components(config.generator.name, family, modules, family.lora_target_modules, [0])
    g = config.generator
    video = (g.num_frames, g.height, g.width)
    tokens = video_tokens(*video, family.spatial_multiple, family.frame_multiple, counts.patch_t)
    plan = memory_plan(counts, settings=config.parallel, num_processes=1, tokens=tokens,
                       batch_per_process=config.train_batch_size * guided_rows(family.guidance(g)),
                       gradient_checkpointing=config.gradient_checkpointing, lora_rank=config.lora.rank, dtype=g.dtype, vae_dtype=g.vae_dtype,
                       judges_bytes=judges_bytes, vae_phase_bytes=vae_bytes(counts, "decode", config.sample_batch_size, video, g.vae_dtype),
                       vae_what="decode", prefetch=True, overhead_bytes=fixed_overhead_bytes(1) if g.device == "cuda" else 0)
    print(plan.table(None))
    return plan.peak_bytes / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["gpu-1.3b", "gpu-ti2v-5b", "gpu-ltx2", "cpu-check", "cpu-check-ti2v", "cpu-check-ltx2"], default="gpu-1.3b")
    parser.add_argument("--group", type=int, default=2, help="videos of the one prompt per step (the paper: 16 per prompt, 4 per GPU on 8 GPUs)")
    parser.add_argument("--sampling-steps", type=int, default=10, help="denoising steps (the paper: 50)")
    parser.add_argument("--steps", type=int, default=2, help="training steps; the last one is reported (the first warms up)")
    parser.add_argument("--with-rewards", action="store_true", help="keep CaC-8B and UR-7B architectures resident on the GPU")
    parser.add_argument("--with-judge", action="store_true",
                        help="keep one in-process judge resident (CaC: Qwen3-VL-8B's architecture on a GPU, tiny-random:qwen3_vl on the CPU) "
                             "and print the memory plan's peak, judges counted, beside the measured one")
    parser.add_argument("--shard", choices=["none", "fsdp2"], default="none",
                        help="the recipe's parallel.shard: fsdp2 runs the sharded code path (FSDP2 units per block) on this one process, "
                             "with the text encoder leaving the GPU after it encodes (docs/flow_grpo.md, 'Sharding and long videos')")
    args = parser.parse_args()

    import torch

    from cac_align.config import load_config
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
    from cac_align.rewards.toy import BrightnessReward

    gpu = args.mode.startswith("gpu")
    model = "ti2v" if args.mode.endswith(("ti2v-5b", "-ti2v")) else ("ltx2" if args.mode.endswith("ltx2") else "1.3b")
    if gpu and not torch.cuda.is_available():
        raise SystemExit(f"--mode {args.mode} needs a CUDA GPU; --mode cpu-check{'' if model == '1.3b' else '-' + model} runs the code path on the CPU")
    recipe = {"ti2v": TI2V_RECIPE, "ltx2": LTX2_RECIPE, "1.3b": PAPER_RECIPE}[model]
    if gpu:  # the recipe's own size
        size = {"ti2v": ["generator.height=704", "generator.width=1280", "generator.num_frames=121"],
                "ltx2": ["generator.height=512", "generator.width=768", "generator.num_frames=121"],
                "1.3b": ["generator.height=480", "generator.width=832", "generator.num_frames=81"]}[model]
    else:
        side = 32 if model == "1.3b" else 64  # the TI2V's 16x VAE and 2x2 patches, LTX-2's 32x (64 and up)
        size = [f"generator.height={side}", f"generator.width={side}", "generator.num_frames=9", "generator.dtype=float32",
                "generator.vae_dtype=float32", "mixed_precision=no"]
        size += {"ti2v": ["generator.name=tiny-random:wan22-ti2v"], "1.3b": [],
                 "ltx2": ["generator.name=tiny-random:ltx2", "generator.max_sequence_length=32", "generator.stg_blocks=[1]"]}[model]
    resident = reward_models_on_gpu() if gpu and args.with_rewards else []
    if args.with_judge:  # one judge in the trainer's process, as a recipe with an in-process CaC has
        if gpu:
            resident.append(cac_judge_on_gpu())
        else:
            from cac_align.vlm.tiny import build_tiny_qwen3_vl

            resident.append(build_tiny_qwen3_vl(seed=0).model)
    judges_bytes = sum(p.numel() * p.element_size() for m in resident for p in m.parameters())
    if gpu:
        pipe = {"ti2v": wan22_ti2v_5b_pipeline, "ltx2": ltx2_pipeline, "1.3b": wan_1_3b_pipeline}[model]("cuda", torch.bfloat16)
    else:
        from cac_align.gen.family import family_of

        name = {"ti2v": "tiny-random:wan22-ti2v", "ltx2": "tiny-random:ltx2", "1.3b": "tiny-random:wan"}[model]
        pipe = family_of(name).build_tiny(name, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("a red ball rolls across a wooden floor\n")
        overrides = [
            f"out_dir={tmp}/run", f"prompts={prompts}", "eval_prompts=null", f"steps={args.steps}", "prompts_per_step=1",
            f"group_size={args.group}", "sample_batch_size=1", "train_batch_size=1", "updates_per_step=1",
            f"generator.num_inference_steps={args.sampling_steps}", "generator.device=" + ("cuda" if gpu else "cpu"),
            "checkpoint_every=0", "log_with=none", *size, f"parallel.shard={args.shard}",
        ]
        config = load_config(FlowGrpoConfig, recipe, overrides, job="flow-grpo")
        planned = planned_peak_gib(model, pipe, config, judges_bytes) if args.with_judge else None
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run(config, reward=BrightnessReward(), pipe=pipe)
        seconds = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    sample_s, train_s = last["time/sample_s"], last["time/train_s"]
    per_sample = sample_s / (args.group * args.sampling_steps)  # per video and denoising step
    per_train = train_s / (args.group * args.sampling_steps)  # per video and trained timestep
    print(f"mode={args.mode} shard={args.shard} group={args.group} sampling_steps={args.sampling_steps} steps={args.steps} with_rewards={args.with_rewards}")
    print(f"all {args.steps} steps: {seconds:.1f} s; last step: sampling {sample_s:.1f} s, training {train_s:.1f} s")
    print(f"per video and denoising step: sampling {per_sample:.3f} s, training {per_train:.3f} s")
    if gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory: {peak:.1f} GiB (reward models resident: {len(resident)})")
    if planned is not None:
        print(f"memory plan's peak (arithmetic, judges {judges_bytes / 2**30:.1f} GiB counted): {planned:.1f} GiB"
              + (f"; measured {peak:.1f} GiB: measured / planned {peak / planned:.2f}" if gpu else ""))
    if model == "ltx2":  # arithmetic: the text encoder this run left thin
        gemma = GEMMA_3_12B_PARAMETERS * 2 / 2**30
        print(f"Gemma-3-12B text encoder (arithmetic, not measured): {GEMMA_3_12B_PARAMETERS / 1e9:.1f}B parameters x 2 bytes = {gemma:.1f} GiB in bf16"
              + (f"; resident beside this step: {peak + gemma:.1f} GiB" if gpu else ""))
    videos, steps = 4, 50  # the paper's step on 8 GPUs: 32 videos, 50 sampling steps, all trained
    print(f"extrapolated paper step per GPU ({videos} videos x {steps} steps): sampling {per_sample * videos * steps:.0f} s, "
          f"training {per_train * videos * steps:.0f} s (without reward scoring)")
    result = {"mode": args.mode, "shard": args.shard, "group": args.group, "sampling_steps": args.sampling_steps, "steps": args.steps, "sample_s_per_video_step": per_sample,
              "train_s_per_video_timestep": per_train, "peak_gib": round(peak, 2) if gpu else None, "with_rewards": args.with_rewards, "with_judge": args.with_judge,
              "planned_peak_gib": None if planned is None else round(planned, 2), "judges_gib": round(judges_bytes / 2**30, 2),
              "planned_peak_bytes": None if planned is None else int(planned * 2**30), "judges_bytes": judges_bytes}
    if model == "ltx2":
        result["gemma_3_12b_gib_arithmetic"] = round(GEMMA_3_12B_PARAMETERS * 2 / 2**30, 1)
    print("RESULT " + json.dumps(result))  # one line a run: gpu_quick.sh collects it


if __name__ == "__main__":
    main()
