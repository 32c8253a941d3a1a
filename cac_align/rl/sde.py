"""The stochastic sampling step of Flow-GRPO for flow-matching models, with its log-probability.

A flow-matching model predicts a velocity ``v`` with ``x_sigma = (1 - sigma) * x0 + sigma * noise``.
Its deterministic sampler is the Euler ODE step ``x' = x + (sigma' - sigma) * v``. Flow-GRPO
(Liu et al., 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", Eq. 9-12) turns it
into an SDE with the same marginals, so that each step is a Gaussian policy whose log-density
can be differentiated:

    dt   = sigma' - sigma                                                  (< 0)
    mean = x + dt * (v + sigma_t**2 / (2 * sigma) * (x + (1 - sigma) * v))
    std  = sigma_t * sqrt(-dt)
    x'   = mean + std * eps,   eps ~ N(0, I)

``sigma_t`` is the noise scale (:func:`noise_scale`). The log-probability of ``x'`` is the Gaussian
log-density **averaged** (not summed) over every non-batch element, as in Flow-GRPO, so its size
does not grow with the video's resolution. With ``sigma_t = 0`` the step is the Euler step.

Everything is computed in float32 whatever the model's dtype: bf16 rounding in the mean would
swamp the PPO ratio ``exp(logp_new - logp_old)``, whose useful range is 1 +- 1e-4.

The policy-gradient loss on these steps lives here too (:func:`flow_grpo_loss`): PPO-clip on the
per-step ratio plus the closed-form KL between the current and the reference policy's Gaussians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from cac_align.rl.advantages import clipped_surrogate

__all__ = [
    "NOISE_SCHEDULES",
    "SDESchedule",
    "SDEStep",
    "SideStreamLoss",
    "flow_grpo_loss",
    "flow_sigmas",
    "gaussian_log_density",
    "gaussian_log_prob",
    "noise_scale",
    "sde_step",
]

# "sqrt": sigma_t = a * sqrt(s / (1 - s)), Flow-GRPO's schedule (noise level a; CaC §4.2: a = 0.3).
# "linear": sigma_t = sigma_min + (sigma_max - sigma_min) * s, the schedule of Flow-GRPO's Wan
#   trainer (no noise level; sigma_max / sigma_min are the sampling schedule's second and last sigma).
NOISE_SCHEDULES = ("sqrt", "linear")


def _expand(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample ``(B,)`` value shaped to broadcast against ``like`` ``(B, ...)``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(value.shape[0], *([1] * (like.ndim - 1)))


def flow_sigmas(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling schedule of diffusers' ``FlowMatchEulerDiscreteScheduler``.

    Returns:
        sigmas: ``(num_steps + 1,)`` float32, from 1 down to a terminal 0.
        timesteps: ``(num_steps,)`` float32, the transformer's timestep input (``sigma * 1000``).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    scheduler.set_timesteps(num_steps, device="cpu")
    return scheduler.sigmas.float().clone(), scheduler.timesteps.float().clone()


def noise_scale(
    sigma: torch.Tensor | float,
    noise_level: float,
    *,
    schedule: str = "sqrt",
    sigma_max: float,
    sigma_min: float = 0.0,
    pure_noise: bool = False,
) -> torch.Tensor:
    """The SDE's noise scale ``sigma_t`` at ``sigma``.

    Args:
        sigma: current sigma(s), scalar or ``(B,)``.
        noise_level: ``a`` of the "sqrt" schedule (0 gives the ODE); unused by "linear".
        schedule: "sqrt" (``a * sqrt(s / (1 - s))``) or "linear" (``sigma_min + (sigma_max - sigma_min) * s``).
        sigma_max: the schedule's largest sigma below 1 (its second entry). At ``s = 1`` the
            "sqrt" form divides by zero; like Flow-GRPO we use ``1 - sigma_max`` there instead.
        sigma_min: the schedule's last sigma ("linear" only).
        pure_noise: ``sigma`` stands for pure noise though it is below 1 (a schedule that starts short of it:
            Helios's 0.99985): "sqrt" takes the ``s = 1`` form there too, ``1 - sigma_max`` in the denominator.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if schedule == "sqrt":
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        start = (sigma >= 1.0) | pure_noise
        denominator = 1.0 - torch.where(start, torch.full_like(sigma, sigma_max), sigma)
        return noise_level * torch.sqrt(sigma / denominator)
    if schedule == "linear":
        return sigma_min + (sigma_max - sigma_min) * sigma
    raise ValueError(f"unknown noise schedule {schedule!r} (one of {NOISE_SCHEDULES})")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std^2), averaged over all non-batch elements.

    Args:
        x, mean: ``(B, ...)``; std: scalar or ``(B,)``, > 0.

    Returns:
        ``(B,)`` float32.
    """
    x, mean = x.float(), mean.float()
    std = _expand(std, x)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std^2) at every element (``(B, ...)`` float32): what :func:`gaussian_log_prob`
    averages, for a layout of one's own (the audio's per-frame log-density:
    :func:`cac_align.gen.generator.side_frame_density`). ``std``: scalar or ``(B,)``."""
    x, mean = x.float(), mean.float()
    std = _expand(torch.as_tensor(std).reshape(-1) if torch.as_tensor(std).ndim else std, x)
    return -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)


