"""Every reward with an offline recipe, combined ur_cac-style, in `score`, `bon`, our Flow-GRPO
trainer and the Flow-GRPO drop-in.

The components are read from ``recipes/score/*_tiny.yaml`` (every single reward there; the
composites ``ur_cac`` and ``combined`` are left out), so a reward added with its own tiny recipe
is covered here without editing this file. Each component is normalized per prompt group
(``group``), which suits every scale (VideoReward's is unbounded).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from cac_align.config import load_config
from cac_align.rewards.registry import build_reward
from conftest import REPO_ROOT

COMPOSITES = {"combined", "ur_cac"}


def _components() -> list[dict]:
    sections = []
    for path in sorted((REPO_ROOT / "recipes/score").glob("*_tiny.yaml")):
        section = yaml.safe_load(path.read_text())["reward"]
        if section["name"] not in COMPOSITES:
            if section["name"] == "cac":  # a random model writes no JSON: read its status probabilities instead
                section["options"] = {"mode": "no_cot"}
            sections.append({**section, "normalizer": {"name": "group"}})
    return sections


COMBINED = {"name": "combined", "components": _components(), "invalid": "drop"}
NAMES = [c["name"] for c in COMBINED["components"]]


@pytest.fixture(scope="module")
def combined():
    return build_reward(COMBINED)


def test_the_public_rewards_are_among_the_components():
    assert {"cac", "unified_reward", "video_reward"} <= set(NAMES)
    assert len(set(NAMES)) == len(NAMES)


def _recipe(tmp_path, source, **values):
    data = yaml.safe_load((REPO_ROOT / source).read_text())
    data.update(values, reward=COMBINED)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check_parts(parts, score):
    """The combined score is the mean of the components' group-normalized scores."""
    assert set(parts) == set(NAMES)
    assert all(p["valid"] for p in parts.values())
    assert score == pytest.approx(np.mean([p["normalized"] for p in parts.values()]), abs=1e-9)


def test_score_job(tmp_path, combined):
    from cac_align.jobs.score import ScoreConfig, run

    config = load_config(ScoreConfig, _recipe(tmp_path, "recipes/score/ur_cac_tiny.yaml", synth_videos=3, batch_size=3), [f"out_dir={tmp_path / 'score'}"], job="score")
    rows = run(config, reward=combined)
    assert len(rows) == 3 and all(r["valid"] for r in rows)
    for row in rows:
        _check_parts(row["details"]["components"], row["score"])
    assert (tmp_path / "score/report.html").is_file()


def test_best_of_n(tmp_path, combined):
    from cac_align.jobs.best_of_n import BonConfig, run

    config = load_config(BonConfig, _recipe(tmp_path, "recipes/align/bon_tiny.yaml", n=2), [f"out_dir={tmp_path / 'bon'}"], job="bon")
    run(config, reward=combined)
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(config_prompts(config))
    for row in rows:
        _check_parts(row["components"], row["score"])
    for prompt in {r["prompt_index"] for r in rows}:
        group = [r for r in rows if r["prompt_index"] == prompt]
        chosen = [r for r in group if r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["score"] == max(r["score"] for r in group)


def config_prompts(config):
    from cac_align.run.input_files import read_prompts

    return read_prompts(config.prompts)


def test_flow_grpo_trainer(tmp_path, combined):
    from cac_align.gen.wan import build_tiny_wan_pipeline
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

    recipe = _recipe(tmp_path, "recipes/align/flow_grpo_tiny.yaml", steps=1, eval_every=0, checkpoint_every=0, prompts_per_step=1)
    config = load_config(FlowGrpoConfig, recipe, [f"out_dir={tmp_path / 'grpo'}"], job="flow-grpo")
    pipe = build_tiny_wan_pipeline(seed=0)
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    run(config, reward=combined, pipe=pipe)
    row = json.loads((tmp_path / "grpo/metrics.jsonl").read_text().splitlines()[0])
    assert row["reward/valid_fraction"] == 1.0 and math.isfinite(row["train/policy_loss"])
    for name in NAMES:
        assert math.isfinite(row[f"reward/{name}_raw_mean"]), name
    lora = {n: p for n, p in pipe.transformer.named_parameters() if "lora" in n and "lora_B" in n}
    assert any(not torch.equal(p.detach(), torch.zeros_like(p)) for p in lora.values())  # the update moved the adapter
    assert all(torch.equal(p.detach(), before[n]) for n, p in pipe.transformer.named_parameters() if n in before and "lora" not in n)


def test_flow_grpo_drop_in():
    from cac_align.integrations import flow_grpo

    flow_grpo.configure({"combined": COMBINED})  # Flow-GRPO has fixed names: the combined slot
    try:
        fn = flow_grpo.multi_score(torch.device("cpu"), {"combined": 1.0})
        videos = torch.rand(4, 9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        rewards, info = fn(videos, ["a cat", "a cat", "a dog", "a dog"], [{} for _ in range(4)], only_strict=True)
    finally:
        flow_grpo.configure()
        flow_grpo.release_models()
    assert rewards["combined"].shape == (4,) and np.isfinite(rewards["combined"]).all()
    assert info["combined"]["valid"] == [True] * 4
    # group z-scores of each component average to 0 within each prompt's pair
    assert rewards["combined"][:2].sum() == pytest.approx(0.0, abs=1e-6) and rewards["combined"][2:].sum() == pytest.approx(0.0, abs=1e-6)
