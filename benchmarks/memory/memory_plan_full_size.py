"""The memory plan (``cac_align.plan``) of the real generator recipes at full size, every family,
on the CPU: each recipe's models built on the meta device (no weights, no memory) from their configs
(the Hugging Face cache's, else the ones shipped with cac-align: ``cac_align/plan/full_size/``, each
number with its source in its ``SOURCES.md``), counted, and planned per GPU for one GPU unsharded
(data parallel), for N GPUs sharded (FSDP2, the text encoder off the GPU between encodes) and for the
layout the recipe itself sets (its ``parallel`` section, on the processes its first line launches).

    python benchmarks/memory/memory_plan_full_size.py            # every family's recipes (MiniMax-H3's VAE trace: ~1-2 min)
    python benchmarks/memory/memory_plan_full_size.py --gpus 4   # the sharded layout on 4 GPUs
    python benchmarks/memory/memory_plan_full_size.py --recipes flow_grpo_hunyuan15_ur_cac

What it prints is arithmetic, not a measurement: the parameters are counted from the configs; the
activations are ``cac_align.plan.rows.activation_bytes``'s estimate; the VAE's decode of a sample
batch (flow-grpo, nft: ``sample_batch_size``) or encode of one video (dpo) is traced on the meta device;
FSDP2's prefetched block and the fixed CUDA/NCCL overhead are counted as the jobs count them. The judges
are left out here (served elsewhere: 0 GiB); ``cac-align check-recipe --gpu-gb 80 RECIPE`` prints the
same plan with the recipe's judges (in-process ones counted) on the layout its first line launches. The
one measured figure to hold it against: Wan-2.1-1.3B's Flow-GRPO step peaked at 23.8 GiB on an H100
(docs/flow_grpo.md, "Memory at full size").
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# one or more recipes of every family the jobs run at full size
RECIPES = (
    "flow_grpo_wan_ur_cac",              # Wan-2.1-T2V-1.3B
    "flow_grpo_wan22_ti2v_ur_cac",       # Wan2.2-TI2V-5B
    "flow_grpo_wan22_a14b_ur_cac",       # Wan2.2-T2V-A14B
    "flow_grpo_wan22_i2v_a14b_ur_cac",   # Wan2.2-I2V-A14B
    "dpo_wan22_a14b_localdpo",           # Wan2.2-T2V-A14B, dpo with context parallel
    "flow_grpo_ltx2_ur_cac",             # LTX-2
    "dpo_ltx2_localdpo",
    "flow_grpo_ltx25_ur_cac",            # LTX-2.5 (diffusion decoder)
    "flow_grpo_hunyuan15_ur_cac",        # HunyuanVideo-1.5 T2V
    "flow_grpo_hunyuan15_i2v_ur_cac",    # HunyuanVideo-1.5 I2V
    "flow_grpo_minimax_h3_ur_cac",       # MiniMax-H3
    "flow_grpo_kandinsky6_ur_cac",       # Kandinsky 6.0 Pro
)


def plan_recipe(name: str, gpus: int, device: int) -> None:
    """Print ``recipes/align/<name>.yaml``'s plan on three layouts (module docstring)."""
    from cac_align.cli import header_processes
    from cac_align.config import resolve
    from cac_align.plan.check import plan_generator
    from cac_align.plan.configs import planned_from_shipped
    from cac_align.plan.counts import GIB
    from cac_align.plan.refusal import refusal
    from cac_align.gen.parallel import ParallelSettings
    from cac_align.jobs import load_recipe

    recipe = REPO / "recipes" / "align" / f"{name}.yaml"
    spec, config = load_recipe(recipe)
    inputs = dict(resolve(spec.memory_inputs)(config))
    inputs["rewards"] = None  # the judges served elsewhere
    launched = header_processes(recipe) or 1
    where = "configs shipped with cac-align" if planned_from_shipped(config.generator.name) else "the Hugging Face cache's configs"
    print(f"\n=== recipes/align/{name}.yaml: {config.generator.name} ({where}); its own layout: {launched} process(es), "
          f"parallel.shard={config.parallel.shard}, context_parallel={config.parallel.context_parallel}")
    layouts = [("1 GPU, unsharded", ParallelSettings(), 1),
               (f"{gpus} GPUs, fsdp2", ParallelSettings(shard="fsdp2"), gpus),
               ("the recipe's", config.parallel, launched)]
    for label, settings, n in layouts:
        settings = dataclasses.replace(settings, context_parallel=settings.context_parallel if n % settings.context_parallel == 0 else 1)
        try:
            planned = plan_generator(config.generator, config.lora, settings, n, **inputs)
        except ValueError as exc:  # a layout the model cannot take (a context-parallel degree, a family that refuses it)
            print(f"--- {label}: not planned: {exc}")
            continue
        if planned is None:
            continue
        plan, _ = planned
        reason = refusal(plan, device)
        print(f"--- {label}: peak {plan.peak_bytes / GIB:.1f} GiB per GPU of {device / GIB:.1f}" + (f"; refused: {reason}" if reason else ""))
        print(plan.table(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the sharded layout")
    parser.add_argument("--device-gib", type=float, default=80e9 / 2**30,
                        help="memory of one GPU, GiB (default: 80 GB = 80e9 bytes, 74.5 GiB; an 80 GB H100 reports about 79 GiB to torch)")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), help="recipe names under recipes/align (default: one or more per family)")
    args = parser.parse_args()
    from cac_align.plan.counts import GIB

    for name in args.recipes:
        plan_recipe(name, args.gpus, int(args.device_gib * GIB))


if __name__ == "__main__":
    main()
