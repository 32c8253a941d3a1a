"""Peak memory of `cac-align score` against the length of the video it scores.

    python benchmarks/memory/long_video_memory.py                          # 10 s, 1 min and 5 min at 320x240, 16 fps
    python benchmarks/memory/long_video_memory.py --seconds 10 60 600 --size 1280x720

For each length, one H.264 file of random-walk frames is written, then scored by the real job in
a fresh process (`cac-align score --config recipes/score/cac_tiny.yaml videos=FILE`: CaC's two
turns on the tiny random Qwen3-VL), and that process's peak resident memory is read
(``ru_maxrss`` of the finished child). Beside it, a second fresh process decodes the whole file
into one array, as `score` did before files were read lazily (every frame at its own rate): the
memory the job would need if it still did. The job's peak should stay flat as the video grows,
bounded by the scan's and the clip's frame caps (``max_frames_turn1``, ``max_frames_turn2``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

DECODE_ALL = """
import sys
from cac_align.video import load_video
video = load_video(sys.argv[1])
print(video.frames.shape, flush=True)
"""


def write_video(path: Path, seconds: float, height: int, width: int, fps: float = 16.0) -> None:
    """A video of ``seconds`` whose frames drift slowly (so H.264 has real work), written in chunks."""
    import imageio_ffmpeg

    rng = np.random.default_rng(0)
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", macro_block_size=1, output_params=["-crf", "28"], ffmpeg_log_level="error")
    writer.send(None)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    for i in range(int(seconds * fps)):
        writer.send(np.roll(base, i, axis=1))
    writer.close()


# A fresh process whose only child is the measured command: its children's ru_maxrss is then
# that command's own peak (the counter keeps the largest child ever waited for).
MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_gib(command: list[str]) -> tuple[float, float]:
    """(peak resident memory in GiB, seconds) of ``command`` run to completion in a new process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True, cwd=REPO)
    return int(done.stdout.split()[-1]) / 2**20, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 300], help="video lengths")
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    lengths = sorted(args.seconds)
    print(f"{'length':>8} | {'score peak (GiB)':>17} | {'score s':>7} | {'decode-all peak (GiB)':>21}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            video = Path(tmp) / f"v{int(seconds)}.mp4"
            write_video(video, seconds, height, width)
            score, elapsed = peak_rss_gib([sys.executable, "-m", "cac_align.cli", "score", "--config", "recipes/score/cac_tiny.yaml",
                                           f"videos={video}", f"out_dir={Path(tmp) / f'out{int(seconds)}'}", "synth_videos=0"])
            whole, _ = peak_rss_gib([sys.executable, "-c", DECODE_ALL, str(video)])
            print(f"{seconds:>7.0f}s | {score:>17.2f} | {elapsed:>7.1f} | {whole:>21.2f}", flush=True)


if __name__ == "__main__":
    main()
