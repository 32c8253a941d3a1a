"""DPPO's trust region on Flow-GRPO's SDE steps: the policy gradient masked where the current
policy has moved too far from the one that sampled, in the direction its advantage pushes.

DPPO (Qi et al., 2026, "Rethinking the Trust Region in LLM Reinforcement Learning",
arXiv:2602.04879) replaces PPO's ratio clip (:func:`cac_align.rl.advantages.clipped_surrogate`)
by a mask on a divergence ``D`` between the sampling policy and the current one::

    loss = -A * r * M,    r = exp(log_ratio),    M = 0  where  (A > 0 and r > 1 and D > delta_high)
                                                           or  (A < 0 and r < 1 and D > delta_low)
                                                 M = 1  elsewhere

``M`` carries no gradient: a masked sample contributes nothing, like a clipped one under PPO. An
update that pulls the ratio back toward 1 is never masked. This is the rule of trl's
``DPPOTrainer._compute_divergence_mask`` (``trl/experimental/dppo/dppo_trainer.py``, huggingface/trl
at 06d22b6; strict ``D > delta``, ``delta_high`` on the positive side, ``delta_low`` on the negative)
and of Flow-Factory's Flow-DPPO (PR #181; ``src/flow_factory/trainers/dppo.py`` in
Jayce-Ping/Flow-Factory-Draft at 42b7156, which masks at ``D >= kl_mask_threshold``; the two differ
only at ``D == delta`` exactly). trl writes the loss as ``-A * sg(r) * M * log_prob``: its
gradient is this one's.

**The divergence of an SDE step.** At a Flow-GRPO step both policies are Gaussians with the same
std (:func:`cac_align.rl.sde.sde_step`): the current one ``N(mu, s^2)`` and the sampling one
``N(mu_old, s^2)``. Their KL is exact and symmetric, per element::

    KL_e = (mu_e - mu_old_e)^2 / (2 s^2)

and so is their total variation (the half L1 distance of two same-std 1-D Gaussians)::

    TV_e = erf(|mu_e - mu_old_e| / (2 sqrt(2) s)) = 2 Phi(|mu_e - mu_old_e| / (2 s)) - 1   (<= sqrt(KL_e / 2), Pinsker)

Our log-probabilities are the Gaussian log-density **averaged** over the elements
(:func:`cac_align.rl.sde.gaussian_log_prob`), so the ratio ``r`` is the geometric mean of the
elements' ratios: the policy it measures is one element's, and the expected log-ratio under the
sampling policy is ``-mean_e KL_e``. The divergence consistent with that ratio is therefore the
elementwise divergence **averaged** over the elements, as Flow-Factory's x-based mask computes it
(``(mean - old_mean)^2 / (2 sigma^2)`` with ``sigma = std_dev_t * sqrt(-dt)``, our ``std``, then
``mean`` over every non-batch dimension). The whole latent's KL (the sum) would be the number of
elements times larger and would grow with the video's size; its TV would be ~1 for any real update.

Per sample the divergence is ``(B,)`` (:func:`gaussian_step_kl`); for localized credit's per-position
estimator it is ``(B, T, H, W)``, averaged over the channels only (``positions=True``), beside
:func:`cac_align.rl.sde.position_log_density`'s per-position log-density, and
:func:`divergence_masked_surrogate` masks each position by its own ratio, advantage and divergence.

Scales (not defaults of these functions, which take ``delta`` explicitly): Flow-Factory's Flow-DPPO
masks the mean KL at ``kl_mask_threshold = 1e-6`` (its ``DPPOTrainingArguments`` default and example
configs), verl-omni's ``flow_dppo`` at 1e-5; DPPO's paper recommends 0.05 (KL) and 0.15 (TV) per
LLM token, where a token's divergence is a different quantity. For small moves ``TV_e ~ sqrt(KL_e /
pi)``, so a mean KL of 1e-6 corresponds to a mean TV of about 5.6e-4.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_DELTAS", "TRUST_REGIONS", "divergence_masked_surrogate", "divergence_of", "gaussian_step_kl", "gaussian_step_tv", "masked_fraction"]

# ``loss`` of flow-grpo: PPO's ratio clip, or DPPO's mask on the step's KL or TV
TRUST_REGIONS = ("ppo_clip", "dppo_kl", "dppo_tv")
# ``trust_delta``'s default per divergence: Flow-Factory's Flow-DPPO masks the mean KL at 1e-6
# (``kl_mask_threshold``, its DPPOTrainingArguments default); the TV of the same small move is
# about ``sqrt(KL / pi)`` = 5.6e-4 (module docstring, "Scales")
DEFAULT_DELTAS = {"dppo_kl": 1e-6, "dppo_tv": 5.6e-4}


def _std_like(std: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar, ``(B,)`` or ``(B, 1, ...)`` std shaped to broadcast against ``like`` ``(B, ...)``."""
    std = torch.as_tensor(std, dtype=torch.float32, device=like.device)
    if std.ndim == 0:
        return std
    return std.reshape(-1).reshape(-1, *([1] * (like.ndim - 1)))


def _reduce(per_element: torch.Tensor, positions: bool) -> torch.Tensor:
    """The mean over every non-batch dimension (``(B,)``), or over the channels only (``(B, T, H, W)``)."""
    if positions:
        if per_element.ndim != 5:
            raise ValueError(f"positions=True needs (B, C, T, H, W) latents, got shape {tuple(per_element.shape)}")
        return per_element.mean(dim=1)
    return per_element.mean(dim=tuple(range(1, per_element.ndim)))


