"""Our rewards in VideoAlign's inferencer shape, inside DanceGRPO's reward lines.

The stand-in script (tests/fixtures/dance_grpo_checkout/fastvideo/train_toy.py, our words, citing
DanceGRPO 15cc71d) imports ``VideoVLMRewardInference`` inside ``main()`` as their Hunyuan script
does, scores one mp4 per call, trains on ``VQ`` and turns any ``Exception`` into -1.0.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import subprocess
import sys

import numpy as np
import pytest

from cac_align.integrations import adapter, dance_grpo
from cac_align.rewards import build_reward
from conftest import REPO_ROOT, TINY_UR_CAC, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "dance_grpo_checkout"
SCRIPT = CHECKOUT / "fastvideo" / "train_toy.py"
BRIGHT = {"bright": {"name": "brightness"}}


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.syspath_prepend(str(CHECKOUT))
    yield
    sys.modules.pop(dance_grpo.THEIR_MODULE, None)
    forget_modules("fastvideo")
    dance_grpo.configure()
    adapter.release_models()


def their_step(tmp_path, levels, corrupt=()):
    argv = ["train_toy.py", "--levels", ",".join(map(str, levels)), "--corrupt", ",".join(map(str, corrupt)), "--out", str(tmp_path)]
    out = io.StringIO()
    saved = sys.argv
    try:
        sys.argv = argv
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = saved
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_the_shape_their_script_reads(installed, tmp_path):
    dance_grpo.install(BRIGHT, reward="bright")
    result = their_step(tmp_path, [0.2, 0.6, 0.8, 0.4])
    paths = [str(tmp_path / f"hunyuan_0_{i}.mp4") for i in range(4)]
    direct = build_reward({"name": "brightness"})(paths, [None] * 4).scores
    assert result["VQ"] == pytest.approx(direct.tolist(), abs=1e-6) and result["MQ"] == result["VQ"]
    assert result["VQ"] == pytest.approx([0.2, 0.6, 0.8, 0.4], abs=0.02)  # in input order
    assert result["advantages"] == pytest.approx([-0.7071, 0.7071, 0.7071, -0.7071], abs=1e-3)  # per group of 2
    inferencer = dance_grpo.VideoVLMRewardInference("./videoalign_ckpt", device="cpu")
    out = inferencer.reward(paths[:2], ["a", "a"], use_norm=True)
    assert [sorted(d) for d in out] == [["MQ", "Overall", "TA", "VQ", "reward"]] * 2
    assert out[1]["Overall"] == out[1]["VQ"] == pytest.approx(direct[1]) and out[1]["reward"] == "bright"
    with pytest.raises(ValueError, match=r"\['fps'\]: the reward samples frames as its section says"):
        inferencer.reward(paths[:1], ["a"], fps=2.0)


def test_a_sample_we_cannot_score_stops_the_run_not_minus_one(installed, tmp_path):
    dance_grpo.install(BRIGHT, reward="bright")
    with pytest.raises(dance_grpo.RewardStop, match=r"could not score .*hunyuan_0_1.mp4: could not decode video .*\(invalid: stop\)"):
        their_step(tmp_path, [0.2, 0.6, 0.8, 0.4], corrupt={1})
    assert not issubclass(dance_grpo.RewardStop, Exception)  # their `except Exception` cannot turn it into -1.0


def test_fill_uses_the_groups_earlier_scores_then_stops(installed, tmp_path):
    dance_grpo.install(BRIGHT, reward="bright", invalid="fill")
    result = their_step(tmp_path, [0.2, 0.6, 0.8, 0.4], corrupt={1})
    assert result["VQ"][1] == result["VQ"][0] != -1.0 and result["advantages"][:2] == [0.0, 0.0]
    with pytest.raises(dance_grpo.RewardStop, match="no earlier valid sample"):
        their_step(tmp_path, [0.2, 0.6, 0.8, 0.4], corrupt={2})  # the first of its group
    dance_grpo.install(reward="bright", invalid="fill", max_invalid=0)
    with pytest.raises(dance_grpo.RewardStop, match="max_invalid=0"):
        their_step(tmp_path, [0.2, 0.6, 0.8, 0.4], corrupt={1})


def test_ur_cac_on_tiny_models(installed, tmp_path):
    dance_grpo.install({"ur_cac": {"name": "ur_cac", **TINY_UR_CAC}})  # ur_cac is the default name
    result = their_step(tmp_path, [0.2, 0.6])
    paths = [str(tmp_path / f"hunyuan_0_{i}.mp4") for i in range(2)]
    direct = build_reward({"name": "ur_cac", **TINY_UR_CAC})(paths, ["prompt 0", "prompt 0"]).scores
    # scored one video per call, as their script does; ur_cac's normalizers are fixed-range, so equal
    assert result["VQ"] == pytest.approx(direct.tolist(), abs=1e-6) and np.isfinite(result["advantages"]).all()


def test_launcher_puts_our_class_where_their_import_looks(tmp_path):
    sections = tmp_path / "rewards.yaml"
    sections.write_text("bright:\n  name: brightness\n")
    result = subprocess.run(
        [sys.executable, "-m", "cac_align.integrations.dance_grpo", "--rewards", str(sections), "--reward", "bright",
         "fastvideo/train_toy.py", "--levels", "0.2,0.6", "--out", str(tmp_path / "videos")],
        cwd=CHECKOUT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["VQ"] == pytest.approx([0.2, 0.6], abs=0.02)
