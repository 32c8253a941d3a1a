"""What the page tests share: a training run folder built by hand as the trainers write it (the run
page's contract: eval/step_N/ with real mp4s and samples.jsonl, metrics.jsonl with step 0 and an
alarm, best.json, the manifest), and Debian's headless chromium driven by selenium, as the expert
sheet's test drives it (its skip rules: missing locally is a skip, missing under CI a failure)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

# The hand-built run (tests/eval/test_run_page.py works its expectations from these numbers):
# 3 held-out prompts, videos saved for the first 2 (eval_videos), evaluations at steps 0, 2, 4.
PROMPTS = ["a red ball rolls past a sign", "a person walks by a cafe", "a ball bounces in a park"]
STEPS = (0, 2, 4)
SCORES = {  # (step, prompt index) -> {"reward": trained reward, "cac": a held-out judge}
    (0, 0): {"reward": 0.50, "cac": 0.60}, (0, 1): {"reward": 0.40, "cac": 0.70}, (0, 2): {"reward": 0.30, "cac": 0.50},
    (2, 0): {"reward": 0.55, "cac": 0.61}, (2, 1): {"reward": 0.45, "cac": 0.69}, (2, 2): {"reward": 0.35, "cac": 0.52},
    # step 4: cac fell 0.05 on prompt 0 and 0.10 on prompt 2 (beyond the margin 0.02), 0.01 on prompt 1 (within)
    (4, 0): {"reward": 0.60, "cac": 0.55}, (4, 1): {"reward": 0.50, "cac": 0.69}, (4, 2): {"reward": 0.40, "cac": 0.40},
}
CAC_BOX = [100.0, 200.0, 400.0, 600.0]  # 0-1000, on the frame at 0.375 s of prompt 0 at step 4
EVIDENCE = {  # (step, prompt index) -> the judges' verdicts as samples.jsonl keeps them
    (0, 0): {"cac": {"status": "normal", "window_s": None, "boxes": []}},
    (4, 0): {"cac": {"status": "abnormal", "window_s": [0.25, 0.75], "boxes": [{"frame": 3, "time_s": 0.375, "boxes": [CAC_BOX]}]}},
    (4, 1): {"wm_surprise": {"status": "abnormal", "window_s": [0.5, 1.0], "boxes": []}},
}
FPS, SIZE, FRAMES = 8.0, (64, 96), 8  # 1 s videos of 64 x 96
ALARM_STEP = 4


def scene(index: int, step: int, height: int = SIZE[0], width: int = SIZE[1], frames: int = FRAMES, fps: float = FPS) -> np.ndarray:
    """(T, H, W, 3) uint8: the synthetic renderer's scene of held-out prompt ``index`` (one scene per
    prompt, as a fixed seed gives), drawn a little differently at each ``step``."""
    from cac_align.data.synthetic import NORMAL, SynthConfig, make_spec, render

    config = SynthConfig(out_dir="unused", height=height, width=width, fps=fps, duration_s=frames / fps, anomaly_duration_s=[0.25, 0.5])
    spec = make_spec(config, index, kind=NORMAL)
    spec = type(spec)(**{**spec.__dict__, "ball_x0": spec.ball_x0 + 6 * step})  # training moves the ball a little
    return render(spec)[0]


def build_run_folder(out: Path, steps=STEPS, *, eval_videos: int = 2, sound_on: int | None = 1) -> Path:
    """A flow-grpo run folder as the trainer writes it (the run page's contract), with ``steps``'
    evaluations; held-out prompt ``sound_on``'s videos carry a soundtrack."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": 1, "job": "flow-grpo", "outputs": ["metrics.jsonl", "eval", "run.html", "run_page", "best.json"],
                "fingerprint": {}, "config": {"steps": 4, "eval_every": 2, "eval_videos": eval_videos, "watch": {"window": 2, "margin": 0.02},
                                              "generator": {"name": "tiny-random:wan"}, "reward": {"name": "spot_brightness"}}}
    (out / "cac_align_run.json").write_text(json.dumps(manifest))
    for step in steps:
        add_evaluation(out, step, eval_videos=eval_videos, sound_on=sound_on)
    rows = []
    for step in range(max(steps) + 1):
        if step > 0:
            rows.append({"step": step, "reward/mean": 0.4 + 0.03 * step, "train/kl": 0.001 * step, "regularize/gated_fraction": 0.1 * step})
        if step in steps:
            cac = [SCORES.get((step, i), SCORES[(4, i)])["cac"] for i in range(3)]
            reward = [SCORES.get((step, i), SCORES[(4, i)])["reward"] for i in range(3)]
            rows.append({"step": step, "eval/reward_mean": float(np.mean(reward)), "eval/cac/mean": float(np.mean(cac)), "eval/cac/valid_fraction": 1.0,
                         "watch/alarms": int(step == ALARM_STEP), "watch/fired": ["cac"] if step == ALARM_STEP else []})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "best.json").write_text(json.dumps({"step": 2, "reward": 0.45, "judges": {"cac": 0.6067}, "rule": "the highest trained reward whose judges held",
                                               "margin": 0.02, "baseline": {"reward": 0.40, "judges": {"cac": 0.60}}}))
    return out


def add_evaluation(out: Path, step: int, *, eval_videos: int = 2, sound_on: int | None = 1) -> Path:
    """One evaluation's folder: the saved mp4s and samples.jsonl (scores of step 4 for later steps)."""
    from cac_align.run.input_files import slug
    from cac_align.video import Video, save_video

    folder = out / "eval" / f"step_{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, prompt in enumerate(PROMPTS):
        video = None
        if index < eval_videos:
            video = f"{index:05d}_{slug(prompt)}.mp4"
            sound = {}
            if index == sound_on:
                t = np.arange(int(FRAMES / FPS * 8000)) / 8000
                sound = {"audio": (0.2 * np.sin(2 * np.pi * 330 * t))[None].astype(np.float32), "sample_rate": 8000}
            save_video(Video(scene(index, step), FPS), folder / video, **sound)
        lines.append({"index": index, "prompt": prompt, "seed": 1000 + index, "video": video,
                      "scores": SCORES.get((step, index), SCORES[(4, index)]), "evidence": EVIDENCE.get((step, index), {})})
    (folder / "samples.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


# ---------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------
def chromium() -> tuple[str, str]:
    """Debian's chromium + chromedriver (installed by .ci/run). Missing in CI is a failure."""
    found = shutil.which("chromium") and shutil.which("chromedriver")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("CI must provide Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver && pytest -m browser")
    return shutil.which("chromium"), shutil.which("chromedriver")


@contextlib.contextmanager
def headless_chrome(width: int = 1400, height: int = 1000):
    """A headless chromium under selenium that keeps the page's console (``driver.get_log("browser")``)."""
    binary, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the test's output stays the test's
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """``python -m http.server`` in ``folder`` (what docs/flow_grpo.md tells a user to run), on a free
    port of 127.0.0.1; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def console_errors(driver) -> list[dict]:
    """The page's console messages at level SEVERE (a script error, a resource that did not load)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
