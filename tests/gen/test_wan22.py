"""Wan2.2's two layouts behind the one velocity model (cac_align.gen.experts.WanDenoiser): the
TI2V-5B's per-token timesteps and the A14B's two experts. With the SDE noise off our sampler steps
exactly as ``WanPipeline.__call__`` does (same latents for the same seeds and settings), each
step's log-probability is the Gaussian of Flow-GRPO's step, and the expert diffusers would use
serves each timestep."""

from __future__ import annotations

import math

import pytest
import torch

from cac_align.gen.experts import WanDenoiser
from cac_align.rl.sde import flow_sigmas
from cac_align.gen.families.wan import A14B_BOUNDARY_RATIO, build_tiny_wan22_a14b_pipeline, build_tiny_wan22_ti2v_pipeline
from cac_align.gen.generator import GeneratorConfig, predict_velocity, sample_with_log_probs, scheduler_shift
from cac_align.gen.families.wan import WAN22_A14B, WAN22_TI2V

PROMPTS = ["a red ball in the park", "a dog walking"]
SEEDS = (11, 12)
LAYOUTS = {
    # name: (builder, frame side, guidance, guidance_2)
    "ti2v": (build_tiny_wan22_ti2v_pipeline, 64, 3.0, None),
    "a14b": (build_tiny_wan22_a14b_pipeline, 32, 4.0, 3.0),
}


def _config(name: str, steps: int = 6) -> GeneratorConfig:
    _, side, guidance, guidance_2 = LAYOUTS[name]
    return GeneratorConfig(name=f"tiny-random:wan22-{name}", dtype="float32", device="cpu", height=side, width=side, num_frames=9,
                           num_inference_steps=steps, guidance_scale=guidance, guidance_scale_2=guidance_2, negative_prompt="")


def _ours(pipe, config, noise_level, denoiser=None):
    family = config.family
    embeds, negative = family.encode_prompts(pipe, PROMPTS, config.negative_prompt, family.guidance(config), config.max_sequence_length)
    sigmas, timesteps = flow_sigmas(config.num_inference_steps, scheduler_shift(pipe))
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    denoiser = denoiser or family.denoiser(pipe)
    trajectory = sample_with_log_probs(pipe, denoiser, embeds, negative, generators, config=config, sigmas=sigmas, timesteps=timesteps,
                                       noise_level=noise_level)
    return trajectory, denoiser, embeds, negative


