"""A reward-hacking watch: the trained reward rising while a judge it is not trained on falls.

Flow-GRPO users fight reward hacking: the reward the run optimizes goes up while the videos get
worse by any other measure. A run can only see that if it scores its evaluation videos with
judges it does not train on (``eval_rewards`` of ``cac-align flow-grpo``; the paper's pair is
natural: train on one of UnifiedReward and CaC, watch with the other). This module holds the rule,
as a pure function over the evaluations so far:

    over the last ``window`` evaluations, an alarm for each held-out judge whose mean fell by more
    than ``margin`` (in its own units) while the trained reward's mean rose (last - first > 0).

A judge with a NaN in the window (every video invalid at one evaluation) is not judged.

**Against step 0.** A run evaluates the model it starts from before its first step (``eval_at_start``), and
that evaluation is the baseline of the rule too (:func:`baseline_alarms`): from the first evaluation after it,
an alarm for each held-out judge whose mean is more than ``margin`` below its step-0 mean while the trained
reward's mean is above its own step-0 mean. It sees what the window cannot: a judge that fell between
step 0 and the first evaluation (two evaluations of a window of three), and a slide slow enough that no
window of ``window`` evaluations holds more than ``margin`` of it. A judge the window rule already names
at an evaluation is named once. The best evaluated LoRA (:mod:`cac_align.run.best`) is chosen by the same
line: held-out judges no lower than at step 0 less ``margin``.

The same rule watches the trained reward's own components (:func:`component_alarms`; ``watch.components``):
a combined reward can rise while one of its parts collapses, which its sum hides (miles PR #25:
"collapse of one dimension is invisible in the overall sum"; verl-omni #563: an H3 NFT recipe lost
its audio rewards at steps 50-60). Over the last ``window`` evaluations, an alarm for each component
whose mean (its raw score, in its own units) fell by more than ``margin`` while the combined
reward's mean rose.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["HackingAlarm", "RunWatch", "WatchSettings", "baseline_alarms", "component_alarms", "hacking_alarms"]


@dataclass
class WatchSettings:
    """``watch`` of a flow-grpo recipe.

    Attributes:
        window: evaluations the rule looks back over (>= 2: the first and the last of them).
        margin: how far a held-out judge's mean must fall, in its own score units.
        stop: end the run (after a checkpoint, keeping the LoRA) at the first alarm; false: warn.
        components: also watch each component of the trained reward (a combined reward's parts) against
            the combined reward (module docstring, :func:`component_alarms`); needs ``eval_prompts``.
    """

    window: int = 3
    margin: float = 0.02
    stop: bool = False
    components: bool = True

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"watch.window must be >= 2 evaluations, got {self.window}")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"watch.margin must be >= 0, got {self.margin}")


@dataclass(frozen=True)
class HackingAlarm:
    """A held-out judge that fell while the trained reward rose (module docstring)."""

    judge: str
    trained_rise: float
    judge_fall: float
    evaluations: int
    component: bool = False
    gated_fraction: float | None = None  # the share of the last step's samples the gate held back (regularize.gate: its KL, or hold: worst_case), if on
    projected: float | None = None  # regularize.project: the cosine of the last step's advantages and the judges' (negative: it projected)
    since_start: bool = False  # against the step-0 evaluation (baseline_alarms), not over the last ``evaluations``

    @property
    def name(self) -> str:
        """What alarmed, as ``watch/fired`` lists it: a held-out judge's label, or ``component/<part>``."""
        return f"component/{self.judge}" if self.component else self.judge

    def message(self, trained: str) -> str:
        span = "since step 0" if self.since_start else f"over the last {self.evaluations} evaluations"
        if self.component:
            return (f"a component collapsed: {span} the trained reward {trained!r} rose by "
                    f"{self.trained_rise:.4g} while its component {self.judge!r} fell by {self.judge_fall:.4g} (the sum hides it)")
        guard = ""
        if self.gated_fraction is not None:
            guard += f"; the gate held back {self.gated_fraction:.0%} of the last step's samples"
        if self.projected is not None:
            if self.projected < 0:
                guard += f"; the last step's advantages were projected off the judges' (cosine {self.projected:.2f})"
            elif self.projected >= 0:
                guard += f"; the last step's advantages agreed with the judges' (cosine {self.projected:.2f}): not projected"
            else:  # NaN: the reward's or the judges' advantages were all 0
                guard += "; the last step's advantages were not projected (the reward's or the judges' all 0)"
        if not guard:
            guard = ("; regularize.project=true would turn the update away from the judges, regularize.gate=uncertain with hold=worst_case "
                     "hold back the samples they disagree on, and with reference=adaptive the three held the judge on the hacking benchmark "
                     "(docs/flow_grpo.md, 'When your reward is hacked')")
        return (f"possible reward hacking: {span} the trained reward {trained!r} rose by "
                f"{self.trained_rise:.4g} while the held-out judge {self.judge!r} fell by {self.judge_fall:.4g}{guard}")


def hacking_alarms(trained: Sequence[float], held_out: Mapping[str, Sequence[float]], window: int, margin: float) -> list[HackingAlarm]:
    """The alarms of the last ``window`` evaluations (module docstring).

    Args:
        trained: the trained reward's mean at each evaluation so far, oldest first.
        held_out: per held-out judge, its mean at the same evaluations.
        window: evaluations to look back over; fewer than that so far: no alarm yet.
        margin: the fall (first - last) a judge must exceed.
    """
    if len(trained) < window:
        return []
    rise = trained[-1] - trained[-window]
    if not (math.isfinite(rise) and rise > 0):
        return []
    alarms = []
    for judge, means in held_out.items():
        recent = list(means)[-window:]
        if len(recent) < window or not all(math.isfinite(m) for m in recent):
            continue
        fall = recent[0] - recent[-1]
        if fall > margin:
            alarms.append(HackingAlarm(judge, float(rise), float(fall), window))
    return alarms


def baseline_alarms(trained: Sequence[float], held_out: Mapping[str, Sequence[float]], margin: float) -> list[HackingAlarm]:
    """The alarms against step 0 (module docstring): the first entry of each sequence is the step-0
    evaluation, the last the newest; an alarm for each held-out judge more than ``margin`` below its
    step-0 mean while the trained reward is above its own. Fewer than two evaluations, or a NaN at either
    end: none (for that judge).

    Args:
        trained: the trained reward's mean at step 0, ..., at the newest evaluation.
        held_out: per held-out judge, its mean at the same evaluations.
        margin: the fall (step 0 - newest) a judge must exceed.
    """
    if len(trained) < 2:
        return []
    rise = trained[-1] - trained[0]
    if not (math.isfinite(rise) and rise > 0):
        return []
    alarms = []
    for judge, means in held_out.items():
        if len(means) < 2:
            continue
        fall = means[0] - means[-1]
        if math.isfinite(fall) and fall > margin:
            alarms.append(HackingAlarm(judge, float(rise), float(fall), len(means), since_start=True))
    return alarms


def component_alarms(combined: Sequence[float], components: Mapping[str, Sequence[float]], window: int, margin: float) -> list[HackingAlarm]:
    """The alarms of the trained reward's own components (module docstring): :func:`hacking_alarms`'
    rule with the combined reward's means as the trained and each component's as a judge.

    Args:
        combined: the trained (combined) reward's mean at each evaluation, oldest first.
        components: per component, its raw mean at the same evaluations.
    """
    return [HackingAlarm(a.judge, a.trained_rise, a.judge_fall, a.evaluations, component=True)
            for a in hacking_alarms(combined, components, window, margin)]


class RunWatch:
    """The watch over a run's evaluations: the trained reward's mean (``eval/reward_mean``), each
    held-out judge's (``eval/<label>/mean``) and each watched component's raw mean
    (``eval/components/<part>_raw_mean``), oldest first, and the alarms of the rules above (the window's,
    and step 0's where the run evaluated step 0).

    Args:
        settings: the recipe's ``watch``.
        held_out: the held-out judges' labels (``eval_rewards``).
        parts: the trained reward's components watched (``watch.components``; none: not watched).
    """

    def __init__(self, settings: WatchSettings, held_out: Sequence[str], parts: Sequence[str]) -> None:
        self.settings, self.held_out, self.parts = settings, list(held_out), list(parts)
        self.history: dict[str, list[float]] = {"reward": [], **{label: [] for label in self.held_out},
                                                **{f"component/{part}": [] for part in self.parts}}
        self.steps: list[int] = []  # the step of each evaluation in the history

    def resume(self, metrics_file: Path, start_step: int) -> None:
        """The evaluations of a resumed run's first ``start_step`` steps (step 0's too), from its metrics.jsonl."""
        from cac_align.run.folder import read_jsonl_log

        if not Path(metrics_file).exists():
            return
        for _, row in read_jsonl_log(metrics_file):
            if isinstance(row.get("step"), int) and row["step"] <= start_step and "eval/reward_mean" in row:
                self._record(row["step"], row)

    def _record(self, step: int, metrics: Mapping[str, Any]) -> None:
        def value(key: str) -> float:
            number = metrics.get(key)
            return math.nan if number is None else float(number)  # metrics.jsonl writes NaN as null

        self.steps.append(int(step))
        self.history["reward"].append(value("eval/reward_mean"))
        for label in self.held_out:
            self.history[label].append(value(f"eval/{label}/mean"))
        for part in self.parts:
            self.history[f"component/{part}"].append(value(f"eval/components/{part}_raw_mean"))

    def add(self, metrics: dict[str, Any], step: int) -> list[HackingAlarm] | None:
        """Add the evaluation of ``step``'s ``metrics`` and return the alarms (their count also written as
        ``watch/alarms``, what alarmed as ``watch/fired``); None when nothing is watched (no held-out judge,
        no component)."""
        if not self.held_out and not self.parts:
            return None
        self._record(step, metrics)
        window, margin = self.settings.window, self.settings.margin
        judges = {label: self.history[label] for label in self.held_out}
        parts = {part: self.history[f"component/{part}"] for part in self.parts}
        alarms = hacking_alarms(self.history["reward"], judges, window, margin)
        if self.steps[0] == 0:  # the run evaluated step 0: the baseline rule too (module docstring)
            named = {a.judge for a in alarms}
            alarms += [a for a in baseline_alarms(self.history["reward"], judges, margin) if a.judge not in named]
        # beside the alarm: what the guards did over the last step (regularize.gate, regularize.project), where they are on
        guards = {"gated_fraction": metrics.get("regularize/gated_fraction"), "projected": metrics.get("regularize/cosine")}
        alarms = [dataclasses.replace(a, **guards) for a in alarms]
        collapsed = component_alarms(self.history["reward"], parts, window, margin)
        if self.steps[0] == 0:
            named = {a.judge for a in collapsed}
            collapsed += [dataclasses.replace(a, component=True) for a in baseline_alarms(self.history["reward"], parts, margin) if a.judge not in named]
        alarms += collapsed
        metrics["watch/alarms"] = len(alarms)
        if alarms:
            metrics["watch/fired"] = [a.name for a in alarms]
        return alarms
