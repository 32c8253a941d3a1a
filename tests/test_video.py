"""Video I/O: every load path, resampling exactness, crop edges, save/load, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cac_align.video import Video, VideoError, load_video, sample_times, save_video
from conftest import smooth_video


# --- sample_times: hand-worked indices ---------------------------------------------------
def test_sample_times_16fps_81_frames_at_4fps_is_every_fourth_frame():
    # 81 frames at 16 fps last 81/16 = 5.0625 s; targets k/4 < 5.0625 -> k = 0..20 (21 frames),
    # each exactly on source frame 4k.
    idx = sample_times(81, 16, 4)
    assert idx.tolist() == list(range(0, 81, 4))


def test_sample_times_non_integer_ratio_picks_nearest_frame():
    # 10 frames at 30 fps last 1/3 s; targets 0, 0.125, 0.25 s (0.375 >= 1/3 is out).
    # Source positions t*30 = 0, 3.75, 7.5 -> nearest frames 0, 4, 8 (ties round up).
    assert sample_times(10, 30, 8).tolist() == [0, 4, 8]


def test_sample_times_upsampling_repeats_frames():
    # 3 frames at 4 fps last 0.75 s; targets k/8, k = 0..5; positions t*4 = 0, .5, 1, 1.5, 2, 2.5
    # -> round-half-up 0, 1, 1, 2, 2, 3 -> clipped to the last frame (2).
    assert sample_times(3, 4, 8).tolist() == [0, 1, 1, 2, 2, 2]


def test_resample_16fps_81_frames_to_4fps_has_quarter_second_timestamps():
    frames = np.zeros((81, 8, 8, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(81)  # tag each frame with its index
    video = load_video(frames, source_fps=16)
    assert video.duration_s == pytest.approx(5.0625)
    scan = video.resample(4)
    assert scan.fps == 4
    assert scan.num_frames == 21
    np.testing.assert_allclose(scan.timestamps, np.arange(21) * 0.25)
    assert scan.frames[:, 0, 0, 0].tolist() == list(range(0, 81, 4))


# --- load paths ------------------------------------------------------------------------------
def test_load_uint8_array():
    frames = smooth_video(5)
    video = load_video(frames, source_fps=16)
    assert isinstance(video, Video)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (5, 32, 64, 3)
    np.testing.assert_array_equal(video.frames, frames)
    np.testing.assert_allclose(video.timestamps, np.arange(5) / 16)


@pytest.mark.parametrize("layout", ["TCHW", "THWC"])
@pytest.mark.parametrize("kind", ["tensor", "array"])
def test_load_float_frames_in_unit_range(layout, kind):
    frames = smooth_video(4)
    floats = frames.astype(np.float32) / 255.0
    if layout == "TCHW":
        floats = floats.transpose(0, 3, 1, 2)
    source = torch.from_numpy(np.ascontiguousarray(floats)) if kind == "tensor" else floats
    video = load_video(source, source_fps=8)
    np.testing.assert_array_equal(video.frames, frames)  # x/255 -> round(x/255*255) == x
    assert video.fps == 8


def test_load_float_half_maps_to_128():
    # 0.5 * 255 = 127.5 rounds (half to even) to 128; 1.0 -> 255; 0 -> 0.
    video = load_video(torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous(), source_fps=1)
    assert video.frames[0, 0, 0].tolist() == [0, 128, 255]


def test_load_diffusers_batch_returns_one_video_per_sample():
    frames = np.stack([smooth_video(9, seed=s) for s in range(3)])  # (B, F, H, W, C)
    batch = torch.from_numpy(frames.transpose(0, 1, 4, 2, 3).astype(np.float32) / 255.0)  # (B, F, C, H, W)
    videos = load_video(batch, source_fps=16)
    assert isinstance(videos, list) and len(videos) == 3
    for b, video in enumerate(videos):
        np.testing.assert_array_equal(video.frames, frames[b])
        assert video.fps == 16


def test_load_diffusers_batch_with_target_fps_resamples_each():
    batch = torch.rand(2, 17, 3, 16, 16)  # 17 frames at 16 fps -> 4 fps: t = 0, .25, .5, .75, 1.0
    videos = load_video(batch, fps=4, source_fps=16)
    assert [v.num_frames for v in videos] == [5, 5]
    np.testing.assert_allclose(videos[1].timestamps, [0, 0.25, 0.5, 0.75, 1.0])


def test_load_video_passes_video_through_and_resamples():
    video = load_video(smooth_video(16), source_fps=16)
    assert load_video(video) is video
    assert load_video(video, fps=8).timestamps.tolist() == [i / 8 for i in range(8)]


def test_save_and_load_file_round_trip(tmp_path):
    frames = smooth_video(20, height=48, width=64)
    path = save_video(Video(frames, 16.0), tmp_path / "sub" / "clip.mp4")
    assert path.exists() and path.stat().st_size > 0
    assert not list(path.parent.glob(".*"))  # no temporary left behind
    loaded = load_video(path)
    assert loaded.fps == pytest.approx(16.0)
    assert loaded.frames.shape == frames.shape
    # yuv420p halves chroma resolution: measured mean error ~3.2 even at crf 0, ~3.4 at crf 18.
    # A different video differs by far more, so the bound still tells frames apart.
    assert np.abs(loaded.frames.astype(int) - frames.astype(int)).mean() < 6.0
    other = smooth_video(20, height=48, width=64, seed=5)
    assert np.abs(loaded.frames.astype(int) - other.astype(int)).mean() > 20.0
    assert loaded.source == str(path)


def test_load_file_at_target_fps_decodes_the_sampled_frames(tmp_path):
    path = save_video(Video(smooth_video(20, height=32, width=64), 16.0), tmp_path / "clip.mp4")
    full = load_video(path)
    scan = load_video(path, fps=4)
    # 20 frames at 16 fps last 1.25 s: targets 0, .25, .5, .75, 1.0 -> frames 0, 4, 8, 12, 16.
    np.testing.assert_allclose(scan.timestamps, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(scan.frames, full.frames[[0, 4, 8, 12, 16]])
    assert scan.fps == 4


def test_load_file_with_width_decord_misreads(tmp_path):
    # decord 0.6 reports 4-channel frames for 48-pixel-wide H.264; the loader falls back to ffmpeg.
    frames = smooth_video(6, height=32, width=48)
    path = save_video(Video(frames, 16.0), tmp_path / "narrow.mp4")
    loaded = load_video(path, fps=8)
    assert loaded.frames.shape == (3, 32, 48, 3)
    assert np.abs(loaded.frames.astype(int) - frames[[0, 2, 4]].astype(int)).mean() < 6.0  # see round trip


# --- crop --------------------------------------------------------------------------------------
@pytest.fixture
def tagged_81():
    frames = np.zeros((81, 4, 4, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(81)
    return Video(frames, 16.0)


def test_crop_half_open_window(tagged_81):
    clip = tagged_81.crop(2.0, 3.0)  # frames 32..47 (t = 2.0 .. 2.9375), 3.0 excluded
    assert clip.frames[:, 0, 0, 0].tolist() == list(range(32, 48))
    assert clip.start_s == 2.0 and clip.fps == 16
    # CaC turn 2: the window densely resampled at 8 fps keeps source timestamps.
    dense = clip.resample(8)
    np.testing.assert_allclose(dense.timestamps, 2.0 + np.arange(8) / 8)
    assert dense.frames[:, 0, 0, 0].tolist() == list(range(32, 48, 2))


def test_crop_clamps_to_video(tagged_81):
    assert tagged_81.crop(-1.0, 0.5).frames[:, 0, 0, 0].tolist() == list(range(0, 8))
    assert tagged_81.crop(4.5, 99.0).frames[:, 0, 0, 0].tolist() == list(range(72, 81))
    assert tagged_81.crop(-5, 50).num_frames == 81


@pytest.mark.parametrize(
    "window, message",
    [((3.0, 2.0), "inverted"), ((1.0, 1.0), "empty"), ((10.0, 11.0), "holds no frame"), ((0.01, 0.05), "holds no frame")],
)
def test_crop_bad_windows(tagged_81, window, message):
    with pytest.raises(VideoError, match=message):
        tagged_81.crop(*window)


# --- bad input -------------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(VideoError, match="not found: .*nope.mp4"):
        load_video(tmp_path / "nope.mp4")


def test_corrupt_file_names_the_path(tmp_path, capfd):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(VideoError, match="could not decode video .*corrupt.mp4"):
        load_video(bad)
    # our one line is the report: none of decord's or ffmpeg's native lines reach the terminal
    # ("video_reader.cc:83: ERROR opening: ...", "moov atom not found")
    assert capfd.readouterr().err == ""


def test_an_empty_file_is_called_an_empty_file(tmp_path, capfd):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"^video .*empty.mp4 is an empty file \(0 bytes\): write it again, or remove it$"):
        load_video(empty)
    assert capfd.readouterr().err == ""


def test_only_decords_open_error_is_dropped_from_stderr(capfd):
    import os

    from cac_align.video import _without_decord_noise

    with _without_decord_noise():
        os.write(2, b"[05:20:48] /github/workspace/src/video/video_reader.cc:83: ERROR opening: x.mp4, Invalid data\n")
        os.write(2, b"scoring: 1/3 (another thread's progress bar)\n")
    assert capfd.readouterr().err == "scoring: 1/3 (another thread's progress bar)\n"


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), "zero frames"),
        (np.zeros((8, 8, 3), np.uint8), "4-d video"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((2, 8, 8, 3), np.int32), "dtype int32"),
        (np.full((2, 3, 8, 8), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((2, 3, 8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((2, 5, 8, 8), np.float32), "3 channels"),
        (np.zeros((0, 2, 3, 8, 8), np.float32), "empty"),
    ],
)
def test_bad_arrays_raise_clear_errors(array, message):
    with pytest.raises(VideoError, match=message):
        load_video(array, source_fps=16)


def test_array_without_fps_asks_for_it():
    with pytest.raises(VideoError, match="source_fps"):
        load_video(np.zeros((2, 8, 8, 3), np.uint8))


@pytest.mark.parametrize("fps", [0, -4, float("nan"), "fast"])
def test_bad_fps(fps):
    with pytest.raises(VideoError, match="fps"):
        load_video(np.zeros((2, 8, 8, 3), np.uint8), source_fps=fps)
    with pytest.raises(VideoError, match="fps"):
        Video(np.zeros((2, 8, 8, 3), np.uint8), 16).resample(fps)


def test_unsupported_source_type():
    with pytest.raises(VideoError, match="cannot load a video from dict"):
        load_video({"frames": []})


def test_save_rejects_odd_size(tmp_path):
    with pytest.raises(VideoError, match="even"):
        save_video(Video(np.zeros((2, 9, 8, 3), np.uint8), 16), tmp_path / "odd.mp4")
    assert not list(tmp_path.iterdir())


def test_resize_and_fit_pixels_keep_timing():
    video = Video(smooth_video(4, 48, 64), 8.0).crop(0.125, 0.5)
    small = video.fit_pixels(24 * 32)
    # 48x64 = 3072 px > 768: scale sqrt(768 / 3072) = 0.5 -> 24x32.
    assert (small.height, small.width) == (24, 32)
    np.testing.assert_array_equal(small.timestamps, video.timestamps)
    assert small.fps == video.fps and small.num_frames == video.num_frames
    assert video.fit_pixels(10_000) is video


def test_fit_pixels_onto_the_processor_grid():
    """Resize once, onto the patch x merge grid, so the processor keeps the frames as sent."""
    frames = lambda h, w: Video(np.zeros((2, h, w, 3), np.uint8), 8.0)  # noqa: E731
    # 256x384 in 24576 px on a 64-px grid: 2 x 3 cells of 64 -> 128x192, aspect 1.5 kept exactly
    assert (lambda v: (v.height, v.width))(frames(256, 384).fit_pixels(24576, 64)) == (128, 192)
    # 128x192 in 12288 px on a 32-px grid: 3 x 4 cells (96x128, aspect 1.33) would fill the budget but
    # is 11% off the aspect ratio; 2 x 3 cells (64x96, aspect 1.5) is the largest within 10%
    assert (lambda v: (v.height, v.width))(frames(128, 192).fit_pixels(12288, 32)) == (64, 96)
    # already on the grid and within the budget: kept as it is
    video = frames(64, 96)
    assert video.fit_pixels(100_000, 32) is video
    # off the grid but small enough: moved onto the grid (never above the budget)
    small = frames(70, 100).fit_pixels(100_000, 32)
    assert (small.height % 32, small.width % 32) == (0, 0) and small.height * small.width <= 100_000
    with pytest.raises(VideoError, match="holds no 64x64 cell"):
        frames(256, 384).fit_pixels(1000, 64)


def test_ctrl_c_waits_until_a_frame_is_handed_to_ffmpeg():
    """A pipe write to ffmpeg cut by Ctrl-C left it half a frame and the job hanging on it
    (reproduced 2-3 times in 30 interrupts of a `synth` job); save_video hands each frame over
    with SIGINT blocked on the main thread, so the write syscall is never cut: the signal waits,
    or another thread takes it, and the KeyboardInterrupt comes between frames."""
    import signal

    from cac_align.video import _without_interrupts

    def blocked_now():
        return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])

    assert not blocked_now()
    assert _without_interrupts(blocked_now) is True  # blocked during the hand-over ...
    assert not blocked_now()  # ... and delivered as usual afterwards
    with pytest.raises(ValueError):  # an error inside still restores the mask
        _without_interrupts(lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert not blocked_now()


def test_saved_videos_get_the_usual_file_mode(tmp_path):
    # written to a private temporary file (mkstemp: 0600), then renamed: it must end as any file would
    previous = os.umask(0o022)
    try:
        path = save_video(Video(np.zeros((4, 16, 16, 3), np.uint8), 8.0), tmp_path / "v.mp4")
    finally:
        os.umask(previous)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_lazy_video_decodes_only_the_frames_it_is_asked_for(tmp_path, monkeypatch):
    import cac_align.video as video_module

    frames = np.zeros((64, 32, 48, 3), np.uint8)
    frames[:, :8, :8] = (4 * np.arange(64))[:, None, None, None]  # frame i: a grey block of 4 * i (lossless luma below)
    path = save_video(Video(frames, 16.0), tmp_path / "v.mp4", crf=0)
    decoded = []
    real = video_module._read_frames
    monkeypatch.setattr(video_module, "_read_frames", lambda p, idx: (decoded.extend(idx.tolist()), real(p, idx))[1])
    lazy = load_video(path, lazy=True)
    assert lazy.is_lazy and lazy.num_frames == 64 and (lazy.height, lazy.width) == (32, 48) and decoded == []
    # a 4 fps scan of the 4 s video, then a 1 s clip at 8 fps: compose indices, decode nothing ...
    scan = lazy.resample(4)
    clip = lazy.crop(2.0, 3.0).resample(8)
    assert decoded == [] and scan.num_frames == 16 and clip.num_frames == 8
    # ... until the pixels are read: exactly the selected source frames
    pixels = np.asarray(scan.frames)
    assert sorted(decoded) == list(range(0, 64, 4))
    assert [int(round(v / 4)) for v in pixels[:, 0, 0, 0]] == list(range(0, 64, 4))
    decoded.clear()
    assert int(round(clip.frames[3][0, 0, 0] / 4)) == 38 and decoded == [38]  # one frame: frame 2 s + 3/8 s at 16 fps
    assert clip.frames[3, 0, 0, 0] == clip.frames[3][0, 0, 0]  # numpy-style indexing reads through
    eager = load_video(path)
    np.testing.assert_array_equal(np.asarray(lazy.frames), eager.frames)
    assert not lazy.decoded().is_lazy and lazy.decoded().timestamps.tolist() == lazy.timestamps.tolist()


def test_cac_scoring_of_a_long_file_decodes_a_bounded_number_of_frames(tmp_path, monkeypatch, tiny_qwen3_vl):
    import cac_align.video as video_module
    from cac_align.cac.infer import CaCOptions
    from cac_align.rewards.cac import CaCReward
    from cac_align.vlm.hf import HFBackend

    path = save_video(Video(np.zeros((400, 32, 48, 3), np.uint8), 16.0), tmp_path / "long.mp4")  # 25 s
    decoded = []
    real = video_module._read_frames
    monkeypatch.setattr(video_module, "_read_frames", lambda p, idx: (decoded.extend(idx.tolist()), real(p, idx))[1])
    reward = CaCReward(HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor), CaCOptions(mode="no_cot", max_new_tokens=4, max_frames_turn1=12))
    reward([str(path)], ["a"])
    assert 0 < len(decoded) <= 12  # the turn-1 scan's frames, capped, not the file's 400


# ---------------------------------------------------------------------------------------
# Float frames to uint8, a few frames at a time
# ---------------------------------------------------------------------------------------
def test_float_frames_become_uint8_as_numpy_rounds_the_whole_video():
    from cac_align.video import float_frames_to_uint8

    x = np.random.default_rng(0).random((2, 11, 6, 10, 3), dtype=np.float32)  # 11 frames a video: chunks of 8 and 3
    x[0, 0, 0, 0] = [0.5, 0.25, 1.0005]  # 127.5 rounds to even (128), 63.75 up (64); just above 1 is clipped (255)
    x[1, 10, 5, 9] = [-0.0005, 0.0, 1.0]
    whole = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)  # the whole array at once
    ours = float_frames_to_uint8(x)
    assert ours.dtype == np.uint8 and ours.shape == x.shape and np.array_equal(ours, whole)
    assert ours[0, 0, 0, 0].tolist() == [128, 64, 255] and ours[1, 10, 5, 9].tolist() == [0, 0, 255]
    channels_first = torch.from_numpy(x).permute(0, 1, 4, 2, 3).contiguous()  # diffusers' output_type="pt"
    assert np.array_equal(float_frames_to_uint8(channels_first, channels_first=True), whole)
    half = channels_first.bfloat16()  # converted from its own values, as float32 would be
    expected = np.round(np.clip(half.float().permute(0, 1, 3, 4, 2).numpy(), 0.0, 1.0) * 255.0).astype(np.uint8)
    assert np.array_equal(float_frames_to_uint8(half, channels_first=True), expected)
    videos = load_video(channels_first, source_fps=16)  # a diffusers batch (B, F, C, H, W) of float
    assert [v.frames.dtype for v in videos] == [np.uint8] * 2 and all(np.array_equal(v.frames, whole[b]) for b, v in enumerate(videos))


def test_float_frames_out_of_range_or_not_finite_are_refused_naming_the_whole_range():
    from cac_align.video import float_frames_to_uint8

    x = np.full((12, 4, 4, 3), 0.5, dtype=np.float32)
    x[10, 0, 0, 0] = 1.5  # in the second chunk: the message still gives the whole video's range
    x[1, 0, 0, 0] = -0.25
    with pytest.raises(VideoError, match=r"got values in \[-0\.25, 1\.5\]"):
        float_frames_to_uint8(x)
    x[10, 0, 0, 0] = np.nan
    with pytest.raises(VideoError, match="NaN or inf"):
        load_video(torch.from_numpy(x), source_fps=8)


def test_no_float32_copy_of_a_video_is_made_on_the_host():
    """The host holds the uint8 result and one chunk's float32 temporaries; the whole-array
    formula held three float32 copies of the video at once (clipped, scaled, rounded)."""
    import tracemalloc

    from cac_align.video import float_frames_to_uint8

    x = np.random.default_rng(1).random((96, 40, 64, 3), dtype=np.float32)  # 2.9 MB; 0.74 MB in uint8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = float_frames_to_uint8(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.nbytes == x.nbytes // 4 and peak < out.nbytes + x.nbytes / 4  # a chunk is 8 of 96 frames


@pytest.mark.parametrize("rate", [32_000, 44_100, 48_000])  # MiniMax-H3's audio VAE, Kandinsky 6's, LTX-2.3's vocoder
def test_a_soundtrack_at_any_rate_passes_through_the_writer_and_reader_unchanged(tmp_path, rate):
    from cac_align.video import read_soundtrack, save_wav

    # a 440 Hz tone, half a second, and a quieter 1 kHz one on a second channel
    t = np.arange(rate // 2) / rate
    sound = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)
    video = Video(frames=np.zeros((12, 32, 32, 3), np.uint8), fps=24.0)
    save_video(video, tmp_path / "v.mp4", audio=sound, sample_rate=rate)
    save_wav(sound, rate, tmp_path / "v.wav")
    wav, wav_rate = read_soundtrack(tmp_path / "v.wav")
    assert wav_rate == rate and wav.shape == sound.shape
    assert np.array_equal(wav, np.round(sound * 32767) / np.float32(32767))  # 16-bit PCM: exact after quantizing
    aac, aac_rate = read_soundtrack(tmp_path / "v.mp4")
    assert aac_rate == rate and aac.shape == sound.shape  # no resampling: the stream keeps the rate and the length
    peaks = [np.argmax(np.abs(np.fft.rfft(channel))) * rate / aac.shape[1] for channel in aac]
    assert peaks == [440.0, 1000.0]  # each tone where it was (AAC is lossy; a resampled read would move them)
    save_video(video, tmp_path / "silent.mp4")
    assert read_soundtrack(tmp_path / "silent.mp4") == (None, None)  # a video without a track: nothing, not an error
