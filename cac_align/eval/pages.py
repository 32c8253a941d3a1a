"""What the run page and the Best-of-N page share: a video's poster and evidence pictures (drawn
once, reused while the video is unchanged), a video cell that loads when scrolled to and plays on
hover or click, inline SVG line charts, and the pages' style and script.

The pages read files only (a run folder's records and mp4s); nothing here imports a job. Every
link a page writes is relative to the folder it lies in, so a run folder copied elsewhere or served
by ``python -m http.server`` shows the same page, and nothing is fetched from the network (no CDN:
the charts are inline SVG, the script and style inline).

Assets (``<folder>/<assets>/...``): per video a poster (``STEM.jpg``, its middle frame), a few
facts (``STEM.json``: width, height, whether the mp4 has a soundtrack) and one evidence picture
per judge that located something (``STEM_<judge>_<hash>.png``, drawn by
:func:`cac_align.cac.evidence.write_evidence_png`, the drawing ``score``'s report uses). A poster
or its facts are redrawn only when the mp4 is newer; an evidence picture's name carries a hash of
the evidence it draws, so a record rewritten with the same evidence reuses it and new evidence
gets a new picture (the old one is removed).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["ClipAssets", "Marker", "PAGE_SCRIPT", "PAGE_STYLE", "clip_assets", "evidence_caption", "evidence_html", "fmt", "line_chart",
           "relative", "video_html"]

POSTER_WIDTH = 480  # a poster wider than this is scaled down: it stands in a cell of ~240 px
EVIDENCE_FRAMES = 3  # boxed frames drawn per evidence picture (first, middle, last): a cell shows them 72 px wide, 2.2x on hover
EVIDENCE_HEIGHT = 96  # their height in pixels, as in score's report


def fmt(value: Any, digits: int = 3) -> str:
    """A score as the pages show it: ``digits`` decimals, "–" for a missing or invalid one."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def relative(path: Path, folder: Path) -> str:
    """``path`` as a link from a page in ``folder`` (forward slashes, each part URL-quoted)."""
    from urllib.parse import quote

    return "/".join(quote(part) for part in Path(os.path.relpath(path, folder)).parts)


# ---------------------------------------------------------------------------------------
# Assets of one video
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipAssets:
    """What a page shows of one mp4.

    Attributes:
        poster: its middle frame, JPEG.
        width, height: the video's size in pixels.
        audio: whether the mp4 has a soundtrack.
        evidence: per judge whose verdict located something, its picture (None where the verdict
            located nothing: a normal video, or unreadable evidence).
    """

    poster: Path
    width: int
    height: int
    audio: bool
    evidence: dict[str, Path | None]


def _older(target: Path, source: Path) -> bool:
    """Whether ``target`` is missing or older than ``source`` (so must be drawn again)."""
    try:
        return target.stat().st_mtime_ns < source.stat().st_mtime_ns
    except FileNotFoundError:
        return True


def _has_soundtrack(mp4: Path) -> bool:
    """Whether the file has an audio stream (read from its header by PyAV, nothing decoded)."""
    import av

    try:
        with av.open(str(mp4)) as container:
            return bool(container.streams.audio)
    except av.error.FFmpegError:
        return False


def _locates(record: Mapping[str, Any]) -> bool:
    """Whether a judge's recorded verdict points somewhere: abnormal, with a window or a box."""
    return record.get("status") == "abnormal" and bool(record.get("window_s") or any(e.get("boxes") for e in record.get("boxes") or []))


def _evidence_hash(record: Mapping[str, Any]) -> str:
    drawn = {"window_s": record.get("window_s"), "boxes": [{"time_s": e.get("time_s"), "boxes": e.get("boxes")} for e in record.get("boxes") or []]}
    return hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()[:10]


