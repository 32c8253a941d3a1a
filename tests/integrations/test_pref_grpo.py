"""cac_align's rewards inside Pref-GRPO's reward path, through ``install``.

The stand-in checkout (tests/fixtures/pref_grpo_checkout, our words, citing Pref-GRPO 3e787f6)
reproduces their dispatcher and the reward lines of ``train_wan21.py``; the harness below makes
their trainer's calls: one dispatcher per rank, mp4s written at 16 fps with diffusers'
``export_to_video``, ``{"path", "prompt"}`` appended to every reward list, one
``compute_rewards`` call, float32 tensors, then ``compute_weighted_advantages``.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cac_align.integrations import adapter
from cac_align.integrations import pref_grpo
from cac_align.rewards import RewardError, build_reward
from conftest import REPO_ROOT, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "pref_grpo_checkout"
BRIGHT = {"bright": {"name": "brightness"}}
TINY_CAC = {"model": {"name": "tiny-random:qwen3_vl", "dtype": "float32"}, "options": {"mode": "no_cot"}}
TINY_UR = {"model": {"name": "tiny-random:qwen2_5_vl", "dtype": "float32"}, "scoring": "probs", "num_frames": 4}


@pytest.fixture
def theirs(monkeypatch):
    forget_modules("fastvideo")
    monkeypatch.syspath_prepend(str(CHECKOUT))
    dispatcher = importlib.import_module("fastvideo.rewards.dispatcher")
    rollout_io = importlib.import_module("fastvideo.utils.rollout_io")
    yield dispatcher, rollout_io
    pref_grpo.uninstall(dispatcher)
    pref_grpo.configure()
    adapter.release_models()
    forget_modules("fastvideo")


def rollout(theirs, tmp_path, spec, levels, group=2, use_group=True, apply_gdpo=False, corrupt=()):
    """One step of their trainer on one rank; videos are flat grey at ``levels`` (RGB)."""
    dispatcher_module, rollout_io = theirs
    weights = dispatcher_module.parse_reward_spec(spec)
    args = SimpleNamespace(use_group=use_group, num_generations=group)
    dispatcher = dispatcher_module.RewardDispatcher(args=args, device="cpu", reward_weights=weights, modality="video")
    inputs = dispatcher.build_reward_inputs()
    paths = []
    for index, level in enumerate(levels):
        frames = np.broadcast_to(np.asarray(level, dtype=np.float32), (8, 32, 32, 3)).copy()
        path = rollout_io.save_rollout_video(frames, str(tmp_path), f"wan21_0_{index}.mp4", fps=16)
        if index in corrupt:
            with open(path, "wb") as handle:
                handle.write(b"not an mp4")
        paths.append(path)
        for name in inputs:
            inputs[name].append({"path": path, "prompt": f"prompt {index // group}"})
    tensors, dims = dispatcher.compute_rewards(inputs)
    tensors = {k: v.to(torch.float32) for k, v in tensors.items()}
    advantages, per_reward = dispatcher_module.compute_weighted_advantages(
        tensors, weights, gather_tensor=lambda t: t, use_group=use_group, num_generations=group, apply_gdpo=apply_gdpo
    )
    return tensors, dims, advantages, per_reward, paths


def _standardize(values, group):
    """Their per-group standardization by hand: (r - mean) / (unbiased std + 1e-8)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, group)
    return ((v - v.mean(1, keepdims=True)) / (v.std(1, ddof=1, keepdims=True) + 1e-8)).reshape(-1)


def test_our_scores_reach_their_tensors_in_order_and_weights_combine(theirs, tmp_path):
    pref_grpo.install(theirs[0], sections=BRIGHT)
    levels = [[0.2, 0.2, 0.2], [0.6, 0.6, 0.6], [0.9, 0.1, 0.1], [0.3, 0.3, 0.3]]
    tensors, dims, advantages, per_reward, paths = rollout(theirs, tmp_path, '{"bright": 0.7, "redness": 0.3}', levels)
    assert set(tensors) == {"bright", "redness"} and tensors["bright"].dtype == torch.float32
    # in input order: exactly what our reward gives the mp4s their trainer wrote
    direct = build_reward({"name": "brightness"})(paths, [None] * 4)
    assert tensors["bright"].tolist() == pytest.approx(direct.scores.tolist(), abs=1e-6)
    assert tensors["bright"].tolist() == pytest.approx([0.2, 0.6, 0.367, 0.3], abs=0.02)  # lossy mp4, still in order
    assert dims["bright_invalid"] == [0.0] * 4
    # weights combine as their spec says: each reward standardized per group, then 0.7 / 0.3
    expected = 0.7 * _standardize(tensors["bright"].numpy(), 2) + 0.3 * _standardize(tensors["redness"].numpy(), 2)
    assert advantages.numpy() == pytest.approx(expected, abs=1e-5)


def test_an_invalid_sample_gets_advantage_zero_and_is_counted(theirs, tmp_path, caplog):
    pref_grpo.install(theirs[0], sections=BRIGHT)
    levels = [0.2, 0.6, 0.4, 0.8]
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.pref_grpo"):
        tensors, dims, advantages, per_reward, paths = rollout(theirs, tmp_path, "bright", levels, corrupt={1})
    # sample 1 (group 0) could not be decoded: filled with its group's valid mean (sample 0)
    assert tensors["bright"][1].item() == pytest.approx(tensors["bright"][0].item())
    assert per_reward["bright"][:2].tolist() == [0.0, 0.0]  # its group teaches nothing
    assert dims["bright_invalid"] == [0.0, 1.0, 0.0, 0.0]
    assert np.isfinite(advantages.numpy()).all() and advantages[2].item() < 0 < advantages[3].item()
    assert "1 of 4 samples could not be scored" in caplog.text and "wan21_0_1.mp4" in caplog.text
    assert pref_grpo.invalid_counts()["invalid"] >= 1