def position_log_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std^2) at each latent position, averaged over the channels.

    Args:
        x, mean: ``(B, C, T, H, W)``; std: scalar or ``(B,)``, > 0.

    Returns:
        ``(B, T, H, W)`` float32, whose mean over positions is :func:`gaussian_log_prob` (up to
        float rounding): the per-position log-probability of localized credit
        (:mod:`cac_align.rl.credit`).
    """
    x, mean = x.float(), mean.float()
    std = _expand(std, x)
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=1)


@dataclass
class SDEStep:
    """One SDE step.

    Attributes:
        prev_sample: ``x'`` ``(B, ...)`` float32 (the next, less noisy latent).
        log_prob: ``(B,)`` float32, log p(x' | x) averaged over elements; NaN-free only when std > 0.
        mean: ``(B, ...)`` float32, the Gaussian's mean.
        std: ``(B, 1, ...)`` or scalar float32, the Gaussian's standard deviation.
        log_prob_map: ``(B, T, H, W)`` the log-density per latent position (channels averaged),
            when the step was asked for it (``positions=True``); ``log_prob`` is then its mean.
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob_map: torch.Tensor | None = None


def _step_size(sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor | float:
    """``sigma_next - sigma``: in float64 where both sigmas are float64 tensors (a schedule kept as its scheduler
    computes it, Helios's: its Euler step rounds the float64 difference once, so ``dt`` must too), else in float32 from
    the float32 sigmas, as it always was."""
    both64 = all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in (sigma, sigma_next))
    if both64:
        return sigma_next - sigma
    return torch.as_tensor(sigma_next, dtype=torch.float32) - torch.as_tensor(sigma, dtype=torch.float32)


def sde_step(
    sample: torch.Tensor,
    velocity: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    sigma_t: torch.Tensor | float,
    *,
    prev_sample: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    positions: bool = False,
) -> SDEStep:
    """One Flow-GRPO SDE step from ``sigma`` to ``sigma_next`` (module docstring).

    Args:
        sample: ``x`` ``(B, C, F, H, W)`` (any shape with the batch first).
        velocity: the model's ``v``, same shape (any dtype; computed in float32).
        sigma, sigma_next: scalars or ``(B,)``; ``sigma_next < sigma``.
        sigma_t: noise scale, scalar or ``(B,)`` (:func:`noise_scale`).
        prev_sample: a given ``x'`` to score (training recomputes the stored trajectory);
            otherwise ``x' = mean + std * noise``.
        noise: ``eps`` ``(B, ...)``; required when ``prev_sample`` is None and std > 0.
        positions: also give the per-position log-density (``(B, C, T, H, W)`` latents), and the
            per-sample log-prob as its mean (localized credit); off, nothing changes.

    Returns:
        :class:`SDEStep`. With ``sigma_t = 0`` the step is Euler's ``x + dt * v`` and ``log_prob``
        is not defined (NaN/inf); callers use that only for deterministic (eval) sampling.
    """
    x = sample.float()
    v = velocity.float()
    s = _expand(sigma, x)
    dt = _expand(_step_size(sigma, sigma_next), x)
    if torch.any(dt >= 0):
        raise ValueError("sigma_next must be smaller than sigma (sampling goes from noise to data)")
    sigma_t = _expand(sigma_t, x)
    mean = x + dt * (v + sigma_t**2 / (2 * s) * (x + (1 - s) * v))
    std = sigma_t * torch.sqrt(-dt)
    if prev_sample is None:
        if torch.all(std == 0):
            prev_sample = mean
        elif noise is None:
            raise ValueError("sde_step needs `noise` (or `prev_sample`) when the noise scale is > 0")
        else:
            prev_sample = mean + std * noise.float()
    prev_sample = prev_sample.float()
    std_b = std.reshape(-1) if std.ndim else std
    if positions:
        log_prob_map = position_log_density(prev_sample.detach(), mean, std_b)
        return SDEStep(prev_sample=prev_sample, log_prob=log_prob_map.mean(dim=(1, 2, 3)), mean=mean, std=std, log_prob_map=log_prob_map)
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std_b)
    return SDEStep(prev_sample=prev_sample, log_prob=log_prob, mean=mean, std=std)


