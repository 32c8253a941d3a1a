"""Flow-GRPO steps of Wan-2.1-1.3B's and Wan2.2-TI2V-5B's architectures (random weights): seconds and peak GPU memory.

    python benchmarks/wan_grpo_step.py --mode gpu-1.3b                  # 480x832x81, one GPU
    python benchmarks/wan_grpo_step.py --mode gpu-1.3b --with-rewards   # + CaC-8B and UR-7B resident
    python benchmarks/wan_grpo_step.py --mode gpu-ti2v-5b               # Wan2.2-TI2V-5B at its recipe's 704x1280x121
    python benchmarks/wan_grpo_step.py --mode cpu-check                 # the same code path, tiny Wan, seconds
    python benchmarks/wan_grpo_step.py --mode cpu-check-ti2v            # ... and the tiny TI2V-5B layout

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
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_RECIPE = REPO / "recipes/align/flow_grpo_wan_ur_cac.yaml"
TI2V_RECIPE = REPO / "recipes/align/flow_grpo_wan22_ti2v_ur_cac.yaml"


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

    from cac_align.gen.wan import build_tiny_wan_pipeline

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


def reward_models_on_gpu() -> list:
    """Qwen3-VL-8B's and Qwen2.5-VL-7B's architectures, random weights, bf16, on the GPU."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from score_throughput import _full_size_qwen3_vl_8b
    from status_encoding import QWEN2_5_VL_7B, _qwen2_5_vl

    cac, _ = _full_size_qwen3_vl_8b()
    ur, _ = _qwen2_5_vl(QWEN2_5_VL_7B, "cuda", torch.bfloat16)
    return [cac, ur]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["gpu-1.3b", "gpu-ti2v-5b", "cpu-check", "cpu-check-ti2v"], default="gpu-1.3b")
    parser.add_argument("--group", type=int, default=2, help="videos of the one prompt per step (the paper: 16 per prompt, 4 per GPU on 8 GPUs)")
    parser.add_argument("--sampling-steps", type=int, default=10, help="denoising steps (the paper: 50)")
    parser.add_argument("--steps", type=int, default=2, help="training steps; the last one is reported (the first warms up)")
    parser.add_argument("--with-rewards", action="store_true", help="keep CaC-8B and UR-7B architectures resident on the GPU")
    args = parser.parse_args()

    import torch

    from cac_align.config import load_config
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
    from cac_align.rewards.toy import BrightnessReward

    gpu = args.mode.startswith("gpu")
    ti2v = args.mode.endswith("ti2v-5b") or args.mode.endswith("-ti2v")
    if gpu and not torch.cuda.is_available():
        raise SystemExit(f"--mode {args.mode} needs a CUDA GPU; --mode cpu-check{'-ti2v' if ti2v else ''} runs the code path on the CPU")
    if gpu:  # the recipe's own size
        size = ["generator.height=704", "generator.width=1280", "generator.num_frames=121"] if ti2v else [
            "generator.height=480", "generator.width=832", "generator.num_frames=81"]
    else:
        side = 64 if ti2v else 32  # the TI2V's 16x VAE and 2x2 patches: multiples of 32
        size = [f"generator.height={side}", f"generator.width={side}", "generator.num_frames=9", "generator.dtype=float32", "mixed_precision=no"]
    if ti2v and not gpu:
        size.append("generator.name=tiny-random:wan22-ti2v")
    resident = reward_models_on_gpu() if gpu and args.with_rewards else []
    if gpu:
        pipe = (wan22_ti2v_5b_pipeline if ti2v else wan_1_3b_pipeline)("cuda", torch.bfloat16)
    else:
        from cac_align.gen.tiny import TINY_WAN_BUILDERS

        pipe = TINY_WAN_BUILDERS["tiny-random:wan22-ti2v" if ti2v else "tiny-random:wan"](seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("a red ball rolls across a wooden floor\n")
        overrides = [
            f"out_dir={tmp}/run", f"prompts={prompts}", "eval_prompts=null", f"steps={args.steps}", "prompts_per_step=1",
            f"group_size={args.group}", "sample_batch_size=1", "train_batch_size=1", "updates_per_step=1",
            f"generator.num_inference_steps={args.sampling_steps}", "generator.device=" + ("cuda" if gpu else "cpu"),
            "checkpoint_every=0", "log_with=none", *size,
        ]
        config = load_config(FlowGrpoConfig, TI2V_RECIPE if ti2v else PAPER_RECIPE, overrides, job="flow-grpo")
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
    print(f"mode={args.mode} group={args.group} sampling_steps={args.sampling_steps} steps={args.steps} with_rewards={args.with_rewards}")
    print(f"all {args.steps} steps: {seconds:.1f} s; last step: sampling {sample_s:.1f} s, training {train_s:.1f} s")
    print(f"per video and denoising step: sampling {per_sample:.3f} s, training {per_train:.3f} s")
    if gpu:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (reward models resident: {bool(resident)})")
    videos, steps = 4, 50  # the paper's step on 8 GPUs: 32 videos, 50 sampling steps, all trained
    print(f"extrapolated paper step per GPU ({videos} videos x {steps} steps): sampling {per_sample * videos * steps:.0f} s, "
          f"training {per_train * videos * steps:.0f} s (without reward scoring)")


if __name__ == "__main__":
    main()