def _theirs(pipe, config):
    extra = {"guidance_scale_2": config.guidance_scale_2} if config.guidance_scale_2 is not None else {}
    return pipe(prompt=PROMPTS, negative_prompt=[config.negative_prompt] * 2, height=config.height, width=config.width,
                num_frames=config.num_frames, num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent", **extra).frames


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_ode_sampler_is_the_pipelines_own(name):
    pipe = LAYOUTS[name][0](seed=0)
    config = _config(name)
    trajectory, _, _, _ = _ours(pipe, config, noise_level=0.0)
    theirs = _theirs(pipe, config)
    channels = 48 if name == "ti2v" else 16  # the 5B's VAE has 48 latent channels, 16x spatial compression
    assert theirs.shape == trajectory.latents[:, -1].shape == (2, channels, 3, config.height // (16 if name == "ti2v" else 8), config.width // (16 if name == "ti2v" else 8))
    torch.testing.assert_close(trajectory.latents[:, -1], theirs.float(), rtol=0, atol=1e-5)
    # ... and the comparison can fail: the A14B sampled by its first expert alone, or the TI2V with
    # no guidance, give other latents
    if name == "a14b":
        wrong = _ours(pipe, config, noise_level=0.0, denoiser=WanDenoiser(pipe.transformer))[0].latents[:, -1]
    else:
        wrong = _ours(pipe, _config(name).__class__(**{**config.__dict__, "guidance_scale": 1.0}), noise_level=0.0)[0].latents[:, -1]
    assert (wrong - theirs).abs().max() > 100 * 1e-5


def test_each_timestep_is_served_by_the_expert_diffusers_would_use():
    pipe = build_tiny_wan22_a14b_pipeline(seed=0)
    config = _config("a14b")
    calls = {0: [], 1: []}
    hooks = [expert.register_forward_hook(lambda m, a, k, out, i=i: calls[i].append(float(k["timestep"].flatten()[0])), with_kwargs=True)
             for i, expert in enumerate((pipe.transformer, pipe.transformer_2))]
    try:
        _ours(pipe, config, noise_level=0.0)
    finally:
        for hook in hooks:
            hook.remove()
    boundary = A14B_BOUNDARY_RATIO * 1000
    _, timesteps = flow_sigmas(config.num_inference_steps, scheduler_shift(pipe))
    high = [float(t) for t in timesteps if t >= boundary]
    low = [float(t) for t in timesteps if t < boundary]
    assert high and low  # the schedule crosses the boundary: both experts serve
    assert calls[0] == [t for t in high for _ in range(2)]  # conditional and unconditional pass each
    assert calls[1] == [t for t in low for _ in range(2)]


def test_ti2v_gives_every_token_its_timestep():
    pipe = build_tiny_wan22_ti2v_pipeline(seed=0)
    denoiser = WAN22_TI2V.denoiser(pipe)
    latents = torch.zeros(2, 48, 3, 4, 4)
    t = denoiser.model_timestep(torch.tensor(937.5), latents)
    # 3 latent frames x (4 / 2) x (4 / 2) tokens of the 2x2 patches, each with t
    assert t.shape == (2, 12) and torch.equal(t, torch.full((2, 12), 937.5))
    assert WAN22_A14B.denoiser(build_tiny_wan22_a14b_pipeline(0)).model_timestep(torch.tensor(5.0), latents).shape == (2,)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_one_timestep_per_sample_is_each_samples_own_step(name):
    # dpo noises each pair to its own level: a (B,) timestep gives every sample the velocity of its
    # own step (its expert, its per-token timesteps), the batch split by expert and put back in order
    pipe = LAYOUTS[name][0](seed=0)
    family = _config(name).family
    denoiser = family.denoiser(pipe)
    channels = pipe.transformer.config.in_channels
    latents = torch.randn(3, channels, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    embeds, _ = family.encode_prompts(pipe, ["a red ball", "a dog", "a cat on a sofa"], None, family.guidance(None, guided=False), 512)
    timesteps = torch.tensor([950.0, 300.0, 900.0])  # the A14B: high, low, high expert
    unguided = family.guidance(None, guided=False)
    with torch.no_grad():
        batched = denoiser(latents, timesteps, embeds, None, unguided, dtype=torch.float32)
        alone = torch.cat([denoiser(latents[i : i + 1], timesteps[i], embeds[i : i + 1], None, unguided, dtype=torch.float32) for i in range(3)])
        mixed_up = denoiser(latents, timesteps[[1, 0, 2]], embeds, None, unguided, dtype=torch.float32)
    assert torch.allclose(batched, alone, atol=1e-5)
    assert (mixed_up[0] - batched[0]).abs().max() > 1e-3  # the wrong level (and, for the A14B, expert) is another velocity
    if name == "ti2v":
        assert denoiser.model_timestep(timesteps, latents).shape == (3, 3 * 2 * 2)
        assert torch.equal(denoiser.model_timestep(timesteps, latents)[:, 0], timesteps)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_steps_log_prob_is_flow_grpos_gaussian(name):
    """log p(x_{j+1} | x_j) recorded while sampling equals the Gaussian of Flow-GRPO's step worked
    out here from the velocity: mean x + dt (v + s^2 / (2 sigma) (x + (1 - sigma) v)), std
    s sqrt(-dt), averaged over the elements."""
    pipe = LAYOUTS[name][0](seed=0)
    config = _config(name, steps=4)
    trajectory, denoiser, embeds, negative = _ours(pipe, config, noise_level=0.7)
    for j in range(config.num_inference_steps):
        x, nxt = trajectory.latents[:, j], trajectory.latents[:, j + 1]
        with torch.no_grad():
            v = predict_velocity(denoiser, x, trajectory.timesteps[j], embeds, negative, config.family.guidance(config), torch.float32)
        sigma, sigma_next = float(trajectory.sigmas[j]), float(trajectory.sigmas[j + 1])
        dt = sigma_next - sigma
        # sigma_t = a sqrt(sigma / (1 - sigma)), with sigma_max (the second sigma) for 1 - sigma at sigma = 1
        s = 0.7 * math.sqrt(sigma / (1 - (float(trajectory.sigmas[1]) if sigma >= 1.0 else sigma)))
        mean = x + dt * (v + s**2 / (2 * sigma) * (x + (1 - sigma) * v))
        std = s * math.sqrt(-dt)
        by_hand = (-((nxt - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
        torch.testing.assert_close(trajectory.log_probs[:, j], by_hand, rtol=0, atol=1e-4)
