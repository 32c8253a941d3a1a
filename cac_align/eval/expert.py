"""Expert anomaly rate (CaC Table 2's last row). Job: ``cac-align eval expert``.

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

import base64
import csv
import dataclasses
import html
import io
import json
import math
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cac_align.eval.metrics import nan_to_none
from cac_align.run.folder import RunFolder, config_fingerprint, read_manifest, write_text_atomic

EXPERT_OUTPUTS = ("key.json", "sheet.html", "sheet.csv", "videos", "expert.json", "expert.md")

__all__ = [
    "ExpertConfig",
    "cohen_kappa",
    "fleiss_kappa",
    "load_labels",
    "mcnemar",
    "run",
    "wilson_interval",
]

ACTIONS = ("export", "analyze")
LABELS = ("anomalous", "normal")
Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal


@dataclass
class ExpertConfig:
    """Config of `cac-align eval expert`.

    Attributes:
        action: "export" (write the sheet) or "analyze" (read the experts' labels).
        out_dir: the sheet folder (export writes it, analyze reads ``key.json`` from it and
            writes ``expert.json`` / ``expert.md`` there).
        systems: name -> folder of videos or JSONL manifest (export).
        labels: the experts' files (analyze): JSON saved by the page, or the filled CSV.
        embed: embed the videos in the page (one file to send) or link copies beside it.
        seed: shuffles the items.
        title: the sheet's heading.
        tie_label: how a video with as many "anomalous" as "normal" votes counts.
        overwrite: (export) replace a sheet of another config in ``out_dir`` (its files only).
    """

    action: str = "export"
    out_dir: str = "outputs/expert"
    systems: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    embed: bool = True
    seed: int = 0
    title: str = "Video anomaly rating"
    tie_label: str = "anomalous"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        if self.tie_label not in LABELS:
            raise ValueError(f"tie_label must be one of {LABELS}, got {self.tie_label!r}")
        if self.action == "export" and not self.systems:
            raise ValueError("action=export needs systems: {name: folder or manifest.jsonl, ...}")
        if self.action == "analyze" and not self.labels:
            raise ValueError("action=analyze needs labels: [expert files saved by the sheet, ...]")


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
def _system_videos(name: str, source: str) -> list[dict]:
    """A system's videos (``cac-align score``'s input rules: a folder or a JSONL manifest) with
    the key they pair up by: the prompt, else the file name without extension."""
    from cac_align.config import RecipeError
    from cac_align.inputs import collect_inputs

    try:
        paths, prompts = collect_inputs(source, None)
    except RecipeError as exc:
        raise RecipeError(f"systems.{name}: {exc}") from None
    for video in paths:
        if not Path(video).exists():
            raise RecipeError(f"systems.{name}: video {video} does not exist")
    return [{"video": video, "prompt": prompt, "key": prompt if prompt is not None else Path(video).stem} for video, prompt in zip(paths, prompts)]


def _export(config: ExpertConfig) -> Path:
    import shutil

    out = Path(config.out_dir)
    entries = [dict(item, system=name) for name, source in config.systems.items() for item in _system_videos(name, source)]
    # the run folder (docs/run_folders.md), recorded once the inputs are checked
    fingerprint = config_fingerprint(config, ("out_dir", "overwrite", "action", "labels", "tie_label"))
    RunFolder(out, "eval-expert", EXPERT_OUTPUTS, fingerprint, dataclasses.asdict(config), overwrite=config.overwrite).start()
    order = np.random.default_rng(config.seed).permutation(len(entries))
    sheet_id = f"sheet-{config.seed}-{len(entries)}"
    key, items = {}, []
    for position, index in enumerate(order):
        entry = entries[index]
        item_id = f"item-{position + 1:03d}"
        suffix = Path(entry["video"]).suffix.lower()
        if config.embed:
            mime = mimetypes.guess_type(f"x{suffix}")[0] or "video/mp4"
            src = f"data:{mime};base64," + base64.b64encode(Path(entry["video"]).read_bytes()).decode("ascii")
        else:
            (out / "videos").mkdir(exist_ok=True)
            shutil.copyfile(entry["video"], out / "videos" / f"{item_id}{suffix}")
            src = f"videos/{item_id}{suffix}"
        key[item_id] = {"system": entry["system"], "video": entry["video"], "prompt": entry["prompt"], "key": entry["key"]}
        items.append({"id": item_id, "src": src, "prompt": entry["prompt"]})
    write_text_atomic(out / "key.json", json.dumps({"sheet_id": sheet_id, "items": key}, indent=1))
    write_text_atomic(out / "sheet.html", _sheet_html(config.title, sheet_id, items))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sheet_id", "item", "video_file", "prompt", "label", "type", "note"])
    for item in items:
        writer.writerow([sheet_id, item["id"], item["src"] if not config.embed else f"(in sheet.html, {item['id']})", item["prompt"] or "", "", "", ""])
    write_text_atomic(out / "sheet.csv", buffer.getvalue())
    print(f"expert sheet: {out / 'sheet.html'} ({len(items)} videos, {len(config.systems)} systems blinded); keep {out / 'key.json'} private")
    return out / "sheet.html"


def _sheet_html(title: str, sheet_id: str, items: list[dict]) -> str:
    from cac_align.cac.schema import ANOMALY_TYPES

    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in ANOMALY_TYPES)
    cards = []
    for item in items:
        i = html.escape(item["id"])
        prompt = f'<p class="prompt">Prompt: {html.escape(item["prompt"])}</p>' if item["prompt"] else ""
        cards.append(
            f'<section class="item" data-item="{i}"><h2>{i}</h2>'
            f'<video controls loop muted playsinline preload="metadata" src="{html.escape(item["src"], quote=True)}"></video>{prompt}'
            f'<div class="choice"><label><input type="radio" name="{i}" value="anomalous"> anomalous</label>'
            f'<label><input type="radio" name="{i}" value="normal"> normal</label></div>'
            f'<label>type (optional) <select name="{i}-type"><option value=""></option>{options}</select></label>'
            f'<label>note (optional) <input type="text" name="{i}-note" size="40"></label></section>'
        )
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__SHEET__", json.dumps(sheet_id)).replace("__ITEMS__", "\n".join(cards))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: .5rem 0; }
.item { border: 1px solid #ddd; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.item.done { border-color: #2a2; }
video { max-width: 100%; max-height: 360px; display: block; }
.choice label { margin-right: 1.5rem; font-size: 1.1rem; }
.prompt { color: #444; }
</style></head><body>
<header><h1>__TITLE__</h1>
<p>Watch each video and mark it <b>anomalous</b> if you see any local defect (a distorted object or body,
impossible motion, broken physics, garbled text), else <b>normal</b>. Your answers are kept in this browser
until you save them.</p>
<label>Your name <input id="expert" type="text" required></label>
<span id="progress"></span>
<button id="save-json" type="button">Save answers (JSON)</button>
<button id="save-csv" type="button">Save answers (CSV)</button>
</header>
<main>
__ITEMS__
</main>
<script>
const SHEET = __SHEET__;
const STORE = "cac-align-labels:" + SHEET;
const items = Array.from(document.querySelectorAll(".item"));
function collect() {
  return items.map(el => {
    const id = el.dataset.item;
    const picked = el.querySelector('input[type=radio]:checked');
    return {item: id, label: picked ? picked.value : null,
            type: el.querySelector('select').value || null,
            note: el.querySelector('input[type=text]').value || null};
  });
}
function refresh() {
  const answers = collect();
  items.forEach((el, k) => el.classList.toggle("done", answers[k].label !== null));
  const done = answers.filter(a => a.label !== null).length;
  document.getElementById("progress").textContent = done + " / " + answers.length + " labelled";
  localStorage.setItem(STORE, JSON.stringify({expert: document.getElementById("expert").value, answers}));
}
function restore() {
  const saved = JSON.parse(localStorage.getItem(STORE) || "null");
  if (!saved) return;
  document.getElementById("expert").value = saved.expert || "";
  for (const a of saved.answers) {
    const el = document.querySelector('.item[data-item="' + a.item + '"]');
    if (!el) continue;
    if (a.label) el.querySelector('input[value="' + a.label + '"]').checked = true;
    el.querySelector('select').value = a.type || "";
    el.querySelector('input[type=text]').value = a.note || "";
  }
}
function download(name, text, mime) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: mime}));
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
}
function expertName() {
  const name = document.getElementById("expert").value.trim();
  if (!name) { alert("Please enter your name first."); return null; }
  return name;
}
function fileName(name, ext) { return "labels_" + name.replace(/[^A-Za-z0-9_-]+/g, "_") + "." + ext; }
document.getElementById("save-json").addEventListener("click", () => {
  const name = expertName(); if (!name) return;
  download(fileName(name, "json"), JSON.stringify({sheet_id: SHEET, expert: name, answers: collect()}, null, 1), "application/json");
});
document.getElementById("save-csv").addEventListener("click", () => {
  const name = expertName(); if (!name) return;
  const quote = v => '"' + String(v === null ? "" : v).replace(/"/g, '""') + '"';
  const rows = [["sheet_id", "expert", "item", "label", "type", "note"]].concat(
    collect().map(a => [SHEET, name, a.item, a.label, a.type, a.note]));
  download(fileName(name, "csv"), rows.map(r => r.map(quote).join(",")).join("\\n") + "\\n", "text/csv");
});
document.querySelector("main").addEventListener("change", refresh);
document.querySelector("main").addEventListener("input", refresh);
document.getElementById("expert").addEventListener("input", refresh);
restore();
refresh();
</script></body></html>
"""


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


