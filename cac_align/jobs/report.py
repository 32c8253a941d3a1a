"""One report of an alignment comparison (CaC Table 2). Job: ``cac-align report``.

Rows are the VBench dimensions (from ``cac-align eval vbench``'s ``vbench.json``) and the expert
anomaly rate (from ``cac-align eval expert action=analyze``'s ``expert.json``); columns are the
systems, the first being the base model. Each row has an arrow for its better direction (↑ for
the VBench dimensions, ↓ for the anomaly rate). The best value of a row is in bold (every system
tied for it). Every other system's delta against the base is shown beside its value. The anomaly
rate also shows its 95% Wilson interval.

Outputs in ``out_dir``: ``report.md``, ``report.html`` (self-contained: the charts are embedded),
``charts/<metric>.png`` (one matplotlib bar chart per row, with the Wilson interval as error
bars for the anomaly rate) and ``report.json`` (the table's numbers).

``runs`` (``{system: training run folder}``, a ``flow-grpo`` or ``nft`` ``out_dir``) adds, per run, a
link to its run page (``run.html``, :mod:`cac_align.eval.run_page`; relative to ``out_dir``) and its
held-out means at its first evaluation (step 0) against its last (from its ``metrics.jsonl``), and its
reward per step: the ``reward.png`` its run wrote at its end (:mod:`cac_align.run.summary`), the same
picture byte for byte, as ``charts/reward_<system>.png``. A folder without one (a run that has not
ended, or one from before the picture) is said in the report, not drawn anew.

Input formats: ``vbench.json`` is ``{"systems": {name: {"dimensions": {dimension: {"mean": x,
...}}}}}``; ``expert.json`` is ``{"systems": {name: {"rate": r, "wilson_low": l, "wilson_high":
h, "n": n, ...}}}``. A system missing from a file shows "–" in that row.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["METRICS", "ReportConfig", "build_table", "run"]

# (row key, label, higher is better)
METRICS = [
    ("dynamic_degree", "Dynamic degree", True),
    ("subject_consistency", "Subject consistency", True),
    ("imaging_quality", "Imaging quality", True),
    ("expert_anomaly_rate", "Expert anomaly rate", False),
]


@dataclass
class ReportConfig:
    """Config of `cac-align report`.

    Attributes:
        systems: column order; the first is the base model the deltas are taken against. Empty
            = every system found, in the order of the first input file.
        vbench: a ``vbench.json`` (or null).
        expert: an ``expert.json`` (or null).
        out_dir: receives report.md, report.html, report.json and charts/.
        title: the report's heading.
        overwrite: replace a report of another config in ``out_dir`` (its outputs only).
        runs: ``{system: training run folder}``: each run's ``reward.png`` shown (module docstring).
    """

    systems: list[str] = field(default_factory=list)
    vbench: str | None = None
    expert: str | None = None
    out_dir: str = "outputs/report"
    title: str = "Alignment report"
    overwrite: bool = False
    runs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vbench is None and self.expert is None and not self.runs:
            raise ValueError("give at least one input: vbench=<vbench.json>, expert=<expert.json> and/or runs={system: run folder}")


def _read(path: str | None, what: str) -> dict:
    """The ``systems`` of an eval job's JSON output; a missing or unreadable file is a one-line error."""
    from cac_align.config import RecipeError, relative_path_hint

    if path is None:
        return {}
    if not Path(path).exists():
        raise RecipeError(f"{what}={path} does not exist{relative_path_hint(path)}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{what}={path} is not readable JSON ({exc}); give the {what}.json an eval job wrote") from None
    systems = data.get("systems") if isinstance(data, dict) else None
    if not isinstance(systems, dict):
        raise RecipeError(f"{what}={path} has no 'systems' mapping; give the {what}.json that `cac-align eval {what}` wrote")
    return systems


