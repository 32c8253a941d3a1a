"""A sharded flow-grpo step on 2 CPU processes (FSDP2, gloo) with one gradient reduction per update against one per
backward (issue #105: the trainer's behaviour before), in one run, alternating, on the same recipe and seeds: the
training time of a step, the reduce-scatters each process made, and the difference between the two runs' LoRAs.

    python benchmarks/run/gradient_reductions.py --repeats 3
    python benchmarks/run/gradient_reductions.py --repeats 3 --train-batch-size 1 --steps 2   # more backwards an update

Each launch is tests/parallel_launch.py (the launcher of the two-process tests, which counts FSDP2's collectives per
expert) under ``torchrun --nproc_per_node 2`` on recipes/align/flow_grpo_tiny_brightness.yaml with ``parallel.shard=fsdp2``;
"per backward" sets ``CAC_TEST_SYNC_EVERY_BACKWARD=1`` there, which makes every expert reduce at every backward that
runs it, as ``Layout.no_sync`` did. The figure is ``time/train_s`` of the last step (the first pays warm-ups), its
median over the repeats, and the ratio of the two medians. Measure on an idle machine (2 cores: a second heavy process
makes the times meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "tests/parallel_launch.py"
RECIPE = REPO / "recipes/align/flow_grpo_tiny_brightness.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, per_backward: bool, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if per_backward:
        env["CAC_TEST_SYNC_EVERY_BACKWARD"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()), str(LAUNCH), "flow-grpo",
               str(RECIPE), str(out), "parallel.shard=fsdp2", "eval_prompts=null", "checkpoint_every=0", *overrides]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-4000:])
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    record = json.loads((out / "record0.json").read_text())
    return {"train_s": steps[-1]["time/train_s"], "reduce_scatters": sum(r["reduce_scatter"] for r in record["reductions"].values()),
            "updates": record["updates"], "lora": out / "lora/pytorch_lora_weights.safetensors"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--train-batch-size", type=int, default=1)
    args = parser.parse_args()
    from safetensors.torch import load_file

    overrides = [f"steps={args.steps}", f"train_batch_size={args.train_batch_size}"]
    runs: dict[str, list[dict]] = {"one per update": [], "one per backward": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in runs:
                found = launch(Path(tmp) / f"{mode.replace(' ', '_')}_{repeat}", mode == "one per backward", overrides)
                runs[mode].append(found)
                print(f"repeat {repeat + 1}, {mode}: train {found['train_s']:.3f} s, {found['reduce_scatters']} reduce-scatters in "
                      f"{found['updates']} updates (process 0)", flush=True)
        after, before = (statistics.median(r["train_s"] for r in runs[m]) for m in runs)
        a, b = (load_file(str(runs[m][0]["lora"])) for m in runs)
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"median time/train_s of the last step: one reduction per update {after:.3f} s, one per backward {before:.3f} s; "
          f"ratio per-update / per-backward = {after / before:.3f}")
    print(f"the two LoRAs differ by at most {worst:.2e}")


if __name__ == "__main__":
    main()
