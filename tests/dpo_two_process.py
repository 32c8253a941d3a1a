"""Run by tests/jobs/test_dpo.py under `accelerate launch` with two CPU processes.

Trains recipes/align/dpo_tiny.yaml (or the recipe ``$DPO_RECIPE`` names) on the pairs of ``<pairs>``
into ``<out>`` (the overrides after them) and writes each process's LoRA weights, every expert's, to
``<out>/rank<N>.safetensors`` and the number of processes to ``<out>/world.json``, so the test can
compare them with one process.
"""

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from cac_align.config import load_config
from cac_align.gen.families.wan import TINY_WAN_BUILDERS
from cac_align.jobs.dpo import DpoConfig, run

REPO_ROOT = Path(__file__).resolve().parents[1]
pairs, out = sys.argv[1], Path(sys.argv[2])
recipe = os.environ.get("DPO_RECIPE", str(REPO_ROOT / "recipes/align/dpo_tiny.yaml"))
config = load_config(DpoConfig, recipe, [f"out_dir={out}", f"pairs=[{pairs}]", "log_with=none", *sys.argv[3:]], job="dpo")
pipe = TINY_WAN_BUILDERS[config.generator.name](seed=0)
run(config, pipe=pipe)

from accelerate import PartialState  # noqa: E402

state = PartialState()
weights = {n: p.detach().cpu().contiguous() for n, p in config.generator.family.denoiser(pipe).named_parameters() if p.requires_grad}
save_file(weights, str(out / f"rank{state.process_index}.safetensors"))
if state.is_main_process:
    (out / "world.json").write_text(json.dumps({"num_processes": state.num_processes}))
