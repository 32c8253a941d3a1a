"""Settings added to a job's config after run folders of it existed (run/folder.py LATER_DEFAULTS):
at their defaults they are not in the fingerprint, so a folder written before them resumes; set,
they are, so a changed run is still told apart."""

from __future__ import annotations

import re

import pytest

from cac_align.config import RecipeError, load_config
from cac_align.jobs.dpo import DpoConfig
from cac_align.jobs.flow_grpo import FlowGrpoConfig
from cac_align.jobs.repair import RepairConfig
from cac_align.run.folder import EARLIER_DEFAULTS, LATER_DEFAULTS, RunFolder, config_fingerprint
from conftest import REPO_ROOT

A14B = "generator.name=tiny-random:wan22-a14b"
CASES = [  # (job, its config class, a recipe of before the key, the key added later, overrides that set it)
    ("flow-grpo", FlowGrpoConfig, "flow_grpo_tiny.yaml", "generator.guidance_scale_2", [A14B, "generator.guidance_scale_2=2.0"]),
    ("flow-grpo", FlowGrpoConfig, "flow_grpo_tiny.yaml", "lora.experts", [A14B, "lora.experts=both"]),
    ("dpo", DpoConfig, "dpo_tiny.yaml", "lora.experts", [A14B, "lora.experts=low"]),
    ("repair", RepairConfig, "repair_tiny_wan.yaml", "regenerator.guidance_scale_2",
     ["regenerator.name=tiny-random:wan22-vace-a14b", "regenerator.guidance_scale_2=3.0"]),
    ("flow-grpo", FlowGrpoConfig, "flow_grpo_tiny.yaml", "generator.stg_scale", ["generator.name=tiny-random:ltx2", "generator.height=64",
                                                                                 "generator.width=64", "generator.stg_scale=0.5"]),
    ("flow-grpo", FlowGrpoConfig, "flow_grpo_tiny.yaml", "generator.decode", ["generator.decode=latent_preview"]),  # #117
]


def _section(data: dict, dotted: str) -> tuple[dict, str]:
    *parents, leaf = dotted.split(".")
    for parent in parents:
        data = data[parent]
    return data, leaf


@pytest.mark.parametrize("job, cls, recipe, key, setting", CASES)
def test_a_folder_from_before_a_later_setting_resumes_and_a_set_one_differs(job, cls, recipe, key, setting, tmp_path):
    assert key in LATER_DEFAULTS
    out = [f"out_dir={tmp_path / 'run'}"]
    config = load_config(cls, REPO_ROOT / "recipes/align" / recipe, out, job=job)
    now = config_fingerprint(config)
    section, leaf = _section(now, key)
    assert leaf not in section  # at its default: left out, as a folder written before it recorded it
    # a folder of before: its manifest recorded the same config without the key; it resumes
    RunFolder(str(tmp_path / "run"), job, (), now, {}).start()
    assert RunFolder(str(tmp_path / "run"), job, (), config_fingerprint(config), {}).resuming
    # set, it is in the fingerprint, and that folder is another run
    changed = config_fingerprint(load_config(cls, REPO_ROOT / "recipes/align" / recipe, [*out, *setting], job=job))
    section, leaf = _section(changed, key)
    assert str(section[leaf]) == setting[-1].split("=", 1)[1]
    with pytest.raises(RecipeError, match=rf"differs in: [^)]*\b{re.escape(key)}\b"):
        RunFolder(str(tmp_path / "run"), job, (), changed, {})


def test_a_synth_cot_folder_from_before_auto_cache_resumes(tmp_path):
    """model.cache's default became "auto" (#71): a synth-cot run whose teacher recorded the old
    default ("dynamic") resumes at the new one; another mode set on purpose is another run."""
    from cac_align.jobs.synth_cot import SynthCotConfig

    assert EARLIER_DEFAULTS["teacher.cache"] == ("auto", "dynamic")
    out = [f"out_dir={tmp_path / 'cot'}", "teacher.name=tiny-random:qwen3_vl"]
    recipe = REPO_ROOT / "recipes/cac/synth_cot_tiny.yaml"
    config = load_config(SynthCotConfig, recipe, out, job="synth-cot")
    assert config.teacher.cache == "auto"
    before = config_fingerprint(config)
    assert before["teacher"]["cache"] == "dynamic"  # what a folder of before recorded
    RunFolder(str(tmp_path / "cot"), "synth-cot", (), before, {}).start()
    assert RunFolder(str(tmp_path / "cot"), "synth-cot", (), config_fingerprint(config), {}).resuming
    static = config_fingerprint(load_config(SynthCotConfig, recipe, [*out, "teacher.cache=static"], job="synth-cot"))
    with pytest.raises(RecipeError, match=r"differs in: [^)]*\bteacher\.cache\b"):
        RunFolder(str(tmp_path / "cot"), "synth-cot", (), static, {})
