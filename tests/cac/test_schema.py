"""Taxonomy, time conversions, annotation records, and the judgment parser on a fixture corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.schema import (
    ANOMALY_TYPES,
    AnnotationError,
    AnnotationRecord,
    frames_to_seconds,
    load_annotations,
    normalize_type,
    seconds_to_frames,
    write_annotations,
)
from conftest import REPO_ROOT

FIXTURES = yaml.safe_load((REPO_ROOT / "tests" / "fixtures" / "judgments.yaml").read_text())


def test_taxonomy_is_the_papers_five_types():
    assert ANOMALY_TYPES == (
        "Object Distortion",
        "Human Distortion",
        "Motion Anomalies",
        "Physical Violations",
        "Character Anomalies",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("object distortion", "Object Distortion"),
        ("Physics Violation", "Physical Violations"),
        ("motion anomaly", "Motion Anomalies"),
        ("HUMAN_DISTORTION", "Human Distortion"),
        ("Character Anomaly", "Character Anomalies"),
        ("text anomalies", "Character Anomalies"),
        ("Physical law violation", "Physical Violations"),
        ("object falls through the table", None),  # free text, not a type
        ("Lighting", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_type(text, expected):
    assert normalize_type(text) == expected


def test_frame_and_second_windows_convert_both_ways():
    # Frames [3, 7] at 4 fps are at 0.75 .. 1.75 s; the half-open window ends one period later.
    assert frames_to_seconds(3, 7, 4) == (0.75, 2.0)
    assert seconds_to_frames(0.75, 2.0, 4) == (3, 7)
    # The same window on an 8 fps sequence: frames 6 (0.75 s) .. 15 (1.875 s).
    assert seconds_to_frames(0.75, 2.0, 8) == (6, 15)
    # A window not on the grid keeps the frames inside it: [0.3, 0.9) at 4 fps -> 0.5, 0.75 -> [2, 3].
    assert seconds_to_frames(0.3, 0.9, 4) == (2, 3)
    with pytest.raises(ValueError, match="holds no frame"):
        seconds_to_frames(0.3, 0.4, 4)
    with pytest.raises(ValueError, match="inverted"):
        frames_to_seconds(5, 2, 4)


# --- the parser corpus -------------------------------------------------------------------------
def test_corpus_is_large_enough():
    assert len(FIXTURES) >= 40
    assert len({case["id"] for case in FIXTURES}) == len(FIXTURES)
    assert sum(not c["expect"]["valid"] for c in FIXTURES) >= 15  # plenty of malformed answers


@pytest.mark.parametrize("case", FIXTURES, ids=[c["id"] for c in FIXTURES])
def test_parse_judgment_corpus(case):
    fps, num_frames = (4.0, 21) if case["turn"] == 1 else (8.0, 8)
    judgment = parse_judgment(case["text"], case["turn"], fps=fps, num_frames=num_frames)
    expect = case["expect"]
    assert judgment.valid is expect["valid"], (judgment.errors, judgment.warnings)
    assert judgment.valid == (not judgment.errors)
    assert judgment.raw == case["text"]
    if "status" in expect:
        assert judgment.status == expect["status"]
    if "types" in expect:
        assert judgment.types == expect["types"]
    first = judgment.anomalies[0] if judgment.anomalies else None
    if "window_s" in expect:
        assert first is not None and first.window_s == pytest.approx(tuple(expect["window_s"]))
    if "frames" in expect:
        assert first is not None and first.frames == tuple(expect["frames"])
    if "boxes" in expect:
        expected_boxes = {int(k): [[float(x) for x in box] for box in v] for k, v in expect["boxes"].items()}
        assert first is not None and first.boxes == expected_boxes
    if "error" in expect:
        assert any(expect["error"] in e for e in judgment.errors), judgment.errors
    if "warning" in expect:
        assert any(expect["warning"] in w for w in judgment.warnings), judgment.warnings


@pytest.mark.parametrize("text", [None, 42, b"{}", ["status"], "{" * 5000, '{"status": ' + "[" * 3000])
def test_parser_never_raises_on_junk(text):
    judgment = parse_judgment(text, 1, fps=4, num_frames=21)
    assert judgment.valid is False and judgment.errors


@pytest.mark.parametrize("turn", [1, 2])
def test_python_literals_that_are_not_json_read_as_json_values(turn):
    """Model text read as a Python literal can hold sets, tuples, bytes, complex numbers, ``...``
    and non-string keys; a set in a field once crashed a stage-3 run (json.dumps of a set).
    Each reads as the JSON value it stands for."""
    text = (
        '{"status": "abnormal", "COT": {"look", "again"}, "anomalies": [{"Attributed Time Region": "3-5", '
        '"Attributed Label": "Motion Anomalies", "Reason for Anomaly": {"jumps", "ball"}, "Problem Region": (1, 2j), '
        '"extra": {(1, 2): b"x", 3: ...}, "BBOX": {"Frame 0": [1, 2, 30, 40]}}]}'
    )
    judgment = parse_judgment(text, turn, fps=4, num_frames=21)
    assert judgment.status == "abnormal" and judgment.cot == '["again", "look"]'
    anomaly = judgment.anomalies[0]
    assert anomaly.reason == '["ball", "jumps"]' and anomaly.region == '[1, "2j"]'
    assert anomaly.frames == (3, 5)
    assert any("Python literal" in w for w in judgment.warnings)


def test_a_broken_answer_is_not_read_from_an_inner_object():
    """A turn-2 answer (the demo model's, 2026-11-23) that repeats a value and drops others: the
    answer's object is not JSON, and the only part that parses is a "BBOX" dict inside it. That
    dict is not the answer; the status the model wrote is read from the text, and the judgment
    stays invalid."""
    text = (
        '{"COT": "I compare the suspected subject across these frames, then box it is wrong.", "status": "abnormal", '
        '"abnormal", "anomalies": [{"Attributed Time Region": "Attributed Label": "Attributed Label": "Reason for Anomaly": '
        '"the ball jumps", "Problem Region": "ball", "BBOX": {"Frame 0": [20, 410, 380, 804], "Frame 1": [24, 400, 280, 804]}}]}'
    )
    judgment = parse_judgment(text, 2, fps=8, num_frames=7)
    assert judgment.status == "abnormal" and not judgment.valid
    # the error says where the object breaks: after the repeated value, json expects a ":"
    where = text.index('"abnormal", "anomalies"') + len('"abnormal"')
    assert judgment.anomalies == [] and judgment.errors == [f"the answer's JSON object does not parse: Expecting ':' delimiter at character {where}"]
    assert parse_judgment("no braces here", 1).errors == ["no JSON object found in the answer"]
    # prose with braces before a well-formed answer still finds the answer
    prose = 'Using {the usual} format: {"status": "normal", "anomalies": []}'
    assert parse_judgment(prose, 1).valid and parse_judgment(prose, 1).status == "normal"


def test_parser_without_fps_keeps_the_unit_it_was_given():
    seconds = parse_judgment('{"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "time": [1, 2]}]}', 1)
    assert seconds.valid and seconds.anomalies[0].window_s == (1.0, 2.0) and seconds.anomalies[0].frames is None
    frames = parse_judgment('{"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "frames": [1, 2]}]}', 1)
    assert frames.valid and frames.anomalies[0].frames == (1, 2) and frames.anomalies[0].window_s is None


def test_turn_must_be_1_or_2():
    with pytest.raises(ValueError, match="turn"):
        parse_judgment("{}", 3)


# --- annotation records -----------------------------------------------------------------------
GOOD = {
    "video": "videos/a.mp4",
    "prompt": "a man waves",
    "status": "abnormal",
    "annotation_fps": 8,
    "num_frames": 40,
    "anomalies": [
        {
            "type": "Human Distortion",
            "frames": [10, 14],
            "boxes": {"10": [[100, 200, 300, 400]], "12": [[110, 200, 310, 400], [500, 500, 600, 600]]},
            "reason": "a third arm grows",
            "region": "torso",
            "saliency": "salient",
        }
    ],
}


def _jsonl(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_record_round_trip_and_window_seconds(tmp_path):
    record = AnnotationRecord.from_dict(GOOD)
    assert record.anomalies[0].boxes[12][1] == [500.0, 500.0, 600.0, 600.0]
    assert record.anomalies[0].window_s(record.annotation_fps) == (1.25, 1.875)  # frames 10..14 at 8 fps
    path = write_annotations([record], tmp_path / "out.jsonl")
    loaded = load_annotations(path)
    assert len(loaded) == 1 and not loaded.skipped
    again = loaded.records[0]
    assert again.video == str(tmp_path / "videos/a.mp4")  # relative to the JSONL's folder
    again.video = record.video
    assert again == record


def _variant(**changes):
    data = json.loads(json.dumps(GOOD))
    anomaly = data["anomalies"][0]
    for key, value in changes.items():
        if key.startswith("a_"):
            if value is None:
                del anomaly[key[2:]]
            else:
                anomaly[key[2:]] = value
        elif value is None:
            del data[key]
        else:
            data[key] = value
    return data


BAD_ROWS = [
    ("{not json", "not valid JSON"),
    (_variant(prompt=None), "missing field 'prompt'"),
    (_variant(status="weird"), "'status' must be"),
    (_variant(annotation_fps=0), "annotation_fps"),
    (_variant(a_type="Physics Violation"), "did you mean 'Physical Violations'"),
    (_variant(a_type="Blur"), "unknown type 'Blur'"),
    (_variant(a_frames=[14, 10]), "negative or inverted"),
    (_variant(a_frames=[38, 45]), "beyond the video (40 frames)"),
    (_variant(a_boxes={"10": [[100, 200, 1300, 400]]}), "outside the 0-1000"),
    (_variant(a_boxes={"10": [[300, 200, 100, 400]]}), "empty or inverted"),
    (_variant(a_boxes={"20": [[100, 200, 300, 400]]}), "outside the window"),
    (_variant(a_saliency="very"), "saliency"),
    (_variant(anomalies=[]), "needs at least one anomaly"),
    (_variant(status="normal"), "'normal' but 'anomalies' is not empty"),
    (_variant(colour="red"), "unknown field(s) ['colour']"),
]


def test_strict_loading_reports_every_bad_line_with_its_number(tmp_path):
    rows = [GOOD] + [row for row, _ in BAD_ROWS]
    path = _jsonl(tmp_path, rows)
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    problems = dict(info.value.problems)
    assert sorted(problems) == list(range(2, 2 + len(BAD_ROWS)))
    for line, (_, reason) in enumerate(BAD_ROWS, start=2):
        assert reason in problems[line], (line, problems[line])


def test_lenient_loading_skips_and_counts(tmp_path):
    path = _jsonl(tmp_path, [GOOD, BAD_ROWS[0][0], "", GOOD, BAD_ROWS[5][0]])
    loaded = load_annotations(path, strict=False)
    assert len(loaded.records) == 2
    assert [line for line, _ in loaded.skipped] == [2, 5]  # the blank line 3 is not an error


def test_check_videos_catches_missing_files_and_windows_past_the_end(tmp_path):
    import numpy as np

    from cac_align.video import Video, save_video

    save_video(Video(np.zeros((16, 32, 32, 3), np.uint8), 8.0), tmp_path / "videos/a.mp4")  # 2 s = 16 frames at 8 fps
    ok = _variant(a_frames=[10, 14], num_frames=None)
    late = _variant(a_frames=[14, 18], a_boxes={}, num_frames=None)
    missing = _variant(video="videos/none.mp4")
    loaded = load_annotations(_jsonl(tmp_path, [ok, late, missing]), strict=False, check_videos=True)
    assert len(loaded.records) == 1
    reasons = dict(loaded.skipped)
    assert "beyond the video" in reasons[2]
    assert "not found" in reasons[3]
