"""Expert anomaly rate: the statistics by hand, and the labelling sheet's round trip (programmatic
and in a real headless Chromium)."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest

from cac_align.eval.expert import cohen_kappa, fleiss_kappa, load_labels, mcnemar, wilson_interval
from cac_align.jobs.eval_expert import ExpertConfig, run
from run_pages import chromium as browser_binaries


def test_wilson_interval_known_values():
    # standard reference values of the 95% Wilson score interval
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(17, 100)  # the paper's 17% on 100 videos
    assert (low, high) == (pytest.approx(0.1090, abs=1e-4), pytest.approx(0.2555, abs=1e-4))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_cohen_kappa_hand_worked():
    """50 items: both "yes" 20, A yes / B no 5, A no / B yes 10, both no 15. p_o = 0.7,
    p_e = 0.5·0.6 + 0.5·0.4 = 0.5, kappa = 0.2 / 0.5 = 0.4."""
    a = ["anomalous"] * 20 + ["anomalous"] * 5 + ["normal"] * 10 + ["normal"] * 15
    b = ["anomalous"] * 20 + ["normal"] * 5 + ["anomalous"] * 10 + ["normal"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["normal"] * 3, ["normal"] * 3))  # no variation: undefined


def test_fleiss_kappa_hand_worked():
    """3 raters, 4 items with 3, 0, 2, 1 "anomalous" votes: P_i = 1, 1, 1/3, 1/3 (mean 2/3),
    p_anomalous = 6/12 -> P_e = 0.5, kappa = (2/3 - 1/2) / (1/2) = 1/3."""
    counts = [[3, 0], [0, 3], [2, 1], [1, 2]]
    assert fleiss_kappa(counts) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[3, 0], [1, 1]])


def test_mcnemar_small_table():
    """b = 6, c = 1: exact p = 2·(C(7,0) + C(7,1)) / 2^7 = 16/128; chi-square (6 - 1)² / 7."""
    m = mcnemar(6, 1)
    assert m["p_value"] == pytest.approx(0.125) and m["statistic"] == pytest.approx(25 / 7)
    assert mcnemar(3, 3)["p_value"] == 1.0 and mcnemar(0, 0)["p_value"] == 1.0


def _systems(tmp_path):
    """Two systems of three prompts each, as a manifest and as a folder."""
    from cac_align.video import Video, save_video
    from conftest import smooth_video

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    base.mkdir()
    tuned.mkdir()
    for k, name in enumerate(["cat", "dog", "car"]):
        save_video(Video(smooth_video(8, 32, 32, seed=k), 8.0), base / f"{name}.mp4")
        save_video(Video(smooth_video(8, 32, 32, seed=10 + k), 8.0), tuned / f"{name}.mp4")
    (base / "manifest.jsonl").write_text("".join(json.dumps({"video": f"{n}.mp4", "prompt": n}) + "\n" for n in ["cat", "dog", "car"]))
    return {"base": str(base / "manifest.jsonl"), "tuned": str(tuned)}


def _answers(key, rule):
    return [{"item": item, "label": rule(v["system"], v["key"]), "type": None, "note": None} for item, v in key["items"].items()]


def test_export_blinds_and_analyze_computes_rates(tmp_path):
    out = tmp_path / "sheet"
    page = run(ExpertConfig(action="export", out_dir=str(out), systems=_systems(tmp_path), seed=1))
    text = page.read_text()
    key = json.loads((out / "key.json").read_text())
    assert len(key["items"]) == 6 and text.count("<video ") == 6 and "data:video/mp4;base64," in text
    assert "base" not in text.replace("base64", "") and "tuned" not in text  # systems are blinded
    assert [v["system"] for v in key["items"].values()] != ["base"] * 3 + ["tuned"] * 3  # shuffled
    # expert 1 (JSON, as the page saves it): every base video anomalous, tuned only "dog"
    rule1 = lambda system, prompt: "anomalous" if system == "base" or prompt == "dog" else "normal"  # noqa: E731
    # expert 2 (filled sheet.csv): agrees except base "car"
    rule2 = lambda system, prompt: "normal" if (system, prompt) == ("base", "car") else rule1(system, prompt)  # noqa: E731
    (tmp_path / "e1.json").write_text(json.dumps({"sheet_id": key["sheet_id"], "expert": "ann", "answers": _answers(key, rule1)}))
    rows = list(csv.DictReader((out / "sheet.csv").open()))
    for row in rows:
        row["label"] = rule2(key["items"][row["item"]]["system"], key["items"][row["item"]]["key"])
    with (tmp_path / "bob.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run(ExpertConfig(action="analyze", out_dir=str(out), labels=[str(tmp_path / "e1.json"), str(tmp_path / "bob.csv")]))
    # base: cat, dog anomalous for both; car is a 1-1 tie -> anomalous (tie_label) -> 3/3
    assert result["systems"]["base"]["anomalous"] == 3 and result["systems"]["base"]["per_expert"]["bob"]["anomalous"] == 2
    tuned = result["systems"]["tuned"]
    assert (tuned["anomalous"], tuned["n"]) == (1, 3)
    assert (tuned["wilson_low"], tuned["wilson_high"]) == pytest.approx(wilson_interval(1, 3))
    # 6 items, one disagreement: p_o = 5/6; ann says anomalous 4/6, bob 3/6 -> p_e = 4/6·3/6 + 2/6·3/6 = 1/2
    assert result["agreement"]["cohen"]["ann | bob"] == pytest.approx((5 / 6 - 0.5) / 0.5)
    assert result["mcnemar"]["base vs tuned"] == {"b": 2, "c": 0, "statistic": 2.0, "p_value": 0.5, "prompts": 3}
    assert "| tuned | 0.333 |" in (out / "expert.md").read_text()
    # the tie rule is a setting
    result = run(ExpertConfig(action="analyze", out_dir=str(out), labels=[str(tmp_path / "e1.json"), str(tmp_path / "bob.csv")], tie_label="normal"))
    assert result["systems"]["base"]["anomalous"] == 2


def test_bad_label_files_are_named(tmp_path):
    out = tmp_path / "sheet"
    run(ExpertConfig(action="export", out_dir=str(out), systems=_systems(tmp_path), embed=False))
    assert len(list((out / "videos").iterdir())) == 6 and "videos/item-001.mp4" in (out / "sheet.html").read_text()
    key = json.loads((out / "key.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({"sheet_id": key["sheet_id"], "expert": "x", "answers": [{"item": "item-001", "label": "weird"}]}))
    with pytest.raises(ValueError, match="bad.json: item item-001: label must be"):
        load_labels(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"sheet_id": "sheet-9-9", "expert": "x", "answers": []}))
    with pytest.raises(ValueError, match="not sheet-"):
        run(ExpertConfig(action="analyze", out_dir=str(out), labels=[str(tmp_path / "other.json")]))
    with pytest.raises(ValueError, match="systems"):
        ExpertConfig(action="export")


def test_sheet_folder_keeps_the_users_files_and_analyze_needs_an_export(tmp_path):
    from cac_align.config import RecipeError

    out = tmp_path / "sheet"
    out.mkdir()
    systems = _systems(tmp_path)
    (out / "key.json").write_text("{}")  # not written by an export: refused, for both actions
    with pytest.raises(RecipeError, match="already has key.json"):
        run(ExpertConfig(action="export", out_dir=str(out), systems=systems, overwrite=True))
    (tmp_path / "e.json").write_text("{}")
    with pytest.raises(RecipeError, match="key.json of a recorded eval-expert export not found"):
        run(ExpertConfig(action="analyze", out_dir=str(out), labels=[str(tmp_path / "e.json")]))
    (out / "key.json").unlink()
    (out / "notes.txt").write_text("mine")
    run(ExpertConfig(action="export", out_dir=str(out), systems=systems, embed=False))
    run(ExpertConfig(action="export", out_dir=str(out), systems=systems, embed=True, seed=5, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine" and not (out / "videos").exists()  # the old copies went


@pytest.mark.browser
def test_sheet_round_trip_in_headless_chromium(tmp_path):
    """Open the exported page in a real browser, click answers, type a name, save, and ingest
    the file the browser downloaded. Reloading keeps the answers (local storage)."""
    chromium, chromedriver = browser_binaries()  # tests/run_pages.py: the run and bon pages' tests share it
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out = tmp_path / "sheet"
    page = run(ExpertConfig(action="export", out_dir=str(out), systems=_systems(tmp_path)))
    key = json.loads((out / "key.json").read_text())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(page.as_uri())
        driver.find_element(By.ID, "expert").send_keys("Dr. Rossi")
        expected = {}
        for k, item in enumerate(key["items"]):
            label = "anomalous" if key["items"][item]["system"] == "base" else "normal"
            driver.find_element(By.CSS_SELECTOR, f'input[name="{item}"][value="{label}"]').click()
            expected[item] = label
            if k == 0:
                driver.find_element(By.CSS_SELECTOR, f'select[name="{item}-type"] option[value="Human Distortion"]').click()
                driver.find_element(By.CSS_SELECTOR, f'input[name="{item}-note"]').send_keys("extra finger")
        assert driver.find_element(By.ID, "progress").text == "6 / 6 labelled"
        driver.refresh()  # answers survive a reload
        assert driver.find_element(By.ID, "progress").text == "6 / 6 labelled"
        driver.find_element(By.ID, "save-json").click()
        saved = downloads / "labels_Dr_Rossi.json"
        deadline = time.time() + 20
        while not saved.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert saved.exists(), list(downloads.iterdir())
    finally:
        driver.quit()
    expert, answers = load_labels(saved, key["sheet_id"])
    assert expert == "Dr. Rossi" and {i: a["label"] for i, a in answers.items()} == expected
    first = next(iter(key["items"]))
    assert answers[first]["type"] == "Human Distortion" and answers[first]["note"] == "extra finger"
    result = run(ExpertConfig(action="analyze", out_dir=str(out), labels=[str(saved)]))
    assert result["systems"]["base"]["rate"] == 1.0 and result["systems"]["tuned"]["rate"] == 0.0
    assert np.isclose(result["mcnemar"]["base vs tuned"]["p_value"], 0.25)  # b = 3, c = 0: 2/8
