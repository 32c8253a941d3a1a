"""Peak memory and seconds per step of CaC's three training stages, at Qwen3-VL-8B's size.

    python benchmarks/memory/stage_memory.py                                  # tiny random Qwen3-VL on the CPU: checks the path
    python benchmarks/memory/stage_memory.py --mode gpu-8b --stage 1          # Qwen3-VL-8B's architecture, random weights, one GPU
    python benchmarks/memory/stage_memory.py --mode gpu-8b --stage 2 --set train.freeze_vision=true

What a user runs, at the size it exists for: the model is Qwen3-VL-8B's architecture (published
config values) with random weights, **saved to local disk first** (safetensors, once per work
folder) and then loaded by the ordinary recipe path (``model=<folder>``). The data is
``cac-align synth`` videos at Wan-2.1's output size (832x480, 5 s at 16 fps) in gpu-8b mode. Each
stage runs its shipped recipe (recipes/cac/stage1_warmup.yaml, stage2_sft.yaml,
stage3_grpo.yaml) for ``--steps`` optimizer steps in this process, changed only by what a
benchmark needs: every video goes to the stage being measured, no evaluation, no checkpoints,
a log row per step; ``--set KEY=VALUE`` adds overrides.

Printed per stage (flushed as measured, so a run stopped by a time limit keeps what it finished):
the stage's memory plan for this one process (cac_align.plan.stages; its CUDA-context row left out, as
torch's counters leave it out) and, after the run, the measured peak against it in a ``RESULT {json}``
line (benchmarks/gpu_quick.sh collects it); peak GPU memory allocated and reserved over the run, seconds of each step (stages 1-2: the
``step_seconds`` column of metrics.jsonl, the first step holding the start-up; stage 3:
generation and update), and, for stages 1-2, the largest growth of allocated memory inside
one micro-batch (forward + backward: activations and the gradients' first allocation). A stage
that runs out of memory is reported as such, with the peak reached, and the next one runs.

Stage 2 at 8 GPUs under recipes/accelerate/fsdp.yaml is arithmetic, printed from the model's
parameter count: accelerate keeps float32 master weights sharded under bf16 mixed precision,
so each GPU holds (4 weights + 4 gradients + 8 AdamW) bytes x N / 8, plus the bf16 units being
gathered (two decoder layers with prefetch, or the 1.2 GB embedding / output head), plus the
activations measured here on one GPU. Stage 3 trains every parameter in float32 with a bf16
reference (DDP: nothing sharded), so it needs (16 + 2) bytes x N per process before activations.

In tiny mode (CPU) the numbers mean nothing; the run checks that every stage's recipe goes
through with a saved model and these overrides.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = {1: "recipes/cac/stage1_warmup.yaml", 2: "recipes/cac/stage2_sft.yaml", 3: "recipes/cac/stage3_grpo.yaml"}
SPLITS = {1: "{stage1: 1.0, stage2: 0.0, stage3: 0.0, eval: 0.0}", 2: "{stage1: 0.0, stage2: 1.0, stage3: 0.0, eval: 0.0}",
          3: "{stage1: 0.0, stage2: 0.0, stage3: 1.0, eval: 0.0}"}
GIB = 2**30


def say(*parts) -> None:
    print(*parts, flush=True)


def _model(mode: str, folder: Path) -> None:
    """The model, saved once: Qwen3-VL-8B's architecture (gpu-8b) or the tiny one."""
    if (folder / "config.json").is_file():
        say(f"model: {folder} (saved by an earlier run)")
        return
    start = time.perf_counter()
    if mode == "gpu-8b":
        import torch
        from score_throughput import _full_size_qwen3_vl_8b

        model, processor = _full_size_qwen3_vl_8b()
        model.save_pretrained(str(folder), safe_serialization=True)
        processor.save_pretrained(str(folder))
        count = sum(p.numel() for p in model.parameters())
        del model
        torch.cuda.empty_cache()
    else:
        from cac_align.vlm.tiny import build_tiny_qwen3_vl

        built = build_tiny_qwen3_vl(seed=0)
        built.save_pretrained(str(folder))
        count = sum(p.numel() for p in built.model.parameters())
    say(f"model: {count / 1e6:,.1f} M parameters saved to {folder} in {time.perf_counter() - start:.0f} s")


