"""`cac-align synth-cot`: template reasoning offline, and generate-verify against a local teacher server."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cac_align.cac.schema import AnnotationRecord, Anomaly, load_annotations, write_annotations
from cac_align.cac.train.cot import check_answer, saliency_for_round
from cac_align.jobs.synth_cot import SynthCotConfig, run
from cac_align.video import Video, save_video
from cac_align.vlm.config import ModelConfig
from chat_server import ChatServer
from conftest import smooth_video


def _dataset(tmp_path) -> str:
    """Four 2 s videos at 8 fps: A, B, C abnormal (one anomaly each, boxed), D normal."""
    records = []
    for name, kind in [("a", "Object Distortion"), ("b", "Human Distortion"), ("c", "Physical Violations"), ("d", None)]:
        path = tmp_path / f"{name}.mp4"
        save_video(Video(smooth_video(16, 64, 96, seed=ord(name)), 8.0), path)
        anomalies = []
        if kind:
            boxes = {f: [[100.0 + 10 * f, 200.0, 400.0 + 10 * f, 600.0]] for f in range(4, 10)}
            anomalies = [Anomaly(type=kind, frames=(4, 9), boxes=boxes, reason=f"{name} is wrong", region="ball", saliency="salient")]
        records.append(AnnotationRecord(video=str(path), prompt=f"video {name}", status="abnormal" if kind else "normal", annotation_fps=8.0, anomalies=anomalies, num_frames=16))
    write_annotations(records, tmp_path / "annotations.jsonl")
    return str(tmp_path / "annotations.jsonl")


class Teacher:
    """Plays the teacher VLM. It reads the human annotation out of the prompt and answers:
    video a: a wrong time window twice, then right (-> salient, round 3);
    video b: always the wrong type (-> discarded after 5 rounds);
    video c: right every time, but its verifier says "inconsistent" 3 times (-> non-salient, round 4);
    video d (normal): right at once (-> salient, round 1)."""

    def __init__(self):
        self.generations: dict[str, int] = {}
        self.verifications: dict[str, int] = {}
        self.prompts: dict[str, list[str]] = {}

    def __call__(self, messages) -> str:
        text = "".join(p["text"] for p in messages[0]["content"] if p["type"] == "text")
        annotation = json.loads(re.search(r"Human annotation[^\n]*:\n(.*)\n", text).group(1))
        reason = annotation["anomalies"][0]["Reason for Anomaly"] if annotation["anomalies"] else "d"
        video = reason[0]
        if "You check reasoning" in text:
            n = self.verifications[video] = self.verifications.get(video, 0) + 1
            ok = not (video == "c" and n <= 3)
            return json.dumps({"consistent": ok, "problems": "" if ok else "the reasoning names the wrong region"})
        n = self.generations[video] = self.generations.get(video, 0) + 1
        self.prompts.setdefault(video, []).append(text)
        anomalies = []
        for a in annotation["anomalies"]:
            a = dict(a, COT=f"close look at {video}")
            if video == "a" and n <= 2:
                a["Attributed Time Region"] = "0-1"  # frames 0-1 of the teacher's grid: 0-0.25 s
            if video == "b":
                a["Attributed Label"] = "Motion Anomalies"
            anomalies.append(a)
        return "```json\n" + json.dumps({"COT": f"reasoning for {video}, round {n}", "status": annotation["status"], "anomalies": anomalies}) + "\n```"


def _config(tmp_path, annotations, url=None, **extra):
    teacher = ModelConfig(name="teacher", backend="openai", base_url=url, max_retries=0) if url else None
    return SynthCotConfig(annotations=annotations, out_dir=str(tmp_path / "out"), teacher=teacher, **extra)


def test_generate_verify_labels_saliency_and_discards(tmp_path):
    annotations = _dataset(tmp_path)
    teacher = Teacher()
    with ChatServer(answer=teacher) as server:
        counts = run(_config(tmp_path, annotations, server.url, batch_size=4))
    assert counts == {"salient": 2, "non-salient": 1, "discarded": 1}
    assert teacher.generations == {"a": 3, "b": 5, "c": 4, "d": 1}
    kept = {r.prompt: r for r in load_annotations(tmp_path / "out/annotations.jsonl").records}
    assert sorted(kept) == ["video a", "video c", "video d"]
    assert kept["video a"].anomalies[0].saliency == "salient" and kept["video a"].cot == "reasoning for a, round 3"
    assert kept["video c"].anomalies[0].saliency == "non-salient" and kept["video c"].cot == "reasoning for c, round 4"
    assert kept["video a"].anomalies[0].cot == "close look at a"
    assert {r.cot_source for r in kept.values()} == {"teacher:teacher"}
    (discarded,) = load_annotations(tmp_path / "out/discarded.jsonl").records
    assert discarded.prompt == "video b" and discarded.cot is None
    # failure reasons come back in the next round's prompt
    assert "rejected" not in teacher.prompts["a"][0]
    assert "IoU 0.00 <= 0.5" in teacher.prompts["a"][1]
    assert "differ from the annotated ['Human Distortion']" in teacher.prompts["b"][4]
    assert "the reasoning names the wrong region" in teacher.prompts["c"][1]
    # the teacher saw the video frames plus close-up crops of the annotated boxes
    log = [json.loads(line) for line in (tmp_path / "out/cot_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and {e["outcome"] for e in log} == {"salient", "non-salient", "discarded"}
    assert len(server.images) > 16


def test_resume_skips_finished_videos_and_ignores_a_half_written_line(tmp_path):
    annotations = _dataset(tmp_path)
    with ChatServer(answer=Teacher()) as server:
        run(_config(tmp_path, annotations, server.url, batch_size=4))
    log = tmp_path / "out/cot_log.jsonl"
    lines = log.read_text().splitlines()
    # a run killed after two videos, in the middle of writing the third line
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    teacher = Teacher()
    with ChatServer(answer=teacher) as server:
        counts = run(_config(tmp_path, annotations, server.url, batch_size=4))
    assert sum(counts.values()) == 4
    finished = {json.loads(line)["video"][-5] for line in lines[:2]}
    assert set(teacher.generations) == {"a", "b", "c", "d"} - finished
    # the torn line is gone, not glued to the next entry: the log reads whole again
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(e["video"][-5] for e in entries) == ["a", "b", "c", "d"]


def test_template_reasoning_offline_keeps_saliency_and_refuses_a_changed_config(tmp_path):
    from cac_align.config import RecipeError

    annotations = _dataset(tmp_path)
    counts = run(_config(tmp_path, annotations))
    assert counts == {"template": 4}
    # video paths are rewritten relative to the new file, so they still resolve
    records = load_annotations(tmp_path / "out/annotations.jsonl", check_videos=True).records
    assert all(r.cot_source == "template" and r.cot for r in records)
    assert "From 0.50 s to 1.25 s in the ball, a is wrong." in records[0].cot
    assert records[0].anomalies[0].saliency == "salient"
    with pytest.raises(RecipeError, match=r"differs in: max_rounds"):
        run(_config(tmp_path, annotations, max_rounds=4))


def test_check_answer_hand_worked():
    record = AnnotationRecord(
        video="v.mp4", prompt="", status="abnormal", annotation_fps=4.0, num_frames=8,
        anomalies=[Anomaly(type="Object Distortion", frames=(2, 5), boxes={2: [[0, 0, 100, 100]], 3: [[0, 0, 100, 100]]}, saliency="salient")],
    )
    times = np.arange(8) / 4.0
    good = {"cot": "x", "status": "abnormal", "anomalies": [{"type": "Object Distortion", "time": [0.5, 1.5], "bbox": {"frame 2": [0, 0, 100, 100], "frame 3": [0, 0, 50, 100]}}]}
    # window IoU 1; boxes: IoU 1 on frame 2 and 0.5 on frame 3 -> mean 0.75 > 0.5
    assert check_answer(json.dumps(good), record, 4.0, times)[1] == []
    # window [1.0, 2.0) vs [0.5, 1.5): intersection 0.5, union 1.5 -> IoU 0.33
    late = dict(good, anomalies=[dict(good["anomalies"][0], time=[1.0, 2.0])])
    assert check_answer(json.dumps(late), record, 4.0, times)[1] == [
        "Object Distortion: time window [1.0, 2.0] has IoU 0.33 <= 0.5 with the annotated [0.5, 1.5]"
    ]
    # boxes only on frame 2, IoU 0.25 there and nothing on frame 3 -> mean 0.125
    small = dict(good, anomalies=[dict(good["anomalies"][0], bbox={"frame 2": [0, 0, 50, 50]})])
    assert check_answer(json.dumps(small), record, 4.0, times)[1] == ["Object Distortion: boxes have mean IoU 0.12 <= 0.5 with the annotated boxes"]
    assert "status is normal" in check_answer('{"status": "normal", "anomalies": []}', record, 4.0, times)[1][0]
    assert check_answer("no json here", record, 4.0, times)[0] is None


def test_saliency_rounds():
    assert [saliency_for_round(r) for r in (1, 3, 4, 5, None)] == ["salient", "salient", "non-salient", "non-salient", None]
