"""Flow-GRPO math: the SDE step, its log-prob, the PPO-clip + KL loss, group advantages."""

import math

import numpy as np
import pytest
import torch

from cac_align.rl.sde import flow_grpo_loss, flow_sigmas, gaussian_log_prob, noise_scale, sde_step
from cac_align.rl.advantages import group_advantages

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # 0.9189385


def test_sde_step_hand_computed():
    # Two elements, s = 0.5, s' = 0.25 (dt = -0.25), sigma_t = 0.5:
    #   sigma_t^2 / (2 s) = 0.25, std = 0.5 * sqrt(0.25) = 0.25
    #   element 1: x = 1, v = 2:  x + (1-s) v = 2;    mean = 1 + (-0.25) * (2 + 0.25 * 2) = 0.375
    #   element 2: x = 0, v = -1: x + (1-s) v = -0.5; mean = 0 + (-0.25) * (-1 - 0.125) = 0.28125
    #   eps = (2, 0): x' = (0.375 + 0.5, 0.28125)
    #   log densities: -2 - log 0.25 - 0.91894 = -1.53264 and -log 0.25 - 0.91894 = 0.46736
    #   log_prob = their mean = -0.53264
    x = torch.tensor([[1.0, 0.0]])
    v = torch.tensor([[2.0, -1.0]])
    step = sde_step(x, v, 0.5, 0.25, 0.5, noise=torch.tensor([[2.0, 0.0]]))
    torch.testing.assert_close(step.mean, torch.tensor([[0.375, 0.28125]]))
    torch.testing.assert_close(step.prev_sample, torch.tensor([[0.875, 0.28125]]))
    assert float(step.std) == pytest.approx(0.25)
    expected = ((-2 - math.log(0.25) - LOG_SQRT_2PI) + (-math.log(0.25) - LOG_SQRT_2PI)) / 2
    assert step.log_prob.shape == (1,)
    assert float(step.log_prob[0]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(-0.532644, abs=1e-6)


def test_sde_step_per_sample_sigmas_and_float32():
    # Per-sample sigmas broadcast over (B, C, F, H, W); bf16 inputs are computed in float32.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 2, 2)
    v = torch.randn(2, 3, 2, 2, 2)
    eps = torch.randn(2, 3, 2, 2, 2)
    sig, nxt, st = torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.25]), torch.tensor([0.2, 0.4])
    both = sde_step(x, v.bfloat16(), sig, nxt, st, noise=eps)
    assert both.prev_sample.dtype == torch.float32 and both.log_prob.dtype == torch.float32
    for i in range(2):
        one = sde_step(x[i : i + 1], v[i : i + 1].bfloat16(), sig[i], nxt[i], st[i], noise=eps[i : i + 1])
        torch.testing.assert_close(both.prev_sample[i], one.prev_sample[0])
        torch.testing.assert_close(both.log_prob[i], one.log_prob[0])


def test_log_prob_is_the_closed_form_gaussian_mean():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5)
    v = torch.randn(3, 4, 5)
    step = sde_step(x, v, 0.7, 0.6, 0.3, noise=torch.randn(3, 4, 5))
    normal = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean))
    expected = normal.log_prob(step.prev_sample).mean(dim=(1, 2))
    torch.testing.assert_close(step.log_prob, expected)
    # scoring a given x' (training) gives the same numbers as sampling it
    again = sde_step(x, v, 0.7, 0.6, 0.3, prev_sample=step.prev_sample)
    torch.testing.assert_close(again.log_prob, step.log_prob)
    torch.testing.assert_close(gaussian_log_prob(step.prev_sample, step.mean, step.std), step.log_prob)


def test_zero_noise_is_the_euler_step():
    torch.manual_seed(2)
    x, v = torch.randn(2, 6), torch.randn(2, 6)
    sigma_t = noise_scale(0.6, 0.0, sigma_max=0.95)
    step = sde_step(x, v, 0.6, 0.4, sigma_t)
    torch.testing.assert_close(step.prev_sample, x + (0.4 - 0.6) * v)


