"""Every reward with an offline recipe, combined ur_cac-style, in `score`, `bon`, our Flow-GRPO
trainer and the Flow-GRPO drop-in.

The components are read from ``recipes/score/*_tiny.yaml`` (every single reward there; the
composites ``ur_cac`` and ``combined`` are left out), so a reward added with its own tiny recipe
is covered here without editing this file. Each component is normalized per prompt group
(``group``), which suits every scale (VideoReward's is unbounded).

A tiny random model writes no well-formed answer, so the rewards that parse one (a pairwise
verdict, a tagged answer) are invalid on it, for a stated reason; their own tests make the same
tiny model write an answer and check the scores. Here every job must carry such failures
through (the combined sample is invalid, never a made-up number), and the rewards that need no
format (a regression head, probabilities) must combine into valid scores, which the trainer
learns from.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from cac_align.config import load_config
from cac_align.rewards import RewardError
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
FORMAT_FREE = {"cac", "unified_reward", "video_reward"}  # valid on a random model: no answer to parse


@pytest.fixture(scope="module")
def combined():
    return build_reward(COMBINED)


@pytest.fixture(scope="module")
def format_free():
    return build_reward({**COMBINED, "components": [c for c in COMBINED["components"] if c["name"] in FORMAT_FREE]})


def test_the_public_rewards_are_among_the_components(combined):
    assert FORMAT_FREE | {"unified_reward_think", "unified_reward_flex"} <= set(NAMES)
    assert len(set(NAMES)) == len(NAMES)
    # which components a random tiny model leaves invalid, and why: only answer-format failures
    videos = torch.rand(4, 9, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = combined(videos, ["a cat", "a cat", "a dog", "a dog"])
    for name in NAMES:
        parts = [d["components"][name] for d in out.details]
        if name in FORMAT_FREE:
            assert all(p["valid"] for p in parts), name
        elif not all(p["valid"] for p in parts):
            assert {p["details"].get("error_kind") for p in parts if not p["valid"]} <= {"parse", "score"}, name


def _recipe(tmp_path, source, **values):
    data = yaml.safe_load((REPO_ROOT / source).read_text())
    data.update(values, reward=COMBINED)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check_parts(parts, score, valid):
    """A sample is valid exactly when every component is; then its score is the mean of the
    components' group-normalized scores, else None (never a number made up)."""
    assert set(parts) == set(NAMES)
    assert all(parts[name]["valid"] for name in FORMAT_FREE)
    assert valid == all(p["valid"] for p in parts.values())
    if valid:
        assert score == pytest.approx(np.mean([p["normalized"] for p in parts.values()]), abs=1e-9)
    else:
        assert score is None or not np.isfinite(score)


def test_score_job(tmp_path, combined):
    from cac_align.jobs.score import ScoreConfig, run

    config = load_config(ScoreConfig, _recipe(tmp_path, "recipes/score/ur_cac_tiny.yaml", synth_videos=3, batch_size=3), [f"out_dir={tmp_path / 'score'}"], job="score")
    rows = run(config, reward=combined)
    assert len(rows) == 3
    for row in rows:
        _check_parts(row["details"]["components"], row["score"], row["valid"])
    assert (tmp_path / "score/report.html").is_file()


def test_best_of_n(tmp_path, combined):
    from cac_align.jobs.best_of_n import BonConfig, run

    config = load_config(BonConfig, _recipe(tmp_path, "recipes/align/bon_tiny.yaml", n=2), [f"out_dir={tmp_path / 'bon'}"], job="bon")
    run(config, reward=combined)
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(config_prompts(config))
    for row in rows:
        _check_parts(row["components"], row["score"], row["valid"])
    for prompt in {r["prompt_index"] for r in rows}:
        group = [r for r in rows if r["prompt_index"] == prompt]
        chosen = [r for r in group if r["chosen"]]
        scored = [r["score"] for r in group if r["valid"]]
        if scored:  # an invalid candidate never wins
            assert len(chosen) == 1 and chosen[0]["valid"] and chosen[0]["score"] == max(scored)


def config_prompts(config):
    from cac_align.run.input_files import read_prompts

    return read_prompts(config.prompts)


@pytest.mark.parametrize("which", ["all", "format_free"])
def test_flow_grpo_trainer(tmp_path, which, combined, format_free):
    from cac_align.gen.families.wan import build_tiny_wan_pipeline
    from cac_align.jobs.flow_grpo import FlowGrpoConfig, run

    reward = combined if which == "all" else format_free
    recipe = _recipe(tmp_path, "recipes/align/flow_grpo_tiny.yaml", steps=1, eval_every=0, eval_at_start=False, checkpoint_every=0,
                     prompts_per_step=1)
    config = load_config(FlowGrpoConfig, recipe, [f"out_dir={tmp_path / 'grpo'}"], job="flow-grpo")
    pipe = build_tiny_wan_pipeline(seed=0)
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    if which == "all":
        # the pairwise judges read no verdict from a random model: no sample has a reward, and the
        # trainer stops naming the reasons instead of training on made-up numbers
        with pytest.raises(RewardError, match=r"no valid reward for any sample \(\w+: "):
            run(config, reward=reward, pipe=pipe)
        return
    run(config, reward=reward, pipe=pipe)
    row = json.loads((tmp_path / "grpo/metrics.jsonl").read_text().splitlines()[0])
    for name in FORMAT_FREE:
        assert math.isfinite(row[f"reward/{name}_raw_mean"]), name
    lora_b = [p for n, p in pipe.transformer.named_parameters() if "lora_B" in n]
    assert row["reward/valid_fraction"] == 1.0 and math.isfinite(row["train/policy_loss"])
    assert any(not torch.equal(p.detach(), torch.zeros_like(p)) for p in lora_b)  # the update moved the adapter
    assert all(torch.equal(p.detach(), before[n]) for n, p in pipe.transformer.named_parameters() if n in before and "lora" not in n)


@pytest.mark.parametrize("components", ["all", "format_free"])
def test_flow_grpo_drop_in(components):
    from cac_align.integrations import flow_grpo

    section = COMBINED if components == "all" else {**COMBINED, "components": [c for c in COMBINED["components"] if c["name"] in FORMAT_FREE]}
    flow_grpo.configure({"combined": section})  # Flow-GRPO has fixed names: the combined slot
    try:
        fn = flow_grpo.multi_score(torch.device("cpu"), {"combined": 1.0})
        videos = torch.rand(4, 9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        # the trainer's rows carry the frame rate (the adapter never guesses one: integrations/adapter.py)
        rewards, info = fn(videos, ["a cat", "a cat", "a dog", "a dog"], [{"fps": 16} for _ in range(4)], only_strict=True)
    finally:
        flow_grpo.configure()
        flow_grpo.release_models()
    scores, valid = rewards["combined"], np.array(info["combined"]["valid"])
    assert scores.shape == (4,) and np.isfinite(scores[valid]).all() and np.isnan(scores[~valid]).all()  # drop: NaN, advantage 0
    if components == "format_free":
        assert valid.all()
        # group z-scores of each component average to 0 within each prompt's pair
        assert scores[:2].sum() == pytest.approx(0.0, abs=1e-6) and scores[2:].sum() == pytest.approx(0.0, abs=1e-6)
    else:
        assert info["combined"]["invalid_indices"] == np.flatnonzero(~valid).tolist()
