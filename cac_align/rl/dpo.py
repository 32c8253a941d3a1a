"""Localized Diffusion-DPO for a flow-matching video generator (LocalDPO's loss), as pure functions.

A pair is a winner and a loser video of one prompt, both as latents ``(C, T, H, W)``, and
optionally a mask on the latent grid ``(T, H, W)`` in [0, 1] saying where they differ (for a repair
pair: the judged window and boxes that were regenerated). Winner and loser are noised with the
same noise ``eps`` and the same ``sigma`` (:func:`noised_pair`: ``x_t = (1 - sigma) x_0 + sigma
eps``, flow-matching velocity target ``eps - x_0``); the policy ``theta`` (the LoRA on) and the
reference (the frozen base: the LoRA off) each predict both velocities, giving squared errors per
element ``e^{M,k} = (v_M(x_t^k) - (eps - x_0^k))^2``, ``M`` in {theta, ref}, ``k`` in {w, l}.

Per pair ``b`` (LocalDPO, arXiv 2601.04068; ``innerT2V/train_wanx21.py`` lines 641-700 of
1170300714/Local-DPO at 7528e96):

- global errors ``G^{M,k}_b`` = the mean of ``e^{M,k}`` over all elements of the pair's latent;
- masked errors ``R^{M,k}_b`` = the masked mean ``sum(m e) / (C sum(m))`` (``mask_norm:
  sample``), or LocalDPO's own normalization by the mask of the whole batch, ``B sum_b(m e) / (C
  sum_batch(m))`` (``mask_norm: batch``; the two agree for a batch of one pair);
- ``z_b = -beta/2 [(G^{theta,w} - G^{theta,l}) - (G^{ref,w} - G^{ref,l})]`` and ``zR_b`` the same
  with ``R``; the implicit preference of the winner, positive when the policy moved towards it;
- ``loss = mean_b [ w_dpo (-log sigmoid z_b) + w_mdpo (-log sigmoid zR_b) + w_msft R^{theta,w}_b
  + w_sft G^{theta,w}_b ]``, with LocalDPO's weights 1, 1, 0.1, 0.1 and ``beta = 5000``
  (``train_wanx_base.sh``, ``args.py`` 53-82).

A pair without a mask (a Best-of-N pair; or ``mask: none``) has no masked terms: with
``w_msft = w_mdpo = 0`` the loss is Diffusion-DPO (Wallace et al. 2023) plus LocalDPO's SFT term on
the winner (``sft_weight: 0`` removes it). LocalDPO also scales the masked errors by a
corruption-strength weight of its synthetic losers (their SDEdit strength; ``strength``); our pairs
have none, so it is 1.

Departure from their released script, on purpose: it noises with a UniPC scheduler whose
``set_timesteps`` was never called (``train_wanx21.py`` 628), so the noise level runs backwards in
``t`` and leaves [0, 1] (at ``t = 0`` the latent is ``-156 x_0 + 157 eps``), against a target that
assumes the flow-matching path. Here ``x_t`` lies on that path, ``sigma`` drawn as their ``t / 1000``
is (logit-normal, mean 0, std 1), with an optional shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["DpoLossSettings", "MASKS", "MASK_NORMS", "dpo_loss", "noised_pair", "sample_sigmas", "squared_error"]

MASKS = ("local", "none")
MASK_NORMS = ("sample", "batch")


@dataclass
class DpoLossSettings:
    """``loss:`` of a dpo recipe (module docstring; defaults: LocalDPO's Wan-2.1 run).

    Attributes:
        beta: Diffusion-DPO's beta (LocalDPO ``train_wanx_base.sh``: 5000).
        dpo_weight: the global DPO term (LocalDPO: 1).
        mask_dpo_weight: the masked DPO term (LocalDPO: 1).
        sft_weight: the global SFT term on the winner (LocalDPO: 0.1; 0 for plain Diffusion-DPO).
        mask_sft_weight: the masked SFT term on the winner (LocalDPO: 0.1).
        mask: "local" (a repair pair's masked terms) or "none" (global terms only, every pair).
        mask_norm: "sample" (each pair's masked mean) or "batch" (LocalDPO's script: normalized by
            the mask of the whole micro-batch).
        logit_mean, logit_std: ``sigma = sigmoid(N(logit_mean, logit_std))`` (LocalDPO: 0, 1).
        shift: ``sigma <- shift sigma / (1 + (shift - 1) sigma)`` (1: none, as LocalDPO).
    """

    beta: float = 5000.0
    dpo_weight: float = 1.0
    mask_dpo_weight: float = 1.0
    sft_weight: float = 0.1
    mask_sft_weight: float = 0.1
    mask: str = "local"
    mask_norm: str = "sample"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.mask not in MASKS:
            raise ValueError(f"loss.mask must be one of {MASKS}, got {self.mask!r}")
        if self.mask_norm not in MASK_NORMS:
            raise ValueError(f"loss.mask_norm must be one of {MASK_NORMS}, got {self.mask_norm!r}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        weights = (self.dpo_weight, self.mask_dpo_weight, self.sft_weight, self.mask_sft_weight)
        if any(w < 0 or not math.isfinite(w) for w in weights) or not (self.dpo_weight or self.mask_dpo_weight):
            raise ValueError(f"loss weights must be >= 0 with a DPO term on, got dpo {weights[0]}, mask_dpo {weights[1]}, sft {weights[2]}, mask_sft {weights[3]}")
        if self.logit_std <= 0 or self.shift <= 0:
            raise ValueError("loss.logit_std and loss.shift must be > 0")


def sample_sigmas(count: int, generator: torch.Generator, settings: DpoLossSettings, interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``(count,)`` noise levels in (0, 1): logit-normal, then shifted (module docstring).

    With ``interval = (lo, hi)`` narrower than (0, 1), the same distribution restricted to
    ``[lo, hi)``: the normal draw is truncated to the range that maps there (inverse-CDF sampling,
    one uniform per level). A Wan2.2-A14B LoRA on one expert trains on the levels that expert
    serves (its ``[0.875, 1)`` or ``(0, 0.875)``), as the LoRA trainers of one Wan2.2 expert
    restrict theirs (DiffSynth-Studio's ``min/max_timestep_boundary``, musubi-tuner's
    ``min_timestep``/``max_timestep`` with ``preserve_distribution_shape``); the logit-normal's
    shape is kept, only its support is cut."""
    lo, hi = interval
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"a noise level interval in [0, 1] with lo < hi, got {interval}")
    if (lo, hi) == (0.0, 1.0):
        normal = torch.randn(count, generator=generator, dtype=torch.float64)
    else:
        def to_normal(sigma: float) -> float:  # the inverse of the shift, the sigmoid and the affine map
            u = sigma / (settings.shift - (settings.shift - 1) * sigma)
            return (math.log(u / (1 - u)) - settings.logit_mean) / settings.logit_std if 0 < u < 1 else (-math.inf if u <= 0 else math.inf)

        cdf_lo, cdf_hi = (torch.special.ndtr(torch.tensor(to_normal(x), dtype=torch.float64)) for x in (lo, hi))
        uniform = torch.rand(count, generator=generator, dtype=torch.float64)
        normal = torch.special.ndtri(cdf_lo + uniform * (cdf_hi - cdf_lo))
    u = torch.sigmoid(settings.logit_mean + settings.logit_std * normal)
    sigmas = (settings.shift * u / (1 + (settings.shift - 1) * u)).float()
    if (lo, hi) != (0.0, 1.0):  # float32 rounding stays inside: hi is the next expert's first level
        sigmas = sigmas.clamp(min=lo).minimum(torch.nextafter(torch.tensor(hi, dtype=torch.float32), torch.tensor(0.0)))
    return sigmas


def noised_pair(winner: torch.Tensor, loser: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner and loser on the flow-matching path with the same noise and level.

    Args:
        winner, loser: ``(B, C, T, H, W)`` clean latents.
        noise: ``(B, C, T, H, W)`` standard normal, shared by each pair.
        sigmas: ``(B,)`` in (0, 1).

    Returns:
        ``(x_t, target)``, each ``(2B, C, T, H, W)``: winners first, then losers;
        ``x_t = (1 - sigma) x_0 + sigma noise`` and the velocity target ``noise - x_0``.
    """
    s = sigmas.to(winner.dtype).view(-1, 1, 1, 1, 1)
    x0 = torch.cat([winner, loser])
    eps = torch.cat([noise, noise])
    s2 = torch.cat([s, s])
    return (1 - s2) * x0 + s2 * eps, eps - x0


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element squared errors of a ``(2B, ...)`` prediction, split into winners and losers
    ``((B, ...), (B, ...))``, in float32."""
    error = (prediction.float() - target.float()) ** 2
    return error.chunk(2)


def _masked_means(error: torch.Tensor, mask: torch.Tensor, norm: str) -> torch.Tensor:
    """``(B,)`` masked mean of ``error`` ``(B, C, T, H, W)`` under ``mask`` ``(B, T, H, W)``
    broadcast over channels (module docstring); 0 for a pair whose mask is empty."""
    m = mask.to(error.dtype).unsqueeze(1)
    channels = error.shape[1]
    weighted = (m * error).flatten(1).sum(dim=1)
    if norm == "batch":  # LocalDPO train_wanx21.py 645: B * sum / (C * sum of the whole batch's mask)
        total = mask.to(error.dtype).sum()
        return weighted * error.shape[0] / (channels * total) if total > 0 else torch.zeros_like(weighted)
    per_pair = mask.to(error.dtype).flatten(1).sum(dim=1)
    return torch.where(per_pair > 0, weighted / (channels * per_pair.clamp(min=1e-12)), torch.zeros_like(weighted))


def dpo_loss(
    model_winner: torch.Tensor,
    model_loser: torch.Tensor,
    ref_winner: torch.Tensor,
    ref_loser: torch.Tensor,
    settings: DpoLossSettings,
    mask: torch.Tensor | None = None,
    strength: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LocalDPO's loss on a micro-batch of pairs (module docstring).

    Args:
        model_winner, model_loser: ``(B, C, T, H, W)`` the policy's squared errors (with grad).
        ref_winner, ref_loser: the same under the reference (no grad needed).
        settings: weights, beta, the mask's use and normalization.
        mask: ``(B, T, H, W)`` in [0, 1] on the latent grid, or None; a pair whose mask is empty
            (no mask of its own) gets no masked terms.
        strength: optional ``(B,)`` factor on every masked error of a pair, policy and reference
            alike: LocalDPO's corruption-strength weight ``1 + (eta - 0.75) / 0.15`` of a loser made
            by SDEdit at strength ``eta`` (``train_wanx21.py`` 581-583, 645-646); None is 1, as for
            our pairs.

    Returns:
        ``(loss, metrics)``: the scalar loss (a mean over the B pairs) and detached metrics:
        each term's mean (``dpo``, ``mask_dpo``, ``sft``, ``mask_sft``), ``implicit_acc`` (the
        share of pairs with ``z > 0``), ``margin`` (mean ``z``), their masked counterparts over the
        pairs with a mask (``implicit_acc_mask``, ``margin_mask``; NaN when none has one),
        ``model_mse`` / ``ref_mse`` (mean squared error over winners and losers) and
        ``masked_pairs`` (how many pairs had masked terms).
    """
    b = model_winner.shape[0]
    dims = tuple(range(1, model_winner.dim()))
    g = {k: v.mean(dim=dims) for k, v in {"mw": model_winner, "ml": model_loser, "rw": ref_winner, "rl": ref_loser}.items()}
    z = -0.5 * settings.beta * ((g["mw"] - g["ml"]) - (g["rw"].detach() - g["rl"].detach()))
    dpo = -F.logsigmoid(z)
    total = settings.dpo_weight * dpo + settings.sft_weight * g["mw"]
    has_mask = torch.zeros(b, dtype=torch.bool, device=model_winner.device)
    zr = mask_dpo = mask_sft = torch.zeros(b, device=model_winner.device)
    if settings.mask == "local" and mask is not None:
        has_mask = mask.flatten(1).sum(dim=1) > 0
        scale = torch.ones(b, device=model_winner.device, dtype=model_winner.dtype) if strength is None else strength.to(model_winner.device, model_winner.dtype)
        r = {k: scale * _masked_means(v, mask, settings.mask_norm)
             for k, v in {"mw": model_winner, "ml": model_loser, "rw": ref_winner, "rl": ref_loser}.items()}
        zr = -0.5 * settings.beta * ((r["mw"] - r["ml"]) - (r["rw"].detach() - r["rl"].detach()))
        mask_dpo, mask_sft = -F.logsigmoid(zr), r["mw"]
        total = total + has_mask.float() * (settings.mask_dpo_weight * mask_dpo + settings.mask_sft_weight * mask_sft)
    loss = total.mean()
    with torch.no_grad():
        masked = has_mask.float()
        n_masked = masked.sum()
        metrics = {
            "loss": loss.detach(),
            "dpo": dpo.mean(),
            "sft": g["mw"].mean(),
            "implicit_acc": (z > 0).float().mean(),
            "margin": z.mean(),
            "mask_dpo": (mask_dpo * masked).sum() / n_masked if n_masked > 0 else torch.tensor(float("nan")),
            "mask_sft": (mask_sft * masked).sum() / n_masked if n_masked > 0 else torch.tensor(float("nan")),
            "implicit_acc_mask": ((zr > 0).float() * masked).sum() / n_masked if n_masked > 0 else torch.tensor(float("nan")),
            "margin_mask": (zr * masked).sum() / n_masked if n_masked > 0 else torch.tensor(float("nan")),
            "model_mse": 0.5 * (g["mw"] + g["ml"]).mean(),
            "ref_mse": 0.5 * (g["rw"] + g["rl"]).mean(),
            "masked_pairs": n_masked,
        }
    return loss, {k: v.detach().float() for k, v in metrics.items()}
