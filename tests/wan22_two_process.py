"""Run by tests/jobs/test_wan22_jobs.py under `accelerate launch` with two CPU processes: one step of
recipes/align/flow_grpo_tiny_wan22_<layout>.yaml (argv: layout, out, overrides...), each process's
trained LoRA written to ``<out>/rank<N>.safetensors`` for the test to compare with one process."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from cac_align.config import load_config
from cac_align.gen.tiny import TINY_WAN_BUILDERS
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

REPO_ROOT = Path(__file__).resolve().parents[1]
layout, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
config = load_config(FlowGrpoConfig, REPO_ROOT / f"recipes/align/flow_grpo_tiny_wan22_{layout}.yaml",
                     [f"out_dir={out}", "steps=1", "log_with=none", "eval_every=0", "checkpoint_every=0", *overrides], job="flow-grpo")
pipe = TINY_WAN_BUILDERS[f"tiny-random:wan22-{layout}"](seed=0)
run(config, pipe=pipe)

from accelerate import PartialState  # noqa: E402

state = PartialState()
experts = [("transformer", pipe.transformer), ("transformer_2", getattr(pipe, "transformer_2", None))]
weights = {f"{name}.{n}": p.detach().cpu().contiguous() for name, e in experts if e is not None for n, p in e.named_parameters() if p.requires_grad}
save_file(weights, str(out / f"rank{state.process_index}.safetensors"))
if state.is_main_process:
    (out / "world.json").write_text(json.dumps({"num_processes": state.num_processes}))