def gaussian_step_kl(mean: torch.Tensor, old_mean: torch.Tensor, std: torch.Tensor | float, *, positions: bool = False) -> torch.Tensor:
    """The exact KL between two same-std Gaussian SDE steps, averaged over elements (module docstring).

    ``mean_e (mean_e - old_mean_e)^2 / (2 std^2)``; symmetric in the two means.

    Args:
        mean: ``(B, ...)`` the step's mean under the current policy.
        old_mean: ``(B, ...)`` the same under the policy that sampled (recorded, or recomputed).
        std: scalar, ``(B,)`` or ``(B, 1, ...)``, > 0: the step's std (``SDEStep.std``).
        positions: average over the channels only: ``(B, C, T, H, W)`` in, ``(B, T, H, W)`` out.

    Returns:
        ``(B,)`` (or ``(B, T, H, W)``) float32.
    """
    diff = mean.float() - old_mean.float()
    return _reduce(diff**2 / (2 * _std_like(std, diff) ** 2), positions)


def gaussian_step_tv(mean: torch.Tensor, old_mean: torch.Tensor, std: torch.Tensor | float, *, positions: bool = False) -> torch.Tensor:
    """The exact total variation between two same-std Gaussian steps, elementwise, averaged over
    elements: ``mean_e erf(|mean_e - old_mean_e| / (2 sqrt(2) std))`` (module docstring). Each term is
    in ``[0, 1)`` and at most ``sqrt(KL_e / 2)`` (Pinsker), so the average is at most
    ``sqrt(gaussian_step_kl / 2)`` (Jensen).

    Args and returns as :func:`gaussian_step_kl`.
    """
    diff = mean.float() - old_mean.float()
    return _reduce(torch.erf(diff.abs() / (2 * math.sqrt(2.0) * _std_like(std, diff))), positions)


def divergence_of(kind: str, mean: torch.Tensor, old_mean: torch.Tensor, std: torch.Tensor | float, *, positions: bool = False) -> torch.Tensor:
    """The divergence ``kind`` names (``"dppo_kl"``: :func:`gaussian_step_kl`; ``"dppo_tv"``:
    :func:`gaussian_step_tv`) between the current and the old step, per sample or per position."""
    if kind == "dppo_kl":
        return gaussian_step_kl(mean, old_mean, std, positions=positions)
    if kind == "dppo_tv":
        return gaussian_step_tv(mean, old_mean, std, positions=positions)
    raise ValueError(f"a divergence is 'dppo_kl' or 'dppo_tv', got {kind!r}")


def divergence_masked_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    divergence: torch.Tensor,
    delta: float | tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPPO's masked policy-gradient loss, elementwise (module docstring):
    ``-A * exp(log_ratio) * M``, ``M`` 0 where ``divergence`` passes ``delta`` and the ratio has
    already moved the way ``A`` pushes it.

    Usable per sample (all ``(B,)``) and per position (``log_ratio`` and ``divergence``
    ``(B, T, H, W)``, ``advantages`` the per-position ``credit * A`` or ``A`` shaped ``(B, 1, 1, 1)``).

    What equals what:

    - ``delta = inf`` (or a divergence never above it) masks nothing, and the loss is exactly
      ``-A * exp(log_ratio)``, which is :func:`cac_align.rl.advantages.clipped_surrogate` with
      ``low = high = inf`` (bit for bit); it is not today's ``ppo_clip`` with a finite clip range.
    - At ``log_ratio = 0`` (the first update of a step, where the current policy is the sampler)
      nothing is masked and the loss and its gradient equal ``clipped_surrogate``'s for any clip range.

    Args:
        log_ratio: ``log p_current - log p_old`` (with grad), ``(B,)`` or ``(B, T, H, W)``.
        advantages: broadcasts against ``log_ratio``.
        divergence: ``D`` between the two policies (:func:`gaussian_step_kl` or
            :func:`gaussian_step_tv`), broadcasts against ``log_ratio``; no gradient is taken through it.
        delta: the trust region: one threshold, or ``(delta_low, delta_high)`` for the negative- and
            the positive-advantage side (trl's ``epsilon`` and ``epsilon_high``); each > 0.

    Returns:
        ``(loss, keep)``: the elementwise loss (``log_ratio``'s shape broadcast with the others') and
        the detached float mask ``M`` of the same shape (1 kept, 0 masked).
    """
    low, high = (delta, delta) if isinstance(delta, (int, float)) else delta
    if not (low > 0 and high > 0):
        raise ValueError(f"delta must be > 0 (one value or (delta_low, delta_high)), got {delta}")
    with torch.no_grad():
        d = divergence.detach()
        a = advantages.detach()
        lr = log_ratio.detach()
        pushed_up = (a > 0) & (lr > 0) & (d > high)
        pushed_down = (a < 0) & (lr < 0) & (d > low)
        keep = (~(pushed_up | pushed_down)).to(log_ratio.dtype)
    loss = -advantages * torch.exp(log_ratio) * keep
    return loss, keep


def masked_fraction(keep: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The fraction of masked entries of ``keep`` (:func:`divergence_masked_surrogate`) among the
    samples with ``weights > 0`` (``(B,)``; every sample when None): the metric to log beside
    ``clip_fraction``. 0 when no sample is kept."""
    keep = keep.detach()
    if weights is None:
        counted = torch.ones_like(keep, dtype=torch.bool)
    else:
        counted = (weights.detach() > 0).reshape(-1, *([1] * (keep.ndim - 1))).expand_as(keep)
    n = counted.sum().clamp(min=1)
    return ((keep == 0) & counted).float().sum() / n
