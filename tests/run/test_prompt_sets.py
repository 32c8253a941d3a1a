"""`prompts: vbench[:<dimension>][:heldout|all]`: VBench's suite from the installed wheel, split by a
seeded hash into training and held-out prompts, read wherever a job reads a prompts file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cac_align.config import RecipeError
from cac_align.run.input_files import read_prompt_rows, read_prompts
from cac_align.run.prompt_sets import HELDOUT_FRACTION, is_heldout, is_prompt_set, vbench_info, vbench_prompts


def _suite() -> list[dict]:
    """The wheel's file, read here on its own (the code under test merges and splits it)."""
    folder = Path(next(iter(importlib.util.find_spec("vbench").submodule_search_locations)))
    return json.loads((folder / "VBench_full_info.json").read_text())


def test_the_split_is_by_prompt_disjoint_and_covers_the_suite():
    entries = _suite()
    assert len(entries) == 946  # vbench 0.1.5's suite (requirements-vbench.txt)
    distinct = list(dict.fromkeys(e["prompt_en"] for e in entries))
    assert len(distinct) == 944  # two prompts are listed twice, under other dimensions
    train, heldout, everything = vbench_prompts("vbench"), vbench_prompts("vbench:heldout"), vbench_prompts("vbench:all")
    assert everything == distinct  # the file's order, each prompt once
    assert not set(train) & set(heldout) and sorted(train + heldout) == sorted(distinct)
    assert train == [p for p in distinct if p not in set(heldout)]  # the order kept
    # ~10% held out (944 x 0.1 = 94.4 expected; the hash gives 97)
    assert len(heldout) == 97 and abs(len(heldout) / 944 - HELDOUT_FRACTION) < 0.01
    # the hash, by hand: sha256("0:a laptop, frozen in time") starts 05585b0ffc1e4157, 0.0209 of
    # 2**64 (< 0.1: held out); "0:In a still frame, a stop sign" starts 435acfc65b741ba0, 0.263 (kept)
    assert is_heldout("a laptop, frozen in time") and "a laptop, frozen in time" in heldout
    assert not is_heldout("In a still frame, a stop sign") and "In a still frame, a stop sign" in train
    assert is_heldout("In a still frame, a stop sign", fraction=0.27) and not is_heldout("a laptop, frozen in time", seed=1, fraction=0.0)
    # a prompt listed twice carries both entries' dimensions
    assert vbench_info()["The bund Shanghai, oil painting"] == ["appearance_style", "overall_consistency", "aesthetic_quality", "imaging_quality"]


def test_a_dimension_splits_the_same_way():
    entries = _suite()
    for dimension in ("human_action", "color", "appearance_style"):
        members = list(dict.fromkeys(e["prompt_en"] for e in entries if dimension in e["dimension"]))
        train, heldout = vbench_prompts(f"vbench:{dimension}"), vbench_prompts(f"vbench:{dimension}:heldout")
        assert sorted(train + heldout) == sorted(members) == sorted(vbench_prompts(f"vbench:{dimension}:all"))
        assert set(heldout) <= set(vbench_prompts("vbench:heldout")) and set(train) <= set(vbench_prompts("vbench"))
    assert len(vbench_prompts("vbench:human_action")) + len(vbench_prompts("vbench:human_action:heldout")) == 100
    assert vbench_prompts("vbench:human_action:train") == vbench_prompts("vbench:human_action")


def test_bad_names_and_a_missing_vbench_are_one_line(monkeypatch, tmp_path):
    for name in ("vbench:humanaction", "vbench:", "vbench:scene:color", "vbench:heldout:scene"):
        with pytest.raises(RecipeError) as info:
            read_prompts(name)
        message = str(info.value)
        assert "\n" not in message and f"prompts={name!r}" in message
        assert "human_action, imaging_quality" in message and "train|heldout|all" in message
    assert is_prompt_set("vbench:x") and not is_prompt_set("vbench.txt") and not is_prompt_set("./vbench")
    (tmp_path / "vbench").write_text("a cat\n")  # a file of that name: ./vbench
    monkeypatch.chdir(tmp_path)
    assert read_prompts("./vbench") == ["a cat"]
    monkeypatch.setitem(sys.modules, "vbench", None)  # the import blocked, as for a venv without it
    with pytest.raises(RecipeError, match=r"not installed: pip install --no-deps -r requirements-vbench.txt") as info:
        read_prompt_rows("vbench:heldout")
    assert "\n" not in str(info.value)


@pytest.mark.slow  # a tiny bon run (~5 s): `pytest -m slow`, which .ci/run runs
def test_bon_generates_a_dimensions_heldout_prompts(tmp_path):
    from cac_align.gen.generator import GeneratorConfig, PipelineGenerator
    from cac_align.gen.families.wan import build_tiny_wan_pipeline
    from cac_align.jobs.best_of_n import BonConfig, run
    from cac_align.rewards import RewardOutput
    from cac_align.rewards.base import RewardBase

    class Half(RewardBase):
        name = "half"

        def __call__(self, videos, prompts, metadata=None):
            return RewardOutput(self.name, np.full(len(prompts), 0.5), np.ones(len(prompts), bool), [{} for _ in prompts])

    generator = GeneratorConfig(name="tiny-random:wan", dtype="float32", device="cpu", height=32, width=32, num_frames=5, num_inference_steps=2)
    config = BonConfig(out_dir=str(tmp_path / "bon"), prompts="vbench:color:heldout", n=1, batch_size=4, generator=generator, reward={"name": "cac"})
    run(config, reward=Half(), generator=PipelineGenerator(build_tiny_wan_pipeline(seed=0)))
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == vbench_prompts("vbench:color:heldout") and len(rows) == 4
