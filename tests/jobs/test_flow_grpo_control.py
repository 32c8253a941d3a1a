"""`advantage.shuffle_scores`: the no-signal control run (each group's scores permuted among its videos)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from cac_align.config import RecipeError, load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
from cac_align.rl.advantages import group_advantages, shuffle_within_groups
from cac_align.run.folder import MANIFEST
from conftest import REPO_ROOT

BRIGHT_RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"


def test_shuffle_keeps_each_groups_valid_scores_and_leaves_invalid_ones():
    nan = float("nan")
    rewards = np.array([1.0, 2.0, nan, 4.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    groups = ["a", "a", "a", "a", "b", "b", "b", "b", "c"]
    out = shuffle_within_groups(rewards, groups, np.random.default_rng(3))
    assert np.isnan(out[2])  # an invalid sample stays invalid, in its place
    assert sorted(out[[0, 1, 3]]) == [1.0, 2.0, 4.0]  # group a's valid rewards, among its valid samples
    assert sorted(out[4:8]) == [10.0, 20.0, 30.0, 40.0]
    assert out[8] == 50.0  # a group of one has nothing to permute with
    assert not np.array_equal(out[4:8], rewards[4:8])  # this seed moves group b (4! = 24 orders)
    again = shuffle_within_groups(rewards, groups, np.random.default_rng(3))
    assert np.array_equal(out, again, equal_nan=True)  # seeded: every process draws the same
    # interleaved groups: values never cross from one group to another
    mixed = shuffle_within_groups([1.0, 100.0, 2.0, 200.0], [0, 1, 0, 1], np.random.default_rng(0))
    assert sorted(mixed[[0, 2]]) == [1.0, 2.0] and sorted(mixed[[1, 3]]) == [100.0, 200.0]
    # the group statistics are unchanged: each group's advantages are a permutation of the real ones
    real = group_advantages(rewards, groups).advantages
    shuffled = group_advantages(out, groups).advantages
    for key in "abc":
        idx = [i for i, g in enumerate(groups) if g == key]
        assert sorted(real[idx]) == pytest.approx(sorted(shuffled[idx]))
    with pytest.raises(ValueError, match="group keys"):
        shuffle_within_groups([1.0, 2.0], [0], np.random.default_rng(0))


def _config(tmp_path, *overrides, name):
    return load_config(FlowGrpoConfig, BRIGHT_RECIPE, [f"out_dir={tmp_path / name}", "steps=1", "checkpoint_every=1", *overrides],
                       job="flow-grpo")


def _lora(pipe):
    return {n: p.detach().clone() for n, p in pipe.transformer.named_parameters() if "lora" in n}


def test_a_control_run_trains_on_the_same_scores_shuffled(tmp_path, caplog):
    real_pipe, control_pipe = build_tiny_wan_pipeline(seed=0), build_tiny_wan_pipeline(seed=0)
    run(_config(tmp_path, name="real"), pipe=real_pipe)
    with caplog.at_level(logging.WARNING, logger="cac_align.jobs.flow_grpo"):
        run(_config(tmp_path, "advantage.shuffle_scores=true", name="control"), pipe=control_pipe)
    assert "no-signal control run" in caplog.text
    real, control = (json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[0]) for n in ("real", "control"))
    # the first step samples from the same initial policy: the same videos, the same scores ...
    assert control["reward/mean"] == real["reward/mean"] and control["reward/std"] == real["reward/std"]
    assert math.isfinite(control["train/policy_loss"])
    # ... but the advantages went to other videos, so the update differs
    a, b = _lora(real_pipe), _lora(control_pipe)
    assert set(a) == set(b)
    assert any(not torch.equal(a[n], b[n]) for n in a if "lora_B" in n)


def test_the_control_is_part_of_the_run_folders_fingerprint(tmp_path):
    run(_config(tmp_path, name="plain"))
    # at its default the key is left out, as before it existed: older scalar run folders still resume
    assert "advantage" not in json.loads((tmp_path / "plain" / MANIFEST).read_text())["fingerprint"]
    run(_config(tmp_path, "advantage.shuffle_scores=true", name="control"))
    assert json.loads((tmp_path / "control" / MANIFEST).read_text())["fingerprint"]["advantage"] == {"shuffle_scores": True}
    # a control run cannot be continued as a real one, nor the other way round
    with pytest.raises(RecipeError, match="differs in: advantage"):
        run(_config(tmp_path, "steps=2", "resume=true", name="control"))
    with pytest.raises(RecipeError, match="differs in: advantage"):
        run(_config(tmp_path, "steps=2", "resume=true", "advantage.shuffle_scores=true", name="plain"))