def _analyze(config: ExpertConfig) -> dict:
    from cac_align.config import RecipeError

    out = Path(config.out_dir)
    manifest = read_manifest(out)
    if manifest is None or manifest["job"] != "eval-expert" or not (out / "key.json").exists():
        held = f" (it holds a {manifest['job']} run)" if manifest is not None and manifest["job"] != "eval-expert" else ""
        raise RecipeError(f"{out / 'key.json'} of a recorded eval-expert export not found{held}: analyze reads the key that action=export wrote there")
    key = json.loads((out / "key.json").read_text())
    experts: dict[str, dict[str, dict]] = {}
    for path in config.labels:
        name, answers = load_labels(path, key["sheet_id"])
        unknown = sorted(set(answers) - set(key["items"]))
        if unknown:
            raise ValueError(f"{path}: items {unknown[:5]} are not in this sheet")
        if name in experts:
            name = f"{name} ({Path(path).name})"
        experts[name] = answers
    systems = sorted({v["system"] for v in key["items"].values()})

    # consensus per item: majority of the experts who labelled it
    consensus: dict[str, str] = {}
    for item in key["items"]:
        votes = [answers[item]["label"] for answers in experts.values() if item in answers]
        if votes:
            anomalous = votes.count("anomalous")
            consensus[item] = "anomalous" if anomalous * 2 > len(votes) else "normal" if anomalous * 2 < len(votes) else config.tie_label

    def rate(labels: list[str]) -> dict:
        k, n = labels.count("anomalous"), len(labels)
        low, high = wilson_interval(k, n)
        return {"anomalous": k, "n": n, "rate": k / n if n else math.nan, "wilson_low": low, "wilson_high": high}

    per_system = {}
    for system in systems:
        items = [i for i, v in key["items"].items() if v["system"] == system]
        entry = rate([consensus[i] for i in items if i in consensus])
        entry["unlabelled"] = sum(i not in consensus for i in items)
        entry["per_expert"] = {name: rate([a[i]["label"] for i in items if i in a]) for name, a in experts.items()}
        per_system[system] = entry

    names = list(experts)
    agreement: dict[str, Any] = {"experts": names}
    shared = sorted(set(key["items"]).intersection(*(set(a) for a in experts.values()))) if experts else []
    agreement["items_all_labelled"] = len(shared)
    if len(names) >= 2 and shared:
        agreement["cohen"] = {
            f"{a} | {b}": cohen_kappa([experts[a][i]["label"] for i in shared], [experts[b][i]["label"] for i in shared])
            for x, a in enumerate(names) for b in names[x + 1 :]
        }
        counts = [[sum(experts[e][i]["label"] == c for e in names) for c in LABELS] for i in shared]
        agreement["fleiss"] = fleiss_kappa(counts)

    paired = {}
    for x, first in enumerate(systems):
        for second in systems[x + 1 :]:
            by_key = {s: {v["key"]: consensus.get(i) for i, v in key["items"].items() if v["system"] == s} for s in (first, second)}
            common = [k for k in by_key[first] if k in by_key[second] and by_key[first][k] and by_key[second][k]]
            b = sum(by_key[first][k] == "anomalous" and by_key[second][k] == "normal" for k in common)
            c = sum(by_key[first][k] == "normal" and by_key[second][k] == "anomalous" for k in common)
            paired[f"{first} vs {second}"] = dict(mcnemar(b, c), prompts=len(common))
    result = {"systems": per_system, "agreement": agreement, "mcnemar": paired, "tie_label": config.tie_label}
    write_text_atomic(out / "expert.json", json.dumps(nan_to_none(result), indent=1))  # outputs of the export's run
    write_text_atomic(out / "expert.md", _markdown(result))
    for system, entry in per_system.items():
        print(f"{system}: anomaly rate {entry['rate']:.3f} [{entry['wilson_low']:.3f}, {entry['wilson_high']:.3f}] (n={entry['n']})")
    print(f"expert: {out / 'expert.md'}, {out / 'expert.json'}")
    return result


