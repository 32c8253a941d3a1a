"""The jobs with a reward that hears (issue #89). `score` on video files hears their AAC tracks.
Best-of-N: each candidate's soundtrack reaches the reward (the lossless WAV beside its mp4), the chosen
video keeps its track, and the summary shows each component with what it judges (on the shipped tiny
LTX-2, tiny-random:ltx2: diffusers' own LTX2Pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.config import load_config
from cac_align.jobs.best_of_n import BonConfig, run
from cac_align.rewards.combine import CombinedReward
from cac_align.rewards.toy import BrightnessReward
from cac_align.jobs.score import ScoreConfig
from cac_align.jobs.score import run as score
from cac_align.video import Video, read_soundtrack, save_video
from audio_rewards import Loudness, rms
from conftest import REPO_ROOT


def test_best_of_n_hears_each_candidate_and_keeps_the_chosen_ones_sound(tmp_path):
    (tmp_path / "prompts.txt").write_text("a dog barking in the rain\n")
    config = load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny_ltx2.yaml",
                         [f"out_dir={tmp_path / 'run'}", "n=2", f"prompts={tmp_path / 'prompts.txt'}"], job="bon")
    loud = Loudness()
    run(config, reward=CombinedReward([BrightnessReward(), loud]))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["valid"] for r in rows)
    # the reward heard each candidate's WAV exactly (16-bit PCM, 24 kHz, stereo), in candidate order
    assert len(loud.heard) == 2
    for row, (track, rate) in zip(rows, loud.heard):
        wav, wav_rate = read_soundtrack(out / row["video"].replace(".mp4", ".wav"))
        assert rate == wav_rate == 24000 and track.shape == wav.shape == (2, 7920)
        np.testing.assert_array_equal(track, wav)
        assert row["components"]["loudness"]["raw"] == pytest.approx(rms(wav))
        assert row["components"]["loudness"]["judges"] == "audio" and row["components"]["brightness"]["judges"] == "video"
    # the chosen video keeps its soundtrack: its mp4 carries the AAC track, its WAV the candidate's samples
    for row in (r for r in rows if r["chosen"]):
        chosen = next((out / "chosen").glob(f"{row['prompt_index']:05d}_*.mp4"))
        np.testing.assert_array_equal(read_soundtrack(chosen.with_suffix(".wav"))[0], read_soundtrack(out / row["video"].replace(".mp4", ".wav"))[0])
        track, rate = read_soundtrack(chosen)
        assert rate == 24000 and track.shape == (2, 7920)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rewards"]["loudness"]["judges"] == "audio" and summary["rewards"]["brightness"]["judges"] == "video"
    assert "| loudness | audio |" in (out / "summary.md").read_text()


def test_score_on_files_hears_their_soundtracks(tmp_path):
    t = np.arange(18000) / 16000  # 1.125 s: 9 frames at 8 fps
    tone = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    frames = np.zeros((9, 32, 32, 3), np.uint8)
    save_video(Video(frames, 8.0), tmp_path / "videos" / "a_sound.mp4", audio=tone, sample_rate=16000)
    save_video(Video(frames, 8.0), tmp_path / "videos" / "b_silent.mp4")
    rows = score(ScoreConfig(out_dir=str(tmp_path / "out"), videos=str(tmp_path / "videos")), reward=Loudness())
    assert [r["valid"] for r in rows] == [True, False]
    assert rows[0]["score"] == pytest.approx(rms(tone), abs=0.01)  # the AAC track, read back from the file
    assert rows[1]["score"] is None and rows[1]["error"].startswith("no soundtrack: loudness judges the sound")
