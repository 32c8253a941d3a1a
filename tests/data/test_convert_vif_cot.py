"""`cac-align convert` on ViF-CoT-shaped rows in the layout Skyra's own code reads: frames parsed
into ``parsed_frames/<set>/real/<id>/`` and ``parsed_frames/<set>/fake/<generator>/<id>/``
(``1.png ...``, ``timestamps.txt``), the source videos under ``source_videos/`` the same way, and
LLaMA-Factory rows (``messages`` + ``images``) whose paths resolve against its ``media_dir``.

No record of ViF-CoT-4K is published outside its hub, so the rows are written here, in our words.
A real video and its fakes share a file name (``abc123-0``); each is given its own frame rate
and length so that a record's ``annotation_fps`` and ``num_frames`` say whose video it was
written on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cac_align.cac.schema import load_annotations
from cac_align.config import RecipeError
from cac_align.data.convert.vif_cot import find_tags
from cac_align.jobs.convert import ConvertConfig, ConvertSource, run

# (source video under source_videos/kinetics, fps, frames); a 64x48 video each
SOURCES = {
    "real/abc123-0": (10.0, 40),
    "fake/Wan2.1/abc123-0": (16.0, 48),
    "fake/HunyuanVideo/abc123-0": (24.0, 72),
    "real/xyz-1": (10.0, 30),  # its fake (Kling) was not downloaded
    "fake/Sora/def456-0": (8.0, 32),
    "fake/Sora/ghi789-0": (8.0, 32),
    "fake/Sora/noted-0": (8.0, 32),
    "a/dup-0": (8.0, 16),
    "b/dup-0": (8.0, 16),
}
HAND_AND_SIGN = ("<think>A runner crosses the frame. Her left hand splits into two <type>Abnormal Human Body Structure</type> in "
                 "<t>[1.0, 2.0]</t> at <bbox>[0.25, 0.5, 0.5, 0.75]</bbox> and the shop sign's letters change "
                 "<type>Text Distortion</type> in <t>[0.5, 1.5]</t> at <bbox>[0.0, 0.0, 0.5, 0.25]</bbox>. The grass shimmers "
                 "<type>Structure Anomaly</type> in <t>[0.0, 3.0]</t> at <bbox>[0, 0, 1, 1]</bbox>; the camera jumps "
                 "<type>Camera Motion Inconsistency</type> in <t>[2.0, 2.5]</t> at <bbox>[0, 0, 0, 0]</bbox>.</think><answer>Fake</answer>")


def _row(frames: str | None, answer: str, videos: str | None = None, count: int = 2) -> dict:
    """A LLaMA-Factory row: the frames of ``parsed_frames/kinetics/<frames>`` as images (or a video)."""
    images = [f"parsed_frames/kinetics/{frames}/{i}.png" for i in range(1, count + 1)] if frames else []
    prompt = "\n".join(f"[T={i * 0.5:.2f}s] <image>" for i in range(len(images))) or "<video>"
    row = {"messages": [{"role": "user", "content": prompt + "\nIs this video real or fake?"},
                        {"role": "assistant", "content": answer}]}
    row.update({"videos": [videos]} if videos else {"images": images})
    return row


ROWS = [
    ("real", _row("real/abc123-0", "<think>Nothing is wrong: <type>Shape Distortion</type> in <t>[0.0, 1.0]</t> at "
                                   "<bbox>[0, 0, 0, 0]</bbox> is clear.</think><answer>Real</answer>")),
    ("wan", _row("fake/Wan2.1/abc123-0", HAND_AND_SIGN)),
    # a frame folder named like the video file; boxes in pixels of its 128x96 frames
    ("hunyuan", _row("fake/HunyuanVideo/abc123-0.mp4", "<think>A cup passes through the table <type>Abnormal Rigid-Body Crossing"
                                                      "</type> in <t>[2.0, 3.0]</t> at <bbox>[32, 24, 96, 72]</bbox>.</think><answer>Fake</answer>")),
    # its fake's source video is missing; the real twin must not stand in for it
    ("kling", _row("fake/Kling/xyz-1", HAND_AND_SIGN)),
    # pixel boxes of a video: the size it was resized to for the model is not known
    ("pixels_of_video", _row(None, "<think>A bent spoon <type>Shape Distortion</type> in <t>[1.0, 2.0]</t> at <bbox>[10, 10, 40, 30]"
                                   "</bbox>.</think><answer>Fake</answer>", videos="../source_videos/kinetics/fake/Sora/def456-0.mp4")),
    # pixel boxes of frames that are not there
    ("frames_missing", _row("fake/Sora/ghi789-0", "<think>A bent spoon <type>Shape Distortion</type> in <t>[1.0, 2.0]</t> at "
                                                  "<bbox>[10, 10, 40, 30]</bbox>.</think><answer>Fake</answer>")),
    # a tag that does not parse (no </type>)
    ("unparsed", _row("fake/Sora/noted-0", "<think>A bent spoon <type>Shape Distortion in <t>[1.0, 2.0]</t> at <bbox>[0.1, 0.1, 0.4, "
                                           "0.3]</bbox>.</think><answer>Fake</answer>", count=1)),
    # a fake with no tag at all: AI-generated, not anomalous by itself
    ("untagged", _row("fake/Sora/noted-0", "<think>It just feels generated.</think><answer>Fake</answer>", count=1)),
    # two source videos end like the frames' folder, equally
    ("ambiguous", _row("dup-0", "<think>x <type>Shape Distortion</type> in <t>[0.0, 1.0]</t> at <bbox>[0.1, 0.1, 0.4, 0.3]</bbox>."
                                "</think><answer>Fake</answer>", count=1)),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The layout on disk; returns (root, {row name: the file line its element starts on})."""
    from PIL import Image

    from cac_align.video import Video, save_video

    root = tmp_path_factory.mktemp("vif_cot")
    for name, (fps, frames) in SOURCES.items():
        save_video(Video(np.full((frames, 48, 64, 3), 20, np.uint8), fps), root / "source_videos" / "kinetics" / f"{name}.mp4")
    for name, row in ROWS:
        for image in row.get("images", []):
            if name != "frames_missing":
                path = root / "data" / image
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (128, 96)).save(path)
                (path.parent / "timestamps.txt").write_text("0.0\n0.5\n")
    # written one element per few lines, as a pretty-printed JSON list is
    text, lines = "[\n", {}
    for i, (name, row) in enumerate(ROWS):
        lines[name] = text.count("\n") + 1
        text += json.dumps(row, indent=1) + (",\n" if i < len(ROWS) - 1 else "\n")
    (root / "data" / "vif_cot_sft.json").write_text(text + "]\n")
    return root, lines


