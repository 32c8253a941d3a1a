"""`cac-align convert` on VideoPhy-2's own published rows (../shared/data/videophy2_test_rows.csv,
60 rows of its test CSV, verbatim; its README says where from): every label lands on its own
row's video, whichever way the videos were downloaded, and nothing passes silently.

Each row gets a tiny video of its own length (``8 + i`` frames for the CSV's ``i``-th row), so a
record's ``num_frames`` says whose video it was written on. No dataset row is copied into the
repository: rows derived for the collision and ``nan`` cases are built here, in a temp folder,
from the published file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import numpy as np
import pytest

from cac_align.cac.schema import load_annotations
from cac_align.config import RecipeError
from cac_align.data.convert.videophy2 import rule_type, rules
from cac_align.jobs.convert import ConvertConfig, ConvertSource, run
from conftest import REPO_ROOT

PUBLISHED = REPO_ROOT.parent / "shared" / "data" / "videophy2_test_rows.csv"


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _url_path(url: str) -> PurePosixPath:
    return PurePosixPath(urlsplit(url).path.lstrip("/"))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The published rows and their videos, laid out as the URLs give them (``url/``), flat
    (``flat/``), and as ``wget -x`` saves them (``wget/<host>/...``)."""
    from cac_align.video import Video, save_video

    assert PUBLISHED.is_file(), f"{PUBLISHED} is missing: the published rows live in ../shared/data (beside the checkout)"
    rows = _rows(PUBLISHED)
    assert len(rows) == 60
    root = tmp_path_factory.mktemp("videophy2")
    for i, row in enumerate(rows):
        path = root / "url" / _url_path(row["video_url"])
        save_video(Video(np.full((8 + i, 32, 32, 3), 4 * i, np.uint8), 8.0), path)
        for copy in (root / "flat" / path.name, root / "wget" / urlsplit(row["video_url"]).netloc / _url_path(row["video_url"])):
            copy.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, copy)
    return root, rows


def _convert(out: Path, path: Path, video_root: Path, strict: bool = False, **settings) -> tuple[dict, dict]:
    source = ConvertSource(format="videophy2", path=str(path), video_root=str(video_root), **settings)
    report = run(ConvertConfig(out_dir=str(out), sources=[source], strict=strict))
    records = load_annotations(out / "annotations.jsonl").records if (out / "annotations.jsonl").is_file() else []
    return report, {r.provenance["line"]: r for r in records}


def _row_at(rows: list[dict], records: dict, line: int) -> dict:
    return rows[records[line].num_frames - 8]  # the row whose video this record was written on


def test_every_label_is_on_its_own_rows_video(published, tmp_path):
    root, rows = published
    report, records = _convert(tmp_path / "out", PUBLISHED, root / "url")
    phys = report["sources"][0]
    # status by the dataset's threshold (PC >= 4 is physically commonsensical): 9 rows with pc <= 2
    # (shared/data/README.md) and 22 with pc 3 are abnormal; the 29 others are dropped, with their lines
    assert (phys["rows"], phys["records"], phys["bad_rows"], phys["collisions"]) == (60, {"abnormal": 31}, [], [])
    assert len(phys["dropped_lines"]["plausible_not_normal"]) == 29 and "found_by_file_name" not in phys["notes"]
    # line numbers are the file's: each record's line is where its row starts in the file (the
    # cogvideo hair-dryer row's upsampled_caption spans lines, so later rows are not "row + 1")
    with PUBLISHED.open(newline="", encoding="utf-8") as handle:
        lines = handle.readlines()
    assert len(lines) > 61
    for line, record in records.items():
        row = _row_at(rows, records, line)
        assert record.provenance["video_url"] == row["video_url"] and record.provenance["model_name"] == row["model_name"]
        assert lines[line - 1].lstrip('"').startswith(row["caption"][:30])
        assert float(row["pc"]) <= 3 and record.status == "abnormal" and record.status_only
        assert record.provenance["pc"] == float(row["pc"]) and record.provenance["sa"] == float(row["sa"])


