"""What preparing a turn-1 request costs before the model runs: frames, prompt and processor.

    python benchmarks/judge/preprocess_cost.py                    # cac-demo's processor, 32 held-out videos, batch 16
    python benchmarks/judge/preprocess_cost.py --size 480x832     # the same scenes rendered at Wan-2.1's 480p

Three ways to hand the same videos to the vision processor, timed in one run (best of
``--repeats``), per video:

1. **before**: frames capped to the pixel budget keeping their aspect ratio (``size_multiple=1``),
   so the processor resizes them again onto its patch grid, and one processor call per video;
2. **resized once**: frames resized once onto the processor's grid (``size_multiple``, what
   ``CaCOptions`` does now), so the processor has nothing to resize, still one call per video;
3. **resized once, batched**: the same frames, one processor call per ``--batch`` videos (what
   ``HFBackend`` does).

Each row also gives the visual tokens per video, so the three rows are the same work for the
model. The frame sampling itself (``sample_capped``) is timed as part of each row.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from transformers import AutoProcessor

    from cac_align.cac.infer import sample_capped
    from cac_align.cac.prompts import turn1_prompt
    from cac_align.config import load_config
    from cac_align.data.synthetic import SynthConfig, make_spec, render, video_kinds
    from cac_align.models import builtin_path, model_settings
    from cac_align.video import Video
    from cac_align.vlm.backend import user, videos_of
    from cac_align.vlm.hf import processor_inputs, render_chat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cac-demo")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", default=None, help="render the videos at HxW (default: the synth recipe's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    size = [f"height={args.size.split('x')[0]}", f"width={args.size.split('x')[1]}"] if args.size else []
    synth = load_config(SynthConfig, "recipes/synth/default.yaml", ["out_dir=unused", f"n={args.videos}", "seed=5002", *size], job="synth")
    kinds = video_kinds(synth)
    videos = [Video(render(make_spec(synth, i, kinds[i]))[0], synth.fps) for i in range(args.videos)]
    folder = builtin_path(args.model) if args.model == "cac-demo" else args.model
    processor = AutoProcessor.from_pretrained(folder)
    settings = model_settings(args.model) or {"max_pixels": 24576, "size_multiple": 64}
    max_pixels, multiple = settings["max_pixels"], settings["size_multiple"]
    video_token = processor.tokenizer.convert_tokens_to_ids(processor.video_token)

    def requests(size_multiple: int) -> list:
        out = []
        for video in videos:
            scan = sample_capped(video, 4.0, 64, max_pixels, size_multiple)
            out.append([user(scan, turn1_prompt(video.duration_s, scan.fps, scan.num_frames, None, style="compact"))])
        return out

    def run(size_multiple: int, batch: int) -> tuple[float, float, tuple]:
        best, tokens, shape = float("inf"), 0.0, ()
        for _ in range(args.repeats):
            start = time.perf_counter()
            todo = requests(size_multiple)
            counted = 0
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                inputs = processor_inputs(processor, [render_chat(processor, r) for r in chunk], chunk)
                counted += int((inputs["input_ids"] == video_token).sum())
            best = min(best, time.perf_counter() - start)
            tokens, shape = counted / len(todo), tuple(videos_of(todo[0])[0].frames.shape[1:3])
        return 1000 * best / len(videos), tokens, shape

    rows = [
        ("before: aspect kept, processor resizes, one call per video", 1, 1),
        ("resized once onto the grid, one call per video", multiple, 1),
        (f"resized once onto the grid, one call per {args.batch} videos", multiple, args.batch),
    ]
    base = None
    print(f"{args.videos} videos of {videos[0].frames.shape[2]}x{videos[0].frames.shape[1]} at {videos[0].fps:g} fps, "
          f"turn-1 scan at 4 fps, {max_pixels} pixels per frame, {args.threads} threads")
    for label, size_multiple, batch in rows:
        ms, tokens, shape = run(size_multiple, batch)
        base = base or ms
        print(f"{label:62s} {ms:7.2f} ms/video ({base / ms:.2f}x)  frames {shape[1]}x{shape[0]} in, {tokens:.0f} visual tokens")


if __name__ == "__main__":
    main()
