"""The report of a scoring run: one HTML page, plus a PNG per video where CaC gave evidence.

Per video the page shows the score, its sub-scores (UnifiedReward dimensions, each component
of a combined reward raw and normalized) and, when the reward localizes (CaC, Skyra), the final
status, a timeline with the window it points at and the frames with their boxes drawn (like
CaC Fig. S2); invalid videos show their error. Videos with a ground truth (the synthetic demo's)
get the planted windows drawn under the judge's and a line of what the verdict got right: the
status, the window (temporal IoU) and the boxes (on the planted defect or not), graded by
:func:`cac_align.eval.bench.grade_evidence` in the score job (``graded`` of each row).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from cac_align.regions import find_evidence
from cac_align.run.folder import write_text_atomic
from cac_align.video import Video

__all__ = ["cac_details", "evidence_path", "write_evidence_png", "write_repair_report", "write_report"]

_BOX_COLOR = (255, 40, 40)


def cac_details(details: dict) -> dict | None:
    """The localized verdict inside a reward's per-video details: the first with CaC's evidence
    fields (``window_s`` and ``boxes``, beside its ``status``; CaC itself, Skyra, or such a
    component of a combined reward), or None when the reward localizes nothing
    (:func:`cac_align.regions.find_evidence`)."""
    return find_evidence(details)  # type: ignore[return-value]


def evidence_path(out_dir: str | Path, index: int) -> Path:
    """Where the evidence PNG of the ``index``-th scored video goes."""
    return Path(out_dir) / "evidence" / f"{index:05d}.png"


_MAX_SHOWN = 8  # turn-2 frames drawn under the timeline


def write_evidence_png(
    window_s: Sequence[float] | None,
    boxes: Sequence[dict],
    video: Video,
    path: Path,
    thumb_height: int = 96,
    truth_windows: Sequence[Sequence[float]] = (),
    max_shown: int = _MAX_SHOWN,
) -> None:
    """Timeline (top) and up to ``max_shown`` turn-2 frames with boxes (bottom), on a canvas as wide
    as ``max_shown`` frames whatever the number shown, so that one report's timelines share one
    scale. The one drawing of a judge's evidence: ``score``'s and ``repair``'s reports and the run
    and Best-of-N pages (:mod:`cac_align.eval.run_page`) all call it.

    Args:
        window_s: the window turn 2 looked at (source seconds), or None.
        boxes: CaC's per-frame boxes, ``{"frame", "time_s", "type", "boxes"}`` with 0–1000 boxes.
        video: the decoded source video.
        path: where the PNG goes.
        truth_windows: where anomalies were planted (source seconds), drawn in green on a second
            timeline under the judge's (orange), so a window that missed shows as one.
        max_shown: frames drawn at most (8 in the reports; fewer where the picture is shown small,
            so each frame stays large enough to see its boxes); with more boxed frames than that,
            ``max_shown`` of them evenly spread, the first and the last included.

    The PNG is written beside ``path`` and renamed into place, so a reader (a page that reuses the
    pictures it drew before) never finds half of one.
    """
    from PIL import Image, ImageDraw

    scale = thumb_height / video.height
    thumb_w = max(1, int(round(video.width * scale)))
    shown = sorted({b["time_s"] for b in boxes})
    if len(shown) > max_shown:  # more boxed frames than slots: spread over them, the first and the last included
        shown = [shown[i] for i in np.linspace(0, len(shown) - 1, max_shown).round().astype(int)]
    frames_by_time = {float(t): i for i, t in enumerate(video.timestamps)}
    # as wide as the most frames shown, however many this video has: every timeline of a report
    # (videos of one shape) is drawn at one scale, so windows line up from row to row
    width = max(400, thumb_w * max_shown)
    top = 40 if not truth_windows else 60  # the frames start under the timeline(s)
    canvas = Image.new("RGB", (width, top + (thumb_height if shown else 0)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def span(window: Sequence[float], y0: int, y1: int, fill: tuple, outline: tuple) -> None:
        x0 = (window[0] - video.start_s) / video.duration_s * (width - 1)
        x1 = (window[1] - video.start_s) / video.duration_s * (width - 1)
        draw.rectangle([x0, y0, x1, y1], fill=fill, outline=outline)

    # 1. timeline: the whole video, the turn-2 window highlighted; the planted windows below it
    draw.rectangle([0, 10, width - 1, 30], outline=(0, 0, 0), fill=(220, 220, 220))
    if window_s is not None:
        span(window_s, 10, 30, (255, 170, 60), (200, 90, 0))
    if truth_windows:
        draw.rectangle([0, 34, width - 1, 50], outline=(0, 0, 0), fill=(235, 235, 235))
        for window in truth_windows:
            span(window, 34, 50, (90, 200, 90), (20, 120, 20))
    # 2. turn-2 frames with their boxes (nearest source frame to each clip time)
    for slot, t in enumerate(shown):
        index = frames_by_time.get(float(t))
        if index is None:
            index = int(np.argmin(np.abs(video.timestamps - t)))
        thumb = Image.fromarray(video.frames[index]).resize((thumb_w, thumb_height))
        tdraw = ImageDraw.Draw(thumb)
        for entry in boxes:
            if entry["time_s"] != t:
                continue
            for box in entry["boxes"]:
                x0, y0, x1, y1 = (box[0] * thumb_w / 1000, box[1] * thumb_height / 1000, box[2] * thumb_w / 1000, box[3] * thumb_height / 1000)
                tdraw.rectangle([x0, y0, x1, y1], outline=_BOX_COLOR, width=2)
        canvas.paste(thumb, (slot * thumb_w, top))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)


def _mark(ok: bool) -> str:
    return "&check;" if ok else "&cross;"


def _graded_line(graded: dict) -> str:
    """What the verdict got right (a results row's ``graded``): status, window, boxes; the parts
    that cannot be graded (a normal video, a normal verdict) are left out."""
    parts = [f"status {_mark(graded['status'])} {'agrees' if graded['status'] else 'disagrees'}"]
    if graded.get("window") is not None:
        parts.append(f"window {_mark(graded['window'])} IoU {graded['window_iou']:.2f}")
    if graded.get("boxes_unreadable"):  # no boxes to grade because turn 2's answer did not parse, not because they missed
        parts.append(f"boxes {_mark(False)} turn 2 unreadable ({html.escape(graded['boxes_unreadable'])})")
    elif graded.get("boxes") is not None:
        parts.append(f"boxes {_mark(graded['boxes'])} {'on' if graded['boxes'] else 'not on'} the planted defect")
    return " &middot; ".join(parts)


def turn2_unreadable(cac: dict) -> str | None:
    """Why a CaC verdict (its details, :meth:`~cac_align.cac.infer.CaCResult.to_dict`) has no boxes because
    turn 2's answer did not parse (its first parse errors), or None: turn 2 did not run, or parsed, or
    boxed something."""
    turn2 = cac.get("turn2") or {}
    errors = (turn2.get("judgment") or {}).get("errors") or []
    if not turn2 or cac.get("boxes") or not errors:
        return None
    return "; ".join(errors[:2])


def _sub_scores(details: dict) -> str:
    """A compact line of the reward's sub-scores: components (raw -> normalized) or UR dimensions."""
    parts = []
    for name, component in details.get("components", {}).items():
        raw = "invalid" if component.get("raw") is None else f"{component['raw']:.3f}"
        norm = "" if component.get("normalized") is None else f" &rarr; {component['normalized']:.3f}"
        parts.append(f"{html.escape(name)} {raw}{norm}")
        parts.extend(f"{html.escape(name)}.{html.escape(k)} {v:.2f}" for k, v in component.get("details", {}).get("sub_scores", {}).items())
    parts.extend(f"{html.escape(k)} {v:.2f}" for k, v in details.get("sub_scores", {}).items())
    return " &middot; ".join(parts)


def write_report(rows: Sequence[dict], out_dir: str | Path, title: str = "scoring report") -> Path:
    """Write ``out_dir/report.html`` from results.jsonl rows, linking each video's evidence PNG.

    The PNGs are drawn while the frames are in memory (:func:`write_evidence_png`, called by the
    score job per batch), so the report never decodes a video again.
    """
    out = Path(out_dir)
    sections = []
    for index, row in enumerate(rows):
        name = str(row["video"])
        png = evidence_path(out, index)
        image = f'<img src="evidence/{png.name}" alt="evidence for {html.escape(name)}">' if png.exists() else ""
        score = f"{row['score']:.4f}" if row["valid"] else "invalid"
        cac = cac_details(row.get("details", {})) or {}
        window_s = cac.get("window_s")
        window = f"[{window_s[0]:.2f}, {window_s[1]:.2f}) s" if window_s else "-"
        boxes = "".join(
            f"<li>frame {b.get('frame', '?')} @ {b['time_s']:.3f} s{', ' + html.escape(str(b['type'])) if b.get('type') else ''}: "
            + ", ".join(html.escape(str([round(v, 1) for v in box])) for box in b["boxes"])
            + "</li>"
            for b in cac.get("boxes", [])
        )
        cac_line = f" &middot; status <b>{html.escape(str(cac.get('status')))}</b> &middot; window {window}" if cac else ""
        prompt = f"<p class=\"prompt\">{html.escape(str(row['prompt']))}</p>" if row.get("prompt") else ""
        subs = _sub_scores(row.get("details", {}))
        subs = f"<p class=\"subs\">{subs}</p>" if subs else ""
        error = f'<p class="error">{html.escape(row["error"])}</p>' if row.get("error") else ""
        truth, truth_line = row.get("truth"), ""
        if truth is not None:  # synthetic demo videos carry what was planted
            planted = "; ".join(
                f"{html.escape(a['type'])} " + (f"[{a['window_s'][0]:.2f}, {a['window_s'][1]:.2f}) s" if a.get("window_s") else "(no window)")
                for a in truth["anomalies"]
            )
            verdict = f" &middot; {_graded_line(row['graded'])}" if row["valid"] and row.get("graded") else ""
            truth_line = f'<p class="truth">ground truth: <b>{html.escape(truth["status"])}</b>{" &middot; " + planted if planted else ""}{verdict}</p>'

        sections.append(
            f'<section class="video" id="v{index}"><h2>{html.escape(name)}</h2>{prompt}'
            f"<p>{html.escape(str(row['reward']))} <b>{score}</b>{cac_line}</p>"
            f"{truth_line}{subs}{error}{image}<ul class=\"boxes\">{boxes}</ul></section>"
        )
    valid = [row["score"] for row in rows if row["valid"]]
    summary = f"{len(rows)} videos, {len(valid)} valid, mean score {np.mean(valid):.4f}" if valid else f"{len(rows)} videos, none valid"
    graded = [row["graded"] for row in rows if row.get("truth") is not None and row["valid"] and row.get("graded")]
    legend = ""
    if any(row.get("truth") is not None for row in rows):
        legend = ('<p class="legend">Timelines: the window the judge examined (orange) above where the anomalies were '
                  "planted (green).</p>")
    if graded:
        summary += f"; the status agrees with the ground truth on {sum(bool(g['status']) for g in graded)} of {len(graded)}"
        localized = [g["localized"] for g in graded if g["localized"] is not None]
        if localized:
            summary += (f"; the localization (window IoU &ge; 0.5 and a box on the planted defect) on {sum(localized)} of the "
                        f"{len(localized)} anomalous videos called abnormal")
    page = (
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em} .error{color:#b00} .prompt{font-style:italic}"
        " .subs{color:#444;font-size:90%} .truth{color:#225} .legend{color:#555;font-size:90%} section{border-top:1px solid #ccc;padding:0.5em 0}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{summary}</p>{legend}{''.join(sections)}</body></html>\n"
    )
    path = out / "report.html"
    write_text_atomic(path, page)
    return path


def _score_status(part: dict | None) -> str:
    if not part:
        return "-"
    score = "invalid" if part.get("score") is None else f"{part['score']:.4f}"
    return f"{score} ({html.escape(str(part.get('status')))})"


def write_repair_report(rows: Sequence[dict], out_dir: str | Path, summary: dict) -> Path:
    """Write ``out_dir/report.html`` of a ``cac-align repair`` run: per video the verdict before
    and after, each attempt, the regenerated frames, and the evidence pictures side by side
    (``evidence/NNNNN_before.png`` and ``_after.png``, drawn by the job)."""
    out = Path(out_dir)
    sections = []
    for row in rows:
        index = row["index"]
        pictures = "".join(
            f'<figure><img src="evidence/{index:05d}_{when}.png" alt="{when}"><figcaption>{when}</figcaption></figure>'
            for when in ("before", "after") if (out / "evidence" / f"{index:05d}_{when}.png").exists()
        )
        attempts = "".join(
            f"<li>seed {a['seed']}: {_score_status(a)} in {a['seconds']:.2f} s</li>" for a in row.get("attempts", [])
        )
        mask = row.get("mask") or {}
        frames = f"regenerated frames {mask['frames'][0]}-{mask['frames'][-1]} (VACE saw {mask['segment'][0]}-{mask['segment'][1] - 1})" if mask else ""
        scores = f"before {_score_status(row.get('before'))}" + (f" &rarr; after {_score_status(row.get('after'))}" if row.get("after") else "")
        scores = scores if row.get("before") else ""
        cost = f"{row['frame_steps']} frame-steps" if row["frame_steps"] else ""
        if not row["valid"]:
            verdict = f'<p class="error">{html.escape(str(row["error"]))}</p>'
        elif row["accepted"]:
            verdict = f'<p class="kept">kept: {html.escape(str(row["output"]))}</p>'
        else:
            verdict = f'<p class="through">not repaired: {html.escape(str(row["reason"]))}</p>'
        sections.append(
            f'<section class="video" id="v{index}"><h2>{html.escape(str(row["video"]))}</h2>'
            f'<p class="prompt">{html.escape(str(row.get("prompt")))}</p>'
            f"<p>{' &middot; '.join(part for part in (scores, frames, cost) if part)}</p>{verdict}<ul>{attempts}</ul><div class=\"pair\">{pictures}</div></section>"
        )
    ratio = summary.get("frame_steps_vs_best_of_n")
    cost = f"; {summary['frame_steps']} frame-steps, {ratio:.2f}x what Best-of-N with the same tries spends" if ratio is not None else ""
    head = (f"{summary['videos']} videos: {summary['accepted']} of {summary['repaired']} repaired kept, {summary['passed_through']} passed "
            f"through, {summary['invalid']} invalid{cost}")
    page = (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>repair report</title>"
        "<style>body{font-family:sans-serif;margin:2em} .error{color:#b00} .kept{color:#070} .through{color:#555} .prompt{font-style:italic}"
        " section{border-top:1px solid #ccc;padding:0.5em 0} .pair{display:flex;gap:1em} figure{margin:0;flex:1;min-width:0} figure img{max-width:100%} figcaption{text-align:center}</style>"
        f"</head><body><h1>repair report</h1><p>{head}</p><p class=\"through\">Timelines: the window the judge examined (orange); "
        f"boxes in red. Before: the input as judged; after: the kept repair at the same times, with the boxes the judge still draws.</p>{''.join(sections)}</body></html>\n"
    )
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
