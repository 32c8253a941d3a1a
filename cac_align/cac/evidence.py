"""Evidence report of a CaC scoring run: one HTML page plus a PNG per video (like CaC Fig. S2).

Per video the page shows the reward, the final status, a timeline with the window turn 2
looked at, and turn 2's frames with their boxes drawn; invalid videos show their error.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from cac_align.cac.infer import CaCResult
from cac_align.video import Video

__all__ = ["evidence_path", "write_evidence_png", "write_report"]

_BOX_COLOR = (255, 40, 40)


def evidence_path(out_dir: str | Path, index: int) -> Path:
    """Where the evidence PNG of the ``index``-th scored video goes."""
    return Path(out_dir) / "evidence" / f"{index:05d}.png"


def write_evidence_png(result: CaCResult, video: Video, path: Path, thumb_height: int = 96) -> None:
    """Timeline (top) and up to 8 turn-2 frames with boxes (bottom)."""
    from PIL import Image, ImageDraw

    scale = thumb_height / video.height
    thumb_w = max(1, int(round(video.width * scale)))
    times = [b["time_s"] for b in result.boxes]
    shown = sorted(set(times))[:8]
    frames_by_time = {float(t): i for i, t in enumerate(video.timestamps)}
    width = max(400, thumb_w * max(1, len(shown)))
    canvas = Image.new("RGB", (width, 40 + (thumb_height if shown else 0)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    # 1. timeline: the whole video, the turn-2 window highlighted
    draw.rectangle([0, 10, width - 1, 30], outline=(0, 0, 0), fill=(220, 220, 220))
    if result.window_s is not None:
        x0 = (result.window_s[0] - video.start_s) / video.duration_s * (width - 1)
        x1 = (result.window_s[1] - video.start_s) / video.duration_s * (width - 1)
        draw.rectangle([x0, 10, x1, 30], fill=(255, 170, 60), outline=(200, 90, 0))
    # 2. turn-2 frames with their boxes (nearest source frame to each clip time)
    for slot, t in enumerate(shown):
        index = frames_by_time.get(float(t))
        if index is None:
            index = int(np.argmin(np.abs(video.timestamps - t)))
        thumb = Image.fromarray(video.frames[index]).resize((thumb_w, thumb_height))
        tdraw = ImageDraw.Draw(thumb)
        for entry in result.boxes:
            if entry["time_s"] != t:
                continue
            for box in entry["boxes"]:
                x0, y0, x1, y1 = (box[0] * thumb_w / 1000, box[1] * thumb_height / 1000, box[2] * thumb_w / 1000, box[3] * thumb_height / 1000)
                tdraw.rectangle([x0, y0, x1, y1], outline=_BOX_COLOR, width=2)
        canvas.paste(thumb, (slot * thumb_w, 40))
    canvas.save(path)


def write_report(results: Sequence[CaCResult], names: Sequence[str], out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html``, linking each video's evidence PNG where one was drawn.

    The PNGs are drawn while the frames are in memory (:func:`write_evidence_png`, called by the
    score job per batch), so the report never decodes a video again.
    """
    out = Path(out_dir)
    rows = []
    for index, (result, name) in enumerate(zip(results, names)):
        png = evidence_path(out, index)
        image = f'<img src="evidence/{png.name}" alt="evidence for {html.escape(name)}">' if png.exists() else ""
        reward = f"{result.reward:.4f}" if result.reward is not None else "invalid"
        window = f"[{result.window_s[0]:.2f}, {result.window_s[1]:.2f}) s" if result.window_s else "-"
        boxes = "".join(
            f"<li>frame {b['frame']} @ {b['time_s']:.3f} s, {html.escape(str(b['type']))}: "
            + ", ".join(html.escape(str([round(v, 1) for v in box])) for box in b["boxes"])
            + "</li>"
            for b in result.boxes
        )
        error = f'<p class="error">{html.escape(result.error)}</p>' if result.error else ""
        rows.append(
            f'<section class="video" id="v{index}"><h2>{html.escape(name)}</h2>'
            f"<p>reward <b>{reward}</b> &middot; status <b>{html.escape(str(result.status))}</b> &middot; window {window}</p>"
            f"{error}{image}<ul class=\"boxes\">{boxes}</ul></section>"
        )
    valid = [r.reward for r in results if r.valid and r.reward is not None]
    summary = (
        f"{len(results)} videos, {len(valid)} valid, mean reward {np.mean(valid):.4f}" if valid else f"{len(results)} videos, none valid"
    )
    page = (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>CaC evidence report</title>"
        "<style>body{font-family:sans-serif;margin:2em} .error{color:#b00} section{border-top:1px solid #ccc;padding:0.5em 0}</style>"
        f"</head><body><h1>CaC evidence report</h1><p>{summary}</p>{''.join(rows)}</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