@dataclass(frozen=True)
class SDESchedule:
    """One sampling schedule's transitions: step ``j`` goes from ``sigmas[j]`` to
    ``sigmas[j + 1]`` with the noise scale of ``noise_level`` and ``schedule`` at ``sigmas[j]``.

    The one place where sampling (``gen.generator.sample_with_log_probs``) and training
    (``cac-align flow-grpo``'s recomputed log-probs) turn a velocity into a transition, so the two
    cannot drift apart.

    Attributes:
        sigmas: ``(num_steps + 1,)`` float32 (:func:`flow_sigmas`), on the latents' device; float64 where the
            family keeps its scheduler's own (Helios): each step's ``dt`` is then their float64 difference.
        noise_level: ``a`` of the "sqrt" schedule (0: the ODE).
        schedule: one of :data:`NOISE_SCHEDULES`.
        pure_noise_start: the first sigma stands for pure noise though it is below 1 (Helios's schedule starts at
            0.99985): step 0's "sqrt" noise scale takes Flow-GRPO's ``s = 1`` form, ``a sqrt(s_0 / (1 - s_1))``, so the
            first step is as wide as a schedule from 1 makes it (std about ``a``) and not 4.5 times wider (docs/helios.md,
            "Noise scale"). False: unchanged for every schedule that starts at 1.
    """

    sigmas: torch.Tensor
    noise_level: float
    schedule: str = "sqrt"
    pure_noise_start: bool = False

    def noise_scale(self, j: int) -> torch.Tensor:
        """``sigma_t`` of step ``j`` (the schedule's extremes are its second and last sigma)."""
        return noise_scale(self.sigmas[j], self.noise_level, schedule=self.schedule,
                           sigma_max=float(self.sigmas[1]), sigma_min=float(self.sigmas[-1]), pure_noise=self.pure_noise_start and j == 0)

    def step(self, j: int, sample: torch.Tensor, velocity: torch.Tensor, *, prev_sample: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, positions: bool = False) -> "SDEStep":
        """Transition ``j`` from ``sample`` given the model's ``velocity`` (:func:`sde_step`):
        draws ``x'`` from ``noise``, or scores a given ``prev_sample``."""
        sigma_t = self.noise_scale(j).to(sample.device)
        return sde_step(sample, velocity, self.sigmas[j], self.sigmas[j + 1], sigma_t, prev_sample=prev_sample, noise=noise, positions=positions)


