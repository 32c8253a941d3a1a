"""Run a Flow-GRPO training script with cac_align's rewards installed, editing none of its files.

Usage, from the root of a Flow-GRPO checkout::

    python -m cac_align.rewards.launch_flow_grpo --rewards my_rewards.yaml \\
        scripts/train_wan2_1.py --config config/grpo.py:<config name>

    accelerate launch --config_file scripts/accelerate_configs/multi_gpu.yaml --num_processes 8 \\
        -m cac_align.rewards.launch_flow_grpo --rewards my_rewards.yaml \\
        scripts/train_wan2_1.py --config config/grpo.py:<config name>

Everything after the script path is passed to the script unchanged. Before running it, each
process imports ``flow_grpo.rewards`` and ``flow_grpo.stat_tracking`` and calls
:func:`cac_align.rewards.flow_grpo.install` on them, so ``config.reward_fn`` may name ``cac``,
``unified_reward`` and ``ur_cac`` beside their own rewards, and invalid samples never train.
``--rewards`` is a YAML file of reward sections by name (``examples/flow_grpo_rewards.yaml``);
without it the names load the paper's checkpoints.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from pathlib import Path

from cac_align.rewards import flow_grpo as drop_in


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cac_align.rewards.launch_flow_grpo",
        description="Run a Flow-GRPO training script with cac_align's rewards installed.",
    )
    parser.add_argument("--rewards", help="YAML file of reward sections by name (examples/flow_grpo_rewards.yaml)")
    parser.add_argument("script", help="the Flow-GRPO training script, e.g. scripts/train_wan2_1.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    args = parser.parse_args(argv)
    script = Path(args.script)
    if not script.is_file():
        parser.error(f"no such script: {script}")
    if args.rewards is not None and not Path(args.rewards).is_file():
        parser.error(f"--rewards: no such file: {args.rewards}")
    # As `python script.py` would: the script's folder first on the path; the working directory
    # (a Flow-GRPO checkout root, if flow_grpo is not pip-installed) after it.
    for entry in (str(Path.cwd()), str(script.resolve().parent)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        rewards = importlib.import_module("flow_grpo.rewards")
        stat_tracking = importlib.import_module("flow_grpo.stat_tracking")
    except ImportError as exc:
        parser.error(f"cannot import Flow-GRPO ({exc}); run from the root of a Flow-GRPO checkout or pip install it")
    drop_in.install(rewards, stat_tracking, sections=args.rewards)
    sys.argv = [str(script), *args.script_args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
