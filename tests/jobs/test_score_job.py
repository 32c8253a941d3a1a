"""`cac-align score`: results.jsonl and the HTML report, on the tiny recipes and scripted answers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cac_align.cli import main
from cac_align.config import RecipeError, load_config
from cac_align.jobs.score import ScoreConfig, collect_inputs, run
from cac_align.rewards.base import RewardBase
from pathlib import Path

from cac_align.video import Video, save_video
from conftest import REPO_ROOT, smooth_video
from cac_align.rewards.cac import CaCReward
from scripted import CONFIRM, NORMAL, ScriptedBackend, abnormal_turn1


def test_tiny_recipe_end_to_end(tmp_path, capsys):
    out = tmp_path / "score"
    assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_tiny.yaml"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and not (out / "results.jsonl.partial").exists()
    for row in rows:
        # Random weights: each result is either a real probability or invalid with a reason, never a fake 0/1.
        assert row["reward"] == "cac"
        if row["valid"]:
            assert 0 < row["score"] < 1
        else:
            assert row["score"] is None and row["error"] and row["details"]["error"] == row["error"]
        assert row["details"]["turn1"]["text"] is not None
    page = (out / "report.html").read_text()
    for row in rows:
        assert row["video"] in page
    assert "scored 6 videos" in capsys.readouterr().out


def _write_videos(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        frames = smooth_video(32, 64, 64, seed=seed)
        frames[:, :16, :16] = 20 * seed  # a flat tag block that ScriptedBackend reads back after H.264
        save_video(Video(frames, 16.0), folder / f"v{seed}.mp4", crf=0)


def test_report_shows_every_video_and_its_boxes(tmp_path):
    _write_videos(tmp_path / "videos", 2)
    backend = ScriptedBackend({0: NORMAL, 1: abnormal_turn1(0.5, 1.5)}, {1: CONFIRM})
    config = ScoreConfig(out_dir=str(tmp_path / "out"), videos=str(tmp_path / "videos"))
    rows = run(config, reward=CaCReward(backend))
    assert [r["status"] for r in rows] == ["normal", "abnormal"]
    page = (tmp_path / "out/report.html").read_text()
    assert "v0.mp4" in page and "v1.mp4" in page
    # Both turn-2 boxes of video 1 are listed with their frame times: clip frames 0 and 3 at 8 fps from 0.5 s.
    assert "frame 0 @ 0.500 s" in page and "[10.0, 20.0, 30.0, 40.0]" in page
    assert "frame 3 @ 0.875 s" in page and "[15.0, 25.0, 35.0, 45.0]" in page
    images = re.findall(r'src="(evidence/[^"]+)"', page)
    assert len(images) == 2 and all((tmp_path / "out" / img).exists() for img in images)
    rows = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert rows[1]["details"]["window_s"] == [0.5, 1.5] and rows[1]["details"]["boxes"][1]["time_s"] == 0.875
    # Eq. 7 on the scripted turn-2 probabilities (0.1, 0.3): 0.1 / 0.4 = 0.25; turn 1 only for video 0: 0.6 / 0.8.
    assert rows[0]["score"] == pytest.approx(0.75) and rows[1]["score"] == pytest.approx(0.25)


def test_an_interrupted_rerun_leaves_the_last_results_report_and_pictures_consistent(tmp_path):
    _write_videos(tmp_path / "videos", 2)
    config = ScoreConfig(out_dir=str(tmp_path / "out"), videos=str(tmp_path / "videos"), batch_size=1)
    run(config, reward=CaCReward(ScriptedBackend({0: NORMAL, 1: abnormal_turn1(0.5, 1.5)}, {1: CONFIRM})))
    out = tmp_path / "out"
    before = {name: (out / name).read_bytes() for name in ("results.jsonl", "report.html", "evidence/00000.png", "evidence/00001.png")}

    class KilledAfterOneBatch(RewardBase):
        name = "cac"

        def __init__(self):
            self.calls = 0
            self.inner = CaCReward(ScriptedBackend({0: abnormal_turn1(0.5, 1.5), 1: NORMAL}, {0: CONFIRM}))

        def __call__(self, videos, prompts=None, metadata=None):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the rerun
            return self.inner(videos, prompts, metadata)

    with pytest.raises(KeyboardInterrupt):
        run(config, reward=KilledAfterOneBatch())
    # the rerun drew video 0's new picture (now abnormal, with boxes), but only beside the last
    # run's outputs, which are intact and still agree with each other
    redrawn = (out / "evidence.partial/00000.png").read_bytes()
    assert redrawn != before["evidence/00000.png"]
    assert {name: (out / name).read_bytes() for name in before} == before
    for image in re.findall(r'src="(evidence/[^"]+)"', (out / "report.html").read_text()):
        assert (out / image).exists()  # every picture the report links is there
    # a complete rerun swaps everything in at once
    run(config, reward=CaCReward(ScriptedBackend({0: abnormal_turn1(0.5, 1.5), 1: NORMAL}, {0: CONFIRM})))
    assert (out / "evidence/00000.png").read_bytes() == redrawn
    assert not (out / "evidence.partial").exists() and not (out / "results.jsonl.partial").exists()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["abnormal", "normal"]


def test_inputs_skip_hidden_files_and_an_empty_manifest_is_an_error(tmp_path):
    _write_videos(tmp_path / "videos", 2)
    (tmp_path / "videos" / ".v0.x1y2.mp4").write_bytes(b"a killed writer's temporary file")
    paths, _ = collect_inputs(str(tmp_path / "videos"), None)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["v0.mp4", "v1.mp4"]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(RecipeError, match="the manifest holds no videos"):
        collect_inputs(str(tmp_path / "empty.jsonl"), None)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "videos/v0.mp4", "prompt": 42}) + "\n")
    with pytest.raises(RecipeError, match=r"line 1: 'prompt' must be a string \(or absent\), got int 42"):
        collect_inputs(str(tmp_path / "bad.jsonl"), None)
    with pytest.raises(RecipeError, match="prompts='nope.txt': no such file"):
        collect_inputs(str(tmp_path / "videos"), "nope.txt")


def test_a_folder_with_bad_files_scores_the_rest_and_says_what_it_skipped(tmp_path, capfd):
    videos = tmp_path / "videos"
    _write_videos(videos, 1)
    (videos / "empty.mp4").write_bytes(b"")  # a writer stopped before its first byte
    (videos / "broken.mp4").write_bytes(b"not a video")
    (videos / "notes.txt").write_text("my notes")
    rows = run(ScoreConfig(out_dir=str(tmp_path / "out"), videos=str(videos)), reward=CaCReward(ScriptedBackend({0: NORMAL}, {})))
    assert [(r["video"].rsplit("/", 1)[-1], r["valid"]) for r in rows] == [("broken.mp4", False), ("empty.mp4", False), ("v0.mp4", True)]
    assert rows[0]["error"].startswith(f"could not decode video {videos / 'broken.mp4'}: ")
    assert rows[1]["error"] == f"video {videos / 'empty.mp4'} is an empty file (0 bytes): write it again, or remove it"
    out, err = capfd.readouterr()
    assert "video_reader.cc" not in err and "moov atom" not in err, err  # decord's and ffmpeg's own lines
    assert out.splitlines()[-1].endswith(f"; skipped 1 file in {videos} that is not a video (notes.txt)"), out


def test_demo_videos_come_from_the_synth_recipe_and_seed(tmp_path):
    from cac_align.data.synthetic import SynthConfig, generate
    from cac_align.video import load_video

    from collections import defaultdict

    backend = ScriptedBackend(defaultdict(lambda: NORMAL))  # every video answered "normal" in turn 1
    synth = str(REPO_ROOT / "recipes/synth/default.yaml")
    config = ScoreConfig(out_dir=str(tmp_path / "out"), synth_videos=3, synth=synth, synth_seed=7)
    rows = run(config, reward=CaCReward(backend))
    assert len(rows) == 3
    # the recipe's scenes at its size, drawn with the demo's seed: the same records generate() makes
    expected = generate(load_config(SynthConfig, synth, [f"out_dir={tmp_path / 'again'}", "n=3", "seed=7"], job="synth"))
    written = [json.loads(line) for line in (tmp_path / "out/synth/annotations.jsonl").read_text().splitlines()]
    assert [(w["prompt"], w["status"]) for w in written] == [(r.prompt, r.status) for r in expected]
    assert (load_video(rows[0]["video"]).height, load_video(rows[0]["video"]).width) == (256, 384)
    # each row carries what was planted, and the report sets the verdict beside it
    assert [r["truth"]["status"] for r in rows] == [r.status for r in expected]
    assert [[a["type"] for a in r["truth"]["anomalies"]] for r in rows] == [[a.type for a in r.anomalies] for r in expected]
    normal = sum(r.status == "normal" for r in expected)  # the script answers "normal" to every video
    page = (tmp_path / "out/report.html").read_text()
    assert f"the status agrees with the ground truth on {normal} of 3" in page
    assert page.count("&check; agrees") == normal and page.count("&cross; disagrees") == 3 - normal
    with pytest.raises(ValueError, match="no such synth recipe"):
        ScoreConfig(out_dir=str(tmp_path / "o"), synth_videos=1, synth=str(tmp_path / "absent.yaml"))


def test_inputs_from_manifest_and_prompt_file(tmp_path):
    _write_videos(tmp_path / "videos", 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "videos/v0.mp4", "prompt": "a"}\n{"video": "videos/v1.mp4"}\n')
    paths, prompts = collect_inputs(str(manifest), None)
    assert paths == [str(tmp_path / "videos/v0.mp4"), str(tmp_path / "videos/v1.mp4")] and prompts == ["a", None]
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("one\n\ntwo\n")
    # a manifest with prompts of its own and a prompts file: neither replaces the other in silence (issue #105)
    with pytest.raises(RecipeError, match=r"gives its videos' prompts \(1 of 2, the first 'a' for v0.mp4\), and prompts=.* would replace them"):
        collect_inputs(str(manifest), str(prompt_file))
    manifest.write_text('{"video": "videos/v0.mp4"}\n{"video": "videos/v1.mp4", "prompt": ""}\n')  # no prompt of its own
    prompt_file.write_text("one\n")
    with pytest.raises(RecipeError, match="has 1 prompts but videos=.* gives 2 videos"):  # a manifest's order is the user's: in order
        collect_inputs(str(manifest), str(prompt_file))
    prompt_file.write_text("one\n\ntwo\n")  # a blank line is skipped
    assert collect_inputs(str(manifest), str(prompt_file))[1] == ["one", "two"]
    with pytest.raises(RecipeError, match="no such file or folder"):
        collect_inputs(str(tmp_path / "absent"), None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(RecipeError, match="line 1"):
        collect_inputs(str(bad), None)


def test_config_needs_exactly_one_source_and_a_command_lines_videos_replace_the_recipes_demo():
    # issue #105: the tiny recipes render a demo (synth_videos: 6); videos= on the command line scores those videos instead
    config = load_config(ScoreConfig, REPO_ROOT / "recipes/score/cac_tiny.yaml", ["videos=somewhere", "out_dir=o"])
    assert config.videos == "somewhere" and config.synth_videos == 0
    with pytest.raises(RecipeError, match="exactly one of 'videos'"):  # both on the command line: the user's contradiction
        load_config(ScoreConfig, REPO_ROOT / "recipes/score/cac_tiny.yaml", ["videos=somewhere", "synth_videos=2"])
    with pytest.raises(ValueError, match="exactly one of 'videos'"):  # or in one config
        ScoreConfig(out_dir="o", videos="somewhere", synth_videos=2)


def test_missing_weights_are_a_clear_cli_error(tmp_path, capsys):
    _write_videos(tmp_path / "videos", 1)
    code = main(["score", "-c", str(REPO_ROOT / "recipes/score/cac.yaml"), f"videos={tmp_path / 'videos'}",
                 f"out_dir={tmp_path / 'o'}", f"reward.model.name={tmp_path / 'no_such_ckpt'}"])
    assert code == 2
    assert "reward.model.name=" in capsys.readouterr().err


def test_score_job_through_an_openai_compatible_server(tmp_path):
    from chat_server import ChatServer

    _write_videos(tmp_path / "videos", 2)
    with ChatServer() as server:  # answers "normal" to everything
        config = load_config(
            ScoreConfig,
            REPO_ROOT / "recipes/score/cac_vllm.yaml",
            [f"videos={tmp_path / 'videos'}", f"out_dir={tmp_path / 'out'}", f"reward.model.base_url={server.url}"],
        )
        rows = run(config)
        counters = server.counters()
    assert [r["status"] for r in rows] == ["normal", "normal"] and all(r["valid"] for r in rows)
    assert len((tmp_path / "out/results.jsonl").read_text().splitlines()) == 2
    # what the run cost the server, from its /metrics before (all 0) and after; the turns' own
    # prompt tokens are the generations' usage.prompt_tokens, as each row records them
    cost = json.loads((tmp_path / "out/served_cost.json").read_text())
    (served,) = cost["servers"].values()
    assert served["requests"] == counters["vllm:request_success_total"] and served["prompt_tokens"] == counters["vllm:prompt_tokens_total"]
    assert served["computed_prompt_tokens"] == served["prompt_tokens"] - served["cached_prompt_tokens"] > 0
    assert served["per_video"]["requests"] == served["requests"] / 2 and served["videos"] == 2
    assert cost["turn_prompt_tokens"] == sum(r["details"]["turn1"]["prompt_tokens"] for r in rows) > 0
    assert cost["computed_over_turn_prompts"][server.url] == pytest.approx(served["computed_prompt_tokens"] / cost["turn_prompt_tokens"])
    # a server without vLLM's counters: no file
    with ChatServer(metrics=False) as server:
        config = load_config(ScoreConfig, REPO_ROOT / "recipes/score/cac_vllm.yaml",
                             [f"videos={tmp_path / 'videos'}", f"out_dir={tmp_path / 'plain'}", f"reward.model.base_url={server.url}"])
        run(config)
    assert not (tmp_path / "plain/served_cost.json").exists()


def test_api_key_comes_from_the_environment(tmp_path, monkeypatch):
    from cac_align.vlm.config import ModelConfig, build_backend

    from chat_server import ChatServer

    monkeypatch.delenv("CAC_TEST_KEY", raising=False)
    with pytest.raises(RecipeError, match="CAC_TEST_KEY"):
        build_backend(ModelConfig(name="cac", backend="openai", api_key_env="CAC_TEST_KEY"))
    monkeypatch.setenv("CAC_TEST_KEY", "secret")
    with ChatServer() as server:
        assert build_backend(ModelConfig(name="cac", backend="openai", base_url=server.url, api_key_env="CAC_TEST_KEY")).api_key == "secret"


@pytest.mark.parametrize("recipe", ["unified_reward_tiny", "ur_cac_tiny"])
def test_score_job_with_unified_reward_and_ur_cac(tmp_path, recipe):
    out = tmp_path / "o"
    assert main(["score", "-c", str(REPO_ROOT / f"recipes/score/{recipe}.yaml"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(row["valid"] and row["prompt"] for row in rows)
    page = (out / "report.html").read_text()
    for row in rows:
        details = row["details"]
        assert row["prompt_sources"] == {"unified_reward": "built_in_paraphrase"}  # which question UR was asked
        if recipe == "unified_reward_tiny":
            assert row["reward"] == "unified_reward" and row["status"] is None
            assert row["score"] == pytest.approx(np.mean(list(details["sub_scores"].values())))
            assert "visual_quality" in page
        else:
            parts = details["components"]
            assert row["reward"] == "ur_cac" and row["status"] == parts["cac"]["details"]["status"]
            # CaC §4.2: mean of UR mapped from 1..4 to [0, 1] and CaC's P(normal) share
            assert row["score"] == pytest.approx(0.5 * (parts["unified_reward"]["raw"] - 1) / 3 + 0.5 * parts["cac"]["raw"])
            assert "unified_reward" in page and "&rarr;" in page


def test_reward_section_typos_fail_when_the_recipe_loads(tmp_path, capsys):
    code = main(["check-recipe", str(REPO_ROOT / "recipes/score/ur_cac.yaml")])
    assert code == 0
    with pytest.raises(RecipeError, match=r"unknown key 'cac.optoins'"):
        load_config(ScoreConfig, REPO_ROOT / "recipes/score/ur_cac.yaml", ["reward.cac.optoins.scan_fps=2"])
    with pytest.raises(RecipeError, match="unknown reward 'ur_cca'"):
        load_config(ScoreConfig, REPO_ROOT / "recipes/score/ur_cac.yaml", ["reward.name=ur_cca"])


def test_the_report_grades_the_window_and_boxes_not_only_the_status(tmp_path):
    from collections import defaultdict

    from PIL import Image

    from cac_align.cac.evidence import evidence_path
    from cac_align.eval.bench import interval_iou

    # every video called abnormal in [0, 0.5) s and boxed there: right status for the anomalous ones,
    # a window that agrees only where the planted one overlaps it enough
    confirm = defaultdict(lambda: CONFIRM, {0: CONFIRM})  # a non-empty mapping (ScriptedBackend takes an empty one as none)
    backend = ScriptedBackend(defaultdict(lambda: abnormal_turn1(0.0, 0.5)), confirm)
    config = ScoreConfig(out_dir=str(tmp_path / "out"), synth_videos=4, synth=str(REPO_ROOT / "recipes/synth/default.yaml"), synth_seed=3)
    rows = run(config, reward=CaCReward(backend))
    anomalous = [r for r in rows if r["truth"]["status"] == "abnormal"]
    assert anomalous and len(anomalous) < len(rows)  # both kinds in this draw
    for row in rows:
        graded = row["graded"]
        assert graded["status"] == (row["truth"]["status"] == "abnormal")
        if row["truth"]["status"] == "normal":
            assert graded["window"] is None and graded["boxes"] is None
            continue
        planted = [a["window_s"] for a in row["truth"]["anomalies"]]
        assert graded["window_iou"] == pytest.approx(interval_iou([[0.0, 0.5]], planted))
        assert row["truth"]["anomalies"][0]["boxes"]  # the synthetic truth carries its boxes
    page = (tmp_path / "out" / "report.html").read_text()
    n_abnormal = len(anomalous)
    assert f"the status agrees with the ground truth on {n_abnormal} of {len(rows)}" in page
    assert f"of the {n_abnormal} anomalous videos called abnormal" in page
    assert page.count("status &check; agrees &middot; window ") == n_abnormal and "(green)" in page
    # the timeline PNG: the planted window drawn in green on its own bar under the judge's
    row = anomalous[0]
    picture = np.asarray(Image.open(evidence_path(tmp_path / "out", rows.index(row))).convert("RGB"))
    start, end = row["truth"]["anomalies"][0]["window_s"]
    bar = picture[42]  # the truth bar's middle row
    green = np.flatnonzero((bar[:, 1] > 180) & (bar[:, 0] < 120))
    assert green.size > 0
    width = picture.shape[1]
    assert green.min() / (width - 1) == pytest.approx(start / _length(row["video"]), abs=0.02)
    assert green.max() / (width - 1) == pytest.approx(end / _length(row["video"]), abs=0.02)


def test_the_report_says_turn_2_was_unreadable_where_its_boxes_did_not_parse(tmp_path):
    """Turn 2 confirms "abnormal" but its boxes are not readable: the verdict is valid (the status parsed),
    it has no boxes, and the report says turn 2 was unreadable, not that the boxes missed the defect."""
    import json
    from collections import defaultdict

    garbled = json.dumps({"cot": "yes", "status": "abnormal", "anomalies": [{"type": "Human Distortion", "bbox": "top left, mostly"}]})
    backend = ScriptedBackend(defaultdict(lambda: abnormal_turn1(0.0, 0.5)), defaultdict(lambda: garbled, {0: garbled}))
    config = ScoreConfig(out_dir=str(tmp_path / "out"), synth_videos=4, synth=str(REPO_ROOT / "recipes/synth/default.yaml"), synth_seed=3)
    rows = run(config, reward=CaCReward(backend))
    anomalous = [r for r in rows if r["truth"]["status"] == "abnormal" and r["valid"]]
    assert anomalous
    for row in anomalous:
        assert row["status"] == "abnormal" and row["graded"]["boxes"] is False
        assert "not readable" in row["graded"]["boxes_unreadable"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("turn 2 unreadable") == len(anomalous) and "not on the planted defect" not in page


def _length(path) -> float:
    from cac_align.video import load_video

    return load_video(path, lazy=True).duration_s


def test_a_folder_s_prompts_meet_their_videos_by_name(tmp_path):
    """A folder's files have no order of their own (issue #100, item 1): a prompts file names each line's video, by file
    name or stem, tab-separated or as JSONL; a plain list is refused in one line, and so is a name of no video, a video
    named twice or not at all."""
    folder = tmp_path / "videos"
    _write_videos(folder, 3)  # v0.mp4, v1.mp4, v2.mp4
    named = tmp_path / "named.txt"
    named.write_text("v2\tthe third\nv0.mp4\tthe first\n\nv1\tthe second\n")
    paths, prompts = collect_inputs(str(folder), str(named))
    assert [Path(p).name for p in paths] == ["v0.mp4", "v1.mp4", "v2.mp4"] and prompts == ["the first", "the second", "the third"]
    jsonl = tmp_path / "named.jsonl"
    jsonl.write_text('{"video": "v1.mp4", "prompt": "b"}\n{"video": "v0", "prompt": "a"}\n{"video": "v2", "prompt": "c"}\n')
    assert collect_inputs(str(folder), str(jsonl))[1] == ["a", "b", "c"]
    plain = tmp_path / "plain.txt"
    plain.write_text("a\nb\nc\n")
    with pytest.raises(RecipeError, match=r"is a plain list, and videos=.* is a folder: .*'v0<TAB>its prompt'") as raised:
        collect_inputs(str(folder), str(plain))
    assert "\n" not in str(raised.value)
    for text, message in [("v0\ta\nv1\tb\nv2.mpg\tc\n", r"line 3: no video named 'v2.mpg'.*did you mean 'v2.mp4'"),
                          ("v0\ta\nv0.mp4\tb\nv2\tc\n", r"lines 1 and 2 both give v0.mp4 a prompt"),
                          ("v0\ta\nv2\tc\n", r"gives no prompt to 1 of the 3 videos: v1.mp4"),
                          ("v0\ta\nv1 b\nv2\tc\n", r"line 2 has no tab")]:
        named.write_text(text)
        with pytest.raises(RecipeError, match=message):
            collect_inputs(str(folder), str(named))
    import shutil

    shutil.copy(folder / "v0.mp4", folder / "v0.mov")  # two files of one stem: the stem names neither
    named.write_text("v0\ta\nv1\tb\nv2\tc\n")
    with pytest.raises(RecipeError, match=r"line 1: 'v0' names 2 videos \(v0.mov, v0.mp4\): give its file name"):
        collect_inputs(str(folder), str(named))
    (folder / "v0.mov").unlink()
    one = tmp_path / "one"
    _write_videos(one, 1)
    plain.write_text("only\n")
    assert collect_inputs(str(one), str(plain))[1] == ["only"]  # one video: nothing to guess


class _EchoPrompt(RewardBase):
    """A prompt-reading toy reward that scores a video by its prompt: the prompt's length, its text in the details."""

    name = "echo_prompt"
    reads_prompt = True

    def __call__(self, videos, prompts=None, metadata=None):
        from cac_align.rewards.base import RewardOutput

        return RewardOutput(self.name, np.asarray([float(len(p or "")) for p in prompts]), np.ones(len(videos), dtype=bool),
                            [{"prompt_seen": p} for p in prompts])


