"""Synthetic anomaly videos: labels match the renderer's geometry, defects are visible, runs repeat."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from cac_align.cac.schema import ANOMALY_TYPES, load_annotations
from cac_align.cli import main
from cac_align.config import RecipeError, load_config
from cac_align.data.synthetic import NORMAL, SynthConfig, annotate, generate, make_spec, render
from cac_align.video import load_video
from conftest import REPO_ROOT

SMALL = dict(height=64, width=96, fps=8.0, duration_s=2.0, anomaly_duration_s=[0.5, 1.0], object_scale=[0.25, 0.35])


def _config(tmp_path, **overrides) -> SynthConfig:
    values = dict(SMALL, out_dir=str(tmp_path), n=10)
    values.update(overrides)
    return SynthConfig(**values)


def _pixel_boxes(anomaly_boxes: dict, width: int, height: int) -> dict[int, np.ndarray]:
    return {k: np.array(v[0]) * np.array([width, height, width, height]) / 1000 for k, v in anomaly_boxes.items()}


def _inside_mask(box, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    return (xx >= box[0]) & (xx <= box[2]) & (yy >= box[1]) & (yy <= box[3])


@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_planted_anomaly_is_labelled_from_the_renderers_geometry(kind, tmp_path):
    config = _config(tmp_path)
    for index in range(3):  # a few random draws per type
        spec = make_spec(config, index, kind)
        frames, boxes = render(spec)
        start, end = spec.planted
        # Boxes exist for exactly the planted frames, inside the frame, with positive area.
        assert sorted(boxes) == list(range(start, end + 1))
        for box in boxes.values():
            assert 0 <= box[0] < box[2] <= spec.width and 0 <= box[1] < box[3] <= spec.height
        record = annotate(spec, boxes, "v.mp4", config)
        (anomaly,) = record.anomalies
        assert record.status == "abnormal" and anomaly.type == kind
        # annotation_fps defaults to the video's fps: the window is the planted frames exactly.
        assert anomaly.frames == (start, end)
        for frame, pixel_box in _pixel_boxes(anomaly.boxes, spec.width, spec.height).items():
            np.testing.assert_allclose(pixel_box, boxes[frame], atol=0.1 * max(spec.width, spec.height) / 1000 + 0.01)


@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_planted_anomaly_is_visible_inside_its_box(kind, tmp_path):
    config = _config(tmp_path)
    spec = make_spec(config, 0, kind)
    planted, boxes = render(spec)
    clean, none = render(spec, plant=False)
    assert none == {}
    start, end = spec.planted
    # Outside the window the two renders are identical: the defect is sparse in time.
    outside_window = [t for t in range(spec.num_frames) if not start <= t <= end]
    np.testing.assert_array_equal(planted[outside_window], clean[outside_window])
    inside_diffs, outside_diffs = [], []
    for t in range(start, end + 1):
        diff = np.abs(planted[t].astype(int) - clean[t].astype(int)).sum(-1)
        mask = _inside_mask(boxes[t], spec.height, spec.width)
        inside_diffs.append(diff[mask].mean())
        outside_diffs.append(diff[~mask].mean())
    assert np.mean(inside_diffs) > 5 * np.mean(outside_diffs) + 1.0, (inside_diffs, outside_diffs)


def test_normal_videos_have_nothing_planted(tmp_path):
    spec = make_spec(_config(tmp_path), 0, NORMAL)
    frames, boxes = render(spec)
    clean, _ = render(spec, plant=False)
    assert spec.planted is None and boxes == {}
    np.testing.assert_array_equal(frames, clean)
    record = annotate(spec, boxes, "v.mp4", _config(tmp_path))
    assert record.status == "normal" and record.anomalies == []


def test_synth_job_round_trip_through_files(tmp_path):
    out = tmp_path / "synth"
    assert main(["synth", "--config", str(REPO_ROOT / "recipes/tiny/synth_tiny.yaml"), "--out", str(out), "n=10"]) == 0
    config = load_config(SynthConfig, REPO_ROOT / "recipes/tiny/synth_tiny.yaml", [f"out_dir={out}", "n=10"])
    loaded = load_annotations(out / "annotations.jsonl", strict=True, check_videos=True)
    assert len(loaded.records) == 10 and not loaded.skipped
    kinds = {r.anomalies[0].type if r.anomalies else NORMAL for r in loaded.records}
    assert kinds == set(ANOMALY_TYPES) | {NORMAL}  # 2 normal + every type twice
    for index, record in enumerate(loaded.records):
        spec = make_spec(config, index)
        video = load_video(record.video)
        assert video.num_frames == spec.num_frames and (video.height, video.width) == (spec.height, spec.width)
        if spec.planted is None:
            assert record.status == "normal"
            continue
        (anomaly,) = record.anomalies
        assert anomaly.frames == spec.planted  # window == planted frames
        planted, boxes = render(spec)
        clean, _ = render(spec, plant=False)
        for frame, box in _pixel_boxes(anomaly.boxes, spec.width, spec.height).items():
            np.testing.assert_allclose(box, boxes[frame], atol=0.2)  # box == renderer geometry
        # The defect survives H.264: on the defect's own pixels (inside the box, where the
        # planted and clean renders differ) the decoded frame is far closer to the planted one.
        t = (spec.planted[0] + spec.planted[1]) // 2
        defect = np.abs(planted[t].astype(int) - clean[t].astype(int)).sum(-1) > 60
        defect &= _inside_mask(boxes[t], spec.height, spec.width)
        assert defect.sum() >= 10, record.video
        decoded = video.frames[t].astype(int)
        to_planted = np.abs(decoded - planted[t].astype(int)).sum(-1)[defect].mean()
        to_clean = np.abs(decoded - clean[t].astype(int)).sum(-1)[defect].mean()
        assert 2 * to_planted < to_clean, (record.video, to_planted, to_clean)


def test_annotation_fps_grid_covers_the_planted_time(tmp_path):
    config = _config(tmp_path, fps=16.0, annotation_fps=4.0, anomaly_duration_s=[0.5, 1.0])
    for index, kind in enumerate(ANOMALY_TYPES):
        spec = make_spec(config, index, kind)
        _, boxes = render(spec)
        anomaly = annotate(spec, boxes, "v.mp4", config).anomalies[0]
        start_s, end_s = spec.planted[0] / 16, (spec.planted[1] + 1) / 16
        first, last = anomaly.frames
        # Exactly the 4 fps frames whose time lies in the planted window.
        assert [k for k in range(0, 64) if start_s <= k / 4 < end_s] == list(range(first, last + 1))
        # Each box is the geometry of the source frame on screen at k / 4 s (frame 4k).
        for k, box in _pixel_boxes(anomaly.boxes, spec.width, spec.height).items():
            np.testing.assert_allclose(box, boxes[4 * k], atol=0.2)


def test_same_seed_same_output_different_seed_differs(tmp_path):
    a, b, c = (generate(_config(tmp_path / name, n=5, seed=seed)) for name, seed in [("a", 3), ("b", 3), ("c", 4)])
    assert (tmp_path / "a/annotations.jsonl").read_text().replace("/a/", "/") == (
        tmp_path / "b/annotations.jsonl"
    ).read_text().replace("/b/", "/")
    for i in range(5):
        name = f"videos/synth_{i:05d}.mp4"
        np.testing.assert_array_equal(load_video(tmp_path / "a" / name).frames, load_video(tmp_path / "b" / name).frames)
    assert [r.to_json() for r in a] == [r.to_json() for r in b]
    assert [r.to_json() for r in a] != [r.to_json() for r in c]


def test_hard_split_controls_duration_and_area(tmp_path):
    config = _config(tmp_path, n=20, height=128, width=192, fps=16.0, duration_s=4.0, anomaly_duration_s=[0.25, 0.9], object_scale=[0.1, 0.15])
    for index in range(config.n):
        spec = make_spec(config, index)
        if spec.planted is None:
            continue
        _, boxes = render(spec)
        duration = (spec.planted[1] - spec.planted[0] + 1) / spec.fps
        assert duration < 1.0
        for box in boxes.values():
            assert (box[2] - box[0]) * (box[3] - box[1]) < 0.2 * spec.width * spec.height


def test_saliency_follows_size_and_duration(tmp_path):
    big = _config(tmp_path, object_scale=[0.35, 0.35], anomaly_duration_s=[1.0, 1.0], salient_min_area=0.02)
    small = _config(tmp_path, object_scale=[0.1, 0.1], anomaly_duration_s=[0.25, 0.25], salient_min_area=0.02)
    for config, expected in [(big, "salient"), (small, "non-salient")]:
        spec = make_spec(config, 0, "Object Distortion")
        _, boxes = render(spec)
        assert annotate(spec, boxes, "v.mp4", config).anomalies[0].saliency == expected


def test_rerun_resumes_without_rerendering(tmp_path):
    config = _config(tmp_path, n=4)
    generate(config)
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    kept = {p: p.stat().st_mtime_ns for p in videos[1:]}
    saved = tmp_path / "copy.mp4"
    saved.write_bytes(videos[0].read_bytes())
    videos[0].unlink()
    generate(config)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    assert videos[0].exists() and filecmp.cmp(videos[0], saved, shallow=False)


def test_a_folder_of_another_config_is_refused_naming_the_keys(tmp_path):
    from cac_align.config import RecipeError

    first = generate(_config(tmp_path, n=4))
    before = {p.name: p.read_bytes() for p in (tmp_path / "videos").glob("*.mp4")}
    with pytest.raises(RecipeError, match=r"holds a synth run with a different config \(differs in: seed\).*overwrite=true"):
        generate(_config(tmp_path, n=4, seed=1))
    # nothing was touched: the videos and their labels still agree
    assert {p.name: p.read_bytes() for p in (tmp_path / "videos").glob("*.mp4")} == before
    assert [r.status for r in load_annotations(tmp_path / "annotations.jsonl").records] == [r.status for r in first]
    # overwrite renders every video again, and the labels are the new config's
    again = generate(_config(tmp_path, n=4, seed=1, overwrite=True))
    fresh = generate(_config(tmp_path / "fresh", n=4, seed=1))
    assert [(r.status, [a.type for a in r.anomalies]) for r in again] == [(r.status, [a.type for a in r.anomalies]) for r in fresh]
    for name in before:
        assert filecmp.cmp(tmp_path / "videos" / name, tmp_path / "fresh/videos" / name, shallow=False)
    # videos with no record of their config are refused too
    (tmp_path / "cac_align_run.json").unlink()
    with pytest.raises(RecipeError, match="already has videos, annotations.jsonl, not written by a recorded synth run"):
        generate(_config(tmp_path, n=4, seed=1, overwrite=True))  # overwrite never replaces unrecorded files


@pytest.mark.parametrize(
    "override, message",
    [
        ("n=0", "n must be >= 1"),
        ("height=63", "even"),
        ("anomaly_duration_s=[1.0,0.5]", "anomaly_duration_s"),
        ("anomaly_duration_s=[0.01,0.5]", "shorter than one frame"),
        ("object_scale=[0.3,0.9]", "object_scale maximum"),
        ("types=[Blur]", "types must be"),
        ("normal_fraction=1.5", "normal_fraction"),
    ],
)
def test_bad_synth_configs_are_named(override, message):
    with pytest.raises(RecipeError, match=message):
        load_config(SynthConfig, REPO_ROOT / "recipes/tiny/synth_tiny.yaml", [override])
