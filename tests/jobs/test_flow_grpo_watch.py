"""`cac-align flow-grpo` with held-out judges (eval_rewards) and the reward-hacking watch.

The hackable toy: the run trains on ``spot_brightness`` (1 - the brightness of the top-left
quarter, the localized-credit miniature's defect) and is watched by ``brightness`` (the mean pixel
value). The tiny policy fixes the spot by darkening the whole picture (its LoRA changes every
position alike: benchmarks/README.md, lora_locality.py), so the trained reward rises while the
held-out judge falls: the watch must warn, and with ``stop`` end the run. Watched by the same
measure on another quarter (an honest judge that agrees), it must stay quiet. The videos are the
latent preview (:func:`cac_align.gen.families.wan.latent_preview`): the tiny random VAE's decode does not
move with the latents. Seed 3 of the miniature's settings learns from its first step (seen: the
trained reward 0.5241, 0.5268 at steps 1-2; steps of ~0.0025, far above float noise)."""

from __future__ import annotations

import json
import logging

import pytest

from cac_align.config import load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline, latent_preview
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
from conftest import REPO_ROOT

RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml"  # spot_brightness on 64 x 64
OTHER_QUARTER = {"name": "spot_brightness", "box": [500, 500, 1000, 1000], "window_s": [0.0, 0.6]}
# benchmarks/rl/localized_credit.py's settings, the scalar estimator, an evaluation every step
MINIATURE = ["seed=3", "steps=3", "eval_every=1", "eval_videos=0", "eval_prompts=recipes/align/prompts_tiny.txt", "advantage.localize.enabled=false",
             "group_size=8", "prompts_per_step=2", "sample_batch_size=8", "train_batch_size=4", "updates_per_step=2", "lora.rank=8",
             "lora.alpha=16", "learning_rate=1e-2", "beta=0.0", "ema_decay=null", "log_with=none", "checkpoint_every=0",
             "watch.window=2", "watch.margin=0.0"]


def _train(tmp_path, name, judges, *overrides):
    config = load_config(FlowGrpoConfig, RECIPE, [f"out_dir={tmp_path / name}", *MINIATURE, *overrides], job="flow-grpo")
    config.eval_rewards = judges
    run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_the_watch_warns_when_the_trained_reward_rises_and_a_held_out_judge_falls_and_stop_ends_the_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cac_align.jobs.flow_grpo"):
        # checkpoint_every=5 of 3 steps: the only checkpoint is the one the stop writes
        rows = _train(tmp_path, "hacked", {"mean_pixel": {"name": "brightness"}}, "watch.stop=true", "checkpoint_every=5")
    trained = [r["eval/reward_mean"] for r in rows]
    judged = [r["eval/mean_pixel/mean"] for r in rows]
    assert all(r["eval/mean_pixel/valid_fraction"] == 1.0 for r in rows)
    # the picture darkened: the trained reward rose and the held-out judge fell
    assert trained[0] < trained[1] and judged[0] > judged[1]
    # step 0 (the model the run starts from) has nothing to compare; step 1's evaluation alarms against it
    # (a window of 2), and stop ends the run there (of 3 steps) with its checkpoint and LoRA
    assert [r["step"] for r in rows] == [0, 1] and [r["watch/alarms"] for r in rows] == [0, 1] and rows[1]["watch/fired"] == ["mean_pixel"]
    assert "possible reward hacking" in caplog.text and "'spot_brightness' rose" in caplog.text and "'mean_pixel' fell" in caplog.text
    assert [p.name for p in (tmp_path / "hacked/checkpoints").iterdir()] == ["step_000001"] and (tmp_path / "hacked/lora").is_dir()
    assert "stopped at step 1 by the reward-hacking watch (watch.stop); its checkpoint and LoRA are kept" in caplog.text
    # without step 0 (eval_at_start=false) the first evaluation has nothing to compare and the second alarms: as before step 0
    rows = _train(tmp_path, "late", {"mean_pixel": {"name": "brightness"}}, "watch.stop=true", "checkpoint_every=5", "eval_at_start=false")
    assert [r["step"] for r in rows] == [1, 2] and [r["watch/alarms"] for r in rows] == [0, 1]
    assert [p.name for p in (tmp_path / "late/checkpoints").iterdir()] == ["step_000002"]


def test_the_watch_stays_quiet_with_an_honest_judge(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="cac_align.jobs.flow_grpo"):
        rows = _train(tmp_path, "honest", {"other_quarter": OTHER_QUARTER}, "steps=2")
    assert [r["step"] for r in rows] == [0, 1, 2] and [r["watch/alarms"] for r in rows] == [0, 0, 0] and "reward hacking" not in caplog.text
    assert rows[-1]["eval/reward_mean"] > rows[0]["eval/reward_mean"]  # it did learn
    assert rows[-1]["eval/other_quarter/mean"] > rows[0]["eval/other_quarter/mean"]  # and the honest judge agrees


def test_held_out_judges_are_checked_with_the_recipe():
    with pytest.raises(Exception, match="eval_rewards.spot: unknown reward 'spot_brightnes'"):
        load_config(FlowGrpoConfig, RECIPE, ["out_dir=x", "eval_prompts=recipes/align/prompts_tiny.txt", "eval_rewards.spot.name=spot_brightnes"],
                    job="flow-grpo")
    with pytest.raises(Exception, match="set eval_prompts"):
        load_config(FlowGrpoConfig, RECIPE, ["out_dir=x", "eval_prompts=null", "eval_rewards.spot.name=spot_brightness"], job="flow-grpo")