def test_score_scores_each_video_against_its_own_prompt_given_by_name(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("zebra", "apple", "mango"):  # out of alphabetical order as written below
        save_video(Video(smooth_video(8, 32, 32, seed=len(name)), 8.0), folder / f"{name}.mp4", lossless=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("zebra\ta zebra crossing a road\napple\tan apple falling\nmango\tmango\n")
    config = ScoreConfig(out_dir=str(tmp_path / "out"), videos=str(folder), prompts=str(prompts), reward={"name": "brightness"})
    rows = run(config, reward=_EchoPrompt())
    seen = {Path(r["video"]).stem: r["details"]["prompt_seen"] for r in rows}
    assert seen == {"zebra": "a zebra crossing a road", "apple": "an apple falling", "mango": "mango"}
    assert {Path(r["video"]).stem: r["score"] for r in rows} == {"zebra": 23.0, "apple": 16.0, "mango": 5.0}
    out = capsys.readouterr().out
    assert "zebra.mp4 <- 'a zebra crossing a road'" in out and "apple.mp4 <- 'an apple falling'" in out  # the pairing, printed
    prompts.write_text("zebra\ta zebra\napple\t\nmango\tmango\n")  # an empty prompt, for a reward that reads it: refused
    with pytest.raises(RecipeError, match=r"1 video\(s\) have an empty prompt \(apple.mp4\), and the reward 'echo_prompt' reads the prompt"):
        run(ScoreConfig(out_dir=str(tmp_path / "out2"), videos=str(folder), prompts=str(prompts), reward={"name": "brightness"}), reward=_EchoPrompt())


def test_a_manifests_prompts_are_held_to_a_prompts_files_rules_and_their_pairing_is_printed(tmp_path, capsys):
    """Issue #105: a manifest line with an empty prompt went to a prompt-reading reward as no prompt (1 of 2 valid, exit
    0), where a prompts file's empty line is refused; and the pairing was printed for a prompts file only."""
    _write_videos(tmp_path / "videos", 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "videos/v0.mp4", "prompt": "a red ball"}\n\n{"video": "videos/v1.mp4", "prompt": ""}\n')
    config = ScoreConfig(out_dir=str(tmp_path / "out"), videos=str(manifest), reward={"name": "brightness"})
    with pytest.raises(RecipeError, match=rf"{manifest}: line 3 \(v1.mp4\) has an empty 'prompt', and the reward 'echo_prompt' reads the "
                                          "prompt: give every line its prompt, or leave 'prompt' out of every line"):
        run(config, reward=_EchoPrompt())
    manifest.write_text('{"video": "videos/v0.mp4", "prompt": "a red ball"}\n{"video": "videos/v1.mp4"}\n')
    with pytest.raises(RecipeError, match=r"line 2 \(v1.mp4\) has no 'prompt'"):
        run(config, reward=_EchoPrompt())
    from cac_align.rewards.toy import BrightnessReward

    assert not BrightnessReward.reads_prompt
    assert len(run(config)) == 2  # a reward that reads no prompt: nothing to refuse
    # a reward that reads a prompt where there is one and judges a video without (CaC: needs_prompt false): the empty line is
    # an unknown prompt, as the converted annotation files write it (docs/train_your_own_cac.md scores one such manifest)
    optional = _EchoPrompt()
    optional.needs_prompt = False
    assert [r["details"]["prompt_seen"] for r in run(config, reward=optional)] == ["a red ball", None]
    manifest.write_text('{"video": "videos/v0.mp4", "prompt": "a red ball"}\n{"video": "videos/v1.mp4", "prompt": "a blue cube"}\n')
    capsys.readouterr()
    rows = run(config, reward=_EchoPrompt())
    assert [r["details"]["prompt_seen"] for r in rows] == ["a red ball", "a blue cube"]
    assert "prompts:\n  v0.mp4 <- 'a red ball'\n  v1.mp4 <- 'a blue cube'\n" in capsys.readouterr().out  # as for a folder


def test_a_json_prompts_file_is_read_by_its_content(tmp_path):
    """Issue #105: a prompts file named .json holding JSON lines was read as a plain list (each line a prompt)."""
    from cac_align.run.input_files import read_prompts

    for name in ("p.json", "p.txt", "p.jsonl"):  # by the name, or by the content
        (tmp_path / name).write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "id": 7}\n')
        assert read_prompts(tmp_path / name) == ["a cat", "a dog"], name
    (tmp_path / "array.json").write_text('["a cat", "a dog"]\n')
    with pytest.raises(RecipeError, match=r"line 1: expected an object with a 'prompt' .*read as JSON lines: one object a line"):
        read_prompts(tmp_path / "array.json")
    _write_videos(tmp_path / "videos", 2)
    (tmp_path / "m.json").write_text('{"video": "videos/v1.mp4", "prompt": "b"}\n{"video": "videos/v0.mp4", "prompt": "a"}\n')
    paths, prompts = collect_inputs(str(tmp_path / "m.json"), None)  # a manifest named .json
    assert [Path(p).name for p in paths] == ["v1.mp4", "v0.mp4"] and prompts == ["b", "a"]
    (tmp_path / "named.json").write_text('{"video": "v1", "prompt": "b"}\n{"video": "v0", "prompt": "a"}\n')
    assert collect_inputs(str(tmp_path / "videos"), str(tmp_path / "named.json"))[1] == ["a", "b"]  # by name, from a .json


def test_score_help_says_prompts_pair_by_name_and_videos_replace_the_demo(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    said = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and line.split()}
    assert "paired by name" in said["prompts"], said["prompts"]
    assert "replaces a recipe's demo" in said["videos"], said["videos"]