def flow_grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float | tuple[float, float],
    mean: torch.Tensor | None = None,
    ref_mean: torch.Tensor | None = None,
    std: torch.Tensor | float | None = None,
    beta: float = 0.0,
    weights: torch.Tensor | None = None,
    log_prob_map: torch.Tensor | None = None,
    old_log_prob_map: torch.Tensor | None = None,
    credit: torch.Tensor | None = None,
    estimator: str = "default",
    adv_clamp: float = 5.0,
    hold: torch.Tensor | None = None,
    trust_region: str = "ppo_clip",
    delta: float | None = None,
    old_mean: torch.Tensor | None = None,
    kl_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss on one denoising step plus ``beta`` times the KL to the reference policy.

    ratio = exp(logp - logp_old); policy loss = mean(max(-A * ratio, -A * clip(ratio, 1 - lo, 1 + hi))).
    Both policies are Gaussians with the same std at a step, so their KL is closed-form:
    KL = mean over elements of (mean - ref_mean)^2, divided by 2 std^2, averaged over the batch.

    Args:
        log_prob: ``(B,)`` under the current policy (with grad).
        old_log_prob: ``(B,)`` recorded when sampling.
        advantages: ``(B,)``, already clipped if the caller clips them.
        clip_range: ``eps`` (symmetric) or ``(eps_low, eps_high)``.
        mean, ref_mean: ``(B, ...)`` step means under the current and the reference policy
            (needed when ``beta > 0``).
        std: scalar or ``(B,)`` / ``(B, 1, ...)`` std of the step (needed when ``beta > 0``).
        beta: KL weight.
        weights: optional ``(B,)`` per-sample weights; 0 drops a sample (e.g. from a
            zero-variance group) while keeping the batch shape. Terms are averaged over all B
            samples (``mean(w * term)``); metrics over the samples with ``w > 0``.
        log_prob_map, old_log_prob_map, credit: ``(B, T, H, W)`` each: with all three the policy
            term is the per-position estimator of localized credit
            (:func:`cac_align.rl.credit.localized_policy_loss`, ``A_p = credit_p * A``); the KL
            term is the same either way.
        estimator: with ``credit``: "default" (above) or "vipo"
            (:func:`cac_align.rl.credit.vipo_policy_loss`: the log-density maps must then be
            summed over channels, ``clip_range`` is symmetric, ``A * M`` is clamped to
            ``+-adv_clamp``).
        hold: ``(B, T, H, W)`` confinement's per-position KL weights
            (:func:`cac_align.rl.credit.confined_kl`, needs ``mean``, ``ref_mean``, ``std``):
            added to the loss as ``confine_kl`` whatever ``beta`` is.
        trust_region: "ppo_clip" (the ratio clipped to ``clip_range``: PPO's) or DPPO's divergence
            mask (:mod:`cac_align.rl.trust_region`) in place of the clip: "dppo_kl" (the exact KL of
            the old and the current Gaussian step) or "dppo_tv" (their total variation), each
            averaged over the elements (per position with ``credit``), masked where it passes
            ``delta`` in the direction the advantage pushes. The DPPO loss is the default
            estimator's (not ViPO's).
        delta: DPPO's threshold (needed unless ``ppo_clip``).
        old_mean: ``(B, ...)`` the step's mean under the policy that sampled (DPPO only).
        kl_weights: optional ``(B,)`` per-sample weights of the KL term alone (a gate that
            regularizes some samples only: :func:`cac_align.rl.gardo.step_gate`), on top of
            ``weights``; None: every kept sample's KL counts, as before.

    Returns:
        ``(loss, metrics)``: a scalar loss and detached scalars ``policy_loss``, ``kl``,
        ``ratio_mean``, ``clip_fraction``, ``approx_kl`` (``0.5 * mean((logp - logp_old)^2)``), and
        under DPPO ``divergence`` (the kept samples' mean) and ``masked_fraction``.
    """
    low, high = (clip_range, clip_range) if isinstance(clip_range, (int, float)) else clip_range
    if low < 0 or high < 0:
        raise ValueError(f"clip_range must be >= 0, got {clip_range}")
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    w = torch.ones_like(ratio) if weights is None else weights.to(ratio.dtype)
    divergence = None
    if trust_region != "ppo_clip":  # DPPO: the old and the current Gaussian step's divergence (rl/trust_region.py)
        from cac_align.rl.trust_region import divergence_of

        if mean is None or old_mean is None or std is None or delta is None:
            raise ValueError(f"trust_region={trust_region!r} needs mean, old_mean, std and delta")
        divergence = divergence_of(trust_region, mean.detach(), old_mean, std, positions=credit is not None)
    policy_loss, position_metrics = _policy_term(log_ratio, advantages, w, (low, high), divergence, delta, log_prob_map, old_log_prob_map, credit,
                                                 estimator, adv_clamp)
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise ValueError("beta > 0 needs mean, ref_mean and std for the KL term")
        diff2 = ((mean.float() - ref_mean.float()) ** 2).mean(dim=tuple(range(1, mean.ndim)))
        std_b = torch.as_tensor(std, dtype=torch.float32, device=diff2.device).reshape(-1)
        kw = w if kl_weights is None else w * kl_weights.to(w.dtype)  # a gate: the KL of the samples it names only
        kl = (kw * diff2 / (2 * std_b**2)).mean()
    else:
        kl = torch.zeros((), device=log_prob.device)
    loss = policy_loss + beta * kl
    if hold is not None:  # confinement: the KL per position, outside the located defects
        if mean is None or ref_mean is None or std is None:
            raise ValueError("confinement (hold) needs mean, ref_mean and std for its KL")
        from cac_align.rl.credit import confined_kl

        confine_kl = confined_kl(mean, ref_mean, std, hold, w)
        loss = loss + confine_kl
        position_metrics["confine_kl"] = confine_kl.detach()
    with torch.no_grad():
        kept = w.detach() > 0
        n_kept = kept.sum().clamp(min=1)
        r = ratio.detach()
        metrics = {
            "policy_loss": policy_loss.detach(),
            "kl": kl.detach(),
            "ratio_mean": (r * kept).sum() / n_kept,
            "clip_fraction": (((r < 1.0 - low) | (r > 1.0 + high)) & kept).float().sum() / n_kept,
            "approx_kl": 0.5 * ((log_ratio.detach() ** 2) * kept).sum() / n_kept,
        }
        metrics.update(position_metrics)  # localized: the ratio and clipping over positions
    return loss, metrics


def _policy_term(log_ratio: torch.Tensor, advantages: torch.Tensor, w: torch.Tensor, clip: tuple[float, float], divergence: torch.Tensor | None,
                 delta: float | None, log_prob_map: torch.Tensor | None, old_log_prob_map: torch.Tensor | None, credit: torch.Tensor | None,
                 estimator: str, adv_clamp: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`flow_grpo_loss`'s policy term and its own metrics: per position with ``credit`` (the default
    estimator or ViPO's), else per sample; PPO's clip, or DPPO's mask where ``divergence`` is given."""
    low, high = clip
    if credit is not None:
        if log_prob_map is None or old_log_prob_map is None:
            raise ValueError("localized credit needs log_prob_map and old_log_prob_map beside the credit maps")
        from cac_align.rl.credit import localized_policy_loss, vipo_policy_loss

        if estimator == "vipo":
            if divergence is not None:
                raise ValueError("DPPO's mask is the default localized estimator's; ViPO's estimator clips its ratio")
            if low != high:
                raise ValueError(f"ViPO's estimator clips symmetrically; got clip_range {clip}")
            return vipo_policy_loss(log_prob_map, old_log_prob_map, advantages, credit, low, adv_clamp, w)
        if estimator == "default":
            return localized_policy_loss(log_prob_map, old_log_prob_map, advantages, credit, low, high, w, divergence=divergence, delta=delta)
        raise ValueError(f"unknown localized estimator {estimator!r}")
    if divergence is not None:
        from cac_align.rl.trust_region import divergence_masked_surrogate, masked_fraction

        per_sample, keep = divergence_masked_surrogate(log_ratio, advantages, divergence, delta)
        kept = (w > 0).to(divergence.dtype)
        return (w * per_sample).mean(), {"masked_fraction": masked_fraction(keep, w), "divergence": (divergence * kept).sum() / kept.sum().clamp(min=1)}
    return (w * clipped_surrogate(log_ratio, advantages, low, high)).mean(), {}


class SideStreamLoss:
    """A second latent stream's part of a Flow-GRPO update (the sound, ``audio: trained``; docs/audio.md):
    its recorded latents and log-probs, and its PPO-clip loss (and KL) at a micro-batch's step, from the
    velocity the same transformer call gave it (the side velocity).

    Args:
        sides: its latents at every step ``(B, S + 1, ...)``; ``old_log_probs``: ``(B, S)`` recorded.
        advantages: ``(B,)``; ``credit``: with localized credit, per latent frame ``(B, T_a)`` (then
            ``old_maps`` ``(B, S, T_a)``, the recorded per-frame densities, and ``frames_of``, which lays
            the stream's elements out time first ``(B, T_a, K)``: the family's ``side_frames``).
        transitions: the stream's own SDE schedule (its sigmas).
        beta: the KL weight.
    """

    def __init__(self, sides: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, transitions: "SDESchedule", beta: float,
                 device: Any, credit: torch.Tensor | None = None, frames_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 old_maps: torch.Tensor | None = None) -> None:
        self.sides, self.old, self.advantages, self.transitions, self.beta, self.device = sides, old_log_probs, advantages, transitions, beta, device
        self.credit, self.frames_of, self.old_maps = credit, frames_of, old_maps

    def loss(self, lo: int, hi: int, j: int, velocity: torch.Tensor, ref_velocity: torch.Tensor | None, weights: torch.Tensor,
             clip: tuple[float, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stream's loss at step ``j`` of samples ``lo:hi``, given its velocity (and the reference's)."""
        side, side_next = self.sides[lo:hi, j].to(self.device), self.sides[lo:hi, j + 1].to(self.device)
        policy = self.transitions.step(j, side, velocity, prev_sample=side_next)
        ref_mean = None if ref_velocity is None else self.transitions.step(j, side, ref_velocity, prev_sample=side_next).mean
        localized: dict[str, Any] = {}
        if self.credit is not None:  # per latent frame, as (B, T_a, 1, 1) positions
            frames = self.frames_of(gaussian_log_density(side_next, policy.mean, policy.std)).mean(dim=-1)
            localized = {"log_prob_map": frames[:, :, None, None], "old_log_prob_map": self.old_maps[lo:hi, j].to(self.device)[:, :, None, None],
                         "credit": self.credit[lo:hi, :, None, None]}
            policy_log_prob = frames.mean(dim=1)
        else:
            policy_log_prob = policy.log_prob
        return flow_grpo_loss(policy_log_prob, self.old[lo:hi, j].to(self.device), self.advantages[lo:hi], clip_range=clip, mean=policy.mean,
                              ref_mean=ref_mean, std=policy.std, beta=self.beta, weights=weights, **localized)