# Every row's label, read by hand from the published file. Rows are numbered 1-60 in file order.
# pc <= 3 (abnormal): each broken rule is a Physical Violation except three that say an object
# keeps its shape: row 37 (the cue ball), 59 (the ice structure, beside two physics rules) and 60
# (the oar). Rows 27 and 49 (pc 3) list no rule: one Physical Violation, the rating as reason.
ABNORMAL_ROWS = [2, 7, 10, 11, 12, 18, 20, 21, 23, 24, 26, 27, 28, 29, 32, 34, 35, 37, 38, 40, 42, 43, 44, 45, 49, 51, 53, 54, 57, 59, 60]
TYPES_BY_HAND = {row: ["Physical Violations"] for row in ABNORMAL_ROWS} | {37: ["Object Distortion"], 59: ["Physical Violations", "Object Distortion"],
                                                                        60: ["Object Distortion"]}
# pc 4 or 5 with a rule listed (abnormal only with rules_make_abnormal): all physics, but row 39,
# whose judge wrote that the leg must bend within its natural range (Human Distortion)
RULE_ONLY_ROWS = {row: ["Physical Violations"] for row in (4, 6, 8, 13, 15, 16, 22, 33, 36, 39, 48, 50, 52, 55)} | {39: ["Human Distortion"]}


def test_every_type_read_by_hand(published, tmp_path):
    root, rows = published
    _, records = _convert(tmp_path / "out", PUBLISHED, root / "url")
    assert {r.num_frames - 7: [a.type for a in r.anomalies] for r in records.values()} == TYPES_BY_HAND  # row k has 8 + (k - 1) frames
    by_rating = {r.num_frames - 7: r.anomalies[0].reason for r in records.values() if r.anomalies[0].reason.startswith("physical commonsense")}
    assert by_rating == {27: "physical commonsense rated 3 of 5", 49: "physical commonsense rated 3 of 5"}
    _, records = _convert(tmp_path / "rules", PUBLISHED, root / "url", rules_make_abnormal=True)
    assert {r.num_frames - 7: [a.type for a in r.anomalies] for r in records.values()} == TYPES_BY_HAND | RULE_ONLY_ROWS


def test_labels_checked_by_hand(published, tmp_path):
    """Rows read by hand in the published file; what their reasons, prompts and provenance must be."""
    root, rows = published
    _, records = _convert(tmp_path / "out", PUBLISHED, root / "url")
    # cosmos, pc 2: four rules, none about a shape -> one Physical Violation, each rule with its law
    (bulldozer,) = [r for line, r in records.items() if _row_at(rows, records, line)["caption"].startswith("A bulldozer pulls a heavy load")]
    (anomaly,) = bulldozer.anomalies
    assert (anomaly.type, anomaly.frames, anomaly.boxes) == ("Physical Violations", None, {})
    assert anomaly.reason.startswith("The bulldozer maintains its position. (Gravity); ")
    assert anomaly.reason.endswith("resulting in both moving together (Conservation of Momentum)")
    assert bulldozer.prompt.startswith("A bulldozer pulls") and bulldozer.provenance["model_name"] == "cosmos"  # caption: no 'upsampled' folder
    # ray2, pc 3: "The cue ball retains its shape and color after impact" broken -> Object Distortion
    (cue,) = [r for r in records.values() if "cue ball retains its shape" in r.anomalies[0].reason][0].anomalies
    assert cue.type == "Object Distortion" and cue.reason == "The cue ball retains its shape and color after impact (Conservation of Mass)"
    # videocrafter, pc 2, three rules: the ice keeping its shape is an Object Distortion, the other two physics
    ice = [r for r in records.values() if any("ice structure maintains its shape" in a.reason for a in r.anomalies)][0]
    assert [(a.type, a.reason.count("(")) for a in ice.anomalies] == [("Physical Violations", 2), ("Object Distortion", 1)]
    # wan, pc 2, URL folder wan_videophy2_test_hard_upsampled: generated from the upsampled caption
    flame = [r for r in records.values() if "water and flame" in r.anomalies[0].reason][0]
    assert flame.provenance["model_name"] == "wan" and flame.prompt == _row_at(rows, records, flame.provenance["line"])["upsampled_caption"]
    # cogvideo, pc 2, the multi-line upsampled caption kept whole
    dryers = [r for r in records.values() if "hair dryers" in r.anomalies[0].reason][0]
    assert dryers.prompt.startswith("#####\n\n") and dryers.provenance["model_name"] == "cogvideo"
    # hunyuan, pc 1: the law of one rule is 'None' in metadata_rules -> the rule alone
    hurdle = [r for r in records.values() if "The hurdle remains stationary" in r.anomalies[0].reason][0]
    assert hurdle.anomalies[0].reason.startswith("The hurdle remains stationary while the person jumps over it.; ")


