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


def _red_slots(png, thumb: int, top: int = 40) -> list[int]:
    """The frame slots (left to right) whose thumbnail has the box colour in it."""
    pixels = np.asarray(Image.open(png).convert("RGB"))[top:]
    red = (pixels == (255, 40, 40)).all(-1)
    return [slot for slot in range(pixels.shape[1] // thumb) if red[:, slot * thumb : (slot + 1) * thumb].any()]


def test_more_boxed_frames_than_slots_are_spread_first_and_last_included(tmp_path):
    """12 boxed frames, 3 slots: frames 0, 6 and 11 of them (linspace(0, 11, 3) = 0, 5.5, 11, rounded
    half to even); each frame is drawn with a different grey so the slot says which frame it holds."""
    frames = np.stack([np.full((64, 64, 3), 8 * i, dtype=np.uint8) for i in range(32)])
    video = Video(frames, 16.0)
    boxed = [{"frame": 8 + i, "time_s": (8 + i) / 16.0, "boxes": [[0, 0, 500, 500]]} for i in range(12)]
    write_evidence_png([0.5, 1.25], boxed, video, tmp_path / "spread.png", max_shown=3)
    pixels = np.asarray(Image.open(tmp_path / "spread.png").convert("RGB"))
    assert pixels.shape == (40 + 96, 400, 3)  # 3 slots of 96 are narrower than the 400-pixel floor
    greys = [int(pixels[40 + 90, slot * 96 + 90, 0]) for slot in range(3)]  # a corner outside the box
    assert greys == [8 * 8, 8 * 14, 8 * 19]
    assert _red_slots(tmp_path / "spread.png", 96) == [0, 1, 2]
    write_evidence_png([0.5, 1.25], boxed[:2], video, tmp_path / "two.png", max_shown=3)  # fewer than the slots: as before
    assert [int(np.asarray(Image.open(tmp_path / "two.png").convert("RGB"))[130, s * 96 + 90, 0]) for s in range(2)] == [64, 72]
