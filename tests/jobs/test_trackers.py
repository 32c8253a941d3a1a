"""`log_with`: TensorBoard, Weights & Biases (offline: WANDB_MODE=offline writes its run folder, no
network, no account), both, or none; wandb is asked for by name only."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cac_align.cli import main
from cac_align.run.metrics import trackers_for
from conftest import REPO_ROOT

BRIGHT = REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"


@pytest.mark.slow  # ~4 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_flow_grpo_logs_to_tensorboard_and_wandb_offline_with_its_name_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "tiny_run"
    assert main(["flow-grpo", "--config", str(BRIGHT), "--out", str(out), "steps=1", "log_with=both", "checkpoint_every=0"]) == 0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    (run,) = (out / "wandb").glob("offline-run-*")
    # wandb 0.31 keeps an offline run in its own record file (what `wandb sync` uploads): the run's
    # name, project, every config key and every logged metric are in it
    (records,) = run.glob("run-*.wandb")
    data = records.read_bytes()
    for text in ("tiny_run", "flow_grpo", "group_size", "noise_level", "lora", "brightness", "reward/mean", "train/loss", "time/train_s"):
        assert text.encode() in data, text
    assert b"eval/reward_mean" not in data  # nothing that was not logged (no eval prompts here)


@pytest.mark.slow  # ~10 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_log_with_is_checked_and_wandb_is_not_imported_unless_asked():
    assert trackers_for("both") == ("tensorboard", "wandb") and trackers_for("none") == ()
    with pytest.raises(ValueError, match="log_with must be one of"):
        trackers_for("mlflow")
    # a tensorboard run never imports wandb
    code = ("import sys; from cac_align.jobs.flow_grpo import FlowGrpoConfig; from cac_align.config import load_config; "
            f"load_config(FlowGrpoConfig, {str(BRIGHT)!r}, ['out_dir=x'], job='flow-grpo'); print('wandb' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


@pytest.mark.slow  # ~15 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
@pytest.mark.parametrize("stage", [1, 3])
def test_train_cac_logs_to_wandb_offline(stage, cac_data, tmp_path, monkeypatch):
    """Stages 1-2 (transformers' Trainer) and stage 3 (accelerate) log to the trackers of
    train.log_with: here both, offline; two optimizer steps of the tiny recipes."""
    from cac_align.jobs import load_recipe
    from cac_align.jobs.train_cac import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = {1: "stage1_tiny", 3: "stage3_grpo_tiny"}[stage]
    out = tmp_path / f"stage{stage}_run"
    extra = ["model=tiny-random:qwen3_vl"] if stage == 3 else []
    _, config = load_recipe(REPO_ROOT / f"recipes/cac/{recipe}.yaml",
                            [f"annotations={cac_data}", f"out_dir={out}", "train.max_steps=2", "train.logging_steps=1", "train.log_with=both", *extra])
    run(config)
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    (records,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    data = records.read_bytes()
    logged = "train/loss" if stage == 1 else "reward/status"  # transformers prefixes its keys with train/
    for text in (f"stage{stage}_run", f"train_cac_stage{stage}", "learning_rate", logged):
        assert text.encode() in data, text
    with pytest.raises(Exception, match="train.log_with must be one of"):
        load_recipe(REPO_ROOT / f"recipes/cac/{recipe}.yaml", [f"annotations={cac_data}", "train.log_with=mlflow"])


def test_a_resumed_run_replaces_the_stopped_runs_later_steps_in_tensorboard(tmp_path):
    """A run killed after logging step 3 but before its checkpoint resumes from step 2 and logs step 3
    again: TensorBoard shows the new step 3 only (the writer's purge_step), as metrics.jsonl keeps each
    step once. Control: without resume_step, step 3 is there twice."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cac_align.run.metrics import end_trackers, start_trackers

    def logged(folder, resume_step):
        def round_(steps, scale, resume):
            acc = Accelerator(cpu=True, log_with=["tensorboard"],
                              project_config=ProjectConfiguration(project_dir=str(folder), logging_dir=str(folder / "tensorboard")))
            start_trackers(acc, "tensorboard", "run", "run", folder, {}, resume_step=resume)
            for step in steps:
                acc.log({"x": float(step * scale)}, step=step)
            end_trackers(acc)

        round_([1, 2, 3], 1, 0)  # killed after logging step 3, before its checkpoint
        round_([3], 10, resume_step)  # resumed from the checkpoint of step 2
        (events,) = {p.parent for p in (folder / "tensorboard").rglob("events.out.tfevents.*")}
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        return [(e.step, e.value) for e in accumulator.Scalars("x")]

    assert logged(tmp_path / "resumed", 2) == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert logged(tmp_path / "control", 0) == [(1, 1.0), (2, 2.0), (3, 3.0), (3, 30.0)]
