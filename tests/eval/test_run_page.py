"""The run page (cac_align/eval/run_page.py) on a run folder built by hand as the trainers write it
(tests/run_pages.py: 3 held-out prompts, videos of the first 2, evaluations at steps 0, 2 and 4, the
watch fired at step 4, the best step 2): what each cell says, what is marked, what is reused, and the
page in a real headless chromium."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from cac_align.eval.run_page import write_run_page
from run_pages import ALARM_STEP, add_evaluation, build_run_folder, console_errors, headless_chrome, serve

_CELL = re.compile(r'<td class="([^"]*)" data-step="(\d+)" data-index="(\d+)">(.*?)</td>', re.S)
_ORANGE, _RED = (255, 170, 60), (255, 40, 40)  # write_evidence_png's window and box colours


def _cells(page: str) -> dict[tuple[int, int], tuple[set[str], str]]:
    """``{(step, prompt index): (the cell's classes, its HTML)}`` of the grid."""
    return {(int(m.group(2)), int(m.group(3))): (set(m.group(1).split()), m.group(4)) for m in _CELL.finditer(page)}


def _score(cell: str, key: str) -> tuple[str, str, str]:
    """A cell's ``(li class, value, change)`` of one score."""
    match = re.search(rf'<li class="([^"]*)" data-key="{key}"[^>]*><span class="name">{key}</span><span><b>([^<]*)</b>'
                      rf'(?:<span class="delta[^"]*">([^<]*)</span>)?', cell)
    assert match, (key, cell)
    return match.group(1), match.group(2), (match.group(3) or "").replace("&minus;", "-").replace(" &#9660;", "v")


def test_the_grid_its_scores_marks_evidence_and_tables(tmp_path):
    out = build_run_folder(tmp_path / "run")
    page = write_run_page(out).read_text()
    cells = _cells(page)
    # one row per prompt with a saved video (2 of 3), one column per evaluation, step 0 first
    assert sorted(cells) == [(s, i) for s in (0, 2, 4) for i in (0, 1)]
    assert re.findall(r'<th class="step[^"]*" data-step="(\d+)"', page) == ["0", "2", "4"]
    # changes since step 0, by hand from tests/run_pages.py's SCORES; cac fell 0.05 on prompt 0 at step 4,
    # beyond the margin 0.02 (the manifest's watch.margin): that cell alone is marked
    assert _score(cells[(4, 0)][1], "reward") == ("", "0.600", "+0.100")
    assert _score(cells[(4, 0)][1], "cac") == ("fell", "0.550", "-0.050v")
    assert _score(cells[(4, 1)][1], "cac") == ("", "0.690", "-0.010")
    assert _score(cells[(2, 0)][1], "cac") == ("", "0.610", "+0.010")
    assert _score(cells[(0, 0)][1], "cac") == ("", "0.600", "")  # step 0 is the baseline: no change shown
    assert [key for key, (classes, _) in cells.items() if "fell" in classes] == [(4, 0)]
    # the best step's column, the alarm's column
    assert all("best" in cells[(2, i)][0] for i in (0, 1)) and not any("best" in cells[(s, 0)][0] for s in (0, 4))
    assert re.search(r'data-step="4">step 4 <span class="badge alarm"[^>]*>&#9888; cac</span>', page)
    assert re.search(r'data-step="2">step 2 <span class="badge best">', page)
    # videos: relative links, fetched only when played, the poster once scrolled to; the sound button
    # where the mp4 has a soundtrack (prompt 1's)
    video = cells[(4, 0)][1]
    assert 'data-src="eval/step_000004/00000_a-red-ball-rolls-past-a-sign.mp4"' in video and 'preload="none"' in video
    assert 'data-poster="run_page/step_000004/00000.jpg"' in video and "muted loop" in video
    assert [key for key, (_, cell) in cells.items() if 'class="sound"' in cell] == [(0, 1), (2, 1), (4, 1)]
    assert "file://" not in page and "http" not in page.replace("http-equiv", "")  # nothing absolute, nothing fetched
    # the evidence: CaC's picture on (4, 0), drawn by write_evidence_png: the window [0.25, 0.75) s of the
    # 1 s clip on a 432-pixel timeline (3 slots of 144: 64 x 96 frames at 96 px high), fill between the
    # outline's columns 107 and 323; the box [100, 200, 400, 600] on the frame at 0.375 s, in slot 0:
    # x 14.4-57.6, y 19.2-57.6 under the 40-pixel timeline, which PIL draws from pixel 14 to 57 and 19 to 57
    picture = re.search(r'data-judge="cac"><a href="(run_page/step_000004/00000_cac_[0-9a-f]{10}\.png)"', cells[(4, 0)][1]).group(1)
    pixels = np.asarray(Image.open(out / picture).convert("RGB"))
    assert pixels.shape == (40 + 96, 432, 3)
    orange = np.flatnonzero((pixels[20] == _ORANGE).all(-1))
    assert (orange.min(), orange.max()) == (108, 322)
    ys, xs = np.nonzero((pixels[40:] == _RED).all(-1))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (14, 57, 19, 57)
    assert "boxes on 1 frame" in cells[(4, 0)][1] and "<b>cac</b> normal" in cells[(0, 0)][1] and "<img" not in cells[(0, 0)][1]
    # wm_surprise's window alone (no boxes): a timeline, no frames
    window = re.search(r'data-judge="wm_surprise"><a href="([^"]+\.png)"', cells[(4, 1)][1]).group(1)
    assert np.asarray(Image.open(out / window)).shape[:2] == (40, 432)
    # every prompt's scores, the unsaved prompt 2 too: cac fell 0.10 there at step 4
    cac_table = page[page.index('data-key="cac"><summary>'):]
    row = re.search(r'<tr data-index="2"><th class="p"[^>]*>#2 a ball bounces in a park</th>(.*?)</tr>', cac_table).group(1)
    assert re.findall(r'<td class="([^"]*)"[^>]*>([^<]*)</td>', row) == [("", "0.500"), ("up", "0.520"), ("fell", "0.400")]
    assert "<b>-0.100</b>" in row
    assert "Videos are saved for the first 2 of the 3 held-out prompts" in page
    # the curves: the alarm where metrics.jsonl says it fired, the best step, on the judge's chart
    judges = page[page.index("<figcaption>Held-out judges</figcaption>"):]
    judges = judges[: judges.index("</figure>")]
    alarm_x = re.search(rf'<line class="marker alarm" data-step="{ALARM_STEP}" x1="([\d.]+)"', judges).group(1)
    point_x = re.search(rf'<circle class="pt" data-series="eval/cac/mean" data-step="{ALARM_STEP}" cx="([\d.]+)"', judges).group(1)
    assert alarm_x == point_x and re.findall(r'class="marker (\w+)" data-step="(\d+)"', judges) == [("alarm", "4"), ("best", "2")]
    assert "judge cac <b>0.600</b> at step 0 &rarr; <b>0.547</b> at step 4 (&minus;0.053)" in page  # eval/cac/mean, 0.6 -> 1.64 / 3
    assert "stop: false" not in page and "margin: 0.02" in page  # the settings, from the manifest


def test_the_watch_margin_comes_from_the_manifest(tmp_path):
    out = build_run_folder(tmp_path / "run")
    manifest = json.loads((out / "cac_align_run.json").read_text())
    manifest["config"]["watch"]["margin"] = 0.06  # prompt 0's fall of 0.05 is within it, prompt 2's 0.10 is not
    (out / "cac_align_run.json").write_text(json.dumps(manifest))
    page = write_run_page(out).read_text()
    assert not any("fell" in classes for classes, _ in _cells(page).values())
    assert _score(_cells(page)[(4, 0)][1], "cac") == ("", "0.550", "-0.050")
    assert page.count('<td class="fell"') == 1 and "margin (0.06)" in page


def test_a_second_call_draws_only_the_new_evaluation(tmp_path):
    """The page is rewritten after every evaluation: what earlier calls drew is reused (not drawn
    again), a new evaluation's pictures are drawn, and an evaluation dropped by a resume loses its own."""
    out = build_run_folder(tmp_path / "run")
    write_run_page(out)
    before = {p: p.stat().st_mtime_ns for p in (out / "run_page").rglob("*") if p.is_file()}
    assert len(before) == 2 * 3 * 2 + 2  # poster and facts of 6 videos, 2 evidence pictures
    time.sleep(0.01)
    add_evaluation(out, 6)
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"step": 6, "eval/reward_mean": 0.5, "eval/cac/mean": 0.5, "watch/fired": []}) + "\n")
    page = write_run_page(out).read_text()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing of steps 0-4 drawn again
    assert sorted(p.name for p in (out / "run_page/step_000006").iterdir() if p.suffix == ".jpg") == ["00000.jpg", "00001.jpg"]
    assert sorted({s for s, _ in _cells(page)}) == [0, 2, 4, 6]
    # a resumed run drops step 6 (its checkpoint was at step 4): its pictures go with it
    import shutil

    shutil.rmtree(out / "eval/step_000006")
    page = write_run_page(out).read_text()
    assert not (out / "run_page/step_000006").exists() and sorted({s for s, _ in _cells(page)}) == [0, 2, 4]
    # an mp4 rewritten (the same step evaluated again) gets a new poster; the others stay
    add_evaluation(out, 4)
    write_run_page(out)
    assert (out / "run_page/step_000004/00000.jpg").stat().st_mtime_ns > before[out / "run_page/step_000004/00000.jpg"]
    assert (out / "run_page/step_000002/00000.jpg").stat().st_mtime_ns == before[out / "run_page/step_000002/00000.jpg"]


