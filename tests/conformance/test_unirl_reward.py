"""Our reward backend inside UniRL 0.2.0's real code (PyPI ``unirl``, in .venv-unirl).

Runs tests/conformance/unirl_reward_service.py in that venv (``bash
tests/conformance/build_unirl_venv.sh``; ``CAC_UNIRL_PYTHON`` names another interpreter): our backend
built from their YAML shape by their trainer's construction and by Hydra, a rollout scored through
their ``RewardService`` inside ``DiffusionTrainer._rollout_and_score``, their advantages computed.
The results are checked here against the same rewards computed in our own environment. About 10 s.
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

UNIRL_PYTHON = os.environ.get("CAC_UNIRL_PYTHON") or str(REPO_ROOT / ".venv-unirl" / "bin" / "python")
SECTIONS = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}, "ur": {"name": "ur_cac", **TINY_UR_CAC}}
LEVELS = [0.2, 0.8, 0.4, 0.6, 1.0, 0.0]  # as the script draws them: the top-left quarter's brightness
PROMPTS = ["a ball on a floor"] * 3 + ["a sign over a shop"] * 3


@pytest.fixture(scope="module")
def unirl(tmp_path_factory):
    if not Path(UNIRL_PYTHON).exists():
        pytest.fail(f"no UniRL interpreter at {UNIRL_PYTHON}: build it with `bash tests/conformance/build_unirl_venv.sh`")
    folder = tmp_path_factory.mktemp("unirl")
    (folder / "sections.json").write_text(json.dumps(SECTIONS))
    run = subprocess.run([UNIRL_PYTHON, str(REPO_ROOT / "tests" / "conformance" / "unirl_reward_service.py"), str(folder / "sections.json"),
                          str(folder / "out.json")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and (folder / "out.json").exists(), run.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())


def frames():
    """The script's videos, (T, H, W, 3) float: bf16 holds these levels exactly."""
    out = []
    for level in LEVELS:
        v = np.full((9, 32, 48, 3), 0.5, dtype=np.float32)
        v[:, :16, :24] = level
        out.append(v)
    return out


def group_advantages(rewards, n=3, global_std=False, eps=1e-8):
    """Their advantage by hand: (r - group mean) / (population std + 1e-8), per group or global std."""
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, n)
    centered = r - r.mean(axis=1, keepdims=True)
    std = np.asarray(rewards).std() if global_std else r.std(axis=1, keepdims=True)
    return (centered / (std + eps)).reshape(-1)


def test_scores_reach_their_advantages_in_order_and_equal_ours(unirl):
    got = unirl["spot"]
    assert "error" not in got, got.get("trace")
    assert got["available"] and got["sample_ids"] == ["r0:p0/0", "r0:p0/1", "r0:p0/2", "r0:p1/0", "r0:p1/1", "r0:p1/2"]
    ours = build_reward(SECTIONS["spot"])(frames(), PROMPTS, [{"fps": 16}] * 6)
    assert got["rewards"] == pytest.approx(ours.scores.tolist(), abs=1e-6)  # [0.8, 0.2, 0.6, 0.4, 0.0, 1.0]
    assert got["advantages"] == pytest.approx(group_advantages(ours.scores).tolist(), abs=1e-5)
    assert got["mean_reward"] == pytest.approx(0.5, abs=1e-6) and got["components"] == {"valid": [1.0] * 6}
    assert got["metrics"]["reward_valid_mean"] == 1.0  # their eval metric <reward>_valid


def test_built_by_hydra_with_their_global_std(unirl):
    got = unirl["spot_hydra_global_std"]  # wan21_t2v.yaml: adv_use_global_std: true
    assert "error" not in got, got.get("trace")
    assert got["advantages"] == pytest.approx(group_advantages(unirl["spot"]["rewards"], global_std=True).tolist(), abs=1e-5)


def test_ur_cac_on_tiny_models_equals_ours(unirl):
    got = unirl["ur_cac"]
    assert "error" not in got, got.get("trace")
    ours = build_reward(SECTIONS["ur"])(frames(), PROMPTS, [{"fps": 16, "group": p} for p in PROMPTS])
    assert ours.valid.all() and got["rewards"] == pytest.approx(ours.scores.tolist(), abs=1e-5)


def test_a_corrupt_frame_is_filled_never_nan_in_their_logs(unirl):
    got = unirl["corrupt_group_mean"]
    assert "error" not in got, got.get("trace")
    assert got["rewards"][1] == pytest.approx((0.8 + 0.6) / 2, abs=1e-6) and got["advantages"][1] == pytest.approx(0.0, abs=1e-6)
    assert not got["mean_reward_is_nan"] and got["components"]["valid"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert all(np.isfinite(got["advantages"]))


def test_a_corrupt_frame_whose_group_is_not_known_whole_is_excluded(unirl):
    """No samples_per_prompt: the sample gets NaN, which their advantage leaves out (advantage 0;
    its siblings normalized over the two valid ones), and their logged mean reward reads nan."""
    got = unirl["corrupt_excluded"]
    assert "error" not in got, got.get("trace")
    assert got["rewards"][1] is None and got["advantages"][1] == pytest.approx(0.0, abs=1e-6)
    valid = [0.8, 0.6]  # rows 0 and 2 of the first group
    expected = (np.array(valid) - np.mean(valid)) / (np.std(valid) + 1e-8)
    assert [got["advantages"][0], got["advantages"][2]] == pytest.approx(expected.tolist(), abs=1e-5)
    assert got["mean_reward_is_nan"] and got["components"]["valid"] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_fail_and_a_backend_error_stop_their_step_with_our_reasons(unirl):
    fail = unirl["corrupt_fail"]["error"]
    assert fail.startswith("RuntimeError: Reward computation flagged 1 of 6 sample(s) as failure")
    assert "(4, \"cac_align reward 'spot'" in fail and "must lie in [0, 1]" in fail and "invalid='fail'" in fail
    backend = unirl["backend_error"]["error"]
    assert "flagged 6 of 6" in backend and "RuntimeError: the judge's server went away" in backend and "max_invalid_fraction=0.5" in backend


def test_a_reward_that_does_not_load_is_not_available_and_says_why(unirl):
    got = unirl["not_loaded"]
    assert got["available"] is False
    assert got["error"].startswith("RewardError: cac_align reward 'judge' is not available") and "no such directory" in got["error"]
