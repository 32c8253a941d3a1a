"""A reward-hacking watch: the trained reward rising while a judge it is not trained on falls.

Flow-GRPO users fight reward hacking: the reward the run optimizes goes up while the videos get
worse by any other measure. A run can only see that if it scores its evaluation videos with
judges it does not train on (``eval_rewards`` of ``cac-align flow-grpo``; the paper's pair is
natural: train on one of UnifiedReward and CaC, watch with the other). This module holds the rule,
as a pure function over the evaluations so far:

    over the last ``window`` evaluations, an alarm for each held-out judge whose mean fell by more
    than ``margin`` (in its own units) while the trained reward's mean rose (last - first > 0).

A judge with a NaN in the window (every video invalid at one evaluation) is not judged.

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

__all__ = ["HackingAlarm", "RunWatch", "WatchSettings", "component_alarms", "hacking_alarms"]


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

    def message(self, trained: str) -> str:
        if self.component:
            return (f"a component collapsed: over the last {self.evaluations} evaluations the trained reward {trained!r} rose by "
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
        return (f"possible reward hacking: over the last {self.evaluations} evaluations the trained reward {trained!r} rose by "
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
    (``eval/components/<part>_raw_mean``), oldest first, and the alarms of the rules above.

    Args:
        settings: the recipe's ``watch``.
        held_out: the held-out judges' labels (``eval_rewards``).
        parts: the trained reward's components watched (``watch.components``; none: not watched).
    """

    def __init__(self, settings: WatchSettings, held_out: Sequence[str], parts: Sequence[str]) -> None:
        self.settings, self.held_out, self.parts = settings, list(held_out), list(parts)
        self.history: dict[str, list[float]] = {"reward": [], **{label: [] for label in self.held_out},
                                                **{f"component/{part}": [] for part in self.parts}}

    def resume(self, metrics_file: Path, start_step: int) -> None:
        """The evaluations of a resumed run's first ``start_step`` steps, from its metrics.jsonl."""
        from cac_align.run.folder import read_jsonl_log

        if not start_step:
            return
        for _, row in read_jsonl_log(metrics_file):
            if row.get("step", 0) <= start_step and "eval/reward_mean" in row:
                self.history["reward"].append(float(row["eval/reward_mean"]))
                for label in self.held_out:
                    self.history[label].append(float(row.get(f"eval/{label}/mean", math.nan)))
                for part in self.parts:
                    self.history[f"component/{part}"].append(float(row.get(f"eval/components/{part}_raw_mean", math.nan)))

    def add(self, metrics: dict[str, Any]) -> list[HackingAlarm] | None:
        """Add an evaluation's ``metrics`` and return the alarms (also written as ``watch/alarms``);
        None when nothing is watched (no held-out judge, no component)."""
        if not self.held_out and not self.parts:
            return None
        self.history["reward"].append(metrics["eval/reward_mean"])
        for label in self.held_out:
            self.history[label].append(metrics[f"eval/{label}/mean"])
        for part in self.parts:
            self.history[f"component/{part}"].append(metrics[f"eval/components/{part}_raw_mean"])
        window, margin = self.settings.window, self.settings.margin
        alarms = hacking_alarms(self.history["reward"], {label: self.history[label] for label in self.held_out}, window, margin)
        # beside the alarm: what the guards did over the last step (regularize.gate, regularize.project), where they are on
        guards = {"gated_fraction": metrics.get("regularize/gated_fraction"), "projected": metrics.get("regularize/cosine")}
        alarms = [dataclasses.replace(a, **guards) for a in alarms]
        alarms += component_alarms(self.history["reward"], {part: self.history[f"component/{part}"] for part in self.parts}, window, margin)
        metrics["watch/alarms"] = len(alarms)
        return alarms
