"""The reward layer's base: a reward that writes only ``score_batch`` gets decoding, prompt checks,
chunking, per-request retries, the lock and input order from :class:`BatchReward`."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cac_align.rewards.base import BatchReward, ErrorKind


class Mean(BatchReward):
    """Score = mean pixel / 255 + len(prompt); a frame value of 13 is a backend failure, of 26 an
    unusable answer. Records every call."""

    name = "mean"
    batch_size = 3

    def __init__(self):
        self.calls: list[list[str]] = []

    def score_batch(self, requests):
        self.calls.append([prompt for _, prompt in requests])
        if any(int(video.frames[0, 0, 0, 0]) == 13 for video, _ in requests):
            raise ConnectionError("http://127.0.0.1:1/v1 unreachable")
        out = []
        for video, prompt in requests:
            value = int(video.frames[0, 0, 0, 0])
            if value == 26:
                out.append({"error": "no score in the answer", "error_kind": ErrorKind.PARSE, "text": "?"})
            else:
                out.append({"score": value / 255 + len(prompt), "seen": prompt})
        return out


def clip(value: int) -> np.ndarray:
    return np.full((2, 8, 8, 3), value, dtype=np.uint8)


def test_only_score_batch_written_and_the_contract_holds():
    reward = Mean()
    videos = [clip(51), clip(13), np.zeros((2, 8, 8), dtype=np.uint8), clip(102), clip(26), clip(0), clip(255)]
    prompts = ["a", "bb", "c", "dd", "e", None, "ggg"]
    out = reward(videos, prompts)
    assert out.valid.tolist() == [True, False, False, True, False, False, True]
    assert out.scores[[0, 3, 6]].tolist() == pytest.approx([0.2 + 1, 0.4 + 2, 1.0 + 3])  # input order
    assert out.details[0] == {"seen": "a"}  # 'score' is taken out of the details
    assert out.details[1]["error_kind"] == ErrorKind.BACKEND and "unreachable" in out.details[1]["error"]
    assert out.details[2]["error_kind"] == ErrorKind.VIDEO
    assert out.details[4] == {"error": "no score in the answer", "error_kind": "parse", "text": "?"}
    assert out.details[5] == {"error": "mean needs the generating prompt of each video", "error_kind": "prompt"}
    assert out.failure_counts() == {"backend": 1, "video": 1, "parse": 1, "prompt": 1}
    # chunks of 3 over the 5 requests; the chunk holding the failure is retried one by one
    assert reward.calls == [["a", "bb", "dd"], ["a"], ["bb"], ["dd"], ["e", "ggg"]]


def test_one_call_at_a_time_when_shared_by_threads():
    active, most = [0], [0]

    class Slow(Mean):
        def score_batch(self, requests):
            active[0] += 1
            most[0] = max(most[0], active[0])
            time.sleep(0.02)
            active[0] -= 1
            return super().score_batch(requests)

    reward = Slow()
    threads = [threading.Thread(target=reward, args=([clip(51)] * 4, ["p"] * 4)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and len(reward.calls) == 8


def test_a_reward_that_breaks_the_contract_is_named():
    class Short(Mean):
        def score_batch(self, requests):
            return super().score_batch(requests)[:-1]

    class NoScore(Mean):
        def score_batch(self, requests):
            return [{} for _ in requests]

    with pytest.raises(TypeError, match=r"Short.score_batch gave 1 details for 2 requests"):
        Short()([clip(1), clip(2)], ["a", "b"])
    with pytest.raises(TypeError, match="NoScore.score_batch gave a detail with neither 'score' nor 'error'"):
        NoScore()([clip(1)], ["a"])
    with pytest.raises(NotImplementedError, match="must define score_batch"):
        type("Bare", (BatchReward,), {"name": "bare"})()([clip(1)], ["a"])
