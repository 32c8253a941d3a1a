"""A reward of ours that hears, for tests that need one without a model (named by dotted path as
``audio_rewards:loudness`` from a sections file, or built directly)."""

from __future__ import annotations

import numpy as np

from cac_align.rewards.audio import AudioReward

__all__ = ["Loudness", "loudness"]


class Loudness(AudioReward):
    """The RMS of the soundtrack (all channels), in [0, 1]; keeps what it heard."""

    name = "loudness"
    score_range = (0.0, 1.0)
    needs_prompt = False
    reads_prompt = False

    def __init__(self, source_fps: float = 16.0):
        self.source_fps = source_fps
        self.heard: list = []

    def score_batch(self, requests):
        self.heard += [(video.audio.copy(), video.sample_rate) for video, _ in requests]
        return [{"score": rms(video.audio)} for video, _ in requests]


def rms(track) -> float:
    return float(np.sqrt(np.mean(np.asarray(track, dtype=np.float64) ** 2)))


def loudness(source_fps: float = 16.0) -> Loudness:
    return Loudness(source_fps)
