"""A reward of your own in a few lines, registered by name and used by ``cac-align score``.

    python examples/custom_reward.py --out outputs/sharpness      # scores 4 demo videos, offline

A reward writes only how it scores a batch (:class:`cac_align.rewards.base.BatchReward`): one dict
per video with ``score``, or ``error`` where it cannot score one (the sample is then invalid,
never a silent 0). Registered under a short name, it works wherever a reward section does: score
recipes, ``ur_cac``-style combinations, Flow-GRPO, Best-of-N. This one, ``sharpness``, is the mean
absolute difference between neighbouring pixels, over 0-255: blurred or flat frames score low.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cac_align.rewards.base import BatchReward
from cac_align.rewards.registry import register_reward
from cac_align.video import Video


@dataclass
class SharpnessConfig:
    """What a recipe may set under ``reward:`` (an unknown key is an error naming it)."""

    min_frames: int = 2  # fewer frames than this: invalid


class SharpnessReward(BatchReward):
    name = "sharpness"
    score_range = (0.0, 1.0)
    needs_prompt = False

    def __init__(self, min_frames: int = 2):
        self.min_frames = min_frames

    def score_batch(self, requests: list[tuple[Video, str | None]]) -> list[dict]:
        answers = []
        for video, _ in requests:
            frames = np.asarray(video.frames, dtype=np.float64)  # (F, H, W, 3)
            if len(frames) < self.min_frames:
                answers.append({"error": f"{len(frames)} frames, fewer than min_frames={self.min_frames}", "error_kind": "video"})
                continue
            across = np.abs(np.diff(frames, axis=2)).mean()  # neighbours in a row
            down = np.abs(np.diff(frames, axis=1)).mean()  # neighbours in a column
            answers.append({"score": float(across + down) / (2 * 255.0), "across": float(across), "down": float(down)})
        return answers


def build(config: SharpnessConfig, key: str = "reward") -> SharpnessReward:
    return SharpnessReward(config.min_frames)


# "module:attribute" strings, so the registry can name them in errors and in --print-config
register_reward("sharpness", f"{__name__}:SharpnessConfig", f"{__name__}:build", help="mean neighbour difference (an example)")


def main(argv: list[str] | None = None) -> list[dict]:
    from cac_align.config import load_config
    from cac_align.jobs.score import ScoreConfig, run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/sharpness")
    parser.add_argument("--videos", type=int, default=4, help="synthetic demo videos to render and score")
    args = parser.parse_args(argv)
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    overrides = [f"out_dir={args.out}", f"synth_videos={args.videos}", f"synth={recipes / 'synth/default.yaml'}", "overwrite=true"]
    config = load_config(ScoreConfig, recipes / "score/cac_demo.yaml", overrides, job="score")  # its demo videos, our reward
    config.reward = {"name": "sharpness"}
    rows = run(config)
    for row in rows:
        print(f"{Path(row['video']).name}: sharpness {row['score']:.4f}" if row["valid"] else f"{row['video']}: invalid ({row['error']})")
    return rows


if __name__ == "__main__":
    main()
