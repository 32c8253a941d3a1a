"""Does Flow-GRPO's reward scoring overlap with sampling? Step time with a slow reward vs an instant one.

    python benchmarks/generators/flow_grpo_overlap.py              # tiny random Wan at 64x64x17, CPU, about a minute
    python benchmarks/generators/flow_grpo_overlap.py --batches 8 --sleep-fraction 0.8

The trainer (:func:`cac_align.jobs.flow_grpo.run`) samples a step's videos in ``sample_batch_size``
batches and hands each finished batch to a reward thread pool while the next batch samples. Here
the same run is done twice on ``recipes/align/flow_grpo_tiny_brightness.yaml``: with the instant
``brightness`` reward, then with the same reward made to sleep a fixed time per call, shorter
than sampling one batch (``--sleep-fraction`` of the measured per-batch sampling time). If scoring
overlaps sampling, only the last batch's scoring adds to a step (nothing is left to sample while
it runs, and the update needs every reward): the trainer's own ``time/reward_wait_s`` is then
one call's time, not ``batches`` calls', and the step-time ratio is 1 + sleep / step time. Step
times on a shared 2-core CPU vary by several percent between runs, so the waiting time is the
steadier figure. The first step of each run is a warm-up and is left out; medians over the rest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from cac_align.rewards.base import RewardBase


class Sleepy(RewardBase):
    """A reward that takes ``seconds`` per call (as a reward model would), then scores brightness."""

    name = "sleepy_brightness"

    def __init__(self, seconds: float):
        from cac_align.rewards.toy import BrightnessReward

        self.seconds = seconds
        self.inner = BrightnessReward()

    def __call__(self, videos, prompts=None, metadata=None):
        time.sleep(self.seconds)
        return self.inner(videos, prompts, metadata)


def _run(out: Path, steps: int, batches: int, size: int, reward=None) -> list[dict]:
    from cac_align.config import load_config
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

    shutil.rmtree(out, ignore_errors=True)
    config = load_config(
        FlowGrpoConfig,
        "recipes/align/flow_grpo_tiny_brightness.yaml",
        [f"out_dir={out}", f"steps={steps}", "group_size=4", "prompts_per_step=2", f"sample_batch_size={8 // batches}",
         "eval_every=0", "checkpoint_every=0", "log_with=none", f"generator.height={size}", f"generator.width={size}",
         "generator.num_frames=17", "generator.num_inference_steps=8"],
        job="flow-grpo",
    )
    run(config, reward=reward)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batches", type=int, default=4, help="sampling batches per step (8 videos per step)")
    parser.add_argument("--sleep-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="frame height and width (17 frames, 8 sampling steps)")
    parser.add_argument("--out", default="outputs/bench_flow_grpo_overlap")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def step_seconds(rows: list[dict]) -> np.ndarray:
        return np.array([r["time/sample_s"] + r["time/reward_wait_s"] + r["time/train_s"] for r in rows[1:]])

    instant = _run(Path(args.out) / "instant", args.steps, args.batches, args.size)
    per_batch = float(np.mean([r["time/sample_s"] for r in instant[1:]])) / args.batches
    sleep = args.sleep_fraction * per_batch
    slow = _run(Path(args.out) / "slow", args.steps, args.batches, args.size, reward=Sleepy(sleep))
    a, b = np.median(step_seconds(instant)), np.median(step_seconds(slow))
    wait = float(np.median([r["time/reward_wait_s"] for r in slow[1:]]))
    print(f"sampling: {per_batch:.3f} s per batch, {args.batches} batches per step; slow reward: {sleep:.3f} s per call, "
          f"{args.batches * sleep:.3f} s per step")
    print(f"waiting for rewards per step: {wait:.3f} s = {wait / (args.batches * sleep):.2f} of the reward's time "
          f"(1 / {args.batches} = {1 / args.batches:.2f} if only the last batch's scoring is exposed)")
    print(f"median step time: instant reward {a:.3f} s, slow reward {b:.3f} s; ratio {b / a:.3f}x "
          f"(expected {1 + sleep / a:.3f}x with only the last batch exposed, {1 + args.batches * sleep / a:.3f}x with no overlap)")


if __name__ == "__main__":
    main()
