"""A scripted CaC backend and tagged videos, shared by the inference, reward and score-job tests.

``ScriptedBackend`` speaks our Backend protocol with canned answers keyed by a video's tag, so a
test states what the model says and checks what CaC does with it.
"""

from __future__ import annotations

import json

import numpy as np

from cac_align.video import Video
from cac_align.vlm.backend import BackendBase, Completion, videos_of

__all__ = ["CONFIRM", "NORMAL", "REJECT", "ScriptedBackend", "abnormal_turn1", "tagged_video"]


def tagged_video(seconds: float = 4.0, fps: float = 16.0, seed: int = 0) -> Video:
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
        # Tags are multiples of 20 so they survive video compression (tests/jobs/test_score_job.py).
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


def abnormal_turn1(start: float, end: float) -> str:
    return json.dumps({"cot": "look", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "time": [start, end]}]})


CONFIRM = json.dumps(
    {"cot": "yes", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "bbox": {"frame 0": [10, 20, 30, 40], "frame 3": [15, 25, 35, 45]}}]}
)
REJECT = json.dumps({"cot": "no", "status": "normal", "anomalies": []})