def build_table(config: ReportConfig) -> dict:
    """The table's numbers: ``{"systems", "rows": [{key, label, higher_better, values, intervals, best, deltas}]}``."""
    vbench, expert = _read(config.vbench, "vbench"), _read(config.expert, "expert")
    systems = list(config.systems) or list(dict.fromkeys([*vbench, *expert, *config.runs]))
    if not systems:
        from cac_align.config import RecipeError

        raise RecipeError("no systems found in the inputs")
    rows = []
    for key, label, higher in METRICS:
        values: dict[str, float | None] = {}
        intervals: dict[str, list[float] | None] = {}
        if key == "expert_anomaly_rate":
            if not expert:
                continue
            for s in systems:
                e = expert.get(s)
                values[s] = e["rate"] if e and e.get("rate") is not None else None
                intervals[s] = [e["wilson_low"], e["wilson_high"]] if e and e.get("wilson_low") is not None else None
        else:
            if not vbench or not any(key in (vbench.get(s) or {}).get("dimensions", {}) for s in systems):
                continue
            for s in systems:
                entry = (vbench.get(s) or {}).get("dimensions", {}).get(key)
                values[s] = entry["mean"] if entry and entry.get("mean") is not None else None
                intervals[s] = None
        present = [v for v in values.values() if v is not None and not math.isnan(v)]
        best_value = (max(present) if higher else min(present)) if present else None
        base = values.get(systems[0])
        rows.append(
            {
                "key": key,
                "label": label,
                "higher_better": higher,
                "values": values,
                "intervals": intervals,
                "best": [s for s, v in values.items() if v is not None and best_value is not None and math.isclose(v, best_value, rel_tol=0, abs_tol=1e-12)],
                "deltas": {s: (v - base if v is not None and base is not None and s != systems[0] else None) for s, v in values.items()},
            }
        )
    return {"systems": systems, "rows": rows}


def _cell(row: dict, system: str, bold: tuple[str, str]) -> str:
    value = row["values"].get(system)
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:.4f}"
    if system in row["best"]:
        text = f"{bold[0]}{text}{bold[1]}"
    interval = row["intervals"].get(system)
    if interval:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    delta = row["deltas"].get(system)
    if delta is not None:
        text += f" ({delta:+.4f})"
    return text


def _arrow(row: dict) -> str:
    return "↑" if row["higher_better"] else "↓"


def _chart(row: dict, systems: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in systems if row["values"].get(s) is not None]
    values = [row["values"][s] for s in shown]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(shown), 3.2), dpi=100)
    colors = ["#3b7dd8" if s in row["best"] else "#9bb7de" for s in shown]
    errors = None
    if any(row["intervals"].get(s) for s in shown):
        errors = [[v - (row["intervals"].get(s) or [v, v])[0] for s, v in zip(shown, values)],
                  [(row["intervals"].get(s) or [v, v])[1] - v for s, v in zip(shown, values)]]
    ax.bar(range(len(shown)), values, color=colors, yerr=errors, capsize=4)
    ax.set_xticks(range(len(shown)), shown, rotation=20, ha="right")
    ax.set_title(f"{row['label']} {_arrow(row)}")
    for x, v in enumerate(values):  # inside the bar, clear of the error bars
        ax.annotate(f"{v:.3f}", (x, v / 2), ha="center", va="center", fontsize=8, color="white", fontweight="bold")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _reward_pictures(config: ReportConfig) -> list[tuple[str, Path, Path | None]]:
    """``(system, run folder, its reward.png or None)`` for each of ``runs``; a folder that does not
    exist is a one-line error, before anything is written."""
    from cac_align.config import RecipeError, relative_path_hint
    from cac_align.run.summary import REWARD_PNG

    found = []
    for system, run_dir in config.runs.items():
        folder = Path(run_dir)
        if not folder.is_dir():
            raise RecipeError(f"runs.{system}={run_dir}: no such run folder{relative_path_hint(run_dir)}; give a flow-grpo or nft out_dir")
        picture = folder / REWARD_PNG
        found.append((system, folder, picture if picture.is_file() else None))
    return found


