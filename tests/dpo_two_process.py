"""Run by tests/jobs/test_dpo.py under `accelerate launch` with two CPU processes.

Trains recipes/align/dpo_tiny.yaml on the pairs of ``<pairs>`` into ``<out>`` (the overrides after
them) and writes each process's LoRA weights to ``<out>/rank<N>.safetensors`` and the number of
processes to ``<out>/world.json``, so the test can compare them with one process.
"""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from cac_align.config import load_config
from cac_align.gen.wan import build_tiny_wan_pipeline
from cac_align.jobs.dpo import DpoConfig, run

REPO_ROOT = Path(__file__).resolve().parents[1]
pairs, out = sys.argv[1], Path(sys.argv[2])
config = load_config(DpoConfig, REPO_ROOT / "recipes/align/dpo_tiny.yaml", [f"out_dir={out}", f"pairs=[{pairs}]", "log_with=none", *sys.argv[3:]], job="dpo")
pipe = build_tiny_wan_pipeline(seed=0)
run(config, pipe=pipe)

from accelerate import PartialState  # noqa: E402

state = PartialState()
weights = {n: p.detach().cpu().contiguous() for n, p in pipe.transformer.named_parameters() if p.requires_grad}
save_file(weights, str(out / f"rank{state.process_index}.safetensors"))
if state.is_main_process:
    (out / "world.json").write_text(json.dumps({"num_processes": state.num_processes}))
