"""DiffusionNFT's objective as pure functions, one per equation (Zheng et al., arXiv 2509.16117).

DiffusionNFT does reinforcement learning on the *forward* process: the videos are sampled with any
solver (the family's own ODE, any number of steps, no SDE, no log-probabilities), noised again at a
few of the sampling timesteps, and the policy is trained by flow matching towards its own clean
samples, pulled towards the good ones and pushed from the bad ones through an implicit negative
policy. Read from the authors' ``scripts/train_nft_sd3.py`` (NVlabs/DiffusionNFT at 24af555: the
inner loop's loss and ``return_decay``) and FastVideo 0.2.1's port
(``fastvideo/train/methods/rl/diffusion_nft.py``: ``DiffusionNFTMethod._training_timestep_loss``,
``_return_decay``, ``_update_old_model``). The two agree on every equation below; where they
differ (the counter the old policy's decay reads) the function says so.

With ``sigma`` the flow-matching time (``t = timestep / 1000``; ``x_t = (1 - sigma) x0 + sigma eps``),
``v`` the current policy's velocity, ``v_old`` the old (sampling) policy's, ``v_ref`` the reference's:

1. :func:`reward_weight`: ``r = clamp(clip(A, -c, c) / (2 c) + 1/2, 0, 1)`` with ``c = adv_clip_max``,
   after the advantage mode (``all``, ``positive_only``, ``negative_only``, ``one_only``, ``binary``);
2. :func:`nft_velocities`: ``v+ = beta v + (1 - beta) v_old`` and ``v- = (1 + beta) v_old - beta v``;
3. :func:`x0_from_velocity`: ``x0_hat = x_t - sigma v``;
4. :func:`adaptive_x0_error`: ``e = mean((x0_hat - x0)^2 / sg(max(mean|x0_hat - x0|, 1e-5)))`` per sample
   (``sg``: no gradient); with a credit map ``M`` (localized NFT, ours) the squared error at each
   latent position is weighted by ``M_p`` before the mean;
5. :func:`velocity_kl`: ``kl = mean((v - v_ref)^2)`` per sample;
6. :func:`nft_loss`: ``L = mean_b c * (r e+ + (1 - r) e-) / beta + kl_beta * mean_b kl``;
7. :func:`old_policy_decay` and :func:`update_old_policy`: after each training step
   ``theta_old <- d theta_old + (1 - d) theta`` with ``d = min(uprate * (n - flat), uphold)``
   (0 before ``flat``).
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = [
    "ADV_MODES", "DECAY_SCHEDULES", "adaptive_x0_error", "nft_loss", "nft_velocities", "old_policy_decay", "reward_weight",
    "update_old_policy", "velocity_kl", "x0_from_velocity",
]

ADV_MODES = ("all", "positive_only", "negative_only", "one_only", "binary")

# ``decay_type`` -> (flat, uprate, uphold): DiffusionNFT ``scripts/train_nft_sd3.py::return_decay``
# (FastVideo ``DiffusionNFTMethod._return_decay``, the same numbers). 1 is the authors' default
# (``config/nft.py::_get_config``, also sd3_multi_reward); 2 their OCR run (sd3_ocr); 0 copies the policy every step.
DECAY_SCHEDULES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}

# The floor of the adaptive weight (both sources: ``.clip(min=0.00001)``).
WEIGHT_FLOOR = 1e-5


def _expand(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` against ``like``."""
    return value.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def reward_weight(advantages: torch.Tensor, *, adv_clip_max: float = 5.0, mode: str = "all") -> torch.Tensor:
    """Eq. 1: a sample's optimality probability ``r`` in [0, 1] from its group advantage.

    ``A`` is clipped to ``[-c, c]``, shaped by ``mode``, and mapped linearly: ``A = -c`` -> 0,
    ``A = 0`` -> 1/2, ``A = c`` -> 1. Source: ``train_nft_sd3.py`` (``advantages_clip``,
    ``normalized_advantages_clip``, ``r``); FastVideo ``_training_timestep_loss`` (same lines).

    Args:
        advantages: ``(B,)`` group advantages (:func:`cac_align.rl.advantages.group_advantages`, unclipped).
        adv_clip_max: ``c`` (authors: ``config.train.adv_clip_max``, 5).
        mode: ``all`` (as is), ``positive_only`` (negatives -> 0), ``negative_only`` (positives -> 0),
            ``one_only`` (1 where positive, else 0: note the result is then ``r`` in {1/2, 1/2 + 1/(2c)}),
            ``binary`` (``sign(A)``, as the sources, before the mapping).

    Returns:
        ``(B,)`` ``r``, in the dtype of ``advantages``.
    """
    if mode not in ADV_MODES:
        raise ValueError(f"adv_mode must be one of {ADV_MODES}, got {mode!r}")
    if adv_clip_max <= 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    a = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    if mode == "positive_only":
        a = torch.clamp(a, 0, adv_clip_max)
    elif mode == "negative_only":
        a = torch.clamp(a, -adv_clip_max, 0)
    elif mode == "one_only":
        a = torch.where(a > 0, torch.ones_like(a), torch.zeros_like(a))
    elif mode == "binary":
        a = torch.sign(a)
    return torch.clamp(a / adv_clip_max / 2.0 + 0.5, 0, 1)


