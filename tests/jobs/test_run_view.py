"""A run you can see (#115): step 0 evaluated first, every evaluation's samples recorded, the videos in
the trackers, the best evaluated LoRA kept by its rule, and each LoRA folder's model card.

The runs are the hackable toy of tests/jobs/test_flow_grpo_watch.py: trained on ``spot_brightness``, the
tiny policy darkens the whole picture, so the held-out ``brightness`` judge falls step after step while
the trained reward rises (the latent preview stands in for the tiny random VAE's decode)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cac_align.config import load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline, latent_preview
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
from conftest import REPO_ROOT

RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_localized.yaml"  # spot_brightness on 64 x 64: its evidence is a box and a window
# tests/jobs/test_flow_grpo_watch.py's miniature: it learns from the first step; an evaluation every step
MINIATURE = ["seed=3", "eval_every=1", "eval_videos=1", "eval_prompts=recipes/align/prompts_tiny.txt", "advantage.localize.enabled=false",
             "group_size=8", "prompts_per_step=2", "sample_batch_size=8", "train_batch_size=4", "updates_per_step=2", "lora.rank=8",
             "lora.alpha=16", "learning_rate=1e-2", "beta=0.0", "ema_decay=null", "log_with=none", "checkpoint_every=0"]
JUDGE = {"mean_pixel": {"name": "brightness"}}


def _train(tmp_path, name, *overrides, judges=JUDGE):
    config = load_config(FlowGrpoConfig, RECIPE, [f"out_dir={tmp_path / name}", *MINIATURE, *overrides], job="flow-grpo")
    config.eval_rewards = judges
    run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_step_0_is_evaluated_first_and_the_watch_fires_on_a_fall_before_the_first_evaluation(tmp_path, caplog):
    # the watch's default window (3 evaluations) and no margin; evaluations at steps 0 and 2
    rows = _train(tmp_path, "hacked", "steps=2", "eval_every=2", "watch.margin=0.0")
    assert [r["step"] for r in rows] == [0, 1, 2]
    start = rows[0]
    assert set(start) == {"step", "eval/reward_mean", "eval/reward_std", "eval/valid_fraction", "eval/mean_pixel/mean",
                          "eval/mean_pixel/valid_fraction", "watch/alarms"}  # an evaluation, nothing trained
    assert start["watch/alarms"] == 0
    # the judge fell and the reward rose between step 0 and step 2: the window (3) cannot see it, step 0 does
    assert rows[2]["eval/reward_mean"] > start["eval/reward_mean"] and rows[2]["eval/mean_pixel/mean"] < start["eval/mean_pixel/mean"]
    assert rows[2]["watch/alarms"] == 1 and rows[2]["watch/fired"] == ["mean_pixel"]
    assert "since step 0 the trained reward 'spot_brightness' rose" in caplog.text
    # the summary reads step 0 as the baseline, and counts no step 0 among the trained steps
    samples = [json.loads(line) for line in (tmp_path / "hacked/eval/step_000000/samples.jsonl").read_text().splitlines()]
    assert [s["index"] for s in samples] == [0, 1] and [s["video"] is not None for s in samples] == [True, False]  # eval_videos=1
    assert all(set(s["scores"]) == {"reward", "mean_pixel"} for s in samples)
    means = {label: sum(s["scores"][label] for s in samples) / 2 for label in ("reward", "mean_pixel")}
    assert means["reward"] == pytest.approx(start["eval/reward_mean"], abs=1e-12)
    assert means["mean_pixel"] == pytest.approx(start["eval/mean_pixel/mean"], abs=1e-12)
    # spot_brightness says where its defect is: its window and box are the sample's evidence, as CaC's would be
    assert samples[0]["evidence"]["spot_brightness"]["window_s"] == [0.25, 0.5] and samples[0]["evidence"]["spot_brightness"]["boxes"]
    # the same held-out prompt, the same seed at every evaluation
    later = [json.loads(line) for line in (tmp_path / "hacked/eval/step_000002/samples.jsonl").read_text().splitlines()]
    assert [s["seed"] for s in later] == [s["seed"] for s in samples]


def test_without_step_0_the_same_run_has_no_baseline_and_no_alarm(tmp_path):
    rows = _train(tmp_path, "late", "steps=2", "eval_every=2", "watch.margin=0.0", "eval_at_start=false")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["watch/alarms"] == 0 and "watch/fired" not in rows[1]


def _by_hand(rows, margin):
    """run/best.py's rule in this test's own words: step 0 is the baseline; a later evaluation is a candidate
    when the judge is at least its step-0 mean less the margin; the highest trained reward wins, the earliest
    of equals."""
    base = rows[0]["eval/mean_pixel/mean"]
    held = [r for r in rows[1:] if r["eval/mean_pixel/mean"] >= base - margin]
    return max(held, key=lambda r: (r["eval/reward_mean"], -r["step"]))["step"] if held else None


def test_lora_best_is_the_step_the_rule_picks_with_a_judge_that_falls_mid_run(tmp_path, capsys):
    # the judge falls a little each step (seen: by 0.0011, 0.0034, 0.0055, 0.0063 at steps 1-4): a margin between its fall by
    # step 2 and by step 3 holds steps 1-2 and not 3-4
    rows = _train(tmp_path, "run", "steps=4", "checkpoint_every=1", "keep_checkpoints=4", "watch.margin=0.0045")
    falls = [rows[0]["eval/mean_pixel/mean"] - r["eval/mean_pixel/mean"] for r in rows if r["step"] > 0]
    assert falls[1] < 0.0045 < falls[2], falls  # the setting this test is about: a judge that falls mid-run
    chosen = _by_hand(rows, 0.0045)
    assert chosen in (1, 2)
    best = json.loads((tmp_path / "run/best.json").read_text())
    assert best["step"] == chosen and best["held"] == [1, 2] and best["candidates"] == [1, 2, 3, 4]
    # lora_best/ is that step's LoRA: the checkpoint of that step holds the same weights (no EMA here)
    kept, there = load_file(str(tmp_path / "run/lora_best/pytorch_lora_weights.safetensors")), load_file(
        str(tmp_path / f"run/checkpoints/step_{chosen:06d}/lora/pytorch_lora_weights.safetensors"))
    last = load_file(str(tmp_path / "run/lora/pytorch_lora_weights.safetensors"))
    assert set(kept) == set(there) and all(torch.equal(kept[k], there[k]) for k in kept)
    assert not all(torch.equal(kept[k], last[k]) for k in kept)  # not the last LoRA: the judge had fallen by then
    printed = capsys.readouterr().out
    assert f"flow-grpo: best: step {chosen}, reward +" in printed and "judges held (lora_best/)" in printed
    assert (tmp_path / "run/lora_best/README.md").is_file()


def test_no_lora_best_when_every_evaluated_step_fell(tmp_path, capsys):
    rows = _train(tmp_path, "run", "steps=2", "watch.margin=0.0")
    assert _by_hand(rows, 0.0) is None
    assert json.loads((tmp_path / "run/best.json").read_text())["step"] is None and not (tmp_path / "run/lora_best").exists()
    assert ("flow-grpo: best: none of the 2 evaluated step(s) kept every held-out judge within watch.margin=0 of step 0: no LoRA is the "
            "best (lora_best/ not written)") in capsys.readouterr().out


def test_a_resumed_run_does_not_evaluate_step_0_again_and_keeps_its_baseline(tmp_path):
    first = _train(tmp_path, "run", "steps=2", "checkpoint_every=1", "watch.margin=0.0")
    again = _train(tmp_path, "run", "steps=3", "checkpoint_every=1", "watch.margin=0.0", "resume=true")
    assert [r["step"] for r in again] == [0, 1, 2, 3] and again[:3] == first  # step 0 once, the first run's lines kept
    assert again[3]["watch/fired"] == ["mean_pixel"]  # against step 0 still (and the window: named once)


def test_the_evaluation_videos_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(tmp_path, "run", "steps=2", "eval_every=2", "log_with=tensorboard", "eval_videos=2")
    (events,) = {p.parent for p in (tmp_path / "run/tensorboard").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events), size_guidance={"images": 0})
    board.Reload()
    names = sorted(p.stem for p in (tmp_path / "run/eval/step_000002").glob("*.mp4"))
    assert sorted(board.Tags()["images"]) == [f"eval/videos/{n}" for n in names] and len(names) == 2
    for tag in board.Tags()["images"]:
        logged = board.Images(tag)
        assert [e.step for e in logged] == [0, 2]  # beside the eval/ scalars, at their steps
        assert all(e.encoded_image_string.startswith(b"GIF89a") and (e.width, e.height) == (64, 64) for e in logged)
    assert [e.step for e in board.Scalars("eval/reward_mean")] == [0, 2]


@pytest.mark.slow  # W&B's service starts and stops (~10 s): `pytest -m slow`, which .ci/run runs
def test_the_evaluation_videos_and_their_table_reach_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(tmp_path, "run", "steps=1", "log_with=wandb", "eval_videos=2")
    (folder,) = (tmp_path / "run/wandb").glob("offline-run-*")
    names = sorted(p.stem for p in (tmp_path / "run/eval/step_000001").glob("*.mp4"))
    media = sorted(p.name for p in (folder / "files/media/videos/eval/videos").glob("*.mp4"))
    # each saved video at steps 0 and 1, W&B's copy of the mp4 named by its tag and step
    assert len(media) == 4 and all(any(m.startswith(f"{n}_{step}_") for m in media) for n in names for step in (0, 1))
    (table,) = (folder / "files/media/table/eval").glob("samples_1_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["prompt", "step", "video", "reward", "mean_pixel"]
    samples = [json.loads(line) for line in (tmp_path / "run/eval/step_000001/samples.jsonl").read_text().splitlines()]
    assert [row[0] for row in data["data"]] == [s["prompt"] for s in samples] and all(row[1] == 1 for row in data["data"])
    assert [row[3:] for row in data["data"]] == [[s["scores"]["reward"], s["scores"]["mean_pixel"]] for s in samples]
    record = next(folder.glob("run-*.wandb")).read_bytes()  # the table's videos travel in its run artifact
    assert b"eval/samples" in record and all(f"{n}.mp4".encode() in record for n in names)


def test_the_lora_folders_model_card_loads_and_its_lines_load_the_lora_in_diffusers(tmp_path):
    from huggingface_hub import ModelCard
    from peft.utils import get_peft_model_state_dict

    base = tmp_path / "tiny-wan"
    build_tiny_wan_pipeline(seed=0).save_pretrained(str(base))
    _train(tmp_path, "run", "steps=1", "checkpoint_every=1", f"generator.name={base}")
    card = ModelCard.load(tmp_path / "run/lora/README.md")
    assert card.data.base_model == str(base) and card.data.library_name == "diffusers"
    assert {"lora", "text-to-video", "flow-grpo", "cac-align"} <= set(card.data.tags)
    assert "| mean_pixel |" in card.text and "| step 0 | step 1 |" in card.text  # the held-out judges at step 0 and at the end
    assert [w["output"]["url"] for w in card.data.widget] == ["samples/00000_a-cat-walking-in-the-park.mp4"]
    assert (tmp_path / "run/lora/samples/00000_a-cat-walking-in-the-park.mp4").is_file()
    assert ModelCard.load(tmp_path / "run/checkpoints/step_000001/lora/README.md").data.base_model == str(base)
    # the card's own lines (docs/using_your_lora.md's) load the LoRA into diffusers' pipeline
    code = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    transformer = scope["pipe"].transformer
    (adapter,) = transformer.peft_config  # the one LoRA the lines loaded
    loaded = get_peft_model_state_dict(transformer, adapter_name=adapter)
    saved = load_file(str(tmp_path / "run/lora/pytorch_lora_weights.safetensors"))
    assert len(loaded) == len(saved) > 0
    by_shape = sorted(t.float().sum().item() for t in loaded.values())
    assert by_shape == pytest.approx(sorted(t.to(torch.bfloat16).float().sum().item() for t in saved.values()), rel=1e-2, abs=1e-3)
    assert not math.isnan(sum(by_shape))


@pytest.mark.browser
def test_a_tiny_runs_page_is_rewritten_after_each_evaluation_and_plays_in_chromium(tmp_path, monkeypatch):
    """The run page of a real tiny run: read between evaluations (it shows the evaluations so far, no later
    one), then served as a user serves it: no console error, prompts x evaluations cells, a video plays, the
    alarm marker at the step metrics.jsonl says, the trained reward's evidence (spot_brightness's box and
    window, as CaC gives them) drawn on its cells."""
    import re

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cac_align.eval.run_view import HeldOutEvaluation
    from run_pages import console_errors, headless_chrome, serve

    pages = {}
    evaluate = HeldOutEvaluation.evaluate

    def reading_the_page_first(self, step, sample):  # what a user refreshing the page sees just before this evaluation
        page = self.out / "run.html"
        pages[step] = page.read_text() if page.exists() else None
        return evaluate(self, step, sample)

    monkeypatch.setattr(HeldOutEvaluation, "evaluate", reading_the_page_first)
    rows = _train(tmp_path, "run", "steps=2", "eval_videos=2", "watch.window=2", "watch.margin=0.0")
    columns = lambda page: [int(s) for s in re.findall(r'<th class="step[^"]*" data-step="(\d+)"', page)]  # noqa: E731
    assert pages[0] is None and columns(pages[1]) == [0] and columns(pages[2]) == [0, 1]
    assert columns((tmp_path / "run/run.html").read_text()) == [0, 1, 2]
    fired = [r["step"] for r in rows if r.get("watch/fired")]
    assert fired == [1, 2]  # the judge fell from step 1 on (a window of 2, against step 0)
    with serve(tmp_path / "run") as url, headless_chrome() as driver:
        driver.get(f"{url}/run.html")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid td.cell")) == 2 * 3
        video = driver.find_element(By.CSS_SELECTOR, 'td.cell[data-step="2"][data-index="0"] video')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", video)
        ActionChains(driver).move_to_element(video).perform()  # hover: it plays
        state = "return [arguments[0].readyState, arguments[0].currentTime]"
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, video)[0] >= 2)
        first = driver.execute_script(state, video)[1]
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, video)[1] != first)
        markers = [int(e.get_attribute("data-step")) for e in driver.find_elements(By.CSS_SELECTOR, "svg line.marker.alarm")]
        assert sorted(set(markers)) == fired
        evidence = driver.find_elements(By.CSS_SELECTOR, 'td.cell .evidence[data-judge="spot_brightness"] img')
        assert evidence  # the spot was bright somewhere: its window and box drawn
        image = evidence[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        errors = console_errors(driver)
    assert errors == []


def test_a_page_that_cannot_be_written_is_said_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    from cac_align.eval import run_page

    def broken(out):
        raise OSError("disk full")

    monkeypatch.setattr(run_page, "write_run_page", broken)
    with caplog.at_level("WARNING"):
        rows = _train(tmp_path, "run", "steps=1")
    assert [r["step"] for r in rows] == [0, 1] and (tmp_path / "run/lora/pytorch_lora_weights.safetensors").is_file()
    assert "run.html was not written" in caplog.text and "OSError: disk full" in caplog.text
