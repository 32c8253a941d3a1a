"""Training the sound (issue #89; docs/audio.md): ``audio: trained`` on the tiny LTX-2, MiniMax-H3 and Cosmos 3,
modality routing with scripted rewards, and the guards.

The exactness pins: with noise 0 a trained side steps exactly as the deterministic path does (the
pipeline's own audio latents: tests/gen/test_ltx2.py and tests/gen/test_minimax_h3.py pin that path
against the pipelines); the audio log-probability recomputed from the stored trajectory equals the
sampled one bit for bit; the audio LoRA exists and moves only where the sound is trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cac_align.config import RecipeError, load_config
from cac_align.gen.generator import GeneratorConfig, build_generator, predict_velocity, sample_with_log_probs
from cac_align.rl.sde import SDESchedule
from conftest import REPO_ROOT

RECIPES = REPO_ROOT / "recipes/align"
LTX2_UNGUIDED = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0)
TINY = {
    "ltx2": dict(name="tiny-random:ltx2", dtype="float32", vae_dtype="float32", device="cpu", height=64, width=64, num_frames=9,
                 num_inference_steps=3, max_sequence_length=32, **LTX2_UNGUIDED),
    "kandinsky6": dict(name="tiny-random:kandinsky6", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9,
                       num_inference_steps=3, max_sequence_length=32),
    "minimax-h3": dict(name="tiny-random:minimax-h3", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=124,
                       num_inference_steps=3, max_sequence_length=32),
    "cosmos3": dict(name="tiny-random:cosmos3", dtype="float32", vae_dtype="float32", device="cpu", height=32, width=32, num_frames=9,
                    num_inference_steps=3),
}
PROMPTS = ["a dog barking in a park", "a red car on the street"]


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request):
    config = GeneratorConfig(**TINY[request.param])
    return config, build_generator(config)


def _sample(config, pipe, noise_level, train_side, seeds=(3, 4)):
    family = config.family
    guidance = family.guidance(config)
    cond, negative = family.encode_prompts(pipe, PROMPTS, None, guidance, config.max_sequence_length)
    sigmas, timesteps = family.schedule(pipe, config)
    trajectory = sample_with_log_probs(pipe, family.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in seeds],
                                       config=config, sigmas=sigmas, timesteps=timesteps, noise_level=noise_level, train_side=train_side)
    return trajectory, (cond, negative, guidance, sigmas, timesteps)


def test_a_trained_sound_with_noise_0_is_the_deterministic_path_and_its_log_prob_recomputes_exactly(tiny):
    config, pipe = tiny
    family = config.family
    frozen, _ = _sample(config, pipe, 0.0, train_side=False)
    ode, _ = _sample(config, pipe, 0.0, train_side=True)
    assert frozen.side_log_probs is None and torch.equal(ode.side, frozen.side) and torch.equal(ode.latents, frozen.latents)
    assert ode.side[:, -1].abs().mean() > 0.1  # the pipeline's own audio latents (pinned by tests/gen), not trivially equal

    trained, (cond, negative, guidance, sigmas, timesteps) = _sample(config, pipe, 0.7, train_side=True)
    steps = len(timesteps)
    assert trained.side_log_probs.shape == (2, steps) and torch.isfinite(trained.side_log_probs).all()
    assert not torch.equal(trained.side[:, -1], ode.side[:, -1])  # the sound took noisy steps
    side_sigmas = family.side_sigmas(pipe, config, sigmas) if hasattr(family, "side_sigmas") else sigmas
    video_steps, side_steps = SDESchedule(sigmas, 0.7), SDESchedule(side_sigmas, 0.7)
    denoiser = family.denoiser(pipe)
    with torch.no_grad():
        for j in range(steps):  # recomputed from the stored trajectory as the trainer does: the same numbers, bit for bit
            velocity, side_velocity = predict_velocity(denoiser, trained.latents[:, j], timesteps[j], cond, negative, guidance, pipe.transformer.dtype,
                                                       trained.side[:, j])
            video = video_steps.step(j, trained.latents[:, j], velocity, prev_sample=trained.latents[:, j + 1])
            sound = side_steps.step(j, trained.side[:, j], side_velocity, prev_sample=trained.side[:, j + 1])
            assert torch.equal(video.log_prob, trained.log_probs[:, j]) and torch.equal(sound.log_prob, trained.side_log_probs[:, j]), j
    # the audio's log-prob is the Gaussian's: log N averaged over elements (a wrong std or mean would move it)
    assert (trained.side_log_probs < 5).all() and (trained.side_log_probs > -50).all()


# ---------------------------------------------------------------------------------------
# flow-grpo and nft with the sound trained, routed by scripted (toy) rewards. MiniMax-H3's tiny audio
# decoder makes tracks whose loudness differs between samples (tiny LTX-2's random vocoder barely
# hears its latents: 5e-6 apart), so the audio-judged runs are on it.
CHEAP = ["prompts_per_step=1", "group_size=2", "sample_batch_size=2", "train_batch_size=2", "eval_every=0", "eval_prompts=null", "log_with=none",
         "checkpoint_every=0", "steps=1", "ema_decay=null"]
FAMILIES = {"ltx2": ("tiny_ltx2", [*(f"generator.{k}={v}" for k, v in LTX2_UNGUIDED.items()), "generator.num_inference_steps=2"]),
            "minimax-h3": ("tiny_minimax_h3", []), "cosmos3": ("tiny_cosmos3", [])}


def _config(out, job, family, *overrides):
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from cac_align.jobs.nft import NftConfig

    kind = FlowGrpoConfig if job == "flow-grpo" else NftConfig
    name, settings = FAMILIES[family]
    recipe = RECIPES / f"{job.replace('-', '_')}_{name}.yaml"
    return load_config(kind, recipe, [f"out_dir={out}", *CHEAP, *settings, *overrides], job=job)


def _reward(*names, weights=None, window=None):
    from cac_align.rewards.combine import CombinedReward
    from cac_align.rewards.registry import build_reward

    parts = [build_reward({"name": n, **({"window_s": window} if n == "toy_sync" and window else {})}) for n in names]
    return parts[0] if len(parts) == 1 else CombinedReward(parts, weights=weights)


def _train(out, reward, *overrides, job="flow-grpo", family="minimax-h3"):
    from cac_align.gen.family import family_of
    from cac_align.jobs import flow_grpo, nft

    config = _config(out, job, family, *overrides)
    pipe = family_of(config.generator.name).build_tiny(config.generator.name)
    base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    (nft if job == "nft" else flow_grpo).run(config, reward=reward, pipe=pipe)
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    lora = {n: p.detach() for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
    after = {n.replace(".base_layer", ""): p for n, p in pipe.transformer.named_parameters() if "lora_" not in n}
    assert set(after) == set(base) and all(torch.equal(after[n], base[n]) for n in base)  # no base weight moves, audio's included
    return row, lora


def _audio_layer(name, family="minimax-h3"):
    from cac_align.gen.family import family_of

    module = name.split(".lora_B")[0]
    targets = family_of(TINY[family]["name"]).audio_lora_target_modules
    return any(module == m or module.endswith("." + m) for m in targets)


ROUTED = ["audio=trained", "advantage.routing=routed", "audio_rewards_blind_ok=true"]


@pytest.mark.slow  # four tiny MiniMax-H3 runs and four tiny Cosmos 3 runs: `pytest -m slow`
@pytest.mark.parametrize("family", ["minimax-h3", "cosmos3"])
@pytest.mark.parametrize("job", ["flow-grpo", "nft"])
def test_routed_audio_only_and_video_only_rewards_reach_only_their_stream(tmp_path, job, family):
    """An audio-only reward (loudness) gives the video latents' loss zero advantage, a video-only one
    (brightness) the audio's; the audio branch's LoRA is there and trains where the sound is trained
    (Cosmos 3: its sound's own projections, the blocks being one stream for both)."""
    heard, heard_lora = _train(tmp_path / "heard", _reward("loudness"), *ROUTED, job=job, family=family)
    seen, _ = _train(tmp_path / "seen", _reward("brightness"), *ROUTED, job=job, family=family)
    assert heard["advantage/video_abs_mean"] == 0 and heard["advantage/audio_abs_mean"] > 0
    assert seen["advantage/audio_abs_mean"] == 0 and seen["advantage/video_abs_mean"] > 0
    assert heard["train/grad_norm"] > 0 and any(k.startswith("train/audio_") for k in heard)  # the sound's own loss term
    audio = [n for n in heard_lora if _audio_layer(n, family)]
    assert audio and all(torch.count_nonzero(heard_lora[n]) for n in audio)  # audio_proj_in / _out adapted, and trained (B starts at 0)


@pytest.mark.slow  # two tiny MiniMax-H3 runs
def test_the_audio_lora_is_there_only_where_the_sound_is_trained(tmp_path):
    _, frozen = _train(tmp_path / "frozen", _reward("brightness"))
    _, trained = _train(tmp_path / "trained", _reward("brightness"), "audio=trained")
    assert frozen and not any(_audio_layer(n) for n in frozen)
    assert {n for n in trained if not _audio_layer(n)} == set(frozen)  # the same video targets, plus the audio branch's
    assert all(torch.count_nonzero(p) for n, p in trained.items() if _audio_layer(n))  # summed: the sound takes the video's advantage


@pytest.mark.slow  # one tiny LTX-2 run
def test_a_sync_window_weights_only_that_span_of_both_streams_in_the_loss(tmp_path, monkeypatch):
    """Routed localized credit on LTX-2's grid (9 frames at 24 fps: video latents [0, 1/24) and
    [1/24, 9/24); 9 audio tokens of 1/24 s): a sync window [0.1, 0.2) reaches video latent frame 1
    and audio tokens 2-4 (their spans overlap it), nothing else (``outside: 0``)."""
    from cac_align.jobs.flow_grpo import _Trainer

    seen = {}
    update = _Trainer._update

    def spy(self, *args, **kwargs):
        seen["video"], seen["audio"] = args[6].cpu().numpy(), kwargs["audio"]["credit"].cpu().numpy()
        return update(self, *args, **kwargs)

    monkeypatch.setattr(_Trainer, "_update", spy)
    row, lora = _train(tmp_path / "run", _reward("toy_sync", window=[0.1, 0.2]), *ROUTED, "advantage.localize.enabled=true", family="ltx2")
    assert row["localize/windowed_fraction"] == 1.0 and "train/audio_ratio_mean" in row
    video, audio = seen["video"], seen["audio"]
    assert video.shape[:2] == (2, 2) and audio.shape == (2, 9)
    assert (video[:, 0] == 0).all() and (np.abs(video[:, 1]) > 0).all()  # latent frame 0 is outside the window
    assert (audio[:, [0, 1, 5, 6, 7, 8]] == 0).all() and (np.abs(audio[:, 2:5]) > 0).all()
    assert all(torch.count_nonzero(p) for n, p in lora.items() if _audio_layer(n, "ltx2"))


# ---------------------------------------------------------------------------------------
# Guards
def test_audio_settings_are_checked_in_one_line():
    from cac_align.jobs.flow_grpo import FlowGrpoConfig

    def config(recipe, *overrides):
        return load_config(FlowGrpoConfig, RECIPES / recipe, ["out_dir=/tmp/x", *overrides], job="flow-grpo")

    for recipe, overrides, message in [
        ("flow_grpo_tiny.yaml", ["audio=trained"], "makes no sound; leave audio at 'frozen'"),
        ("flow_grpo_tiny_minimax_h3.yaml", ["advantage.routing=routed"], "set audio=trained"),
        ("flow_grpo_tiny_minimax_h3.yaml", ["audio=loud"], "audio must be one of"),
        ("flow_grpo_tiny_minimax_h3.yaml", ["audio=trained", "advantage.routing=both"], "advantage.routing must be one of"),
    ]:
        with pytest.raises(RecipeError, match=message) as error:
            config(recipe, *overrides)
        assert "\n" not in str(error.value)
    frozen, trained = config("flow_grpo_tiny_ltx2.yaml"), config("flow_grpo_tiny_ltx2.yaml", "audio=trained")
    from cac_align.gen.families.ltx2 import AUDIO_BRANCH, VIDEO_BRANCH

    assert frozen.lora.target_modules == VIDEO_BRANCH and trained.lora.target_modules == VIDEO_BRANCH + AUDIO_BRANCH


def test_a_reward_whose_audio_components_all_ignore_the_prompt_is_refused_in_one_line():
    from cac_align.rewards.columns import check_prompt_heard
    from cac_align.rewards.base import RewardBase

    class Clapish(RewardBase):  # hears and reads the prompt, as CLAP does
        name, modality, reads_prompt = "clapish", "audio", True

    check_prompt_heard(_reward("brightness"))  # no audio component: nothing to guard
    check_prompt_heard(_reward("brightness", "loudness").__class__([_reward("loudness"), Clapish()]))  # one reads it
    for blind in (_reward("loudness"), _reward("brightness", "loudness", "toy_sync")):  # the video part reads it; the audio ones do not
        with pytest.raises(RecipeError, match=r"audio components \[.*\] all ignore the prompt") as error:
            check_prompt_heard(blind)
        assert "\n" not in str(error.value) and "audio_rewards_blind_ok=true" in str(error.value)


@pytest.mark.slow  # one tiny MiniMax-H3 start
def test_the_run_refuses_a_prompt_blind_sound_reward_unless_allowed(tmp_path):
    with pytest.raises(RecipeError, match="all ignore the prompt"):
        _train(tmp_path / "blind", _reward("brightness", "loudness"), "audio=trained")
    assert not (tmp_path / "blind" / "metrics.jsonl").exists()
    row, _ = _train(tmp_path / "allowed", _reward("brightness", "loudness"), "audio=trained", "audio_rewards_blind_ok=true")
    assert row["reward/valid_fraction"] == 1.0


def test_the_watch_alarms_on_a_component_that_falls_while_the_sum_rises_and_not_on_a_control():
    from cac_align.run.watch import component_alarms

    combined = [0.40, 0.45, 0.50]
    (alarm,) = component_alarms(combined, {"video": [0.5, 0.6, 0.7], "clap": [0.30, 0.20, 0.10]}, window=3, margin=0.05)
    assert alarm.judge == "clap" and alarm.judge_fall == pytest.approx(0.2) and alarm.trained_rise == pytest.approx(0.1)
    assert "component 'clap' fell by 0.2" in alarm.message("av")
    assert component_alarms(combined, {"video": [0.5, 0.6, 0.7], "clap": [0.30, 0.31, 0.29]}, window=3, margin=0.05) == []  # the control
    assert component_alarms([0.5, 0.45, 0.4], {"clap": [0.3, 0.2, 0.1]}, window=3, margin=0.05) == []  # the sum fell too: no hiding
    assert component_alarms(combined[:2], {"clap": [0.3, 0.1]}, window=3, margin=0.05) == []  # not enough evaluations yet


class _Scripted:
    """A scripted reward component: its score moves by ``slope`` at every call (a training batch or an
    evaluation), the same for every video of a call; what it judges is ``modality``."""

    def __init__(self, name, modality, start, slope):
        self.name, self.modality, self.start, self.slope, self.calls = name, modality, start, slope, 0
        self.score_range, self.components, self.reads_prompt, self.needs_prompt = (0.0, 1.0), (), True, False
        self.modalities = {name: modality}

    def __call__(self, videos, prompts, metadata=None):
        from cac_align.rewards.base import RewardOutput

        self.calls += 1
        n = len(videos)
        value = self.start + self.slope * self.calls
        return RewardOutput(self.name, np.full(n, value) + 1e-3 * np.arange(n), np.ones(n, dtype=bool), [{} for _ in range(n)])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def to(self, device):
        return self


@pytest.mark.slow  # two tiny MiniMax-H3 runs with an evaluation every step
def test_the_watch_alarms_in_a_run_when_one_component_collapses_and_not_on_a_control(tmp_path, caplog):
    from cac_align.rewards.combine import CombinedReward

    def run(name, falling):
        reward = CombinedReward([_Scripted("video_part", "video", 0.1, 0.05), _Scripted("audio_part", "audio", 0.9, -0.05 if falling else 0.0)],
                                weights=[0.8, 0.2], name="av")
        _train(tmp_path / name, reward, "steps=3", "eval_every=1", "eval_prompts=recipes/align/prompts_tiny.txt", "watch.window=2",
               "watch.margin=0.0", "audio=trained")
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    with caplog.at_level("WARNING"):
        collapsed = run("collapsed", falling=True)
    assert [r["watch/alarms"] for r in collapsed] == [0, 1, 1, 1]  # step 0, then from the first evaluation after it on: the window holds two
    assert collapsed[-1]["eval/components/audio_part_raw_mean"] < collapsed[0]["eval/components/audio_part_raw_mean"]
    assert "its component 'audio_part' fell" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        control = run("control", falling=False)
    assert [r["watch/alarms"] for r in control] == [0, 0, 0, 0] and "fell" not in caplog.text


@pytest.mark.slow  # three tiny MiniMax-H3 runs
@pytest.mark.parametrize("job", ["flow-grpo", "nft"])
def test_a_run_with_its_sound_trained_resumes_exactly(tmp_path, job):
    """Every draw of the sound (its SDE noise, nft's re-noising) is seeded by (seed, step, sample): a
    resumed run ends where the straight one does, LoRA bytes and logged numbers alike."""
    from cac_align.gen.generator import LORA_WEIGHT_NAME

    reward = _reward("brightness", "loudness")
    settings = [*ROUTED, "checkpoint_every=2", "steps=3"]
    _train(tmp_path / "straight", reward, *settings, job=job)
    _train(tmp_path / "resumed", reward, *[s for s in settings if s != "steps=3"], "steps=2", job=job)
    _train(tmp_path / "resumed", reward, *settings, "resume=true", job=job)
    straight, resumed = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("straight", "resumed"))
    keys = [k for k in straight[-1] if k.startswith(("train/", "reward/", "advantage/"))]
    assert [r["step"] for r in resumed] == [1, 2, 3] and any(k.startswith("train/audio_") for k in keys)
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    assert (tmp_path / "straight/lora" / LORA_WEIGHT_NAME).read_bytes() == (tmp_path / "resumed/lora" / LORA_WEIGHT_NAME).read_bytes()


