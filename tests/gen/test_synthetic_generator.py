"""The synthetic stand-in generator (Best-of-N in miniature) and its ground-truth anomaly rates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.config import RecipeError
from cac_align.data.synthetic import NORMAL, SynthConfig, render
from cac_align.gen.synthetic import SyntheticGenerator, bon_anomaly_rates, load_synthetic_generator
from cac_align.gen.generator import GeneratorConfig, build_video_generator
from conftest import REPO_ROOT

PROMPT = "A ball rolls along the floor past a 'PARK' sign while a person walks by."


def _small(p: float = 0.5) -> SyntheticGenerator:
    return SyntheticGenerator(SynthConfig(out_dir="-", n=1, height=64, width=96, fps=8.0, duration_s=2.0, anomaly_duration_s=[0.25, 0.75]), p)


def test_candidates_are_deterministic_use_the_prompts_sign_and_plant_with_probability_p():
    gen = _small(0.3)
    a, b = gen.spec(PROMPT, 12), gen.spec(PROMPT, 12)
    assert a == b and a.sign_word == "PARK"
    assert gen.spec(PROMPT, 13) != a  # another seed, another scene
    planted = [gen.spec(PROMPT, seed).kind != NORMAL for seed in range(2000)]
    assert abs(np.mean(planted) - 0.3) < 0.035  # 2000 Bernoulli(0.3) draws: sd 0.010
    assert not any(_small(0.0).spec(PROMPT, s).kind != NORMAL for s in range(50))
    assert all(_small(1.0).spec(PROMPT, s).kind != NORMAL for s in range(50))
    # what the generator renders is the spec's render
    frames = gen([PROMPT, PROMPT], [12, 13])
    assert frames.shape == (2, 16, 64, 96, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], render(a)[0])
    with pytest.raises(ValueError, match="anomaly_probability"):
        _small(1.5)


def test_generator_config_builds_it_from_a_synth_recipe():
    config = GeneratorConfig(name=f"synthetic:{REPO_ROOT / 'recipes/synth/default.yaml'}", anomaly_probability=0.25)
    gen = build_video_generator(config)
    assert isinstance(gen, SyntheticGenerator) and gen.anomaly_probability == 0.25
    assert (gen.synth.height, gen.synth.width, gen.synth.duration_s) == (256, 384, 5.0)
    video = gen.generate(config, [PROMPT], [3]).frames
    assert not gen.on_gpu() and gen.execution_device() == "cpu"
    assert video.shape == (1, 80, 256, 384, 3)
    with pytest.raises(RecipeError, match="recipe not found"):
        load_synthetic_generator("synthetic:no/such.yaml", 0.5)


def test_bon_anomaly_rates_hand_worked(tmp_path):
    gen = _small(0.5)
    seeds = {}
    for seed in range(200):  # find seeds whose candidates are clean / planted
        seeds.setdefault(gen.spec(PROMPT, seed).kind != NORMAL, []).append(seed)
    bad, good = seeds[True], seeds[False]
    # prompt 0: candidates bad, good, bad, the reward chose the good one
    # prompt 1: candidates bad, bad, bad (no clean one to find), chose candidate 1
    groups = [[(bad[0], False), (good[0], True), (bad[1], False)], [(bad[2], False), (bad[3], True), (bad[4], False)]]
    rows = [{"prompt_index": i, "prompt": PROMPT, "candidate": c, "seed": s, "chosen": chosen, "chosen_by": "argmax" if chosen else None}
            for i, group in enumerate(groups) for c, (s, chosen) in enumerate(group)]
    (tmp_path / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rates = bon_anomaly_rates(tmp_path, gen)
    # chosen: good, bad -> 1/2; random: mean(2/3, 3/3) = 5/6; oracle: only prompt 1 is all bad -> 1/2
    assert rates["chosen"] == 0.5 and rates["random"] == pytest.approx(5 / 6) and rates["best_possible"] == 0.5
    assert (rates["prompts"], rates["candidates"], rates["fallback_prompts"]) == (2, 6, 0)


def test_bon_with_the_synthetic_generator_writes_its_anomaly_rates(tmp_path):
    """A Best-of-N run on synthetic candidates writes anomaly_rates.json: the rates that
    bon_anomaly_rates computes from its own candidates.jsonl (a Wan run writes none)."""
    from cac_align.jobs.best_of_n import BonConfig, run

    recipe = tmp_path / "synth.yaml"
    recipe.write_text("job: synth\nout_dir: unused\nn: 1\nheight: 64\nwidth: 96\nfps: 8.0\nduration_s: 2.0\nanomaly_duration_s: [0.25, 0.75]\n")
    (tmp_path / "prompts.txt").write_text(f"{PROMPT}\nA cat sits by a 'CAFE' sign.\n")
    generator = GeneratorConfig(name=f"synthetic:{recipe}", anomaly_probability=0.5)
    config = BonConfig(out_dir=str(tmp_path / "bon"), prompts=str(tmp_path / "prompts.txt"), n=3, seed=40, batch_size=3,
                       generator=generator, reward={"name": "brightness"})
    run(config)
    written = json.loads((tmp_path / "bon" / "anomaly_rates.json").read_text())
    expected = bon_anomaly_rates(tmp_path / "bon", load_synthetic_generator(generator.name, 0.5))
    assert written == expected and (written["prompts"], written["candidates"]) == (2, 6)
    # the chosen flags come from the run: the rate of the chosen videos is that of the rows marked chosen
    rows = [json.loads(line) for line in (tmp_path / "bon" / "candidates.jsonl").read_text().splitlines()]
    gen = load_synthetic_generator(generator.name, 0.5)
    chosen_bad = [gen.spec(r["prompt"], r["seed"]).kind != NORMAL for r in rows if r["chosen"]]
    assert written["chosen"] == pytest.approx(np.mean(chosen_bad))
