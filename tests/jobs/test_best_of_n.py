"""`cac-align bon`: tiny end to end, argmax choice, resume after a kill, seeds, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.cli import main
from cac_align.config import RecipeError, load_config
from cac_align.gen.generator import GeneratorConfig, PipelineGenerator, generate_videos
from cac_align.gen.families.wan import build_tiny_wan_pipeline
from cac_align.run.input_files import read_prompts
from cac_align.jobs.best_of_n import BonConfig, choose, frames_sha256, run
from cac_align.rewards import RewardOutput
from cac_align.rewards.base import RewardBase
from cac_align.run.folder import read_manifest
from conftest import REPO_ROOT

TINY_GEN = GeneratorConfig(name="tiny-random:wan", dtype="float32", device="cpu", height=32, width=32, num_frames=9, num_inference_steps=3)


@pytest.fixture(scope="module")
def tiny_pipe():
    return build_tiny_wan_pipeline(seed=0)


class ScriptedReward(RewardBase):
    """Scores by (prompt, candidate order in the call) from a table; NaN = the reward could not
    use the model's answer for that candidate (a parse failure: the model did answer)."""

    name = "scripted"

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, videos, prompts, metadata=None):
        self.calls.append(list(prompts))
        scores = np.array(self.table[prompts[0]], dtype=float)
        valid = ~np.isnan(scores)
        details = [{} if ok else {"error": "reward failed for this candidate", "error_kind": "parse"} for ok in valid]
        return RewardOutput(self.name, scores, valid, details)


def _rows(out):
    return [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]


def _config(tmp_path, prompts, **kw):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    values = {"out_dir": str(tmp_path / "bon"), "prompts": str(path), "n": 3, "batch_size": 2, "generator": TINY_GEN,
              "reward": {"name": "cac"}}
    values.update(kw)
    return BonConfig(**values)


