"""The guards against reward hacking in the trainers (issue #104; cac_align/rewards/guards.py): GARDO's gate on the
held-out judges, the adaptive reference, DPPO's trust region, GDPO's per-component normalization, diversity, as
``flow-grpo`` and ``nft`` run them. The math is pinned by hand in tests/rl/ (test_gardo.py, test_trust_region.py,
test_gdpo.py); here, what reaches the loss and what a checkpoint keeps. The runs are the tiny Wan with the latent
preview (the tiny random VAE's decode does not move with the latents), a few seconds each.

The defaults give today's numbers bit for bit: ``python benchmarks/record_behaviour.py compare`` before/after (the
note of issue #104), and test_the_guards_at_their_defaults_leave_run_folders_as_they_were below."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cac_align.config import RecipeError, load_config
from cac_align.gen.families.wan import build_tiny_wan_pipeline, latent_preview
from cac_align.gen.generator import Trajectory
from cac_align.jobs import flow_grpo
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
from cac_align.rl.gardo import reward_uncertainty
from conftest import REPO_ROOT

RECIPE = REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"
# the smallest steps that learn through the preview: 2 prompts x 4 videos, 2 sampling steps, both trained
SMALL = ["log_with=none", "eval_prompts=null", "ema_decay=null", "generator.num_inference_steps=2", "learning_rate=1e-2", "lora.rank=8",
         "lora.alpha=16", "checkpoint_every=0"]
JUDGE = ["eval_prompts=recipes/align/prompts_tiny.txt", "eval_every=100", "eval_at_start=false", "eval_videos=0", "eval_rewards.green.name=colour",
         "eval_rewards.green.channel=green", "eval_rewards.green.prefer=less"]


def _config(out, *overrides, recipe=RECIPE, job="flow-grpo", cls=FlowGrpoConfig):
    return load_config(cls, recipe, [f"out_dir={out}", *SMALL, *overrides], job=job)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _lora(path):
    return load_file(str(path / "lora/pytorch_lora_weights.safetensors"))


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Settings, run folders, refusals
# ---------------------------------------------------------------------------------------------
def test_the_guards_at_their_defaults_leave_run_folders_as_they_were(tmp_path):
    from cac_align.run.folder import config_fingerprint

    default = config_fingerprint(_config(tmp_path), flow_grpo.RUN_ONLY_KEYS)
    assert not {"loss", "dppo_delta", "regularize"} & set(default) and "aggregate" not in default.get("advantage", {})
    gated = config_fingerprint(_config(tmp_path, *JUDGE, "regularize.gate=uncertain"), flow_grpo.RUN_ONLY_KEYS)
    assert gated["regularize"] == {"gate": "uncertain"}  # only what differs from the defaults
    folder = flow_grpo._run_folder(_config(tmp_path / "g", *JUDGE, "regularize.gate=uncertain"), ["a"])
    # the held-out judges are the gate's: no longer run-only, they are part of the run
    assert folder.fingerprint["regularize"]["judges"] == {"green": {"name": "colour", "channel": "green", "prefer": "less"}}


@pytest.mark.parametrize("overrides, said", [
    (["regularize.gate=uncertain"], "regularize.gate=uncertain needs auxiliary judges: regularize.judges, or eval_rewards"),
    ([*JUDGE, "regularize.gate=uncertain", "beta=0"], "regularize.gate=uncertain act(s) on the KL term, which beta=0 turns off: set beta > 0"),
    (["regularize.reference=adaptive", "beta=0"], "regularize.reference=adaptive act(s) on the KL term, which beta=0 turns off"),
    (["dppo_delta=1e-6"], "dppo_delta=1e-06 is DPPO's threshold: > 0, with loss dppo_kl or dppo_tv"),
    (["loss=dppo_kl", "advantage.localize.enabled=true", "advantage.localize.estimator=vipo"], "loss=dppo_kl masks the video's policy loss"),
    (["loss=trust_me"], "loss must be one of ('ppo_clip', 'dppo_kl', 'dppo_tv')"),
    (["advantage.aggregate=normalize_then_sum", "parallel.context_parallel=2"], "advantage.aggregate=normalize_then_sum with parallel.context_parallel > 1"),
    (["regularize.judges.x.name=brightnes", "regularize.gate=uncertain"], "regularize.judges.x: unknown reward 'brightnes'"),
    (["regularize.project=true"], "regularize.project=true needs auxiliary judges: regularize.judges, or eval_rewards"),

])
def test_guard_settings_that_cannot_run_are_refused_in_one_line(tmp_path, overrides, said):
    with pytest.raises(RecipeError, match=None) as refused:
        _config(tmp_path, *overrides)
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_hold_worst_case_is_refused_with_routed_advantages(tmp_path):
    # routed, each component's advantage trains its own latents and the summed one (what the hold lowers) trains none
    sound = REPO_ROOT / "recipes/align/flow_grpo_tiny_ltx2_sound.yaml"
    with pytest.raises(RecipeError) as refused:
        _config(tmp_path, *JUDGE, "audio=trained", "advantage.routing=routed", "regularize.gate=uncertain", "regularize.hold=worst_case",
                recipe=sound)
    assert "regularize.hold=worst_case lowers the summed advantage; advantage.routing=routed trains each" in str(refused.value)
    assert "\n" not in str(refused.value)
    _config(tmp_path, *JUDGE, "audio=trained", "advantage.routing=routed", "regularize.gate=uncertain", recipe=sound)  # the KL gate: fine
    with pytest.raises(RecipeError) as refused:
        _config(tmp_path, *JUDGE, "audio=trained", "advantage.routing=routed", "regularize.project=true", recipe=sound)
    assert "regularize.project=true projects the summed advantage; advantage.routing=routed trains each" in str(refused.value)


def test_nft_refuses_dppo_and_the_plan_counts_the_gates_own_judges(tmp_path):
    from cac_align.jobs.nft import NftConfig

    with pytest.raises(RecipeError, match="loss is a Flow-GRPO setting"):
        _config(tmp_path, "loss=dppo_kl", recipe=REPO_ROOT / "recipes/align/nft_tiny.yaml", job="nft", cls=NftConfig)
    config = _config(tmp_path, "regularize.gate=uncertain", "regularize.judges.taste.name=colour")
    assert flow_grpo.memory_inputs(config)["rewards"]["regularize.judges.taste"] == config.regularize.judges["taste"]


def test_the_colour_judge_by_hand():
    from cac_align.rewards.toy import ColourReward
    from cac_align.video import Video

    # a 1-frame 1 x 2 video: pixels (255, 51, 0) and (0, 153, 255): green means (51 + 153) / 2 / 255 = 0.4
    frames = np.array([[[[255, 51, 0], [0, 153, 255]]]], dtype=np.uint8)
    video = Video(frames, fps=16.0)
    assert ColourReward("green", "more")([video]).scores.tolist() == pytest.approx([0.4])
    assert ColourReward("green", "less")([video]).scores.tolist() == pytest.approx([0.6]) and not ColourReward().reads_prompt


# ---------------------------------------------------------------------------------------------
# The gate: the KL only on the samples the judges disagree on
# ---------------------------------------------------------------------------------------------
def test_the_gate_regularizes_only_the_samples_the_judges_disagree_on(tmp_path, monkeypatch):
    from cac_align.rewards import guards

    gates, calls = [], []
    step_gate = guards.step_gate

    def recorded_gate(settings, state, proxy, judges, trained):
        weights, said = step_gate(settings, state, proxy, judges, trained)
        gates.append((proxy.copy(), {k: v.copy() for k, v in judges.items()}, trained.copy(), weights.copy()))
        return weights, said

    loss = flow_grpo.flow_grpo_loss

    def recorded_loss(*args, **kwargs):
        calls.append(None if kwargs.get("kl_weights") is None else kwargs["kl_weights"].clone())
        return loss(*args, **kwargs)

    monkeypatch.setattr(guards, "step_gate", recorded_gate)
    monkeypatch.setattr(flow_grpo, "flow_grpo_loss", recorded_loss)
    out = tmp_path / "gated"
    config = _config(out, *JUDGE, "steps=2", "regularize.gate=uncertain", "regularize.fraction=0.5", "regularize.adapt_fraction=false",
                     "train_batch_size=4")
    run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    rows = _metrics(out)
    assert len(gates) == 2 and len(calls) == 2 * 2 * 2  # 2 steps x 2 micro-batches x 2 trained timesteps
    for step, (proxy, judges, trained, weights) in enumerate(gates):
        assert set(judges) == {"green"} and np.isfinite(judges["green"]).all()  # the held-out judge scored every training sample
        gated = weights > 0
        u = reward_uncertainty(proxy, judges)  # the proxy's win rate less the judge's (tests/rl/test_gardo.py by hand)
        assert gated.any() and (~gated & trained).any()
        # the gated samples are the ones the judge disagrees on most (the proxy rates them above it), none at or below 0
        assert u[gated].min() > 0 and u[gated].min() > u[~gated & trained].max()
        assert weights[gated] == pytest.approx(np.full(gated.sum(), trained.sum() / gated.sum()))  # the KL over the gated samples
        assert rows[step]["regularize/gated_fraction"] == pytest.approx(gated.sum() / trained.sum())
        # what reached the loss: each micro-batch's slice of the gate's weights, at every trained timestep
        reached = calls[4 * step: 4 * step + 4]
        expected = torch.as_tensor(weights)
        for k, got in enumerate(reached):
            lo = 4 * (k // 2)
            assert torch.equal(got, expected[lo: lo + 4]), (step, k)


def test_hold_worst_case_lowers_the_marked_samples_advantages_to_the_judges_and_needs_no_kl(tmp_path, monkeypatch):
    from cac_align.rewards import guards
    from cac_align.rl.advantages import group_advantages

    gates, calls = [], []
    step_gate = guards.step_gate

    def recorded_gate(settings, state, proxy, judges, trained):
        weights, said = step_gate(settings, state, proxy, judges, trained)
        gates.append((proxy.copy(), judges["green"].copy(), trained.copy(), weights.copy()))
        return weights, said

    loss = flow_grpo.flow_grpo_loss

    def recorded_loss(*args, **kwargs):
        calls.append((args[2].clone(), kwargs.get("kl_weights")))
        return loss(*args, **kwargs)

    monkeypatch.setattr(guards, "step_gate", recorded_gate)
    monkeypatch.setattr(flow_grpo, "flow_grpo_loss", recorded_loss)
    out = tmp_path / "held"
    # beta=0: worst_case acts on the advantages, not on the KL term (kl: refused with beta=0, above)
    config = _config(out, *JUDGE, "steps=2", "beta=0", "regularize.gate=uncertain", "regularize.hold=worst_case", "regularize.fraction=0.5",
                     "regularize.adapt_fraction=false", "train_batch_size=4")
    run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    rows = _metrics(out)
    groups = [k // 4 for k in range(8)]  # 2 prompts x 4 videos
    for step, (proxy, judge, trained, weights) in enumerate(gates):
        marked = weights > 0
        own = group_advantages(proxy, groups, clip=5.0).advantages.astype(np.float64)
        judged = group_advantages(judge, groups, clip=5.0)  # one judge: its own group advantage
        expected = own.copy()
        expected[marked] = np.minimum(own[marked], judged.advantages[marked])
        assert marked.any() and (expected < own).any()  # the gate marked samples and lowered at least one
        reached = torch.cat([calls[4 * step + k][0] for k in (0, 2)]).numpy()  # each micro-batch's first timestep
        assert reached == pytest.approx(expected.astype(np.float32), abs=1e-6), step
        assert all(kl is None for _, kl in calls[4 * step: 4 * step + 4])  # no KL weights: the hold is the advantage
        assert rows[step]["regularize/lowered_fraction"] == pytest.approx((expected < own).sum() / trained.sum())


def test_project_trains_on_the_advantages_projected_off_the_judges_where_they_conflict(tmp_path, monkeypatch):
    from cac_align.rewards import guards
    from cac_align.rl.advantages import group_advantages

    seen, calls = [], []
    judge_advantages = guards.judge_advantages

    def recorded_judges(auxiliaries, groups, trained, **kwargs):
        seen.append((auxiliaries["green"].copy(), np.asarray(trained).copy()))
        return judge_advantages(auxiliaries, groups, trained, **kwargs)

    kl_weights = guards.RunGuards.kl_weights

    def recorded_step(self, judged, scores, adv, *args):
        seen.append(scores.copy())
        return kl_weights(self, judged, scores, adv, *args)

    loss = flow_grpo.flow_grpo_loss

    def recorded_loss(*args, **kwargs):
        calls.append((args[2].clone(), kwargs.get("kl_weights")))
        return loss(*args, **kwargs)

    monkeypatch.setattr(guards, "judge_advantages", recorded_judges)
    monkeypatch.setattr(guards.RunGuards, "kl_weights", recorded_step)
    monkeypatch.setattr(flow_grpo, "flow_grpo_loss", recorded_loss)
    out = tmp_path / "projected"
    config = _config(out, *JUDGE, "steps=3", "regularize.project=true", "train_batch_size=4")  # no gate; the KL as plain's (beta 0.05)
    run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    rows = _metrics(out)
    groups = [k // 4 for k in range(8)]  # 2 prompts x 4 videos
    projected = 0
    for step in range(3):
        proxy, (judge, trained) = seen[2 * step], seen[2 * step + 1]
        assert trained.all()
        a = group_advantages(proxy, groups, clip=5.0).advantages.astype(np.float64)
        j = group_advantages(judge, groups, clip=5.0).advantages.astype(np.float64)  # one judge: its own group advantage
        dot = float(a @ j)
        expected = a - dot / float(j @ j) * j if dot < 0 else a
        projected += dot < 0
        reached = torch.cat([calls[4 * step + k][0] for k in (0, 2)]).numpy()  # each micro-batch's first timestep
        assert reached == pytest.approx(expected.astype(np.float32), abs=1e-6), step
        assert all(kl is None for _, kl in calls[4 * step: 4 * step + 4])  # no gate: the KL on every sample, as plain's
        assert rows[step]["regularize/cosine"] == pytest.approx(dot / np.sqrt((a @ a) * (j @ j)), abs=1e-6)
        assert rows[step]["regularize/projected"] == float(dot < 0)
    assert projected >= 1  # brightness and "less green" conflicted on some step: the projection acted


# ---------------------------------------------------------------------------------------------
# The adaptive reference: resets at N, lives in the checkpoint
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # a run and its resumed halves (8.8 s of the default suite's 501 s on 2 busy cores, 2026-11-29): its 5 minutes; .ci/run runs it
def test_the_adaptive_reference_resets_at_n_and_resumes_to_the_bit(tmp_path):
    common = ["steps=4", "beta=0.01", "regularize.reference=adaptive", "regularize.reset_every=2", "regularize.kl_bound=null", "checkpoint_every=1",
              "keep_checkpoints=4"]
    whole = tmp_path / "whole"
    run(_config(whole, *common), pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    rows = _metrics(whole)
    assert [r.get("regularize/reference_reset", 0.0) for r in rows] == [0.0, 0.0, 1.0, 0.0]  # before step 3 (2 steps after the start)
    kept = whole / "checkpoints"
    at2, at3 = (load_file(str(kept / f"step_00000{k}/reference.safetensors")) for k in (2, 3))
    # until the reset it is the initial LoRA (B = 0: the base model); then the LoRA as step 3 began, i.e. step 2's checkpoint
    assert all(torch.count_nonzero(v) == 0 for k, v in at2.items() if "lora_B" in k) and any("lora_B" in k for k in at2)
    lora2 = load_file(str(kept / "step_000002/model.safetensors"))
    assert set(at3) == set(lora2) and all(torch.equal(at3[k], lora2[k].to(at3[k].dtype)) for k in at3)
    assert json.loads((kept / "step_000003/state.json").read_text())["regularize"]["last_reset"] == 2
    # stopped after step 2 and resumed: the same run to the bit (the reference and the gate's state come back from step 2's checkpoint)
    halves = tmp_path / "halves"
    run(_config(halves, *common, "steps=2"), pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    run(_config(halves, *common, "resume=true"), pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    assert _same(_lora(halves), _lora(whole))
    assert _same(*(load_file(str(p / "checkpoints/step_000004/reference.safetensors")) for p in (halves, whole)))
    assert [r.get("regularize/reference_reset", 0.0) for r in _metrics(halves)] == [0.0, 0.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# DPPO's trust region in the update
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # three runs (7.6 s of the default suite's 501 s on 2 busy cores, 2026-11-29): its 5 minutes; .ci/run runs it
def test_dppo_with_an_unreachable_delta_is_the_unclipped_surrogate_and_a_tiny_one_masks(tmp_path):
    # two updates a step: the second trains on samples of the policy before the first, where the ratio and the divergence move
    common = ["steps=2", "updates_per_step=2", "train_batch_size=2"]
    unclipped = tmp_path / "unclipped"
    run(_config(unclipped, *common, "clip_range=1e30"), pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    wide = tmp_path / "wide"
    run(_config(wide, *common, "loss=dppo_kl", "dppo_delta=1e30"), pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    assert _same(_lora(wide), _lora(unclipped))  # -A r, masked nowhere: PPO's surrogate with no clip, bit for bit
    assert all(r["train/masked_fraction"] == 0.0 and r["train/divergence"] > 0 for r in _metrics(wide))
    tight = tmp_path / "tight"
    run(_config(tight, *common, "loss=dppo_tv", "dppo_delta=1e-30"), pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    masked = [r["train/masked_fraction"] for r in _metrics(tight)]
    assert all(0 < m < 0.5 for m in masked), masked  # only second updates can be masked: their first half never is
    assert not _same(_lora(tight), _lora(unclipped))


# ---------------------------------------------------------------------------------------------
# GDPO (advantage.aggregate) and diversity in the step's advantages
# ---------------------------------------------------------------------------------------------
def test_step_advantages_gdpo_from_a_combined_rewards_outputs_and_diversity(tmp_path):
    from cac_align.rewards.combine import CombinedReward
    from cac_align.rewards.guards import step_advantages
    from cac_align.rewards.toy import BrightnessReward, ColourReward
    from cac_align.rl.advantages import normalize_then_sum
    from cac_align.rl.gardo import diversity_multipliers, latent_features
    from cac_align.video import Video

    rng = np.random.default_rng(0)
    videos = [Video(rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8), fps=16.0) for _ in range(6)]
    reward = CombinedReward([BrightnessReward(), ColourReward("green", "less")], weights=[3.0, 1.0])
    output = reward(videos, ["p"] * 6, [{"group": g} for g in (0, 0, 0, 1, 1, 1)])
    groups = [0, 0, 0, 1, 1, 1]
    config = _config(tmp_path, "advantage.aggregate=normalize_then_sum")
    latents = torch.randn(6, 4, 2, 4, 4)
    # one sampled batch: its last (only) step's latents
    trajectories = [Trajectory(latents=latents[:, None], log_probs=None, sigmas=None, timesteps=None)]
    got = step_advantages(config, reward, [output], output.scores, groups, trajectories, lambda v: v)
    brightness = np.array([v.frames.mean() / 255 for v in videos])
    green = np.array([1 - v.frames[..., 1].mean() / 255 for v in videos])
    want = normalize_then_sum({"brightness": brightness, "colour": green}, groups, weights={"brightness": 0.75, "colour": 0.25}, clip=config.adv_clip_max)
    assert np.allclose(got.advantages, want.advantages, atol=1e-6) and (got.trainable == want.trainable).all()
    # a single reward has no parts to normalize apart: the trainer refuses it at setup (one line)
    with pytest.raises(RecipeError, match="normalizes each component of a combined reward; 'brightness' has one"):
        run(_config(tmp_path / "single", "advantage.aggregate=normalize_then_sum", "steps=1"), pipe=build_tiny_wan_pipeline(seed=0),
            decode=latent_preview)
    # diversity: the combined score's advantages times GARDO's multipliers on the pooled latents, clipped again
    plain = step_advantages(_config(tmp_path), reward, [output], output.scores, groups, trajectories, lambda v: v)
    amplified = step_advantages(_config(tmp_path, "regularize.diversity=latents"), reward, [output], output.scores, groups, trajectories,
                                lambda v: v)
    multipliers = diversity_multipliers(output.scores, latent_features(latents), groups)
    assert np.allclose(amplified.advantages, np.clip(plain.advantages * multipliers, -5, 5), atol=1e-6) and not np.allclose(multipliers, 1)


def test_nft_takes_the_gates_weights_and_an_adaptive_reference(tmp_path, monkeypatch):
    from cac_align.jobs import nft

    seen = []
    loss = nft.nft_loss

    def recorded(*args, **kwargs):
        seen.append(kwargs.get("kl_weights"))
        return loss(*args, **kwargs)

    monkeypatch.setattr(nft, "nft_loss", recorded)
    out = tmp_path / "nft"
    config = _config(out, *JUDGE, "steps=2", "regularize.gate=uncertain", "regularize.reference=adaptive", "regularize.reset_every=1",
                     "regularize.fraction=0.5", "regularize.adapt_fraction=false", "checkpoint_every=1",
                     recipe=REPO_ROOT / "recipes/align/nft_tiny.yaml", job="nft", cls=nft.NftConfig)
    nft.run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    rows = _metrics(out)
    assert seen and all(w is not None for w in seen)  # every micro-batch's slice of the gate's weights reached the loss
    weights = torch.cat(seen)
    assert (weights > 0).any() and (weights == 0).any()
    assert [r.get("regularize/reference_reset", 0.0) for r in rows] == [0.0, 1.0] and 0 < rows[0]["regularize/gated_fraction"] < 1
    assert (out / "checkpoints/step_000002/reference.safetensors").is_file() and (out / "checkpoints/step_000002/old_policy.safetensors").is_file()


def test_nft_trains_on_the_guarded_advantages_projected_then_held(tmp_path, monkeypatch):
    """The benchmark's guarded arm through NFT's update (its trainer extends flow-grpo's step): ``regularize.project``,
    the gate with ``hold: worst_case`` and the adaptive reference. The advantages that reach ``nft_loss`` are the
    proxy's projected off the judge's, then the gate's marked samples lowered to the judge's, computed here by hand
    from the recorded scores and the gate's marks; the reference resets at every step."""
    from cac_align.jobs import nft
    from cac_align.rewards import guards
    from cac_align.rl.advantages import group_advantages

    seen, gates, calls = [], [], []
    judge_advantages, kl_weights, step_gate, loss = guards.judge_advantages, guards.RunGuards.kl_weights, guards.step_gate, nft.nft_loss

    def recorded_judges(auxiliaries, groups, trained, **kwargs):
        seen.append(auxiliaries["green"].copy())
        return judge_advantages(auxiliaries, groups, trained, **kwargs)

    def recorded_step(self, judged, scores, adv, *args):
        seen.append(scores.copy())
        return kl_weights(self, judged, scores, adv, *args)

    def recorded_gate(settings, state, proxy, judges, trained):
        weights, said = step_gate(settings, state, proxy, judges, trained)
        gates.append(weights.copy())
        return weights, said

    def recorded_loss(*args, **kwargs):
        calls.append((args[5].clone(), kwargs.get("kl_weights")))  # advantages[lo:hi]
        return loss(*args, **kwargs)

    monkeypatch.setattr(guards, "judge_advantages", recorded_judges)
    monkeypatch.setattr(guards.RunGuards, "kl_weights", recorded_step)
    monkeypatch.setattr(guards, "step_gate", recorded_gate)
    monkeypatch.setattr(nft, "nft_loss", recorded_loss)
    out = tmp_path / "nft"
    config = _config(out, *JUDGE, "steps=2", "regularize.project=true", "regularize.gate=uncertain", "regularize.hold=worst_case",
                     "regularize.fraction=0.5", "regularize.adapt_fraction=false", "regularize.reference=adaptive", "regularize.reset_every=1",
                     "generator.num_inference_steps=2", "timestep_fraction=0.5", recipe=REPO_ROOT / "recipes/align/nft_tiny.yaml", job="nft",
                     cls=nft.NftConfig)
    nft.run(config, pipe=build_tiny_wan_pipeline(seed=0), decode=latent_preview)
    rows = _metrics(out)
    groups = [k // 4 for k in range(8)]  # 2 prompts x 4 videos, micro-batches of 2, one trained timestep
    per_step = len(calls) // 2
    for step in range(2):
        proxy, judge, marked = seen[2 * step], seen[2 * step + 1], gates[step] > 0
        a = group_advantages(proxy, groups, clip=config.adv_clip_max).advantages.astype(np.float64)
        j = group_advantages(judge, groups, clip=config.adv_clip_max).advantages.astype(np.float64)
        dot = float(a @ j)
        projected = a - dot / float(j @ j) * j if dot < 0 else a
        expected = projected.copy()
        expected[marked] = np.minimum(projected[marked], j[marked])
        assert marked.any() and not marked.all()
        reached = torch.cat([c[0] for c in calls[per_step * step: per_step * (step + 1)]]).numpy()
        assert reached == pytest.approx(expected.astype(np.float32), abs=1e-6), step
        assert all(kl is None for _, kl in calls)  # the hold is the advantage: no KL weights, the KL on every sample
        assert rows[step]["regularize/projected"] == float(dot < 0)
        assert rows[step]["regularize/cosine"] == pytest.approx(dot / np.sqrt((a @ a) * (j @ j)), abs=1e-6)
    assert any(r["regularize/projected"] for r in rows)  # the two conflicted on a step: the projection acted
    assert [r.get("regularize/reference_reset", 0.0) for r in rows] == [0.0, 1.0]  # reset_every=1: before the second step


# ---------------------------------------------------------------------------------------------
# The proxy that can be hacked (benchmarks/rl/reward_hacking.py), short
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # two 10-step runs of the benchmark's toy (about 20 s): `pytest -m slow tests/jobs/test_guards.py`
def test_the_hackable_proxy_is_hacked_by_plain_flow_grpo_and_the_gate_watches_every_training_sample(tmp_path):
    """The benchmark's toy: trained on brightness, plain Flow-GRPO raises the green with the other channels, so the
    held-out judge (less green) falls while the proxy rises: the hack is real (3 seeds x 20 steps in benchmarks/README.md).
    With the gate its judge scores every training sample and the KL holds some of them; what that buys on this toy is the
    benchmark's table, not a promise of this test (docs/flow_grpo.md, "What they did on a proxy built to be hacked")."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "rl"))
    try:
        import reward_hacking
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks" / "rl"))
    plain = reward_hacking.train("plain", 1, 10, 5, tmp_path / "plain", [])
    assert [r["step"] for r in plain] == [0, 5, 10]
    assert plain[-1]["eval/reward_mean"] > plain[0]["eval/reward_mean"] and plain[-1]["eval/colour/mean"] < plain[0]["eval/colour/mean"]
    gated = reward_hacking.train("gate_base", 1, 10, 5, tmp_path / "gate", [])
    rows = [r for r in _metrics(tmp_path / "gate") if r["step"] > 0]  # the training steps (step 0 trains nothing)
    assert all(np.isfinite(r["regularize/colour_mean"]) for r in rows) and any(r["regularize/gated_fraction"] > 0 for r in rows)
    assert gated[0]["eval/reward_mean"] == plain[0]["eval/reward_mean"]  # the same step 0: the arms differ only in their guards
