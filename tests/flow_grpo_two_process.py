"""Run by tests/jobs/test_flow_grpo.py under `accelerate launch` with two CPU processes.

Trains recipes/align/flow_grpo_tiny_brightness.yaml (one step, or the overrides after ``<out>``)
and writes each process's LoRA weights to ``<out>/rank<N>.safetensors`` so the test can compare them.
With ``CAC_ALIGN_TEST_LOCALIZED=<out2>`` set, the same processes then train one step of
recipes/align/flow_grpo_tiny_localized.yaml into ``<out2>`` and write each process's credit maps
(``<out2>/maps<N>.safetensors``; the process's share of the step's samples, in order) beside its
LoRA, so the test can compare maps, losses and weights with one process (imports paid once).
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from cac_align.config import load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline
from cac_align.rewards import columns
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

REPO_ROOT = Path(__file__).resolve().parents[1]


def train(recipe: str, out: Path, overrides: list) -> None:
    from accelerate import PartialState

    config = load_config(FlowGrpoConfig, REPO_ROOT / recipe, [f"out_dir={out}", "steps=1", "log_with=none", *overrides], job="flow-grpo")
    pipe = build_tiny_wan_pipeline(seed=0)
    run(config, pipe=pipe)
    state = PartialState()
    weights = {n: p.detach().cpu().contiguous() for n, p in pipe.transformer.named_parameters() if p.requires_grad}
    save_file(weights, str(out / f"rank{state.process_index}.safetensors"))
    if state.is_main_process:
        (out / "world.json").write_text(json.dumps({"num_processes": state.num_processes}))


localized = os.environ.get("CAC_ALIGN_TEST_LOCALIZED")
if localized:  # two runs in these processes: the first's end_training() must leave the process group up
    from accelerate.state import AcceleratorState, PartialState

    kept = (AcceleratorState.destroy_process_group, PartialState.destroy_process_group)
    AcceleratorState.destroy_process_group = PartialState.destroy_process_group = lambda self, group=None: None

train("recipes/align/flow_grpo_tiny_brightness.yaml", Path(sys.argv[1]), sys.argv[2:])

if localized:
    out = Path(os.environ["CAC_ALIGN_TEST_LOCALIZED"])
    seen = []
    original = columns.credit_maps

    def recording(*args, **kwargs):
        maps = original(*args, **kwargs)
        seen.append(torch.as_tensor(maps.maps))
        return maps

    columns.credit_maps = recording
    train("recipes/align/flow_grpo_tiny_localized.yaml", out, [])
    save_file({"maps": torch.cat(seen)}, str(out / f"maps{PartialState().process_index}.safetensors"))
    AcceleratorState.destroy_process_group, PartialState.destroy_process_group = kept
    PartialState().destroy_process_group()
