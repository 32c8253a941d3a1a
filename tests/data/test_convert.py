"""`cac-align convert`: ViF-CoT-4K, VideoPhy-2 and a team's own labels, from rows in their shapes
(shipped beside recipes/data/convert_tiny.yaml; cac_align.data.convert.tiny), into annotation
records; the report; the output trains stage 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cac_align.cac.schema import load_annotations
from cac_align.config import RecipeError
from cac_align.jobs.convert import ConvertConfig, ConvertSource, run
from conftest import REPO_ROOT

ROWS = REPO_ROOT / "recipes" / "data"  # convert_tiny_*: shipped with the package


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny rows beside their videos: 4 s at 8 fps, 64x48 (32 frames); ViF-CoT's pixel row
    lists 128x96 frames, the size its boxes refer to (cac_align.data.convert.tiny)."""
    from cac_align.data.convert.tiny import make_convert_tiny_videos

    root = tmp_path_factory.mktemp("convert")
    make_convert_tiny_videos(root / "videos")
    for name in ("vif_cot.json", "videophy2.jsonl", "labels.csv"):
        shutil.copy(ROWS / f"convert_tiny_{name}", root / name)
    return root


def _convert(inputs, out, **extra):
    sources = [
        ConvertSource(format="vif_cot", path=str(inputs / "vif_cot.json"), media_dir=str(inputs / "videos"), video_root=str(inputs / "videos")),
        ConvertSource(format="videophy2", path=str(inputs / "videophy2.jsonl"), video_root=str(inputs / "videos")),
        ConvertSource(format="labels", path=str(inputs / "labels.csv"), video_root=str(inputs / "videos"), license="internal use"),
    ]
    return run(ConvertConfig(out_dir=str(out), sources=sources, **extra))


