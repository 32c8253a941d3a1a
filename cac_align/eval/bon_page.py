"""The Best-of-N page: ``<out_dir>/bon.html``, each prompt's N candidates side by side.

``cac-align bon`` writes it after each prompt and at the end; it reads only the run folder
(``candidates.jsonl``, ``candidates/*.mp4``, ``summary.json``, ``cac_align_run.json``). Per prompt,
its candidates in order, each with its video (poster; plays on hover or click, muted and looped;
``♫ sound`` where the mp4 has a soundtrack), its seed, the reward's score and each component's (raw,
then normalized where the reward averages normalized scores), an invalid candidate's error, and each
judge's evidence (the window on the clip's timeline and the boxes on its frames, drawn by
:func:`cac_align.cac.evidence.write_evidence_png` as ``score``'s report draws them); the chosen one
is outlined and says by which rule (``argmax``, or ``fallback`` when no candidate was valid). At the
top, the summary: the mean score of the chosen against all candidates, per reward. The pictures it
draws go to ``bon_page/`` and are reused by every later call (:mod:`cac_align.eval.pages`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from cac_align.eval.pages import PAGE_SCRIPT, PAGE_STYLE, clip_assets, evidence_html, fmt, video_html
from cac_align.video import VideoError

__all__ = ["ASSETS", "BON_PAGE", "write_bon_page"]

BON_PAGE = "bon.html"
ASSETS = "bon_page"
_EAGER_PROMPTS = 2  # the first prompts fetch their posters with the page; the rest when scrolled to


def _candidate(out: Path, row: dict[str, Any], assets_root: Path, eager: bool) -> str:
    """One candidate's card: video, score, components, evidence, the chosen mark."""
    mp4 = out / str(row.get("video"))
    evidence = {str(k): v for k, v in (row.get("evidence") or {}).items() if isinstance(v, dict)}
    candidate = int(row.get("candidate", 0))
    label = f"prompt {row.get('prompt_index')}, candidate {candidate}"
    assets, video = None, '<p class="note">video missing</p>'
    if mp4.is_file():
        try:
            assets = clip_assets(mp4, assets_root / mp4.stem, evidence)
            video = video_html(mp4, assets, out, label, eager=eager)
        except VideoError as exc:  # one unreadable file is said in its card, the page still shows the rest
            video = f'<p class="error">{html.escape(str(exc))}</p>'
    chosen = bool(row.get("chosen"))
    rule = str(row.get("chosen_by"))
    said = "chosen" if rule == "argmax" else f"chosen ({html.escape(rule)})"  # a fallback (no candidate valid) says so
    badge = f'<span class="badge chosen" title="chosen by {html.escape(rule)}">&#10003; {said}</span>' if chosen else ""
    score = fmt(row.get("score"), 4) if row.get("valid") else "invalid"
    items = [f'<li data-key="{html.escape(str(row.get("reward")))}"><span class="name">{html.escape(str(row.get("reward")))}</span><span><b>{score}</b></span></li>']
    for name, part in (row.get("components") or {}).items():
        raw, normalized = fmt(part.get("raw")), part.get("normalized")
        shown = raw + (f' &rarr; {fmt(normalized)}' if normalized is not None and normalized != part.get("raw") else "")
        items.append(f'<li data-key="{html.escape(str(name))}"><span class="name">{html.escape(str(name))}</span><span>{shown}</span></li>')
    items.append(f'<li class="seed"><span class="name">seed</span><span>{html.escape(str(row.get("seed")))}</span></li>')
    error = f'<p class="error">{html.escape(str(row["error"]))}</p>' if row.get("error") else ""
    return (f'<div class="candidate{" chosen" if chosen else ""}" data-candidate="{candidate}" data-chosen="{str(chosen).lower()}">'
            f'<div class="head"><b>candidate {candidate}</b>{badge}</div>'
            f'{video}<ul class="scores">{"".join(items)}</ul>{error}{evidence_html(evidence, assets, out)}</div>')


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object the run wrote, or {} where there is none (yet) or it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _summary(out: Path, groups: dict[int, list[dict]], config: dict[str, Any]) -> str:
    """The lines at the top: what ran and, from summary.json, the chosen against all per reward."""
    n = config.get("n")
    generator = (config.get("generator") or {}).get("name") if isinstance(config.get("generator"), dict) else None
    facts = [f"<b>{len(groups)}</b> prompt{'s' if len(groups) != 1 else ''} done" + (f", <b>{n}</b> candidates each" if isinstance(n, int) else "")]
    if generator:
        facts.append(f"generator <code>{html.escape(str(generator))}</code>")
    fallback = sum(1 for rows in groups.values() for r in rows if r.get("chosen") and r.get("chosen_by") == "fallback")
    if fallback:
        facts.append(f'<span class="error">{fallback} prompt{"s" if fallback != 1 else ""} with no valid candidate (candidate 0 kept)</span>')
    summary = _read_json(out / "summary.json")
    rows = "".join(f"<tr><th class=\"p\">{html.escape(str(name))}</th><td>{fmt(r.get('chosen_mean'), 4)}</td><td>{fmt(r.get('all_mean'), 4)}</td></tr>"
                   for name, r in (summary.get("rewards") or {}).items() if isinstance(r, dict))
    table = (f'<table class="scores"><thead><tr><th class="p">reward</th><th>mean of the chosen</th><th>mean of all candidates</th></tr></thead>'
             f"<tbody>{rows}</tbody></table>") if rows else ""
    rates = _read_json(out / "anomaly_rates.json")  # the synthetic generator's candidates: their ground truth is known
    if all(isinstance(rates.get(k), (int, float)) for k in ("chosen", "random", "best_possible")):
        facts.append(f"anomaly rate of the chosen <b>{rates['chosen']:.2f}</b>, of a random choice {rates['random']:.2f}, "
                     f"of the best possible {rates['best_possible']:.2f} (the planted ground truth)")
    return f'<div class="facts">{"".join(f"<div class=fact>{f}</div>" for f in facts)}</div>{table}'


