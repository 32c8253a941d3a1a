"""Best-of-N through the Python API: N videos per prompt from Wan, the best kept by a reward.

    python examples/best_of_5.py --prompts prompts.txt --out runs/bo5                  # Wan-2.1-1.3B, UR + CaC (GPU)
    python examples/best_of_5.py --generator tiny-random:wan --reward brightness \\
        --prompts recipes/align/prompts_tiny.txt --n 3 --out outputs/bo5_tiny         # offline, seconds

CaC §4.2's Best-of-5: each prompt gets ``n`` candidates (seeds 0..n-1), the reward scores them all
and the best is kept. A candidate the reward could not score is never the best (its score is
invalid, not 0); a prompt none of whose candidates was scored keeps nothing, with the reason.
Writes ``OUT/<prompt index>_best.mp4`` and ``OUT/scores.json`` (every candidate's score, validity
and error, and the index chosen). ``cac-align bon`` is the resumable, multi-GPU job with
reports; this is the same idea in a page you can change.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cac_align.gen.generator import GeneratorConfig, build_video_generator
from cac_align.rewards.registry import build_reward
from cac_align.video import Video, save_video


def best_of_n(generator, config: GeneratorConfig, reward, prompt: str, n: int) -> tuple[np.ndarray, dict]:
    """``n`` candidates of one prompt and the reward's verdict on each. Returns the candidates
    (uint8 ``(n, F, H, W, 3)``) and ``{"scores", "valid", "errors", "best"}`` (``best`` is None
    when no candidate was scored)."""
    videos = generator.generate(config, [prompt] * n, list(range(n))).frames
    output = reward([Video(v, fps=config.fps) for v in videos], [prompt] * n)
    scores = np.where(output.valid, output.scores, -np.inf)
    best = int(np.argmax(scores)) if output.valid.any() else None
    return videos, {"scores": [float(s) if ok else None for s, ok in zip(output.scores, output.valid)], "valid": output.valid.tolist(),
                    "errors": [d.get("error") for d in output.details], "best": best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=5, help="candidates per prompt (CaC: 5)")
    parser.add_argument("--generator", default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", help="hub id, a local folder or tiny-random:wan")
    parser.add_argument("--reward", default="ur_cac", help="a reward name (docs/rewards.md); ur_cac is the paper's UR + CaC average")
    args = parser.parse_args(argv)
    prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    tiny = args.generator.startswith("tiny-random")
    config = GeneratorConfig(name=args.generator, **({"dtype": "float32", "device": "cpu", "height": 32, "width": 32, "num_frames": 9,
                                                      "num_inference_steps": 4, "guidance_scale": 1.0} if tiny else {}))
    generator = build_video_generator(config)
    reward = build_reward({"name": args.reward})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = []
    for i, prompt in enumerate(prompts):
        videos, verdict = best_of_n(generator, config, reward, prompt, args.n)
        if verdict["best"] is None:
            print(f"prompt {i}: no candidate could be scored ({verdict['errors'][0]}); nothing kept")
        else:
            save_video(Video(videos[verdict["best"]], fps=config.fps), out / f"{i:05d}_best.mp4", lossless=True)
            print(f"prompt {i}: kept candidate {verdict['best']} of {args.n} (score {verdict['scores'][verdict['best']]:.4f})")
        report.append({"prompt": prompt, **verdict})
    (out / "scores.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
