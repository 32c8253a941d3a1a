"""Run by the two-process tests of flow-grpo (tests/jobs/test_wan22_jobs.py, tests/jobs/test_ltx2_jobs.py)
under `accelerate launch` with two CPU processes: one step of a tiny flow-grpo recipe (argv: recipe,
out, overrides...) on the tiny pipeline it names, each process's trained LoRA (the family's
denoiser's trainable weights, by their names) written to ``<out>/rank<N>.safetensors`` for the test
to compare with one process."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from cac_align.config import load_config
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

recipe, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
config = load_config(FlowGrpoConfig, recipe, [f"out_dir={out}", "steps=1", "log_with=none", "eval_every=0", "eval_at_start=false", "checkpoint_every=0", *overrides],
                     job="flow-grpo")
family = config.generator.family
pipe = family.build_tiny(config.generator.name, seed=0)
run(config, pipe=pipe)

from accelerate import PartialState  # noqa: E402

state = PartialState()
weights = {n: p.detach().cpu().contiguous() for n, p in family.denoiser(pipe).named_parameters() if p.requires_grad}
save_file(weights, str(out / f"rank{state.process_index}.safetensors"))
if state.is_main_process:
    (out / "world.json").write_text(json.dumps({"num_processes": state.num_processes}))
