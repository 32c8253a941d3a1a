"""cac_align's rewards as Flow-Factory reward models, loaded and called as their trainer does.

The stand-in (tests/fixtures/flow_factory_checkout, our words, citing Flow-Factory a0b2bc5) loads a
reward entry by class path with unknown keys in ``extra_kwargs``, calls a groupwise model once per
prompt group with ``(T, C, H, W)`` float videos in [0, 1], and combines rewards by weight.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cac_align.integrations import adapter
from cac_align.rewards import RewardError, build_reward
from conftest import REPO_ROOT, TINY_UR_CAC, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "flow_factory_checkout"
OURS = "cac_align.integrations.flow_factory.CacAlignReward"


@pytest.fixture
def theirs(monkeypatch):
    forget_modules("flow_factory")
    monkeypatch.syspath_prepend(str(CHECKOUT))
    sys.modules.pop("cac_align.integrations.flow_factory", None)  # our class subclasses theirs: build it anew
    yield SimpleNamespace(
        hparams=importlib.import_module("flow_factory.hparams"),
        registry=importlib.import_module("flow_factory.rewards.registry"),
        step=importlib.import_module("flow_factory.step"),
    )
    adapter.release_models()
    forget_modules("flow_factory")
    sys.modules.pop("cac_align.integrations.flow_factory", None)


def load(theirs, entry):
    config = theirs.hparams.RewardArguments.from_dict({"device": "cpu", "dtype": "float32", **entry})
    return config, theirs.registry.load_reward_model(config, SimpleNamespace(device=torch.device("cpu")))


def samples(levels, group=2):
    return [{"prompt": f"prompt {i // group}", "unique_id": i // group, "video": torch.full((6, 3, 16, 16), level)} for i, level in enumerate(levels)]


def test_scores_in_order_weights_combine(theirs):
    config, ours = load(theirs, {"name": "bright", "reward_model": OURS, "weight": 2.0, "sections": {"bright": {"name": "brightness"}}, "fps": 16})
    _, constant = load(theirs, {"name": "const", "reward_model": "constant", "weight": 1.0, "batch_size": 3})
    from flow_factory.rewards.abc import GroupwiseRewardModel

    assert isinstance(ours, GroupwiseRewardModel) and config.extra_kwargs == {"sections": {"bright": {"name": "brightness"}}, "fps": 16}
    batch = samples([0.2, 0.6, 0.8, 0.4])
    rewards = theirs.step.rewards_for({"bright": ours, "const": constant}, batch)
    assert rewards["bright"].dtype == torch.float32
    assert rewards["bright"].tolist() == pytest.approx([0.2, 0.6, 0.8, 0.4], abs=1e-6)  # input order, exact (no codec)
    adv = theirs.step.weighted_sum_advantages(rewards, {"bright": 2.0, "const": 1.0}, batch)
    total = 2.0 * np.array([0.2, 0.6, 0.8, 0.4]) + 0.5
    expected = np.concatenate([(g - g.mean()) / g.std() for g in total.reshape(2, 2)])
    assert adv == pytest.approx(expected, abs=1e-5)


def test_an_invalid_sample_gets_its_groups_mean(theirs, caplog):
    _, ours = load(theirs, {"name": "bright", "reward_model": OURS, "sections": {"bright": {"name": "brightness"}}, "fps": 16})
    batch = samples([0.2, 0.6, 0.4, 0.8, 0.3, 0.5], group=3)
    batch[1]["video"] = torch.full((6, 3, 16, 16), float("nan"))  # broken frames: brightness cannot score it
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.flow_factory"):
        rewards = theirs.step.rewards_for({"bright": ours}, batch)
    assert rewards["bright"][1].item() == pytest.approx(0.3)  # mean of 0.2 and 0.4, its group's valid samples
    assert torch.isfinite(rewards["bright"]).all() and "1 of 3 samples of a group" in caplog.text
    batch[0]["video"] = batch[1]["video"]
    with pytest.raises(RewardError, match=r"2 of the 3 samples of prompt 'prompt 0'.*sample 0: .*NaN or inf"):
        theirs.step.rewards_for({"bright": ours}, batch)
    # a group none of whose samples could be scored: the stop says why, sample by sample
    batch[2]["video"] = batch[1]["video"]
    with pytest.raises(RewardError, match=r"no sample in this reward call could be scored.* 3 failed: sample 0: .*NaN or inf; sample 1: .*; sample 2: "):
        theirs.step.rewards_for({"bright": ours}, batch)
    _, failing = load(theirs, {"name": "bright", "reward_model": OURS, "sections": {"bright": {"name": "brightness", "source_fps": 16}}, "invalid": "fail"})
    batch = samples([0.2, 0.6, 0.4, 0.8, 0.3, 0.5], group=3)
    batch[4]["video"] = torch.full((6, 3, 16, 16), float("nan"))
    with pytest.raises(RewardError, match=r"invalid='fail': 1 failed: sample 1: .*NaN or inf"):  # sample 1 of its group's call
        theirs.step.rewards_for({"bright": failing}, batch)


def test_config_errors_name_the_key(theirs):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sectoins'\]"):
        load(theirs, {"name": "ur_cac", "reward_model": OURS, "sectoins": "x.yaml"})
    with pytest.raises(ValueError, match="invalid must be one of"):
        load(theirs, {"name": "ur_cac", "reward_model": OURS, "invalid": "drop"})
    with pytest.raises(ValueError, match="unknown reward 'urcac'; did you mean 'ur_cac'"):
        load(theirs, {"name": "urcac", "reward_model": OURS})


def test_ur_cac_on_tiny_models_sections_from_the_environment(theirs, tmp_path, monkeypatch):
    import yaml

    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump({"ur_cac": {"name": "ur_cac", **TINY_UR_CAC}}))
    monkeypatch.setenv(adapter.ENV_SECTIONS, str(path))
    _, ours = load(theirs, {"name": "ur_cac", "reward_model": OURS, "fps": 16})
    _, again = load(theirs, {"name": "eval_ur_cac", "reward_model": OURS, "reward": "ur_cac", "fps": 16})
    assert len(adapter.loaded_models()) == 2  # two entries, one copy of each tiny model
    batch = samples([0.2, 0.6, 0.8, 0.4])
    rewards = theirs.step.rewards_for({"ur_cac": ours}, batch)
    direct = build_reward({"name": "ur_cac", **TINY_UR_CAC})([s["video"] for s in batch[:2]], ["prompt 0"] * 2, [{"group": 0}] * 2)
    assert rewards["ur_cac"][:2].tolist() == pytest.approx(direct.scores.tolist(), abs=1e-6)
    assert torch.isfinite(rewards["ur_cac"]).all()


def test_the_frame_rate_is_the_entrys_or_the_sections_never_a_guess(theirs):
    """Their samples reach a reward with no frame rate. Frames 0-3 dark in the spot, 4-8 bright:
    the window [0.25, 0.5) s is frames 4-7 at 16 fps (bright: 0.0), frames 2-3 at 8 fps (dark: 1.0)."""
    spot = {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}
    with pytest.raises(ValueError, match=r"no frame rate .*set fps in its rewards entry .*\(Wan-2\.1 16, Wan2\.2 / LTX-2 24\)"):
        load(theirs, {"name": "spot", "reward_model": OURS, "sections": {"spot": spot}})
    video = torch.full((9, 3, 32, 48), 0.5)
    video[:4, :, :16, :24], video[4:, :, :16, :24] = 0.0, 1.0
    batch = [{"prompt": "p", "unique_id": 0, "video": video.clone()} for _ in range(2)]
    for entry, expected in (({"fps": 16}, 0.0), ({"fps": 8}, 1.0), ({"sections": {"spot": {**spot, "source_fps": 8}}}, 1.0)):
        _, ours = load(theirs, {"name": "spot", "reward_model": OURS, "sections": {"spot": spot}, **entry})
        assert theirs.step.rewards_for({"spot": ours}, batch)["spot"].tolist() == pytest.approx([expected] * 2)
