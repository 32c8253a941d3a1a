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
import types

import numpy as np
import pytest

from cac_align.integrations import adapter, dance_grpo
from cac_align.rewards import build_reward
from cac_align.rewards.base import RewardError
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
    dance_grpo.reset()
    adapter.release_models()


def their_step(tmp_path, levels, corrupt=(), *extra):
    argv = ["train_toy.py", "--levels", ",".join(map(str, levels)), "--corrupt", ",".join(map(str, corrupt)), "--out", str(tmp_path), *extra]
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
    with pytest.raises(dance_grpo.RewardStop, match=r"\['fps'\]: the reward samples frames as its section says"):
        inferencer.reward(paths[:1], ["a"], fps=2.0)


def test_a_sample_we_cannot_score_stops_the_run_not_minus_one(installed, tmp_path):
    dance_grpo.install(BRIGHT, reward="bright")
    with pytest.raises(dance_grpo.RewardStop, match=r"could not score .*hunyuan_0_1.mp4: could not decode video .*\(invalid: stop\)"):
        their_step(tmp_path, [0.2, 0.6, 0.8, 0.4], corrupt={1})
    assert not issubclass(dance_grpo.RewardStop, Exception)  # their `except Exception` cannot turn it into -1.0


def their_handler_turns(exc):
    """What their ``except Exception`` (train_grpo_hunyuan.py 274-278) does with ``exc``: the
    -1.0 it trains on, or the exception itself when it passes the handler."""
    try:
        raise exc
    except Exception:
        return -1.0


def test_a_refusal_of_the_reward_itself_stops_the_run_not_minus_one(installed, tmp_path):
    # the reward's own section says invalid: fail, so the reward raises RewardError (a RuntimeError)
    dance_grpo.install({"strict": {"name": "combined", "components": [{"name": "brightness"}], "invalid": "fail"}}, reward="strict")
    with pytest.raises(dance_grpo.RewardStop, match=r"reward 'strict' on \[.*hunyuan_0_1.mp4'\]: RewardError: .*could not decode video") as stopped:
        their_step(tmp_path, [0.2, 0.6, 0.8, 0.4], corrupt={1})
    assert isinstance(stopped.value.__cause__, RewardError)
    assert their_handler_turns(RewardError("x")) == -1.0  # what it would have been
    with pytest.raises(dance_grpo.RewardStop):
        their_handler_turns(dance_grpo.RewardStop("x"))
    # a wrong call is no -1.0 either
    inferencer = dance_grpo.VideoVLMRewardInference("./videoalign_ckpt", device="cpu")
    with pytest.raises(dance_grpo.RewardStop, match=r"ValueError: \['fps'\]"):
        inferencer.reward([str(tmp_path / "hunyuan_0_0.mp4")], ["a"], fps=2.0)


def test_fill_groups_start_fresh_each_step(installed, tmp_path):
    # one prompt, a group of 2 per step; step 2's first sample cannot be scored: nothing of its
    # group is scored yet, so it stops, rather than borrowing step 1's scores of the same prompt
    dance_grpo.install(BRIGHT, reward="bright", invalid="fill", group_size=2)
    with pytest.raises(dance_grpo.RewardStop, match="no earlier valid sample"):
        their_step(tmp_path, [0.2, 0.6], {2}, "--steps", "2", "--num_generations", "2")
    # its second sample fills from the first of the same step
    result = their_step(tmp_path, [0.2, 0.6], {3}, "--steps", "2", "--num_generations", "2")
    assert result["VQ"][3] == result["VQ"][2] == pytest.approx(0.2, abs=0.02) and result["advantages"][2:] == [0.0, 0.0]
    with pytest.raises(ValueError, match="group_size"):
        dance_grpo.configure(BRIGHT, reward="bright", invalid="fill", group_size=0)


def test_the_one_line_swap_reads_the_sections_and_name_from_the_environment(installed, tmp_path, monkeypatch):
    sections = tmp_path / "rewards.yaml"
    sections.write_text("bright:\n  name: brightness\n")
    monkeypatch.setenv(adapter.ENV_SECTIONS, str(sections))
    monkeypatch.setenv(dance_grpo.ENV_REWARD, "bright")
    # their import line, swapped for ours: no install(), no configure()
    module = types.ModuleType(dance_grpo.THEIR_MODULE)
    module.VideoVLMRewardInference = dance_grpo.VideoVLMRewardInference
    monkeypatch.setitem(sys.modules, dance_grpo.THEIR_MODULE, module)
    result = their_step(tmp_path, [0.2, 0.6])
    assert result["VQ"] == pytest.approx([0.2, 0.6], abs=0.02)  # brightness, not the default ur_cac's hub checkpoints
    assert dance_grpo.VideoVLMRewardInference(device="cpu").name == "bright"
    monkeypatch.setenv(dance_grpo.ENV_REWARD, "brigth")
    dance_grpo.reset()
    with pytest.raises(ValueError, match="unknown reward 'brigth'; did you mean 'bright'"):
        dance_grpo.VideoVLMRewardInference(device="cpu")


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


@pytest.mark.slow  # ~7 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_launcher_puts_our_class_where_their_import_looks_and_reads_their_group_size(tmp_path):
    sections = tmp_path / "rewards.yaml"
    sections.write_text("bright:\n  name: brightness\n")
    # two steps of one prompt's group of 2; step 2's second video cannot be scored and is filled.
    # With their --num_generations 2 read, its group is step 2's alone: the fill is step 2's first
    # score (0.2); with the default 16 it would be the mean of all three earlier ones (0.33).
    result = subprocess.run(
        [sys.executable, "-m", "cac_align.integrations.dance_grpo", "--rewards", str(sections), "--reward", "bright", "--invalid", "fill",
         "fastvideo/train_toy.py", "--levels", "0.2,0.6", "--steps", "2", "--num_generations", "2", "--corrupt", "3", "--out", str(tmp_path / "videos")],
        cwd=CHECKOUT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    vq = json.loads(result.stdout.strip().splitlines()[-1])["VQ"]
    assert vq[:3] == pytest.approx([0.2, 0.6, 0.2], abs=0.02) and vq[3] == vq[2]  # brightness, ours, filled within its step
