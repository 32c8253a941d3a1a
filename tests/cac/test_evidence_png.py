"""The evidence PNG's timeline: one scale for every video of a report, however many frames it boxes."""

import numpy as np
from PIL import Image

from cac_align.cac.evidence import write_evidence_png
from cac_align.video import Video


def _orange_columns(png) -> np.ndarray:
    pixels = np.asarray(Image.open(png).convert("RGB"))
    row = pixels[20]  # the judge's timeline bar's middle row
    return np.flatnonzero((row == (255, 170, 60)).all(-1))


def test_timelines_share_one_scale_whatever_the_number_of_boxed_frames(tmp_path):
    video = Video(np.zeros((32, 64, 64, 3), dtype=np.uint8), 16.0)  # 2 s; 96-pixel square thumbnails
    window = [0.5, 1.0]
    one = [{"frame": 8, "time_s": 0.5, "boxes": [[0, 0, 500, 500]]}]
    five = [{"frame": 8 + i, "time_s": (8 + i) / 16.0, "boxes": [[0, 0, 500, 500]]} for i in range(5)]
    write_evidence_png(window, one, video, tmp_path / "one.png")
    write_evidence_png(window, five, video, tmp_path / "five.png")
    widths = {Image.open(tmp_path / name).size[0] for name in ("one.png", "five.png")}
    assert widths == {8 * 96}  # 8 frame slots, whether 1 or 5 are filled
    columns = _orange_columns(tmp_path / "one.png")
    assert np.array_equal(columns, _orange_columns(tmp_path / "five.png"))
    # [0.5, 1.0) of 2 s: the second quarter of the 768-pixel bar, x from 191.75 to 383.5; PIL
    # draws the outline on the end columns (191 and 383) and fills between them
    assert (columns.min(), columns.max()) == (192, 382)
