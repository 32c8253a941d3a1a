"""Streamed training samples (train-cac ``stream:``): rendered on demand, deterministic, clean twins,
the paper's answer schema in every target."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.schema import frames_to_seconds
from cac_align.cac.train.data import DataConfig, frames_shown
from cac_align.cac.train.stream import StageStream, StreamConfig, SynthStream, load_stream_synth
from cac_align.config import RecipeError
from cac_align.data.synthetic import render
from cac_align.vlm.backend import images_of, videos_of
from conftest import REPO_ROOT

SYNTH = str(REPO_ROOT / "recipes/synth/default.yaml")
FRAME_TYPES = ["Object Distortion", "Human Distortion", "Character Anomalies", "Physical Violations"]


def _data(**overrides) -> DataConfig:
    return DataConfig(
        **{"prompt_style": "compact", "template_cot": "checklist", "max_pixels": 24576, "size_multiple": 64, "frame_types": FRAME_TYPES, **overrides}
    )


def test_stream_uses_the_synth_recipe_with_its_seed_and_overrides():
    config = StreamConfig(synth=SYNTH, overrides={"normal_fraction": 0.5}, seed=1234)
    synth = load_stream_synth(config, n=7)
    # recipes/synth/default.yaml's scenes, this stream's seed and size
    assert (synth.height, synth.width, synth.fps, synth.duration_s, synth.annotation_fps) == (256, 384, 16.0, 5.0, 4.0)
    assert synth.anomaly_duration_s == [0.5, 1.5] and synth.object_scale == [0.2, 0.4]
    assert (synth.seed, synth.n, synth.normal_fraction) == (1234, 7, 0.5)
    assert load_stream_synth(config, seed=999, n=3).seed == 999


def test_stream_config_errors():
    with pytest.raises(ValueError, match="must differ"):
        StreamConfig(synth=SYNTH, seed=5, eval_seed=5)
    with pytest.raises(RecipeError, match="recipe not found"):
        StreamConfig(synth="no/such/recipe.yaml")
    with pytest.raises(RecipeError, match="normal_fracton"):
        StreamConfig(synth=SYNTH, overrides={"normal_fracton": 0.5})


def test_stream_video_is_the_synth_render_and_single_frames_match_it():
    stream = SynthStream(load_stream_synth(StreamConfig(synth=SYNTH), n=4))
    spec = stream.spec(2)
    full = stream.video(2)
    np.testing.assert_array_equal(full.frames, render(spec)[0])
    one = stream.video(2, [1.25])  # the source frame on screen at 1.25 s: 20 at 16 fps
    assert one.num_frames == 1 and one.timestamps.tolist() == [1.25]
    np.testing.assert_array_equal(one.frames[0], full.frames[20])
    record = stream.record(2)
    assert record.status == ("normal" if spec.kind == "normal" else "abnormal") and record.annotation_fps == 4.0


def test_stage2_items_are_deterministic_and_follow_the_paper_schema():
    stream = SynthStream(load_stream_synth(StreamConfig(synth=SYNTH, seed=11), n=6))
    data = _data()
    a, b = StageStream(2, stream, data, seed=3), StageStream(2, stream, data, seed=3)
    assert len(a) == 12 and [a.sample(i) for i in range(12)] == [b.sample(i) for i in range(12)]
    for i in range(len(a)):
        record, sample = a.sample(i)
        chat = a.chat(i)
        (video,) = videos_of(chat.prompt_messages)
        target = json.loads(chat.target)
        assert list(target) == ["COT", "status", "anomalies"] and target["status"] == record.status
        if sample.kind == "global":
            assert i % 2 == 0 and video.fps == 4.0 and (video.height, video.width) == (128, 192)
            judgment = parse_judgment(chat.target, 1, fps=video.fps, num_frames=video.num_frames)
            assert judgment.valid
            for anomaly, judged in zip(record.anomalies, judgment.anomalies):
                window = frames_to_seconds(*frames_shown(video.timestamps, anomaly.window_s(4.0)), 4.0)
                assert judged.window_s == window and judged.type == anomaly.type
        else:
            assert i % 2 == 1 and video.fps == 8.0 and sample.end_s - sample.start_s < 1.0
            judgment = parse_judgment(chat.target, 2, fps=video.fps, num_frames=video.num_frames)
            assert judgment.valid and judgment.status == sample.label
            if record.status == "abnormal":  # the clip covers the planted window or lies inside it
                w0, w1 = record.anomalies[0].window_s(4.0)
                assert (sample.start_s <= w0 + 1e-9 and w1 <= sample.end_s + 1e-9) or (w0 - 1e-9 <= sample.start_s and sample.end_s <= w1 + 1e-9)


def _same(a: list[dict], b: list[dict]) -> bool:
    """Two chats hold the same roles, texts and videos (frames and timestamps)."""

    def parts(messages):
        for m in messages:
            for item in m["content"]:
                yield m["role"], item.get("type"), item.get("text"), item.get("video")

    for (ra, ta, xa, va), (rb, tb, xb, vb) in zip(parts(a), parts(b), strict=True):
        if (ra, ta, xa) != (rb, tb, xb) or (va is None) != (vb is None):
            return False
        if va is not None and not (np.array_equal(va.frames, vb.frames) and np.array_equal(va.timestamps, vb.timestamps)):
            return False
    return True


def test_clip_context_puts_the_scan_and_its_turn1_answer_before_the_clip():
    stream = SynthStream(load_stream_synth(StreamConfig(synth=SYNTH, seed=11), n=3))
    plain, context = StageStream(2, stream, _data(), seed=3), StageStream(2, stream, _data(clip_context=True), seed=3)
    for i in range(len(plain)):
        alone, carried = plain.chat(i), context.chat(i)
        if alone.kind == "global":  # turn-1 samples are the same either way
            assert _same(carried.messages, alone.messages)
            continue
        scan = context.chat(i - 1)  # the same video's global sample: its scan and gold answer
        assert [m["role"] for m in carried.messages] == ["user", "assistant", "user", "assistant"]
        assert _same(carried.messages[:2], scan.messages) and _same(carried.messages[2:], alone.messages)
        assert (carried.target, carried.label) == (alone.target, alone.label)
        (first, second) = videos_of(carried.prompt_messages)
        assert (first.fps, second.fps) == (4.0, 8.0)


def test_clean_twins_are_the_same_scene_with_nothing_planted():
    stream = SynthStream(load_stream_synth(StreamConfig(synth=SYNTH), n=3, normal_fraction=0.0))
    data = _data()
    twins = StageStream(2, stream, data, clean_twins=True)
    assert len(twins) == 3 * 4  # per video: planted global, planted clip, twin global, twin clip
    for video in range(3):
        planted_global, planted_clip, twin_global, twin_clip = (twins.sample(4 * video + k) for k in range(4))
        assert planted_global[0].status == "abnormal" and twin_global[0].status == "normal"
        assert twin_global[0].prompt == planted_global[0].prompt and twin_global[0].anomalies == []
        # the twin shows the same span as its planted sample
        assert (twin_clip[1].start_s, twin_clip[1].end_s) == (planted_clip[1].start_s, planted_clip[1].end_s)
        scene, clean = stream.video(video), stream.video(video, twin=True)
        spec = stream.spec(video)
        differs = np.flatnonzero((scene.frames != clean.frames).reshape(scene.num_frames, -1).any(axis=1))
        # the two renders differ exactly in the planted frames (a vanished ball differs there too)
        assert differs.tolist() == list(range(spec.planted[0], spec.planted[1] + 1))
    with pytest.raises(ValueError, match="normal_fraction must be 0"):
        StageStream(2, SynthStream(load_stream_synth(StreamConfig(synth=SYNTH), n=3)), data, clean_twins=True)


def test_stage1_frames_come_from_the_planted_window_and_its_twin():
    stream = SynthStream(load_stream_synth(StreamConfig(synth=SYNTH), n=4, normal_fraction=0.0, types=FRAME_TYPES))
    frames = StageStream(1, stream, _data(frames_per_anomaly=2), clean_twins=True)
    assert len(frames) == 4 * 4
    for i in range(len(frames)):
        video, k, twin = frames.locate(i)
        record, sample = frames.sample(i)
        planted = stream.record(video)
        frame = round(sample.start_s * 4.0)
        assert planted.anomalies[0].frames[0] <= frame <= planted.anomalies[0].frames[1]
        chat = frames.chat(i)
        (image,) = images_of(chat.prompt_messages)
        assert image.shape == (128, 192, 3)
        judgment = parse_judgment(chat.target, 2, fps=1.0, num_frames=1)
        assert judgment.valid and judgment.status == ("normal" if twin else "abnormal")
        if not twin:
            box = [float(round(v)) for v in planted.anomalies[0].boxes[frame][0]]
            assert judgment.anomalies[0].boxes == {0: [box]}
