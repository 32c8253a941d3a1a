"""cac_align's rewards as verl-omni reward functions, loaded and called as their reward loop does.

The stand-in (tests/fixtures/verl_omni_checkout, our words, citing verl-omni a1139ba and verl 0.9.1)
loads reward functions by ``path``/``name`` with the entry's other keys as keyword arguments,
calls them once per sample, concurrently within a worker's chunk, with uint8 frames, sums
``weight * score`` and assembles metrics with the keys of sample 0. The same manager runs inside
real verl in tests/conformance/test_verl_reward_loop.py.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cac_align.integrations import adapter, verl_omni
from cac_align.rewards import build_reward
from cac_align.rewards.toy import BrightnessReward
from cac_align.video import VideoError
from conftest import REPO_ROOT, TINY_UR_CAC, forget_modules

CHECKOUT = REPO_ROOT / "tests" / "fixtures" / "verl_omni_checkout"
OURS = {"path": "pkg://cac_align.integrations.verl_omni", "name": "compute_score", "fps": 16}
BRIGHT = {"bright": {"name": "brightness"}}


@pytest.fixture
def theirs(monkeypatch):
    forget_modules("verl_omni")
    sys.modules.pop("verl_parts", None)
    sys.modules.pop("user_rewards", None)
    monkeypatch.syspath_prepend(str(CHECKOUT))
    yield SimpleNamespace(
        manager=importlib.import_module("verl_omni.reward_loop.reward_manager"),
        parts=importlib.import_module("verl_parts"),
    )
    adapter.release_models()
    verl_omni._BATCHERS.clear()
    forget_modules("verl_omni")
    sys.modules.pop("verl_parts", None)


def manager(theirs, entries, reward=None, router=None):
    config = OmegaConf.create({"reward": {"reward_functions": entries, **(reward or {})}})
    return theirs.manager.MultiVisualRewardManager(config, tokenizer=None, compute_score=None, reward_router_address=router)


def batch(theirs, levels, group=2, size=16):
    """Wan-shaped responses (B, T, C, H, W) uint8, one prompt per ``group`` samples."""
    frames = torch.stack([torch.full((6, 3, size, size), level, dtype=torch.uint8) for level in levels])
    n = len(levels)
    return theirs.parts.Batch(
        {"responses": frames},
        {
            "data_source": np.array(["t2v"] * n, dtype=object),
            "reward_model": np.array([{"ground_truth": f"prompt {i // group}"} for i in range(n)], dtype=object),
            "extra_info": np.array([{} for _ in range(n)], dtype=object),
        },
    )


def grpo_advantages(scores, group):
    """verl-omni's outcome advantage with its defaults (diffusion_algos.py 192-275): minus the
    prompt group's mean, over the whole batch's std."""
    s = torch.as_tensor(scores, dtype=torch.float32)
    means = s.view(-1, group).mean(dim=1).repeat_interleave(group)
    return (s - means) / (torch.std(s) + 1e-4)


def test_scores_in_order_weights_combine(theirs):
    entries = {
        "bright": {**OURS, "weight": 2.0, "required": True, "reward": "bright", "sections": BRIGHT},
        "half": {"path": str(CHECKOUT / "user_rewards.py"), "name": "constant_half", "weight": 1.0},  # a file path: executed by their loader
    }
    levels = [51, 153, 204, 102, 0, 255]  # brightness 0.2, 0.6, 0.8, 0.4, 0, 1
    rm_scores, metrics = theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, levels), num_workers=4)
    bright = np.array(levels) / 255.0
    assert rm_scores.shape == (6, 1) and rm_scores.dtype == torch.float32
    assert rm_scores[:, 0].tolist() == pytest.approx((2.0 * bright + 0.5).tolist(), abs=1e-6)  # input order, across 4 workers
    assert metrics["reward/bright"].tolist() == pytest.approx(bright.tolist(), abs=1e-6)
    assert metrics["reward/bright/valid"].tolist() == [1.0] * 6
    assert metrics["reward/half"].tolist() == [0.5] * 6
    assert sorted(metrics) == ["reward/bright", "reward/bright/valid", "reward/combined", "reward/half"]


def test_every_layout_they_pass_is_read_the_same():
    tchw = torch.randint(0, 256, (5, 3, 8, 12), dtype=torch.uint8)
    expected = tchw.permute(0, 2, 3, 1).numpy()
    for layout in (tchw, tchw.permute(1, 0, 2, 3), tchw.permute(0, 2, 3, 1), tchw[None], tchw.numpy()):
        frames = verl_omni.to_frames(layout)
        assert frames.dtype == np.uint8 and np.array_equal(frames, expected)
    assert verl_omni.to_frames(tchw.float() / 255).dtype == np.float32  # float in [0, 1] is left to the decoder's checks
    with pytest.raises(VideoError, match="no axis of 3 colour channels"):
        verl_omni.to_frames(torch.zeros((5, 4, 8, 12), dtype=torch.uint8))
    with pytest.raises(VideoError, match="4 dimensions"):
        verl_omni.to_frames(torch.zeros((3, 8, 12), dtype=torch.uint8))


def test_a_workers_concurrent_calls_reach_the_model_in_batches(theirs, monkeypatch):
    sizes = []
    original = BrightnessReward.__call__

    def spy(self, videos, prompts=None, metadata=None):
        sizes.append(len(videos))
        return original(self, videos, prompts, metadata)

    monkeypatch.setattr(BrightnessReward, "__call__", spy)
    entries = {"bright": {**OURS, "reward": "bright", "sections": BRIGHT, "max_batch": 4}}
    levels = [10 * i for i in range(10)]
    rm_scores, _ = theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, levels), num_workers=1)
    assert sizes == [4, 4, 2]  # 10 concurrent per-sample calls, max_batch 4
    assert rm_scores[:, 0].tolist() == pytest.approx([lv / 255 for lv in levels], abs=1e-6)
    sizes.clear()
    theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, levels), num_workers=2)
    assert sizes == [4, 1, 4, 1]  # two workers, each its own loop and chunk of 5


PICKY = {"bright": {"name": "user_rewards:make_picky"}}  # an all-black video cannot be scored


def test_invalid_sample_stops_a_required_entry_and_is_never_a_silent_zero(theirs, caplog):
    data = batch(theirs, [51, 0, 204, 102])  # sample 1 cannot be scored
    required = {"bright": {**OURS, "required": True, "reward": "bright", "sections": PICKY}}
    with caplog.at_level(logging.ERROR, logger="cac_align.integrations.verl_omni"):
        with pytest.raises(RuntimeError, match=r"required reward 'bright' failed: .*'prompt 0': an all-black video \(invalid='fail'\)"):
            theirs.parts.worker_scores(manager(theirs, required), data, num_workers=1)
    assert "could not be scored" in caplog.text
    # Their default (required: false) would train on 0.0; our dict then lacks 'valid' for that
    # sample, so their colocated assembly (keys of sample 0) refuses the batch instead.
    optional = {"bright": {**OURS, "reward": "bright", "sections": PICKY}}
    counts = verl_omni.invalid_counts()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cac_align.integrations.verl_omni"), pytest.raises(KeyError, match="reward/bright/valid"):
        theirs.parts.worker_scores(manager(theirs, optional), data, num_workers=1)
    assert verl_omni.invalid_counts()["invalid"] == counts["invalid"] + 1
    # the only trace of a 0.0 that required: false would train on: an error-level line with the reason
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "cac_align.integrations.verl_omni"]
    assert len(said) == 1 and "an all-black video" in said[0] and "trains on 0.0" in said[0]


def test_a_nan_passes_their_manager_and_spreads_to_every_advantage(theirs):
    """Why ``drop`` (NaN) is refused here: their manager adds a NaN score like any other, and
    their advantage's batch std makes every sample's advantage NaN, other groups included."""
    entries = {"nan": {"path": str(CHECKOUT / "user_rewards.py"), "name": "nan_for_black", "required": True}}
    rm_scores, metrics = theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, [51, 0, 102, 204], group=2), num_workers=1)
    assert np.isnan(metrics["reward/nan"][1]) and np.isfinite(np.delete(metrics["reward/nan"], 1)).all()
    assert torch.isnan(grpo_advantages(rm_scores[:, 0], group=2)).all()
    with pytest.raises(ValueError, match="invalid must be one of"):
        asyncio.run(verl_omni.compute_score(solution_image=torch.zeros((2, 3, 8, 8), dtype=torch.uint8), ground_truth="p", invalid="drop"))


def test_group_mean_fill_has_zero_advantage_and_a_limit(theirs, caplog):
    entries = {"bright": {**OURS, "required": True, "reward": "bright", "sections": PICKY, "invalid": "group_mean"}}
    levels = [51, 0, 102, 204, 153, 255]  # groups of 3: (0.2, -, 0.4), (0.8, 0.6, 1)
    with caplog.at_level(logging.WARNING, logger="cac_align.integrations.verl_omni"):
        rm_scores, metrics = theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, levels, group=3), num_workers=1)
    scores = rm_scores[:, 0]
    assert scores[1].item() == pytest.approx((0.2 + 0.4) / 2)  # its group's valid mean, not 0.0
    assert metrics["reward/bright/valid"].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert grpo_advantages(scores, group=3)[1].item() == pytest.approx(0.0, abs=1e-6)
    assert "got its group's mean" in caplog.text
    # two workers, chunks of 3: each group is whole in one worker's batch, same result...
    rm_two, _ = theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, levels, group=3), num_workers=2)
    assert torch.equal(rm_two, rm_scores)
    # ...but a worker whose chunk holds no valid sample of the prompt cannot fill: it raises
    with pytest.raises(RuntimeError, match="no sample of its prompt in its batch was valid"):
        theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, [0, 51, 102, 204], group=4), num_workers=4)
    with pytest.raises(RuntimeError, match="more than max_invalid_fraction=0.5"):
        theirs.parts.worker_scores(manager(theirs, entries), batch(theirs, [0, 0, 102, 204, 153, 255], group=3), num_workers=2)


def test_config_errors_name_the_key(theirs):
    data = batch(theirs, [51, 153])
    cases = [
        ({"sectoins": "x.yaml"}, r"unknown key\(s\) \['sectoins'\]"),
        ({"invalid": "drop"}, "invalid must be one of"),
        ({"reward": "urcac"}, "unknown reward 'urcac'; did you mean 'ur_cac'"),
    ]
    for extra, message in cases:
        entries = {"r": {**OURS, "required": True, **extra}}
        with pytest.raises(RuntimeError, match=message):
            theirs.parts.worker_scores(manager(theirs, entries), data, num_workers=1)


def test_ur_cac_on_tiny_models_one_copy_sections_from_the_environment(theirs, tmp_path, monkeypatch):
    import yaml

    path = tmp_path / "rewards.yaml"
    path.write_text(yaml.safe_dump({"ur_cac": {"name": "ur_cac", **TINY_UR_CAC}}))
    monkeypatch.setenv(adapter.ENV_SECTIONS, str(path))
    entries = {
        "ur_cac": {**OURS, "required": True, "device": "cpu"},  # reward: ur_cac is the default
        "again": {**OURS, "required": True, "device": "cpu", "weight": 0.5, "max_batch": 2},
    }
    data = batch(theirs, [51, 153, 204, 102])
    rm_scores, metrics = theirs.parts.worker_scores(manager(theirs, entries), data, num_workers=2)
    assert len(adapter.loaded_models()) == 2  # two entries, two workers: one copy of each tiny model
    frames = [data.tensors["responses"][i].float() / 255 for i in range(4)]
    direct = build_reward({"name": "ur_cac", **TINY_UR_CAC})(frames, [f"prompt {i // 2}" for i in range(4)], [{"fps": 16.0}] * 4)
    assert metrics["reward/ur_cac"].tolist() == pytest.approx(direct.scores.tolist(), abs=1e-6)
    assert rm_scores[:, 0].tolist() == pytest.approx((1.5 * direct.scores).tolist(), abs=1e-5)


def test_the_function_alone_gathers_concurrent_calls():
    async def main():
        frames = [torch.full((4, 3, 8, 8), v, dtype=torch.uint8) for v in (0, 255, 51)]
        return await asyncio.gather(*(verl_omni.compute_score(solution_image=f, ground_truth="p", reward="brightness", fps=16) for f in frames))

    try:
        assert asyncio.run(main()) == [{"score": 0.0, "valid": 1.0}, {"score": 1.0, "valid": 1.0}, {"score": pytest.approx(0.2), "valid": 1.0}]
    finally:
        verl_omni._BATCHERS.clear()


def test_a_served_judge_through_their_loop(theirs):
    """A ``backend: openai`` section: the workers only send requests (a local server speaking
    vLLM's chat protocol, tests/chat_server.py); a prompt the server refuses is that sample's
    failure alone."""
    from chat_server import ChatServer

    answer = "Alignment Score (1-5): 4.5\nPhysics Score (1-5): 2.0\nStyle Score (1-5): 3.25"

    def refuses(body):
        return any("storm" in part.get("text", "") for m in body["messages"] if isinstance(m["content"], list) for part in m["content"])

    with ChatServer(answer=lambda messages: answer, fail_if=refuses) as server:
        served = {"ur": {"name": "unified_reward", "version": "2.0", "scoring": "text", "num_frames": 4,
                         "model": {"backend": "openai", "name": "ur", "base_url": server.url, "max_retries": 0}}}
        entries = {"ur": {**OURS, "required": True, "reward": "ur", "sections": served, "invalid": "group_mean"}}
        data = batch(theirs, [51, 153, 204, 102], size=32)
        data.non_tensors["reward_model"] = np.array([{"ground_truth": p} for p in ("a cat", "a cat", "a storm", "a dog")], dtype=object)
        with pytest.raises(RuntimeError, match="'a storm'.*no sample of its prompt in its batch was valid"):
            theirs.parts.worker_scores(manager(theirs, entries), data, num_workers=1)
        data.non_tensors["reward_model"] = np.array([{"ground_truth": p} for p in ("a cat", "a cat", "a dog", "a dog")], dtype=object)
        rm_scores, metrics = theirs.parts.worker_scores(manager(theirs, entries), data, num_workers=2)
    assert rm_scores[:, 0].tolist() == pytest.approx([(4.5 + 2.0 + 3.25) / 3] * 4)
    assert metrics["reward/ur/valid"].tolist() == [1.0] * 4
    assert [json.loads(m)["backend"] for m in adapter.loaded_models()] == ["openai"]  # one client, no model in-process


class NativeExecutor:
    """A worker's executor of a named native model (reward_model_executor.py, NativeRewardExecutor:
    its reward_kwargs() is {"reward_model": itself}); ours never calls it."""

    def reward_kwargs(self):
        return {"reward_model": self}


def test_a_run_with_a_reward_model_trains_on_our_scores(theirs):
    """The newest call: verl's reward model on (a router address: every call carries
    sampling_params, reward_router_address, reward_model_tokenizer, model_name) and an entry named
    like a model of reward.models (gets reward_model). Ours ignores them and scores; the rewards
    and their advantages are ours. A user's own misspelled key is still refused."""
    reward = {"reward_model": {"enable": True, "model_path": "rm/path", "rollout": {"temperature": 0.0, "max_tokens": 64}},
              "models": {"judge": {"backend": "native"}}}
    entries = {
        "bright": {**OURS, "required": True, "reward": "bright", "sections": BRIGHT},
        "judge": {**OURS, "required": True, "reward": "bright", "sections": BRIGHT, "weight": 0.5},
        "seen": {"path": str(CHECKOUT / "user_rewards.py"), "name": "arguments_seen", "weight": 0.0},
    }
    built = manager(theirs, entries, reward, router="10.0.0.1:9000")
    built.set_reward_executors(native={"judge": NativeExecutor()})
    levels = [51, 153, 204, 102]
    rm_scores, metrics = theirs.parts.worker_scores(built, batch(theirs, levels), num_workers=2)
    seen = next(e["fn"] for e in built.entries if e["key"] == "seen").__globals__["SEEN"]  # the module their loader executed
    assert len(seen) == 4
    assert {"sampling_params", "reward_router_address", "reward_model_tokenizer", "model_name"} <= set(seen[0]) and "reward_model" not in seen[0]
    bright = np.array(levels) / 255.0
    assert metrics["reward/bright"].tolist() == pytest.approx(bright.tolist(), abs=1e-6)
    assert metrics["reward/judge"].tolist() == pytest.approx(bright.tolist(), abs=1e-6) and "reward/judge/errors" not in metrics
    assert rm_scores[:, 0].tolist() == pytest.approx((1.5 * bright).tolist(), abs=1e-6)
    assert grpo_advantages(rm_scores[:, 0], group=2).tolist() == pytest.approx(grpo_advantages(1.5 * bright, group=2).tolist(), abs=1e-5)
    typo = {"bright": {**OURS, "required": True, "reward": "bright", "sections": BRIGHT, "sampling_param": {}}}
    with pytest.raises(RuntimeError, match=r"unknown key\(s\) \['sampling_param'\]"):
        theirs.parts.worker_scores(manager(theirs, typo, reward, router="10.0.0.1:9000"), batch(theirs, levels), num_workers=1)


