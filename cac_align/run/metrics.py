"""Metrics: per-process sums merged into means, and the one logger (``metrics.jsonl`` on the
main process plus accelerate's trackers) of both GRPO trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["log_metrics", "merge_sums"]


def merge_sums(parts: Sequence[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Merge per-process ``{name: (sum, count)}`` into means over all processes; names whose
    total count is 0 are left out."""
    totals: dict[str, list[float]] = {}
    for part in parts:
        for name, (value, count) in part.items():
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += value
            entry[1] += count
    return {name: value / count for name, (value, count) in totals.items() if count > 0}


def log_metrics(accelerator: Accelerator, out: str | Path, step: int, metrics: dict[str, Any], trackers: bool = True) -> None:
    """Log one step: a ``metrics.jsonl`` line on the main process (non-finite numbers as null)
    and, with ``trackers``, accelerate's trackers (finite numbers only). Call on every process."""
    if trackers:
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}, step=step)
    if accelerator.is_main_process:
        line = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with open(Path(out) / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
