"""CaC training data: disjoint seeded splits, stage-1 frames and stage-2 global videos / clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.schema import AnnotationRecord, Anomaly, frames_to_seconds, load_annotations
from cac_align.cac.train.data import (
    SINGLE_FRAME_TYPES,
    ChatBuilder,
    DataConfig,
    build_stage,
    clip_boxes,
    frames_shown,
    split_records,
)
from cac_align.vlm.backend import videos_of

SPLITS = {"stage1": 0.4, "stage2": 0.4, "stage3": 0.0, "eval": 0.2}


@pytest.fixture(scope="module")
def records(cac_data):
    return load_annotations(cac_data).records


def _config(**overrides) -> DataConfig:
    return DataConfig(**{"splits": SPLITS, "max_frames_turn1": 8, "max_frames_turn2": 8, **overrides})


def test_splits_are_disjoint_by_video_stratified_and_seeded(records):
    splits = split_records(records, {"stage1": 0.3, "stage2": 0.3, "stage3": 0.2, "eval": 0.2}, seed=3)
    videos = {name: {records[i].video for i in idx} for name, idx in splits.items()}
    names = list(videos)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert not videos[names[a]] & videos[names[b]], (names[a], names[b])
    assert sum(len(v) for v in splits.values()) == len(records)
    # 12 normal + 12 abnormal videos: 0.3 / 0.3 / 0.2 / 0.2 of 12 = 3.6 / 3.6 / 2.4 / 2.4 -> 4 / 4 / 2 / 2 each
    for name, expected in zip(names, (4, 4, 2, 2)):
        assert sum(records[i].status == "abnormal" for i in splits[name]) == expected
        assert sum(records[i].status == "normal" for i in splits[name]) == expected
    assert split_records(records, {"stage1": 0.3, "stage2": 0.3, "stage3": 0.2, "eval": 0.2}, seed=3) == splits
    assert split_records(records, {"stage1": 0.3, "stage2": 0.3, "stage3": 0.2, "eval": 0.2}, seed=4) != splits


def test_records_sharing_a_video_stay_in_one_split():
    records = [AnnotationRecord(video=f"v{i // 2}.mp4", prompt="", status="normal", annotation_fps=8.0) for i in range(10)]
    splits = split_records(records, {"stage1": 0.5, "stage2": 0.5}, seed=0)
    for idx in splits.values():
        assert {records[i].video for i in idx}.isdisjoint({records[i].video for s in splits.values() if s is not idx for i in s})


def test_stage1_frames_balance_types_and_boxes(records):
    config = _config(frames_per_anomaly=2)
    data = build_stage(1, records, config)
    stats = data.stats["train"]
    splits = split_records(records, SPLITS, config.seed)
    single = [a for i in splits["stage1"] for a in records[i].anomalies if a.type in SINGLE_FRAME_TYPES]
    other = [a for i in splits["stage1"] for a in records[i].anomalies if a.type not in SINGLE_FRAME_TYPES]
    # two frames per single-frame anomaly, the others counted, 1:1 normal
    assert stats["frame_anomalous"] == 2 * len(single) and stats["anomalies_not_single_frame"] == len(other)
    assert stats["frame_normal"] == stats["frame_anomalous"]
    assert {s.label for s in data.train} == {"normal", "abnormal"}
    builder = ChatBuilder(records, config)
    for sample in data.train:
        record = records[sample.record]
        assert sample.record in splits["stage1"]
        chat = builder(sample)
        image = chat.messages[0]["content"][0]
        assert image["type"] == "image" and image["image"].shape == (64, 96, 3)
        judgment = parse_judgment(chat.target, 2, fps=1.0, num_frames=1)
        assert judgment.valid, judgment.errors
        assert judgment.status == sample.label
        if sample.label == "abnormal":
            assert record.status == "abnormal"
            anomaly = record.anomalies[sample.anomaly]
            frame = round(sample.start_s * record.annotation_fps)
            assert anomaly.type in SINGLE_FRAME_TYPES and anomaly.frames[0] <= frame <= anomaly.frames[1]
            # the annotation's box, in the integer 0-1000 coordinates Qwen-VL writes
            assert judgment.anomalies[0].boxes == {0: [[float(round(v)) for v in box] for box in anomaly.boxes[frame]]}
        else:
            assert record.status == "normal" and judgment.anomalies == []


def test_stage2_clips_cover_their_window_and_are_shorter_than_a_second(records):
    config = _config()
    data = build_stage(2, records, config)
    stats = data.stats["train"]
    assert stats["clip_anomalous"] == stats["clip_normal"] > 0
    assert stats["global_anomalous"] == stats["global_normal"] > 0
    builder = ChatBuilder(records, config)
    for sample in data.train + data.eval:
        record = records[sample.record]
        chat = builder(sample)
        (video,) = videos_of(chat.prompt_messages)
        if sample.kind == "global":
            assert video.fps == 4.0 and sample.label == record.status
            judgment = parse_judgment(chat.target, 1, fps=video.fps, num_frames=video.num_frames)
            assert judgment.valid and judgment.status == record.status
            # the paper's "Attributed Time Region" is a frame range on the 4 fps grid the turn saw:
            # the annotated window's frames on that grid (an 8 fps window [0.875, 1.25) is frame 4)
            windows = [frames_to_seconds(*frames_shown(video.timestamps, a.window_s(record.annotation_fps)), video.fps) for a in record.anomalies]
            assert [a.window_s for a in judgment.anomalies] == windows
            continue
        assert sample.end_s - sample.start_s < 1.0
        assert video.fps == 8.0 and sample.start_s - 1e-9 <= video.start_s and video.end_s <= sample.end_s + 1 / 8
        judgment = parse_judgment(chat.target, 2, fps=video.fps, num_frames=video.num_frames)
        assert judgment.valid, judgment.errors
        if sample.label == "normal":
            assert record.status == "normal" and judgment.status == "normal"
            continue
        anomaly = record.anomalies[sample.anomaly]
        w0, w1 = anomaly.window_s(record.annotation_fps)
        assert sample.start_s <= w0 + 1e-9 and w1 <= sample.end_s + 1e-9  # the clip covers the window
        # boxes re-indexed to the clip: clip frame k carries the annotation frame on screen at its time
        (judged,) = judgment.anomalies
        expected = {k: [[float(round(v)) for v in box] for box in anomaly.boxes[int(np.floor(t * record.annotation_fps + 1e-6))]]
                    for k, t in enumerate(video.timestamps) if w0 - 1e-9 <= t < w1 - 1e-9}
        assert judged.boxes == expected and expected


def test_clip_boxes_hand_worked():
    a = Anomaly(type="Object Distortion", frames=(4, 6), boxes={4: [[0, 0, 10, 10]], 5: [[1, 1, 11, 11]], 6: [[2, 2, 12, 12]]})
    # an 8 fps annotation; clip frames at 0.45, 0.575, 0.7, 0.825 s are on annotation frames 3, 4, 5, 6
    assert clip_boxes(a, 8.0, np.array([0.45, 0.575, 0.7, 0.825])) == {1: [[0, 0, 10, 10]], 2: [[1, 1, 11, 11]], 3: [[2, 2, 12, 12]]}


def test_anomalies_too_long_for_a_clip_are_counted_not_dropped_silently(records):
    data = build_stage(2, records, _config(clip_max_s=0.3, clip_min_s=0.25))
    assert data.stats["train"]["anomalies_too_long_for_clip"] > 0
    assert data.stats["train"]["clip_anomalous"] + data.stats["train"]["anomalies_too_long_for_clip"] == sum(
        len(records[i].anomalies) for i in split_records(records, SPLITS, 0)["stage2"]
    )


def test_samples_are_deterministic_in_the_seed(records):
    a = build_stage(2, records, _config(seed=1))
    b = build_stage(2, records, _config(seed=1))
    c = build_stage(2, records, _config(seed=2))
    assert a.train == b.train and a.train != c.train


def test_targets_use_the_annotations_reasoning_when_present(records):
    config = _config()
    data = build_stage(2, records, config)
    sample = next(s for s in data.train if s.kind == "global")
    edited = list(records)
    edited[sample.record] = AnnotationRecord(**{**records[sample.record].__dict__, "cot": "teacher says so"})
    assert json.loads(ChatBuilder(edited, config)(sample).target)["COT"] == "teacher says so"
    assert "Scene:" in json.loads(ChatBuilder(records, config)(sample).target)["COT"]  # the template otherwise


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"clip_max_s": 1.0}, "shorter than 1 s"),
        ({"splits": {"stage9": 1.0}}, "unknown split"),
        ({"clip_min_s": 0.1}, "fewer than 2 frames"),
    ],
)
def test_data_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**bad)


def test_frames_shown_hand_worked():
    times = np.arange(20) / 4.0  # a 4 fps scan: frame k at k / 4 s
    assert frames_shown(times, (1.25, 2.5)) == (5, 9)  # [1.25, 2.5): frames 5..9
    assert frames_shown(times, (1.3, 1.45)) == (5, 5)  # holds no frame: the one on screen at 1.3 s
    assert frames_shown(np.array([2.0, 2.125, 2.25]), (2.1, 3.0)) == (1, 2)  # a clip's own indices


def test_checklist_reasoning_leaves_the_decision_to_status(records):
    config = _config(template_cot="checklist", prompt_style="compact")
    data = build_stage(2, records, config)
    builder = ChatBuilder(records, config)
    cots = {}
    for sample in data.train:
        target = json.loads(builder(sample).target)
        cots.setdefault((sample.kind, target["status"]), set()).add(target["COT"])
    # one fixed text per kind, the same for normal and abnormal answers: it says nothing of the verdict
    assert cots[("global", "normal")] == cots[("global", "abnormal")] and len(cots[("global", "normal")]) == 1
    assert cots[("clip", "normal")] == cots[("clip", "abnormal")] and len(cots[("clip", "normal")]) == 1
    with pytest.raises(ValueError, match="template_cot"):
        DataConfig(template_cot="verbose")
    with pytest.raises(ValueError, match="frame_types"):
        DataConfig(frame_types=["Object Distorsion"])


def test_status_only_records_through_stages_1_and_2(records, tmp_path):
    """A label that says *that* a video is abnormal, not when or where: stage 1 skips it
    (counted), stage 2 trains its global answer (status, type, no time region) and cuts no clip."""
    from cac_align.cac.schema import write_annotations

    abnormal = [r for r in records if r.status == "abnormal"]
    status_only = [
        AnnotationRecord(r.video, r.prompt, "abnormal", r.annotation_fps,
                         [Anomaly(type="Human Distortion", frames=None, boxes={}, reason="an extra arm", saliency="salient")],
                         r.num_frames, source="labels:test", license="CC BY 4.0")
        for r in abnormal
    ]
    normal = [r for r in records if r.status == "normal"]
    # the file round trip keeps the null window, the source and the licence
    path = write_annotations(status_only + normal, tmp_path / "a.jsonl")
    loaded = load_annotations(path).records
    assert loaded[0].anomalies[0].frames is None and loaded[0].status_only and loaded[0].license == "CC BY 4.0"
    assert json.loads(path.read_text().splitlines()[0])["anomalies"][0]["frames"] is None
    with pytest.raises(ValueError, match="boxes need a frame window"):
        AnnotationRecord.from_dict({**json.loads(status_only[0].to_json()), "anomalies": [
            {"type": "Human Distortion", "frames": None, "boxes": {"0": [[1, 1, 5, 5]]}, "saliency": "salient"}]})
    config = _config()
    stage1 = build_stage(1, loaded, config)
    assert stage1.stats["train"]["frame_anomalous"] == 0 and stage1.stats["train"]["anomalies_without_boxes"] > 0
    stage2 = build_stage(2, loaded, config)
    train = stage2.stats["train"]
    assert train["clip_anomalous"] == 0 and train["anomalies_without_window"] == train["global_anomalous"] > 0
    builder = ChatBuilder(loaded, config)
    sample = next(s for s in stage2.train if s.kind == "global" and s.label == "abnormal")
    target = json.loads(builder(sample).target)
    assert target["status"] == "abnormal"
    assert target["anomalies"] == [{"Attributed Label": "Human Distortion", "Reason for Anomaly": "an extra arm", "Problem Region": ""}]
    assert "At some point" in target["COT"]  # the template reasoning says what, not when