def test_sde_step_rejects_increasing_sigma_and_missing_noise():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="smaller"):
        sde_step(x, x, 0.3, 0.5, 0.1, noise=x)
    with pytest.raises(ValueError, match="noise"):
        sde_step(x, x, 0.5, 0.3, 0.1)


def test_noise_scale_schedules():
    # sqrt: a * sqrt(s / (1 - s)); a = 0.3: s = 0.5 -> 0.3, s = 0.8 -> 0.3 * 2 = 0.6,
    # s = 1 uses 1 - sigma_max = 0.1 in the denominator: 0.3 * sqrt(10) = 0.948683
    got = noise_scale(torch.tensor([0.5, 0.8, 1.0]), 0.3, sigma_max=0.9)
    torch.testing.assert_close(got, torch.tensor([0.3, 0.6, 0.3 * math.sqrt(10)]))
    # linear: sigma_min + (sigma_max - sigma_min) * s = 0.1 + 0.8 * 0.5 = 0.5
    assert float(noise_scale(0.5, 0.3, schedule="linear", sigma_max=0.9, sigma_min=0.1)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        noise_scale(0.5, 0.3, schedule="cosine", sigma_max=0.9)


def test_flow_sigmas_follow_diffusers_shifted_schedule():
    # diffusers' FlowMatchEulerDiscreteScheduler(shift=3) with 2 steps: its smallest training sigma
    # is shift(1/1000) = 0.003 / 1.002 = 0.00299401; set_timesteps spaces t linearly from 1000 to
    # 2.99401 and shifts again: 3 * 0.00299401 / (1 + 2 * 0.00299401) = 0.0089286; then a terminal 0.
    sigmas, timesteps = flow_sigmas(2, shift=3.0)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.0089286, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(timesteps, sigmas[:-1] * 1000)


def test_flow_grpo_loss_hand_computed():
    # ratios exp(0.1) = 1.10517 and 1; advantages +1 and -1; clip 0.05:
    #   sample 1: max(-1.10517, -1.05) = -1.05;  sample 2: max(1, 1) = 1  -> policy loss -0.025
    #   clip fraction 1/2; approx KL 0.5 * mean(0.01, 0) = 0.0025
    #   KL: sample 1 means (1, 1) vs (0, 2): mean sq diff 1, / (2 * 0.5^2) = 2; sample 2: 0 -> 1.0
    logp = torch.tensor([0.1, 0.0])
    old = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    mean = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    ref = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    loss, m = flow_grpo_loss(logp, old, adv, clip_range=0.05, mean=mean, ref_mean=ref, std=0.5, beta=0.1)
    assert float(m["policy_loss"]) == pytest.approx(-0.025, abs=1e-6)
    assert float(m["kl"]) == pytest.approx(1.0)
    assert float(loss) == pytest.approx(-0.025 + 0.1, abs=1e-6)
    assert float(m["clip_fraction"]) == pytest.approx(0.5)
    assert float(m["approx_kl"]) == pytest.approx(0.0025)
    # separate low/high clip: 1.105 < 1 + 0.2 is not clipped -> (-1.10517 + 1) / 2
    _, m2 = flow_grpo_loss(logp, old, adv, clip_range=(0.05, 0.2))
    assert float(m2["policy_loss"]) == pytest.approx((-math.exp(0.1) + 1) / 2, abs=1e-6)
    assert float(m2["clip_fraction"]) == 0.0
    # weight 0 drops sample 2 but keeps dividing by B = 2: policy loss -1.05 / 2; KL 2 / 2
    _, m3 = flow_grpo_loss(
        logp, old, adv, clip_range=0.05, mean=mean, ref_mean=ref, std=0.5, beta=0.1, weights=torch.tensor([1.0, 0.0])
    )
    assert float(m3["policy_loss"]) == pytest.approx(-0.525, abs=1e-6)
    assert float(m3["kl"]) == pytest.approx(1.0)
    assert float(m3["clip_fraction"]) == pytest.approx(1.0)  # of the kept samples


def test_flow_grpo_loss_gradient_pushes_logprob_along_the_advantage():
    logp = torch.zeros(2, requires_grad=True)
    loss, _ = flow_grpo_loss(logp, torch.zeros(2), torch.tensor([2.0, -1.0]), clip_range=0.2)
    loss.backward()
    # d/dlogp of mean(-A * exp(logp)) at 0 = -A / 2
    torch.testing.assert_close(logp.grad, torch.tensor([-1.0, 0.5]))
    with pytest.raises(ValueError, match="KL"):
        flow_grpo_loss(logp, torch.zeros(2), torch.zeros(2), clip_range=0.2, beta=0.1)


def test_group_advantages_hand_worked():
    # group a: (1, 3): mean 2, std 1 -> (-1, 1); group b: (2, 2) zero variance -> 0, not trainable;
    # group c: (NaN, 5): one valid reward -> zero variance.  2 of 3 groups have zero variance.
    rewards = [1.0, 3.0, 2.0, 2.0, float("nan"), 5.0]
    groups = ["a", "a", "b", "b", "c", "c"]
    out = group_advantages(rewards, groups, eps=0.0)
    np.testing.assert_allclose(out.advantages, [-1, 1, 0, 0, 0, 0])
    assert out.trainable.tolist() == [True, True, False, False, False, False]
    assert out.zero_std_fraction == pytest.approx(2 / 3)
    assert out.num_groups == 3
    # global std over the valid rewards (1, 3, 2, 2, 5): mean 2.6, var 9.2 / 5 = 1.84
    glob = group_advantages(rewards, groups, std="global", eps=0.0)
    np.testing.assert_allclose(glob.advantages[:2], [-1 / math.sqrt(1.84), 1 / math.sqrt(1.84)], rtol=1e-6)
    # eps in the denominator (Flow-GRPO: 1e-4) and clipping
    np.testing.assert_allclose(group_advantages(rewards, groups).advantages[:2], [-1 / 1.0001, 1 / 1.0001], rtol=1e-6)
    np.testing.assert_allclose(group_advantages(rewards, groups, eps=0.0, clip=0.5).advantages[:2], [-0.5, 0.5])
    # an explicit validity mask drops a sample like NaN does
    masked = group_advantages([1.0, 3.0, 7.0], ["a", "a", "a"], valid=[True, True, False], eps=0.0)
    np.testing.assert_allclose(masked.advantages, [-1, 1, 0])


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="group keys"):
        group_advantages([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="std"):
        group_advantages([1.0], ["a"], std="batch")


def test_sde_schedule_is_the_one_transition_of_sampling_and_training():
    from cac_align.rl.sde import SDESchedule

    sigmas = torch.tensor([1.0, 0.75, 0.5])
    sqrt_schedule = SDESchedule(sigmas, noise_level=0.5)
    # sigma_t = a * sqrt(s / (1 - s)); at s = 1 the schedule's second sigma stands in for s in 1 - s
    assert float(sqrt_schedule.noise_scale(1)) == pytest.approx(0.5 * math.sqrt(0.75 / 0.25))
    assert float(sqrt_schedule.noise_scale(0)) == pytest.approx(0.5 * math.sqrt(1.0 / 0.25))
    linear = SDESchedule(sigmas, noise_level=0.0, schedule="linear")
    assert float(linear.noise_scale(1)) == pytest.approx(0.5 + (0.75 - 0.5) * 0.75)  # sigma_min + (max - min) * s
    x, v, eps = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    step = sqrt_schedule.step(1, x, v, noise=eps)
    by_hand = sde_step(x, v, 0.75, 0.5, 0.5 * math.sqrt(3.0), noise=eps)
    torch.testing.assert_close(step.prev_sample, by_hand.prev_sample)
    torch.testing.assert_close(step.log_prob, by_hand.log_prob)


def test_clipped_surrogate_hand_worked():
    from cac_align.rl.advantages import clipped_surrogate

    # r = e^0.5 = 1.6487 (above 1 + 0.2) and e^-0.5 = 0.6065 (below 1 - 0.2), each with A = +1 and -1:
    # max(-A r, -A clip(r)): A = 1, r high -> max(-1.6487, -1.2) = -1.2 (the gain is clipped);
    # A = -1, r high -> max(1.6487, 1.2) = 1.6487; A = 1, r low -> max(-0.6065, -0.8) = -0.6065;
    # A = -1, r low -> max(0.6065, 0.8) = 0.8
    log_ratio = torch.tensor([0.5, 0.5, -0.5, -0.5])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    got = clipped_surrogate(log_ratio, advantages, 0.2, 0.2)
    assert got.tolist() == pytest.approx([-1.2, math.exp(0.5), -math.exp(-0.5), 0.8], rel=1e-6)


# ---------------------------------------------------------------------------------------
# The rest of the shared RL core (cac_align.rl)
# ---------------------------------------------------------------------------------------
def test_step_indices_is_a_seeded_permutation_per_epoch():
    from cac_align.run.dist import step_indices

    # 5 items, 2 per step: positions 0-4 are epoch 0's permutation, 5-9 epoch 1's
    steps = [step_indices(5, 2, s, seed=(7, 3)) for s in range(5)]
    flat = [i for step in steps for i in step]
    assert flat[:5] == np.random.default_rng([7, 3, 0]).permutation(5).tolist()
    assert flat[5:] == np.random.default_rng([7, 3, 1]).permutation(5).tolist()
    assert step_indices(5, 2, 1, seed=7) == np.random.default_rng([7, 0]).permutation(5).tolist()[2:4]
    with pytest.raises(ValueError):
        step_indices(0, 2, 0, seed=7)


def test_per_process_merge_sums_nan_stats_and_seeds():
    from cac_align.config import RecipeError
    from cac_align.rl.advantages import nan_mean_std
    from cac_align.run.dist import derive_seed, per_process
    from cac_align.run.metrics import merge_sums

    assert per_process(8, 4, "videos", "hint") == 2
    with pytest.raises(RecipeError, match=r"videos = 6 cannot be split evenly over 4 processes; launch 1, 2, 3 or 6 processes, or change it"):
        per_process(6, 4, "videos", "change it")
    # two processes: (sum, count) pairs become means over everything; a zero count is left out
    merged = merge_sums([{"kl": (1.0, 2.0), "window_s": (0.0, 0.0)}, {"kl": (5.0, 2.0), "window_s": (0.0, 0.0)}])
    assert merged == {"kl": 1.5}
    assert nan_mean_std(np.array([1.0, np.nan, 3.0])) == (2.0, 1.0)
    assert all(math.isnan(v) for v in nan_mean_std(np.array([np.nan])))
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)