def _convert(root: Path, out: Path, strict: bool = False, **settings) -> tuple[dict, dict]:
    source = ConvertSource(format="vif_cot", path=str(root / "data" / "vif_cot_sft.json"), video_root=str(root / "source_videos"), **settings)
    report = run(ConvertConfig(out_dir=str(out), sources=[source], strict=strict))
    records = load_annotations(out / "annotations.jsonl").records
    return report["sources"][0], {r.provenance["line"]: r for r in records}


def test_fake_defects_stay_on_the_fake(dataset, tmp_path):
    root, lines = dataset
    vif, records = _convert(root, tmp_path / "out")
    # the real twin: one normal record, on the real video (10 fps, 40 frames), nothing else on it
    real = records[lines["real"]]
    assert (real.status, real.annotation_fps, real.num_frames) == ("normal", 10.0, 40)
    assert real.video.endswith("kinetics/real/abc123-0.mp4")
    assert [r.status for r in records.values() if r.video.endswith("kinetics/real/abc123-0.mp4")] == ["normal"]
    # the Wan fake: its own 16 fps video; [1.0, 2.0] s -> frames 16-31, [0.5, 1.5] s -> 8-23 (on the
    # real twin's 10 fps they would be 10-19 and 5-14)
    wan = records[lines["wan"]]
    assert (wan.status, wan.annotation_fps, wan.num_frames) == ("abnormal", 16.0, 48) and wan.video.endswith("fake/Wan2.1/abc123-0.mp4")
    hand, sign = wan.anomalies
    assert (hand.type, hand.frames, hand.boxes[16]) == ("Human Distortion", (16, 31), [[250.0, 500.0, 500.0, 750.0]])
    assert (sign.type, sign.frames, sign.boxes[8]) == ("Character Anomalies", (8, 23), [[0.0, 0.0, 500.0, 250.0]])
    # two tags in one sentence: each reason is its own clause ("2.0" is no sentence end)
    assert hand.reason == "Her left hand splits into two (Abnormal Human Body Structure)"
    assert sign.reason == "the shop sign's letters change (Text Distortion)."
    # Skyra's prompt lists Structure Anomaly and Camera Motion Inconsistency as low-level forgery
    assert vif["dropped_categories"] == {"Structure Anomaly": 1, "Camera Motion Inconsistency": 1}
    # a frame folder named abc123-0.mp4 finds fake/HunyuanVideo/abc123-0.mp4 (24 fps); pixel boxes
    # of its 128x96 frames: [32, 24, 96, 72] -> [250, 250, 750, 750]; [2.0, 3.0] s -> frames 48-71
    (crossing,) = records[lines["hunyuan"]].anomalies
    assert (records[lines["hunyuan"]].annotation_fps, crossing.frames, crossing.boxes[48]) == (24.0, (48, 71), [[250.0, 250.0, 750.0, 750.0]])
    assert vif["box_scales"] == {"fraction": 1, "pixels of 128x96": 1}
    assert records[lines["wan"]].provenance == {"file": vif["path"], "line": lines["wan"], "images": "parsed_frames/kinetics/fake/Wan2.1/abc123-0/1.png"}
    assert set(records) == {lines["real"], lines["wan"], lines["hunyuan"]}