def test_rules_make_abnormal_option(published, tmp_path):
    """With ``rules_make_abnormal`` a listed rule makes a video abnormal whatever its pc. 43 rows
    list a rule (shared/data/README.md): the 31 rows with pc <= 3 less the two pc-3 rows with none
    (rows 27 and 49), and 14 rated 4 or 5, which become abnormal by their rules alone."""
    root, rows = published
    report, records = _convert(tmp_path / "out", PUBLISHED, root / "url", rules_make_abnormal=True)
    phys = report["sources"][0]
    assert phys["records"] == {"abnormal": 45} and phys["notes"]["abnormal_by_rules_alone"] == 14
    assert len(phys["dropped_lines"]["plausible_not_normal"]) == 15
    by_rules = sorted(line for line, r in records.items() if r.provenance["pc"] > 3)
    assert len(by_rules) == 14 and all(_row_at(rows, records, line)["physics_rules_unfollowed"] != "[]"
                                       or _row_at(rows, records, line)["human_violated_rules"] != "[]" for line in by_rules)
    # hunyuan, pc 4: a judge wrote that the leg must bend within its natural range -> Human Distortion
    leg = [r for r in records.values() if "leg must bend" in r.anomalies[0].reason][0]
    assert (leg.anomalies[0].type, leg.provenance["pc"], leg.provenance["model_name"]) == ("Human Distortion", 4.0, "hunyuan")


def test_flat_and_wget_layouts_find_the_same_videos(published, tmp_path):
    root, rows = published
    _, by_url = _convert(tmp_path / "url", PUBLISHED, root / "url")
    flat_report, by_flat = _convert(tmp_path / "flat", PUBLISHED, root / "flat")
    wget_report, by_wget = _convert(tmp_path / "wget", PUBLISHED, root / "wget")
    # flat: no two of these rows share a file name (shared/data/README.md), so all are found by
    # name, counted; wget -x keeps the host: found by URL path
    assert flat_report["sources"][0]["notes"]["found_by_file_name"] == 60 and flat_report["sources"][0]["collisions"] == []
    assert "found_by_file_name" not in wget_report["sources"][0]["notes"]
    for records in (by_flat, by_wget):
        assert {line: (r.num_frames, r.anomalies) for line, r in records.items()} == {line: (r.num_frames, r.anomalies) for line, r in by_url.items()}


def _with_twin(tmp_path: Path, name: str, **changes) -> tuple[Path, dict, int]:
    """A copy of the published file with one row more, appended: the first row (file line 2),
    changed. Returns the copy, the new row and the file line it starts on."""
    text = PUBLISHED.read_text(encoding="utf-8")
    header, first = list(csv.reader(io.StringIO(text, newline="")))[:2]
    row = dict(zip(header, first))
    row.update(changes)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([row[column] for column in header])
    path = tmp_path / name
    path.write_text(text + buffer.getvalue(), encoding="utf-8", newline="")
    return path, row, text.count("\n") + 1


