"""Routed against summed advantages on a tiny sound model: each modality's reward per step.

    python benchmarks/rl/audio_routing.py                       # 15 steps per arm, CPU, a few minutes
    python benchmarks/rl/audio_routing.py --steps 20 --seeds 0 1 --json outputs/audio_routing.json

Both arms are the shipped Flow-GRPO trainer (:func:`cac_align.jobs.flow_grpo.run`) with the sound
trained (``audio: trained``) on the tiny random MiniMax-H3 (recipes/align/flow_grpo_tiny_minimax_h3.yaml),
rewarded by the half-and-half combination of a toy video reward (``brightness``, read through
flow_grpo_toy.py's latent preview: the tiny video VAE's decode barely depends on its latents) and
a toy audio reward (``loudness`` of the decoded soundtrack, the tiny audio VAE's own decode). The
arms differ in ``advantage.routing`` alone:

- ``summed``: both latent streams take the group advantage of the combined score;
- ``routed``: the video latents take brightness's advantage, the audio latents loudness's
  (:mod:`cac_align.rl.routing`).

Shared settings are flow_grpo_toy.py's TOY_OVERRIDES (2 prompts x 8 videos a step, LoRA rank 8, lr
1e-2, 2 updates a step, no KL, no EMA) and the recipe's SDE (noise 0.7, clip 0.2).

The measure: for each modality, its component's training reward (the raw mean over the step's
videos, ``reward/<component>_raw_mean``) from the first step to the mean of the last 3; the ratio
is routed's gain over summed's (> 1: routing raised that modality more in the same steps).

Not a test (its result is a curve); tests/rl/test_routing.py pins the math.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_grpo_toy import TOY_OVERRIDES, latent_preview  # noqa: E402

from cac_align.config import load_config  # noqa: E402
from cac_align.jobs import flow_grpo  # noqa: E402
from cac_align.rewards.combine import CombinedReward  # noqa: E402
from cac_align.rewards.registry import build_reward  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_minimax_h3.yaml"
COMPONENTS = {"video": "brightness", "audio": "loudness"}


def train(routing: str, out: Path, steps: int, seed: int) -> dict[str, list[float]]:
    """One arm's per-step training reward of each modality's component."""
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"out_dir={out}", f"steps={steps}", "eval_prompts=null", "checkpoint_every=0", "log_with=none", f"seed={seed}",
                 *TOY_OVERRIDES, "audio=trained", f"advantage.routing={routing}", "audio_rewards_blind_ok=true"]
    reward = CombinedReward([build_reward({"name": name}) for name in COMPONENTS.values()], weights=[0.5, 0.5], name="av")
    flow_grpo.run(load_config(flow_grpo.FlowGrpoConfig, RECIPE, overrides, job="flow-grpo"), reward=reward, decode=latent_preview)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {modality: [r[f"reward/{name}_raw_mean"] for r in rows] for modality, name in COMPONENTS.items()}


def gain(curve: list[float], last: int = 3) -> float:
    return float(np.mean(curve[-last:]) - curve[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="outputs/audio_routing")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        arms = {routing: train(routing, Path(args.out) / f"{routing}_{seed}", args.steps, seed) for routing in ("summed", "routed")}
        gains = {routing: {m: gain(c) for m, c in curves.items()} for routing, curves in arms.items()}
        ratios = {m: gains["routed"][m] / gains["summed"][m] if gains["summed"][m] else float("nan") for m in COMPONENTS}
        results.append({"seed": seed, "curves": arms, "gains": gains, "ratios": ratios})
        print(f"seed {seed}")
        for routing, curves in arms.items():
            for modality, curve in curves.items():
                print(f"  {routing:6s} {modality:5s} ({COMPONENTS[modality]:10s}) gain {gains[routing][modality]:+.5f}  " + " ".join(f"{v:.4f}" for v in curve))
        print("  ratio routed / summed gain: " + ", ".join(f"{m} {r:.2f}" for m, r in ratios.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
