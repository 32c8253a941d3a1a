"""The reward contract's modality, prompt and soundtrack members (sound is judged: issue #89)."""

from __future__ import annotations

import numpy as np
import pytest

from cac_align.rewards.base import MODALITIES, RewardBase, RewardOutput, load_inputs
from cac_align.rewards.combine import CombinedReward
from cac_align.video import Video, VideoError


class _Scripted(RewardBase):
    def __init__(self, name: str, modality: str, reads_prompt: bool, score: float):
        self.name, self.modality, self.reads_prompt, self.score = name, modality, reads_prompt, score
        self.score_range = (0.0, 1.0)
        self.seen: list = []

    def __call__(self, videos, prompts=None, metadata=None):
        self.seen = list(videos)
        return RewardOutput(self.name, [self.score] * len(videos), [True] * len(videos))


def _frames() -> np.ndarray:
    return np.zeros((3, 8, 8, 3), np.uint8)


def test_a_reward_judges_video_and_reads_its_prompt_unless_it_says_otherwise():
    plain = _Scripted("v", "video", True, 0.5)
    assert RewardBase.modality == "video" and RewardBase.reads_prompt is True
    assert plain.modalities == {"v": "video"}
    assert MODALITIES == ("video", "audio", "both")


@pytest.mark.parametrize(
    ("parts", "modality", "reads_prompt"),
    [
        ((("v", "video", True), ("w", "video", False)), "video", True),
        ((("clap", "audio", True), ("box", "audio", False)), "audio", True),
        ((("v", "video", True), ("clap", "audio", True)), "both", True),
        ((("box", "audio", False), ("sync", "both", False)), "both", False),
    ],
)
def test_a_combined_reward_names_each_components_modality(parts, modality, reads_prompt):
    combined = CombinedReward([_Scripted(n, m, p, 0.5) for n, m, p in parts])
    assert combined.modalities == {n: m for n, m, _ in parts}
    assert combined.modality == modality
    assert combined.reads_prompt is reads_prompt
    out = combined([_frames()], ["a cat"], {"fps": 8})
    assert out.info["modalities"] == {n: m for n, m, _ in parts}


def test_a_soundtrack_in_metadata_reaches_the_reward_with_its_rate():
    wave = np.linspace(-0.5, 0.5, 400, dtype=np.float32)
    loaded = load_inputs([_frames(), _frames()], [{"fps": 8, "audio": wave, "sample_rate": 16000}, {"fps": 8}])
    assert loaded[0].audio.shape == (1, 400) and loaded[0].sample_rate == 16000
    np.testing.assert_array_equal(loaded[0].audio[0], wave)
    assert loaded[1].audio is None and loaded[1].sample_rate is None


@pytest.mark.parametrize(("audio", "rate", "why"), [
    (np.zeros(10, np.float32), None, "sample_rate"),
    (np.zeros(10, np.float32), 0, "sample_rate"),
    (np.zeros((1, 2, 10), np.float32), 16000, "(channels, samples)"),
])
def test_a_soundtrack_without_a_rate_or_of_another_shape_is_refused(audio, rate, why):
    with pytest.raises(VideoError, match=why.replace("(", r"\(").replace(")", r"\)")):
        Video(_frames(), 8.0, audio=audio, sample_rate=rate)