def test_every_other_row_is_reported_with_its_line(dataset, tmp_path):
    root, lines = dataset
    vif, _ = _convert(root, tmp_path / "out")
    bad = {b["line"]: (b["kind"], b["reason"]) for b in vif["bad_rows"]}
    assert set(bad) == {lines[name] for name in ("kling", "pixels_of_video", "frames_missing", "unparsed", "ambiguous")}
    kind, reason = bad[lines["kling"]]
    assert kind == "missing video" and "'fake/Kling/xyz-1'" in reason  # never the real xyz-1
    assert bad[lines["pixels_of_video"]][0] == "box scale unknown" and "lists no frames" in bad[lines["pixels_of_video"]][1]
    assert bad[lines["frames_missing"]][0] == "box scale unknown" and "ghi789-0/1.png is not there" in bad[lines["frames_missing"]][1]
    assert bad[lines["unparsed"]][0] == "unparsed tag" and "1 of 1 <type> tags" in bad[lines["unparsed"]][1]
    assert bad[lines["ambiguous"]][0] == "ambiguous video" and "2 source videos match" in bad[lines["ambiguous"]][1]
    assert vif["dropped_lines"] == {"fake_without_tags": [lines["untagged"]]}
    page = (tmp_path / "out" / "convert_report.md").read_text()
    assert f"- fake_without_tags: 1 (line {lines['untagged']})" in page and f"- unparsed tag: 1 (line {lines['unparsed']})" in page
    with pytest.raises(RecipeError, match=rf"5 bad row\(s\) with strict=true \(.*vif_cot_sft.json line {lines['kling']}: .*nothing written"):
        _convert(root, tmp_path / "strict", strict=True)


def test_media_dir_is_where_row_paths_resolve(dataset, tmp_path):
    """LLaMA-Factory resolves ``images`` under its media_dir (default: the data folder); a
    media_dir where the frames are not makes every frames-only row fail to find its frames' size
    or source, each named, not a guess."""
    root, lines = dataset
    vif, records = _convert(root, tmp_path / "out", media_dir=str(root / "data"))
    assert set(records) == {lines["real"], lines["wan"], lines["hunyuan"]}
    vif, records = _convert(root, tmp_path / "elsewhere", media_dir=str(root / "source_videos"))
    assert lines["hunyuan"] in {b["line"] for b in vif["bad_rows"]}  # its pixel frames are not under that folder
    with pytest.raises(ValueError, match="media_dir is ViF-CoT's setting"):
        ConvertSource(format="videophy2", path="x.csv", media_dir="y")


def test_find_tags_reasons():
    (tag,) = find_tags("<think>A ball at 1.5 s <type>Violation of Physical Law</type> in <t>[1.5, 2.5]</t> at <bbox>[0.1, 0.2, 0.3, 0.4]</bbox> "
                       "floats up. Next sentence.</think>")
    assert (tag["time"], tag["box"], tag["sentence"]) == ((1.5, 2.5), [0.1, 0.2, 0.3, 0.4], "A ball at 1.5 s (Violation of Physical Law) floats up.")