SPOT = {"spot": {"name": "spot_brightness", "box": [0, 0, 500, 500], "window_s": [0.25, 0.5]}}


def spot_batch(theirs, n=2, extra=None, media=None):
    """Frames 0-3 dark in the top-left quarter, 4-8 bright: [0.25, 0.5) s is frames 4-7 at 16 fps
    (bright: 0.0), frames 2-3 at 8 fps (dark: 1.0)."""
    video = torch.full((9, 3, 32, 48), 128, dtype=torch.uint8)
    video[:4, :, :16, :24], video[4:, :, :16, :24] = 0, 255
    non_tensors = {
        "data_source": np.array(["t2v"] * n, dtype=object),
        "reward_model": np.array([{"ground_truth": "p"} for _ in range(n)], dtype=object),
        "extra_info": np.array([dict(extra or {}) for _ in range(n)], dtype=object),
    }
    non_tensors.update({k: np.array([v] * n, dtype=object) for k, v in (media or {}).items()})
    return theirs.parts.Batch({"responses": torch.stack([video] * n)}, non_tensors)


def test_the_frame_rate_is_theirs_or_the_entrys_never_a_guess_and_media_kind_is_read(theirs, caplog):
    entry = {k: v for k, v in OURS.items() if k != "fps"}
    run = lambda entries, data: theirs.parts.worker_scores(manager(theirs, entries), data, num_workers=1)[1]["reward/s"].tolist()  # noqa: E731
    with pytest.raises(RuntimeError, match=r"no frame rate .*set fps in its reward_functions entry .*\(Wan-2\.1 16, Wan2\.2 / LTX-2 24\)"):
        run({"s": {**entry, "required": True, "reward": "spot", "sections": SPOT}}, spot_batch(theirs))
    assert run({"s": {**entry, "required": True, "reward": "spot", "sections": SPOT, "fps": 8}}, spot_batch(theirs)) == [1.0, 1.0]
    at_8 = {"spot": {**SPOT["spot"], "source_fps": 8}}
    assert run({"s": {**entry, "required": True, "reward": "spot", "sections": at_8}}, spot_batch(theirs)) == [1.0, 1.0]
    # their extra_info's fps (a dataset row's) comes first; the rollout's media fields are read
    media = {"media_kind": "video", "audio": torch.zeros(2, 4800), "audio_sample_rate": 48000}
    with caplog.at_level(logging.INFO, logger="cac_align.integrations.verl_omni"):
        got = run({"s": {**entry, "required": True, "reward": "spot", "sections": SPOT, "fps": 8}}, spot_batch(theirs, extra={"fps": 16}, media=media))
    assert got == [0.0, 0.0] and ("48000 Hz" in caplog.text or verl_omni._audio_logged[0])
    with pytest.raises(RuntimeError, match="media_kind is 'image'; cac_align's rewards score videos"):
        run({"s": {**entry, "required": True, "reward": "spot", "sections": SPOT, "fps": 8}}, spot_batch(theirs, media={"media_kind": "image"}))


