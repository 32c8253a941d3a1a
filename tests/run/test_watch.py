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
        w.add({"eval/reward_mean": 0.5, "eval/judge/mean": 0.9}, 5)
        return w.add({"eval/reward_mean": 0.6, "eval/judge/mean": 0.8, **guards}, 10)

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


def test_against_step_0_a_fall_before_the_window_fills_alarms_once_and_names_what_fired():
    from cac_align.run.watch import RunWatch, baseline_alarms

    # by hand: reward 0.50 -> 0.55 (rose 0.05); judge 0.61 -> 0.576 (fell 0.034 > margin 0.02); steady 0.7 -> 0.69 (fell 0.01: held)
    (alarm,) = baseline_alarms([0.50, 0.55], {"judge": [0.61, 0.576], "steady": [0.7, 0.69]}, margin=0.02)
    assert alarm.judge == "judge" and alarm.since_start and abs(alarm.judge_fall - 0.034) < 1e-12 and abs(alarm.trained_rise - 0.05) < 1e-12
    assert "since step 0" in alarm.message("proxy")
    assert baseline_alarms([0.50, 0.49], {"judge": [0.61, 0.5]}, margin=0.02) == []  # the reward fell too: a bad run, not hacking
    assert baseline_alarms([0.50], {"judge": [0.61]}, margin=0.02) == []  # step 0 alone
    assert baseline_alarms([0.5, 0.6], {"judge": [float("nan"), 0.1]}, margin=0.0) == []  # an invalid step 0: that judge is not judged

    settings = WatchSettings(window=3, margin=0.02)
    started = RunWatch(settings, ["judge"], [])
    assert started.add({"eval/reward_mean": 0.50, "eval/judge/mean": 0.61}, 0) == []
    metrics = {"eval/reward_mean": 0.55, "eval/judge/mean": 0.576}
    (alarm,) = started.add(metrics, 5)  # two evaluations of a window of three: only step 0 can see it
    assert alarm.since_start and metrics["watch/alarms"] == 1 and metrics["watch/fired"] == ["judge"]
    # the window's rule names the judge at the next evaluation: named once, by the window
    metrics = {"eval/reward_mean": 0.60, "eval/judge/mean": 0.55}
    (alarm,) = started.add(metrics, 10)
    assert not alarm.since_start and alarm.evaluations == 3 and metrics["watch/fired"] == ["judge"]
    # a run that did not evaluate step 0 (its first evaluation at step 5): the window rule alone, as before
    late = RunWatch(settings, ["judge"], [])
    assert late.add({"eval/reward_mean": 0.50, "eval/judge/mean": 0.61}, 5) == []
    metrics = {"eval/reward_mean": 0.55, "eval/judge/mean": 0.576}
    assert late.add(metrics, 10) == [] and metrics["watch/alarms"] == 0 and "watch/fired" not in metrics


def test_a_component_that_fell_since_step_0_is_named_as_a_component(tmp_path):
    from cac_align.run.watch import RunWatch

    watch = RunWatch(WatchSettings(window=3, margin=0.02), [], ["cac"])
    watch.add({"eval/reward_mean": 0.5, "eval/components/cac_raw_mean": 0.8}, 0)
    metrics = {"eval/reward_mean": 0.6, "eval/components/cac_raw_mean": 0.7}
    (alarm,) = watch.add(metrics, 4)
    assert alarm.component and alarm.since_start and metrics["watch/fired"] == ["component/cac"]
    assert alarm.message("ur_cac").startswith("a component collapsed: since step 0 the trained reward 'ur_cac' rose by 0.1")


def test_a_resumed_watch_reads_step_0_from_the_metrics_and_keeps_its_baseline(tmp_path):
    import json

    from cac_align.run.watch import RunWatch

    rows = [{"step": 0, "eval/reward_mean": 0.5, "eval/judge/mean": 0.61, "watch/alarms": 0},
            {"step": 1, "reward/mean": 0.4},
            {"step": 2, "reward/mean": 0.45, "eval/reward_mean": 0.52, "eval/judge/mean": 0.60, "watch/alarms": 0},
            {"step": 3, "reward/mean": 0.5, "eval/reward_mean": 0.7, "eval/judge/mean": None}]  # past the checkpoint: redone
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    watch = RunWatch(WatchSettings(window=3, margin=0.02), ["judge"], [])
    watch.resume(tmp_path / "metrics.jsonl", 2)
    assert watch.steps == [0, 2] and watch.history["judge"] == [0.61, 0.60]
    (alarm,) = watch.add({"eval/reward_mean": 0.55, "eval/judge/mean": 0.58}, 4)  # window 0.61 -> 0.58 and step 0: named once
    assert alarm.judge == "judge" and not alarm.since_start
    fresh = RunWatch(WatchSettings(), ["judge"], [])
    fresh.resume(tmp_path / "nothing.jsonl", 0)  # a run with no metrics yet
    assert fresh.steps == []