@pytest.mark.slow  # the shipped tiny recipe through the CLI
def test_the_tiny_sound_recipe_runs_from_the_command_line(tmp_path):
    from cac_align.cli import main

    assert main(["flow-grpo", "--config", str(RECIPES / "flow_grpo_tiny_ltx2_sound.yaml"), f"out_dir={tmp_path / 'run'}", "steps=1",
                 "checkpoint_every=0"]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert row["localize/windowed_fraction"] == 1.0 and row["reward/valid_fraction"] == 1.0 and "train/audio_policy_loss" in row
    assert {"reward/brightness_raw_mean", "reward/loudness_raw_mean", "reward/toy_sync_raw_mean"} <= set(row)
    # the demo shows routing (issue #100, item 5): its audio reward varies within the group, so the audio latents take
    # an advantage of their own, not the video's
    assert row["reward/loudness_raw_std"] > 1e-5
    assert abs(row["advantage/video_abs_mean"] - row["advantage/audio_abs_mean"]) > 1e-3


@pytest.mark.slow  # the shipped tiny Kandinsky 6 sound recipe through the CLI (about 10 s)
def test_the_tiny_kandinsky6_sound_recipe_trains_its_sound_routed(tmp_path):
    """Issue #100, item 5: Kandinsky 6's sound, trained and routed, offline: its loudness varies within the group and the
    audio latents take an advantage of their own."""
    from cac_align.cli import main

    assert main(["flow-grpo", "--config", str(RECIPES / "flow_grpo_tiny_kandinsky6_sound.yaml"), f"out_dir={tmp_path / 'run'}", "steps=1",
                 "checkpoint_every=0"]) == 0
    (row,) = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert row["reward/valid_fraction"] == 1.0 and "train/audio_policy_loss" in row and row["reward/loudness_raw_std"] > 1e-5
    assert abs(row["advantage/video_abs_mean"] - row["advantage/audio_abs_mean"]) > 1e-3