@pytest.fixture(scope="module")
def converted(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "out"
    report = _convert(inputs, out)
    records = {r.video.rsplit("/", 1)[-1].removesuffix(".mp4"): r for r in load_annotations(out / "annotations.jsonl").records}
    return out, report, records


def test_vif_cot_rows(converted):
    _, report, records = converted
    vif = report["sources"][0]
    assert (vif["format"], vif["license"], vif["rows"]) == ("vif_cot", "CC BY 4.0", 8)
    # Real: a normal record (its tag clears a region; counted, not turned into a defect)
    assert records["v_real"].status == "normal" and records["v_real"].source == "ViF-CoT-4K"
    # the frames-only row's folder (frames/v_fake_pixels) names its video, with no real/fake folder: by name, counted
    assert vif["notes"] == {"real_with_tags": 1, "source_video_by_name_only": 1}
    assert records["v_real"].provenance == {"file": vif["path"], "line": 2, "videos": "v_real.mp4"}
    # fractions: [0.25, 0.5, 0.5, 0.75] -> [250, 500, 500, 750], held over [1.0, 2.0) s = frames 8-15 at the video's 8 fps;
    # the texture tag is a low-level category: dropped, counted by name
    (hand,) = records["v_fake_fraction"].anomalies
    assert (hand.type, hand.frames, records["v_fake_fraction"].annotation_fps) == ("Human Distortion", (8, 15), 8.0)
    assert hand.boxes == {f: [[250.0, 500.0, 500.0, 750.0]] for f in range(8, 16)}
    assert "six fingers" in hand.reason and records["v_fake_fraction"].license == "CC BY 4.0"
    # pixels of the 128x96 frames the model saw: [16, 12, 48, 36] -> [125, 125, 375, 375]; the
    # row lists frames only: its video is the one named like the frames' folder
    crossing, text = records["v_fake_pixels"].anomalies
    assert (crossing.type, crossing.frames) == ("Physical Violations", (20, 23))  # [2.5, 3.0] s
    assert crossing.boxes[20] == [[125.0, 125.0, 375.0, 375.0]]
    assert (text.type, text.frames, text.boxes[4]) == ("Character Anomalies", (4, 11), [[0.0, 0.0, 250.0, 250.0]])
    # an all-zero box: a defect with no place, so no box
    (glob,) = records["v_fake_global"].anomalies
    assert glob.frames == (0, 7) and glob.boxes == {}
    assert vif["box_scales"] == {"fraction": 1, "pixels of 128x96": 1, "none": 1}
    # a fake with only low-level artifacts is not abnormal in CaC's terms, and not normal either
    assert "v_fake_lowlevel" not in records and vif["dropped_rows"] == {"fake_without_our_types": 1}
    assert vif["dropped_lines"] == {"fake_without_our_types": [13]}  # the JSON list's 5th element starts on line 13
    assert vif["dropped_categories"] == {"Texture Jittering": 1, "Color Over-saturation": 1}
    # bad rows: reported with their line and reason
    bad = {b["line"]: b["reason"] for b in vif["bad_rows"]}
    assert set(bad) == {15, 17, 19}  # file lines where the list's elements 6, 7 and 8 start
    assert "unknown category 'Spooky Vibes'" in bad[15] and "lies outside the video (4.000 s)" in bad[17] and "missing video" in bad[19]


def test_videophy2_rows_are_status_only(converted):
    _, report, records = converted
    phys = report["sources"][1]
    assert (phys["license"], phys["records"]) == ("MIT", {"abnormal": 2})
    # the fixture's URLs (example.org/videophy2/...) keep no folder the flat videos/ has: found by file name, counted
    assert phys["notes"]["found_by_file_name"] == 3
    bad = records["v_phys_bad"]
    assert bad.status_only and bad.prompt == "A ball is thrown and falls upward" and bad.source == "VideoPhy-2"
    (anomaly,) = bad.anomalies
    assert (anomaly.type, anomaly.frames, anomaly.boxes) == ("Physical Violations", None, {})
    assert anomaly.reason == "Gravity pulls objects down; Momentum is conserved"
    assert records["v_phys_rule"].anomalies[0].reason == "The water level does not rise"  # pc 3 (<= 3), the rule a judge named
    assert bad.provenance == {"file": phys["path"], "line": 1, "video_url": "https://example.org/videophy2/v_phys_bad.mp4", "pc": 1.0, "sa": 4.0}
    # a plausible AI-generated video is not a reliable normal: converted to nothing, counted
    assert "v_phys_ok" not in records and phys["dropped_lines"] == {"plausible_not_normal": [3]}
    assert [b["line"] for b in phys["bad_rows"]] == [4] and "'pc' must be a number" in phys["bad_rows"][0]["reason"]


def test_own_labels(converted):
    _, report, records = converted
    labels = report["sources"][2]
    arm, sign = records["v_label_a"].anomalies
    # pixels of the 64x48 video: [16, 12, 32, 36] -> [250, 250, 500, 750]; "human distortion" spelled loosely
    assert (arm.type, arm.frames, arm.boxes[8], arm.region) == ("Human Distortion", (8, 15), [[250.0, 250.0, 500.0, 750.0]], "left arm")
    assert (sign.type, sign.frames, sign.boxes, sign.saliency) == ("Character Anomalies", (24, 27), {}, "non-salient")
    assert records["v_label_b"].status_only and records["v_label_c"].status == "normal"
    assert records["v_label_a"].license == "internal use" and records["v_label_a"].source.startswith("labels:")
    bad = {b["line"]: b["reason"] for b in labels["bad_rows"]}
    assert "column 'type': unknown type 'Spooky Distortion'" in bad[6] and "columns 'start', 'end': time window [3, 9] s lies outside the video" in bad[7]
    assert "is abnormal here but normal on line 8" in bad[9] and "disagree on the status" in bad[8]
    assert "v_label_d" not in records  # a video whose rows disagree is left out, both lines reported


def test_report_files_and_strict_mode(converted, inputs, tmp_path):
    out, report, records = converted
    assert report["written"] == len(records) == 9 and report["bad_rows"] == 3 + 1 + 4
    saved = json.loads((out / "convert_report.json").read_text())
    assert saved == report
    page = (out / "convert_report.md").read_text()
    assert "| 17 | window outside the video | time window [3.5, 9] s lies outside the video" in page and "Texture Jittering" in page
    assert "- fake_without_our_types: 1 (line 13)" in page and "- rows read: 8" in page and "- records written: 3 (1 normal, 2 abnormal)" in page
    with pytest.raises(RecipeError, match=r"8 bad row\(s\) with strict=true \(.*vif_cot.json line 15: unknown category.*nothing written"):
        _convert(inputs, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict" / "annotations.jsonl").exists()
    with pytest.raises(RecipeError, match="path='nope.jsonl': no such file"):
        run(ConvertConfig(out_dir=str(tmp_path / "x"), sources=[ConvertSource(format="labels", path="nope.jsonl")]))
    with pytest.raises(ValueError, match="format must be one of"):
        ConvertSource(format="kinetics", path="x")


def test_converted_records_train_stage2(converted, tmp_path):
    """The converted file (status-only records included) trains stage 2 for a few steps."""
    from cac_align.jobs import load_recipe
    from cac_align.jobs.train_cac import run as train

    out, _, _ = converted
    _, config = load_recipe(REPO_ROOT / "recipes/cac/stage2_tiny.yaml", [
        f"annotations={out / 'annotations.jsonl'}", f"out_dir={tmp_path / 'stage2'}", "model=tiny-random:qwen3_vl",
        "data.splits={stage1: 0.0, stage2: 1.0, stage3: 0.0, eval: 0.0}", "train.max_steps=2", "train.eval_steps=0", "train.save_steps=2", "train.logging_steps=1",
    ])
    metrics = train(config)
    assert np.isfinite(metrics["train_loss"])
    stats = json.loads((tmp_path / "stage2" / "data.json").read_text())["stats"]["train"]
    assert stats["global_anomalous"] == 7 and stats["anomalies_without_window"] == 3  # 2 VideoPhy-2 + 1 own status-only label
    assert (tmp_path / "stage2" / "final" / "model.safetensors").is_file()


def test_relative_paths_work_from_the_written_file(inputs, tmp_path, monkeypatch):
    """Sources given relative to the working folder: the written video paths are relative to
    annotations.jsonl's folder (the format's rule), so the file reads from anywhere."""
    monkeypatch.chdir(inputs)
    run(ConvertConfig(out_dir="out", sources=[ConvertSource(format="labels", path="labels.csv", video_root="videos")]))
    lines = [json.loads(line) for line in (inputs / "out/annotations.jsonl").read_text().splitlines()]
    assert lines and all(line["video"].startswith("../videos/v_label_") for line in lines)
    monkeypatch.chdir(tmp_path)
    records = load_annotations(inputs / "out/annotations.jsonl", check_videos=True).records
    assert len(records) == len(lines) and all(Path(r.video).is_file() for r in records)


def test_own_labels_malformed_cells_and_json_lines(inputs, tmp_path):
    """A malformed cell is a bad row naming its line and column, never a traceback; in a ``.json``
    list a row's line is the file line its element starts on."""
    (tmp_path / "labels.csv").write_text(
        "video,status,type,start,end,box\n"
        "v_label_a.mp4,abnormal,Object Distortion,1.0,2.0,\"[10,10,30\"\n"  # line 2: unclosed list
        "v_label_b.mp4,abnormal,Object Distortion,one,2.0,\n"  # line 3: start is no number
        "v_label_c.mp4,normal,,,,\n")
    report = run(ConvertConfig(out_dir=str(tmp_path / "out"), sources=[ConvertSource(format="labels", path=str(tmp_path / "labels.csv"), video_root=str(inputs / "videos"))]))
    bad = {b["line"]: (b["kind"], b["reason"]) for b in report["sources"][0]["bad_rows"]}
    assert bad[2] == ("malformed cell", "column 'box': '[10,10,30' is not a list of four numbers (Expecting ',' delimiter at character 10)")
    assert bad[3] == ("malformed cell", "column 'start' must be seconds, got 'one'")
    assert report["written"] == 1
    rows = [{"video": "v_label_c.mp4", "status": "normal"}, {"video": "v_label_a.mp4", "status": "weird"}]
    (tmp_path / "labels.json").write_text("[\n" + ",\n".join(json.dumps(r, indent=2) for r in rows) + "\n]\n")
    report = run(ConvertConfig(out_dir=str(tmp_path / "out_json"), sources=[ConvertSource(format="labels", path=str(tmp_path / "labels.json"), video_root=str(inputs / "videos"))]))
    # element 1 spans lines 2-5, element 2 starts on line 6
    assert [(b["line"], b["kind"]) for b in report["sources"][0]["bad_rows"]] == [(6, "malformed cell")]
    (record,) = load_annotations(tmp_path / "out_json" / "annotations.jsonl").records
    assert record.provenance == {"file": str(tmp_path / "labels.json"), "lines": [2]}
