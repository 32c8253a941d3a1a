"""Scoring speed of the shipped cac-demo model on the CPU: two-turn CaC, batched vs one-by-one.

    python benchmarks/judge/cac_demo_speed.py                 # 32 held-out videos of recipes/synth/default.yaml
    python benchmarks/judge/cac_demo_speed.py --model outputs/cac_demo/stage3/final

Videos are rendered in memory (seed 5002, used by no training run) and decoded frames are handed
to the reward, so the figure is the model's: both turns' generation, the crop and resample, and
the status probabilities. Reported: videos per second batched (``--batch`` videos per call) and
one at a time, measured in the same run, after one warm-up call.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from cac_align.cac.infer import CaCOptions
    from cac_align.config import load_config
    from cac_align.data.synthetic import SynthConfig, video_kinds, make_spec, render
    from cac_align.models import model_settings
    from cac_align.rewards.cac import CaCReward
    from cac_align.video import Video
    from cac_align.vlm.hf import HFBackend

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cac-demo")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    synth = load_config(SynthConfig, "recipes/synth/default.yaml", ["out_dir=unused", f"n={args.videos}", "seed=5002"], job="synth")
    kinds = video_kinds(synth)
    videos = [Video(render(make_spec(synth, i, kinds[i]))[0], synth.fps) for i in range(args.videos)]
    settings = model_settings(args.model) or {"prompt_style": "compact", "max_pixels": 24576, "size_multiple": 64}
    options = CaCOptions(max_frames_turn2=8, max_new_tokens=320).for_model(settings)
    backend = HFBackend.from_pretrained(args.model, max_batch_size=args.batch, dtype="float32", device="cpu")
    results = {}
    for label, batch in (("batched", args.batch), ("one-by-one", 1)):
        reward = CaCReward(backend, options, batch_size=batch)
        reward(videos[:batch])  # warm-up
        start = time.perf_counter()
        out = reward(videos)
        seconds = time.perf_counter() - start
        results[label] = args.videos / seconds
        print(f"{label}: {args.videos} videos in {seconds:.1f} s = {results[label]:.2f} videos/s ({int(out.valid.sum())} valid)")
    print(f"ratio batched / one-by-one: {results['batched'] / results['one-by-one']:.2f}x")


if __name__ == "__main__":
    main()