def _markdown(result: dict) -> str:
    lines = ["# Expert anomaly rate", "", "| system | anomaly rate | 95% Wilson | anomalous / n | unlabelled |", "|---|---|---|---|---|"]
    for system, e in result["systems"].items():
        lines.append(f"| {system} | {e['rate']:.3f} | [{e['wilson_low']:.3f}, {e['wilson_high']:.3f}] | {e['anomalous']} / {e['n']} | {e['unlabelled']} |")
    agreement = result["agreement"]
    lines += ["", f"Experts: {', '.join(agreement['experts'])}; items labelled by all: {agreement['items_all_labelled']}."]
    if "fleiss" in agreement:
        lines.append(f"Fleiss' kappa: {agreement['fleiss']:.3f}. Cohen's kappa: " + ", ".join(f"{k}: {v:.3f}" for k, v in agreement["cohen"].items()) + ".")
    if result["mcnemar"]:
        lines += ["", "| pair | prompts | b (only first anomalous) | c (only second) | chi-square | exact p |", "|---|---|---|---|---|---|"]
        for pair, m in result["mcnemar"].items():
            stat = "–" if math.isnan(m["statistic"]) else f"{m['statistic']:.3f}"
            lines.append(f"| {pair} | {m['prompts']} | {m['b']} | {m['c']} | {stat} | {m['p_value']:.4f} |")
    return "\n".join(lines) + "\n"


def run(config: ExpertConfig) -> Any:
    """Export the sheet (returns its path) or analyze the labels (returns the numbers)."""
    return _export(config) if config.action == "export" else _analyze(config)
