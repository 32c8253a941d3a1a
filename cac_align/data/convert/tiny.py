"""The offline stand-in for the public sets: the videos that the tiny rows name.

``recipes/data/convert_tiny_vif_cot.json``, ``convert_tiny_videophy2.jsonl`` and
``convert_tiny_labels.csv`` (shipped with the package) are rows written for this project in the
shapes of ViF-CoT-4K's LLaMA-Factory layout (``messages``, ``videos`` or ``images``, answers with
``<think>`` reasoning, ``<type>...</type> in <t>[s, e]</t> at <bbox>[...]</bbox>`` tags and
``<answer>Real|Fake</answer>``; boxes in fractions, pixels and all-zero), VideoPhy-2's columns
(``video_url``, ``caption``, ``pc``, rule lists) and a team's own labels. They hold no data of
those sets (their published rows are tested from ``../shared/data``), and some are bad on purpose,
so that ``convert_report.md`` has something to report. :func:`make_convert_tiny_videos` renders the
flat videos they name; ``cac-align make-tiny --config tiny/convert_tiny_videos`` calls it, and
``cac-align convert --config data/convert_tiny`` then runs from any folder
(docs/train_your_own_cac.md, "The same road, offline").
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONVERT_TINY_VIDEOS", "make_convert_tiny_videos"]

# The videos the tiny rows name (v_missing.mp4, named by a bad row, is not made on purpose).
CONVERT_TINY_VIDEOS = ("v_real", "v_fake_fraction", "v_fake_pixels", "v_fake_global", "v_fake_lowlevel", "v_phys_bad",
                       "v_phys_rule", "v_phys_ok", "v_label_a", "v_label_b", "v_label_c", "v_label_d")


def make_convert_tiny_videos(out: str | Path) -> Path:
    """Write ``out/v_*.mp4`` (4 s at 8 fps, 64x48, one flat grey each: 32 frames) and
    ``out/frames/v_fake_pixels/000.jpg`` (128x96: the frame size that ViF-CoT's pixel-box row
    refers to); returns ``out``. Each file is written whole or not at all, so a rerun is safe."""
    import numpy as np
    from PIL import Image

    from cac_align.video import Video, save_video

    out = Path(out)
    for i, name in enumerate(CONVERT_TINY_VIDEOS):
        save_video(Video(np.full((32, 48, 64, 3), 10 * i, np.uint8), 8.0), out / f"{name}.mp4")
    frame = out / "frames" / "v_fake_pixels" / "000.jpg"
    frame.parent.mkdir(parents=True, exist_ok=True)
    partial = frame.with_name(".000.partial.jpg")
    Image.new("RGB", (128, 96)).save(partial)
    partial.replace(frame)
    return out
