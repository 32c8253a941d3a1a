"""cac_align's rewards inside the public Flow-GRPO trainer: one ``install`` call, no edits.

From the root of a Flow-GRPO checkout, with no code at all (every process of ``accelerate launch
-m`` too), ``CAC_ALIGN`` being your cac_align clone::

    python -m cac_align.integrations.flow_grpo --rewards $CAC_ALIGN/examples/flow_grpo_rewards.yaml \\
        scripts/train_wan2_1.py --config config/grpo.py:<your config>

and name the reward in the training config::

    config.reward_fn = {"ur_cac": 1.0}       # the paper's UR + CaC average (CaC §4.2)

or, from your own launcher, before the trainer's ``main`` runs::

    import flow_grpo.rewards, flow_grpo.stat_tracking
    from cac_align.integrations import flow_grpo as cac_rewards
    cac_rewards.install(flow_grpo.rewards, flow_grpo.stat_tracking, sections=f"{CAC_ALIGN}/examples/flow_grpo_rewards.yaml")

``install`` adds our names to their ``multi_score`` (their own names keep working), loads each
checkpoint once per process, and makes their ``PerPromptStatTracker`` NaN-aware so a sample a
reward could not score gets advantage 0 and is masked out of training (docs/rewards.md).

Run this file to see the reward path of their trainer, offline, on tiny random models:

    python examples/flow_grpo_drop_in.py                       # a stand-in checkout (tests/fixtures)
    python examples/flow_grpo_drop_in.py --checkout ~/flow_grpo  # your Flow-GRPO checkout
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import sys
from pathlib import Path

import torch

from cac_align.integrations import flow_grpo as cac_rewards

STAND_IN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "flow_grpo_checkout"
TINY_SECTIONS = {
    "ur_cac": {
        "name": "ur_cac",
        "unified_reward": {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs"},
        "cac": {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}},
        "source_fps": 16.0,  # the rate of the videos the trainer hands over (Wan-2.1 16, Wan2.2 / LTX-2 24)
    }
}


def main(checkout: Path = STAND_IN) -> dict:
    sys.path.insert(0, str(checkout))
    rewards_module = importlib.import_module("flow_grpo.rewards")
    stat_tracking = importlib.import_module("flow_grpo.stat_tracking")
    # real runs: sections="<your cac_align clone>/examples/flow_grpo_rewards.yaml"
    cac_rewards.install(rewards_module, stat_tracking, sections=TINY_SECTIONS)

    # What their trainer does: build the reward function, score in a background thread while the
    # next batch samples, per-prompt advantages from their tracker, drop zero-advantage samples.
    tracker = stat_tracking.PerPromptStatTracker(False)  # built at set-up when per-prompt tracking is on
    reward_fn = rewards_module.multi_score(torch.device("cpu"), {"ur_cac": 1.0})
    videos = torch.rand(4, 9, 3, 32, 32)  # (B, F, C, H, W) in [0, 1], like WanPipeline(output_type="pt")
    videos[3] = float("nan")  # a broken sample: its reward is invalid, never a made-up number
    prompts = ["a cat jumps", "a cat jumps", "a dog runs", "a dog runs"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as executor:
        rewards, info = executor.submit(reward_fn, videos, prompts, [{} for _ in prompts], only_strict=True).result()
    advantages = tracker.update(prompts, rewards["avg"])
    for name, scores in rewards.items():
        print(f"{name:>8}: {scores.round(4).tolist()}")
    print("advantages:", advantages.round(4).tolist(), "(the invalid sample: 0, so their mask drops it)")
    print("why invalid:", info["ur_cac"]["errors"])
    cac_rewards.uninstall(rewards_module, stat_tracking)
    return {**rewards, "advantages": advantages}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=STAND_IN, help="a Flow-GRPO checkout (default: our stand-in)")
    main(parser.parse_args().checkout)
