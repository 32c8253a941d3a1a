"""A reward that hears, on a sample whose soundtrack it cannot judge: invalid with the reason, never
0 (issue #89, "Bad sound"); and a video file's soundtrack reaches the reward (score, bon)."""

from __future__ import annotations

import numpy as np
import pytest

from cac_align.rewards.audio import SILENCE, AudioReward, resample_audio, soundtrack_problem
from cac_align.rewards.base import ErrorKind, load_inputs
from cac_align.video import Video, load_video, read_soundtrack, save_video, save_wav

RATE = 16000


class _Loudness(AudioReward):
    """A reward of ours that hears: the peak of the track (scored only when the checks pass)."""

    name = "loudness"
    needs_prompt = False
    sample_rates = (RATE,)

    def score_batch(self, requests):
        return [{"score": float(np.abs(video.audio).max())} for video, _ in requests]


def _frames(n: int = 8) -> np.ndarray:
    return np.zeros((n, 8, 8, 3), np.uint8)


def _tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return np.repeat((0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None], channels, axis=0)


def _nan_track() -> np.ndarray:
    track = _tone(1.0)
    track[0, 100] = np.nan
    return track


def _inf_track() -> np.ndarray:
    track = _tone(1.0)
    track[0, 7] = -np.inf
    return track


# 8 frames at 8 fps: the video lasts 1 s; a track may be one frame and 0.05 s (0.175 s) shorter
@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({}, "no soundtrack: loudness judges the sound"),
        ({"audio": np.zeros((1, RATE), np.float32), "sample_rate": RATE}, "the soundtrack is silent"),
        ({"audio": np.full((1, RATE), SILENCE / 2, np.float32), "sample_rate": RATE}, "the soundtrack is silent"),
        ({"audio": _nan_track(), "sample_rate": RATE}, "the soundtrack has 1 non-finite samples (NaN or inf) of 16000"),
        ({"audio": _inf_track(), "sample_rate": RATE}, "the soundtrack has 1 non-finite samples"),
        ({"audio": _tone(1.0, 22050), "sample_rate": 22050}, "the soundtrack is at 22050 Hz and loudness takes 16000 Hz (it does not resample)"),
        ({"audio": _tone(0.5), "sample_rate": RATE}, "the soundtrack is 0.500 s (8000 samples at 16000 Hz), shorter than the video's 1.000 s (8 frames at 8 fps"),
        ({"audio": _tone(0.82), "sample_rate": RATE}, "the soundtrack is 0.820 s (13120 samples at 16000 Hz), shorter than the video's 1.000 s (8 frames at 8 fps; tolerance 0.175 s)"),
    ],
    ids=["no track", "silence", "below the floor", "NaN", "inf", "wrong rate", "short", "just too short"],
)
def test_a_track_the_reward_cannot_hear_makes_the_sample_invalid_with_its_reason(row, reason):
    out = _Loudness()([_frames(), _frames()], None, [{"fps": 8, **row}, {"fps": 8, "audio": _tone(1.0), "sample_rate": RATE}])
    assert out.valid.tolist() == [False, True]
    assert np.isnan(out.scores[0])  # never 0
    assert out.details[0]["error_kind"] == ErrorKind.AUDIO == "audio"
    assert out.details[0]["error"].startswith(reason)
    assert out.scores[1] == pytest.approx(0.5, abs=1e-4)


def test_a_track_one_frame_short_is_whole_and_the_tolerance_is_the_rewards():
    video = Video(_frames(), 8.0, audio=_tone(0.83), sample_rate=RATE)  # 1 s of video, 0.83 s of sound
    assert soundtrack_problem(video) is None  # reaches the last frame's start (7 / 8 s) but for 45 ms (SLACK_S: 50)
    assert "shorter than the video" in soundtrack_problem(video, tolerance_s=0.05)
    longer = Video(_frames(), 8.0, audio=_tone(1.3), sample_rate=RATE)
    assert soundtrack_problem(longer, tolerance_s=0.0) is None


def test_resampling_keeps_a_tone_and_its_length():
    # 1 s of 440 Hz at 44.1 kHz -> 48 kHz: 48000 samples, the same tone (its peak where a 48 kHz tone's is)
    track = _tone(1.0, 44100)
    out = resample_audio(track, 44100, 48000)
    assert out.shape == (1, 48000) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 1000:47000], _tone(1.0, 48000)[0, 1000:47000], atol=2e-3)
    assert resample_audio(track, 44100, 44100) is not None and resample_audio(track, 44100, 44100).shape == track.shape


def test_a_video_file_with_an_aac_track_is_read_with_its_soundtrack(tmp_path):
    # save_video muxes AAC; load_video reads it back at its rate and length (ffmpeg drops the
    # encoder's priming samples, and the last frame's padding is cut to the stream's duration)
    wave = _tone(1.125, RATE, channels=2)
    path = save_video(Video(np.zeros((9, 32, 32, 3), np.uint8), 8.0), tmp_path / "a.mp4", audio=wave, sample_rate=RATE)
    video = load_video(path, lazy=True, audio=True)
    assert video.sample_rate == RATE and video.audio.shape == (2, 18000)
    np.testing.assert_allclose(video.audio, wave, atol=0.03)  # AAC at 192 kb/s
    # load_inputs (what every reward calls, and so `score` on files) hears it for a reward that hears; the checks pass
    loaded = load_inputs([str(path)], None, audio=True)[0]
    assert loaded.audio.shape == (2, 18000) and loaded.sample_rate == RATE
    out = _Loudness()([str(path)], None)
    assert out.valid.tolist() == [True] and out.scores[0] == pytest.approx(0.5, abs=0.03)
    # metadata's track (bon's lossless WAV) takes precedence over the file's AAC
    exact = load_inputs([str(path)], [{"audio": wave[:, :9000], "sample_rate": RATE}])[0]
    assert exact.audio.shape == (2, 9000)


def test_a_video_file_without_sound_and_a_wav_file(tmp_path):
    silent = save_video(Video(np.zeros((9, 32, 32, 3), np.uint8), 8.0), tmp_path / "silent.mp4")
    assert load_video(silent).audio is None
    out = _Loudness()([str(silent)], None)
    assert not out.valid[0] and out.details[0]["error"].startswith("no soundtrack")
    stereo = np.stack([_tone(0.5)[0], -_tone(0.5)[0]])
    wav = save_wav(stereo, RATE, tmp_path / "a.wav")
    track, rate = read_soundtrack(wav)
    assert rate == RATE and track.shape == (2, 8000)
    np.testing.assert_allclose(track, stereo, atol=1 / 32767)
    assert read_soundtrack(silent) == (None, None)
