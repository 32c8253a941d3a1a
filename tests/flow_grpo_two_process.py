"""Run by tests/jobs/test_flow_grpo.py under `accelerate launch` with two CPU processes.

Trains recipes/align/flow_grpo_tiny_brightness.yaml (one step, or the overrides after ``<out>``)
and writes each process's LoRA weights to ``<out>/rank<N>.safetensors`` so the test can compare them.
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from cac_align.config import load_config
from cac_align.gen.wan import build_tiny_wan_pipeline
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

REPO_ROOT = Path(__file__).resolve().parents[1]

out = Path(sys.argv[1])
config = load_config(
    FlowGrpoConfig,
    REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml",
    [f"out_dir={out}", "steps=1", "log_with=none", *sys.argv[2:]],
    job="flow-grpo",
)
pipe = build_tiny_wan_pipeline(seed=0)
run(config, pipe=pipe)

from accelerate import PartialState  # noqa: E402

state = PartialState()
weights = {n: p.detach().cpu().contiguous() for n, p in pipe.transformer.named_parameters() if p.requires_grad}
save_file(weights, str(out / f"rank{state.process_index}.safetensors"))
if state.is_main_process:
    (out / "world.json").write_text(json.dumps({"num_processes": state.num_processes}))
