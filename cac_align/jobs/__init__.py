"""The CLI's jobs: one module per ``cac-align`` subcommand, each of one shape.

A job module holds its config dataclass (or imports it from the library that its functions
take, e.g. :class:`cac_align.data.synthetic.SynthConfig`) beside ``run(config)``, which reads top
to bottom in numbered steps; the two trainers keep a setup / train / step / finish split inside
a ``_Trainer`` class. Nothing below ``jobs/`` imports a job (``tests/test_import_graph.py``).

:data:`JOBS` is the CLI's table, built from :data:`_TABLE` (module, name, config class, help):
the config class and ``run`` are given as ``"module:attribute"`` strings so that
``cac-align --help`` imports nothing heavy. :func:`load_recipe` reads a recipe's ``job:`` key
and loads it with that job's config.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cac_align.config import RecipeError, load_config, read_recipe_file, resolve

__all__ = ["JOBS", "JobSpec", "load_recipe"]


@dataclass(frozen=True)
class JobSpec:
    """A CLI job: its config dataclass and its ``run(config)`` entry point."""

    name: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function" taking the config instance
    help: str
    resume: str | None = None  # how an interrupted run continues (None: it starts over)
    # "module:function" giving the memory plan's inputs from a config (plan/check.py's plan_generator):
    # the generator trainers', whose plan `cac-align check-recipe` prints; None for every other job
    memory_inputs: str | None = None
    # every other job's plan (cac_align.plan.job.JobPlan), what `cac-align check-recipe` prints: "module:function"
    # taking (config, processes, recipe path); score's judges are planned by cac_align.plan.check.plan_judges
    plan: str | None = None

    @property
    def module(self) -> str:
        return self.run.partition(":")[0]

    def config_class(self) -> type:
        return resolve(self.config)

    def runner(self) -> Callable[[Any], Any]:
        return resolve(self.run)


_RESUME_KEPT = "rerun the same command to resume: finished {} are kept"
_RESUME_CHECKPOINT = "rerun the same command with resume=true to continue from its last saved checkpoint"

# (module in cac_align.jobs, CLI name, config class as "module:Class" or a class name in the
#  job module, help, how an interrupted run resumes)
_TABLE: list[tuple[str, str, str, str, str | None]] = [
    ("make_tiny", "make-tiny", "MakeTinyConfig", "build tiny random Qwen3-VL / Qwen2.5-VL judges and Wan-2.1 / Wan2.2 / LTX-2 generators offline and save them (convert_videos: the videos the tiny convert rows name)", None),
    ("convert", "convert", "ConvertConfig", "convert public labelled sets (ViF-CoT-4K, VideoPhy-2) or your own labels into annotations.jsonl, with a report", None),
    ("synth", "synth", "SynthConfig", "render synthetic videos with planted, exactly labelled anomalies + annotations.jsonl", _RESUME_KEPT.format("videos")),
    ("serve", "serve", "ServeConfig", "start a vLLM server for a judge (CaC, UnifiedReward) that sees videos as in-process: our plugin, the right flags", None),
    ("score", "score", "ScoreConfig", "score videos with a reward (cac, unified_reward, ur_cac, ...): results.jsonl + HTML report", None),
    ("flow_grpo", "flow-grpo", "FlowGrpoConfig", "Flow-GRPO: train a LoRA of a video generator (the families: cac-align --help) on any reward, its sound too (audio=trained, each component routed to what it judges); SDE sampling, PPO-clip, KL to the base", _RESUME_CHECKPOINT),
    ("nft", "nft", "NftConfig", "DiffusionNFT: train a LoRA of a video generator (the families: cac-align --help) on any reward, its sound too (audio=trained); ODE sampling, forward-process loss, no log-probs", _RESUME_CHECKPOINT),
    ("synth_cot", "synth-cot", "SynthCotConfig", "write reasoning (CoT) into annotations: generate-verify with a teacher VLM, or a template offline", _RESUME_KEPT.format("videos")),
    ("train_cac", "train-cac", "TrainCaCConfig", "train the CaC model: stage=1 single-frame LoRA warmup, stage=2 multi-frame full fine-tuning, stage=3 two-turn GRPO", _RESUME_CHECKPOINT),
    ("eval_bench", "eval-bench", "BenchConfig", "anomaly-detection metrics of one or more systems against annotations (also: `cac-align eval bench`)", None),
    ("eval_expert", "eval-expert", "ExpertConfig", "expert anomaly rate: export a blinded HTML labelling sheet, or analyze the labels (also: `cac-align eval expert`)", None),
    ("eval_vbench", "eval-vbench", "VBenchConfig", "VBench dynamic degree, subject consistency and imaging quality per system, by vbench's own code (also: `cac-align eval vbench`)", "rerun the same command to resume: scored videos are kept"),
    ("report", "report", "ReportConfig", "Table 2: VBench dimensions and expert anomaly rate per system, best in bold, deltas vs the base; markdown, HTML, charts", None),
    ("export", "export", "ExportConfig", "write a trained judge as a compact model folder: half-precision safetensors, processor, inference settings, model card", None),
    ("best_of_n", "bon", "BonConfig", "Best-of-N video generation on every family (cac-align --help; LTX-2, MiniMax-H3 and Kandinsky 6 with their sound): N candidates per prompt, keep the one the reward scores highest", _RESUME_KEPT.format("candidates")),
    ("repair", "repair", "RepairConfig", "repair: regenerate only the window and boxes the judge points at (Wan-VACE; LTX-2: the window's whole frames), judge again, keep the better", _RESUME_KEPT.format("videos")),
    ("dpo", "dpo", "DpoConfig", "Diffusion-DPO of a LoRA of a video generator (the families: cac-align --help) on repair pairs (LocalDPO's masked loss) and Best-of-N pairs", _RESUME_CHECKPOINT),
]

# the jobs that train a generator on GPUs: each plans its memory before it loads (cac_align.plan)
_MEMORY_PLANNED = ("flow_grpo", "nft", "dpo")

# the plans of the jobs that train no generator (cac_align.plan.job), by CLI name
_PLANS = {
    "bon": "cac_align.plan.sampling:bon_recipe_plan",
    "repair": "cac_align.plan.sampling:repair_recipe_plan",
    "train-cac": "cac_align.plan.stages:train_cac_recipe_plan",
    "serve": "cac_align.plan.services:serve_plan",
    "synth-cot": "cac_align.plan.services:synth_cot_plan",
    "eval-vbench": "cac_align.plan.services:vbench_plan",
    "eval-expert": "cac_align.plan.services:expert_plan",
    **{name: "cac_align.plan.services:cpu_job_plan" for name in ("convert", "synth", "make-tiny", "eval-bench", "report", "export")},
}

JOBS: dict[str, JobSpec] = {
    name: JobSpec(name=name, config=f"{__name__}.{module}:{config}", run=f"{__name__}.{module}:run", help=help, resume=resume,
                  memory_inputs=f"{__name__}.{module}:memory_inputs" if module in _MEMORY_PLANNED else None, plan=_PLANS.get(name))
    for module, name, config, help, resume in _TABLE
}


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> tuple[JobSpec, Any]:
    """Read a recipe's ``job:`` key, then load and validate it with that job's config.

    This loads no weights: it is what ``cac-align check-recipe`` and the recipe tests run.
    """
    path = Path(recipe)
    data = read_recipe_file(path)
    name = data.get("job")
    if name is None:
        raise RecipeError(f"{path}: missing top-level key 'job' (one of: {', '.join(sorted(JOBS))})")
    if name not in JOBS:
        hint = difflib.get_close_matches(str(name), list(JOBS), n=1)
        extra = f"; did you mean '{hint[0]}'?" if hint else ""
        raise RecipeError(f"{path}: unknown job '{name}'{extra} (known jobs: {', '.join(sorted(JOBS))})")
    spec = JOBS[name]
    return spec, load_config(spec.config_class(), path, overrides, job=name)
