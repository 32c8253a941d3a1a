"""verl-omni reward function: per-sample calls gathered into model batches vs one at a time.

A verl-omni reward worker calls the reward function once per sample, all samples of its chunk
concurrently (cac_align/integrations/verl_omni.py). This measures what gathering those calls into
model batches buys: the same concurrent calls scored with ``max_batch`` = N (one model batch) and
``max_batch`` = 1 (what a function that scores each call on its own does), on tiny random models
on the CPU (``ur_cac``: the tiny Qwen3-VL CaC and the tiny Qwen2.5-VL UnifiedReward).

    python benchmarks/judge/verl_omni_batching.py [--samples 16] [--repeats 3] [--size 64]

Prints samples/s for both and their ratio (best of the repeats, after one warm-up call that loads
the models). Scores are checked equal between the two settings.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import torch

from cac_align.integrations import verl_omni

TINY = {
    "ur_cac": {
        "name": "ur_cac",
        "cac": {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}},
        "unified_reward": {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4},
    }
}


def samples(n: int, size: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [torch.as_tensor(rng.integers(0, 256, (16, 3, size, size), dtype=np.uint8)) for _ in range(n)]


async def score_all(frames: list[torch.Tensor], max_batch: int) -> list[float]:
    calls = [
        verl_omni.compute_score(solution_image=f, ground_truth=f"prompt {i // 4}", reward="ur_cac", sections=TINY,
                                fps=16, device="cpu", max_batch=max_batch)
        for i, f in enumerate(frames)
    ]
    return [r["score"] for r in await asyncio.gather(*calls)]


def best_rate(frames: list[torch.Tensor], max_batch: int, repeats: int) -> tuple[float, list[float]]:
    scores = asyncio.run(score_all(frames[:1], max_batch))  # warm-up: loads the models
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        scores = asyncio.run(score_all(frames, max_batch))
        best = max(best, len(frames) / (time.perf_counter() - start))
    return best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    frames = samples(args.samples, args.size)
    batched, scores_b = best_rate(frames, args.samples, args.repeats)
    single, scores_s = best_rate(frames, 1, args.repeats)
    assert np.allclose(scores_b, scores_s, atol=1e-5), (scores_b, scores_s)
    print(f"{args.samples} concurrent calls, ur_cac on tiny models, {args.size}x{args.size}, 16 frames at 16 fps")
    print(f"gathered (max_batch={args.samples}): {batched:.2f} samples/s")
    print(f"one at a time (max_batch=1): {single:.2f} samples/s")
    print(f"ratio: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
