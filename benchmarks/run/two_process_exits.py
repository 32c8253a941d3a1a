"""Launch a 2-process CPU (gloo) run many times in a row, under load, and count the launches that fail: the exit race
of a multi-process run (issue #100, item 0: a run that wrote its files, printed "done", then aborted at exit with
"terminate called without an active exception").

    python benchmarks/run/two_process_exits.py --job stage1 --runs 20 --burners 2     # train-cac stage 1 (transformers' Trainer)
    python benchmarks/run/two_process_exits.py --job flow-grpo --runs 20 --burners 2  # flow-grpo, FSDP2
    PYTHONPATH=/path/to/an/older/checkout python benchmarks/run/two_process_exits.py ...  # the same against another commit

Each launch is ``accelerate launch`` with two CPU processes of ``python -m cac_align.cli <job>`` on a tiny recipe, as
the slow tests run it (tests/jobs/test_cac_sft.py::test_two_processes_split_the_data; tests/jobs/test_parallel.py's
FSDP2 flow-grpo case), with ``--burners`` processes spinning beside it (a CPU burner: the load CI meets) and
``PYTHONFAULTHANDLER=1`` (a process that aborts prints every Python thread's stack). A failed launch's last lines are
kept in ``--out``. Prints one line per launch and the count at the end; exits 1 when any launch failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _burn(stop: multiprocessing.Event) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def _command(job: str, out: Path, data: Path, port: int) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", "cac_align.cli"]
    if job == "stage1":
        return [*launch, "train-cac", "--config", str(REPO / "recipes/cac/stage1_tiny.yaml"), f"annotations={data}", f"out_dir={out}",
                "train.max_steps=3", "train.eval_steps=3", "train.save_steps=3"]
    return [*launch, "flow-grpo", "--config", str(REPO / "recipes/align/flow_grpo_tiny_fsdp2.yaml"), f"out_dir={out}", "steps=2",
            "checkpoint_every=2", "log_with=none"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=["stage1", "flow-grpo"], default="stage1")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burners", type=int, default=2, help="processes spinning beside each launch")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "two_process_exits")
    parser.add_argument("--port", type=int, default=29561)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    data = args.out / "cac_data" / "annotations.jsonl"
    if args.job == "stage1" and not data.is_file():
        subprocess.run([sys.executable, "-m", "cac_align.cli", "synth", "--config", str(REPO / "recipes/cac/synth_tiny.yaml"),
                        f"out_dir={data.parent}"], check=True, env=env, cwd=REPO, capture_output=True)
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    failed = 0
    try:
        for k in range(args.runs):
            out = args.out / f"run_{k:02d}"
            start = time.perf_counter()
            done = subprocess.run(_command(args.job, out, data, args.port + k % 20), env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
            seconds = time.perf_counter() - start
            if done.returncode:
                failed += 1
                (args.out / f"failed_{k:02d}.log").write_text(done.stdout[-5000:] + "\n----\n" + done.stderr[-20000:])
            aborted = "terminate called" in done.stderr
            print(f"launch {k + 1}/{args.runs}: exit {done.returncode} in {seconds:.0f} s{' (aborted at exit)' if aborted else ''}", flush=True)
    finally:
        stop.set()
        for burner in burners:
            burner.join(timeout=5)
    print(f"{args.job}: {failed} of {args.runs} launches failed ({args.burners} burners beside them)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
