"""The run page: ``<out_dir>/run.html``, what training did to the held-out videos, at a glance.

A trainer (``flow-grpo``, ``nft``) calls :func:`write_run_page` after every evaluation and at the
end; a user opens the page (or serves the run folder: ``python -m http.server``) and reloads it as
the run goes. It reads only the run folder's records (docs/flow_grpo.md, "The run page"):

- ``eval/step_NNNNNN/samples.jsonl``: per held-out prompt its seed, its saved mp4 (the first
  ``eval_videos`` prompts), the trained reward's and each held-out judge's score, and each judge's
  evidence (``{"status", "window_s", "boxes"}``);
- ``metrics.jsonl``: the curves and the watch's alarms (``watch/fired``: what alarmed at a step);
- ``best.json``: the best evaluated step by the run's rule;
- ``cac_align_run.json``: the job and its settings (``watch.margin``, ``eval_videos``).

What it shows, top to bottom: the run in a few lines (the held-out means at the first evaluation and
the last, the best step, the alarms); the grid, one row per held-out prompt with a saved video and one
column per evaluation (step 0 first), each cell the video (its poster; plays on hover or click,
muted and looped; its soundtrack behind a button where the mp4 has one), the trained reward and
every held-out judge's score with the change since the first evaluation, a cell whose judge fell by
more than the watch's margin outlined in red, and each judge's evidence (the window on the clip's
timeline, the boxes on its frames: the drawing of ``score``'s report); the curves (the reward, its
components, the held-out judges, the KL, the guards' fractions) with the alarms and the best step
marked; every held-out prompt's scores per evaluation in tables (videos are saved only for the first
``eval_videos``); the settings.

It scales to 100 held-out prompts x 30 evaluations: a video fetches nothing until it plays and its
poster only once scrolled to; the pictures (``run_page/``) are drawn once per saved video and reused
by every later call, so a call after an evaluation draws that evaluation's and no other.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cac_align.eval.pages import PAGE_SCRIPT, PAGE_STYLE, Marker, clip_assets, evidence_html, fmt, line_chart, video_html
from cac_align.video import VideoError

__all__ = ["ASSETS", "RUN_PAGE", "Evaluation", "read_evaluations", "write_run_page"]

RUN_PAGE = "run.html"
ASSETS = "run_page"  # the page's pictures, beside it
REWARD = "reward"  # the trained reward's key in a sample's scores
DEFAULT_MARGIN = 0.02  # the watch's default margin (cac_align.run.watch.WatchConfig)
_STEP_FOLDER = re.compile(r"^step_(\d{6,})$")
_SAVED_MP4 = re.compile(r"^(\d{5})_(.*)\.mp4$")
_JUDGE_MEAN = re.compile(r"^eval/(.+)/mean$")
_EAGER_ROWS = 3  # the grid's first rows fetch their posters with the page (on screen when it opens); the rest when scrolled to


@dataclass
class Evaluation:
    """One evaluation's records.

    Attributes:
        step: the training step it evaluated (0: the model the run started from).
        folder: ``eval/step_NNNNNN``.
        samples: per held-out prompt index, its row (``prompt``, ``seed``, ``video``: the mp4's name
            in ``folder`` or None, ``scores``: {key: float or None}, ``evidence``: {judge: verdict}).
    """

    step: int
    folder: Path
    samples: dict[int, dict[str, Any]] = field(default_factory=dict)


def _sample(row: dict[str, Any]) -> dict[str, Any] | None:
    """A samples.jsonl row with the fields the page reads, or None for one it cannot use."""
    if not isinstance(row.get("index"), int):
        return None
    scores = {str(k): (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None)
              for k, v in (row.get("scores") or {}).items()}
    evidence = {str(k): v for k, v in (row.get("evidence") or {}).items() if isinstance(v, dict)}
    video = row.get("video") if isinstance(row.get("video"), str) else None
    return {"prompt": str(row.get("prompt") or ""), "seed": row.get("seed"), "video": video, "scores": scores, "evidence": evidence}


def read_evaluations(out_dir: str | Path) -> list[Evaluation]:
    """Every ``eval/step_NNNNNN/`` of a run folder, by step. A folder without ``samples.jsonl`` (a
    run from before it) gives its mp4s with no scores (the prompt read back from the file's name)."""
    from cac_align.run.folder import read_jsonl_log

    root = Path(out_dir) / "eval"
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        match = _STEP_FOLDER.match(folder.name)
        if not match or not folder.is_dir():
            continue
        evaluation = Evaluation(int(match.group(1)), folder)
        records = folder / "samples.jsonl"
        if records.is_file():
            for _, row in read_jsonl_log(records):
                sample = _sample(row)
                if sample is not None:
                    evaluation.samples[int(row["index"])] = sample
        else:
            for mp4 in sorted(folder.glob("*.mp4")):
                saved = _SAVED_MP4.match(mp4.name)
                if saved:
                    evaluation.samples[int(saved.group(1))] = {"prompt": saved.group(2).replace("-", " "), "seed": None, "video": mp4.name,
                                                               "scores": {}, "evidence": {}}
        found.append(evaluation)
    return sorted(found, key=lambda e: e.step)


# ---------------------------------------------------------------------------------------
# What the page reads besides the evaluations
# ---------------------------------------------------------------------------------------
@dataclass
class _Run:
    out: Path
    job: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.jsonl, whole lines with an integer step
    evaluations: list[Evaluation]
    best: dict[str, Any] | None
    margin: float
    problems: list[str]


def _read_run(out: Path) -> _Run:
    from cac_align.config import RecipeError
    from cac_align.run.folder import read_jsonl_log, read_manifest

    problems = []
    try:
        manifest = read_manifest(out) or {}
    except RecipeError as exc:  # the page still shows what it can; it says why the settings are missing
        manifest, problems = {}, [str(exc)]
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    watch = config.get("watch") if isinstance(config.get("watch"), dict) else {}
    margin = watch.get("margin", DEFAULT_MARGIN)
    margin = float(margin) if isinstance(margin, (int, float)) and math.isfinite(margin) else DEFAULT_MARGIN
    rows = [row for _, row in read_jsonl_log(out / "metrics.jsonl") if isinstance(row.get("step"), int)]
    best = None
    if (out / "best.json").is_file():
        try:
            best = json.loads((out / "best.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{out / 'best.json'} is not readable JSON ({exc})")
        best = best if isinstance(best, dict) else None
    return _Run(out, str(manifest.get("job") or "training"), config, rows, read_evaluations(out), best, margin, problems)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _alarms(rows: list[dict[str, Any]]) -> dict[int, list[str]]:
    """``{step: what alarmed}`` from ``watch/fired`` (or, in a run from before it, a ``watch/alarms``
    count above 0, said as "alarm")."""
    fired: dict[int, list[str]] = {}
    for row in rows:
        names = row.get("watch/fired")
        if isinstance(names, list) and names:
            fired.setdefault(int(row["step"]), []).extend(str(n) for n in names)
        elif "watch/fired" not in row and _finite(row.get("watch/alarms")) and row["watch/alarms"] > 0:
            fired.setdefault(int(row["step"]), []).append("alarm")
    return fired


def _score_keys(evaluations: list[Evaluation]) -> list[str]:
    """The trained reward first, then each held-out judge in the order the records name them."""
    keys = [REWARD]
    for evaluation in evaluations:
        for sample in evaluation.samples.values():
            keys.extend(k for k in sample["scores"] if k not in keys)
    return keys


def _delta(base: Evaluation | None, index: int, key: str, value: float | None) -> float | None:
    """``value`` less the same prompt's ``key`` at the first evaluation (None where either is missing)."""
    if base is None or value is None:
        return None
    first = base.samples.get(index, {}).get("scores", {}).get(key)
    return None if first is None else value - first


# ---------------------------------------------------------------------------------------
# The page's parts
# ---------------------------------------------------------------------------------------
def _summary(run: _Run, alarms: dict[int, list[str]]) -> str:
    """The few lines at the top: what ran, the held-out means first and last, the best step, the alarms."""
    evaluations = run.evaluations
    config = run.config
    prompts = max((len(e.samples) for e in evaluations), default=0)
    saved = config.get("eval_videos")
    facts = []
    if evaluations:
        steps = [e.step for e in evaluations]
        facts.append(f"<b>{len(steps)}</b> evaluation{'s' if len(steps) != 1 else ''}: step{'s' if len(steps) != 1 else ''} "
                     f"{', '.join(map(str, steps[:12]))}{', &hellip;' if len(steps) > 12 else ''}")
    if prompts:
        facts.append(f"<b>{prompts}</b> held-out prompt{'s' if prompts != 1 else ''}"
                     + (f", videos of the first <b>{min(int(saved), prompts)}</b> (<code>eval_videos</code>)" if isinstance(saved, int) else ""))
    trained = [row["step"] for row in run.rows if any(k.startswith(("train/", "reward/")) for k in row)]  # a training step's line
    if trained:
        facts.append(f"trained to step <b>{max(trained)}</b>" + (f" of {config['steps']}" if isinstance(config.get("steps"), int) else ""))
    means = []
    evals = [row for row in run.rows if any(k == "eval/reward_mean" or _JUDGE_MEAN.match(k) for k in row)]
    for key in ["eval/reward_mean"] + sorted({k for row in evals for k in row if _JUDGE_MEAN.match(k)}):
        points = [(row["step"], row[key]) for row in evals if _finite(row.get(key))]
        if len(points) >= 1:
            (s0, v0), (s1, v1) = points[0], points[-1]
            name = "trained reward" if key == "eval/reward_mean" else f"judge {_JUDGE_MEAN.match(key).group(1)}"  # type: ignore[union-attr]
            change = f" ({'+' if v1 - v0 >= 0 else '&minus;'}{abs(v1 - v0):.3f})" if s1 != s0 else ""
            means.append(f"{html.escape(name)} <b>{v0:.3f}</b> at step {s0} &rarr; <b>{v1:.3f}</b> at step {s1}{change}")
    best = run.best
    if best is not None:
        if best.get("step") is None:
            facts.append(f"best: none qualifies{' (' + html.escape(str(best['rule'])) + ')' if best.get('rule') else ''}")
        else:
            gain = ""
            base = (best.get("baseline") or {}).get("reward")
            if _finite(best.get("reward")) and _finite(base):
                gain = f", reward {best['reward'] - base:+.3f} since step 0"
            facts.append(f'<span class="badge best">&#9733; best</span> step <b>{best["step"]}</b>{gain}'
                         + (f' <span class="note">({html.escape(str(best["rule"]))})</span>' if best.get("rule") else ""))
    if alarms:
        said = "; ".join(f"step {step}: {html.escape(', '.join(names))}" for step, names in sorted(alarms.items()))
        facts.append(f'<span class="badge alarm">&#9888; watch</span> fired at {said}')
    elif any("watch/alarms" in row or "watch/fired" in row for row in run.rows):  # a run with held-out judges to watch
        facts.append("the watch did not fire")
    lines = "".join(f'<div class="fact">{f}</div>' for f in facts)
    means_html = f'<p class="lede">Held-out means: {"; ".join(means)}.</p>' if means else ""
    return f'<div class="facts">{lines}</div>{means_html}'


def _column_classes(run: _Run) -> dict[int, str]:
    """Per evaluated step its column's classes: "best" for the best step, "mid" for the columns the
    compact view hides (all but the first, the best and the last)."""
    steps = [e.step for e in run.evaluations]
    best = (run.best or {}).get("step")
    classes = {}
    for step in steps:
        names = []
        if step == best:
            names.append("best")
        if step not in (steps[0], steps[-1], best):
            names.append("mid")
        classes[step] = " ".join(names)
    return classes


def _score_list(run: _Run, base: Evaluation | None, index: int, sample: dict[str, Any], keys: list[str]) -> tuple[str, bool]:
    """A cell's scores, each with its change since the first evaluation; whether a judge fell by
    more than the watch's margin."""
    items, fell_any = [], False
    for key in keys:
        value = sample["scores"].get(key)
        if key not in sample["scores"] and key != REWARD:
            continue
        delta = _delta(base, index, key, value)
        fell = key != REWARD and delta is not None and delta < -run.margin
        fell_any |= fell
        change = ""
        if delta is not None:
            cls = "fell" if fell else ("up" if delta > 0 else "down")
            arrow = " &#9660;" if fell else ""
            change = f'<span class="delta {cls}">{"+" if delta >= 0 else "&minus;"}{abs(delta):.3f}{arrow}</span>'
        title = f"{key}: {fmt(value, 4)}" + (f", {delta:+.4f} since step {base.step}" if delta is not None and base is not None else "")
        if fell:
            title += f": fell by more than the watch's margin ({run.margin:g})"
        items.append(f'<li class="{"fell" if fell else ""}" data-key="{html.escape(key)}" title="{html.escape(title)}">'
                     f'<span class="name">{html.escape(key)}</span><span><b>{fmt(value)}</b>{change}</span></li>')
    return f'<ul class="scores">{"".join(items)}</ul>', fell_any


def _with_videos(evaluations: list[Evaluation]) -> list[int]:
    """The held-out prompts with a saved video at some evaluation: the grid's rows."""
    return sorted({i for e in evaluations for i, s in e.samples.items() if s["video"] and (e.folder / s["video"]).is_file()})


def _grid(run: _Run, keys: list[str], alarms: dict[int, list[str]], assets_root: Path, shown: list[int]) -> str:
    """The grid: a row per held-out prompt with a saved video, a column per evaluation."""
    evaluations, out = run.evaluations, run.out
    base = evaluations[0] if evaluations else None
    if not shown:
        return '<p class="note">No evaluation has saved a video yet.</p>'
    classes = _column_classes(run)
    best = (run.best or {}).get("step")
    head = ['<th class="prompt">held-out prompt</th>']
    for e in evaluations:
        badges = ""
        if e.step == best:
            badges += ' <span class="badge best">&#9733; best</span>'
        if e.step in alarms:
            badges += f' <span class="badge alarm" title="{html.escape(", ".join(alarms[e.step]))}">&#9888; {html.escape(", ".join(alarms[e.step]))}</span>'
        label = "step 0 (base)" if e.step == 0 else f"step {e.step}"
        head.append(f'<th class="step {classes[e.step]}" data-step="{e.step}">{label}{badges}</th>')
    body = []
    for row, index in enumerate(shown):
        first = next(e.samples[index] for e in evaluations if index in e.samples)
        seed = f'<div class="seed">#{index}{", seed " + html.escape(str(first["seed"])) if first["seed"] is not None else ""}</div>'
        cells = [f'<th class="prompt"><div class="prompt-text">{html.escape(first["prompt"])}</div>{seed}</th>']
        for e in evaluations:
            sample = e.samples.get(index)
            mp4 = e.folder / sample["video"] if sample and sample["video"] else None
            if sample is None or mp4 is None or not mp4.is_file():
                cells.append(f'<td class="cell empty {classes[e.step]}" data-step="{e.step}" data-index="{index}"><p class="note">no video</p></td>')
                continue
            scores, fell = _score_list(run, base if e is not base else None, index, sample, keys)  # the first column has no change
            try:
                assets = clip_assets(mp4, assets_root / e.folder.name / f"{index:05d}", sample["evidence"])
            except VideoError as exc:  # the page is not the place to stop a run: the cell says it
                cells.append(f'<td class="cell {classes[e.step]}" data-step="{e.step}" data-index="{index}"><p class="error">{html.escape(str(exc))}</p>'
                             f"{scores}</td>")
                continue
            cls = " ".join(c for c in ("cell", classes[e.step], "fell" if fell else "") if c)
            cells.append(f'<td class="{cls}" data-step="{e.step}" data-index="{index}">'
                         f'{video_html(mp4, assets, out, f"step {e.step}, prompt {index}", eager=row < _EAGER_ROWS)}{scores}'
                         f'{evidence_html(sample["evidence"], assets, out)}</td>')
        body.append(f'<tr id="p{index}" data-index="{index}">{"".join(cells)}</tr>')
    return (f'<div class="toolbar"><button type="button" class="on" data-view="all" data-target="grid">every evaluation</button> '
            '<button type="button" data-view="compact" data-target="grid">step 0, best, last</button></div>'
            f'<div class="scroll"><table class="grid" id="grid"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _score_tables(run: _Run, keys: list[str], shown: set[int]) -> str:
    """Every held-out prompt's scores per evaluation, one table per score (the trained reward's and the
    first judge's open), the last column the change from the first evaluation to the last; a prompt
    with videos in the grid links to its row there."""
    evaluations = run.evaluations
    indices = sorted({i for e in evaluations for i in e.samples})
    if not indices or not any(s["scores"] for e in evaluations for s in e.samples.values()):
        return '<p class="note">No scores recorded yet.</p>'
    base, last = evaluations[0], evaluations[-1]
    prompts = {i: next(e.samples[i]["prompt"] for e in evaluations if i in e.samples) for i in indices}
    tables = []
    for key in keys:
        if not any(key in s["scores"] for e in evaluations for s in e.samples.values()):
            continue
        head = "".join(f'<th data-step="{e.step}">{e.step}</th>' for e in evaluations)
        rows = []
        for i in indices:
            cells = []
            for e in evaluations:
                value = e.samples.get(i, {}).get("scores", {}).get(key)
                delta = _delta(base, i, key, value) if e is not base else None
                cls = "" if delta is None else ("fell" if key != REWARD and delta < -run.margin else ("up" if delta > 0 else "down" if delta < 0 else ""))
                tip = f' title="{delta:+.4f} since step {base.step}"' if delta is not None else ""
                cells.append(f'<td class="{cls}"{tip}>{fmt(value)}</td>')
            change = _delta(base, i, key, last.samples.get(i, {}).get("scores", {}).get(key)) if last is not base else None
            cells.append(f"<td><b>{'' if change is None else f'{change:+.3f}'}</b></td>")
            prompt = html.escape(prompts[i])
            name = f'<a href="#p{i}" title="its videos, in the grid">#{i}</a>' if i in shown else f"#{i}"
            rows.append(f'<tr data-index="{i}"><th class="p" title="{prompt}">{name} {prompt}</th>{"".join(cells)}</tr>')
        name = "the trained reward" if key == REWARD else f"held-out judge {key}"
        tables.append(f'<details class="scores-of"{" open" if len(tables) < 2 else ""} data-key="{html.escape(key)}"><summary>{html.escape(name)}</summary>'
                      f'<div class="scroll"><table class="scores"><thead><tr><th class="p">prompt \\ step</th>{head}<th>change</th></tr></thead>'
                      f'<tbody>{"".join(rows)}</tbody></table></div></details>')
    return "".join(tables)


def _curves(run: _Run, alarms: dict[int, list[str]]) -> str:
    """The charts: the reward (trained, held-out), its components, the held-out judges (and the
    components on the held-out prompts), the KL, the guards' fractions; alarms and best marked."""
    from cac_align.run.summary import reward_curves

    rows = run.rows
    markers = [Marker(step, "alarm", f"step {step}: the watch fired ({', '.join(names)})") for step, names in sorted(alarms.items())]
    best = (run.best or {}).get("step")
    if isinstance(best, int):
        markers.append(Marker(best, "best", f"step {best}: the best evaluated step"))

    def series(match: Any) -> dict[str, tuple[list[int], list[float]]]:
        keys = list(dict.fromkeys(k for row in rows for k in row if match(k)))
        found = {}
        for key in keys:
            points = [(int(row["step"]), float(row[key])) for row in rows if _finite(row.get(key))]
            if points:
                found[key] = ([s for s, _ in points], [v for _, v in points])
        return found

    reward = reward_curves(rows)
    charts = [
        line_chart("Reward: trained (per step) and held-out (per evaluation)", {k: v for k, v in reward.items() if k in ("reward/mean", "eval/reward_mean")},
                   markers, dashed=["eval/reward_mean"]),
        line_chart("Reward components", {k: v for k, v in reward.items() if k.startswith("reward/") and k != "reward/mean"}, markers),
        line_chart("Held-out judges", {**{k: v for k, v in reward.items() if _JUDGE_MEAN.match(k)},
                                        **series(lambda k: k.startswith("eval/components/"))}, markers),
        line_chart("KL to the reference", series(lambda k: k in ("train/kl", "train/audio_kl", "train/confine_kl")), markers),
        line_chart("Guards", series(lambda k: (k.startswith("regularize/") and k.endswith("_fraction")) or k == "regularize/cosine"), markers),
    ]
    charts = [c for c in charts if c]
    if not charts:
        return '<p class="note">Nothing logged yet.</p>'
    legend = ('<p class="note">Dashed red lines: the watch fired (hover for what); green: the best evaluated step. Dots: evaluations '
              "(hover for the value).</p>")
    return f'<div class="charts">{"".join(charts)}</div>{legend}'


def _settings(run: _Run) -> str:
    from omegaconf import OmegaConf

    if not run.config:
        return '<p class="note">No settings recorded (no readable cac_align_run.json).</p>'
    text = OmegaConf.to_yaml(OmegaConf.create(run.config))
    return f'<details><summary>the resolved config (from cac_align_run.json)</summary><pre class="settings">{html.escape(text)}</pre></details>'


def _prune_assets(assets_root: Path, evaluations: list[Evaluation]) -> None:
    """Drop the pictures of evaluations whose folder is gone (a resumed run redoes the steps after its
    checkpoint): only ``step_N`` folders of the page's own."""
    kept = {e.folder.name for e in evaluations}
    for folder in assets_root.iterdir() if assets_root.is_dir() else []:
        if folder.is_dir() and _STEP_FOLDER.match(folder.name) and folder.name not in kept:
            shutil.rmtree(folder, ignore_errors=True)


def write_run_page(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/run.html`` (atomically) and the pictures it needs under ``run_page/``.

    Args:
        out_dir: a training run's folder (``flow-grpo``, ``nft``).

    Returns:
        The page's path.
    """
    from cac_align.run.folder import write_text_atomic

    out = Path(out_dir)
    run = _read_run(out)
    assets_root = out / ASSETS
    _prune_assets(assets_root, run.evaluations)
    alarms = _alarms(run.rows)
    keys = _score_keys(run.evaluations)
    shown = _with_videos(run.evaluations)
    base = run.evaluations[0] if run.evaluations else None
    baseline = ("" if base is None else "step 0, the model the run started from" if base.step == 0
                else f"step {base.step}, the first evaluation (this run has no step 0)")
    prompts = max((len(e.samples) for e in run.evaluations), default=0)
    saved = run.config.get("eval_videos")
    beyond = (f"Videos are saved for the first {saved} of the {prompts} held-out prompts (<code>eval_videos</code>); the tables below the "
              "curves give every prompt's scores at every evaluation." if isinstance(saved, int) and prompts > saved else "")
    problems = "".join(f'<p class="error">{html.escape(p)}</p>' for p in run.problems)
    title = f"{run.job}: {out.resolve().name}"
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>'
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="lede">What training did to the held-out videos: the same prompt and seed at every evaluation. Written {written}; '
        "rewritten after each evaluation (reload to see new ones).</p>"
        f"{problems}{_summary(run, alarms)}"
        "<h2>Held-out videos across training</h2>"
        f'<p class="note">Each cell: the video (hover to play, click to keep playing), the trained reward and every held-out judge, '
        f"with the change since {baseline or 'the first evaluation'}; a cell is outlined in red where a judge fell by more than the watch's "
        f"margin ({run.margin:g}). A judge's evidence: the window it examined on the clip's timeline (orange), its boxes on the frames (red). "
        f"{beyond}</p>"
        f"{_grid(run, keys, alarms, assets_root, shown)}"
        f"<h2>Curves</h2>{_curves(run, alarms)}"
        f"<h2>Every held-out prompt's scores</h2>{_score_tables(run, keys, set(shown))}"
        f"<h2>Settings</h2>{_settings(run)}"
        f"<script>{PAGE_SCRIPT}</script></body></html>\n"
    )
    path = out / RUN_PAGE
    write_text_atomic(path, page)
    return path
