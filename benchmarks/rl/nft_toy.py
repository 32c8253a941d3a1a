"""Does DiffusionNFT raise the toy reward in fewer steps than Flow-GRPO at the same videos per step?

    python benchmarks/rl/nft_toy.py                      # 20 steps per arm, CPU, a few minutes
    python benchmarks/rl/nft_toy.py --steps 30 --seeds 0 1

Both arms are the shipped trainers (:func:`cac_align.jobs.flow_grpo.run`, :func:`cac_align.jobs.nft.run`)
on the tiny random Wan with the brightness reward read through flow_grpo_toy.py's latent preview
(its docstring says why: the tiny VAE's decode does not depend on the latents). Shared settings are
flow_grpo_toy.py's TOY_OVERRIDES (2 prompts x 8 videos = 16 videos a step, 4 sampling steps all
trained, LoRA rank 8, lr 1e-2, 2 updates a step, no KL, no EMA); Flow-GRPO keeps its toy SDE
(noise 0.7, clip 0.2); NFT samples the ODE with recipes/align/nft_tiny.yaml's settings (nft_beta 0.1,
decay_type 1).

The measure: the threshold is the Flow-GRPO arm's mean training reward over its last 5 steps; for
each arm, the first step whose training reward (5-step running mean) reaches it. The ratio is
Flow-GRPO's steps over NFT's (> 1: NFT is faster). NFT's training reward is sampled by its old
policy, which trails the trained one: the measure is, if anything, unfair to NFT.

Not a test (its result is a curve); tests/rl/test_nft_loss.py pins the math.
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
from cac_align.jobs import flow_grpo, nft  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
ARMS = {
    "flow_grpo": (flow_grpo.FlowGrpoConfig, flow_grpo.run, REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml", "flow-grpo"),
    "nft": (nft.NftConfig, nft.run, REPO_ROOT / "recipes/align/nft_tiny.yaml", "nft"),
}


def train(arm: str, out: Path, steps: int, seed: int, extra: list[str]) -> list[float]:
    config_cls, run, recipe, job = ARMS[arm]
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"out_dir={out}", f"steps={steps}", "eval_prompts=null", "checkpoint_every=0", "log_with=none", f"seed={seed}",
                 *TOY_OVERRIDES, *extra]
    run(load_config(config_cls, recipe, overrides, job=job), decode=latent_preview)
    return [json.loads(line)["reward/mean"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def steps_to(curve: list[float], threshold: float, window: int = 5) -> int | None:
    """The first step (1-based) whose running mean over ``window`` steps reaches ``threshold``."""
    for i in range(len(curve)):
        if np.mean(curve[max(0, i - window + 1) : i + 1]) >= threshold:
            return i + 1
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="outputs/nft_toy")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        curves = {arm: train(arm, Path(args.out) / f"{arm}_{seed}", args.steps, seed, []) for arm in ARMS}
        threshold = float(np.mean(curves["flow_grpo"][-5:]))
        reached = {arm: steps_to(curve, threshold) for arm, curve in curves.items()}
        ratio = reached["flow_grpo"] / reached["nft"] if reached["nft"] else float("nan")
        results.append({"seed": seed, "threshold": threshold, "steps": reached, "ratio": ratio, "curves": curves})
        print(f"seed {seed}: threshold {threshold:.4f} (Flow-GRPO's last 5 steps)")
        for arm, curve in curves.items():
            print(f"  {arm:9s} first {curve[0]:.4f} last {curve[-1]:.4f}  steps to threshold: {reached[arm]}  "
                  + " ".join(f"{v:.3f}" for v in curve))
        print(f"  ratio (Flow-GRPO steps / NFT steps): {ratio:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