def _write_poster(video: Any, path: Path) -> None:
    """The middle frame as a JPEG (scaled down to ``POSTER_WIDTH``), written atomically."""
    from PIL import Image

    frame = Image.fromarray(video.frames[video.num_frames // 2])
    if frame.width > POSTER_WIDTH:
        frame = frame.resize((POSTER_WIDTH, max(1, round(frame.height * POSTER_WIDTH / frame.width))))
    tmp = path.with_name(f".{path.name}.tmp")
    frame.save(tmp, format="JPEG", quality=88)
    tmp.replace(path)


def clip_assets(mp4: Path, stem: Path, evidence: Mapping[str, Mapping[str, Any]]) -> ClipAssets:
    """The poster, facts and evidence pictures of ``mp4``, drawn where missing or out of date.

    Args:
        mp4: the video file.
        stem: where its assets go, without suffix (``<assets>/step_000010/00003``).
        evidence: ``{judge: {"status", "window_s", "boxes"}}`` as the records keep it
            (:func:`cac_align.regions.evidence_record`).

    Returns:
        The :class:`ClipAssets`; a video decoded only when something had to be drawn.
    """
    from cac_align.cac.evidence import write_evidence_png
    from cac_align.run.input_files import slug
    from cac_align.video import load_video

    stem.parent.mkdir(parents=True, exist_ok=True)
    poster, facts_path = stem.with_suffix(".jpg"), stem.with_suffix(".json")
    video = None
    facts = None
    if not (_older(poster, mp4) or _older(facts_path, mp4)):
        try:
            facts = json.loads(facts_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            facts = None
    if facts is None:
        video = load_video(mp4, lazy=True)
        _write_poster(video, poster)
        facts = {"width": video.width, "height": video.height, "audio": _has_soundtrack(mp4)}
        tmp = facts_path.with_name(f".{facts_path.name}.tmp")
        tmp.write_text(json.dumps(facts), encoding="utf-8")
        tmp.replace(facts_path)
    pictures: dict[str, Path | None] = {}
    for judge, record in evidence.items():
        if not _locates(record):
            pictures[judge] = None
            continue
        prefix = f"{stem.name}_{slug(judge, 40)}_"
        picture = stem.with_name(f"{prefix}{_evidence_hash(record)}.png")
        if _older(picture, mp4):
            video = video or load_video(mp4, lazy=True)
            boxes = [{"time_s": float(e["time_s"]), "boxes": e.get("boxes") or []} for e in record.get("boxes") or []]
            write_evidence_png(record.get("window_s"), boxes, video, picture, thumb_height=EVIDENCE_HEIGHT, max_shown=EVIDENCE_FRAMES)
            for old in stem.parent.glob(f"{prefix}*.png"):  # the picture of evidence this video no longer has
                if old != picture:
                    old.unlink(missing_ok=True)
        pictures[judge] = picture
    return ClipAssets(poster, int(facts["width"]), int(facts["height"]), bool(facts["audio"]), pictures)


# ---------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------
def video_html(mp4: Path, assets: ClipAssets, page_dir: Path, label: str, eager: bool = False) -> str:
    """A video that loads when scrolled to (``data-src``, ``preload="none"``: nothing is fetched
    before it plays), shows its poster, plays muted and looped on hover or click, and, where the mp4
    has a soundtrack, a button that unmutes it. ``eager``: its poster is fetched with the page (the
    first rows, on screen when the page opens), not when scrolled to."""
    sound = ('<button type="button" class="sound" title="play with its soundtrack">&#9835; sound</button>' if assets.audio else "")
    poster = html.escape(relative(assets.poster, page_dir))
    now = f' poster="{poster}"' if eager else ""
    return (
        f'<div class="clip"><video class="lazy" data-src="{html.escape(relative(mp4, page_dir))}" '
        f'data-poster="{poster}"{now} preload="none" muted loop playsinline '
        f'width="{assets.width}" height="{assets.height}" title="{html.escape(label)}: hover to play, click to keep playing"></video>{sound}</div>'
    )


def evidence_caption(judge: str, record: Mapping[str, Any]) -> str:
    """One line of a judge's verdict: its status, window and how many frames it boxed."""
    parts = [f"<b>{html.escape(judge)}</b> {html.escape(str(record.get('status')))}"]
    window = record.get("window_s")
    if window:
        parts.append(f"window {window[0]:.2f}&ndash;{window[1]:.2f} s")
    boxed = sum(1 for e in record.get("boxes") or [] if e.get("boxes"))
    if boxed:
        parts.append(f"boxes on {boxed} frame{'s' if boxed != 1 else ''}")
    if record.get("error"):
        parts.append(f'<span class="error">{html.escape(str(record["error"]))}</span>')
    return " &middot; ".join(parts)


def evidence_html(evidence: Mapping[str, Mapping[str, Any]], assets: ClipAssets | None, page_dir: Path) -> str:
    """Each judge's verdict on a video: its picture (click for full size) where it located something."""
    parts = []
    for judge, record in evidence.items():
        picture = assets.evidence.get(judge) if assets is not None else None
        image = ""
        if picture is not None:
            link = html.escape(relative(picture, page_dir))
            image = (f'<a href="{link}" target="_blank"><img class="evidence-img" loading="lazy" src="{link}" '
                     f'alt="{html.escape(judge)}: the window on the timeline, the boxes on the frames"></a>')
        located = " located" if picture is not None else ""
        parts.append(f'<div class="evidence{located}" data-judge="{html.escape(judge)}">{image}<div class="caption">{evidence_caption(judge, record)}</div></div>')
    return "".join(parts)


# ---------------------------------------------------------------------------------------
# Charts: inline SVG
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Marker:
    """A vertical line on every chart at ``step``: ``kind`` "alarm" (the watch fired) or "best"."""

    step: int
    kind: str
    text: str


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
_MAX_POINTS = 60  # a curve with at most this many points shows each as a dot (with its value on hover)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) in ``[low, high]``."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + k * step, 12) for k in range(int((high - first) / step + 1e-9) + 1)]


def _tick_text(value: float, step: float) -> str:
    if step >= 1 and float(value).is_integer():
        return str(int(value))
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 3
    return f"{value:.{decimals}f}"


def line_chart(title: str, curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], markers: Iterable[Marker] = (),
               dashed: Iterable[str] = (), width: int = 520, height: int = 230) -> str:
    """An inline SVG line chart of ``{name: (steps, values)}`` with its legend, and the markers'
    vertical lines (``class="marker alarm"`` / ``"marker best"``, ``data-step``). A curve's points
    are dots (``class="pt"``, ``data-series``, ``data-step``, the value on hover) where it has few.

    Returns:
        A ``<figure class="chart">``; "" when no curve has a point.
    """
    curves = {name: (list(steps), list(values)) for name, (steps, values) in curves.items() if len(steps)}
    if not curves:
        return ""
    markers = list(markers)
    dashed = set(dashed)
    left, right, top, bottom = 52, 14, 12, 28
    xs = [s for steps, _ in curves.values() for s in steps] + [m.step for m in markers]
    ys = [v for _, values in curves.values() for v in values]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or max(abs(y0) * 0.05, 0.01)
    y0, y1 = y0 - pad, y1 + pad

    def px(step: float) -> float:
        return round(left + (step - x0) / (x1 - x0) * (width - left - right), 2)

    def py(value: float) -> float:
        return round(top + (y1 - value) / (y1 - y0) * (height - top - bottom), 2)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">']
    xt, yt = _ticks(x0, x1), _ticks(y0, y1)
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
    for value in yt:
        parts.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(value)}" y2="{py(value)}"/>'
                     f'<text class="tick" x="{left - 4}" y="{py(value) + 3}" text-anchor="end">{_tick_text(value, ystep)}</text>')
    for value in xt:
        if float(value).is_integer():
            parts.append(f'<text class="tick" x="{px(value)}" y="{height - bottom + 14}" text-anchor="middle">{_tick_text(value, max(xstep, 1))}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}"/>'
                 f'<text class="tick" x="{width - right}" y="{height - 2}" text-anchor="end">step</text>')
    for marker in markers:
        x = px(marker.step)
        label = "&#9888;" if marker.kind == "alarm" else "&#9733;"
        parts.append(f'<line class="marker {marker.kind}" data-step="{marker.step}" x1="{x}" x2="{x}" y1="{top}" y2="{height - bottom}">'
                     f"<title>{html.escape(marker.text)}</title></line>"
                     f'<text class="marker-label {marker.kind}" x="{x + 3}" y="{top + 9}">{label}<title>{html.escape(marker.text)}</title></text>')
    legend = []
    for k, (name, (steps, values)) in enumerate(curves.items()):
        color = _COLORS[k % len(_COLORS)]
        points = " ".join(f"{px(s)},{py(v)}" for s, v in zip(steps, values))
        dash = ' stroke-dasharray="5 3"' if name in dashed else ""
        parts.append(f'<polyline class="curve" data-series="{html.escape(name)}" fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{points}"/>')
        if len(steps) <= _MAX_POINTS:
            parts.extend(f'<circle class="pt" data-series="{html.escape(name)}" data-step="{s}" cx="{px(s)}" cy="{py(v)}" r="3" fill="{color}">'
                         f"<title>{html.escape(name)} at step {s}: {v:.4f}</title></circle>" for s, v in zip(steps, values))
        style = "border-top-style:dashed" if name in dashed else ""
        legend.append(f'<li><span class="swatch" style="border-color:{color};{style}"></span>{html.escape(name)}</li>')
    parts.append("</svg>")
    return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}<ul class="legend">{"".join(legend)}</ul></figure>'


