"""Our verl-omni reward function inside verl's own reward loop (PyPI verl 0.9.1, Ray actors).

Runs tests/conformance/verl_reward_loop.py in the verl venv (``bash
tests/conformance/build_verl_venv.sh``; ``CAC_VERL_PYTHON`` names another interpreter) and checks
what verl returned against the same reward computed here, in our own environment. verl loads the
function by ``pkg://`` path and a user's function by file path, runs one worker per chunk and one
call per sample, and assembles the batch: the only stand-in is verl-omni's manager (not on a
registry; tests/fixtures/verl_omni_checkout). About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cac_align.rewards import build_reward
from conftest import REPO_ROOT, TINY_UR_CAC

pytestmark = pytest.mark.conformance

VERL_PYTHON = os.environ.get("CAC_VERL_PYTHON") or str(REPO_ROOT / ".venv-verl" / "bin" / "python")


@pytest.fixture(scope="module")
def verl(tmp_path_factory):
    if not Path(VERL_PYTHON).exists():
        pytest.fail(f"no verl interpreter at {VERL_PYTHON}: build it with `bash tests/conformance/build_verl_venv.sh`")
    out = tmp_path_factory.mktemp("verl") / "results.json"
    run = subprocess.run([VERL_PYTHON, str(REPO_ROOT / "tests" / "conformance" / "verl_reward_loop.py"), str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    return json.loads(out.read_text())


def test_scores_in_input_order_weights_summed(verl):
    got = verl["order"]
    assert "error" not in got, got.get("error")
    bright = np.array([51, 153, 204, 102, 0, 255]) / 255.0
    assert np.array(got["rm_scores"])[:, 0] == pytest.approx(2.0 * bright + 0.5, abs=1e-6)  # 2 workers, input order
    assert got["metrics"]["reward/bright"] == pytest.approx(bright.tolist(), abs=1e-6)
    assert got["metrics"]["reward/bright/valid"] == [1.0] * 6 and got["metrics"]["reward/half"] == [0.5] * 6
    assert sorted(got["reward_extra_keys"]) == ["reward/bright", "reward/bright/valid", "reward/combined", "reward/half"]


def test_ur_cac_on_tiny_models_equals_ours(verl):
    got = verl["ur_cac"]
    assert "error" not in got, got.get("error")
    frames = [np.full((6, 64, 64, 3), level, dtype=np.uint8) for level in (51, 153, 204, 102)]
    ours = build_reward({"name": "ur_cac", **TINY_UR_CAC})(frames, [f"prompt {i // 2}" for i in range(4)], [{"fps": 16.0}] * 4)
    assert ours.valid.all() and got["metrics"]["reward/ur_cac/valid"] == [1.0] * 4
    # their venv has transformers 5.10, ours 5.2x: same scores within float32 noise
    assert got["metrics"]["reward/ur_cac"] == pytest.approx(ours.scores.tolist(), abs=1e-5)


def test_an_unscorable_sample_stops_a_required_entry_and_breaks_an_optional_batch(verl):
    assert "RuntimeError" in verl["required"]["error"] and "required reward 'bright' failed" in verl["required"]["error"]
    assert "an all-black video (invalid='fail')" in verl["required"]["error"]
    # required: false: their manager scores 0.0, and verl's assembly (keys of sample 0) refuses the batch
    assert verl["optional"]["error"] == "KeyError: 'reward/bright/valid'"


def test_group_mean_fill_in_their_loop(verl):
    got = verl["group_mean"]
    assert "error" not in got, got.get("error")
    assert np.array(got["rm_scores"])[:, 0] == pytest.approx([0.2, 0.3, 0.4, 0.8, 0.6, 1.0], abs=1e-6)
    assert got["metrics"]["reward/bright/valid"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
