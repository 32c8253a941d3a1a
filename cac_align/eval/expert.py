"""Expert anomaly rate (CaC Table 2's last row). Job: ``cac-align eval expert`` (:mod:`cac_align.jobs.eval_expert`).

Two actions:

- ``action=export``: a labelling sheet for human experts. ``sheet.html`` is one self-contained
  page (videos embedded as data URIs, or linked with ``embed=false``). The items of every system
  are shuffled together (seeded) under opaque ids, and the system names appear nowhere in the
  page (blind rating). Per video the expert picks "anomalous" or "normal", optionally an anomaly
  type and a note. Answers are kept in the browser's local storage while the expert works, and
  "Save answers" downloads ``labels_<expert>.json`` (or ``.csv``). ``sheet.csv`` is the same sheet as a
  spreadsheet to fill in instead. ``key.json`` (item id -> system, video, prompt) stays with the
  organiser: do not send it to the experts.
- ``action=analyze``: reads the key and one labels file per expert (JSON from the page or the
  CSV) and writes ``expert.json`` and ``expert.md``:

  - per system, the **anomaly rate** with a 95% **Wilson** interval. A video counts as anomalous
    when more than half of the experts who labelled it say so; a tie counts as ``tie_label``
    (anomalous by default, the conservative reading). Per-expert rates are reported too.
  - **agreement** between experts on the items they all labelled: Cohen's kappa for each pair,
    and Fleiss' kappa across all of them (from 2 experts up).
  - a paired **McNemar** test for each pair of systems, over the prompts both have. ``b`` counts
    prompts where only the first system's video is anomalous, ``c`` those where only the
    second's is. The p-value is the exact two-sided binomial one, ``min(1, 2·P(X ≤ min(b, c)))``
    with X ~ Bin(b + c, ½); the chi-square statistic ``(b − c)² / (b + c)`` is reported beside it.

Systems are given as ``systems: {name: source}``. A source is a folder of videos (the prompt key
is the file name without extension) or a JSONL manifest with ``video`` and ``prompt`` per line,
e.g. a ``cac-align bon`` or ``score`` output. Videos of different systems pair up by prompt.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["cohen_kappa", "fleiss_kappa", "load_labels", "mcnemar", "wilson_interval"]

ACTIONS = ("export", "analyze")
LABELS = ("anomalous", "normal")
Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (nan, nan) when n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}, {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters over the same items: (p_o − p_e) / (1 − p_e); NaN when
    p_e = 1 (both raters gave one and the same label to everything)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty label lists, got {len(a)} and {len(b)}")
    categories = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    return (observed - expected) / (1 - expected) if expected < 1 else math.nan


def fleiss_kappa(counts: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an (items, categories) table of how many raters chose each category
    (the same number of raters per item); NaN when chance agreement is 1."""
    table = np.asarray(counts, dtype=np.float64)
    raters = table.sum(axis=1)
    if table.ndim != 2 or len(table) == 0 or not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("fleiss_kappa needs a non-empty (items, categories) table with the same number (>= 2) of raters per item")
    n = raters[0]
    per_item = ((table**2).sum(axis=1) - n) / (n * (n - 1))
    shares = table.sum(axis=0) / table.sum()
    expected = float((shares**2).sum())
    return (float(per_item.mean()) - expected) / (1 - expected) if expected < 1 else math.nan


def mcnemar(b: int, c: int) -> dict[str, float]:
    """McNemar's test on the discordant counts: exact two-sided binomial p-value and chi-square."""
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "statistic": math.nan, "p_value": 1.0}
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return {"b": b, "c": c, "statistic": (b - c) ** 2 / n, "p_value": min(1.0, 2 * tail)}


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Analyze
# ---------------------------------------------------------------------------------------
def load_labels(path: str | Path, sheet_id: str | None = None) -> tuple[str, dict[str, dict]]:
    """One expert's answers: ``(expert name, {item: {"label", "type", "note"}})``.

    Reads the page's JSON, the page's CSV or the filled ``sheet.csv`` (the expert is then the
    file name). Unlabelled items are left out; a label other than anomalous / normal, or a file
    from another sheet, raises ValueError naming the file.
    """
    path = Path(path)
    if not path.exists():
        from cac_align.config import RecipeError

        raise RecipeError(f"labels file {path} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        expert, rows, sheets = data.get("expert") or path.stem, data.get("answers", []), {data.get("sheet_id")}
    else:
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        expert = next((r["expert"] for r in rows if r.get("expert")), path.stem)
        sheets = {r.get("sheet_id") for r in rows}
    if sheet_id is not None and sheets - {sheet_id, None, ""}:
        raise ValueError(f"{path}: answers are for sheet {sorted(s for s in sheets if s)}, not {sheet_id}")
    answers = {}
    for row in rows:
        label = (row.get("label") or "").strip().lower() or None
        if label is None:
            continue
        if label not in LABELS:
            raise ValueError(f"{path}: item {row.get('item')}: label must be 'anomalous' or 'normal', got {label!r}")
        answers[row["item"]] = {"label": label, "type": row.get("type") or None, "note": row.get("note") or None}
    return expert, answers