# ---------------------------------------------------------------------------------------
# Style and script, inline (no network to view a page)
# ---------------------------------------------------------------------------------------
PAGE_STYLE = """
:root{--ink:#1d2330;--muted:#5b6474;--line:#dfe3ea;--bg:#f6f7f9;--card:#fff;--accent:#2b6cb0;--bad:#c53030;--good:#2f855a;--warn:#b7791f}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg);margin:0;padding:1.2rem 1.6rem;font-size:14px;line-height:1.4}
h1{font-size:1.5rem;margin:.2rem 0 .4rem} h2{font-size:1.15rem;margin:1.6rem 0 .5rem;border-bottom:1px solid var(--line);padding-bottom:.25rem}
.lede{color:var(--muted);margin:.2rem 0} .facts{display:flex;flex-wrap:wrap;gap:.5rem;margin:.6rem 0}
.fact{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.4rem .7rem}
.fact b{font-variant-numeric:tabular-nums} .note{color:var(--muted);font-size:.9em}
.up{color:var(--good)} .down{color:var(--muted)} li.fell,li.fell b,.delta.fell{color:var(--bad);font-weight:600}
.badge{display:inline-block;border-radius:999px;padding:0 .5rem;font-size:.8em;font-weight:600;vertical-align:middle}
.badge.best{background:#e6f4ea;color:var(--good);border:1px solid #9ad0ab} .badge.alarm{background:#fdecea;color:var(--bad);border:1px solid #f1a9a0}
.badge.chosen{background:#e6f4ea;color:var(--good);border:1px solid #9ad0ab}
.charts{display:flex;flex-wrap:wrap;gap:.8rem} figure.chart{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:0;padding:.5rem}
figure.chart figcaption{font-weight:600;margin-bottom:.2rem} svg.chart{display:block;max-width:100%;height:auto}
svg .grid{stroke:#eef0f4} svg .axis{stroke:#9aa3b2} svg .tick{font-size:10px;fill:var(--muted)}
svg .marker.alarm{stroke:var(--bad);stroke-width:2;stroke-dasharray:4 3} svg .marker.best{stroke:var(--good);stroke-width:2;stroke-opacity:.7}
svg .marker-label{font-size:11px} svg .marker-label.alarm{fill:var(--bad)} svg .marker-label.best{fill:var(--good)}
ul.legend{list-style:none;padding:0;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.2rem .8rem;font-size:.85em;color:var(--muted)}
.swatch{display:inline-block;width:18px;border-top:3px solid;margin-right:.3rem;vertical-align:middle}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px;width:fit-content;max-width:100%}
table.grid{border-collapse:separate;border-spacing:0}
table.grid th,table.grid td{border-right:1px solid var(--line);border-bottom:1px solid var(--line);padding:.45rem;vertical-align:top}
table.grid thead th{position:sticky;top:0;background:#eef1f6;z-index:2;text-align:left;white-space:nowrap}
table.grid th.prompt{position:sticky;left:0;background:#fafbfc;z-index:1;min-width:170px;max-width:220px;text-align:left;font-weight:normal}
table.grid thead th.prompt{z-index:3;background:#eef1f6}
table.grid td{width:232px;min-width:232px;background:var(--card)} table.grid td.best,table.grid th.best{background:#f3faf5}
table.grid td.cell.fell{box-shadow:inset 0 0 0 2px var(--bad)} table.grid td.chosen{box-shadow:inset 0 0 0 3px var(--good);background:#f3faf5}
table.grid.compact .mid{display:none}
.clip{position:relative} .clip video{display:block;width:216px;height:auto;background:#111;border-radius:4px;cursor:pointer}
.clip button.sound{position:absolute;right:4px;bottom:4px;font-size:11px;border:0;border-radius:4px;background:rgba(0,0,0,.6);color:#fff;padding:1px 5px;cursor:pointer}
.clip button.sound.on{background:var(--accent)}
ul.scores{list-style:none;margin:.35rem 0 0;padding:0;font-variant-numeric:tabular-nums} ul.scores li{display:flex;justify-content:space-between;gap:.4rem}
ul.scores .name{color:var(--muted)} .delta{font-size:.85em;margin-left:.3rem}
.evidence{margin-top:.35rem;font-size:.85em;color:var(--muted)} .evidence img{display:block;width:216px;border:1px solid var(--line);border-radius:3px;margin-bottom:.15rem;
 transition:transform .12s;transform-origin:top left;position:relative;background:#fff}
.evidence img:hover{transform:scale(2.2);z-index:5;box-shadow:0 4px 18px rgba(0,0,0,.25)}
.error{color:var(--bad)} .prompt-text{font-style:italic} .seed{color:var(--muted);font-size:.85em}
.toolbar{margin:.4rem 0} .toolbar button{border:1px solid var(--line);background:var(--card);border-radius:6px;padding:.2rem .6rem;cursor:pointer}
.toolbar button.on{background:var(--accent);color:#fff;border-color:var(--accent)}
details{margin:.4rem 0} summary{cursor:pointer;font-weight:600}
table.scores{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:.9em;background:var(--card)}
table.scores th,table.scores td{border:1px solid var(--line);padding:.15rem .4rem;text-align:right;white-space:nowrap}
table.scores th.p{text-align:left;max-width:260px;overflow:hidden;text-overflow:ellipsis}
table.scores td.fell{background:#fdecea} table.scores td.up{background:#eef8f1;color:var(--ink)} table.scores td.down{background:#f7f7f7;color:var(--ink)}
pre.settings{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.7rem;overflow:auto;max-height:32rem;font-size:12px}
.candidates{display:flex;gap:.6rem;overflow-x:auto;padding-bottom:.3rem}
.candidate{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.45rem;min-width:232px;width:232px}
.candidate.chosen{border:3px solid var(--good);background:#f3faf5;padding:calc(.45rem - 2px)}
.candidate .head{display:flex;justify-content:space-between;align-items:center;min-height:1.7em;margin-bottom:.2rem;white-space:nowrap}
ul.scores li.seed{color:var(--muted);font-size:.85em}
section.prompt{margin:1rem 0}
""".strip()

