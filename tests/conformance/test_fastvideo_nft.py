"""Our rewards and our NFT loss against FastVideo 0.2.1's own DiffusionNFT (PyPI ``fastvideo``, in
.venv-fastvideo).

Runs tests/conformance/fastvideo_nft.py in that venv (``bash
tests/conformance/build_fastvideo_venv.sh``; ``CAC_FASTVIDEO_PYTHON`` names another interpreter): our
``CacAlignRewardScorer`` inside their ``MultiRewardScorer``, called by their
``DiffusionNFTMethod._score_samples``, their ``_compute_advantages`` and reward metrics; their
``_training_timestep_loss`` against our ``cac_align.rl.nft.nft_loss`` on the tensors it used;
their ``_return_decay`` against our ``old_policy_decay``. The rewards are checked here against our
reward run in this environment on the same frames, the advantages against their formula by hand.
One process, about 25 s of CPU, most of it importing fastvideo (measured 2026-11-27: 92-113 s of
wall time at a load of 14 on 2 cores, 22 s of CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cac_align.rewards import build_reward
from conftest import REPO_ROOT

pytestmark = pytest.mark.conformance

FASTVIDEO_PYTHON = os.environ.get("CAC_FASTVIDEO_PYTHON") or str(REPO_ROOT / ".venv-fastvideo" / "bin" / "python")
SECTIONS = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5], "source_fps": 8}}
LEVELS = [0.2, 0.8, 0.4, 0.6, 1.0, 0.0]  # as the script draws them, its two sampling batches in order
PROMPTS = ["a ball", "a sign", "a ball", "a sign", "a ball", "a sign"]


@pytest.fixture(scope="module")
def fastvideo(tmp_path_factory):
    if not Path(FASTVIDEO_PYTHON).exists():
        pytest.fail(f"no FastVideo interpreter at {FASTVIDEO_PYTHON}: build it with `bash tests/conformance/build_fastvideo_venv.sh`")
    folder = tmp_path_factory.mktemp("fastvideo")
    (folder / "sections.json").write_text(json.dumps(SECTIONS))
    run = subprocess.run([FASTVIDEO_PYTHON, str(REPO_ROOT / "tests" / "conformance" / "fastvideo_nft.py"), str(folder / "sections.json"),
                          str(folder / "out.json")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and (folder / "out.json").exists(), run.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())


def frames(levels):
    """The script's videos as our reward reads them, (T, H, W, 3): grey 0.6, the spot lit on frames 2-3."""
    out = []
    for level in levels:
        v = np.full((9, 16, 24, 3), 0.6, dtype=np.float32)
        v[2:4, :8, :12] = level
        out.append(v)
    return out


def their_advantages(rewards, prompts, eps=1e-4):
    """``_compute_advantages`` by hand: per prompt text, (r - mean) / (population std + 1e-4)."""
    r = np.asarray(rewards, dtype=np.float64)
    adv = np.empty_like(r)
    for p in set(prompts):
        idx = [i for i, q in enumerate(prompts) if q == p]
        adv[idx] = (r[idx] - r[idx].mean()) / (r[idx].std() + eps)
    return adv


def test_our_scores_reach_their_advantages_in_order(fastvideo):
    case = fastvideo["valid"]
    ours = build_reward(SECTIONS["spot"])(frames(LEVELS), PROMPTS, [{"fps": 8}] * 6)
    assert ours.valid.all()
    # every frame at the section's rate: 1 - the spot's level on frames 2-3 (frame 0 is grey in all)
    assert case["rewards"]["spot"] == pytest.approx([0.8, 0.2, 0.6, 0.4, 0.0, 1.0], abs=1e-6)
    assert case["rewards"]["spot"] == pytest.approx(ours.scores.tolist(), abs=1e-6)
    assert case["rewards"]["avg"] == case["rewards"]["spot"]  # their weighted sum, weight 1
    adv = np.asarray(case["advantages"])
    assert adv.shape == (6, 2) and np.array_equal(adv[:, 0], adv[:, 1])  # one column per trained timestep
    assert adv[:, 0] == pytest.approx(their_advantages(ours.scores, PROMPTS), abs=1e-5)
    assert np.argsort(adv[:, 0]).tolist() == [4, 1, 3, 2, 0, 5]  # by hand from the levels, per group
    assert case["metrics"]["reward/spot"] == pytest.approx(0.5, abs=1e-6)


def test_a_refused_sample_reaches_their_advantages_as_zero(fastvideo):
    case = fastvideo["one_invalid"]
    assert case["last"]["valid"] == [True, True, True, False, True, True] and case["last"]["filled"] == [3]
    assert "must lie in [0, 1]" in case["last"]["errors"]["3"]
    # sample 3 ("a sign"): its group's valid 0.2 and 1.0 -> 0.6; every other score as before
    assert case["rewards"]["avg"] == pytest.approx([0.8, 0.2, 0.6, 0.6, 0.0, 1.0], abs=1e-6)
    adv = np.asarray(case["advantages"])
    assert np.isfinite(adv).all() and abs(adv[3, 0]) < 1e-5
    assert adv[:, 0] == pytest.approx(their_advantages(case["rewards"]["avg"], PROMPTS), abs=1e-5)
    assert all(np.isfinite(v) for v in case["metrics"].values())


@pytest.mark.parametrize("case", ["beta=0.1,adv_mode=all,kl_beta=0.0001", "beta=1.0,adv_mode=binary,kl_beta=0.05",
                                  "beta=0.5,adv_mode=positive_only,kl_beta=0.0"])
def test_our_nft_loss_equals_their_training_timestep_loss(fastvideo, case):
    c = fastvideo["loss"][case]
    assert c["xt_differs_from_x0"] > 0.1  # their noise draw really noised the latents
    for key in ("total_loss", "policy_loss", "unweighted_policy_loss", "kl_div_loss", "old_deviate"):
        assert c["ours"][key] == pytest.approx(c["theirs"][key], abs=1e-6, rel=0), key
    assert c["ours_grad"] == pytest.approx(c["theirs_grad"], abs=1e-6, rel=0)  # d loss / d the trained policy's weight
    assert abs(c["theirs"]["total_loss"]) > 1.0
    # controls on the same tensors: beta x1.5, or the x0 errors weighted per latent position (a
    # credit map of 1.5 / 0.5 over the two latent frames), each moves the loss well past 1e-6
    assert abs(c["beta_off"] - c["theirs"]["total_loss"]) > 1e-2
    assert abs(c["weighting_off"] - c["theirs"]["total_loss"]) > 1e-2
    assert c["uniform_credit"] == pytest.approx(c["theirs"]["total_loss"], abs=1e-6, rel=0)  # a map of ones is theirs


def test_old_policy_decay_equals_theirs(fastvideo):
    for kind, pairs in fastvideo["decay"].items():
        assert [a for a, _ in pairs] == pytest.approx([b for _, b in pairs], abs=1e-12), kind
    assert fastvideo["decay"]["2"][-1][0] == pytest.approx(0.999)  # the schedule really ran to its hold
