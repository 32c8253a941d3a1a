"""The best evaluated step (cac_align/run/best.py): the rule worked by hand on metrics rows."""

from __future__ import annotations

import json

from cac_align.run.best import best_step, read_best, write_best


def _row(step, reward, **judges):
    return {"step": step, "eval/reward_mean": reward, **{f"eval/{k}/mean": v for k, v in judges.items()}}


def test_the_highest_reward_among_the_steps_whose_judges_held():
    rows = [_row(0, 0.50, cac=0.61, ur=3.0),
            {"step": 1, "reward/mean": 0.4},  # a training step: not an evaluation
            _row(2, 0.55, cac=0.60, ur=3.1),  # cac 0.60 >= 0.61 - 0.02 = 0.59, ur 3.1 >= 2.98: held
            _row(4, 0.70, cac=0.58, ur=3.2),  # cac 0.58 < 0.59: fell
            _row(6, 0.62, cac=0.595, ur=2.99),  # both held: 0.595 >= 0.59, 2.99 >= 2.98
            _row(8, 0.62, cac=0.60, ur=3.0)]  # held, the same reward as step 6: the earlier stays
    best = best_step(rows, ["cac", "ur"], margin=0.02)
    # by hand: held = 2, 6, 8 with rewards 0.55, 0.62, 0.62 -> step 6 (the earliest of equals)
    assert best.step == 6 and best.reward == 0.62 and best.judges == {"cac": 0.595, "ur": 2.99}
    assert best.candidates == [2, 4, 6, 8] and best.held == [2, 6, 8] and best.baseline_step == 0
    assert best.line("flow-grpo") == "flow-grpo: best: step 6, reward +0.12 since step 0, judges held (lora_best/)"
    # rows in any order, the same choice
    assert best_step(list(reversed(rows)), ["cac", "ur"], margin=0.02).step == 6


def test_none_qualifies_when_every_step_fell_and_a_missing_mean_does_not_hold():
    rows = [_row(0, 0.5, cac=0.6), _row(1, 0.6, cac=0.5), _row(2, 0.7, cac=None)]  # fell; invalid (null) at step 2
    best = best_step(rows, ["cac"], margin=0.02)
    assert best.step is None and best.held == [] and best.candidates == [1, 2]
    assert "none of the 2 evaluated step(s) kept every held-out judge within watch.margin=0.02 of step 0" in best.line("nft")
    # an invalid trained reward is no candidate either, though the judge held
    assert best_step([_row(0, 0.5, cac=0.6), _row(1, None, cac=0.6)], ["cac"], 0.0).step is None


def test_without_step_0_the_first_evaluation_is_the_baseline_and_without_judges_the_reward_decides():
    rows = [_row(10, 0.5, cac=0.6), _row(20, 0.9, cac=0.7), _row(30, 0.8, cac=0.7)]
    best = best_step(rows, ["cac"], margin=0.0)
    assert best.baseline_step == 10 and best.step == 20 and "since step 10" in best.line("flow-grpo")
    assert best_step(rows, [], margin=0.0).step == 20
    assert best_step([_row(0, 0.5)], [], 0.0).step is None  # nothing after the baseline
    assert best_step([], ["cac"], 0.0).baseline_step is None


def test_best_json_round_trips_with_the_rule_in_words(tmp_path):
    best = best_step([_row(0, 0.5, cac=0.6), _row(2, 0.6, cac=0.6)], ["cac"], margin=0.02)
    write_best(tmp_path, best)
    saved = read_best(tmp_path)
    assert saved["step"] == 2 and saved["baseline"] == {"reward": 0.5, "judges": {"cac": 0.6}} and saved["margin"] == 0.02
    assert "no lower than at step 0 less watch.margin" in saved["rule"]
    assert json.loads((tmp_path / "best.json").read_text()) == saved and read_best(tmp_path / "nowhere") is None
