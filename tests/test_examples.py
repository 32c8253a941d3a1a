"""The scripts in examples/ run as docs/examples.md lists them, on the tiny offline models."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cac_align.rewards.registry import build_reward
from cac_align.video import Video, load_video
from conftest import REPO_ROOT


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the registry resolves "module:attribute" names by import
    spec.loader.exec_module(module)
    return module


def test_best_of_5_keeps_the_best_scored_candidate_of_each_prompt(tmp_path):
    example = _example("best_of_5")
    out = tmp_path / "bo"
    example.main(["--generator", "tiny-random:wan", "--reward", "brightness", "--prompts", str(REPO_ROOT / "recipes/align/prompts_tiny.txt"),
                  "--n", "3", "--out", str(out)])
    report = json.loads((out / "scores.json").read_text())
    assert len(report) == 2
    for i, row in enumerate(report):
        assert len(row["scores"]) == 3 and all(row["valid"]) and row["best"] == int(np.argmax(row["scores"]))
        # the kept file is that candidate: scored again, the same brightness (written losslessly)
        kept = load_video(out / f"{i:05d}_best.mp4")
        again = build_reward({"name": "brightness"})([kept], [row["prompt"]])
        assert float(again.scores[0]) == pytest.approx(row["scores"][row["best"]], abs=2e-3)
    # a reward that can score nothing keeps nothing, with the reason, never a "best" of zeros
    from cac_align.gen.generator import GeneratorConfig

    spot = build_reward({"name": "spot_brightness", "window_s": [0.25, 0.5]})
    videos, verdict = example.best_of_n(_Never(), GeneratorConfig(name="tiny-random:wan"), spot, "p", 2)
    assert verdict["best"] is None and verdict["valid"] == [False, False] and "no frame" in verdict["errors"][0]


class _Never:
    """A generator of 1-frame videos, which spot_brightness's window cannot see (invalid)."""

    def generate(self, config, prompts, seeds):
        from cac_align.gen.generator import Generated

        return Generated(np.zeros((len(prompts), 1, 8, 8, 3), dtype=np.uint8))


@pytest.mark.slow  # ~7 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_custom_reward_is_registered_used_by_score_and_invalid_on_a_short_video(tmp_path):
    out = tmp_path / "sharp"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples/custom_reward.py"), "--out", str(out), "--videos", "3"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["valid"] and 0 < r["score"] < 1 for r in rows)
    assert "sharpness" in done.stdout
    # the score by hand: a 0/255 checkerboard differs by 255 from every neighbour -> (255 + 255) / 510 = 1;
    # a flat frame scores 0; one frame is fewer than min_frames = 2: invalid with the reason
    example = _example("custom_reward")
    board = (np.indices((4, 4)).sum(axis=0) % 2 * 255).astype(np.uint8)[None, :, :, None].repeat(3, axis=3).repeat(2, axis=0)
    reward = example.build(example.SharpnessConfig())
    output = reward([Video(board, fps=8.0), Video(np.full((2, 4, 4, 3), 90, np.uint8), fps=8.0), Video(board[:1], fps=8.0)], [None] * 3)
    assert output.scores[:2].tolist() == [1.0, 0.0] and output.valid.tolist() == [True, True, False]
    assert "fewer than min_frames" in output.details[2]["error"]