def test_why_nan_is_refused_one_nan_spreads_to_every_advantage(theirs):
    # their own advantage code with one NaN reward: GDPO (their scripts' setting) and the global default
    dispatcher_module, _ = theirs
    rewards = {"x": torch.tensor([0.1, float("nan"), 0.5, 0.7])}
    for kwargs in ({"use_group": True, "apply_gdpo": True}, {"use_group": False}):
        advantages, _ = dispatcher_module.compute_weighted_advantages(rewards, {"x": 1.0}, gather_tensor=lambda t: t, num_generations=2, **kwargs)
        assert torch.isnan(advantages).all()
    with pytest.raises(ValueError, match="cannot mask or drop"):
        pref_grpo.configure(BRIGHT, invalid="drop")


def test_too_many_invalid_samples_stop_the_run(theirs, tmp_path):
    pref_grpo.install(theirs[0], sections=BRIGHT)
    with pytest.raises(RewardError, match=r"3 of 4 samples .* max_invalid_fraction=0.5.*wan21_0_0.mp4: "):
        rollout(theirs, tmp_path, "bright", [0.2, 0.6, 0.4, 0.8], corrupt={0, 1, 2})
    # every sample invalid: the stop names each reason (the first three, and the count)
    with pytest.raises(RewardError, match=r"no sample in this reward call could be scored.*4 failed: sample 0: .+; sample 1: .+; and 1 more"):
        rollout(theirs, tmp_path, "bright", [0.2, 0.6, 0.4, 0.8], corrupt={0, 1, 2, 3})
    pref_grpo.configure(BRIGHT, invalid="fail")
    with pytest.raises(RewardError, match=r"invalid='fail': 1 failed: sample 3: .+"):
        rollout(theirs, tmp_path, "bright", [0.2, 0.6, 0.4, 0.8], corrupt={3})


def test_names_theirs_alone_and_clashes(theirs, tmp_path):
    dispatcher_module, _ = theirs
    with pytest.raises(ValueError, match="Unsupported reward name: bright"):  # before install: their check
        rollout(theirs, tmp_path, "bright", [0.2, 0.4])
    pref_grpo.install(dispatcher_module, sections=BRIGHT)
    assert {"bright", "cac", "unified_reward", "ur_cac", "redness"} <= dispatcher_module.SUPPORTED_REWARDS
    tensors, dims, _, _, _ = rollout(theirs, tmp_path, "redness", [[0.8, 0.1, 0.1], [0.2, 0.1, 0.1]])
    assert set(tensors) == {"redness"} and set(dims) == {"redness"}  # only their names: only their code
    with pytest.raises(ValueError, match="Unsupported reward name: brigth"):
        rollout(theirs, tmp_path, "brigth", [0.2, 0.4])
    with pytest.raises(ValueError, match=r"\['videoalign'\] are Pref-GRPO's own"):
        pref_grpo.install(dispatcher_module, sections={"videoalign": {"name": "brightness"}})
    with pytest.raises(ValueError, match="unknown key 'modle'"):
        pref_grpo.configure({"cac": {"name": "cac", "modle": {}}})
    pref_grpo.uninstall(dispatcher_module)
    assert "bright" not in dispatcher_module.SUPPORTED_REWARDS and "redness" in dispatcher_module.SUPPORTED_REWARDS


def test_ur_cac_on_tiny_models_one_copy_per_process(theirs, tmp_path):
    pref_grpo.install(theirs[0], sections={"ur_cac": {"name": "ur_cac", "cac": TINY_CAC, "unified_reward": TINY_UR},
                                           "cac": {"name": "cac", **TINY_CAC}})
    levels = [0.2, 0.6, 0.4, 0.8]
    tensors, dims, advantages, _, paths = rollout(theirs, tmp_path, '{"ur_cac": 1.0, "cac": 0.5}', levels)
    rollout(theirs, tmp_path, '{"ur_cac": 1.0}', levels)  # a second dispatcher (e.g. another run in the process)
    assert len(adapter.loaded_models()) == 2  # the tiny CaC and the tiny UnifiedReward, once each
    direct = build_reward({"name": "ur_cac", "cac": TINY_CAC, "unified_reward": TINY_UR})(paths, [f"prompt {i // 2}" for i in range(4)])
    assert tensors["ur_cac"].tolist() == pytest.approx(direct.scores.tolist(), abs=1e-6)
    assert ((tensors["cac"] > 0) & (tensors["cac"] < 1)).all() and np.isfinite(advantages.numpy()).all()


@pytest.mark.slow  # ~9 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_launcher_installs_before_their_script_runs(tmp_path):
    sections = tmp_path / "rewards.yaml"
    sections.write_text("bright:\n  name: brightness\n")
    result = subprocess.run(
        [sys.executable, "-m", "cac_align.integrations.pref_grpo", "--rewards", str(sections), "fastvideo/train_toy.py",
         "--reward_spec", '{"bright": 1.0}', "--levels", "0.2,0.6,0.4,0.4", "--use_group", "--output_dir", str(tmp_path / "out")],
        cwd=CHECKOUT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["rewards"]["bright"] == pytest.approx([0.2, 0.6, 0.4, 0.4], abs=0.02)
    assert out["advantages"][0] < 0 < out["advantages"][1] and out["advantages"][2:] == [0.0, 0.0]  # a tied group
