"""Two-turn CaC inference: the protocol's rules, crop/resample exactness, Eq. 7, failures per video."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.infer import CaCOptions, CaCScorer
from cac_align.video import Video, save_video
from cac_align.vlm.backend import videos_of
from cac_align.vlm.hf import HFBackend
from scripted import CONFIRM, NORMAL, REJECT, ScriptedBackend, abnormal_turn1, tagged_video




def test_turn1_normal_ends_at_turn1_and_applies_eq7():
    backend = ScriptedBackend({0: NORMAL})
    (result,) = CaCScorer(backend).score([tagged_video(seed=0)])
    assert result.valid and result.status == "normal" and result.turn2 is None
    assert result.reward == pytest.approx(0.6 / (0.6 + 0.2))  # Eq. 7 renormalizes the two candidates
    assert len(backend.generate_calls) == 1
    # The status probability is read where the status value begins in turn 1's own answer.
    (_, prefixes), = backend.prob_calls
    assert prefixes == ['{"cot": "fine", "status": "']


def test_turn1_sees_the_video_at_4fps():
    backend = ScriptedBackend({0: NORMAL})
    CaCScorer(backend).score([tagged_video(seconds=4.0, fps=16.0)])
    (scan,) = videos_of(backend.generate_calls[0][0])
    assert scan.fps == 4 and scan.num_frames == 16
    assert scan.frames[:, 0, 0, 0].tolist() == list(range(0, 64, 4))  # frames at 0, 0.25, ... s


def test_abnormal_window_is_cropped_and_resampled_at_8fps_for_turn2():
    backend = ScriptedBackend({0: abnormal_turn1(1.0, 2.0)}, {0: CONFIRM})
    (result,) = CaCScorer(backend).score([tagged_video(seconds=4.0, fps=16.0)])
    turn2_request = backend.generate_calls[1][0]
    scan, clip = videos_of(turn2_request)
    # Turn 2 sees exactly the source frames of [1.0, 2.0) at 8 fps: 16, 18, ..., 30.
    assert clip.fps == 8 and clip.frames[:, 0, 0, 0].tolist() == list(range(16, 32, 2))
    np.testing.assert_allclose(clip.timestamps, 1.0 + np.arange(8) / 8)
    # ... after turn 1's answer in the same conversation.
    assert [m["role"] for m in turn2_request] == ["user", "assistant", "user"]
    assert turn2_request[1]["content"][0]["text"] == abnormal_turn1(1.0, 2.0)
    assert result.valid and result.status == "abnormal" and result.window_s == (1.0, 2.0)
    assert result.reward == pytest.approx(0.1 / (0.1 + 0.3))  # from turn 2's probabilities
    assert result.boxes == [
        {"frame": 0, "time_s": 1.0, "type": "Human Distortion", "boxes": [[10.0, 20.0, 30.0, 40.0]]},
        {"frame": 3, "time_s": 1.375, "type": "Human Distortion", "boxes": [[15.0, 25.0, 35.0, 45.0]]},
    ]
    assert backend.prob_calls[0][1] == ['{"cot": "yes", "status": "']


def test_turn2_not_confirming_makes_the_video_normal():
    backend = ScriptedBackend({0: abnormal_turn1(1.0, 2.0)}, {0: REJECT})
    (result,) = CaCScorer(backend).score([tagged_video()])
    assert result.status == "normal" and result.valid and result.boxes == []


def test_unusable_window_falls_back_to_whole_video_capped():
    no_window = json.dumps({"status": "abnormal", "anomalies": [{"type": "Human Distortion"}]})
    backend = ScriptedBackend({0: no_window}, {0: CONFIRM})
    (result,) = CaCScorer(backend, CaCOptions(max_frames_turn2=16)).score([tagged_video(seconds=4.0)])
    clip = videos_of(backend.generate_calls[1][0])[1]
    assert result.window_s == (0.0, 4.0)
    assert clip.num_frames == 16 and clip.fps == 4  # 8 fps would be 32 frames; capped at 16
    invalid = CaCScorer(ScriptedBackend({0: no_window}), CaCOptions(fallback="invalid")).score([tagged_video()])[0]
    assert not invalid.valid and invalid.reward is None and "no usable time window" in invalid.error


def test_batch_runs_one_generate_per_turn_and_failures_stay_per_video(tmp_path):
    answers1 = {0: NORMAL, 1: abnormal_turn1(0.5, 1.5), 2: "I cannot tell.", 3: abnormal_turn1(2.0, 3.0)}
    answers2 = {1: CONFIRM, 3: REJECT}
    backend = ScriptedBackend(answers1, answers2)
    videos = [tagged_video(seed=s) for s in range(4)] + [str(tmp_path / "missing.mp4"), tagged_video(seconds=0.125, seed=9)]
    results = CaCScorer(backend).score(videos, prompts=[f"p{i}" for i in range(6)])
    assert len(backend.generate_calls) == 2
    assert len(backend.generate_calls[0]) == 4 and len(backend.generate_calls[1]) == 2  # batched per turn
    assert [r.valid for r in results] == [True, True, False, True, False, False]
    assert [r.status for r in results[:4]] == ["normal", "abnormal", None, "normal"]
    assert results[2].reward is None and "no readable status" in results[2].error
    assert results[2].turn1.text == "I cannot tell."  # the raw answer is kept
    assert "not found" in results[4].error and results[4].reward is None
    assert "shorter than one frame" in results[5].error
    # The caption reaches the prompt.
    assert "p1" in backend.generate_calls[0][1][0]["content"][1]["text"]


def test_mismatched_prompts_raise():
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        CaCScorer(ScriptedBackend({})).score([tagged_video(), tagged_video()], prompts=["a"])


def test_no_cot_mode_scores_without_generating():
    backend = ScriptedBackend({})
    (result,) = CaCScorer(backend, CaCOptions(mode="no_cot")).score([tagged_video()])
    assert backend.generate_calls == []
    assert result.valid and result.status == "normal" and result.reward == pytest.approx(0.75)
    assert backend.prob_calls[0][1] == ['{"status": "']


def test_single_turn_mode_never_runs_turn2():
    backend = ScriptedBackend({0: abnormal_turn1(1.0, 2.0)})
    (result,) = CaCScorer(backend, CaCOptions(mode="single_turn")).score([tagged_video()])
    assert len(backend.generate_calls) == 1 and result.turn2 is None
    assert result.status == "abnormal" and result.reward == pytest.approx(0.75)


def test_options_are_checked():
    with pytest.raises(ValueError, match="mode"):
        CaCOptions(mode="three_turn")
    with pytest.raises(ValueError, match="fallback"):
        CaCOptions(fallback="guess")


# --- the real in-process backend on the tiny random Qwen3-VL -------------------------------------
def test_tiny_qwen3_vl_end_to_end(tiny_qwen3_vl, tmp_path):
    backend = HFBackend(tiny_qwen3_vl.model, tiny_qwen3_vl.processor)
    path = save_video(Video(np.random.default_rng(0).integers(0, 255, (16, 64, 64, 3), dtype=np.uint8), 8.0), tmp_path / "a.mp4")
    # no_cot: real teacher-forced probabilities through the whole stack -> a valid reward in (0, 1).
    (scored,) = CaCScorer(backend, CaCOptions(mode="no_cot")).score([str(path)])
    assert scored.valid and 0 < scored.reward < 1
    manual = backend.choice_probs([_no_cot_request(path)], ['{"status": "'], ["normal", "abnormal"])[0]
    assert scored.reward == pytest.approx(manual[0] / manual.sum(), rel=1e-5)
    # two_turn with real generation: random weights emit no status, which is an invalid result, not a 0.
    (generated,) = CaCScorer(backend, CaCOptions(max_new_tokens=8)).score([str(path)])
    assert generated.turn1 is not None and generated.turn1.text == generated.turn1.judgment.raw
    assert generated.valid is False and generated.reward is None and "no readable status" in generated.error


def _no_cot_request(path):
    """The request no_cot mode builds, assembled by hand."""
    from cac_align.cac.prompts import no_cot_prompt
    from cac_align.video import load_video
    from cac_align.vlm.backend import user

    video = load_video(str(path))
    scan = video.resample(4.0)
    return [user(scan, no_cot_prompt(video.duration_s, scan.fps, scan.num_frames, None))]


def test_pixel_cap_reaches_both_turns():
    backend = ScriptedBackend({0: abnormal_turn1(1.0, 2.0)}, {0: CONFIRM})
    CaCScorer(backend, CaCOptions(max_pixels=16 * 16, size_multiple=16)).score([tagged_video()])  # 32x32 -> 16x16
    scan, clip = videos_of(backend.generate_calls[1][0])
    assert (scan.height, scan.width) == (16, 16) and (clip.height, clip.width) == (16, 16)