def test_a_samples_soundtrack_reaches_a_reward_that_hears_one_entry_per_component(theirs):
    # verl-omni projects the rollout's audio and its rate into extra_info (media.py); an entry naming a
    # reward that hears gets them with the frames, and each component is an entry (a score) of its own
    from audio_rewards import rms

    t = np.arange(int(0.6 * 16000)) / 16000
    tone = torch.from_numpy(np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32))
    sections = {**SPOT, "loud": {"name": "audio_rewards:loudness"}}
    entries = {"spot": {**OURS, "required": True, "reward": "spot", "sections": sections},
               "loud": {**OURS, "required": True, "reward": "loud", "sections": sections, "weight": 2.0}}
    media = {"media_kind": "video", "audio": tone, "audio_sample_rate": np.int64(16000)}
    rm_scores, metrics = theirs.parts.worker_scores(manager(theirs, entries), spot_batch(theirs, media=media), num_workers=1)
    assert metrics["reward/spot"].tolist() == [0.0, 0.0]  # the frames, as ever (16 fps: the spot is bright)
    assert metrics["reward/loud"].tolist() == pytest.approx([rms(tone.numpy())] * 2, abs=1e-6)
    assert rm_scores[:, 0].tolist() == pytest.approx([2.0 * rms(tone.numpy())] * 2, abs=1e-6)
    # a sample without a soundtrack: invalid for the reward that hears, never 0 (required: the run stops)
    with pytest.raises(RuntimeError, match="no soundtrack: loudness judges the sound"):
        theirs.parts.worker_scores(manager(theirs, entries), spot_batch(theirs, media={"media_kind": "video"}), num_workers=1)
