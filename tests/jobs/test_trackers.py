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