def _data(mode: str, folder: Path) -> Path:
    from cac_align.data.synthetic import SynthConfig, generate

    if not (folder / "annotations.jsonl").is_file():
        size = dict(height=480, width=832, fps=16.0, duration_s=5.0) if mode == "gpu-8b" else dict(height=64, width=96, fps=8.0, duration_s=2.0)
        generate(SynthConfig(out_dir=str(folder), n=16, seed=0, anomaly_duration_s=[0.25, 0.75], normal_fraction=0.5, **size))
    return folder / "annotations.jsonl"


def _overrides(stage: int, mode: str, model: Path, annotations: Path, out: Path, steps: int) -> list[str]:
    common = [f"model={model}", f"annotations={annotations}", f"out_dir={out}", "overwrite=true", f"data.splits={SPLITS[stage]}",
              f"train.max_steps={steps}", "train.num_workers=0"]
    if stage in (1, 2):
        common += ["train.logging_steps=1", "train.eval_steps=0", f"train.save_steps={steps + 1000}"]
    else:  # one video's G rollouts per step (the recipe's 8 videos would take minutes of generation per step)
        common += ["grpo.videos_per_step=1", f"train.save_steps={steps + 1000}"]
    if mode == "tiny":  # small budgets, float32 on the CPU
        common += ["dtype=float32", "train.bf16=false", "attn_implementation=null", "data.max_frames_turn1=8", "data.max_frames_turn2=8",
                   "data.max_pixels=12544"]
        if stage == 3:
            common += ["grpo.max_new_tokens_turn1=16", "grpo.max_new_tokens_turn2=16", "grpo.group_size=2", "train.per_device_batch_size=2"]
    return common


class MicroBatchMemory:
    """The largest growth of allocated GPU memory inside one Trainer.training_step (forward +
    backward of one micro-batch) while installed."""

    def __init__(self) -> None:
        self.growth = 0

    def __enter__(self):
        import torch
        from transformers import Trainer

        self.original = original = Trainer.training_step

        def training_step(trainer, *args, **kwargs):
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            try:
                return original(trainer, *args, **kwargs)
            finally:
                self.growth = max(self.growth, torch.cuda.max_memory_allocated() - before)

        if torch.cuda.is_available():
            Trainer.training_step = training_step
        return self

    def __exit__(self, *exc) -> None:
        from transformers import Trainer

        Trainer.training_step = self.original


