"""Recipes: every YAML under recipes/ validates; typos, wrong types and missing values are named."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import MISSING

from cac_align.config import RecipeError, load_config
from cac_align.jobs import JOBS, load_recipe
from conftest import REPO_ROOT

# recipes/accelerate/ holds accelerate launch configs, not cac-align recipes (tested in test_cac_sft).
RECIPES = sorted(p for p in (REPO_ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.relative_to(REPO_ROOT / "recipes").parts[:-1])


def test_there_are_recipes():
    assert RECIPES, "recipes/ holds no YAML"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_recipe_validates(recipe):
    spec, config = load_recipe(recipe)
    assert spec.name in JOBS
    assert isinstance(config, spec.config_class())
    # Convention: the first line is the command that runs the recipe.
    # `eval-bench` may be written as the CLI alias `eval bench`; a recipe planned for several processes
    # starts with its launcher (torchrun / accelerate launch ... -m cac_align.cli <job>).
    first = recipe.read_text().splitlines()[0]
    commands = {spec.name, spec.name.replace("eval-", "eval ", 1)}
    launched = re.match(r"# (torchrun|accelerate launch) .*-m cac_align\.cli (\S+) --config ", first)
    assert any(first.startswith(f"# cac-align {command} ") for command in commands) or (launched and launched.group(2) == spec.name), first


@dataclass
class _Optim:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class _Job:
    model: str = MISSING
    steps: int = 10
    optim: _Optim = field(default_factory=_Optim)

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_load_merges_defaults_recipe_and_overrides(tmp_path):
    recipe = _write(tmp_path, "model: tiny\noptim:\n  lr: 0.001\n")
    config = load_config(_Job, recipe, ["steps=3", "optim.betas=[0.5,0.6]"])
    assert config == _Job(model="tiny", steps=3, optim=_Optim(lr=0.001, betas=[0.5, 0.6]))
    assert isinstance(config.optim, _Optim)


def test_unknown_key_names_key_recipe_and_suggestion(tmp_path):
    recipe = _write(tmp_path, "model: tiny\nstpes: 3\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: unknown key 'stpes'; did you mean 'steps'\?"):
        load_config(_Job, recipe)


def test_unknown_nested_key(tmp_path):
    recipe = _write(tmp_path, "model: tiny\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: unknown key 'optim.learning_rate'.*known keys here: lr, betas"):
        load_config(_Job, recipe)


def test_wrong_type_names_key(tmp_path):
    recipe = _write(tmp_path, "model: tiny\nsteps: many\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: wrong type for key 'steps'"):
        load_config(_Job, recipe)


def test_missing_required_value_names_key(tmp_path):
    recipe = _write(tmp_path, "steps: 3\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: required key 'model' has no value"):
        load_config(_Job, recipe)


def test_override_typo_is_an_error(tmp_path):
    recipe = _write(tmp_path, "model: tiny\n")
    with pytest.raises(RecipeError, match=r"command-line override\): unknown key 'optim.lrr'"):
        load_config(_Job, recipe, ["optim.lrr=1"])
    with pytest.raises(RecipeError, match="must look like key=value"):
        load_config(_Job, recipe, ["steps"])


def test_post_init_check_is_reported_with_recipe(tmp_path):
    recipe = _write(tmp_path, "model: tiny\nsteps: 0\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: steps must be > 0, got 0"):
        load_config(_Job, recipe)


def test_a_check_after_the_merge_names_the_source_of_the_bad_value(tmp_path):
    # steps=0 fails __post_init__: the recipe's value, or the command line's over a good recipe
    # (the command line also gives the recipe's required value: the recipe is still to blame)
    with pytest.raises(RecipeError, match=r"^[^ ]*recipe.yaml: steps must be > 0, got 0$"):
        load_config(_Job, _write(tmp_path, "steps: 0\n"), ["model=tiny"])
    with pytest.raises(RecipeError, match=r"recipe.yaml \(command-line override\): steps must be > 0, got 0$"):
        load_config(_Job, _write(tmp_path, "model: tiny\n"), ["steps=0"])
    # no recipe: the values are the command line's, not some source called "defaults"
    with pytest.raises(RecipeError, match=r"^command line: steps must be > 0, got 0$"):
        load_config(_Job, None, ["model=tiny", "steps=0"])
    with pytest.raises(RecipeError, match=r"^command line: required key 'model' has no value"):
        load_config(_Job, None, [])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_config(_Job, _write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(RecipeError, match="recipe not found"):
        load_config(_Job, tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_config(_Job, _write(tmp_path, "- a\n- b\n"))


def test_load_recipe_requires_known_job(tmp_path):
    with pytest.raises(RecipeError, match="missing top-level key 'job'"):
        load_recipe(_write(tmp_path, "out_dir: x\n"))
    with pytest.raises(RecipeError, match="unknown job 'make-tini'; did you mean 'make-tiny'"):
        load_recipe(_write(tmp_path, "job: make-tini\n"))


def test_job_mismatch(tmp_path):
    recipe = _write(tmp_path, "job: other\nmodel: tiny\n")
    with pytest.raises(RecipeError, match="for job 'other', not 'train'"):
        load_config(_Job, recipe, job="train")


@pytest.mark.parametrize(
    "recipe, override, key",
    [
        ("recipes/align/bon_tiny.yaml", "generator.guidance_scale=nan", "generator.guidance_scale' is nan"),
        ("recipes/score/cac_tiny.yaml", "reward.options.scan_fps=inf", "options.scan_fps' is inf"),
        ("recipes/score/ur_cac_tiny.yaml", "reward.weights=[0.5,-inf]", "weights[1]' is -inf"),
        ("recipes/align/flow_grpo_tiny.yaml", "learning_rate=nan", "learning_rate' is nan"),
    ],
)
def test_every_number_in_a_recipe_must_be_finite(recipe, override, key):
    # one rule in the config layer for every key: NaN compares false with everything (a guidance
    # scale of NaN behaved like 1.0) and infinity is no setting
    from cac_align.jobs import load_recipe

    with pytest.raises(RecipeError, match=re.escape(key) + "; every number in a recipe must be finite"):
        load_recipe(REPO_ROOT / recipe, [override])


def test_a_reward_built_in_python_gets_the_same_rule():
    from cac_align.rewards import build_reward

    with pytest.raises(ValueError, match=r"reward: key 'options.clip_fps' is nan"):
        build_reward({"name": "cac", "options": {"clip_fps": float("nan")}})


def test_a_component_s_typo_names_its_own_keys_and_a_section_can_be_replaced_whole():
    """Issue #100, item 8: a typo inside a reward component lists the component's keys (weight, normalizer) with a
    "did you mean"; ``key:=value`` replaces a recipe's section whole, and ``key=value`` of another reward's section,
    which merges, says so."""
    from cac_align.jobs import load_recipe

    recipe = REPO_ROOT / "recipes/align/flow_grpo_tiny_ltx2_sound.yaml"
    with pytest.raises(RecipeError, match=r"components\[1\]: unknown key 'wieght'; did you mean 'weight'\? \(known keys here: name, weight, normalizer"):
        load_recipe(recipe, ["reward.components=[{name: brightness}, {name: loudness, wieght: 0.5}]"])
    _, config = load_recipe(recipe, ["reward:={name: brightness}"])
    assert config.reward == {"name": "brightness"}
    with pytest.raises(RecipeError, match=r"unknown key 'components'.*to replace the section whole, write 'reward:=\{name: brightness\}'"):
        load_recipe(recipe, ["reward={name: brightness}"])
    with pytest.raises(RecipeError, match=r"no key 'rewrd' to replace; did you mean 'reward'"):
        load_recipe(recipe, ["rewrd:={name: brightness}"])
