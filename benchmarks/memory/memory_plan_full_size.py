"""The memory plan (``cac_align.gen.memory``) of the real generator recipes at full size, on the CPU in
seconds: every architecture built on the meta device (no weights, no memory) from the values of
diffusers' conversion scripts and the models' published configs, counted, and planned per GPU for
one GPU unsharded (today's data parallel), for 8 GPUs sharded (FSDP2, the text encoder off the GPU
between encodes) and, where the recipe is planned with context parallel, for that too.

    python benchmarks/memory/memory_plan_full_size.py            # every recipe, both layouts
    python benchmarks/memory/memory_plan_full_size.py --gpus 4   # the sharded layout on 4 GPUs

What it prints is arithmetic, not a measurement: the parameters are counted from architectures we
wrote down (the values below), not read from the checkpoints' own ``config.json``; the activations are
``cac_align.gen.memory.activation_bytes``'s estimate; the VAE's decode of a sample batch (flow-grpo:
``sample_batch_size`` 2) or encode of one video (dpo) is traced on the meta device; FSDP2's prefetched
block and the fixed CUDA/NCCL overhead are counted as the jobs count them. The judges are served
elsewhere here (0 GiB); with them in-process, the jobs' plan and ``cac-align check-recipe`` count them. With the checkpoints' configs in the Hugging Face
cache the jobs print the same plan from those files. The one measured figure to hold it against:
Wan-2.1-1.3B's Flow-GRPO step peaked at 23.8 GiB on an H100 (docs/flow_grpo.md, "Memory at full size").

Architectures (per diffusers' ``scripts/convert_wan_to_diffusers.py`` and
``scripts/convert_ltx2_to_diffusers.py``, and the models' configs):

- Wan-2.1-1.3B and Wan2.2-TI2V-5B, UMT5-XXL, both Wan VAEs: ``benchmarks/generators/wan_grpo_step.py``'s.
- Wan2.2-T2V-A14B: two experts of Wan-2.1-14B's shape (40 blocks, 40 heads of 128, FFN 13824), the
  Wan-2.1 VAE.
- LTX-2: ``benchmarks/generators/wan_grpo_step.py``'s transformer, connectors, VAEs and vocoder; its text encoder
  Gemma-3-12B (text: width 3840, 48 layers, 16 heads of 256 with 8 key-value heads, FFN 15360, vocabulary
  262,208; vision: SigLIP 27 layers of width 1152).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# recipe -> (family name, video (frames, height, width), rows with gradient per micro-batch, LoRA rank, experts,
#            the context-parallel degree its sharded layout is planned with)
# flow-grpo: train_batch_size 1 x 2 (the guided velocity batches the negative prompt);
# dpo: batch_size 2 pairs x 2 (winner and loser), unguided; the pairs' videos at their bon recipe's size.
RECIPES = {
    "flow_grpo_wan_ur_cac": ("wan2.1", (81, 480, 832), 2, 32, "high", 1),
    "flow_grpo_wan22_ti2v_ur_cac": ("wan2.2-ti2v", (121, 704, 1280), 2, 32, "high", 1),
    "flow_grpo_wan22_a14b_ur_cac": ("wan2.2-a14b", (81, 480, 832), 2, 32, "high", 1),
    "dpo_wan22_a14b_localdpo": ("wan2.2-a14b", (81, 480, 832), 4, 64, "both", 2),  # 4 rows of 32,760 tokens: 80 GiB of activations unsplit
    "flow_grpo_ltx2_ur_cac": ("ltx2", (121, 512, 768), 2, 32, "high", 1),
    "dpo_ltx2_localdpo": ("ltx2", (121, 512, 768), 4, 64, "high", 1),
}


def _gemma_3_12b():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration(Gemma3Config(
        text_config=dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=256),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896, patch_size=14),
        mm_tokens_per_image=256))


def meta_modules(family: str) -> dict:
    """The pipeline's models of ``family`` at full size on the meta device, by component name."""
    import torch
    from diffusers import WanTransformer3DModel

    sys.path.insert(0, str(REPO / "benchmarks" / "generators"))
    import wan_grpo_step as step

    if family == "ltx2":
        pipe = step.ltx2_pipeline("meta", torch.bfloat16)
        with torch.device("meta"):
            text_encoder = _gemma_3_12b()
        return {"transformer": pipe.transformer, "text_encoder": text_encoder, "connectors": pipe.connectors, "vae": pipe.vae,
                "audio_vae": pipe.audio_vae, "vocoder": pipe.vocoder}
    pipe = (step.wan22_ti2v_5b_pipeline if family == "wan2.2-ti2v" else step.wan_1_3b_pipeline)("meta", torch.bfloat16)
    modules = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
    if family == "wan2.2-a14b":
        with torch.device("meta"):
            modules["transformer"], modules["transformer_2"] = (
                WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
                                      text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                                      qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024) for _ in range(2))
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the sharded layout")
    parser.add_argument("--device-gib", type=float, default=80e9 / 2**30,
                        help="memory of one GPU, GiB (default: 80 GB = 80e9 bytes, 74.5 GiB; an 80 GB H100 reports about 79 GiB to torch)")
    args = parser.parse_args()

    from cac_align.gen.family import families
    from cac_align.gen.memory import GIB, count_components, fixed_overhead_bytes, memory_plan, refusal, vae_bytes, video_tokens
    from cac_align.gen.parallel import ParallelSettings

    by_name = {f.name: f for f in families()}
    device = int(args.device_gib * GIB)
    cache: dict = {}
    for recipe, (name, video, rows, rank, experts, cp) in RECIPES.items():
        family = by_name[name]
        modules = cache.setdefault(name, meta_modules(name))
        counts = count_components(name, family, modules, family.lora_target_modules, {"high": [0], "low": [1], "both": [0, 1]}[experts])
        tokens = video_tokens(*video, family.spatial_multiple, family.frame_multiple, counts.patch_t)
        vae_dtype = "bfloat16" if name == "ltx2" else "float32"
        print(f"\n=== recipes/align/{recipe}.yaml: {family.title}, {video[2]}x{video[1]}x{video[0]} ({tokens:,} tokens), "
              f"{rows} rows with gradient, LoRA rank {rank} on {experts}")
        print("parameters (counted on the meta device): " + ", ".join(
            f"{c.name} {c.parameters / 1e9:.2f}B" for c in counts.transformers + counts.encoders + counts.others))
        layouts = [(ParallelSettings(), 1), (ParallelSettings(shard="fsdp2"), args.gpus)]
        layouts += [(ParallelSettings(shard="fsdp2", context_parallel=cp), args.gpus)] if cp > 1 else []
        what, batch = ("encode", 1) if recipe.startswith("dpo") else ("decode", 2)  # the recipes' sample_batch_size: 2
        vae_peak = vae_bytes(counts, what, batch, video, vae_dtype)
        for settings, n in layouts:
            plan = memory_plan(counts, settings=settings, num_processes=n, tokens=tokens, batch_per_process=rows, gradient_checkpointing=True,
                               lora_rank=rank, dtype="bfloat16", vae_dtype=vae_dtype, vae_phase_bytes=vae_peak, vae_what=what, prefetch=True,
                               overhead_bytes=fixed_overhead_bytes(n))
            print(plan.table(device))
            reason = refusal(plan, device)
            if reason:
                print("  refusal: " + reason)


if __name__ == "__main__":
    main()