@pytest.fixture(scope="module")
def tiny_recipe_run(tmp_path_factory):
    """The tiny recipe's run (its folder and what it printed), shared by the tests that read it."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("tiny_recipe") / "bon"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["bon", "--config", str(REPO_ROOT / "recipes/align/bon_tiny.yaml"), "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_tiny_recipe_end_to_end(tiny_recipe_run):
    out, printed = tiny_recipe_run
    last = printed.strip().splitlines()[-1]  # it ends on where the results are (issue #100, item 8)
    assert last.startswith("bon: done") and str(out / "chosen") in last and str(out / "summary.md") in last and str(out / "bon.html") in last
    rows = _rows(out)
    assert len(rows) == 6  # 2 prompts x 3 candidates
    assert [(r["prompt_index"], r["candidate"], r["seed"]) for r in rows] == [(i, c, i * 3 + c) for i in range(2) for c in range(3)]
    for i in range(2):
        group = [r for r in rows if r["prompt_index"] == i]
        scores = [r["score"] for r in group]
        chosen = [r for r in group if r["chosen"]]
        # the chosen candidate is the argmax of the combined (ur_cac) score
        assert len(chosen) == 1 and chosen[0]["candidate"] == int(np.argmax(scores)) and chosen[0]["chosen_by"] == "argmax"
        for r in group:
            parts = r["components"]
            assert r["score"] == pytest.approx(0.5 * parts["unified_reward"]["normalized"] + 0.5 * parts["cac"]["normalized"])
            assert (out / r["video"]).exists() and len(r["frames_sha256"]) == 64
    index = [json.loads(line) for line in (out / "chosen/prompts.jsonl").read_text().splitlines()]
    assert [e["prompt"] for e in index] == ["a cat walking in the park", "a person holding a red cup"]
    assert index[0]["video"] == "00000_a-cat-walking-in-the-park.mp4"
    for entry in index:
        chosen = next(r for r in rows if r["prompt_index"] == entry["prompt_index"] and r["chosen"])
        assert (out / "chosen" / entry["video"]).read_bytes() == (out / chosen["video"]).read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rewards"]["ur_cac"]["chosen_mean"] == pytest.approx(np.mean([r["score"] for r in rows if r["chosen"]]))
    assert summary["rewards"]["ur_cac"]["all_mean"] == pytest.approx(np.mean([r["score"] for r in rows]))
    assert summary["rewards"]["ur_cac"]["chosen_mean"] >= summary["rewards"]["ur_cac"]["all_mean"]
    assert read_manifest(out)["job"] == "bon" and "| ur_cac |" in (out / "summary.md").read_text()
    assert not (out / "anomaly_rates.json").exists()  # Wan's candidates have no known ground truth
    assert all(r["prompt_sources"] == {"unified_reward": "built_in_paraphrase"} for r in rows)
    assert summary["prompt_sources"] == {"unified_reward": "built_in_paraphrase"}


def test_choose_rule():
    assert choose(np.array([0.2, 0.9, 0.9]), np.array([True, True, True])) == (1, "argmax")  # tie -> lowest index
    assert choose(np.array([0.2, np.nan, 0.1]), np.array([True, False, True])) == (0, "argmax")
    assert choose(np.array([0.9, 0.5]), np.array([False, True])) == (1, "argmax")  # an invalid score never wins
    assert choose(np.array([np.nan, np.nan]), np.array([False, False])) == (0, "fallback")


def test_resume_after_a_kill_generates_only_the_missing_candidates(tmp_path, tiny_pipe, monkeypatch):
    config = _config(tmp_path, ["a cat", "a dog"])
    reward = ScriptedReward({"a cat": [0.1, 0.5, 0.3], "a dog": [0.7, 0.2, 0.4]})
    calls = []
    real = generate_videos

    def dies_on_fourth_call(pipe, gen, prompts, seeds, images=None):
        calls.append(list(seeds))
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real(pipe, gen, prompts, seeds, images)

    monkeypatch.setattr("cac_align.gen.generator.generate_videos", dies_on_fourth_call)
    with pytest.raises(KeyboardInterrupt):
        run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    # prompt 0 finished (batches [0, 1], [2]); prompt 1 died after its first batch [3, 4]
    assert calls == [[0, 1], [2], [3, 4], [5]]
    assert {r["prompt_index"] for r in _rows(tmp_path / "bon")} == {0}
    assert sorted(p.name for p in (tmp_path / "bon/candidates").glob("*.mp4")) == [
        "p00000_c00.mp4", "p00000_c01.mp4", "p00000_c02.mp4", "p00001_c00.mp4", "p00001_c01.mp4"]
    calls.clear()
    reward.calls.clear()
    monkeypatch.setattr("cac_align.gen.generator.generate_videos", lambda *a: (calls.append(list(a[3])), real(*a))[1])
    run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    assert calls == [[5]]  # only the missing candidate of prompt 1
    assert reward.calls == [["a dog"] * 3]  # prompt 0 was not scored again
    rows = _rows(tmp_path / "bon")
    assert [r["candidate"] for r in rows if r["chosen"]] == [1, 0]  # argmax of each scripted group
    assert all(r["frames_sha256"] for r in rows)  # hashes survive the kill


def test_a_kill_between_a_candidates_hash_and_its_video_regenerates_it_and_stray_files_go(tmp_path, tiny_pipe, monkeypatch):
    import cac_align.video as video_module

    config = _config(tmp_path, ["a cat"])
    reward = ScriptedReward({"a cat": [0.1, 0.5, 0.3]})
    real_save = video_module.save_video
    saved = []

    def killed_on_second_video(video, path, crf=18, **sound):
        saved.append(path)
        if len(saved) == 2:  # the candidate's hash is written, its mp4 is not
            raise KeyboardInterrupt("killed")
        return real_save(video, path, crf, **sound)

    monkeypatch.setattr(video_module, "save_video", killed_on_second_video)
    with pytest.raises(KeyboardInterrupt):
        run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    candidates = tmp_path / "bon/candidates"
    assert (candidates / "p00000_c00.mp4").exists() and not (candidates / "p00000_c01.mp4").exists()
    # what killed runs leave half-written, under the names this job uses
    (candidates / ".p00000_c02.a1b2c3.mp4").write_bytes(b"half an mp4")
    (candidates / "p00000_c02.sha256.tmp").write_text("half a hash")
    (candidates / "my_own.mp4").write_bytes(b"the user's")  # not ours: stays
    monkeypatch.setattr(video_module, "save_video", real_save)
    run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    rows = _rows(tmp_path / "bon")
    assert len(rows) == 3 and all(len(r["frames_sha256"]) == 64 for r in rows)  # every hash recorded
    for c in range(3):
        assert (candidates / f"p00000_c{c:02d}.sha256").exists() and (candidates / f"p00000_c{c:02d}.mp4").exists()
    assert sorted(p.name for p in candidates.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")) == []
    assert (candidates / "my_own.mp4").read_bytes() == b"the user's"


def test_a_torn_last_group_is_redone_not_fatal(tmp_path, tiny_pipe, monkeypatch):
    config = _config(tmp_path, ["a cat", "a dog"])
    reward = ScriptedReward({"a cat": [0.1, 0.5, 0.3], "a dog": [0.7, 0.2, 0.4]})
    run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    manifest = tmp_path / "bon/candidates.jsonl"
    lines = manifest.read_text().splitlines()
    assert len(lines) == 6
    # killed while appending prompt 1's group: one whole row, then half a row
    manifest.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])
    reward.calls.clear()
    calls = []
    real = generate_videos
    monkeypatch.setattr("cac_align.gen.generator.generate_videos", lambda *a: (calls.append(list(a[3])), real(*a))[1])
    run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    assert calls == []  # its candidate videos were complete and are reused
    assert reward.calls == [["a dog"] * 3]  # prompt 1 is scored again, prompt 0 is not
    rows = _rows(tmp_path / "bon")
    assert [(r["prompt_index"], r["candidate"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [r["candidate"] for r in rows if r["chosen"]] == [1, 0]


def test_a_run_that_failed_to_start_does_not_refuse_the_corrected_command(tmp_path):
    import dataclasses

    bad = _config(tmp_path, ["a cat"], generator=dataclasses.replace(TINY_GEN, lora=str(tmp_path / "no_such_lora")))
    with pytest.raises(RecipeError, match="generator.lora"):
        run(bad, reward=ScriptedReward({"a cat": [0.1, 0.5, 0.3]}))
    assert read_manifest(tmp_path / "bon") is None
    # the corrected command (no LoRA) is a new run, not "a different config in the same folder"
    run(_config(tmp_path, ["a cat"]), reward=ScriptedReward({"a cat": [0.1, 0.5, 0.3]}))
    assert read_manifest(tmp_path / "bon") is not None and [r["candidate"] for r in _rows(tmp_path / "bon") if r["chosen"]] == [1]


def test_recorded_seed_regenerates_the_video(tmp_path, tiny_pipe):
    config = _config(tmp_path, ["a cat"])
    run(config, reward=ScriptedReward({"a cat": [0.1, 0.2, 0.3]}), generator=PipelineGenerator(tiny_pipe))
    rows = _rows(tmp_path / "bon")
    # Candidate 2 was drawn alone (batch_size 2, n 3): regenerating it alone is bit-identical.
    again = generate_videos(tiny_pipe, TINY_GEN, ["a cat"], [rows[2]["seed"]]).frames[0]
    assert frames_sha256(again) == rows[2]["frames_sha256"]
    # Candidates 0 and 1 were drawn together: the same pair regenerates them bit-identically ...
    pair = generate_videos(tiny_pipe, TINY_GEN, ["a cat"] * 2, [rows[0]["seed"], rows[1]["seed"]]).frames
    assert [frames_sha256(v) for v in pair] == [rows[0]["frames_sha256"], rows[1]["frames_sha256"]]
    # ... and alone, float rounding across batch sizes moves at most one level in rare pixels.
    alone = generate_videos(tiny_pipe, TINY_GEN, ["a cat"], [rows[0]["seed"]]).frames[0]
    assert np.abs(alone.astype(int) - pair[0]).max() <= 1 and (alone == pair[0]).mean() > 0.99


def test_failed_candidates_are_never_chosen_and_all_invalid_falls_back(tmp_path, tiny_pipe):
    config = _config(tmp_path, ["a cat", "a dog"])
    reward = ScriptedReward({"a cat": [0.1, np.nan, 0.3], "a dog": [np.nan, np.nan, np.nan]})
    summary = run(config, reward=reward, generator=PipelineGenerator(tiny_pipe))
    rows = _rows(tmp_path / "bon")
    assert rows[1]["valid"] is False and rows[1]["error"] == "reward failed for this candidate"
    assert [(r["candidate"], r["chosen_by"]) for r in rows if r["chosen"]] == [(2, "argmax"), (0, "fallback")]
    assert summary["invalid_candidates"] == 4 and summary["fallback_prompts"] == 1
    assert len(list((tmp_path / "bon/chosen").glob("*.mp4"))) == 2


def test_prompt_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a cat\n\n  \na cat\na dog\n")
    assert read_prompts(text) == ["a cat", "a cat", "a dog"]  # blank lines skipped, duplicates kept
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat"}\n\n{"prompt": "a dog", "id": 3}\n')
    assert read_prompts(jsonl) == ["a cat", "a dog"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(RecipeError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat"}\n')
    with pytest.raises(RecipeError, match="line 1: expected an object with a 'prompt'"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(RecipeError, match="no such file"):
        read_prompts(tmp_path / "absent.txt")


def test_duplicate_prompts_are_kept_apart(tmp_path, tiny_pipe):
    config = _config(tmp_path, ["a cat", "a cat"], n=1)
    run(config, reward=ScriptedReward({"a cat": [0.5]}), generator=PipelineGenerator(tiny_pipe))
    names = sorted(p.name for p in (tmp_path / "bon/chosen").glob("*.mp4"))
    assert names == ["00000_a-cat.mp4", "00001_a-cat.mp4"]
    rows = _rows(tmp_path / "bon")
    assert rows[0]["seed"] != rows[1]["seed"] and rows[0]["frames_sha256"] != rows[1]["frames_sha256"]


def test_config_checks_and_a_different_run_in_out_dir(tmp_path, tiny_pipe):
    with pytest.raises(RecipeError, match="n must be >= 1"):
        load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny.yaml", ["n=0"])
    with pytest.raises(RecipeError, match="num_frames must be 4k \\+ 1"):
        load_config(BonConfig, REPO_ROOT / "recipes/align/bon_tiny.yaml", ["generator.num_frames=10"])
    reward = ScriptedReward({"a cat": [0.1, 0.2, 0.3], "a dog": [0.3, 0.2, 0.1]})
    run(_config(tmp_path, ["a cat"]), reward=reward, generator=PipelineGenerator(tiny_pipe))
    with pytest.raises(RecipeError, match=r"different config \(differs in: generator.num_inference_steps\).*overwrite=true"):
        run(_config(tmp_path, ["a cat"], generator=GeneratorConfig(**{**TINY_GEN.__dict__, "num_inference_steps": 2})),
            reward=reward, generator=PipelineGenerator(tiny_pipe))
    # batch_size does not change any video: the run resumes (nothing left to do) instead of refusing
    run(_config(tmp_path, ["a cat"], batch_size=3), reward=reward, generator=PipelineGenerator(tiny_pipe))
    # the same prompt file path holding other prompts is another run
    with pytest.raises(RecipeError, match=r"differs in: prompts_sha256"):
        run(_config(tmp_path, ["a dog"]), reward=reward, generator=PipelineGenerator(tiny_pipe))
    # overwrite=true replaces the old run
    run(_config(tmp_path, ["a dog"], overwrite=True), reward=reward, generator=PipelineGenerator(tiny_pipe))
    assert {r["prompt"] for r in _rows(tmp_path / "bon")} == {"a dog"}
    assert sorted(p.name for p in (tmp_path / "bon/chosen").glob("*.mp4")) == ["00000_a-dog.mp4"]


class SpotReward(RewardBase):
    """The toy ``spot_brightness`` judge (its evidence: a fixed window and box) with a scripted score per
    candidate, so the choice is known: the real reward's details, the script's scores."""

    name = "spot_brightness"

    def __init__(self, scores):
        from cac_align.rewards.toy import SpotBrightnessReward

        self.spot, self.scores = SpotBrightnessReward([0, 0, 500, 500], [0.0, 0.25], threshold=0.0), scores

    def __call__(self, videos, prompts, metadata=None):
        judged = self.spot(videos, prompts, metadata)
        return RewardOutput(self.name, np.array(self.scores, dtype=float), np.ones(len(videos), bool), judged.details)


def test_bon_page_shows_each_prompts_candidates_their_evidence_and_the_chosen_one(tmp_path, tiny_pipe):
    """Issue #115: bon.html, from candidates.jsonl (now with each judge's evidence), the chosen one
    marked; its pictures are the run's outputs (overwrite removes them)."""
    import re

    from PIL import Image

    config = _config(tmp_path, ["a cat", "a dog"])
    run(config, reward=SpotReward([0.2, 0.9, 0.4]), generator=PipelineGenerator(tiny_pipe))
    out = tmp_path / "bon"
    rows = _rows(out)
    # the judge's evidence recorded: the window [0, 0.25) s and the box on the frames inside it (16 fps: frames 0-3)
    evidence = rows[0]["evidence"]["spot_brightness"]
    assert evidence["status"] == "abnormal" and evidence["window_s"] == [0.0, 0.25]
    assert [(e["frame"], e["time_s"], e["boxes"]) for e in evidence["boxes"]] == [(f, f / 16, [[0.0, 0.0, 500.0, 500.0]]) for f in range(4)]
    page = (out / "bon.html").read_text()
    sections = re.findall(r'<section class="prompt" id="p(\d+)" data-index="\d+">(.*?)</section>', page, re.S)
    assert [int(i) for i, _ in sections] == [0, 1]
    for _, section in sections:
        cards = re.findall(r'<div class="candidate[^"]*" data-candidate="(\d)" data-chosen="(\w+)">', section)
        assert cards == [("0", "false"), ("1", "true"), ("2", "false")]  # the argmax of [0.2, 0.9, 0.4]
        assert "&#10003; chosen</span>" in section and section.count('data-judge="spot_brightness"') == 3
    assert 'data-src="candidates/p00001_c02.mp4"' in page and "<b>0.9000</b>" in page
    # each candidate's evidence picture, drawn by write_evidence_png: 32 x 32 frames at 96 px, 3 slots -> 400 wide;
    # the window [0, 0.25) of the 0.5625 s clip on the timeline, the box's red outline in the first frame slot
    picture = re.search(r'href="(bon_page/p00000_c01_spot-brightness_[0-9a-f]{10}\.png)"', page).group(1)
    pixels = np.asarray(Image.open(out / picture).convert("RGB"))
    assert pixels.shape == (40 + 96, 400, 3)
    assert ((pixels[40:, :96] == (255, 40, 40)).all(-1)).any() and not ((pixels[40:, 3 * 96 :] == (255, 40, 40)).all(-1)).any()
    # overwrite: the old run's page and pictures go with its other outputs
    run(_config(tmp_path, ["a bird"], overwrite=True), reward=SpotReward([0.5, 0.1, 0.2]), generator=PipelineGenerator(tiny_pipe))
    assert not list((out / "bon_page").glob("p00001_*")) and '<section class="prompt" id="p1"' not in (out / "bon.html").read_text()


