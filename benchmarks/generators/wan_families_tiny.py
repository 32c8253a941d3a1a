"""The tiny Flow-GRPO step of each Wan family on the CPU: Wan-2.1 beside Wan2.2's two layouts.

    python benchmarks/generators/wan_families_tiny.py            # 4 steps each, the last 3 reported

Runs the shipped trainer on ``recipes/align/flow_grpo_tiny_brightness.yaml`` (model-free reward,
so the figures are the generator's) with ``generator.name`` set to ``tiny-random:wan``,
``tiny-random:wan22-ti2v`` (64 x 64: the 5B's VAE needs sides of 32) and ``tiny-random:wan22-a14b``
(its two experts; the LoRA on the high-noise one, whose steps alone are trained), and prints the
median sampling and training seconds per step over the steps after the first. Random tiny models:
these are the code path's costs on this CPU, not the real models'. Not a test.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cac_align.config import load_config  # noqa: E402
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run  # noqa: E402

CASES = {
    "tiny-random:wan": [],
    "tiny-random:wan22-ti2v": ["generator.height=64", "generator.width=64", "generator.fps=16"],
    "tiny-random:wan22-a14b": ["generator.flow_shift=12.0"],
}


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print("generator                 sample s/step   train s/step   trained timesteps")
    for name, extra in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(FlowGrpoConfig, REPO / "recipes/align/flow_grpo_tiny_brightness.yaml",
                                 [f"out_dir={tmp}/run", f"steps={steps}", "log_with=none", "checkpoint_every=0", "eval_every=0",
                                  f"generator.name={name}", *extra], job="flow-grpo")
            run(config)
            rows = [json.loads(line) for line in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines()][1:]
        sample = statistics.median(r["time/sample_s"] for r in rows)
        train = statistics.median(r["time/train_s"] for r in rows)
        print(f"{name:24s}  {sample:13.3f}   {train:12.3f}   {rows[-1]['train/timesteps']}", flush=True)


if __name__ == "__main__":
    main()
