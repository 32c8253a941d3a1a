"""``cac-align eval expert``: export a blinded HTML labelling sheet of the systems' videos, or
analyze the experts' labels (anomaly rate per system with Wilson intervals, agreement,
McNemar's test; the statistics are in :mod:`cac_align.eval.expert`)."""

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
from typing import Any, ClassVar

import numpy as np

from cac_align.eval.expert import ACTIONS, LABELS, cohen_kappa, fleiss_kappa, load_labels, mcnemar, wilson_interval
from cac_align.eval.metrics import nan_to_none
from cac_align.run.folder import RunFolder, config_fingerprint, read_manifest, write_text_atomic
from cac_align.run.input_files import existing

__all__ = ["ExpertConfig", "run"]

EXPERT_OUTPUTS = ("key.json", "sheet.html", "sheet.csv", "videos", "expert.json", "expert.md")


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
    # the name a "takes a mapping" error writes in its example (cac_align.config)
    EXAMPLE_NAMES: ClassVar[dict[str, str]] = {"systems": "base"}

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


def _system_videos(name: str, source: str) -> list[dict]:
    """A system's videos (``cac-align score``'s input rules: a folder or a JSONL manifest) with
    the key they pair up by: the prompt, else the file name without extension."""
    from cac_align.config import RecipeError
    from cac_align.run.input_files import collect_inputs

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


def _analyze(config: ExpertConfig) -> dict:
    from cac_align.config import RecipeError

    out = Path(config.out_dir)
    for path in config.labels:  # the files the user names, before the export's key in out_dir
        existing(path, "labels", made_by="an expert's *Save answers* on sheet.html writes one (labels_<name>.json)")
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