def _picture_sections(pictures: list[tuple[str, Path, Path | None]], out: Path) -> tuple[list[str], str, dict]:
    """Copy each run's reward.png into ``charts/`` (byte for byte); the markdown lines, the HTML and
    report.json's ``training`` entry that show them (or say a folder has none)."""
    from cac_align.run.input_files import slug

    md, page, entries = (["", "## Reward per training step", ""] if pictures else []), "", {}
    for system, folder, picture in pictures:
        if picture is None:
            note = f"{folder} has no reward.png (a flow-grpo or nft run writes it when it ends)"
            md.append(f"- **{system}**: {note}")
            page += f"<p><b>{html.escape(system)}</b>: {html.escape(note)}</p>"
            entries[system] = {"run": str(folder), "picture": None}
            continue
        target = out / "charts" / f"reward_{slug(system)}.png"
        data = picture.read_bytes()
        target.write_bytes(data)
        md.append(f"![{system}: reward per step](charts/{target.name})")
        page += (f'<figure><img alt="{html.escape(system)}: reward per step" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
                 f"<figcaption>{html.escape(system)}: {html.escape(str(folder))}</figcaption></figure>")
        entries[system] = {"run": str(folder), "picture": f"charts/{target.name}"}
    if pictures:
        page = f"<h2>Reward per training step</h2>{page}"
    return md, page, entries


_JUDGE_MEAN = re.compile(r"^eval/(.+)/mean$")


def _held_out(folder: Path) -> dict | None:
    """A run's held-out means at its first evaluation and its last, from its ``metrics.jsonl``:
    ``{"first_step", "last_step", "means": {"reward" | judge: [first, last]}}`` (None for a value not
    logged), or None when it logged no evaluation."""
    from cac_align.run.folder import read_jsonl_log

    def finite(value: object) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None

    rows = [row for _, row in read_jsonl_log(folder / "metrics.jsonl") if isinstance(row.get("step"), int)]
    evals = [row for row in rows if any(k == "eval/reward_mean" or _JUDGE_MEAN.match(k) for k in row)]
    if not evals:
        return None
    first, last = evals[0], evals[-1]
    judges = list(dict.fromkeys(m.group(1) for row in evals for k in row if (m := _JUDGE_MEAN.match(k))))
    keys = {"reward": "eval/reward_mean", **{label: f"eval/{label}/mean" for label in judges}}
    return {"first_step": first["step"], "last_step": last["step"], "means": {name: [finite(first.get(k)), finite(last.get(k))] for name, k in keys.items()}}


def _run_sections(pictures: list[tuple[str, Path, Path | None]], out: Path) -> tuple[list[str], str, dict]:
    """Per training run: a link to its run page and its held-out means, first evaluation against last;
    the markdown lines, the HTML and report.json's ``page`` and ``held_out`` of each run."""
    from cac_align.eval.pages import relative
    from cac_align.eval.run_page import RUN_PAGE

    md, page, entries = (["", "## Training runs", ""] if pictures else []), "", {}
    for system, folder, _ in pictures:
        link = relative(folder / RUN_PAGE, out) if (folder / RUN_PAGE).is_file() else None
        held = _held_out(folder)
        entries[system] = {"page": link, "held_out": held}
        said = (f"[run page]({link}): its held-out videos across training" if link
                else f"{folder} has no {RUN_PAGE} (a flow-grpo or nft run writes it after each evaluation)")
        md += [f"### {system}", "", said, ""]
        page += f"<h3>{html.escape(system)}</h3><p>" + (f'<a href="{html.escape(link)}">run page</a>: its held-out videos across training'
                                                       if link else html.escape(said)) + "</p>"
        if held is None:
            md += ["No held-out evaluation in its metrics.jsonl.", ""]
            page += "<p>No held-out evaluation in its metrics.jsonl.</p>"
            continue
        first, last = held["first_step"], held["last_step"]
        cells = []
        for name, (a, b) in held["means"].items():
            shown = "trained reward" if name == "reward" else name
            change = f"{b - a:+.4f}" if a is not None and b is not None else "–"
            cells.append((shown, "–" if a is None else f"{a:.4f}", "–" if b is None else f"{b:.4f}", change))
        md += [f"| held-out mean | step {first} | step {last} | change |", "|---|---|---|---|"]
        md += [f"| {n} | {a} | {b} | {c} |" for n, a, b, c in cells] + [""]
        page += (f"<table><tr><th>held-out mean</th><th>step {first}</th><th>step {last}</th><th>change</th></tr>"
                 + "".join(f"<tr><th>{html.escape(n)}</th><td>{a}</td><td>{b}</td><td>{c}</td></tr>" for n, a, b, c in cells) + "</table>")
    if pictures:
        page = f"<h2>Training runs</h2>{page}"
    return md, page, entries


