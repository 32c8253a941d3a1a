"""The reward-hacking watch's rule (cac_align/run/watch.py), by hand."""

from __future__ import annotations

import math

import pytest

from cac_align.run.watch import WatchSettings, hacking_alarms


def test_an_alarm_needs_the_trained_reward_up_and_a_judge_down_by_more_than_the_margin():
    trained = [0.50, 0.52, 0.55, 0.60]
    held_out = {
        "falls": [0.80, 0.79, 0.75, 0.70],    # window 3: 0.79 -> 0.70, fell 0.09 > 0.05
        "slips": [0.80, 0.80, 0.79, 0.77],    # fell 0.03: within the margin
        "rises": [0.10, 0.20, 0.30, 0.40],
        "broken": [0.80, math.nan, 0.60, 0.10],  # an evaluation without a valid score: not judged
    }
    (alarm,) = hacking_alarms(trained, held_out, window=3, margin=0.05)
    # trained 0.52 -> 0.60: rose 0.08
    assert alarm.judge == "falls" and alarm.trained_rise == pytest.approx(0.08) and alarm.judge_fall == pytest.approx(0.09)
    assert alarm.evaluations == 3 and "'falls' fell by 0.09" in alarm.message("cac") and "'cac' rose by 0.08" in alarm.message("cac")
    # window 4 reaches the NaN-free start of "slips" too: 0.80 -> 0.77 is still 0.03
    assert [a.judge for a in hacking_alarms(trained, held_out, window=4, margin=0.02)] == ["falls", "slips"]


def test_no_alarm_while_the_trained_reward_does_not_rise_or_before_a_full_window():
    falling = {"judge": [0.9, 0.5, 0.1]}
    assert hacking_alarms([0.5, 0.6, 0.5], falling, window=3, margin=0.0) == []   # flat: last == first
    assert hacking_alarms([0.6, 0.5, 0.4], falling, window=3, margin=0.0) == []   # falling too: a bad run, not hacking
    assert hacking_alarms([0.5, 0.6], {"judge": [0.9, 0.5]}, window=3, margin=0.0) == []  # two evaluations of three
    assert len(hacking_alarms([0.5, 0.6], {"judge": [0.9, 0.5]}, window=2, margin=0.0)) == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match="window must be >= 2"):
        WatchSettings(window=1)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        WatchSettings(margin=-0.1)


def test_an_alarm_says_what_the_guards_did_or_that_they_could():
    from cac_align.run.watch import RunWatch

    def watch(**guards) -> list:
        w = RunWatch(WatchSettings(window=2, margin=0.0), ["judge"], [])
        w.add({"eval/reward_mean": 0.5, "eval/judge/mean": 0.9})
        return w.add({"eval/reward_mean": 0.6, "eval/judge/mean": 0.8, **guards})

    (gated,) = watch(**{"regularize/gated_fraction": 0.125})
    assert gated.gated_fraction == 0.125 and gated.message("proxy").endswith("; the gate held back 12% of the last step's samples")
    (plain,) = watch()
    assert plain.gated_fraction is None and plain.projected is None
    assert ("regularize.project=true would turn the update away from the judges, regularize.gate=uncertain with hold=worst_case hold back the "
            "samples they disagree on, and with reference=adaptive") in plain.message("proxy")
    (projected,) = watch(**{"regularize/cosine": -0.25})
    assert projected.message("proxy").endswith("; the last step's advantages were projected off the judges' (cosine -0.25)")
    (agreed,) = watch(**{"regularize/cosine": 0.5, "regularize/gated_fraction": 0.0})
    assert agreed.message("proxy").endswith("; the gate held back 0% of the last step's samples; the last step's advantages agreed with the "
                                            "judges' (cosine 0.50): not projected")
    (flat,) = watch(**{"regularize/cosine": float("nan")})
    assert flat.message("proxy").endswith("; the last step's advantages were not projected (the reward's or the judges' all 0)")
