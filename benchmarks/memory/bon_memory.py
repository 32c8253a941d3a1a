"""Peak GPU memory of Best-of-N (``cac-align bon``) on Wan-2.1-1.3B with UnifiedReward and CaC in-process, at full
size with random weights, against the job's memory plan (cac_align.plan.sampling; issue #116).

    python benchmarks/memory/bon_memory.py --mode gpu      # one H100/H200: recipes/align/bon_wan_ur_cac.yaml, one prompt
    python benchmarks/memory/bon_memory.py --mode check    # the same recipe and path on the tiny models on the CPU (no figure)

What runs is the job itself (:func:`cac_align.jobs.best_of_n.run`) on one prompt of ``bon_wan_ur_cac.yaml`` (5
candidates in one batch, ``offload: true``, UR + CaC in-process), changed only where random weights or the time a GPU
is lent need it:

- the models are built in this process with random weights from the configs shipped with cac-align (Wan-2.1-1.3B's
  transformer, UMT5-XXL, Wan's VAE; UnifiedReward-qwen-7b's Qwen2.5-VL-7B and Qwen3-VL-8B, as
  benchmarks/judge/status_encoding.py and score_throughput.py build them) and handed to the job (its ``generator=``
  and ``reward=``); UMT5's tokenizer is the tiny word tokenizer (the encoder reads its 512 padded tokens either way);
- 2 sampling steps instead of 50 (each step holds what every step holds);
- CaC's answers are scripted after each turn has generated its whole budget (score_throughput.py's ``FixedAnswers``):
  turn 1 flags the whole video, so turn 2 reads the 32-frame clip the plan counts.

Printed (flushed as measured): the plan's peak and each phase's, the measured peak over the job
(``torch.cuda.max_memory_allocated``, which leaves out the CUDA context: the plan's context row is left out of the
figure it is set against), the peaks while the candidates are generated and while they are scored, and one
``RESULT {json}`` line for benchmarks/gpu_quick.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "judge"))
RECIPE = REPO / "recipes" / "align" / "bon_wan_ur_cac.yaml"
GIB = 2**30
WAN = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


def say(*parts) -> None:
    print(*parts, flush=True)


def _wan_pipeline(device: str):
    """Wan-2.1-1.3B's pipeline from its configs shipped with cac-align, random weights: transformer and UMT5-XXL in
    bf16, the VAE in float32, on ``device``; the tiny word tokenizer; UniPC at shift 3."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from cac_align.gen.family import family_of
    from cac_align.plan.configs import shipped_configs

    folder = shipped_configs(WAN)
    tokenizer = family_of("tiny-random:wan").build_tiny("tiny-random:wan", seed=0).tokenizer
    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(str(folder / "transformer"))).to(torch.bfloat16)
        text_encoder = UMT5EncoderModel(UMT5Config.from_pretrained(str(folder / "text_encoder"))).to(torch.bfloat16)
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(folder / "vae")))
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), scheduler=scheduler, transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _register_judges(mode: str) -> dict[str, str]:
    """The judges' models, built when the job builds its reward (as ``tiny-random:`` names: the registry's way of
    handing a model built in this process to a reward): Qwen2.5-VL-7B's and Qwen3-VL-8B's architectures (gpu), the
    tiny ones (check). Returns the recipe overrides that name them."""
    from cac_align.vlm import tiny

    if mode == "gpu":
        import torch
        from score_throughput import _full_size_qwen3_vl_8b
        from status_encoding import QWEN2_5_VL_7B, _qwen2_5_vl

        tiny.TINY_VLM_BUILDERS["bench_qwen2_5_vl_7b"] = lambda seed: tiny.TinyVLM(*_qwen2_5_vl(QWEN2_5_VL_7B, "cuda", torch.bfloat16))
        tiny.TINY_VLM_BUILDERS["bench_qwen3_vl_8b"] = lambda seed: tiny.TinyVLM(*_full_size_qwen3_vl_8b())
    else:
        tiny.TINY_VLM_BUILDERS["bench_qwen2_5_vl_7b"] = tiny.TINY_VLM_BUILDERS["qwen2_5_vl"]
        tiny.TINY_VLM_BUILDERS["bench_qwen3_vl_8b"] = tiny.TINY_VLM_BUILDERS["qwen3_vl"]
    return {"reward.unified_reward.model.name": "tiny-random:bench_qwen2_5_vl_7b", "reward.cac.model.name": "tiny-random:bench_qwen3_vl_8b"}


# --check: the same recipe and path on the tiny models (a tiny Wan at 32 x 32 x 9, the tiny judges, short answers)
CHECK = ["generator.name=tiny-random:wan", "generator.height=32", "generator.width=32", "generator.num_frames=9", "generator.dtype=float32",
         "reward.unified_reward.model.name=tiny-random:qwen2_5_vl", "reward.cac.model.name=tiny-random:qwen3_vl",
         "reward.unified_reward.model.dtype=float32", "reward.cac.model.dtype=float32", "reward.unified_reward.max_new_tokens=8",
         "reward.cac.options.max_new_tokens=8"]