def run(config: ReportConfig) -> dict:
    """Build the table, write markdown, HTML, JSON and the charts; returns the table."""
    table = build_table(config)
    systems, rows = table["systems"], table["rows"]
    pictures = _reward_pictures(config)
    out = Path(config.out_dir)
    from cac_align.run.folder import RunFolder, config_fingerprint, write_text_atomic

    fingerprint = config_fingerprint(config, ("out_dir", "overwrite"))
    if not fingerprint.get("runs"):  # added later: without runs, a report folder of before it still matches
        fingerprint.pop("runs", None)
    folder = RunFolder(out, "report", ("report.md", "report.html", "report.json", "charts"), fingerprint, dataclasses.asdict(config),
                       overwrite=config.overwrite)
    folder.start()
    (out / "charts").mkdir(parents=True, exist_ok=True)
    header = "| metric | " + " | ".join(systems) + " |"
    md = [f"# {config.title}", "", f"Base model: **{systems[0]}** (deltas in brackets are against it). Best per row in bold.", "",
          header, "|" + "---|" * (len(systems) + 1)]
    md += [f"| {row['label']} {_arrow(row)} | " + " | ".join(_cell(row, s, ("**", "**")) for s in systems) + " |" for row in rows]
    md.append("")
    if not rows:  # runs alone: their pictures, no empty table
        md = [f"# {config.title}"]
    images = []
    for row in rows:
        path = out / "charts" / f"{row['key']}.png"
        _chart(row, systems, path)
        md.append(f"![{row['label']}](charts/{path.name})")
        images.append((row["label"], base64.b64encode(path.read_bytes()).decode("ascii")))
    runs_md, runs_page, runs = _run_sections(pictures, out)
    training_md, training_page, training = _picture_sections(pictures, out)
    md += runs_md + training_md
    if training:
        table["training"] = {system: {**entry, **runs[system]} for system, entry in training.items()}
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    head = "".join(f"<th>{html.escape(s)}</th>" for s in systems)
    body = "".join(
        f"<tr><th>{html.escape(row['label'])} {_arrow(row)}</th>" + "".join(f"<td>{_cell(row, s, ('<b>', '</b>'))}</td>" for s in systems) + "</tr>"
        for row in rows
    )
    charts = "".join(f'<figure><img alt="{html.escape(label)}" src="data:image/png;base64,{data}"></figure>' for label, data in images)
    write_text_atomic(
        out / "report.html",
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(config.title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5rem} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}"
        "th:first-child{text-align:left} figure{display:inline-block;margin:.5rem}</style></head><body>"
        f"<h1>{html.escape(config.title)}</h1>"
        + (f"<p>Base model: <b>{html.escape(systems[0])}</b>; deltas in brackets are against it; best per row in bold.</p>"
           f"<table><tr><th>metric</th>{head}</tr>{body}</table>" if rows else "")
        + f"{charts}{runs_page}{training_page}</body></html>"
    )
    write_text_atomic(out / "report.json", json.dumps(table, indent=1))
    shown = sum(entry["picture"] is not None for entry in training.values())
    linked = sum(entry["page"] is not None for entry in runs.values())
    pictures_said = f"; reward per step of {shown} and run pages of {linked} of {len(training)} run(s)" if training else ""
    print(f"report: {out / 'report.md'}, {out / 'report.html'} ({len(rows)} rows x {len(systems)} systems{pictures_said})")
    return table
