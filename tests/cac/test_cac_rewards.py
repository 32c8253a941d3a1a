"""Stage-3 rewards (CaC Eq. 2-6) on hand-worked rollouts, parsed from real answer text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.schema import AnnotationRecord, Anomaly
from cac_align.cac.train.rewards import cac_reward, spatial_iou, temporal_iou, type_iou

BOX = [100.0, 100.0, 300.0, 300.0]
CLIP_TIMES = 1.0 + np.arange(8) / 8  # turn 2 re-reads [1.0, 2.0) s at 8 fps


def _record(saliency="salient", boxes_per_frame=([BOX],)) -> AnnotationRecord:
    # one anomaly on frames 8..15 of an 8 fps annotation = [1.0, 2.0) s = frames 4..7 at 4 fps
    boxes = {f: [list(b) for b in boxes_per_frame[0]] for f in range(8, 16)}
    anomaly = Anomaly(type="Object Distortion", frames=(8, 15), boxes=boxes, saliency=saliency)
    return AnnotationRecord(video="v.mp4", prompt="", status="abnormal", annotation_fps=8.0, anomalies=[anomaly], num_frames=32)


NORMAL = AnnotationRecord(video="n.mp4", prompt="", status="normal", annotation_fps=8.0, num_frames=32)


def turn1(status="abnormal", time=(1.0, 2.0), type_="Object Distortion"):
    anomalies = [] if status == "normal" else [{"type": type_, "time": list(time)}]
    return parse_judgment(json.dumps({"cot": "c", "status": status, "anomalies": anomalies}), 1, fps=4.0, num_frames=16)


def turn2(status="abnormal", box=BOX, frames=range(8), type_="Object Distortion"):
    anomalies = [] if status == "normal" else [{"type": type_, "bbox": {f"frame {k}": box for k in frames}}]
    return parse_judgment(json.dumps({"cot": "c", "status": status, "anomalies": anomalies}), 2, fps=8.0, num_frames=8)


def reward(t1, t2, record):
    return cac_reward(t1, t2, record, scan_fps=4.0, scan_frames=16, clip_times=CLIP_TIMES)


def test_perfect_anomalous_rollout_scores_the_maximum():
    r = reward(turn1(), turn2(), _record())
    assert (r.format, r.status, r.type_iou, r.temporal_iou, r.spatial_iou) == (0.0, 0.0, 1.0, 1.0, 1.0)
    assert r.total == pytest.approx(2 + 2 + 5)  # 1*0 + 2*0 + (2*1 + 2*1 + 5*1)


def test_normal_video_called_normal_scores_zero_and_needs_no_turn2():
    r = reward(turn1("normal"), None, NORMAL)
    assert (r.format, r.status, r.mask, r.gamma, r.total) == (0.0, 0.0, 0.0, 1.0, 0.0)
    assert not r.reached_turn2


def test_normal_video_called_abnormal_loses_the_status_weight():
    r = reward(turn1(), turn2(), NORMAL)
    assert r.format == 0.0 and r.status == -1.0
    assert r.total == pytest.approx(-2.0)  # 2 * 1 * (-1); IoU terms masked for normal videos


def test_anomaly_missed_in_turn2():
    r = reward(turn1(), turn2("normal"), _record())
    # status wrong; types: turn 1 right (1), turn 2 none (0) -> 0.5; window right; no boxes
    assert (r.format, r.status, r.type_iou, r.temporal_iou, r.spatial_iou) == (0.0, -1.0, 0.5, 1.0, 0.0)
    assert r.total == pytest.approx(2 * -1 + 2 * 0.5 + 2 * 1 + 5 * 0)  # = 1


def test_non_salient_anomaly_discounts_the_penalties():
    # window [1.5, 2.5) s = 4 fps frames 6..9 vs GT 4..7: IoU 2/6; boxes half the GT box: IoU 0.5
    r = reward(turn1(time=(1.5, 2.5)), turn2(box=[100.0, 100.0, 200.0, 300.0]), _record("non-salient"))
    assert r.gamma == 0.5 and r.temporal_iou == pytest.approx(1 / 3) and r.spatial_iou == pytest.approx(0.5)
    expected = 2 * (1 - 0.5 * 0) + 2 * (1 - 0.5 * (2 / 3)) + 5 * (1 - 0.5 * 0.5)  # 7.0833
    assert r.total == pytest.approx(expected)
    # a wrong status costs w2 * gamma = 1 instead of 2
    wrong = reward(turn1(time=(1.5, 2.5)), turn2("normal"), _record("non-salient"))
    assert wrong.status == -1.0
    assert wrong.total == pytest.approx(2 * 0.5 * -1 + 2 * (1 - 0.5 * 0.5) + 2 * (1 - 0.5 * (2 / 3)) + 5 * (1 - 0.5 * 1))


def test_multiple_gt_boxes_on_a_frame_are_each_matched():
    record = _record(boxes_per_frame=([BOX, [500.0, 500.0, 700.0, 700.0]],))
    # one predicted box per frame matching the first GT box exactly: (1 + 0) / 2 on every frame
    assert spatial_iou(turn2(), record, CLIP_TIMES) == pytest.approx(0.5)
    # predicting both boxes gets both
    both = parse_judgment(json.dumps({"status": "abnormal", "anomalies": [{"type": "Object Distortion", "bbox": {
        f"frame {k}": [BOX, [500, 500, 700, 700]] for k in range(8)}}]}), 2, fps=8.0, num_frames=8)
    assert spatial_iou(both, record, CLIP_TIMES) == pytest.approx(1.0)


def test_spatial_iou_uses_only_frames_with_both_boxes():
    # boxes on clip frames 0..3 only: M = 4 GT boxes, all matched exactly -> 1 (coverage is Eq. 4's job)
    assert spatial_iou(turn2(frames=range(4)), _record(), CLIP_TIMES) == 1.0
    # predicted boxes only on frames without GT: M = 0 -> 0
    late = CLIP_TIMES + 2.0
    assert spatial_iou(turn2(), _record(), late) == 0.0


def test_invalid_turn1_json():
    t1 = parse_judgment('{"cot": "the video', 1, fps=4.0, num_frames=16)
    r = reward(t1, None, _record())
    assert (r.format, r.status, r.type_iou, r.temporal_iou, r.spatial_iou) == (-1.0, -1.0, 0.0, 0.0, 0.0)
    assert r.total == pytest.approx(-1 + 2 * -1 + 0)  # = -3


def test_turn2_required_but_not_run_fails_its_format_half():
    t1 = parse_judgment('{"status": "abnormal", "anomalies": [{"type": "Object Distortion"}]}', 1, fps=4.0, num_frames=16)
    assert not t1.valid and t1.status == "abnormal"
    r = reward(t1, None, _record())
    assert r.format == -1.0  # turn 1 invalid (no window) and turn 2 needed but not run
    r = reward(turn1(), None, _record())
    assert r.format == -0.5 and r.status == -1.0


def test_type_and_temporal_iou_hand_worked():
    mixed = parse_judgment(json.dumps({"status": "abnormal", "anomalies": [
        {"type": "Object Distortion", "time": [1.0, 1.5]}, {"type": "Motion Anomalies", "time": [3.0, 3.5]}]}), 1, fps=4.0, num_frames=16)
    # types {OD, MA} vs {OD}: 1/2 for turn 1, no turn 2 -> 0.25
    assert type_iou(mixed, None, {"Object Distortion"}) == pytest.approx(0.25)
    # frames {4, 5} + {12, 13} vs GT {4..7}: intersection 2, union 6
    assert temporal_iou(mixed, _record(), 4.0, 16) == pytest.approx(2 / 6)


def test_weights_must_be_five():
    with pytest.raises(ValueError, match="format, status, type, temporal, spatial"):
        cac_reward(turn1(), turn2(), _record(), weights=(1, 2, 3))


STATUS_ONLY = AnnotationRecord(
    video="p.mp4", prompt="a ball falls upward", status="abnormal", annotation_fps=8.0, num_frames=32,
    anomalies=[Anomaly(type="Physical Violations", frames=None, boxes={}, reason="gravity reversed", saliency="salient")],
)


def test_a_status_only_record_masks_the_terms_it_cannot_support():
    # VideoPhy-2-style label: abnormal, Physical Violations, no window, no box. Turn 1 right
    # (abnormal, the type) with some window; turn 2 confirms with the type and a box.
    r = reward(turn1(type_="Physical Violations"), turn2(type_="Physical Violations"), STATUS_ONLY)
    assert (r.status, r.type_iou, r.mask, r.mask_temporal, r.mask_spatial) == (0.0, 1.0, 1.0, 0.0, 0.0)
    # total = 1 * 0 (format) + 2 * 0 (status) + 2 * 1 (type IoU); temporal and spatial masked,
    # whatever the window and boxes the rollout wrote
    assert r.total == pytest.approx(2.0)
    wrong_type = reward(turn1(type_="Motion Anomalies"), turn2(type_="Motion Anomalies"), STATUS_ONLY)
    assert wrong_type.type_iou == 0.0 and wrong_type.total == pytest.approx(2 * (1 - 1 * (1 - 0)))  # = 0
    missed = reward(turn1("normal"), None, STATUS_ONLY)
    # said normal: status -1 (weight 2), format: turn 1 valid, turn 2 needed... not needed for normal -> 0;
    # type IoU 0 -> discounted 0
    assert (missed.status, missed.total) == (-1.0, pytest.approx(-2.0))
    # the paper's Eq. 6 is unchanged for a record with its window and boxes
    assert reward(turn1(), turn2(), _record()).mask_temporal == 1.0 == reward(turn1(), turn2(), _record()).mask_spatial
