"""Modality routing (cac_align/rl/routing.py): the equation and the window maps, worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cac_align.rl.routing import (audio_frame_spans, component_advantages, routed_advantages, routed_credit, sample_windows, video_frame_spans,
                                  window_map)

TABLE = {"v": (0.5, "video"), "a": (0.25, "audio"), "s": (0.25, "both")}


def test_each_components_advantage_goes_to_the_stream_it_judges_weighted():
    advantages = {"v": np.array([1.0, -1.0]), "a": np.array([2.0, -2.0]), "s": np.array([-1.0, 1.0])}
    streams = routed_advantages(advantages, {k: w for k, (w, _) in TABLE.items()}, {k: m for k, (_, m) in TABLE.items()})
    # video = 0.5 [1, -1] + 0.25 [-1, 1]; audio = 0.25 [2, -2] + 0.25 [-1, 1]
    np.testing.assert_allclose(streams["video"], [0.25, -0.25])
    np.testing.assert_allclose(streams["audio"], [0.25, -0.25])
    # an audio-only reward: the video gets exactly 0, and the other way round
    alone = routed_advantages({"a": np.array([1.0, -1.0])}, {"a": 1.0}, {"a": "audio"})
    assert (alone["video"] == 0).all() and (alone["audio"] == [1, -1]).all()
    seen = routed_advantages({"v": np.array([1.0, -1.0])}, {"v": 1.0}, {"v": "video"})
    assert (seen["audio"] == 0).all() and (seen["video"] == [1, -1]).all()
    with pytest.raises(ValueError, match="no weight or modality"):
        routed_advantages({"x": np.zeros(2)}, {}, {})


def test_component_advantages_are_each_components_own_group_statistics():
    # group 0: v = [1, 3] -> (x - 2) / (1 + 1e-4); a = [5, 5]: zero variance, not trainable
    out = component_advantages({"v": np.array([1.0, 3.0]), "a": np.array([5.0, 5.0])}, [0, 0])
    np.testing.assert_allclose(out["v"].advantages, [-1 / 1.0001, 1 / 1.0001], rtol=1e-6)
    assert not out["a"].trainable.any() and (out["a"].advantages == 0).all()


def test_frame_spans_and_a_window_over_them_by_hand():
    np.testing.assert_allclose(video_frame_spans(9, 24.0, 8), [[0, 1 / 24], [1 / 24, 9 / 24]])
    spans = audio_frame_spans(4, 1.0)
    np.testing.assert_allclose(spans, [[0, .25], [.25, .5], [.5, .75], [.75, 1]])
    np.testing.assert_allclose(window_map([(0.3, 0.6)], spans), [0, 2, 2, 0])  # covered [0, 1, 1, 0], mean 0.5
    np.testing.assert_allclose(window_map([(0.3, 0.6)], spans, inside=1.0, outside=0.5), np.array([.5, 1, 1, .5]) / 0.75)
    assert window_map([(2.0, 3.0)], spans) is None  # past the clip: the uniform map stays


def test_the_slipping_span_is_read_from_the_sync_verdict_and_a_bad_one_is_said():
    # the sync reward's evidence (rewards/sync.py): every window's offset, and the span where the sound slips
    windows = [{"window_s": [0.0, 4.8], "offset_s": 0.0, "padding_only": False}, {"window_s": [3.2, 8.0], "offset_s": 0.6, "padding_only": False}]
    assert sample_windows({"score": 0.8, "windows": windows, "status": "abnormal", "window_s": [3.2, 5.0], "boxes": []}) == [(3.2, 5.0)]
    assert sample_windows({"score": 1.0, "windows": windows, "status": "normal", "window_s": None, "boxes": []}) is None
    assert sample_windows({"score": 1}) is None
    for bad in ([0.3, 0.2], ["a", 1], 3):
        with pytest.raises(ValueError, match="window_s"):
            sample_windows({"status": "abnormal", "window_s": bad})


def test_a_sync_window_weights_only_that_span_in_both_streams():
    video_spans = audio_frame_spans(4, 1.0)  # 4 video latent frames over 1 s, like the audio's
    audio_spans = audio_frame_spans(8, 1.0)
    judge = np.ones((2, 4, 1, 1), dtype=np.float32)
    judge[1, 0] = 4.0
    judge[1, 1:] = 0.0  # sample 1: the judge located its defect in latent frame 0
    advantages = {"v": np.array([1.0, -1.0]), "a": np.array([2.0, -2.0]), "s": np.array([-1.0, 1.0])}
    windows = {"s": [[(0.5, 0.75)], None]}  # sample 0's sound slips in [0.5, 0.75); sample 1 names no window
    video, audio, windowed = routed_credit(TABLE, advantages, windows, judge, video_spans, audio_spans)
    assert windowed == 1
    # sample 0: video = 1 * 0.5 * 1 + 0.25 * (-1) * W^v, W^v = [0, 0, 4, 0]
    np.testing.assert_allclose(video[0, :, 0, 0], [0.5, 0.5, 0.5 - 1.0, 0.5])
    # audio = 0.25 * 2 + 0.25 * (-1) * W^a, W^a over 8 frames: [.5, .625) and [.625, .75) covered -> [0, 0, 0, 0, 4, 4, 0, 0]
    np.testing.assert_allclose(audio[0], [0.5, 0.5, 0.5, 0.5, -0.5, -0.5, 0.5, 0.5])
    # sample 1: the judge's map times the video components' advantage, the sync's uniform
    np.testing.assert_allclose(video[1, :, 0, 0], [0.5 * -1 * 4 + 0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(audio[1], np.full(8, 0.25 * -2 + 0.25))
    # a sync component alone, outside 0: nothing outside its span, in either stream
    video, audio, _ = routed_credit({"s": (1.0, "both")}, {"s": np.array([1.0])}, {"s": [[(0.5, 0.75)]]}, np.ones((1, 4, 1, 1)), video_spans,
                                    audio_spans)
    assert (video[0, [0, 1, 3]] == 0).all() and video[0, 2, 0, 0] == 4
    assert (audio[0, [0, 1, 2, 3, 6, 7]] == 0).all() and (audio[0, 4:6] == 4).all()
