"""Two-turn CaC inference: the protocol's rules, crop/resample exactness, Eq. 7, failures per video."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.infer import CaCOptions, CaCScorer
from cac_align.video import Video, save_video
from cac_align.vlm.backend import BackendBase, Completion, videos_of
from cac_align.vlm.hf import HFBackend


def _tagged(seconds: float = 4.0, fps: float = 16.0, seed: int = 0) -> Video:
    """A video whose frame i carries i in pixel (0, 0, 0) and a per-video tag 20 * seed in (0, 1, 0)."""
    n = int(seconds * fps)
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)
    frames[:, 0, 1, 0] = 20 * seed
    return Video(frames, fps, source=f"video{seed}")


class ScriptedBackend(BackendBase):
    """Our Backend protocol with canned answers keyed by video seed; records every call."""

    def __init__(self, turn1: dict, turn2: dict | None = None, probs1=(0.6, 0.2), probs2=(0.1, 0.3)):
        self.turn1, self.turn2 = turn1, turn2 or {}
        self.probs1, self.probs2 = probs1, probs2
        self.generate_calls: list[list] = []
        self.prob_calls: list[tuple] = []

    @staticmethod
    def _seed(request) -> int:
        # Tags are multiples of 20 so they survive video compression (tests/test_score_job.py).
        return int(round(videos_of(request)[0].frames[0, 0, 1, 0] / 20))

    def generate(self, requests, max_new_tokens=1024, temperature=0.0, top_p=1.0, seed=None):
        self.generate_calls.append(list(requests))
        table = {1: self.turn1, 3: self.turn2}
        return [Completion(table[len(r)][self._seed(r)]) for r in requests]

    def choice_probs(self, requests, prefixes, choices):
        assert list(choices) == ["normal", "abnormal"]
        self.prob_calls.append((list(requests), list(prefixes)))
        return np.array([self.probs1 if len(r) == 1 else self.probs2 for r in requests], dtype=float)


NORMAL = json.dumps({"cot": "fine", "status": "normal", "anomalies": []})


def _abnormal_t1(start: float, end: float) -> str:
    return json.dumps({"cot": "look", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "time": [start, end]}]})


CONFIRM = json.dumps(
    {"cot": "yes", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "bbox": {"frame 0": [10, 20, 30, 40], "frame 3": [15, 25, 35, 45]}}]}
)
REJECT = json.dumps({"cot": "no", "status": "normal", "anomalies": []})


def test_turn1_normal_ends_at_turn1_and_applies_eq7():
    backend = ScriptedBackend({0: NORMAL})
    (result,) = CaCScorer(backend).score([_tagged(seed=0)])
    assert result.valid and result.status == "normal" and result.turn2 is None
    assert result.reward == pytest.approx(0.6 / (0.6 + 0.2))  # Eq. 7 renormalizes the two candidates
    assert len(backend.generate_calls) == 1
    # The status probability is read where the status value begins in turn 1's own answer.
    (_, prefixes), = backend.prob_calls
    assert prefixes == ['{"cot": "fine", "status": "']


def test_turn1_sees_the_video_at_4fps():
    backend = ScriptedBackend({0: NORMAL})
    CaCScorer(backend).score([_tagged(seconds=4.0, fps=16.0)])
    (scan,) = videos_of(backend.generate_calls[0][0])
    assert scan.fps == 4 and scan.num_frames == 16
    assert scan.frames[:, 0, 0, 0].tolist() == list(range(0, 64, 4))  # frames at 0, 0.25, ... s


def test_abnormal_window_is_cropped_and_resampled_at_8fps_for_turn2():
    backend = ScriptedBackend({0: _abnormal_t1(1.0, 2.0)}, {0: CONFIRM})
    (result,) = CaCScorer(backend).score([_tagged(seconds=4.0, fps=16.0)])
    turn2_request = backend.generate_calls[1][0]
    scan, clip = videos_of(turn2_request)
    # Turn 2 sees exactly the source frames of [1.0, 2.0) at 8 fps: 16, 18, ..., 30.
    assert clip.fps == 8 and clip.frames[:, 0, 0, 0].tolist() == list(range(16, 32, 2))
    np.testing.assert_allclose(clip.timestamps, 1.0 + np.arange(8) / 8)
    # ... after turn 1's answer in the same conversation.
    assert [m["role"] for m in turn2_request] == ["user", "assistant", "user"]
    assert turn2_request[1]["content"][0]["text"] == _abnormal_t1(1.0, 2.0)
    assert result.valid and result.status == "abnormal" and result.window_s == (1.0, 2.0)
    assert result.reward == pytest.approx(0.1 / (0.1 + 0.3))  # from turn 2's probabilities
    assert result.boxes == [
        {"frame": 0, "time_s": 1.0, "type": "Human Distortion", "boxes": [[10.0, 20.0, 30.0, 40.0]]},
        {"frame": 3, "time_s": 1.375, "type": "Human Distortion", "boxes": [[15.0, 25.0, 35.0, 45.0]]},
    ]
    assert backend.prob_calls[0][1] == ['{"cot": "yes", "status": "']


def test_turn2_not_confirming_makes_the_video_normal():
    backend = ScriptedBackend({0: _abnormal_t1(1.0, 2.0)}, {0: REJECT})
    (result,) = CaCScorer(backend).score([_tagged()])
    assert result.status == "normal" and result.valid and result.boxes == []


def test_unusable_window_falls_back_to_whole_video_capped():
    no_window = json.dumps({"status": "abnormal", "anomalies": [{"type": "Human Distortion"}]})
    backend = ScriptedBackend({0: no_window}, {0: CONFIRM})
    (result,) = CaCScorer(backend, CaCOptions(max_frames_turn2=16)).score([_tagged(seconds=4.0)])
    clip = videos_of(backend.generate_calls[1][0])[1]
    assert result.window_s == (0.0, 4.0)
    assert clip.num_frames == 16 and clip.fps == 4  # 8 fps would be 32 frames; capped at 16
    invalid = CaCScorer(ScriptedBackend({0: no_window}), CaCOptions(fallback="invalid")).score([_tagged()])[0]
    assert not invalid.valid and invalid.reward is None and "no usable time window" in invalid.error


def test_batch_runs_one_generate_per_turn_and_failures_stay_per_video(tmp_path):
    answers1 = {0: NORMAL, 1: _abnormal_t1(0.5, 1.5), 2: "I cannot tell.", 3: _abnormal_t1(2.0, 3.0)}
    answers2 = {1: CONFIRM, 3: REJECT}
    backend = ScriptedBackend(answers1, answers2)
    videos = [_tagged(seed=s) for s in range(4)] + [str(tmp_path / "missing.mp4"), _tagged(seconds=0.125, seed=9)]
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
        CaCScorer(ScriptedBackend({})).score([_tagged(), _tagged()], prompts=["a"])


def test_no_cot_mode_scores_without_generating():
    backend = ScriptedBackend({})
    (result,) = CaCScorer(backend, CaCOptions(mode="no_cot")).score([_tagged()])
    assert backend.generate_calls == []
    assert result.valid and result.status == "normal" and result.reward == pytest.approx(0.75)
    assert backend.prob_calls[0][1] == ['{"status": "']


def test_single_turn_mode_never_runs_turn2():
    backend = ScriptedBackend({0: _abnormal_t1(1.0, 2.0)})
    (result,) = CaCScorer(backend, CaCOptions(mode="single_turn")).score([_tagged()])
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
    backend = ScriptedBackend({0: _abnormal_t1(1.0, 2.0)}, {0: CONFIRM})
    CaCScorer(backend, CaCOptions(max_pixels=16 * 16, size_multiple=16)).score([_tagged()])  # 32x32 -> 16x16
    scan, clip = videos_of(backend.generate_calls[1][0])
    assert (scan.height, scan.width) == (16, 16) and (clip.height, clip.width) == (16, 16)