def test_save_checkpoint_is_complete_or_absent(tmp_path):
    import json

    from accelerate import Accelerator

    from cac_align.run.checkpoints import checkpoints, read_checkpoint_state, save_checkpoint

    accelerator = Accelerator(cpu=True)

    def write(folder):
        (folder / "weights.txt").write_text("w")

    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step, write, {"extra": step}, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_000002", "step_000003"]
    assert read_checkpoint_state(tmp_path / "checkpoints/step_000003") == {"step": 3, "extra": 3}

    def crash(folder):
        (folder / "weights.txt").write_text("half")
        raise KeyboardInterrupt  # killed while writing checkpoint 4

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 4, crash, {}, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_000002", "step_000003"]  # the torn one is not a checkpoint
    assert (tmp_path / "checkpoints/.tmp_step_000004").is_dir()
    save_checkpoint(accelerator, tmp_path, 4, write, {}, keep=2)  # the rerun replaces it
    assert [p.name for p in checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    assert json.loads((tmp_path / "checkpoints/step_000004/state.json").read_text()) == {"step": 4}


def test_log_metrics_writes_null_for_nan(tmp_path):
    import json

    from accelerate import Accelerator

    from cac_align.run.metrics import log_metrics

    log_metrics(Accelerator(cpu=True), tmp_path, 3, {"reward": float("nan"), "kl": 0.5}, trackers=False)
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "reward": None, "kl": 0.5}
