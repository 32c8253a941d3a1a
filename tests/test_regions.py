"""cac_align.regions: the evidence a run's records keep (bon's candidates.jsonl, a trainer's samples.jsonl)."""

from __future__ import annotations

import json

import numpy as np

from cac_align.regions import evidence_record


def test_evidence_record_by_who_gave_it():
    """A reward that localizes itself is recorded under its own name; a combined reward's localizing
    components under theirs; an invalid verdict (no status) and a component that localizes nothing
    are left out; numpy numbers become JSON numbers and a box entry keeps frame and type."""
    cac = {"status": "abnormal", "window_s": (np.float32(0.5), 1.25), "reward": 0.2, "turn1": {"text": "..."},
           "boxes": [{"frame": np.int64(4), "time_s": np.float64(0.625), "type": "Human Distortion", "boxes": [np.array([1, 2, 30, 40])]}]}
    combined = {"components": {"unified_reward": {"raw": 2.5, "details": {"sub_scores": {"alignment": 3.0}}},
                               "cac": {"raw": 0.2, "details": cac},
                               "sync": {"raw": 0.9, "details": {"status": "normal", "window_s": None, "boxes": []}},
                               "wm": {"raw": None, "details": {"status": None, "window_s": None, "boxes": [], "error": "timeout"}}}}
    record = evidence_record(combined, "ur_cac")
    assert record == {"cac": {"status": "abnormal", "window_s": [0.5, 1.25],
                              "boxes": [{"time_s": 0.625, "boxes": [[1.0, 2.0, 30.0, 40.0]], "frame": 4, "type": "Human Distortion"}]},
                      "sync": {"status": "normal", "window_s": None, "boxes": []}}
    json.dumps(record)  # plain JSON
    assert evidence_record({"status": "abnormal", "window_s": [0.0, 0.5], "boxes": []}, "wm_surprise") == {
        "wm_surprise": {"status": "abnormal", "window_s": [0.0, 0.5], "boxes": []}}
    assert evidence_record({"score": 0.7}, "brightness") == {}
    unreadable = evidence_record({"status": "abnormal", "window_s": ["soon", "later"], "boxes": []}, "cac")
    assert unreadable["cac"]["window_s"] is None and unreadable["cac"]["error"].startswith("unreadable evidence")
