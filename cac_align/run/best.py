"""The best evaluated step of a training run, by one stated rule, and the record of it (``best.json``).

A run that trains on a reward can end worse than it was halfway: the reward it optimizes still rising
while the judges it does not train on fall (reward hacking: :mod:`cac_align.run.watch`). The last LoRA is
then not the one to keep. The rule:

    among the evaluated steps after step 0, those at which every held-out judge's mean is no lower than
    at step 0 less ``watch.margin`` (each judge in its own units); of those, the one with the highest
    trained reward on the held-out prompts (``eval/reward_mean``); the earliest of equals. None qualifies:
    none is kept, and the run says so.

The baseline is the step-0 evaluation (the model the run started from, ``eval_at_start``); a run that did
not evaluate step 0 takes its first evaluation as the baseline (and that evaluation cannot be chosen). A
judge whose mean is missing at a step (every video invalid) does not hold there. With no held-out judge the
rule is the highest trained reward. The watch's alarm against step 0 draws the same line (a judge more
than ``margin`` below step 0), so a step the watch alarmed on for a falling judge is never the best.

Pure over ``metrics.jsonl``'s rows: a test computes the rule by hand from the file the run wrote.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cac_align.run.folder import write_text_atomic

__all__ = ["BEST_JSON", "RULE", "BestStep", "best_step", "read_best", "write_best"]

BEST_JSON = "best.json"
RULE = ("the evaluated step after step 0 with the highest trained reward on the held-out prompts (eval/reward_mean) among those whose "
        "held-out judges are all no lower than at step 0 less watch.margin; the earliest of equals; none when none qualifies")


@dataclass(frozen=True)
class BestStep:
    """The rule's choice over a run's evaluations so far.

    Attributes:
        step: the chosen step; None when no evaluated step qualifies (or none was evaluated after the baseline).
        reward: the trained reward's held-out mean at ``step`` (None with no step).
        judges: each held-out judge's mean at ``step``.
        baseline_step: the evaluation the judges are held against (0, or the first evaluation).
        baseline: ``{"reward": ..., "judges": {label: ...}}`` at ``baseline_step``.
        margin: ``watch.margin``.
        candidates: the evaluated steps after the baseline, in order; ``held``: those where every judge held.
    """

    step: int | None
    reward: float | None
    judges: dict[str, float]
    baseline_step: int | None
    baseline: dict[str, Any]
    margin: float
    candidates: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    rule: str = RULE

    def line(self, job: str) -> str:
        """The run's summary line: ``"flow-grpo: best: step 120, reward +0.21 since step 0, judges held (lora_best/)"``."""
        if self.baseline_step is None or not self.candidates:
            return f"{job}: best: no evaluation after the baseline, so no best step (lora_best/ not written)"
        since = f"since step {self.baseline_step}"
        if self.step is None:
            return (f"{job}: best: none of the {len(self.candidates)} evaluated step(s) kept every held-out judge within watch.margin="
                    f"{self.margin:g} of step {self.baseline_step}: no LoRA is the best (lora_best/ not written)")
        change = self.reward - self.baseline["reward"] if self.reward is not None and self.baseline.get("reward") is not None else math.nan
        held = "judges held" if self.judges else "no held-out judge"
        return f"{job}: best: step {self.step}, reward {change:+.4g} {since}, {held} (lora_best/)"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float | None:
    """A logged mean as a float, or None where it is missing or not finite (metrics.jsonl writes NaN as null)."""
    return float(value) if _finite(value) else None


def best_step(rows: Iterable[Mapping[str, Any]], judges: Sequence[str], margin: float) -> BestStep:
    """The rule (module docstring) over ``metrics.jsonl``'s rows.

    Args:
        rows: the run's logged rows, in any order (``{"step": N, "eval/reward_mean": ..., "eval/<label>/mean": ...}``;
            only those with ``eval/reward_mean`` are evaluations).
        judges: the held-out judges' labels (``eval_rewards``).
        margin: ``watch.margin``.
    """
    evaluations = sorted((int(row["step"]), row) for row in rows if isinstance(row.get("step"), int) and "eval/reward_mean" in row)
    if not evaluations:
        return BestStep(None, None, {}, None, {}, margin)
    base_step, base = evaluations[0]
    baseline = {"reward": _number(base.get("eval/reward_mean")), "judges": {label: _number(base.get(f"eval/{label}/mean")) for label in judges}}
    candidates, held, best = [], [], None
    for step, row in evaluations[1:]:
        candidates.append(step)
        reward = _number(row.get("eval/reward_mean"))
        means = {label: _number(row.get(f"eval/{label}/mean")) for label in judges}
        floors = {label: None if baseline["judges"][label] is None else baseline["judges"][label] - margin for label in judges}
        if not all(means[label] is not None and floors[label] is not None and means[label] >= floors[label] for label in judges):
            continue
        held.append(step)
        if reward is not None and (best is None or reward > best[1]):
            best = (step, reward, means)
    if best is None:
        return BestStep(None, None, {}, base_step, baseline, margin, candidates, held)
    return BestStep(best[0], best[1], best[2], base_step, baseline, margin, candidates, held)


def write_best(out: str | Path, best: BestStep) -> Path:
    """``<out>/best.json``: the choice, the baseline, the rule in words (written atomically)."""
    path = Path(out) / BEST_JSON
    write_text_atomic(path, json.dumps(asdict(best), indent=2, allow_nan=False, default=str) + "\n")
    return path


def read_best(out: str | Path) -> dict[str, Any] | None:
    """``best.json`` of the run in ``out`` as written, or None when there is none."""
    path = Path(out) / BEST_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
