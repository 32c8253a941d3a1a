"""Which way do the first steps move the held-out ODE videos, and is it the reward's doing?

    python benchmarks/rl/toy_first_steps.py --decode vae --seeds 0 1 2 3 4 5 6 7 --steps 5
    python benchmarks/rl/toy_first_steps.py --decode preview --seeds 0 1 2 3 4 5 6 7 --steps 5

Trains the tiny random Wan on ``recipes/align/flow_grpo_tiny_brightness.yaml`` (reward: mean
brightness) with an ODE evaluation of 8 held-out videos after every step, in two arms: ``trained``
(the recipe) and ``shuffled`` (``advantage.shuffle_scores=true``: each group's scores permuted, so
the reward's signal is zero and everything else, the optimizer's drift included, is the same).
Per arm and step it prints the mean over seeds of the change of the evaluation's mean brightness
since the untrained policy (a run at learning rate 1e-12 on the same seeds), its spread over
seeds, how many seeds moved up, and the training reward (the SDE videos the step sampled).

``--decode vae`` is the recipe as shipped (the tiny random VAE); ``--decode preview`` reads the
first three latent channels through a sigmoid instead (benchmarks/rl/flow_grpo_toy.py says why:
the random VAE's output barely depends on the latents). ``--settings toy`` (default) takes
flow_grpo_toy.py's settings (bigger group, lr 1e-2, no KL, no EMA); ``--settings recipe`` the
recipe's own.

Not a test: its result is a table of directions with their spread (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flow_grpo_toy import RECIPE, TOY_OVERRIDES, latent_preview  # noqa: E402

from cac_align.config import load_config  # noqa: E402
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run  # noqa: E402

ARMS = {"trained": [], "shuffled": ["advantage.shuffle_scores=true"]}


def one_run(out: Path, overrides: list[str], decode) -> list[dict]:
    shutil.rmtree(out, ignore_errors=True)
    config = load_config(FlowGrpoConfig, RECIPE, [f"out_dir={out}", *overrides], job="flow-grpo")
    run(config, decode=decode)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--decode", choices=["preview", "vae"], default="vae")
    parser.add_argument("--settings", choices=["toy", "recipe"], default="toy")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--out", default="outputs/toy_first_steps")
    parser.add_argument("--json", help="write the per-seed figures here")
    args = parser.parse_args()
    decode = latent_preview if args.decode == "preview" else None
    base = [
        "eval_prompts=recipes/align/prompts_tiny.txt", "eval_videos=8", "eval_every=1", "checkpoint_every=0", "log_with=none",
        *(TOY_OVERRIDES if args.settings == "toy" else []),
    ]
    figures: dict[str, dict] = {}
    for seed in args.seeds:
        before = one_run(Path(args.out) / f"before_{seed}", [*base, f"seed={seed}", "steps=1", "learning_rate=1e-12"], decode)
        start = before[0]["eval/reward_mean"]
        for arm in args.arms:
            rows = one_run(Path(args.out) / f"{arm}_{seed}", [*base, f"seed={seed}", f"steps={args.steps}", *ARMS[arm]], decode)
            figures.setdefault(arm, {})[seed] = {
                "eval_change": [r["eval/reward_mean"] - start for r in rows],
                "train_reward": [r["reward/mean"] for r in rows],
                "eval_before": start,
            }
    print(f"decode={args.decode} settings={args.settings} seeds={args.seeds}: change of the held-out ODE mean brightness since the untrained policy")
    print("arm       step  mean change   std over seeds  seeds up  training reward")
    for arm, seeds in figures.items():
        for step in range(args.steps):
            changes = [f["eval_change"][step] for f in seeds.values()]
            train = statistics.mean(f["train_reward"][step] for f in seeds.values())
            spread = statistics.stdev(changes) if len(changes) > 1 else 0.0
            up = sum(c > 0 for c in changes)
            print(f"{arm:9s} {step + 1:4d}  {statistics.mean(changes):+.6f}   {spread:.6f}        {up}/{len(changes)}       {train:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
