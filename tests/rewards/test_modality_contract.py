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
    (np.zeros((2, 2, 10), np.float32), 16000, "(channels, samples)"),
])
def test_a_soundtrack_without_a_rate_or_of_another_shape_is_refused(audio, rate, why):
    with pytest.raises(VideoError, match=why.replace("(", r"\(").replace(")", r"\)")):
        Video(_frames(), 8.0, audio=audio, sample_rate=rate)


def _loudness_and_brightness():
    from cac_align.rewards.audio import AudioReward

    class Loud(AudioReward):
        name, modality, needs_prompt, score_range = "loud", "audio", False, (0.0, 1.0)

        def score_batch(self, requests):
            return [{"score": float(np.abs(video.audio).max())} for video, _ in requests]

    class Bright(RewardBase):
        name, score_range = "bright", (0.0, 1.0)

        def __call__(self, videos, prompts=None, metadata=None):
            loaded = load_inputs(videos, metadata, 8.0)
            ok = [isinstance(v, Video) for v in loaded]
            return RewardOutput(self.name, [float(np.asarray(v.frames).mean()) / 255 if k else np.nan for v, k in zip(loaded, ok)], ok)

    return Loud(), Bright()


@pytest.mark.parametrize(("audio", "rate"), [
    (np.zeros((2, 2, 800), np.float32), 16000),  # (batch, channels, samples): not a track
    (np.full(800, 0.5, np.float32), None),  # no rate
    (np.full(800, 0.5, np.float32), 16000.5),  # a rate that is not a whole number
])
def test_a_bad_soundtrack_in_metadata_fails_only_the_rewards_that_hear(audio, rate):
    loud, bright = _loudness_and_brightness()
    metadata = [{"fps": 8, "audio": audio, "sample_rate": rate}]
    seen = bright([_frames()], ["p"], metadata)
    heard = loud([_frames()], ["p"], metadata)
    assert seen.valid.tolist() == [True]  # the frames are whole
    assert heard.valid.tolist() == [False] and heard.details[0]["error_kind"] == "audio"
    assert "unusable soundtrack" in heard.details[0]["error"] and np.isnan(heard.scores[0])


def test_a_batch_of_one_track_and_a_whole_float_rate_are_taken():
    loaded = load_inputs([_frames()], [{"fps": 8, "audio": np.full((1, 2, 800), 0.5, np.float32), "sample_rate": 16000.0}])
    assert loaded[0].audio.shape == (2, 800) and loaded[0].sample_rate == 16000 and isinstance(loaded[0].sample_rate, int)


def test_a_file_is_heard_only_by_a_reward_that_hears_and_a_broken_track_leaves_its_frames(tmp_path):
    from cac_align.video import load_video, save_video

    t = np.arange(8000) / 16000
    path = tmp_path / "v.mp4"
    save_video(Video(np.full((8, 16, 16, 3), 90, np.uint8), 16.0), path, audio=0.5 * np.sin(2 * np.pi * 440 * t), sample_rate=16000)
    assert load_video(str(path), lazy=True).audio is None  # a reward that only sees does not decode the track
    heard = load_video(str(path), lazy=True, audio=True)
    assert heard.sample_rate == 16000 and heard.audio.shape[1] == 8000
    # the AAC packets scrambled: the frames still decode, the track does not
    data = bytearray(path.read_bytes())
    import av

    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.pos is not None and p.size]
    for pos, size in packets:
        data[pos:pos + size] = bytes(size)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    loud, bright = _loudness_and_brightness()
    assert bright([str(broken)], ["p"]).valid.tolist() == [True]
    out = loud([str(broken)], ["p"])
    assert out.valid.tolist() == [False] and out.details[0]["error_kind"] == "audio"
