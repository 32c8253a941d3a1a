"""Use cac_align's rewards inside the public Flow-GRPO code, in a few lines.

In a Flow-GRPO checkout, flow_grpo/rewards.py builds rewards with ``multi_score(device,
score_dict)`` from a table named ``score_functions``. Add ours to that table:

    # flow_grpo/rewards.py, inside multi_score(), after score_functions = {...}
    from cac_align.rewards import flow_grpo as cac_rewards
    cac_rewards.configure("examples/flow_grpo_rewards.yaml")   # which checkpoints (optional)
    score_functions.update(cac_rewards.SCORE_FUNCTIONS)        # "cac", "unified_reward", "ur_cac"

and name the reward in the training config:

    config.reward_fn = {"ur_cac": 1.0}       # the paper's UR + CaC average (CaC §4.2)

Each factory returns ``fn(images, prompts, metadata) -> (scores, info)`` with ``images`` the
(B, F, C, H, W) float videos in [0, 1] the Wan pipeline returns and ``scores`` a float32 numpy
array of length B. Invalid samples are filled per ``configure(invalid=...)`` and listed in
``info``. Alternatively use our combiner, which has Flow-GRPO's shape:

    reward_fn = cac_rewards.multi_score(accelerator.device, config.reward_fn)

Run this file to see the call the trainer makes, offline, on tiny random models:

    python examples/flow_grpo_drop_in.py
"""

from __future__ import annotations

import concurrent.futures

import torch

from cac_align.rewards import flow_grpo as cac_rewards

TINY_SECTIONS = {
    "ur_cac": {
        "name": "ur_cac",
        "unified_reward": {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4},
        "cac": {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}},
    }
}


def main() -> dict:
    cac_rewards.configure(TINY_SECTIONS)  # real runs: configure("examples/flow_grpo_rewards.yaml")
    reward_fn = cac_rewards.multi_score(torch.device("cpu"), {"ur_cac": 1.0})
    # What Flow-GRPO's trainer does with it: score in a background thread while sampling goes on.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    videos = torch.rand(4, 9, 3, 32, 32)  # (B, F, C, H, W) in [0, 1], like WanPipeline(output_type="pt")
    prompts = ["a cat jumps", "a cat jumps", "a dog runs", "a dog runs"]
    future = executor.submit(reward_fn, videos, prompts, [{} for _ in prompts], only_strict=True)
    rewards, info = future.result()
    executor.shutdown()
    for name, scores in rewards.items():
        print(f"{name:>8}: {scores.round(4).tolist()}")
    print("invalid samples:", info["ur_cac"]["invalid_indices"])
    return rewards


if __name__ == "__main__":
    main()