def _scripted(reward, max_new_tokens: int) -> None:
    """CaC's backend swapped for score_throughput.py's ``FixedAnswers`` over the same model: each turn generates its
    whole budget, then a valid answer is scripted (turn 1: the whole video abnormal, so turn 2 reads its 32-frame clip)."""
    import score_throughput
    from score_throughput import FixedAnswers

    score_throughput.TURN1 = json.dumps({"cot": "scan", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "time": [0.0, 5.0]}]})
    cac = reward.rewards[1].scorer
    old = cac.backend
    cac.backend = FixedAnswers(old.model, old.processor, max_batch_size=old.max_batch_size, cache=old.cache,
                               generate_kwargs={**old.generate_kwargs, "min_new_tokens": max_new_tokens})


class _Measured:
    """A reward, or the generator, whose calls record the peak allocated while each runs."""

    def __init__(self, inner, name: str, peaks: dict):
        self.inner, self.name, self.peaks = inner, name, peaks

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def _measure(self, call, *args, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = call(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peaks[self.name] = max(self.peaks.get(self.name, 0), torch.cuda.max_memory_allocated())
        self.peaks[f"{self.name}_s"] = round(time.perf_counter() - start, 1)
        return out

    def __call__(self, *args, **kwargs):
        return self._measure(self.inner, *args, **kwargs)

    def generate(self, *args, **kwargs):
        return self._measure(self.inner.generate, *args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["gpu", "check"], default="check")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps (the memory of a step is every step's)")
    parser.add_argument("--work", default=None, help="folder for the run (default outputs/bon_memory_<mode>)")
    args = parser.parse_args()

    import torch

    from cac_align.gen.generator import PipelineGenerator
    from cac_align.jobs import load_recipe
    from cac_align.jobs.best_of_n import run
    from cac_align.plan.sampling import plan_bon
    from cac_align.rewards.registry import build_reward

    if args.mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--mode gpu needs a CUDA GPU")
    work = Path(args.work or REPO / f"outputs/bon_memory_{args.mode}")
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.txt").write_text("a red ball rolls across a wooden floor\n")
    common = [f"prompts={work / 'prompts.txt'}", f"out_dir={work / 'run'}", "overwrite=true", f"generator.num_inference_steps={args.steps}"]
    common += CHECK if args.mode == "check" else []
    recipe = RECIPE
    _, planned = load_recipe(recipe, common)
    plan = plan_bon(planned, on_gpu=True, overhead=False)  # against max_memory_allocated: no CUDA context
    say(plan.table(width=130))
    say(f"plan: peak {plan.peak_bytes / GIB:.2f} GiB (the CUDA context left out: what max_memory_allocated counts)")
    names = _register_judges(args.mode)
    _, config = load_recipe(recipe, common + [f"{k}={v}" for k, v in names.items()])
    start = time.perf_counter()
    if args.mode == "gpu":
        pipe = _wan_pipeline("cuda")
    else:
        from cac_align.gen.family import family_of

        pipe = family_of("tiny-random:wan").build_tiny("tiny-random:wan", seed=0)
    reward = build_reward(config.reward, "reward")
    _scripted(reward, ((config.reward.get("cac") or {}).get("options") or {}).get("max_new_tokens") or 1024)
    say(f"models built in {time.perf_counter() - start:.0f} s")
    peaks: dict = {}
    generator = _Measured(PipelineGenerator(pipe), "generate", peaks)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(config, reward=_Measured(reward, "score", peaks), generator=generator)
    resident = sum(r.bytes for r in plan.rows if r.phase == "resident")
    result = {"recipe": recipe.name, "steps": args.steps, "planned_peak_bytes": plan.peak_bytes, "seconds": round(time.perf_counter() - start, 1),
              "planned_phases": {phase: resident + sum(r.bytes for r in plan.rows if r.phase == phase) for phase in plan.phases}}
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
        result.update(peak_allocated_bytes=peak, measured_over_planned=round(peak / plan.peak_bytes, 3), generate_peak_bytes=peaks.get("generate"),
                      score_peak_bytes=peaks.get("score"), generate_s=peaks.get("generate_s"), score_s=peaks.get("score_s"))
        say(f"measured: peak {peak / GIB:.2f} GiB ({peak / plan.peak_bytes:.2f} of the plan's); generating {peaks.get('generate', 0) / GIB:.2f} GiB, "
            f"scoring {peaks.get('score', 0) / GIB:.2f} GiB")
    else:
        say("no CUDA GPU: the path ran on the CPU, nothing measured")
    say("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
