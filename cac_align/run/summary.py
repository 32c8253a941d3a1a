"""The end of a training run: a few lines worth reading, and the reward per step as a picture.

:func:`summary_lines` reads a run's ``metrics.jsonl`` (the rows every process agreed on, written by
the main process) and says, in the job's own name: the trained reward's first and last value and
each component's; how many steps trained nothing and why (a reward server down, no valid reward, no
variance in any group); the held-out evaluation's and each held-out judge's, from step 0 (the model the
run started from, evaluated before the first step) to the last evaluation; the watch's alarms; and
where the metrics, TensorBoard's logs and the picture are. :func:`reward_plot` draws
``reward.png``: the reward per step, one curve per component, the held-out evaluation dashed.
Both read only the file, so what they say equals what it holds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

__all__ = ["REWARD_PNG", "idle_steps", "reward_curves", "reward_plot", "summary_lines"]

REWARD_PNG = "reward.png"
_COMPONENT = re.compile(r"^reward/(.+)_mean$")  # reward/brightness_mean, reward/cac_mean, ...
_JUDGE = re.compile(r"^eval/(.+)/mean$")  # a held-out judge: eval/<label>/mean


def _trained(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of training steps: all but step 0's (the evaluation of the model the run started from)."""
    return [row for row in rows if row["step"] > 0]


def _rows(out: Path) -> list[dict[str, Any]]:
    from cac_align.run.folder import read_jsonl_log

    return [row for _, row in read_jsonl_log(out / "metrics.jsonl") if isinstance(row.get("step"), int)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reward_curves(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` of the reward's columns, in the order they are drawn: the trained
    reward (``reward/mean``), each component (``reward/<name>_mean``), the held-out evaluation
    (``eval/reward_mean``) and each held-out judge (``eval/<label>/mean``). A component is drawn
    once: normalized where a combined reward logs both (``cac_normalized``, what it averages, not
    ``cac_raw`` on the judge's own scale), and not at all where its column is the reward itself (a
    single reward's ``brightness``, a combination's own name). Steps without a finite value, and
    keys with none, are left out."""
    keys: list[str] = ["reward/mean"]
    for row in rows:
        for key in row:
            if key not in keys and (_COMPONENT.match(key) or key == "eval/reward_mean" or _JUDGE.match(key)):
                keys.append(key)
    names = {m.group(1) for key in keys if (m := _COMPONENT.match(key))}
    keys = [k for k in keys if not ((m := _COMPONENT.match(k)) and m.group(1).endswith("_raw") and f"{m.group(1)[:-4]}_normalized" in names)]
    order = sorted(keys, key=lambda k: (k.startswith("eval/"), k != "reward/mean" and k != "eval/reward_mean", keys.index(k)))
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for key in order:
        points = [(int(row["step"]), float(row[key])) for row in rows if _finite(row.get(key))]
        if points and not (_COMPONENT.match(key) and curves.get("reward/mean") == ([s for s, _ in points], [v for _, v in points])):
            curves[key] = ([s for s, _ in points], [v for _, v in points])
    return curves


def _change(name: str, curve: tuple[list[int], list[float]]) -> str:
    steps, values = curve
    return f"{name} {values[0]:.4f} (step {steps[0]}) -> {values[-1]:.4f} (step {steps[-1]})"


def idle_steps(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The logged steps that made no update (no ``train/timesteps``: the trainer's update never ran), by why,
    read from the step's own numbers: the reward's server was down for every sample (``reward/down_fraction``
    1), no sample got a valid reward, or every group's rewards were equal (no advantage to train on)."""
    idle: dict[str, list[int]] = {}
    for row in _trained(rows):
        if "train/timesteps" in row:
            continue
        if _finite(row.get("reward/down_fraction")) and row["reward/down_fraction"] >= 1:
            why = "the reward's server was down: no sample was scored"
        elif not _finite(row.get("reward/mean")) or row.get("reward/valid_fraction") == 0:
            why = "no sample got a valid reward"
        elif row.get("trained_fraction") == 0 or row.get("zero_std_fraction") == 1:
            why = "every group's rewards were equal: no advantage"
        else:
            why = "no update"
        idle.setdefault(why, []).append(int(row["step"]))
    return idle


def _steps(steps: list[int]) -> str:
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(map(str, steps))


def summary_lines(out: Path, job: str) -> list[str]:
    """What a training run ends with, from its ``metrics.jsonl`` (module docstring)."""
    rows = _rows(out)
    if not rows:
        return [f"{job}: no step was logged in {out / 'metrics.jsonl'}"]
    curves = reward_curves(rows)
    lines = []
    if "reward/mean" in curves:
        parts = [_change("reward", curves["reward/mean"])]
        parts += [_change(match.group(1), curve) for key, curve in curves.items() if (match := _COMPONENT.match(key))]
        lines.append(f"{job}: " + "; ".join(parts))
    idle = idle_steps(rows)
    if idle:
        said = "; ".join(f"{_steps(steps)} ({why})" for why, steps in idle.items())
        count = sum(len(steps) for steps in idle.values())
        trained = len(_trained(rows))
        lines.append(f"{job}: {count} of {trained} step{'s' if trained != 1 else ''} trained nothing: {said}")
    held_out = [_change("held-out reward" if key == "eval/reward_mean" else f"held-out {_JUDGE.match(key).group(1)}", curve)  # type: ignore[union-attr]
                for key, curve in curves.items() if key.startswith("eval/")]
    alarms = sum(int(row["watch/alarms"]) for row in rows if _finite(row.get("watch/alarms")))
    if held_out:
        lines.append(f"{job}: " + "; ".join(held_out) + (f"; the watch raised {alarms} alarm(s)" if alarms else ""))
    board = f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}; " if (out / "tensorboard").is_dir() else ""  # log_with: none writes none
    lines.append(f"{job}: metrics in {out / 'metrics.jsonl'}; {board}the reward per step: {out / REWARD_PNG}")
    return lines


def reward_plot(out: Path, job: str) -> tuple[Path, list[str]]:
    """Draw ``out/reward.png`` from ``metrics.jsonl`` (module docstring); returns its path and the
    curves drawn, by their metrics' keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = reward_curves(_rows(out))
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for key, (steps, values) in curves.items():
        axes.plot(steps, values, linestyle="--" if key.startswith("eval/") else "-", marker="o" if len(steps) < 30 else None,
                  linewidth=2.0 if key in ("reward/mean", "eval/reward_mean") else 1.2, label=key)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    axes.set_xlabel("step")
    axes.set_ylabel("reward")
    axes.set_title(f"{job}: {out.name}")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8)
    target = out / REWARD_PNG
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return target, list(curves)
