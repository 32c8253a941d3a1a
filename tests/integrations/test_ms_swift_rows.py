"""The ms-swift plugin's half that runs without ms-swift (cac_align/integrations/ms_swift/cac_rows.py):
video specs, dataset rows, the turn-2 plan and a rollout's reward, against our own stage-3 code.
ms-swift itself: tests/conformance/test_ms_swift_grpo.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cac.infer import sample_capped
from cac_align.cac.judgment import parse_judgment
from cac_align.cac.prompts import turn1_prompt
from cac_align.cac.schema import load_annotations
from cac_align.cac.train.data import DataConfig
from cac_align.cac.train.rewards import cac_reward
from cac_align.config import RecipeError
from cac_align.integrations.ms_swift.__main__ import main
from cac_align.integrations.ms_swift.cac_rows import load_spec, plan_turn2, rollout_reward, swift_row, video_spec
from cac_align.video import load_video
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def records(cac_data):
    return load_annotations(cac_data).records


def _abnormal(records):
    return next(r for r in records if r.status == "abnormal" and all(a.has_window for a in r.anomalies))


def test_a_spec_shows_what_inference_shows(records):
    record = records[0]
    video = load_video(record.video)
    scan = load_spec(video_spec(record.video, 4.0, 8, None, 32))
    ours = sample_capped(video, 4.0, 8, None, 32)
    assert np.array_equal(np.asarray(scan.frames), np.asarray(ours.frames)) and np.allclose(scan.timestamps, ours.timestamps)
    clip = load_spec(video_spec(record.video, 8.0, 8, None, 32, window=(0.5, 1.25)))
    assert clip.fps == 8.0 and clip.timestamps.tolist() == pytest.approx([0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25][: clip.num_frames])
    assert clip.timestamps[0] == pytest.approx(0.5)


@pytest.mark.parametrize("spec, message", [
    ("/videos/a.mp4", "not a CaC video spec"),
    ("cac-video:{not json", "not valid JSON"),
    ('cac-video:{"path": "a.mp4", "fps": 4}', "exactly the keys"),
])
def test_a_bad_spec_is_refused_with_its_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        load_spec(spec)


def test_a_row_asks_turn_1_over_the_scan(records):
    record = records[0]
    settings = DataConfig(max_frames_turn1=8, max_frames_turn2=8)
    row = swift_row(record, settings, (1, 2, 2, 2, 5))
    video = load_video(record.video)
    scan = sample_capped(video, 4.0, 8, None, 32)
    assert row["messages"] == [{"role": "user", "content": "<video>" + turn1_prompt(video.duration_s, scan.fps, scan.num_frames, record.prompt)}]
    assert row["videos"] == [video_spec(record.video, 4.0, 8, None, 32)]
    cac = json.loads(row["cac"])
    assert (cac["scan_fps"], cac["scan_frames"], cac["clip_fps"], cac["reward_weights"]) == (scan.fps, scan.num_frames, 8.0, [1, 2, 2, 2, 5])
    assert cac["record"]["video"] == record.video and cac["record"]["status"] == record.status


def test_turn_2_only_after_an_abnormal_turn_1_with_a_window(records):
    record = _abnormal(records)
    cac = json.loads(swift_row(record, DataConfig(max_frames_turn1=8, max_frames_turn2=8), (1, 2, 2, 2, 5))["cac"])
    assert plan_turn2(cac, '{"COT": "fine", "status": "normal", "anomalies": []}') is None
    assert plan_turn2(cac, "no JSON at all") is None
    assert plan_turn2(cac, '{"COT": "x", "status": "abnormal", "anomalies": [{"Attributed Label": "Object Distortion"}]}') is None  # no window
    plan = plan_turn2(cac, '{"COT": "x", "status": "abnormal", "anomalies": [{"Attributed Time Region": "2-3", '
                           '"Attributed Label": "Object Distortion", "Reason for Anomaly": "r", "Problem Region": "p"}]}')
    # frames 2-3 of the 4 fps scan span [0.5, 1.0) s: the clip is that window at 8 fps, 4 frames
    assert plan.window_s == (0.5, 1.0) and plan.clip.fps == 8.0
    assert plan.clip.timestamps.tolist() == pytest.approx([0.5, 0.625, 0.75, 0.875])
    assert json.loads(plan.spec[len("cac-video:"):])["window"] == [0.5, 1.0]
    assert "4 frames" in plan.question


def test_a_rollout_reward_is_eq_6_of_its_turns(records):
    record = _abnormal(records)
    cac = json.loads(swift_row(record, DataConfig(max_frames_turn1=8, max_frames_turn2=8), (1, 2, 2, 2, 5))["cac"])
    anomaly = record.anomalies[0]
    first_text = json.dumps({"COT": "c", "status": "abnormal", "anomalies": [{"Attributed Time Region": "1-3", "Attributed Label": anomaly.type,
                                                                               "Reason for Anomaly": "r", "Problem Region": "p"}]})
    second_text = json.dumps({"COT": "c", "status": "abnormal", "anomalies": [{"Attributed Label": anomaly.type, "Reason for Anomaly": "r",
                                                                                "Problem Region": "p", "BBOX": {"Frame 0": [100, 100, 500, 500]}}]})
    clip_times = [0.25, 0.375, 0.5]
    got = rollout_reward(cac, first_text, (second_text, 8.0, clip_times))
    want = cac_reward(parse_judgment(first_text, 1, fps=cac["scan_fps"], num_frames=cac["scan_frames"]),
                      parse_judgment(second_text, 2, fps=8.0, num_frames=3), record, (1, 2, 2, 2, 5),
                      scan_fps=cac["scan_fps"], scan_frames=cac["scan_frames"], clip_times=clip_times)
    assert got.total == want.total and got.reached_turn2
    # status and format both right: the format and status terms are 0; type IoU is 1 in both turns
    assert (got.format, got.status, got.type_iou) == (0.0, 0.0, 1.0)
    alone = rollout_reward(cac, first_text)
    assert not alone.reached_turn2 and alone.format == -0.5 and alone.status == -1.0  # turn 2 needed but never ran


def test_prepare_writes_the_stage3_split(tmp_path, cac_data, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["prepare", str(REPO_ROOT / "recipes/cac/stage3_grpo_tiny.yaml"), str(out), f"annotations={cac_data}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and not (tmp_path / "rows.jsonl.partial").exists()  # the tiny recipe's stage3 split: 4 videos
    assert all(json.loads(r["cac"])["reward_weights"] == [1.0, 2.0, 2.0, 2.0, 5.0] for r in rows)
    assert main(["plugin"]) == 0 and capsys.readouterr().out.strip().endswith("ms_swift/cac_plugin.py")
    assert main(["prepare"]) == 2
    with pytest.raises(RecipeError, match="needs a stage-3 train-cac recipe"):
        main(["prepare", str(REPO_ROOT / "recipes/score/cac_tiny.yaml"), str(tmp_path / "other.jsonl")])
    with pytest.raises(RecipeError, match="stage 2"):
        main(["prepare", str(REPO_ROOT / "recipes/cac/stage2_tiny.yaml"), str(tmp_path / "other.jsonl"), f"annotations={cac_data}"])