# The videos: a poster and a source once scrolled to (nothing of the mp4 is fetched before it plays:
# preload="none"); hover plays, leaving pauses unless a click pinned it; the sound button unmutes.
# The compact view keeps step 0, the best step and the last one.
PAGE_SCRIPT = """
(function(){
  function arm(v){ if(!v.getAttribute('src') && v.dataset.src){ if(v.dataset.poster){ v.poster = v.dataset.poster; } v.src = v.dataset.src; } }
  function play(v){ arm(v); var p = v.play(); if(p && p.catch){ p.catch(function(){}); } }
  var videos = Array.prototype.slice.call(document.querySelectorAll('video.lazy'));
  if('IntersectionObserver' in window){
    var seen = new IntersectionObserver(function(entries){ entries.forEach(function(e){ if(e.isIntersecting){ arm(e.target); seen.unobserve(e.target); } }); }, {rootMargin:'400px'});
    videos.forEach(function(v){ seen.observe(v); });
  } else { videos.forEach(arm); }
  videos.forEach(function(v){
    v.addEventListener('mouseenter', function(){ play(v); });
    v.addEventListener('mouseleave', function(){ if(!v.classList.contains('pinned')){ v.pause(); } });
    v.addEventListener('click', function(){ if(v.paused || !v.classList.contains('pinned')){ v.classList.add('pinned'); play(v); } else { v.classList.remove('pinned'); v.pause(); } });
  });
  Array.prototype.forEach.call(document.querySelectorAll('button.sound'), function(b){
    b.addEventListener('click', function(){ var v = b.parentElement.querySelector('video'); v.muted = !v.muted; b.classList.toggle('on', !v.muted); v.classList.add('pinned'); play(v); });
  });
  Array.prototype.forEach.call(document.querySelectorAll('.toolbar button[data-view]'), function(b){
    b.addEventListener('click', function(){
      var grid = document.getElementById(b.dataset.target); grid.classList.toggle('compact', b.dataset.view === 'compact');
      Array.prototype.forEach.call(b.parentElement.querySelectorAll('button'), function(o){ o.classList.toggle('on', o === b); });
    });
  });
})();
""".strip()