def test_two_generators_one_file_name_is_a_collision(published, tmp_path):
    """The failure seen on the real set: one caption, several generators, one file name. A twin of
    the first row (hunyuan, pc 4) as another generator's video rated pc 2: downloaded flat, the two
    rows reach one file, and neither label may be written on it (with plausible_as_normal that file
    came out both normal and abnormal); with the URL's folders each row finds its own video."""
    root, rows = published
    url = rows[0]["video_url"].replace("/hunyuan_xdit/", "/wan_videophy2_test_hard_upsampled/")
    csv_path, twin, twin_line = _with_twin(tmp_path, "rows_with_twin.csv", video_url=url, model_name="wan", pc="2")
    report, records = _convert(tmp_path / "flat", csv_path, root / "flat", plausible_as_normal=True)
    phys = report["sources"][0]
    assert phys["collisions"] == [{"video": str(root / "flat" / _url_path(url).name), "lines": [2, twin_line]}]
    assert {b["line"] for b in phys["bad_rows"]} == {2, twin_line} and {b["kind"] for b in phys["bad_rows"]} == {"collision"}
    assert 2 not in records and twin_line not in records and len(records) == 59
    page = (tmp_path / "flat" / "convert_report.md").read_text()
    assert f"lines 2, {twin_line}" in page and "collisions (rows whose videos are one file" in page
    with pytest.raises(RecipeError, match=rf"rows_with_twin.csv line 2: video .* is also the video of line\(s\) {twin_line}.*nothing written"):
        _convert(tmp_path / "strict", csv_path, root / "flat", plausible_as_normal=True, strict=True)
    # with the URL's folders the twin has a file of its own: each label on its own video
    from cac_align.video import Video, save_video

    save_video(Video(np.zeros((7, 32, 32, 3), np.uint8), 8.0), root / "url" / _url_path(url))
    report, records = _convert(tmp_path / "url", csv_path, root / "url", plausible_as_normal=True)
    assert report["sources"][0]["bad_rows"] == [] and records[2].status == "normal" and records[2].num_frames == 8
    assert records[twin_line].status == "abnormal" and records[twin_line].num_frames == 7
    assert records[twin_line].prompt == twin["upsampled_caption"]  # a wan upsampled folder


def test_missing_rule_cells_are_no_rules(published, tmp_path):
    """``[nan]`` / ``[None]`` / ``nan`` cells (pandas' missing values) are no rules: a pc-5 video
    with them stays plausible even with ``rules_make_abnormal``, never abnormal with reason
    "[nan]"; a list that does not parse is a bad row naming its column; so is a pc that is no number."""
    from cac_align.video import Video, save_video

    root, rows = published
    url = rows[0]["video_url"].replace("/hunyuan_xdit/", "/hunyuan_twin/")
    save_video(Video(np.zeros((6, 32, 32, 3), np.uint8), 8.0), root / "url" / _url_path(url))
    csv_path, _, twin_line = _with_twin(tmp_path, "nan.csv", video_url=url, pc="5", physics_rules_unfollowed="[nan]", human_violated_rules="[None]")
    report, records = _convert(tmp_path / "out", csv_path, root / "url", rules_make_abnormal=True)
    phys = report["sources"][0]
    assert phys["bad_rows"] == [] and twin_line not in records and twin_line in phys["dropped_lines"]["plausible_not_normal"]
    assert rules("[nan]") == rules("[None]") == rules("nan") == rules(float("nan")) == rules(None) == rules("") == []
    assert rules("[nan, nan]") == [] and rules("['a', 'b']") == ["a", "b"] and rules(["a", None, float("nan")]) == ["a"]
    csv_path, _, twin_line = _with_twin(tmp_path, "unclosed.csv", video_url=url, human_violated_rules="['unclosed")
    report, _ = _convert(tmp_path / "bad", csv_path, root / "url")
    (bad,) = report["sources"][0]["bad_rows"]
    assert (bad["line"], bad["kind"]) == (twin_line, "malformed cell") and "column 'human_violated_rules'" in bad["reason"]
    csv_path, _, twin_line = _with_twin(tmp_path, "pc.csv", video_url=url, pc="nan")
    report, _ = _convert(tmp_path / "pc", csv_path, root / "url")
    (bad,) = report["sources"][0]["bad_rows"]
    assert bad["line"] == twin_line and "column 'pc' must be a number from 1 to 5, got 'nan'" in bad["reason"]


def test_rule_type_by_hand():
    assert rule_type("The oar retains its shape while being rowed and does not flatten.") == "Object Distortion"
    assert rule_type("The person's leg must bend within a natural range of motion") == "Human Distortion"
    assert rule_type("The player's hand keeps its shape while gripping the bat") == "Human Distortion"
    assert rule_type("The shirt changes shape and position as it is folded.") == "Physical Violations"  # broken: it did not change
    assert rule_type("The ball rolls in a generally straight line down the lane.") == "Physical Violations"
    assert rule_type("Snow falls downwards.") == "Physical Violations"
