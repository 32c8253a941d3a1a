"""cac_align's rewards as a miles custom API reward actor, loaded and called as miles does.

The stand-in (tests/fixtures/miles_checkout, our words, citing miles d9c69c4 and a380f76) reads
``--custom-api-rm-config``, imports ``actor_class`` (which must subclass their ``ApiRewardActor``),
ships class and ``actor_kwargs`` as Ray does (pickled), and scores each sample's ``(C, T, H, W)``
float video as a batch of one, up to ``max_concurrency`` at once, refusing a non-finite score.
"""

from __future__ import annotations

import base64
import importlib
import logging
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

from cac_align.integrations import adapter
from cac_align.rewards import RewardError
from cac_align.rewards.base import BatchReward
from conftest import REPO_ROOT, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "miles_checkout"
OURS = "cac_align.integrations.miles.CacAlignRewardActor"


@pytest.fixture
def theirs(monkeypatch):
    forget_modules("miles")
    monkeypatch.syspath_prepend(str(CHECKOUT))
    sys.modules.pop("cac_align.integrations.miles", None)  # our class subclasses theirs: build it anew
    yield SimpleNamespace(api=importlib.import_module("miles.rollout.rm_hub.api"), config=importlib.import_module("miles.utils.api_rm_config"),
                          types=importlib.import_module("miles.utils.types"))
    adapter.release_models()
    forget_modules("miles")
    sys.modules.pop("cac_align.integrations.miles", None)


class FrameProbe(BatchReward):
    """Scores ``100 x fps + frames``: what reached the reward, readable off the number."""

    name = "frame_probe"
    needs_prompt = False

    def score_batch(self, requests):
        return [{"score": 100.0 * video.fps + video.num_frames} for video, _ in requests]


def make_probe(source_fps: float | None = None) -> FrameProbe:
    probe = FrameProbe()
    probe.source_fps = source_fps
    return probe


def rollout(theirs, tmp_path, actor_kwargs, videos, prompts=None, concurrency=4):
    """Their reward step: the config file read by their loader, then every sample scored."""
    path = tmp_path / "cac_reward.yaml"
    path.write_text(yaml.safe_dump({"actor_class": OURS, "max_concurrency": concurrency, "actor_kwargs": actor_kwargs}))
    config = theirs.config.load_api_rm_config(str(path))
    samples = [theirs.types.Sample(prompt=(prompts or ["a cat"] * len(videos))[i], generated_output=v) for i, v in enumerate(videos)]
    return theirs.api.custom_api_rm(config, samples), samples


def cthw(levels, frames=5, size=8):
    """A (C, T, H, W) float video per list of frame levels in [0, 1] (their generated_output)."""
    return torch.stack([torch.full((3, size, size), level) for level in levels], dim=1)


def test_scores_every_frame_in_order_through_their_pool(theirs, tmp_path):
    bright = {"bright": {"name": "brightness"}}
    videos = [cthw([0.0, 0.0, 0.0, 0.0, 1.0]), cthw([0.6] * 5), cthw([0.2, 0.4, 0.6, 0.8, 1.0]), cthw([0.0] * 5)]
    rewards, samples = rollout(theirs, tmp_path, {"reward": "bright", "sections": bright, "fps": 16}, videos)
    # every frame read: one white frame in five is 0.2 (their built-in judge reads a single frame); uint8 rounding
    # of 0.6 is 153/255; the samples keep their order through 4 threads
    assert rewards == pytest.approx([0.2, 153 / 255, (51 + 102 + 153 + 204 + 255) / 5 / 255, 0.0], abs=1e-9)
    assert [s.reward for s in samples] == rewards
    from cac_align.integrations.miles import CacAlignRewardActor, invalid_counts

    assert issubclass(CacAlignRewardActor, theirs.api.ApiRewardActor) and invalid_counts() == {"scored": 4, "invalid": 0}


def test_the_frame_rate_given_reaches_the_reward_and_none_is_guessed(theirs, tmp_path):
    probe = {"probe": {"name": "test_miles:make_probe"}}
    rewards, _ = rollout(theirs, tmp_path, {"reward": "probe", "sections": probe, "fps": 24}, [cthw([0.5] * 7, frames=7)])
    assert rewards == [2407.0]  # 24 fps, all 7 frames
    with pytest.raises(ValueError, match=r"no frame rate .* set fps in actor_kwargs .*Wan-2.1 16"):
        rollout(theirs, tmp_path, {"reward": "probe", "sections": probe}, [cthw([0.5] * 3)])
    from_section = {"probe": {"name": "test_miles:make_probe", "source_fps": 8}}  # the section's own rate, when stated
    assert rollout(theirs, tmp_path, {"reward": "probe", "sections": from_section}, [cthw([0.5] * 3)])[0] == [803.0]