@pytest.mark.browser
def test_bon_page_of_the_tiny_recipe_in_headless_chromium(tiny_recipe_run):
    """Issue #115 item 7: the tiny recipe's bon.html in a real browser, served from the run folder: no
    console error, prompts x N candidates, the chosen one marked as candidates.jsonl says, a video plays."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from run_pages import console_errors, headless_chrome, serve

    out, _ = tiny_recipe_run
    rows = _rows(out)
    with serve(out) as url, headless_chrome() as driver:
        driver.get(f"{url}/bon.html")
        assert len(driver.find_elements(By.CSS_SELECTOR, "section.prompt")) == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, "section.prompt .candidate")) == 2 * 3
        chosen = [(int(e.find_element(By.XPATH, "./ancestor::section").get_attribute("data-index")), int(e.get_attribute("data-candidate")))
                  for e in driver.find_elements(By.CSS_SELECTOR, '.candidate[data-chosen="true"]')]
        assert chosen == [(r["prompt_index"], r["candidate"]) for r in rows if r["chosen"]]
        judged = [(r["prompt_index"], r["candidate"]) for r in rows if "cac" in r["evidence"]]  # the tiny CaC's valid verdicts
        shown = [(int(e.find_element(By.XPATH, "./ancestor::section").get_attribute("data-index")),
                  int(e.find_element(By.XPATH, "./ancestor::div[@data-candidate]").get_attribute("data-candidate")))
                 for e in driver.find_elements(By.CSS_SELECTOR, '.evidence[data-judge="cac"]')]
        assert judged and shown == judged
        video = driver.find_element(By.CSS_SELECTOR, '.candidate.chosen video')
        ActionChains(driver).move_to_element(video).perform()
        state = "return [arguments[0].readyState, arguments[0].currentTime]"
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, video)[0] >= 2)
        first = driver.execute_script(state, video)[1]
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, video)[1] > first + 0.05)
        errors = console_errors(driver)
    assert errors == []


def test_cli_reports_a_missing_prompt_file(tmp_path, capsys):
    code = main(["bon", "-c", str(REPO_ROOT / "recipes/align/bon_tiny.yaml"), "--out", str(tmp_path / "o"), f"prompts={tmp_path / 'none.txt'}"])
    assert code == 2 and "no such file" in capsys.readouterr().err




def test_bon_says_which_lora_it_loaded(tmp_path, caplog):
    """Issue #105: `bon generator.lora=...` never said a LoRA was loaded."""
    import dataclasses
    import logging

    from cac_align.gen.family import family_of
    from cac_align.gen.generator import LORA_WEIGHT_NAME, save_lora
    from cac_align.gen.lora import LoraSettings, add_expert_loras

    family = family_of("tiny-random:wan")
    denoiser = family.denoiser(build_tiny_wan_pipeline(seed=0))
    add_expert_loras(denoiser, LoraSettings(rank=2, alpha=2.0, target_modules=list(family.lora_target_modules)), seed=0)
    lora = tmp_path / "lora"
    save_lora(denoiser.experts[0], lora, pipeline_class=family.pipeline_class)
    config = _config(tmp_path, ["a cat"], n=1, generator=dataclasses.replace(TINY_GEN, lora=str(lora), lora_scale=0.5))
    with caplog.at_level(logging.INFO, logger="cac_align"):
        run(config, reward=ScriptedReward({"a cat": [0.1]}))
    said = [r.getMessage() for r in caplog.records if "LoRA" in r.getMessage()]
    assert said == [f"generator.lora: loaded the LoRA {lora / LORA_WEIGHT_NAME} into transformer (scale 0.5)"], said


def test_a_bon_page_that_cannot_be_written_is_said_and_the_run_ends_as_it_would(tmp_path, tiny_pipe, monkeypatch, caplog):
    from cac_align.eval import bon_page

    def broken(out):
        raise OSError("disk full")

    monkeypatch.setattr(bon_page, "write_bon_page", broken)
    with caplog.at_level("WARNING"):
        run(_config(tmp_path, ["a cat"]), reward=ScriptedReward({"a cat": [0.1, 0.5, 0.3]}), generator=PipelineGenerator(tiny_pipe))
    rows = [json.loads(line) for line in (tmp_path / "bon/candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and [r["chosen"] for r in rows] == [False, True, False] and not (tmp_path / "bon/bon.html").exists()
    assert "bon.html was not written" in caplog.text and "OSError: disk full" in caplog.text
