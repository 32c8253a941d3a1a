"""What every reward that hears shares: the checks of a soundtrack before it is judged, resampling
and the base class of such a reward (``clap``, ``audiobox``, ``sync``: issue #89).

A reward of modality ``"audio"`` or ``"both"`` scores a sample only when its soundtrack is usable;
otherwise the sample is invalid with ``error_kind`` :attr:`ErrorKind.AUDIO` and the reason, never a
score of 0 (a trainer would read 0 as "bad sound" and push the generator on a sample nobody heard):

- no track (a silent video, a file without an audio stream, metadata without ``audio``);
- silence: every sample within :data:`SILENCE` of 0 (a vocoder that gave up);
- NaN or inf anywhere in it;
- a rate the reward cannot take, for a reward that does not resample;
- a track shorter than the video: its length in seconds below ``frames / fps`` by more than
  the tolerance (by default one frame of the video plus :data:`SLACK_S`: a track that reaches the
  last frame's start, give or take a generator's rounding, is whole).

The soundtrack reaches a reward as :attr:`cac_align.video.Video.audio` (float32 ``(channels,
samples)``) with its ``sample_rate``: from a trainer's metadata (``audio`` / ``sample_rate``), or
read from a video file's audio stream (:func:`cac_align.video.read_soundtrack`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from cac_align.rewards.base import BatchReward, ErrorKind
from cac_align.video import Video

__all__ = ["SILENCE", "SLACK_S", "AudioReward", "mono", "resample_audio", "soundtrack_problem"]

# Peak |x| at or below which a track counts as silence: 1e-4 is -80 dBFS, below one step of 16-bit
# PCM's dither (3e-5 is one step), so a track written to a WAV and read back as all zeros is silent.
SILENCE = 1e-4
# What a generator's track may lack at its end beyond one frame: LTX-2 sizes its sound in latents of
# 1/25 s (rounded: up to 20 ms) and its causal audio VAE gives (latents - 1) x 4 + 1 mel frames (30 ms
# short at 10 ms a mel frame). The tiny LTX-2 (9 frames at 24 fps, 0.375 s) makes 0.330 s: 45 ms short.
SLACK_S = 0.05


def soundtrack_problem(
    video: Video,
    rates: Sequence[int] | None = None,
    tolerance_s: float | None = None,
    reward: str = "this reward",
) -> str | None:
    """Why ``video``'s soundtrack cannot be judged, in one line, or None when it can.

    Args:
        video: a decoded video, with its ``audio`` ``(channels, samples)`` and ``sample_rate``.
        rates: the sample rates the reward takes as they are (None: any, it resamples).
        tolerance_s: how much shorter than the video (``num_frames / fps`` s) the track may be;
            None: one frame of the video and :data:`SLACK_S` (``1 / fps + 0.05``).
        reward: the reward's name, for the message.
    """
    track = video.audio
    if track is None and video.audio_problem:  # a track came with the video and could not be taken
        return f"unusable soundtrack: {video.audio_problem}"
    if track is None or track.size == 0:
        return (f"no soundtrack: {reward} judges the sound; pass metadata 'audio' and 'sample_rate' with the frames, "
                "or a video file with an audio stream")
    bad = int(np.count_nonzero(~np.isfinite(track)))
    if bad:
        return f"the soundtrack has {bad} non-finite samples (NaN or inf) of {track.size}"
    peak = float(np.abs(track).max())
    if peak <= SILENCE:
        return f"the soundtrack is silent (peak |x| = {peak:.2g} <= {SILENCE:g})"
    rate = int(video.sample_rate)
    if rates is not None and rate not in rates:
        return f"the soundtrack is at {rate} Hz and {reward} takes {' or '.join(f'{r} Hz' for r in rates)} (it does not resample)"
    tolerance = 1.0 / video.fps + SLACK_S if tolerance_s is None else tolerance_s
    heard_s, seen_s = track.shape[1] / rate, video.num_frames / video.fps
    if heard_s < seen_s - tolerance - 1e-9:
        return (f"the soundtrack is {heard_s:.3f} s ({track.shape[1]} samples at {rate} Hz), shorter than the video's "
                f"{seen_s:.3f} s ({video.num_frames} frames at {video.fps:g} fps; tolerance {tolerance:.3f} s)")
    return None


def mono(track: np.ndarray) -> np.ndarray:
    """A soundtrack ``(channels, samples)`` as one channel ``(samples,)``: the mean of its channels."""
    return np.asarray(track, dtype=np.float32).mean(axis=0)


def resample_audio(track: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``track`` (``(..., samples)``, float) from ``rate`` to ``target`` Hz by polyphase filtering
    (:func:`scipy.signal.resample_poly`, its default Kaiser window), float32; unchanged when the
    rates are equal. 44.1 kHz to 48 kHz is up 160, down 147."""
    if int(rate) == int(target):
        return np.asarray(track, dtype=np.float32)
    try:
        from scipy.signal import resample_poly
    except ImportError:  # pragma: no cover - scipy is in the audio extra
        raise ImportError("resampling a soundtrack needs scipy: pip install 'cac_align[audio]' (or pip install scipy)") from None
    g = math.gcd(int(rate), int(target))
    return resample_poly(np.asarray(track, dtype=np.float64), int(target) // g, int(rate) // g, axis=-1).astype(np.float32)


class AudioReward(BatchReward):
    """A :class:`BatchReward` that hears: a sample whose soundtrack fails :func:`soundtrack_problem`
    is invalid (``error_kind`` ``audio``) before the model is asked.

    A subclass sets ``modality`` ("audio" or "both"), ``reads_prompt``, ``sample_rates`` (the rates
    it takes as they are; None when it resamples) and ``tolerance_s``, and writes ``score_batch``.
    """

    modality = "audio"
    sample_rates: tuple[int, ...] | None = None
    tolerance_s: float | None = None

    def input_problem(self, video: Video) -> tuple[str, str] | None:
        problem = soundtrack_problem(video, self.sample_rates, self.tolerance_s, self.name)
        return None if problem is None else (problem, ErrorKind.AUDIO)