def nft_velocities(prediction: torch.Tensor, old_prediction: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2: the positive and the implicit negative policy's velocities.

    ``v+ = beta v + (1 - beta) v_old`` and ``v- = (1 + beta) v_old - beta v``: the two lie on the
    line through ``v_old`` and ``v``, mirrored about ``v_old``; only ``v`` carries a gradient.
    Source: ``train_nft_sd3.py`` (``positive_prediction``, ``implicit_negative_prediction``);
    FastVideo ``_training_timestep_loss`` (same names).

    Args:
        prediction: ``(B, ...)`` the trained policy's velocity (with grad).
        old_prediction: ``(B, ...)`` the old policy's velocity at the same input (detached here).
        beta: the guidance strength (authors: ``config.beta``, 1.0 by default, 0.1 in their runs).

    Returns:
        ``(v_plus, v_minus)``, each shaped like ``prediction``.
    """
    if beta <= 0:
        raise ValueError(f"nft beta must be > 0 (the loss divides by it), got {beta}")
    old = old_prediction.detach()
    return beta * prediction + (1 - beta) * old, (1.0 + beta) * old - beta * prediction


def x0_from_velocity(x_t: torch.Tensor, sigmas: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Eq. 3: the clean latent a velocity implies, ``x0_hat = x_t - sigma v`` (rectified flow,
    ``x_t = (1 - sigma) x0 + sigma eps``, ``v = eps - x0``).

    Args:
        x_t: ``(B, ...)``; sigmas: ``(B,)`` in [0, 1]; velocity: ``(B, ...)``.
    """
    return x_t - _expand(sigmas, x_t) * velocity


def adaptive_x0_error(x0_prediction: torch.Tensor, x0: torch.Tensor, credit: torch.Tensor | None = None,
                      floor: float = WEIGHT_FLOOR) -> torch.Tensor:
    """Eq. 4: the per-sample adaptively weighted x0 error.

    ``e_b = mean((x0_hat - x0)^2) / sg(max(mean|x0_hat - x0|, floor))``: the weight is the sample's
    own mean absolute error, computed in float64 and without gradient, so ``e``'s gradient is that
    of a squared error scaled to the sample's difficulty. Source: ``train_nft_sd3.py``
    ("adaptive weighting": ``weight_factor``, ``positive_loss``); FastVideo
    ``_training_timestep_loss`` (``weight_factor``, ``negative_weight_factor``).

    Localized NFT (ours): with ``credit`` (``(B, T, H, W)``, mean 1 per sample,
    :func:`cac_align.rl.credit.credit_maps`) the squared error is averaged over the channels,
    weighted by ``M_p`` at each latent position and then averaged over the positions. With
    ``M = 1`` this is the authors' ``e`` exactly (a mean of means over equal-sized groups). The
    adaptive weight stays the whole sample's (the map moves where the error counts, not the scale).

    Args:
        x0_prediction: ``(B, C, ...)`` (with grad); x0: ``(B, C, ...)`` the sampled clean latent.
        credit: optional ``(B, *x0.shape[2:])`` per-position weights.
        floor: the weight's floor (sources: 1e-5).

    Returns:
        ``(B,)`` float64 (the weight's dtype, as in the sources).
    """
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        weight = (x0_prediction.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clip(min=floor)
    squared = (x0_prediction - x0) ** 2 / weight
    if credit is None:
        return squared.mean(dim=dims)
    if x0.ndim < 3 or tuple(credit.shape) != (x0.shape[0], *x0.shape[2:]):
        raise ValueError(f"credit maps {tuple(credit.shape)} do not match the latents' positions {(x0.shape[0], *x0.shape[2:])}")
    per_position = squared.mean(dim=1) * credit.to(squared.dtype)
    return per_position.mean(dim=tuple(range(1, per_position.ndim)))


def velocity_kl(prediction: torch.Tensor, ref_prediction: torch.Tensor) -> torch.Tensor:
    """Eq. 5: the KL term to the reference policy, ``mean((v - v_ref)^2)`` per sample (the two
    policies' flows compared by their velocities). Source: ``train_nft_sd3.py`` (``kl_div_loss``);
    FastVideo ``_training_timestep_loss`` (``kl_div_loss``).

    Returns: ``(B,)``, in ``prediction``'s dtype.
    """
    return ((prediction - ref_prediction.detach()) ** 2).mean(dim=tuple(range(1, prediction.ndim)))


def nft_loss(
    prediction: torch.Tensor,
    old_prediction: torch.Tensor,
    x_t: torch.Tensor,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    advantages: torch.Tensor,
    *,
    beta: float,
    adv_clip_max: float = 5.0,
    adv_mode: str = "all",
    ref_prediction: torch.Tensor | None = None,
    kl_beta: float = 0.0,
    weights: torch.Tensor | None = None,
    credit: torch.Tensor | None = None,
    kl_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 6: DiffusionNFT's loss on one trained timestep of a batch.

        r = reward_weight(A);  v+, v- = nft_velocities(v, v_old, beta)
        e+ = adaptive_x0_error(x_t - sigma v+, x0);  e- = adaptive_x0_error(x_t - sigma v-, x0)
        policy = mean_b w_b * c * (r e+ + (1 - r) e-) / beta
        loss = policy + kl_beta * mean_b w_b * mean((v - v_ref)^2)

    **Correspondence with FastVideo 0.2.1** (``DiffusionNFTMethod._training_timestep_loss(sample,
    advantages, timestep_idx)``), on the same tensors:

    ==========================  ===========================================================
    here                        FastVideo
    ==========================  ===========================================================
    ``prediction``              ``forward_prediction`` (``self.student.predict_noise(xt, ...)``)
    ``old_prediction``          ``old_prediction`` (``self.old.predict_noise``)
    ``ref_prediction``          ``ref_forward_prediction`` (``self.reference.predict_noise``)
    ``x_t``                     ``xt = (1 - t) * x0 + t * noise``
    ``x0``                      ``sample["latents_clean"]``
    ``sigmas``                  ``t = sample["timesteps"][:, timestep_idx] / student.num_train_timesteps``
    ``advantages``              ``advantages`` (the column of ``_compute_advantages``' output)
    ``beta``                    ``self._nft_beta`` (``method.beta``)
    ``adv_clip_max``            ``self._adv_clip_max``; ``adv_mode``: ``self._adv_mode``
    ``kl_beta``                 ``self._kl_beta`` (``method.kl_beta``)
    ``weights=None``            (no per-sample weights there: all ones)
    ``credit=None``             (no localized credit there)
    returned ``loss``           ``losses["total_loss"]``; metrics ``policy_loss``,
                                ``unweighted_policy_loss``, ``kl_div_loss`` the same names
    ==========================  ===========================================================

    The authors' ``train_nft_sd3.py`` is the same with ``kl_beta = config.train.beta``.

    Args:
        prediction: ``(B, C, ...)`` the trained policy's velocity at ``x_t`` (with grad).
        old_prediction: ``(B, C, ...)`` the old policy's velocity (no grad needed).
        x_t: ``(B, C, ...)`` the noised sample; x0: ``(B, C, ...)`` the sampled clean latent.
        sigmas: ``(B,)`` the flow-matching times of ``x_t``, in (0, 1].
        advantages: ``(B,)`` group advantages, unclipped (``reward_weight`` clips them).
        beta, adv_clip_max, adv_mode: :func:`nft_velocities`, :func:`reward_weight`.
        ref_prediction: ``(B, C, ...)`` the reference policy's velocity; needed when ``kl_beta > 0``.
        kl_beta: the KL weight (authors: ``config.train.beta``, 1e-4 for SD3).
        weights: optional ``(B,)``: 0 drops a sample (an invalid reward) keeping the batch shape;
            terms are ``mean_b(w_b * term_b)`` over all B, as :func:`cac_align.rl.sde.flow_grpo_loss`.
        credit: optional ``(B, T, H, W)`` credit maps (localized NFT, :func:`adaptive_x0_error`).
        kl_weights: optional ``(B,)`` weights of the KL term alone (a gate that regularizes some
            samples only: :func:`cac_align.rl.gardo.step_gate`), on top of ``weights``.

    Returns:
        ``(loss, metrics)``: a scalar loss (float64, as the sources') and detached scalars
        ``policy_loss``, ``unweighted_policy_loss``, ``kl_div_loss``, ``old_deviate``
        (``mean((v - v_old)^2)``), ``r_mean``.
    """
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta}")
    if kl_beta > 0 and ref_prediction is None:
        raise ValueError("kl_beta > 0 needs ref_prediction (the reference policy's velocity) for the KL term")
    r = reward_weight(advantages, adv_clip_max=adv_clip_max, mode=adv_mode)
    v_plus, v_minus = nft_velocities(prediction, old_prediction, beta)
    positive = adaptive_x0_error(x0_from_velocity(x_t, sigmas, v_plus), x0, credit)
    negative = adaptive_x0_error(x0_from_velocity(x_t, sigmas, v_minus), x0, credit)
    r = r.to(positive.dtype)
    per_sample = r * positive / beta + (1.0 - r) * negative / beta
    w = torch.ones_like(per_sample) if weights is None else weights.to(per_sample.dtype).reshape(-1)
    policy_loss = (w * per_sample * adv_clip_max).mean()
    loss = policy_loss
    kl = torch.zeros((), dtype=per_sample.dtype, device=per_sample.device)
    if ref_prediction is not None:
        kw = w if kl_weights is None else w * kl_weights.to(w.dtype).reshape(-1)  # a gate: the KL of the samples it names only
        kl = (kw.to(prediction.dtype) * velocity_kl(prediction, ref_prediction)).mean()
        if kl_beta > 0:
            loss = loss + kl_beta * kl
    kept = w > 0
    metrics = {
        "policy_loss": policy_loss.detach(),
        "unweighted_policy_loss": (per_sample[kept].mean() if kept.any() else per_sample.new_tensor(float("nan"))).detach(),
        "kl_div_loss": kl.detach(),
        "old_deviate": ((prediction.detach() - old_prediction.detach()) ** 2).mean(),
        "r_mean": (r[kept].mean() if kept.any() else r.new_tensor(float("nan"))).detach(),
    }
    return loss, metrics


def old_policy_decay(step: int, schedule: int | tuple[int, float, float] = 1) -> float:
    """Eq. 7: the old policy's EMA decay at a step, ``0`` before ``flat``, else
    ``min((step - flat) * uprate, uphold)``.

    Source: ``train_nft_sd3.py::return_decay`` (``decay_type`` 0, 1, 2: :data:`DECAY_SCHEDULES`),
    called after each outer epoch with ``global_step``, the count of *optimizer* updates so far;
    FastVideo's ``_update_old_model(iteration)`` passes its outer iteration instead. Our trainer
    passes the optimizer-update count, as the authors do (one per step when ``updates_per_step: 1``,
    where the two agree).

    Args:
        step: the number of optimizer updates done.
        schedule: a ``decay_type`` (0, 1, 2) or ``(flat, uprate, uphold)``.
    """
    if isinstance(schedule, int):
        if schedule not in DECAY_SCHEDULES:
            raise ValueError(f"decay_type must be one of {sorted(DECAY_SCHEDULES)}, got {schedule}")
        flat, uprate, uphold = DECAY_SCHEDULES[schedule]
    else:
        flat, uprate, uphold = schedule
    if step < flat:
        return 0.0
    return min((step - flat) * uprate, uphold)


@torch.no_grad()
def update_old_policy(old: Iterable[torch.Tensor], current: Iterable[torch.Tensor], decay: float) -> None:
    """Eq. 7's update, in place: ``old <- decay * old + (1 - decay) * current`` for each pair of
    tensors (the trained LoRA weights and the old policy's copy). ``decay = 0`` copies the policy.
    Source: ``train_nft_sd3.py`` (the loop after each epoch); FastVideo ``_update_old_model``."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    old, current = list(old), list(current)
    if len(old) != len(current):
        raise ValueError(f"old policy has {len(old)} tensors, the policy {len(current)}")
    for target, source in zip(old, current):
        target.copy_(target * decay + source.detach().to(target.dtype) * (1.0 - decay))