def test_an_invalid_sample_stops_the_rollout_unless_a_value_is_chosen(theirs, tmp_path, caplog):
    bright = {"bright": {"name": "brightness"}}
    broken = cthw([0.5] * 5)
    broken[0, 2] = float("nan")  # a decoded video with NaN in one frame
    with pytest.raises(RewardError, match=r"miles reward 'bright': a sample could not be scored \(.*NaN or inf.*\); miles cannot leave"):
        rollout(theirs, tmp_path, {"reward": "bright", "sections": bright, "fps": 16}, [cthw([0.5] * 5), broken])
    kwargs = {"reward": "bright", "sections": bright, "fps": 16, "invalid": "value", "invalid_value": 0.5}
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.miles"):
        rewards, _ = rollout(theirs, tmp_path, kwargs, [cthw([0.2] * 5), broken])
    assert rewards == pytest.approx([51 / 255, 0.5]) and "got invalid_value 0.5: " in caplog.text and "NaN or inf" in caplog.text
    for bad, message in (({"invalid": "value"}, "needs invalid_value"), ({"invalid": "value", "invalid_value": float("nan")}, "must be finite"),
                         ({"invalid": "zero"}, "invalid must be one of"), ({"invalid_value": 0.0}, "only with invalid: value")):
        with pytest.raises(ValueError, match=message):
            rollout(theirs, tmp_path, {"reward": "bright", "sections": bright, "fps": 16, **bad}, [cthw([0.5] * 5)])


def test_their_loader_refuses_another_class_and_reads_a_base64_config(theirs, tmp_path):
    with pytest.raises(TypeError, match="not an ApiRewardActor subclass"):
        theirs.api.load_actor_class("test_miles.FrameProbe")
    text = yaml.safe_dump({"actor_class": OURS, "actor_kwargs": {"reward": "brightness", "fps": 16}})
    config = theirs.config.load_api_rm_config("base64:" + base64.b64encode(text.encode()).decode())
    samples = [theirs.types.Sample(prompt="a cat", generated_output=cthw([1.0] * 3))]
    assert theirs.api.custom_api_rm(config, samples) == [1.0] and config["max_concurrency"] == 8
    with pytest.raises(ValueError, match=r"expected a video \(C=3, T, H, W\), got shape \(5, 3, 8, 8\)"):  # (T, C, H, W) given
        theirs.api.custom_api_rm(config, [theirs.types.Sample(prompt="a", generated_output=cthw([1.0] * 5).permute(1, 0, 2, 3))])


def test_a_served_judge_scores_their_samples(theirs, tmp_path):
    """A ``backend: openai`` section: the actor only sends requests (a local server speaking vLLM's
    chat protocol, tests/chat_server.py); scores equal the same reward called directly."""
    from chat_server import ChatServer

    from cac_align.rewards import build_reward

    with ChatServer() as server:
        section = {"name": "cac", "model": {"backend": "openai", "name": "cac", "base_url": server.url, "max_retries": 0}}
        videos = [cthw([0.1, 0.5, 0.9, 0.5, 0.1], size=32), cthw([0.7] * 5, size=32)]
        rewards, _ = rollout(theirs, tmp_path, {"reward": "cac", "sections": {"cac": section}, "fps": 8}, videos, concurrency=2)
        direct = build_reward(section)([v.permute(1, 0, 2, 3) for v in videos], ["a cat"] * 2, [{"fps": 8}] * 2)
    assert direct.valid.all() and rewards == pytest.approx(direct.scores.tolist())
    assert [m for m in adapter.loaded_models() if '"openai"' in m]  # a client, no model in this process


def test_no_soundtrack_reaches_a_reward_that_hears_under_miles(theirs, tmp_path):
    """Issue #100, item 6 (docs/audio.md, "Inside other trainers"): their sample is frames only, so a reward that hears
    (the toy `loudness`) finds no soundtrack: under `invalid: fail` the rollout stops saying so, never a made-up score."""
    sections = {"loud": {"name": "loudness"}}
    with pytest.raises(RewardError, match=r"miles reward 'loud': a sample could not be scored \(.*soundtrack"):
        rollout(theirs, tmp_path, {"reward": "loud", "sections": sections, "fps": 16}, [cthw([0.5] * 5)])


def test_the_sound_sections_example_validates():
    """examples/sound_rewards.yaml's sections (docs/audio.md) are valid reward sections, each that hears."""
    from cac_align.rewards.registry import REWARDS, reward_config

    sections = yaml.safe_load((REPO_ROOT / "examples" / "sound_rewards.yaml").read_text())
    assert sorted(sections) == ["audiobox", "clap", "sync"]
    for key, section in sections.items():
        assert reward_config(section, key)[0] == key and key in REWARDS