def _stage(stage: int, mode: str, work: Path, steps: int, extra: list[str]) -> None:
    import torch

    from cac_align.jobs import load_recipe
    from cac_align.jobs.train_cac import run

    out = work / f"stage{stage}"
    _, config = load_recipe(REPO / RECIPES[stage], _overrides(stage, mode, work / "model", work / "data/annotations.jsonl", out, steps) + extra)
    planned = _planned(config)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    say(f"== stage {stage}: {RECIPES[stage]} {' '.join(extra)}")
    start, peak_allocated, peak_reserved, failed = time.perf_counter(), 0, 0, None
    with MicroBatchMemory() as micro:
        try:
            run(config)
        except torch.cuda.OutOfMemoryError as exc:
            failed = f"out of memory: {str(exc).splitlines()[0]}"
        finally:
            if cuda:
                peak_allocated, peak_reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    elapsed = time.perf_counter() - start
    if cuda:
        say(f"stage {stage}: peak allocated {peak_allocated / GIB:.1f} GiB, reserved {peak_reserved / GIB:.1f} GiB"
            + (f"; largest micro-batch growth {micro.growth / GIB:.1f} GiB" if stage < 3 and micro.growth else ""))
    result = {"stage": stage, "steps": steps, "planned_peak_bytes": planned, "failed": failed}
    if cuda:
        result.update(peak_allocated_bytes=peak_allocated, measured_over_planned=round(peak_allocated / planned, 3))
        say(f"stage {stage}: measured {peak_allocated / GIB:.2f} GiB against the plan's {planned / GIB:.2f} GiB ({peak_allocated / planned:.2f})")
    say("RESULT " + json.dumps(result))
    if failed:
        say(f"stage {stage}: {failed} (after {elapsed:.0f} s)")
        return
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if stage < 3:
        seconds = [row["step_seconds"] for row in rows if "step_seconds" in row]
        say(f"stage {stage}: seconds per step {', '.join(f'{s:.2f}' for s in seconds)} (the first holds the start-up); run {elapsed:.0f} s")
    else:
        for row in rows:
            if "time_generation_s" in row:
                say(f"stage 3 step {row.get('step')}: generation {row['time_generation_s']:.1f} s, update {row['time_train_s']:.1f} s "
                    f"(turn 2 reached by {row.get('turn2_fraction', 0):.0%} of the rollouts)")
        say(f"stage 3: run {elapsed:.0f} s")
    if cuda:
        torch.cuda.empty_cache()
        _arithmetic(stage, work / "model", micro.growth)


def _planned(config) -> int:
    """The stage's memory plan for this one process, unsharded (cac_align.plan.stages), printed; its peak without the
    CUDA context row (torch's max_memory_allocated leaves that out)."""
    from cac_align.plan.stages import plan_train_cac

    plan = plan_train_cac(config, 1, "none", on_gpu=False)
    say(plan.table(width=130))
    say(f"plan: peak {plan.peak_bytes / GIB:.2f} GiB (the CUDA context left out: what max_memory_allocated counts)")
    return plan.peak_bytes


def _arithmetic(stage: int, model: Path, growth: int) -> None:
    """Stage 2 on 8 GPUs under fsdp.yaml, stage 3 per DDP process: from the parameter count."""
    from safetensors import safe_open

    sizes: dict[str, int] = {}
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                sizes[name] = int(__import__("math").prod(shape))
    n = sum(sizes.values())
    layer = sum(v for k, v in sizes.items() if ".language_model.layers.0." in k)
    embed = max(v for k, v in sizes.items() if "embed_tokens" in k or "lm_head" in k)
    if stage == 2:
        sharded = 16 * n / 8
        gathered = 2 * max(2 * layer, embed)
        say(f"stage 2 on 8 GPUs (fsdp.yaml, arithmetic): sharded fp32 weights+grads+AdamW {sharded / GIB:.1f} GiB + gathered bf16 units "
            f"{gathered / GIB:.1f} GiB + activations (measured above, one micro-batch) {growth / GIB:.1f} GiB = "
            f"{(sharded + gathered + growth) / GIB:.1f} GiB per GPU")
    if stage == 3:
        say(f"stage 3 per DDP process (arithmetic): fp32 policy+grads+AdamW {16 * n / GIB:.1f} GiB + bf16 reference {2 * n / GIB:.1f} GiB "
            "before activations and the KV cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["tiny", "gpu-8b"], default="tiny")
    parser.add_argument("--stage", type=int, nargs="+", choices=[1, 2, 3], default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage (stage 3: 2 is plenty)")
    parser.add_argument("--work", default=None, help="folder for the saved model, the videos and the runs (default outputs/stage_memory_<mode>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE recipe override, repeatable")
    args = parser.parse_args()

    import torch

    if args.mode == "gpu-8b" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu-8b needs a CUDA GPU")
    work = Path(args.work or REPO / f"outputs/stage_memory_{args.mode.replace('-', '_')}")
    (work / "model").mkdir(parents=True, exist_ok=True)
    _model(args.mode, work / "model")
    _data(args.mode, work / "data")
    for stage in args.stage:
        _stage(stage, args.mode, work, args.steps, args.overrides)


if __name__ == "__main__":
    main()
