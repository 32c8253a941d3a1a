"""Host memory a decoded video takes on its way to the rewards: before and after frames stayed uint8.

    python benchmarks/memory/host_frames.py                       # CPU: 480x832x81 and 704x1280x121
    python benchmarks/memory/host_frames.py --device cuda         # the decoded video on the GPU, as in training

Two paths, each measured "before" (the code up to fc9c3a2, written out below) and "after" (the
package as it is), each in a fresh process:

- **decode**: a VAE's output ``(1, 3, F, H, W)`` in [-1, 1] on ``--device`` to uint8 frames, as a
  family's ``decode`` does. Before: diffusers' ``postprocess_video(output_type="np")`` (a float32
  copy on the host) and ``np.round(np.clip(x, 0, 1) * 255)`` on the whole array; after:
  ``output_type="pt"`` (stays on the device) and ``frames_to_uint8`` (a few frames at a time there).
- **reward input**: a float batch ``(1, F, 3, H, W)`` in [0, 1] on ``--device`` handed to a reward
  (a Flow-GRPO-style ``reward_fn``), to the ``Video`` every reward reads. Before: the tensor moved
  to the host whole as float32, then the same whole-array formula; after: ``load_video``.

What is read: the process's peak resident memory (``VmHWM``) while the path runs, less its resident
memory just before (the input already made, the imports done), in MB a video. The peak is reset
before each path through ``/proc/self/clear_refs`` (Linux). The uint8 video itself is
``F x H x W x 3`` bytes (97 MB at 480x832x81, 327 MB at 704x1280x121): "after" should be about
that, "before" several times it. On ``--device cpu`` the input and diffusers' own denormalize
(``x / 2 + 0.5``, a float32 copy of the video) are on the host too, in both; on a GPU they are not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
import numpy as np
import torch
from diffusers.video_processor import VideoProcessor

path, when, frames, height, width, device = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]), sys.argv[6]
torch.manual_seed(0)


def rss(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


if path == "decode":
    source = torch.rand(1, 3, frames, height, width, device=device) * 2 - 1  # a VAE's output
else:
    source = torch.rand(1, frames, 3, height, width, device=device)  # a decoded batch in [0, 1]
processor = VideoProcessor(vae_scale_factor=8)
from cac_align.gen.generator import frames_to_uint8
from cac_align.video import load_video
if device == "cuda":
    torch.cuda.synchronize()
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak resident memory starts again from here
before = rss("VmRSS")
if path == "decode" and when == "before":
    x = processor.postprocess_video(source, output_type="np")
    out = np.round(np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
elif path == "decode":
    out = frames_to_uint8(processor.postprocess_video(source, output_type="pt"))
elif when == "before":
    array = source[0].detach().cpu().float().numpy()
    out = np.round(np.clip(np.transpose(array, (0, 2, 3, 1)), 0.0, 1.0) * 255.0).astype(np.uint8)
else:
    out = load_video(source, source_fps=16)[0].frames
peak = rss("VmHWM") - before
assert out.dtype == np.uint8 and out.shape[-4:] == (frames, height, width, 3), out.shape
print(json.dumps({"path": path, "when": when, "peak_mb": peak / 1e6, "uint8_mb": out.nbytes / 1e6}))
"""


def measure(path: str, when: str, size: tuple[int, int, int], device: str) -> dict:
    frames, height, width = size
    done = subprocess.run([sys.executable, "-c", CHILD, path, when, str(frames), str(height), str(width), device],
                          cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path} {when} at {width}x{height}x{frames} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["480x832x81", "704x1280x121"], help="HxWxF")
    parser.add_argument("--device", default="cpu", help="where the decoded video is: cpu or cuda")
    args = parser.parse_args(argv)
    print(f"host memory a video takes to reach the rewards ({args.device}), MB above the process's resident memory before it:")
    print(f"  {'video':<14} {'path':<13} {'uint8':>7} {'before':>8} {'after':>8} {'before/after':>12}")
    for text in args.sizes:
        height, width, frames = (int(v) for v in text.split("x"))
        for path in ("decode", "reward input"):
            key = path.split()[0]
            before = measure(key, "before", (frames, height, width), args.device)
            after = measure(key, "after", (frames, height, width), args.device)
            print(f"  {text:<14} {path:<13} {after['uint8_mb']:>7.0f} {before['peak_mb']:>8.0f} {after['peak_mb']:>8.0f} "
                  f"{before['peak_mb'] / after['peak_mb']:>11.2f}x")


if __name__ == "__main__":
    main()