def write_bon_page(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/bon.html`` (atomically) and its pictures under ``bon_page/``.

    Args:
        out_dir: a ``cac-align bon`` run folder.

    Returns:
        The page's path.
    """
    from cac_align.config import RecipeError
    from cac_align.run.folder import read_jsonl_log, read_manifest, write_text_atomic

    out = Path(out_dir)
    try:
        config = (read_manifest(out) or {}).get("config") or {}
    except RecipeError:
        config = {}
    groups: dict[int, list[dict]] = {}
    for _, row in read_jsonl_log(out / "candidates.jsonl"):
        if isinstance(row.get("prompt_index"), int):
            groups.setdefault(row["prompt_index"], []).append(row)
    assets_root = out / ASSETS
    sections = []
    for number, (index, rows) in enumerate(sorted(groups.items())):
        rows = sorted(rows, key=lambda r: int(r.get("candidate", 0)))
        cards = "".join(_candidate(out, row, assets_root, number < _EAGER_PROMPTS) for row in rows)
        sections.append(f'<section class="prompt" id="p{index}" data-index="{index}"><h2>#{index} <span class="prompt-text">'
                        f'{html.escape(str(rows[0].get("prompt", "")))}</span></h2><div class="candidates">{cards}</div></section>')
    title = f"bon: {out.resolve().name}"
    body = "".join(sections) or '<p class="note">No prompt is done yet.</p>'
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>'
        f"<h1>{html.escape(title)}</h1>"
        '<p class="lede">Each prompt\'s candidates side by side: the reward chose the outlined one. Hover a video to play it, click to '
        "keep it playing. A judge's evidence: the window it examined on the clip's timeline (orange), its boxes on the frames (red).</p>"
        f"{_summary(out, groups, config)}{body}<script>{PAGE_SCRIPT}</script></body></html>\n"
    )
    path = out / BON_PAGE
    write_text_atomic(path, page)
    return path
