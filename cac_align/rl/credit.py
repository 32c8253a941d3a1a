"""Localized credit: a reward's evidence spread over the latent positions the policy acts on.

Flow-GRPO gives every sample one advantage ``A`` and trains the whole clip's likelihood with it,
so a video whose hand splits for six frames pushes down its background and its good frames too.
CaC says where and when the defect is (a window and per-frame boxes); here that evidence becomes
a map ``M`` over the generator's latent positions ``(T_lat, H_lat, W_lat)``, and the policy loss
becomes ViPO's per-position estimator (Lan et al., arXiv 2511.18719: ``A_p = M(p) * A`` inside a
per-position clipped ratio). ViPO's map is a saliency map (where the picture is salient); ours
is the reward's own verdict (where the judge says the video is wrong).

**The map** (:func:`latent_coverage`, :func:`credit_map`):

1. the evidence becomes a :class:`~cac_align.regions.Region` of the decoded video (the window's
   frames, the boxes dilated by ``dilate``; a window without boxes covers whole frames);
2. the generator's VAE keeps pixel frame 0 as latent frame 0 and compresses each next ``t``
   pixel frames into one: latent frame ``k >= 1`` covers pixel frames ``t (k - 1) + 1 .. t k``;
   one latent pixel covers ``s x s`` pixels (the family's ``latent_grid``: Wan-2.1 and the A14B
   t = 4, s = 8; the TI2V-5B 4, 16; LTX-2 8, 32). A latent position's coverage is the share of
   its pixels (over its frames) inside the region (``edges: soft``), or 1 wherever it touches the
   region (``hard``);
3. the transformer sees patches of latents (Wan: 1 x 2 x 2; LTX-2: 1 x 1 x 1): a patch is as
   covered as its most covered cell (it is one token, denoised as a whole);
4. ``M = outside + (inside - outside) * coverage``, scaled so that ``mean(M) = 1``: the sum of the
   per-position advantages equals the scalar estimator's, so the step size stays as it was.

**Who gets a map** (:func:`credit_maps`): a valid sample whose verdict locates a defect
(``status: abnormal`` with a window or boxes) and whose advantage has the sign ``apply_to`` names:
``negative`` (default) concentrates the blame of a worse-than-its-group video on its defect and
leaves a better-than-its-group video's credit on the whole clip (it was better as a whole);
``all`` localizes both. Every other sample keeps the uniform map (``M = 1``, the per-position
estimator with the scalar's advantage). Evidence that cannot be read (a malformed window or box)
falls back to uniform and is counted, never a crash.

**The estimator** (:func:`localized_policy_loss`): with the per-position log-density ``log p_p``
(:func:`cac_align.rl.sde.sde_step` with ``positions=True``: the Gaussian's log-density averaged
over channels at each latent position; its mean over positions is the per-sample log-prob) and
the one recorded while sampling,

    loss = mean_b w_b * mean_p max(-A_b M_bp r_bp, -A_b M_bp clip(r_bp, 1 - lo, 1 + hi)),
    r_bp = exp(log p_bp - log p_old_bp).

Where ``M_bp = 0`` (``outside: 0``) a position contributes nothing, so no gradient reaches the
policy through it. The recipe's KL to the reference policy is unchanged (per sample, over all
positions).

**Confinement** (``confine > 0``, :func:`hold_map`, :func:`confined_kl`): the map above steers the
update, but the LoRA is shared by every position, so an update that fixes the region moves the
rest of the picture too. Flow-GRPO's KL to the reference is a squared difference of the two
policies' step means, an average over elements, so it splits per latent position; confinement adds
that per-position KL with weight ``confine`` on the positions *outside* each located defect
(``H_bp = confine * (1 - coverage_bp)``):

    kl_confine = mean_b w_b * mean_p H_bp * mean_c (mu_bcp - mu_ref_bcp)^2 / (2 std_b^2).

It holds every sample whose verdict locates a defect, whatever its advantage's sign (where the
defect is not is a fact of the video, not of the group), and nothing else: a normal verdict says
nothing is wrong, not that nothing may change (the recipe's ``beta`` already holds whole videos).

**ViPO's estimator** (``estimator: vipo``, :func:`vipo_scale`, :func:`vipo_policy_loss`), as their
official Wan script computes it (ziqi-nox/ViPO ``fastvideo/train_vipo_wan_fsdp.py`` at f5c99ce):
the per-position log-density *summed* over the latent channels (C times ours), the map min-max
scaled to [0, 1] per latent frame and then over the whole video (a region's map keeps its 0/1
shape; ``inside``/``outside`` do not matter, min-max undoes them), ``A * M`` clamped to
``+-adv_clamp``, a symmetric clip per position, and a plain mean over positions. A sample their
scaling leaves empty (a region that fills whole frames: every frame is constant) keeps the uniform
map, as a sample without evidence does, and is counted as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np

from cac_align.regions import EvidenceError, Region, find_evidence, read_evidence, region_from_evidence

if TYPE_CHECKING:
    import torch

__all__ = [
    "CreditMaps", "LocalizeSettings", "chunk_credit", "chunk_weights", "confined_kl", "credit_map", "credit_maps", "hold_map", "localized_policy_loss", "vipo_policy_loss",
    "vipo_scale", "latent_coverage", "position_terms",
]

APPLY_TO = ("negative", "all")
EDGES = ("hard", "soft")
ESTIMATORS = ("default", "vipo")


@dataclass
class LocalizeSettings:
    """``advantage.localize`` of a flow-grpo recipe.

    Attributes:
        enabled: spread each sample's advantage by its evidence map (off: the scalar estimator,
            bit for bit as before).
        source: whose evidence: "auto" (the first localizing reward in the sample's details: CaC,
            Skyra, or such a component of a combined reward) or a component's name in a combined
            reward (e.g. "cac" in ``ur_cac``).
        apply_to: which samples get a map: "negative" (advantage < 0) or "all" (any advantage != 0).
        inside: the map's weight on the evidence region, before normalization.
        outside: its weight elsewhere (0: the policy loss of a localized sample sees only its
            region; the KL still sees all of it).
        dilate: added to every side of every box, in 0-1000 units of the frame (50 = 5%).
        context_s: added to each side of the window, in seconds.
        edges: "hard" (a latent position touching the region is in it) or "soft" (its covered share).
        confine: weight of the per-position KL to the reference on the positions outside each
            located defect (module docstring, "Confinement"); 0: off, nothing of it runs.
        estimator: "default" (the mean-1 map, channel-averaged log-densities) or "vipo" (ViPO's
            own: channel sums, min-max maps, the ``A * M`` clamp; module docstring).
        adv_clamp: ``estimator: vipo``: ``A * M`` is clamped to ``[-adv_clamp, adv_clamp]``
            (ViPO: 5.0).
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"apply_to": APPLY_TO, "edges": EDGES, "estimator": ESTIMATORS}

    enabled: bool = False
    source: str = "auto"
    apply_to: str = "negative"
    inside: float = 1.0
    outside: float = 0.0
    dilate: float = 50.0
    context_s: float = 0.0
    edges: str = "hard"
    confine: float = 0.0
    estimator: str = "default"
    adv_clamp: float = 5.0  # ViPO train_vipo_wan_fsdp.py: --adv_clip_max 5.0

    def __post_init__(self) -> None:
        if self.apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {APPLY_TO}, got {self.apply_to!r}")
        if self.edges not in EDGES:
            raise ValueError(f"edges must be one of {EDGES}, got {self.edges!r}")
        if not (math.isfinite(self.inside) and math.isfinite(self.outside)) or self.outside < 0 or self.inside <= self.outside:
            raise ValueError(f"need inside > outside >= 0, got inside={self.inside}, outside={self.outside}")
        if self.dilate < 0 or self.context_s < 0:
            raise ValueError(f"dilate and context_s must be >= 0, got {self.dilate}, {self.context_s}")
        if not self.source:
            raise ValueError("source must be 'auto' or a component name of a combined reward")
        if not math.isfinite(self.confine) or self.confine < 0:
            raise ValueError(f"confine must be >= 0 (0: off), got {self.confine}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not self.adv_clamp > 0:
            raise ValueError(f"adv_clamp must be > 0, got {self.adv_clamp}")


# ---------------------------------------------------------------------------------------
# Region -> coverage of Wan's latent positions -> the credit map
# ---------------------------------------------------------------------------------------
def latent_frames(num_frames: int, temporal: int = 4, chunk_frames: int | None = None) -> list[range]:
    """The pixel frames each latent frame covers: frame 0 alone, then ``temporal`` at a time (a
    causal video VAE, Wan's and LTX-2's: latent ``k >= 1`` covers ``temporal * (k - 1) + 1 ..
    temporal * k``).

    ``chunk_frames``: the VAE restarts every ``chunk_frames`` pixel frames (an autoregressive family that
    decodes each chunk alone, Helios: 33 frames from 9 latent frames), so the rule above holds inside each
    chunk: chunk ``c``'s latent ``m c`` covers frame ``chunk_frames * c`` alone and its latent ``m c + j``
    frames ``chunk_frames * c + temporal * (j - 1) + 1 .. chunk_frames * c + temporal * j`` (``m`` latent
    frames a chunk); the last chunk's frames past ``num_frames`` (the clip cut to ``temporal k + 1``) are
    dropped from its last latent frames."""
    if (num_frames - 1) % temporal:
        raise ValueError(f"the VAE's videos have {temporal}k + 1 frames (its temporal factor {temporal}); got {num_frames}")
    if chunk_frames is None:
        return [range(0, 1)] + [range(temporal * (k - 1) + 1, temporal * k + 1) for k in range(1, (num_frames - 1) // temporal + 1)]
    per_chunk = latent_frames(chunk_frames, temporal)
    chunks = max(1, -(-num_frames // chunk_frames))
    return [range(c * chunk_frames + r.start, min(c * chunk_frames + r.stop, num_frames)) for c in range(chunks) for r in per_chunk]


def latent_coverage(region: Region, temporal: int = 4, spatial: int = 8, patch: Sequence[int] = (1, 2, 2), edges: str = "hard",
                    chunk_frames: int | None = None) -> np.ndarray:
    """``(T_lat, H_lat, W_lat)`` float32 in [0, 1]: how much of each latent position the region
    covers (module docstring, steps 2-3).

    Args:
        region: on the decoded video (``num_frames = temporal k + 1``, sizes multiples of ``spatial``).
        temporal, spatial: the VAE's compression (Wan-2.1: 4 frames, 8 pixels; LTX-2: 8, 32).
        patch: the transformer's patch (Wan-2.1: 1 x 2 x 2 latents per token; LTX-2: 1 x 1 x 1).
        edges: "soft" (the covered share) or "hard" (1 wherever the region touches).
        chunk_frames: the VAE restarts every this many frames (:func:`latent_frames`; Helios: 33).
    """
    if region.height % spatial or region.width % spatial:
        raise ValueError(f"frame size {region.height}x{region.width} is not a multiple of the VAE's {spatial}")
    h, w = region.height // spatial, region.width // spatial
    groups = latent_frames(region.num_frames, temporal, chunk_frames)
    cover = np.zeros((len(groups), h, w), dtype=np.float32)
    cache: dict[Any, np.ndarray] = {}
    for k, frames in enumerate(groups):
        per_frame = []
        for f in frames:
            key = region.boxes[f] if region.frames[f] else ()
            if key not in cache:  # frames sharing their boxes share their pooled mask
                cache[key] = region.frame_mask(f, supersample=4).reshape(h, spatial, w, spatial).mean(axis=(1, 3))
            per_frame.append(cache[key])
        cover[k] = np.mean(per_frame, axis=0)
    pt, ph, pw = patch
    if cover.shape[0] % pt or h % ph or w % pw:
        raise ValueError(f"latent grid {cover.shape} does not split into patches {tuple(patch)}")
    blocks = cover.reshape(cover.shape[0] // pt, pt, h // ph, ph, w // pw, pw).max(axis=(1, 3, 5))
    cover = np.repeat(np.repeat(np.repeat(blocks, pt, 0), ph, 1), pw, 2)
    return (cover > 0).astype(np.float32) if edges == "hard" else cover


def credit_map(coverage: np.ndarray, inside: float = 1.0, outside: float = 0.0) -> np.ndarray:
    """``M = outside + (inside - outside) * coverage``, scaled to ``mean(M) = 1`` (module
    docstring, step 4). An empty coverage gives the uniform map."""
    raw = outside + (inside - outside) * np.asarray(coverage, dtype=np.float64)
    total = raw.mean()
    if total <= 0 or not coverage.any():
        return np.ones(coverage.shape, dtype=np.float32)
    return (raw / total).astype(np.float32)


def chunk_credit(maps: Any, chunk: int, chunks: int) -> Any:
    """The part of credit maps ``(B, T_lat, H, W)`` that chunk ``chunk`` of ``chunks`` owns: its ``T_lat / chunks``
    latent frames (an autoregressive family's chunk, Helios's 9), which its denoising steps' per-position loss
    reads. ``maps`` whole for one chunk (every other family). A chunk whose frames the region misses gets
    ``outside`` there (0 by default: its steps take none of the localized advantage); its share of the map's
    mass is its weight (:func:`chunk_weights`)."""
    if chunks == 1:
        return maps
    per_chunk = maps.shape[1] // chunks
    return maps[:, chunk * per_chunk:(chunk + 1) * per_chunk]


def chunk_weights(maps: np.ndarray, chunks: int) -> np.ndarray:
    """``(B, K)``: each chunk's weight, the mean of the credit map ``(B, T_lat, H, W)`` over its latent frames
    (:func:`chunk_credit`), the factor by which its steps' policy term scales the sample's advantage. A uniform
    map gives 1 to every chunk; the weights of one sample average 1 (the map's mean)."""
    maps = np.asarray(maps, dtype=np.float64)
    return maps.reshape(maps.shape[0], chunks, -1).mean(axis=2)


def vipo_scale(coverage: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """ViPO's map scaling: ``(m - min) / (max - min + eps)`` over each latent frame, then once more
    over the whole ``(T, H, W)`` volume (ziqi-nox/ViPO ``fastvideo/train_vipo_wan_fsdp.py`` at
    f5c99ce, lines 245/267 per frame and 306 over the video). A constant frame becomes 0; a map
    whose every frame is constant becomes all 0. float32 in [0, 1]."""
    m = np.asarray(coverage, dtype=np.float32)
    low = m.min(axis=(1, 2), keepdims=True)
    high = m.max(axis=(1, 2), keepdims=True)
    m = (m - low) / (high - low + np.float32(eps))
    return ((m - m.min()) / (m.max() - m.min() + np.float32(eps))).astype(np.float32)


def hold_map(coverage: np.ndarray, confine: float) -> np.ndarray:
    """Confinement's per-position KL weight ``confine * (1 - coverage)`` (module docstring):
    ``confine`` wherever the region is not, 0 on it (between, for ``edges: soft``)."""
    return (confine * (1.0 - np.asarray(coverage, dtype=np.float32))).astype(np.float32)


# ---------------------------------------------------------------------------------------
# A step's maps
# ---------------------------------------------------------------------------------------
@dataclass
class CreditMaps:
    """The maps of a batch of samples and what they say.

    Attributes:
        maps: ``(B, T_lat, H_lat, W_lat)`` float32; 1 everywhere for a uniform sample.
        localized: ``(B,)`` bool: the sample got a map from its evidence.
        inside_mass: ``(B,)`` share of the map's mass on positions the evidence covers (NaN where
            not localized).
        missing: ``(B,)`` bool: the sample should have had a map (valid, advantage of the right
            sign, a verdict that says abnormal) but its evidence was absent or unreadable.
        reasons: index -> why its evidence could not be used.
        hold: ``(B, T_lat, H_lat, W_lat)`` confinement's KL weights (:func:`hold_map`; 0 for a
            sample without a located defect), or None when ``confine`` is 0.
    """

    maps: np.ndarray
    localized: np.ndarray
    inside_mass: np.ndarray
    missing: np.ndarray
    reasons: dict[int, str]
    hold: np.ndarray | None = None


def _evidence_details(details: Mapping[str, Any], source: str) -> Mapping[str, Any] | None:
    """The details to read the evidence from: the sample's own ("auto") or a named component's."""
    if source == "auto":
        return details
    component = (details.get("components") or {}).get(source)
    return None if component is None else (component.get("details") or {})


def credit_maps(
    details: Sequence[Mapping[str, Any]],
    valid: Sequence[bool],
    advantages: Sequence[float],
    settings: LocalizeSettings,
    *,
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    temporal: int = 4,
    spatial: int = 8,
    patch: Sequence[int] = (1, 2, 2),
    chunk_frames: int | None = None,
) -> CreditMaps:
    """One credit map per sample from its reward details (module docstring, "Who gets a map").

    Args:
        details: the reward's per-sample details (``RewardOutput.details``).
        valid: the reward's per-sample validity.
        advantages: ``(B,)`` each sample's advantage.
        settings: ``advantage.localize``.
        num_frames, fps, height, width: the decoded videos' geometry.
        temporal, spatial, patch: the generator's latent grid (Wan-2.1: 4, 8, (1, 2, 2)).
        chunk_frames: the family's chunk, where its VAE restarts every chunk (Helios: 33; :func:`latent_frames`).
    """
    n = len(details)
    shape = (len(latent_frames(num_frames, temporal, chunk_frames)), height // spatial, width // spatial)
    maps = np.ones((n, *shape), dtype=np.float32)
    localized, missing = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    inside_mass = np.full(n, np.nan)
    reasons: dict[int, str] = {}
    hold = np.zeros((n, *shape), dtype=np.float32) if settings.confine > 0 else None
    geometry = dict(num_frames=num_frames, fps=fps, height=height, width=width, temporal=temporal, spatial=spatial, patch=patch,
                    chunk_frames=chunk_frames)
    for i, (entry, ok, advantage) in enumerate(zip(details, valid, advantages)):
        eligible = ok and (advantage < 0 if settings.apply_to == "negative" else advantage != 0)
        if not (eligible or (ok and hold is not None)):  # confinement reads every valid sample's evidence
            continue
        coverage, why = _located_coverage(entry, settings, **geometry)
        if coverage is None:
            if why is not None and eligible:  # only a sample that should have had a map counts as missing
                missing[i], reasons[i] = True, why
            continue
        if hold is not None:
            hold[i] = hold_map(coverage, settings.confine)
        if not eligible:
            continue
        if settings.estimator == "vipo":
            scaled = vipo_scale(coverage)
            if not scaled.any():
                missing[i], reasons[i] = True, "ViPO's per-frame min-max leaves nothing of a region that fills whole frames"
                continue
            maps[i] = scaled
        else:
            maps[i] = credit_map(coverage, settings.inside, settings.outside)
        localized[i] = True
        inside_mass[i] = float(maps[i][coverage > 0].sum() / maps[i].sum())
    return CreditMaps(maps, localized, inside_mass, missing, reasons, hold)


def _located_coverage(entry: Mapping[str, Any], settings: LocalizeSettings, *, num_frames: int, fps: float, height: int, width: int,
                      temporal: int, spatial: int, patch: Sequence[int], chunk_frames: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """``(coverage, None)`` for a sample whose verdict locates a defect (:func:`latent_coverage`), or
    ``(None, why)`` when it should have but its evidence is absent or unreadable, or ``(None,
    None)`` when the judge saw no defect (nothing to localize, nothing missing)."""
    source = _evidence_details(entry, settings.source)
    found = find_evidence(source) if source is not None else None
    if found is None:
        return None, f"no localizing reward in its details (source {settings.source!r})"
    if found.get("status") != "abnormal":  # the judge saw no defect: nothing to localize
        return None, None
    try:
        evidence = read_evidence(found)
    except EvidenceError as exc:
        return None, f"unreadable evidence: {exc}"
    if evidence is None:
        return None, "an abnormal verdict without a window or boxes"
    region = region_from_evidence(evidence, num_frames, fps, height, width, dilate=settings.dilate, context_s=settings.context_s)
    coverage = latent_coverage(region, temporal, spatial, patch, settings.edges, chunk_frames)
    if not coverage.any():
        return None, "its evidence covers no frame of the video"
    return coverage, None


# ---------------------------------------------------------------------------------------
# The per-position estimator
# ---------------------------------------------------------------------------------------
def localized_policy_loss(
    log_prob_map: torch.Tensor,
    old_log_prob_map: torch.Tensor,
    advantages: torch.Tensor,
    maps: torch.Tensor,
    low: float,
    high: float,
    weights: torch.Tensor | None = None,
    divergence: torch.Tensor | None = None,
    delta: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ViPO's per-position clipped surrogate with ``A_p = M(p) * A`` (module docstring).

    Args:
        log_prob_map: ``(B, T, H, W)`` per-position log-density under the current policy (with grad).
        old_log_prob_map: ``(B, T, H, W)`` the same, recorded when sampling.
        advantages: ``(B,)``.
        maps: ``(B, T, H, W)`` credit maps (mean 1 each; all ones for a uniform sample).
        low, high: the PPO clip range ``[1 - low, 1 + high]``.
        weights: optional ``(B,)``; 0 drops a sample, as :func:`cac_align.rl.sde.flow_grpo_loss`.
        divergence: ``(B, T, H, W)`` DPPO's divergence of each position's step
            (:func:`cac_align.rl.trust_region.divergence_of` with ``positions=True``): the clip is then
            replaced by its mask at ``delta`` (:func:`cac_align.rl.trust_region.divergence_masked_surrogate`),
            each position by its own ratio, advantage ``A_p`` and divergence.

    Returns:
        ``(loss, metrics)``: the loss averaged over positions and then over all B samples;
        ``ratio_mean`` and ``clip_fraction`` over the positions of the kept samples (DPPO: also
        ``masked_fraction`` and ``divergence``).
    """
    import torch

    log_ratio = log_prob_map - old_log_prob_map
    dense = advantages.reshape(-1, 1, 1, 1).to(log_ratio.dtype) * maps.to(log_ratio.dtype)
    if divergence is None:
        return _per_position_surrogate(log_ratio, dense, low, high, weights)
    from cac_align.rl.trust_region import divergence_masked_surrogate, masked_fraction

    per_position, keep = divergence_masked_surrogate(log_ratio, dense, divergence, delta)
    per_sample = per_position.mean(dim=(1, 2, 3))
    w = torch.ones_like(per_sample) if weights is None else weights.to(per_sample.dtype)
    _, metrics = _per_position_surrogate(log_ratio.detach(), dense, low, high, weights)  # the ratio's metrics, as the clip's
    kept = (w > 0).reshape(-1, 1, 1, 1).expand_as(divergence)
    metrics.update(masked_fraction=masked_fraction(keep, w), divergence=(divergence * kept).sum() / kept.sum().clamp(min=1))
    return (w * per_sample).mean(), metrics


def _per_position_surrogate(log_ratio: torch.Tensor, dense: torch.Tensor, low: float, high: float,
                            weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Both estimators' common end: the clipped surrogate at each position with its own
    advantage ``dense`` ``(B, T, H, W)``, its mean over positions, then over all B samples
    (weighted); ``ratio_mean`` and ``clip_fraction`` over the positions of the kept samples."""
    import torch

    from cac_align.rl.advantages import clipped_surrogate

    per_sample = clipped_surrogate(log_ratio, dense, low, high).mean(dim=(1, 2, 3))
    w = torch.ones_like(per_sample) if weights is None else weights.to(per_sample.dtype)
    loss = (w * per_sample).mean()
    with torch.no_grad():
        kept = (w > 0).reshape(-1, 1, 1, 1).expand_as(log_ratio)
        n_kept = kept.sum().clamp(min=1)
        r = torch.exp(log_ratio.detach())
        metrics = {
            "ratio_mean": (r * kept).sum() / n_kept,
            "clip_fraction": (((r < 1.0 - low) | (r > 1.0 + high)) & kept).float().sum() / n_kept,
        }
    return loss, metrics


def vipo_policy_loss(
    log_density_sum: torch.Tensor,
    old_log_density_sum: torch.Tensor,
    advantages: torch.Tensor,
    maps: torch.Tensor,
    clip_range: float,
    adv_clamp: float = 5.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ViPO's per-position clipped surrogate, as their official Wan script computes it (module
    docstring; ziqi-nox/ViPO ``fastvideo/train_vipo_wan_fsdp.py`` at f5c99ce: lines 424-425 the
    channel-summed density, 1289 and 1454 ``clamp(A * M)``, 1455-1457 the clipped term and its
    plain mean over positions):

        loss = mean_b w_b * mean_p max(-Ahat_bp r_bp, -Ahat_bp clip(r_bp, 1 - eps, 1 + eps)),
        Ahat_bp = clamp(A_b M_bp, -adv_clamp, adv_clamp),  r_bp = exp(log p_bp - log p_old_bp),

    with ``log p`` the Gaussian log-density at a position *summed* over the latent channels.

    Args:
        log_density_sum: ``(B, T, H, W)`` under the current policy (with grad), channels summed.
        old_log_density_sum: ``(B, T, H, W)`` the same, recorded when sampling.
        advantages: ``(B,)``.
        maps: ``(B, T, H, W)`` in [0, 1] (:func:`vipo_scale`); 1 everywhere for a uniform sample.
        clip_range: ``eps`` (ViPO: symmetric, 1e-4 with their 16-step schedule).
        adv_clamp: the clamp on ``A * M`` (ViPO: 5.0).
        weights: optional ``(B,)``; 0 drops a sample (ViPO has none; ours drops invalid samples
            and zero-variance groups, whose advantage is 0 anyway).

    Returns:
        ``(loss, metrics)`` as :func:`localized_policy_loss`.
    """
    log_ratio = log_density_sum - old_log_density_sum
    dense = (advantages.reshape(-1, 1, 1, 1).to(log_ratio.dtype) * maps.to(log_ratio.dtype)).clamp(-adv_clamp, adv_clamp)
    return _per_position_surrogate(log_ratio, dense, clip_range, clip_range, weights)


def confined_kl(
    mean: torch.Tensor,
    ref_mean: torch.Tensor,
    std: torch.Tensor | float,
    hold: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Confinement's KL (module docstring): Flow-GRPO's closed-form KL between the policy's and
    the reference's Gaussian steps, per latent position, weighted by ``hold``:

        mean_b w_b * mean_p hold_bp * mean_c (mean_bcp - ref_mean_bcp)^2 / (2 std_b^2).

    With ``hold`` equal to 1 everywhere it is :func:`cac_align.rl.sde.flow_grpo_loss`'s KL.

    Args:
        mean, ref_mean: ``(B, C, T, H, W)`` the step means under the policy (with grad) and the
            reference.
        std: scalar, ``(B,)`` or ``(B, 1, 1, 1, 1)``: the step's std.
        hold: ``(B, T, H, W)`` per-position weights (:func:`hold_map`).
        weights: optional ``(B,)`` sample weights, as the recipe's KL takes them.

    Returns:
        A scalar.
    """
    import torch

    diff2 = ((mean.float() - ref_mean.float()) ** 2).mean(dim=1)  # (B, T, H, W): the channel mean
    std_b = torch.as_tensor(std, dtype=torch.float32, device=diff2.device).reshape(-1)
    per_sample = (hold.to(diff2.dtype) * diff2).mean(dim=(1, 2, 3)) / (2 * std_b**2)
    w = torch.ones_like(per_sample) if weights is None else weights.to(per_sample.dtype)
    return (w * per_sample).mean()


def position_terms(localize: LocalizeSettings, log_prob_map: Any, old_log_prob_map: Any, credit: Any, hold: Any, channels: int) -> dict[str, Any]:
    """:func:`cac_align.rl.sde.flow_grpo_loss`'s localized arguments for a micro-batch: the per-position
    log-densities (recorded as channel means) with the credit maps (and confinement's ``hold``). ViPO's
    estimator (``localize.estimator: vipo``) takes channel sums: ``channels`` times them."""
    terms: dict[str, Any] = {"log_prob_map": log_prob_map, "old_log_prob_map": old_log_prob_map, "credit": credit}
    if localize.estimator == "vipo":
        terms.update(log_prob_map=log_prob_map * channels, old_log_prob_map=old_log_prob_map * channels, estimator="vipo", adv_clamp=localize.adv_clamp)
    if hold is not None:
        terms["hold"] = hold
    return terms
