"""Bench metrics (CaC Table 1, Fig. 4, Tables S3-S4) against hand-computed values."""

from __future__ import annotations

import csv
import json
import os
import math
from pathlib import Path

import pytest

from cac_align.cac.schema import AnnotationRecord, Anomaly, write_annotations
from cac_align.eval.bench import (
    BenchConfig,
    detection_metrics,
    grade_evidence,
    hard_split_recall,
    interval_iou,
    per_type_recall,
    prediction_bias,
    truth_summary,
    video_extent,
)
from cac_align.jobs.eval_bench import run


def test_detection_metrics_hand_worked_confusion_matrix():
    """10 videos: 4 anomalous (3 caught, 1 missed), 6 normal (2 false alarms).
    TP 3, FN 1, FP 2, TN 4 -> anomalous recall 3/4, precision 3/5, F1 6/9; normal recall 4/6,
    precision 4/5, F1 8/11; accuracy 7/10."""
    y_true = ["abnormal"] * 4 + ["normal"] * 6
    y_pred = ["abnormal", "abnormal", "abnormal", "normal"] + ["abnormal", "abnormal", "normal", "normal", "normal", "normal"]
    m = detection_metrics(y_true, y_pred)
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n"]) == (3, 1, 2, 4, 10)
    assert m["anomalous_recall"] == pytest.approx(0.75)
    assert m["anomalous_precision"] == pytest.approx(0.6)
    assert m["anomalous_f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))  # = 6/9
    assert m["normal_recall"] == pytest.approx(4 / 6)
    assert m["normal_precision"] == pytest.approx(0.8)
    assert m["normal_f1"] == pytest.approx(8 / 11)
    assert m["accuracy"] == pytest.approx(0.7)


def test_empty_classes_are_nan_not_a_crash():
    # everything called abnormal: normal precision has nothing to divide by; normal F1 is 0
    m = detection_metrics(["abnormal", "normal", "normal"], ["abnormal"] * 3)
    assert math.isnan(m["normal_precision"]) and m["normal_recall"] == 0 and m["normal_f1"] == 0
    assert m["anomalous_recall"] == 1 and m["anomalous_precision"] == pytest.approx(1 / 3)
    # no anomalous video at all: anomalous recall undefined; F1 undefined only when also never predicted
    m = detection_metrics(["normal", "normal"], ["normal", "normal"])
    assert math.isnan(m["anomalous_recall"]) and math.isnan(m["anomalous_precision"]) and math.isnan(m["anomalous_f1"])
    assert m["normal_f1"] == 1 and m["accuracy"] == 1
    m = detection_metrics([], [])
    assert math.isnan(m["accuracy"]) and m["n"] == 0
    with pytest.raises(ValueError, match="'normal' or 'abnormal'"):
        detection_metrics(["normal"], ["anomalous"])
    with pytest.raises(ValueError, match="length|labels"):
        detection_metrics(["normal"], [])


def test_bias_flag():
    says_abnormal = detection_metrics(["abnormal"] * 5 + ["normal"] * 5, ["abnormal"] * 9 + ["normal"])
    assert "'abnormal' for nearly everything" in prediction_bias(says_abnormal)
    balanced = detection_metrics(["abnormal", "normal"], ["abnormal", "normal"])
    assert prediction_bias(balanced) is None


def _record(name, windows_frames, box_side=None, types=None, fps=4.0, frames=40):
    """An anomalous record (or normal when ``windows_frames`` is empty) at 4 fps; each anomaly
    boxed on its every frame by a square of side ``box_side`` (0-1000 units)."""
    anomalies = []
    for i, (start, end) in enumerate(windows_frames):
        boxes = {f: [[0, 0, box_side, box_side]] for f in range(start, end + 1)} if box_side else {}
        anomalies.append(Anomaly((types or ["Object Distortion"] * 9)[i], (start, end), boxes))
    return AnnotationRecord(f"{name}.mp4", "p", "abnormal" if anomalies else "normal", fps, anomalies, frames)


def test_extent_duration_and_hard_split_groups():
    # at 4 fps a window of frames [s, e] lasts (e - s + 1) / 4 s
    short_small = _record("a", [(0, 1)], box_side=300)  # 0.5 s, 0.09 of the frame
    short_large = _record("b", [(4, 6)], box_side=500)  # 0.75 s, 0.25
    long_small = _record("c", [(0, 3), (2, 5)], box_side=400)  # union of 0-1 s and 0.5-1.5 s = 1.5 s, 0.16
    long_large = _record("d", [(10, 17)], box_side=1000)  # 2 s, the whole frame
    no_boxes = _record("e", [(0, 9)])
    normal = _record("f", [])
    assert video_extent(short_small) == pytest.approx(0.09) and video_extent(no_boxes) is None
    # overlapping boxes on one frame count once: two 500x500 boxes overlapping by 250x500
    overlap = AnnotationRecord("g.mp4", "p", "abnormal", 4.0, [Anomaly("Object Distortion", (0, 0), {0: [[0, 0, 500, 500], [250, 0, 750, 500]]})], 8)
    assert video_extent(overlap) == pytest.approx(0.375)
    records = [short_small, short_large, long_small, long_large, no_boxes, normal]
    predicted = ["abnormal", "normal", "abnormal", "abnormal", "normal", "abnormal"]
    split = hard_split_recall(records, predicted)
    assert {g: (v["recall"], v["n"]) for g, v in split.items()} == {
        "short_small": (1.0, 1), "short_large": (0.0, 1), "long_small": (1.0, 1), "long_large": (1.0, 1), "no_boxes": (0.0, 1)
    }


def test_per_type_recall():
    records = [
        _record("a", [(0, 1)], types=["Human Distortion"]),
        _record("b", [(0, 1), (3, 4)], types=["Human Distortion", "Motion Anomalies"]),
        _record("c", [(0, 1)], types=["Motion Anomalies"]),
        _record("d", []),
    ]
    got = per_type_recall(records, ["abnormal", "normal", "abnormal", "abnormal"])
    assert got["Human Distortion"] == {"recall": 0.5, "n": 2}
    assert got["Motion Anomalies"] == {"recall": 0.5, "n": 2}
    assert got["Object Distortion"]["n"] == 0 and math.isnan(got["Object Distortion"]["recall"])


def test_per_type_auroc_by_hand():
    from cac_align.eval.bench import per_type_auroc

    records = [
        _record("n0", []), _record("n1", []),
        _record("a", [(0, 1)], types=["Human Distortion"]), _record("b", [(0, 1)], types=["Human Distortion"]),
        _record("c", [(0, 1)], types=["Physical Violations"]),
        _record("d", [(0, 1), (4, 5)], types=["Physical Violations", "Human Distortion"]),
    ]
    # normal scores 0.8, 0.4; Human Distortion videos a, b, d score 0.1, 0.9, 0.4;
    # Physical Violations videos c, d score 0.5, 0.4
    got = per_type_auroc(records, [0.8, 0.4, 0.1, 0.9, 0.5, 0.4])
    # Human Distortion, 6 (normal, typed) pairs: 0.8 beats 0.1 and 0.4, loses to 0.9; 0.4 beats 0.1,
    # ties 0.4 (half), loses to 0.9 -> (2 + 1.5) / 6
    assert got["Human Distortion"] == pytest.approx(3.5 / 6)
    # Physical Violations, 4 pairs: 0.8 beats 0.5 and 0.4; 0.4 loses to 0.5, ties 0.4 -> 2.5 / 4
    assert got["Physical Violations"] == pytest.approx(2.5 / 4)
    assert math.isnan(got["Motion Anomalies"])  # no video of that type


def test_interval_iou():
    assert interval_iou([[1, 3]], [[2, 4]]) == pytest.approx(1 / 3)
    assert interval_iou([[0, 1], [2, 3]], [[0, 3]]) == pytest.approx(2 / 3)  # two windows against one
    assert interval_iou([[0, 2], [1, 3]], [[0, 3]]) == pytest.approx(1.0)  # overlapping predictions merge
    assert interval_iou([], [[0, 1]]) == 0.0 and interval_iou([], []) == 0.0


def test_bench_job_on_prediction_files(tmp_path):
    """Two systems: a `cac-align score` results.jsonl (evidence inside `details`, one invalid
    video) and a bare status JSONL from elsewhere (one video missing)."""
    records = [
        _record("v0", [(4, 7)], box_side=500),  # window 1-2 s, boxes [0,0,500,500] on frames 4-7
        _record("v1", [(0, 3)], box_side=200),
        _record("v2", []),
        _record("v3", []),
    ]
    annotations = write_annotations(records, tmp_path / "gt" / "annotations.jsonl")
    cac = [
        {"video": str(tmp_path / "gt/v0.mp4"), "status": "abnormal", "valid": True, "score": 0.1,
         "details": {"turn1": {}, "window_s": [1.5, 2.5], "boxes": [{"frame": 0, "time_s": 1.5, "type": "Object Distortion", "boxes": [[0, 0, 500, 1000]]}]}},
        {"video": str(tmp_path / "gt/v1.mp4"), "status": None, "valid": False, "score": None, "error": "turn 1 answer has no readable status"},
        {"video": str(tmp_path / "gt/v2.mp4"), "status": "abnormal", "valid": True, "score": 0.4, "details": {"turn1": {}, "window_s": None, "boxes": []}},
        {"video": str(tmp_path / "gt/v3.mp4"), "status": "normal", "valid": True, "score": 0.9, "details": {"turn1": {}, "window_s": None, "boxes": []}},
    ]
    (tmp_path / "cac.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cac))
    (tmp_path / "base.jsonl").write_text(
        "".join(json.dumps({"video": f"gt/v{i}.mp4", "status": s}) + "\n" for i, s in [(0, "abnormal"), (1, "abnormal"), (2, "abnormal")])
    )
    config = BenchConfig(annotations=str(annotations), predictions={"cac": str(tmp_path / "cac.jsonl"), "base": str(tmp_path / "base.jsonl")}, out_dir=str(tmp_path / "out"))
    results = run(config)
    cac_result = results["cac"]
    assert cac_result["coverage"] == {"annotated": 4, "scored": 3, "missing": 0, "invalid": 1, "matched_by_name": 0}
    assert cac_result["table1"]["tp"] == 1 and cac_result["table1"]["fp"] == 1 and cac_result["table1"]["tn"] == 1
    # window 1.5-2.5 s vs 1-2 s: IoU 0.5 / 1.5; time 1.5 s is annotation frame 6, box IoU 0.25 / 0.5
    assert cac_result["localization"]["temporal_iou"] == pytest.approx(1 / 3)
    assert cac_result["localization"]["spatial_iou"] == pytest.approx(0.5)
    # reward: 3 of 4 videos valid; scores v0 0.1 (anomalous), v2 0.4 and v3 0.9 (normal): both normal
    # videos score above the anomalous one -> AUROC 2/2 = 1 (normal is the positive class)
    reward = cac_result["reward"]
    assert (reward["valid_fraction"], reward["auroc"], reward["n_scores"]) == (0.75, 1.0, 3)
    # per type: v0 (Object Distortion, 0.1) below both normal videos; v1 (Object Distortion too) has
    # no score; the other types have no video: undefined
    assert reward["per_type_auroc"]["Object Distortion"] == 1.0
    assert all(math.isnan(v) for k, v in reward["per_type_auroc"].items() if k != "Object Distortion")
    base = results["base"]
    assert base["reward"]["n_scores"] == 0 and math.isnan(base["reward"]["auroc"])  # no scores: undefined
    assert base["coverage"]["missing"] == 1 and base["table1"]["anomalous_recall"] == 1.0
    assert math.isnan(base["table1"]["normal_recall"]) is False and base["table1"]["normal_recall"] == 0.0
    assert base["localization"]["temporal_iou"] == 0.0  # true positives without a window score 0
    # files: JSON with nulls for undefined values, markdown tables, CSVs
    saved = json.loads((tmp_path / "out/bench.json").read_text())
    assert saved["systems"]["base"]["table1"]["normal_precision"] is None
    md = (tmp_path / "out/bench.md").read_text()
    assert "| cac | 1.000 | 0.500 | 0.667 |" in md and "## Prediction bias" in md and "**base**" in md
    # bootstrap intervals: normal videos v2 (wrong) and v3 (right) resampled two at a time give
    # accuracy 1/3 (v2 twice, a quarter of resamples), 2/3 or 1 (v3 twice, a quarter); the
    # anomalous v0 is always right -> 95% interval [1/3, 1]. AUROC stays 1 in every resample.
    assert cac_result["table1"]["accuracy_ci"] == pytest.approx([1 / 3, 1.0])
    assert reward["auroc_ci"] == [1.0, 1.0]
    assert "| cac | 0.750 | 1.000 | 1.000 | 1.000 | 3 |" in md
    assert all(math.isnan(v) for v in base["reward"]["auroc_ci"])  # no scores: no interval
    rows = list(csv.DictReader((tmp_path / "out/table1.csv").open()))
    assert [r["system"] for r in rows] == ["cac", "base"] and rows[1]["normal_precision"] == ""
    # per video, what each verdict got right. v0: status right; window [1.5, 2.5) vs [1, 2): IoU 1/3,
    # under 0.5; its box [0, 0, 500, 1000] at 1.5 s (inside the window) overlaps the planted
    # [0, 0, 500, 500]: boxes right, localization not. v1: no valid verdict. v2: a normal video
    # called abnormal. v3: right, nothing to localize.
    videos = {Path(v["video"]).stem: v for v in cac_result["videos"]}
    assert videos["v0"]["status_agrees"] is True and videos["v0"]["window_iou"] == pytest.approx(1 / 3)
    assert (videos["v0"]["window_agrees"], videos["v0"]["boxes_touch_defect"], videos["v0"]["localized"]) == (False, True, False)
    assert [videos["v1"][k] for k in ("status", "status_agrees", "window_iou", "localized")] == [None, None, None, None]
    assert (videos["v2"]["status_agrees"], videos["v2"]["window_agrees"], videos["v3"]["status_agrees"]) == (False, None, True)
    table = list(csv.DictReader((tmp_path / "out/videos.csv").open()))
    assert len(table) == 8 and table[0]["system"] == "cac" and table[0]["window_agrees"] == "False" and table[1]["status_agrees"] == ""
    assert "boxes_touch_defect" not in md  # per-video rows stay out of the markdown
    # the run folder: another config is refused; overwrite replaces the job's files, never the user's
    from cac_align.config import RecipeError

    (tmp_path / "out/notes.md").write_text("mine")
    changed = BenchConfig(annotations=str(annotations), predictions={"cac": str(tmp_path / "cac.jsonl")}, out_dir=str(tmp_path / "out"))
    with pytest.raises(RecipeError, match=r"holds an eval-bench run with a different config \(differs in: predictions.base\)"):
        run(changed)
    changed.overwrite = True
    run(changed)
    assert (tmp_path / "out/notes.md").read_text() == "mine"
    assert [r["system"] for r in csv.DictReader((tmp_path / "out/table1.csv").open())] == ["cac"]


def test_evidence_is_graded_beyond_the_status():
    # one planted float in [1.5, 2.0) s, boxed at 1.5 s and 1.75 s (0-1000 units)
    truth = {"status": "abnormal", "anomalies": [{"type": "Physical Violations", "window_s": [1.5, 2.0],
                                                  "boxes": [{"time_s": 1.5, "boxes": [[100, 600, 200, 700]]}, {"time_s": 1.75, "boxes": [[100, 500, 200, 600]]}]}]}
    # the README demo's video 1: the right status, the window [2.75, 3.75) s on the sign: disjoint
    sign = grade_evidence(truth, "abnormal", [[2.75, 3.75]], [{"time_s": 2.75, "boxes": [[148, 10, 388, 348]]}])
    assert sign == {"status": True, "window_iou": 0.0, "window": False, "boxes": False, "localized": False}
    # [1.5, 2.5): overlap 0.5 s of a 1.0 s union -> IoU 0.5, agrees; a box at 1.625 s (as near 1.5 s
    # as 1.75 s: the first annotated time wins) overlapping [100, 600, 200, 700] on x 150-200, y 600-650
    right = grade_evidence(truth, "abnormal", [[1.5, 2.5]], [{"time_s": 1.625, "boxes": [[150, 550, 250, 650]]}])
    assert right == {"status": True, "window_iou": 0.5, "window": True, "boxes": True, "localized": True}
    # at 1.8 s the nearest box is 1.75 s's [100, 500, 200, 600]: [300, 300, 400, 400] misses it; a box
    # touching the defect's earlier place at a time outside the window does not count either
    miss = grade_evidence(truth, "abnormal", [[1.5, 2.0]], [{"time_s": 1.8, "boxes": [[300, 300, 400, 400]]}, {"time_s": 2.5, "boxes": [[100, 600, 200, 700]]}])
    assert (miss["window_iou"], miss["window"], miss["boxes"], miss["localized"]) == (1.0, True, False, False)
    # only edges touching is no shared area
    assert grade_evidence(truth, "abnormal", [[1.5, 2.0]], [{"time_s": 1.5, "boxes": [[200, 700, 300, 800]]}])["boxes"] is False
    # an abnormal verdict without a window or boxes: both wrong; a stricter threshold
    assert grade_evidence(truth, "abnormal", None, None) == {"status": True, "window_iou": 0.0, "window": False, "boxes": False, "localized": False}
    assert grade_evidence(truth, "abnormal", [[1.5, 2.5]], [], min_window_iou=0.6)["window"] is False
    # nothing to localize: a normal verdict, a normal video, no verdict
    assert grade_evidence(truth, "normal", None, None) == {"status": False, "window_iou": None, "window": None, "boxes": None, "localized": None}
    normal = {"status": "normal", "anomalies": []}
    assert grade_evidence(normal, "abnormal", [[0, 1]], [])["status"] is False and grade_evidence(normal, None, None, None)["status"] is None
    # a window but no boxes in the truth: boxes are not graded, the localization is the window's
    unboxed = {"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "window_s": [1.0, 2.0], "boxes": []}]}
    assert grade_evidence(unboxed, "abnormal", [[1.0, 2.0]], [])["localized"] is True
    # a record as the score job and the bench see it: windows in seconds, boxes at their frame times
    record = _record("v", [(6, 7)], box_side=300)  # frames 6-7 at 4 fps: [1.5, 2.0) s
    assert truth_summary(record) == {"status": "abnormal", "anomalies": [{"type": "Object Distortion", "window_s": [1.5, 2.0],
                                     "boxes": [{"time_s": 1.5, "boxes": [[0, 0, 300, 300]]}, {"time_s": 1.75, "boxes": [[0, 0, 300, 300]]}]}]}


def test_bench_errors_name_the_input(tmp_path):
    from cac_align.config import RecipeError

    annotations = write_annotations([_record("v0", [])], tmp_path / "a.jsonl")
    (tmp_path / "other.jsonl").write_text(json.dumps({"video": "zzz.mp4", "status": "normal"}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "v0.mp4", "status": "maybe"}) + "\n")
    with pytest.raises(RecipeError, match="none of its videos"):
        run(BenchConfig(annotations=str(annotations), predictions={"x": str(tmp_path / "other.jsonl")}, out_dir=str(tmp_path / "o")))
    with pytest.raises(RecipeError, match="bad.jsonl:1: not a prediction .*status must be"):
        run(BenchConfig(annotations=str(annotations), predictions={"x": str(tmp_path / "bad.jsonl")}, out_dir=str(tmp_path / "o")))
    with pytest.raises(RecipeError, match="does not exist"):
        run(BenchConfig(annotations=str(annotations), predictions={"x": str(tmp_path / "nope.jsonl")}, out_dir=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="predictions is empty"):
        BenchConfig(annotations=str(annotations))


def test_predictions_are_matched_by_path_and_by_name_only_when_asked(tmp_path, capsys):
    from cac_align.config import RecipeError

    annotations = write_annotations([_record("v0", [(0, 1)]), _record("v1", [])], tmp_path / "gt" / "a.jsonl")
    # predictions of *other* videos that happen to share the names (another folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "p.jsonl").write_text("".join(json.dumps({"video": f"v{i}.mp4", "status": "normal"}) + "\n" for i in (0, 1)))
    config = BenchConfig(annotations=str(annotations), predictions={"sys": str(other / "p.jsonl")}, out_dir=str(tmp_path / "o"))
    with pytest.raises(RecipeError, match=r"none of its videos is in .* by path; 2 of them share a file name .* pass match=name"):
        run(config)
    # the user says they are the same videos, copied: matched by name, and counted as such
    config.match = "name"
    result = run(config)["sys"]
    assert result["coverage"]["matched_by_name"] == 2 and result["coverage"]["scored"] == 2
    assert "2 of 2 annotated videos matched a prediction by file name alone" in capsys.readouterr().out
    # a relative path from the current folder matches too
    (tmp_path / "cwd.jsonl").write_text(json.dumps({"video": os.path.relpath(tmp_path / "gt" / "v0.mp4"), "status": "abnormal"}) + "\n")
    run_cwd = run(BenchConfig(annotations=str(annotations), predictions={"sys": str(tmp_path / "cwd.jsonl")}, out_dir=str(tmp_path / "o2")))
    assert run_cwd["sys"]["coverage"]["scored"] == 1 and run_cwd["sys"]["coverage"]["matched_by_name"] == 0


def test_torn_or_broken_inputs_are_one_line_errors(tmp_path):
    from cac_align.cli import main

    annotations = write_annotations([_record("v0", [])], tmp_path / "a.jsonl")
    (tmp_path / "torn.jsonl").write_text(json.dumps({"video": "v0.mp4", "status": "normal"}) + '\n{"video": "v1.mp4", "sta')
    code = main(["eval", "bench", f"annotations={annotations}", f"predictions={{s: {tmp_path / 'torn.jsonl'}}}", f"out_dir={tmp_path / 'o'}"])
    assert code == 2
    (tmp_path / "notjson.jsonl").write_text("this is not json\n")
    code = main(["eval", "bench", f"annotations={tmp_path / 'notjson.jsonl'}", f"predictions={{s: {tmp_path / 'torn.jsonl'}}}", f"out_dir={tmp_path / 'o'}"])
    assert code == 2


def test_cli_eval_bench_alias(tmp_path):
    from cac_align.cli import main

    annotations = write_annotations([_record("v0", [(0, 1)]), _record("v1", [])], tmp_path / "a.jsonl")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"video": f"v{i}.mp4", "status": "abnormal"}) + "\n" for i in (0, 1)))
    code = main(["eval", "bench", f"annotations={annotations}", f"predictions={{sys: {tmp_path / 'p.jsonl'}}}", f"out_dir={tmp_path / 'o'}"])
    assert code == 0
    assert json.loads((tmp_path / "o/bench.json").read_text())["systems"]["sys"]["table1"]["accuracy"] == 0.5