def test_a_run_with_nothing_evaluated_yet_and_one_from_before_the_records(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.3}) + "\n" + '{"step": 2, "rew')  # a torn last line
    page = write_run_page(out).read_text()
    assert "No evaluation has saved a video yet" in page and "No settings recorded" in page and "reward/mean" in page
    # an eval folder of a run from before samples.jsonl: its mp4s, no scores
    folder = add_evaluation(out, 0)
    (folder / "samples.jsonl").unlink()
    cells = _cells(write_run_page(out).read_text())
    assert sorted(cells) == [(0, 0), (0, 1)] and "<ul class=\"scores\"><li" in cells[(0, 0)][1]
    assert _score(cells[(0, 0)][1], "reward") == ("", "–", "")


@pytest.mark.browser
def test_run_page_in_headless_chromium(tmp_path):
    """Served as a user serves a run folder (``python -m http.server``): no console error, prompts x
    evaluations cells, a hovered video loads and plays while the others fetch nothing, the alarm's
    marker sits on the judge's point of the step metrics.jsonl says it fired at, and the CaC-judged
    cell shows its evidence picture with the boxes drawn."""
    out = build_run_folder(tmp_path / "run")
    add_evaluation(out, 6)  # a fourth evaluation, so that the compact view has a column to hide
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"step": 6, "eval/reward_mean": 0.5, "eval/cac/mean": 0.5, "watch/fired": []}) + "\n")
    write_run_page(out)
    fired = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if json.loads(line).get("watch/fired")]
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with serve(out) as url, headless_chrome() as driver:
        driver.get(f"{url}/run.html")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid tbody tr")) == 2
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid td.cell")) == 2 * 4
        video = driver.find_element(By.CSS_SELECTOR, 'td.cell[data-step="4"][data-index="1"] video')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", video)
        ActionChains(driver).move_to_element(video).perform()  # hover: it plays
        state = "return [arguments[0].readyState, arguments[0].currentTime, arguments[0].paused, arguments[0].poster]"
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, video)[0] >= 2)
        first = driver.execute_script(state, video)[1]
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, video)[1] > first + 0.1)
        assert driver.execute_script(state, video)[3].endswith("/run_page/step_000004/00001.jpg")
        other = driver.find_element(By.CSS_SELECTOR, 'td.cell[data-step="0"][data-index="0"] video')
        assert driver.execute_script(state, other)[0] == 0  # not hovered: nothing of its mp4 fetched (preload="none")
        # its soundtrack: the button unmutes the video and keeps it playing
        sounded = driver.find_element(By.CSS_SELECTOR, 'td.cell[data-step="2"][data-index="1"] video')
        driver.find_element(By.CSS_SELECTOR, 'td.cell[data-step="2"][data-index="1"] button.sound').click()
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(state, sounded)[1] > 0.1)
        assert driver.execute_script("return [arguments[0].muted, arguments[0].paused]", sounded) == [False, False]
        # the alarm marker at the step metrics.jsonl says, on the held-out judge's point of that step
        assert [int(e.get_attribute("data-step")) for e in driver.find_elements(By.CSS_SELECTOR, "svg line.marker.alarm")][:1] == fired == [ALARM_STEP]
        centre = "var r = arguments[0].getBoundingClientRect(); return r.left + r.width / 2"
        chart = driver.find_element(By.XPATH, "//figure[figcaption='Held-out judges']")
        marker = chart.find_element(By.CSS_SELECTOR, f'line.marker.alarm[data-step="{ALARM_STEP}"]')
        point = chart.find_element(By.CSS_SELECTOR, f'circle[data-series="eval/cac/mean"][data-step="{ALARM_STEP}"]')
        assert abs(driver.execute_script(centre, marker) - driver.execute_script(centre, point)) < 1.0
        # the CaC-judged cell: its evidence picture loaded, with the box colour in its frames
        image = driver.find_element(By.CSS_SELECTOR, 'td.cell[data-step="4"][data-index="0"] .evidence[data-judge="cac"] img')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        red = driver.execute_script(
            "var i = arguments[0], c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;"
            "var g = c.getContext('2d'); g.drawImage(i, 0, 0); var d = g.getImageData(0, 40, c.width, c.height - 40).data, n = 0;"
            "for (var k = 0; k < d.length; k += 4) { if (d[k] == 255 && d[k + 1] == 40 && d[k + 2] == 40) n++; } return n", image)
        assert red > 50  # the box's 2-pixel outline around 43 x 38 pixels
        assert driver.find_elements(By.CSS_SELECTOR, 'td.cell[data-step="0"][data-index="0"] .evidence img') == []
        # the compact view keeps step 0, the best (2) and the last (6)
        steps = "return Array.from(document.querySelectorAll('#grid thead th.step')).filter(e => e.offsetParent).map(e => e.dataset.step)"
        assert driver.execute_script(steps) == ["0", "2", "4", "6"]
        driver.find_element(By.CSS_SELECTOR, 'button[data-view="compact"]').click()
        assert driver.execute_script(steps) == ["0", "2", "6"]
        errors = console_errors(driver)
    assert errors == []


def test_an_unreadable_video_is_said_in_its_cell_and_the_page_still_written(tmp_path):
    out = build_run_folder(tmp_path / "run", steps=(0,))
    broken = next((out / "eval/step_000000").glob("00001_*.mp4"))
    broken.write_bytes(b"not an mp4")
    cells = _cells(write_run_page(out).read_text())
    assert "could not decode video" in cells[(0, 1)][1] and _score(cells[(0, 1)][1], "cac") == ("", "0.700", "")
    assert "<video" in cells[(0, 0)][1]
