"""GARDO's three guards against reward hacking, as pure functions: which samples the KL
regularizes (the gate), when the reference policy becomes the current one (the adaptive
reference), and how the advantages of diverse good samples are amplified.

GARDO (He et al., 2025, "GARDO: Reinforcing Diffusion Models without Reward Hacking",
arXiv:2512.24138; code: tinnerhrhe/GARDO at 1cc77fb, ``scripts/train_sd3_grpo_gardo.py`` and
``flow_grpo/stat_tracking.py``; the same recipes in yifan123/flow_grpo PR #216) trains on one proxy
reward and asks auxiliary reward models (theirs: Aesthetic and ImageReward) where the proxy is not
to be trusted. Ours are the run's held-out judges, scored on the training samples.

**1. The gate** (:func:`reward_uncertainty`, :func:`gate_uncertain`, :func:`adapt_gate_fraction`).
GARDO ranks every reward over the **whole batch** (not within a prompt's group: the author, GARDO
issue #6, "ranked across all samples within a batch ... group-agnostic"), and a sample's uncertainty
is its proxy rank minus the mean of its auxiliary ranks (train_sd3_grpo_gardo.py L827-834). Only the
non-negative uncertainties are pooled; the KL applies to the samples above the pool's
``100 * (1 - fraction)`` percentile (numpy's linear interpolation; strictly above, L835-837, and
L954/L984 for the KL over those samples alone), and
``fraction`` starts at 0.1 and is adapted each step between 0.02 and 0.2 (their ``RiskCompensator``,
L219-238). Here a rank is a **win rate**: the fraction of the other samples a sample beats, ties
counting half, in [0, 1] (a rank without arbitrary tie-breaking, and independent of the batch size;
GARDO's ``rank = n - (n - 1) * win_rate`` when there are no ties)::

    U_i = w_proxy(i) - mean_k w_aux_k(i)          (direction "over": the proxy rates i above the judges)

The sign. In GARDO's code rank 1 is the highest reward (``torch.sort(..., descending=True)``), so
its ``rank_proxy - mean rank_aux`` is ``-(n - 1) U_i``: the code regularizes the samples the proxy
rates **below** the judges (``direction="under"`` reproduces it). The hacked samples of reward
hacking are those the proxy rates above the judges (``"over"``, the default here, which the issue's
benchmark exercises: a proxy that rises while the held-out judge falls); ``"both"`` takes
``|U_i|``, the disagreement either way. The paper's own equation was not available to us; this
rests on the code at 1cc77fb.

A judge that failed on a sample (NaN) takes no part in that sample's mean and no part in the other
samples' win rates under that judge. A sample that no auxiliary judge scored cannot be vouched
for: :func:`gate_uncertain` regularizes it (weight 1) and counts it as ``unjudged``, so a judge that
fails everywhere degrades the gate to plain KL everywhere (visible in the gated fraction), never
to no KL at all. A sample whose proxy is invalid is not trained and gets weight 0.

How the weights enter the loss: GARDO averages the KL over the gated samples of a micro-batch
(``mean(kl[idx])``), so its ``beta`` acts at full strength on each of them whatever the gated
fraction; :func:`cac_align.rl.sde.flow_grpo_loss` averages ``weights * kl`` over all ``B`` samples,
so the same ``beta`` on 0/1 weights is ``gated_fraction`` times weaker. ``UncertaintyGate.scale``
(``1 / gated_fraction``) multiplied into the weights gives GARDO's strength, normalized over the step
rather than per micro-batch.

**1b. What the gate does to the samples it marks** (``regularize.hold``). GARDO's gate puts the KL on
them (``hold: kl``); the policy gradient still pushes each of them by the proxy's advantage, and a KL
that starts at zero resists only once the policy has moved. ``hold: worst_case`` instead trains each
marked sample on the worse of two advantages: the proxy's and the judges' (:func:`judge_advantages`:
each judge's scores standardized in the sample's group as the proxy's are, averaged over the judges),
``min(A_proxy, A_judges)``. This is the worst-case objective of reward-model ensembles (Coste et al.,
2023, "Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743: WCO, the minimum over
the ensemble), applied where the gate finds the proxy and the judges disagreeing and nowhere else: a
sample the proxy over-rates is not pushed towards by the proxy's advantage, whatever the KL.

**1c. The step's advantages projected off the judges'** (``regularize.project``,
:func:`projected_advantages`). A gate acts on samples, and a hack the policy learns as one shared
direction (every sample a little greener) is on every sample: holding some samples back slows the
run along it but does not turn it (benchmarks/README.md, reward_hacking.py). ``project`` turns it:
when the step's training advantages ``a`` and the judges' ``j`` (:func:`judge_advantages`, over the
samples both score) conflict, ``a . j < 0``, the update trains on ``a - (a . j / j . j) j``, the
part of ``a`` orthogonal to ``j``; when they agree, on ``a`` as it is. This is PCGrad's "gradient
surgery" (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning", arXiv:2001.06782: a task's
gradient projected onto the normal plane of a conflicting task's) done on the advantages: the policy
gradient is ``sum_i a_i grad log p_i``, so with the samples' score-function gradients about
orthogonal to each other (independent noise draws) an advantage vector orthogonal to the judges'
gives an update that does not move the judges' objective, to first order. The judges are not
trained on: a step whose proxy already agrees with them is untouched, and no step is pushed towards
them. Over the whole step, as the update is (every process computes the same from the gathered
scores); the projected advantages are not clipped again.

**2. The adaptive reference** (:func:`reference_reset_due`). GARDO copies the current LoRA into the
reference at the start of a step when the step count since the last copy passes ``reset_freq`` or
when a logged KL of the previous step's updates passed ``kl_thres`` (L789-799, L1042-1043; their KL
is the gated one). Their defaults: ``reset_freq = 15`` with ``>`` (a copy every 16 steps) and
``kl_thres = 3e-4`` ("set this hyper-parameter according to specific tasks"; config/gardo.py); the
NFT script hard-codes 15 and starts its bound at 0.15. Only with a KL term (``beta > 0``).

**3. Diversity-aware amplification** (:func:`diversity_multipliers`, :func:`diversity_advantages`).
Within each group, a sample's diversity is the cosine distance from its feature vector to its
nearest neighbour in the group (GARDO: DINOv3 image embeddings, L2-normalized;
stat_tracking.py ``PerPromptStatTracker.update``, ``type == "gardo"``, L114-135). A sample at or above its
group's mean reward has its advantage multiplied by its diversity over the group's mean diversity;
one below the mean is left as it is. GARDO's advantage is then ``(r - mean) * m`` with **no**
division by the std (the paper's "remove the std" trick; ``adv_clip_max = 5`` still clips it in
training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Hashable, Mapping, Sequence

import numpy as np

from cac_align.rl.advantages import GroupAdvantages

__all__ = [
    "DIRECTIONS",
    "DIVERSITY_FEATURES",
    "GATES",
    "GateState",
    "HOLDS",
    "REFERENCES",
    "RegularizeSettings",
    "UncertaintyGate",
    "adapt_gate_fraction",
    "diversity_advantages",
    "diversity_multipliers",
    "gate_uncertain",
    "judge_advantages",
    "nearest_neighbour_distance",
    "projected_advantages",
    "reference_reset_due",
    "reward_uncertainty",
    "step_gate",
    "win_rates",
    "worst_case_advantages",
]

DIRECTIONS = ("over", "under", "both")
# ``regularize.gate``: the KL on every trained sample (as before), or on the uncertain ones only
GATES = ("none", "uncertain")
# ``regularize.hold``: what the gate does to the samples it marks: GARDO's KL on them, or the worse of the proxy's and
# the judges' advantages (module docstring, 1b)
HOLDS = ("kl", "worst_case")
# ``regularize.reference``: the KL to the base model (the LoRA off, as before), or to a LoRA reset to the current one
REFERENCES = ("base", "adaptive")
# ``regularize.diversity``: no amplification, or each group's good samples amplified by their distance from each other
# in the generator's own final latents (pooled: :func:`latent_features`)
DIVERSITY_FEATURES = ("none", "latents")


@dataclass
class RegularizeSettings:
    """The ``regularize`` section of ``flow-grpo`` and ``nft``: GARDO's guards against reward hacking,
    fed by judges the run does not train on (docs/flow_grpo.md, "When your reward is hacked"). The
    defaults are today's run, bit for bit: the KL to the base model on every trained sample.

    Attributes:
        gate: "none" (the KL on every trained sample) or "uncertain" (:func:`step_gate`: only on the
            samples where the auxiliary judges disagree with the training reward, GARDO's gate;
            with ``hold: kl``, needs ``beta > 0``).
        hold: what the gate does to the samples it marks (module docstring, 1b): "kl" (GARDO: the KL
            term on them alone) or "worst_case" (each trains on the worse of the training reward's and
            the judges' group advantages; no KL needed).
        judges: the auxiliary judges, ``{label: reward section}``, scored on every training sample
            where the gate asks; empty (the default): the run's ``eval_rewards``, which then score
            the training samples too (their time: docs/flow_grpo.md).
        fraction: the share of the samples with a non-negative uncertainty that the gate
            regularizes (GARDO's ``kl_perc`` base: 0.1).
        adapt_fraction: move ``fraction`` each step by GARDO's rule (:func:`adapt_gate_fraction`:
            x1.1 when the step's mean uncertainty is above every one of the last 20, x0.9 when below
            every one, kept in [0.02, 0.2]); false: ``fraction`` always.
        direction: which disagreement counts (:func:`reward_uncertainty`): "over" (the training
            reward rates a sample above the judges: the hacked ones), "under" (GARDO's code at
            1cc77fb, module docstring), "both".
        reference: "base" (the KL to the model with the LoRA off, as before) or "adaptive" (GARDO's:
            the KL to a copy of the LoRA that becomes the current one every ``reset_every`` steps, or
            when the previous step's KL passed ``kl_bound``; the copy lives in the checkpoint).
        reset_every: N >= 1 (GARDO: ``reset_freq`` 15 compared with ``>``, a reset every 16 steps),
            or null: never by count.
        kl_bound: the KL that triggers a reset at the next step (GARDO's ``kl_thres``: 3e-4), or
            null: never by KL.
        project: project the step's advantages off the judges' where the two conflict (module
            docstring, 1c; :func:`projected_advantages`); with or without the gate, no KL needed.
        diversity: "none" or "latents": GARDO's diversity-aware advantages
            (:func:`diversity_multipliers`): a sample at or above its group's mean reward has its
            advantage multiplied by its nearest-neighbour distance in the group over the group's
            mean distance, the features being the generator's own final latents, pooled
            (:func:`latent_features`; GARDO's are DINOv3 embeddings, which we do not load). Our
            advantages keep their std (GARDO drops it) and their clip.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"gate": GATES, "hold": HOLDS, "direction": DIRECTIONS, "reference": REFERENCES, "diversity": DIVERSITY_FEATURES}

    gate: str = "none"
    hold: str = "kl"
    judges: dict[str, Any] = field(default_factory=dict)
    fraction: float = 0.1
    adapt_fraction: bool = True
    direction: str = "over"
    reference: str = "base"
    reset_every: int | None = 16
    kl_bound: float | None = 3e-4
    project: bool = False
    diversity: str = "none"

    def __post_init__(self) -> None:
        for key, choices in self.CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"regularize.{key} must be one of {tuple(choices)}, got {getattr(self, key)!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"regularize.fraction must be in (0, 1], got {self.fraction}")
        if self.reset_every is not None and self.reset_every < 1:
            raise ValueError(f"regularize.reset_every must be >= 1 or null, got {self.reset_every}")
        if self.kl_bound is not None and not self.kl_bound > 0:
            raise ValueError(f"regularize.kl_bound must be > 0 or null, got {self.kl_bound}")

    @property
    def gated(self) -> bool:
        return self.gate == "uncertain"

    @property
    def judged(self) -> bool:
        """The judges score every training sample: for the gate, or for ``project``."""
        return self.gated or self.project

    @property
    def kl_gated(self) -> bool:
        """The gate acts on the KL term (GARDO's), which then needs ``beta > 0``."""
        return self.gated and self.hold == "kl"

    @property
    def adaptive(self) -> bool:
        return self.reference == "adaptive"


@dataclass
class GateState:
    """What the guards carry from step to step (and in a checkpoint's ``state.json``, so a resumed run
    is the same run): the gate's adapted fraction and its history (:func:`adapt_gate_fraction`), the
    step before which the reference was last reset, and the largest KL the last step logged."""

    fraction: float = 0.1
    history: list[float] = field(default_factory=list)
    last_reset: int = 0
    last_kl: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "history": list(self.history), "last_reset": self.last_reset, "last_kl": self.last_kl}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fraction, self.history = float(state["fraction"]), [float(h) for h in state["history"]]
        self.last_reset, self.last_kl = int(state["last_reset"]), (None if state.get("last_kl") is None else float(state["last_kl"]))


def _column(values: Sequence[float] | np.ndarray, n: int | None, name: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and out.size != n:
        raise ValueError(f"{name} has {out.size} values for {n} samples")
    return out


def _groups_of(groups: Sequence[Hashable] | None, n: int) -> list[np.ndarray]:
    """The member masks of each group (one group of everything when ``groups`` is None)."""
    if groups is None:
        return [np.ones(n, dtype=bool)]
    if len(groups) != n:
        raise ValueError(f"{n} samples but {len(groups)} group keys")
    return [np.array([g == key for g in groups]) for key in dict.fromkeys(groups)]


# ---------------------------------------------------------------------------------------
# 1. The gate
# ---------------------------------------------------------------------------------------
def win_rates(values: Sequence[float] | np.ndarray, valid: Sequence[bool] | np.ndarray | None = None) -> np.ndarray:
    """Each valid value's fraction of the other valid values it beats, ties counting half.

    ``w_i = (#{j: v_j < v_i} + (#{j != i: v_j = v_i}) / 2) / (n - 1)`` over the ``n`` valid values
    (finite and ``valid``): 1 for the unique best, 0 for the unique worst, 0.5 for all-equal values.

    Returns:
        ``(B,)`` float64; NaN where invalid or when fewer than two are valid.
    """
    v = _column(values, None, "values")
    ok = np.isfinite(v)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    out = np.full(v.size, np.nan)
    n = int(ok.sum())
    if n < 2:
        return out
    x = v[ok]
    below = (x[None, :] < x[:, None]).sum(axis=1)
    ties = (x[None, :] == x[:, None]).sum(axis=1) - 1
    out[ok] = (below + 0.5 * ties) / (n - 1)
    return out


def reward_uncertainty(
    proxy: Sequence[float] | np.ndarray,
    auxiliaries: Mapping[str, Sequence[float] | np.ndarray],
    groups: Sequence[Hashable] | None = None,
    *,
    valid: Sequence[bool] | np.ndarray | None = None,
    scope: str = "batch",
    direction: str = "over",
) -> np.ndarray:
    """How much the proxy reward and the auxiliary judges disagree on each sample (module docstring).

    ``U_i = w_proxy(i) - mean_k w_k(i)`` with :func:`win_rates` among the samples whose proxy is
    valid (and, for judge ``k``, that ``k`` scored); ``-U_i`` for ``direction="under"``, ``|U_i|``
    for ``"both"``.

    Args:
        proxy: ``(B,)`` the training reward; NaN where invalid.
        auxiliaries: ``{judge: (B,) scores}``, NaN where a judge failed; at least one.
        groups: ``(B,)`` group keys; used with ``scope="group"`` only.
        valid: optional ``(B,)`` validity of the proxy, combined with ``isfinite(proxy)``.
        scope: "batch" (GARDO: win rates over the whole step's samples) or "group" (within each group).
        direction: one of :data:`DIRECTIONS`.

    Returns:
        ``(B,)`` float64 in [-1, 1] ([0, 1] for "both"); NaN where the proxy is invalid or no judge
        scored the sample.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if scope not in ("batch", "group"):
        raise ValueError(f"scope must be 'batch' or 'group', got {scope!r}")
    if scope == "group" and groups is None:
        raise ValueError("scope='group' needs the group keys (`groups`)")
    if not auxiliaries:
        raise ValueError("reward_uncertainty needs at least one auxiliary judge (the run's eval_rewards, or a list of their own)")
    p = _column(proxy, None, "proxy")
    n = p.size
    ok = np.isfinite(p)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    aux = {name: _column(values, n, f"auxiliary {name!r}") for name, values in auxiliaries.items()}
    w_proxy = np.full(n, np.nan)
    w_aux = np.full((len(aux), n), np.nan)
    for members in _groups_of(groups if scope == "group" else None, n):
        rows = members & ok
        w_proxy[members] = win_rates(p[members], rows[members])
        for k, values in enumerate(aux.values()):
            w_aux[k, members] = win_rates(values[members], rows[members])
    judged = np.isfinite(w_aux).any(axis=0)
    mean_aux = np.full(n, np.nan)
    mean_aux[judged] = np.nanmean(w_aux[:, judged], axis=0)
    u = w_proxy - mean_aux
    if direction == "under":
        u = -u
    elif direction == "both":
        u = np.abs(u)
    return u


@dataclass
class UncertaintyGate:
    """Result of :func:`gate_uncertain`.

    Attributes:
        weights: ``(B,)`` float32 per-sample KL weights: 1 where regularized, 0 elsewhere.
        cutoff: the uncertainty a sample must exceed to be regularized (inf: none can).
        gated_fraction: regularized samples over trained samples (0 when none is trained).
        unjudged: trained samples no judge scored (regularized; module docstring).
        scale: ``1 / gated_fraction`` (0 when nothing is gated): ``weights * scale`` averages the KL
            over the gated samples, as GARDO does.
    """

    weights: np.ndarray
    cutoff: float
    gated_fraction: float
    unjudged: int
    scale: float


def gate_uncertain(
    uncertainty: Sequence[float] | np.ndarray,
    trained: Sequence[bool] | np.ndarray,
    *,
    fraction: float | None = 0.1,
    threshold: float | None = None,
) -> UncertaintyGate:
    """Which samples the KL term regularizes: the most uncertain (module docstring).

    With ``fraction`` (GARDO's rule): the cutoff is the ``100 * (1 - fraction)`` percentile (linear
    interpolation) of the non-negative finite uncertainties, and the samples strictly above it are
    regularized: about ``fraction`` of the samples with ``U >= 0``, none when all uncertainties are
    equal. With ``threshold``: the samples with ``U > threshold``. Either way a trained sample with
    a NaN uncertainty (no judge scored it) is regularized too, and an untrained one never is.

    Args:
        uncertainty: ``(B,)`` :func:`reward_uncertainty`.
        trained: ``(B,)`` bool, the samples the update trains on (a valid proxy; the trainer's
            ``trainable``).
        fraction: in [0, 1]; GARDO's default 0.1, adapted by :func:`adapt_gate_fraction`.
        threshold: an absolute cutoff on ``U`` instead (pass ``fraction=None``).

    Returns:
        :class:`UncertaintyGate`.
    """
    if (fraction is None) == (threshold is None):
        raise ValueError("gate_uncertain takes exactly one of `fraction` (GARDO's top fraction) and `threshold`")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    u = _column(uncertainty, None, "uncertainty")
    trained = np.asarray(trained, dtype=bool).reshape(-1)
    if trained.size != u.size:
        raise ValueError(f"{u.size} uncertainties but {trained.size} trained flags")
    known = trained & np.isfinite(u)
    if threshold is not None:
        cutoff = float(threshold)
    else:
        pool = u[known & (u >= 0)]
        cutoff = float(np.percentile(pool, 100.0 * (1.0 - fraction))) if pool.size else math.inf
    unjudged = trained & ~np.isfinite(u)
    gated = (known & (u > cutoff)) | unjudged
    n_trained = int(trained.sum())
    gated_fraction = float(gated.sum()) / n_trained if n_trained else 0.0
    return UncertaintyGate(
        weights=gated.astype(np.float32),
        cutoff=cutoff,
        gated_fraction=gated_fraction,
        unjudged=int(unjudged.sum()),
        scale=1.0 / gated_fraction if gated_fraction > 0 else 0.0,
    )


def adapt_gate_fraction(
    fraction: float,
    history: Sequence[float],
    uncertainty: Sequence[float] | np.ndarray,
    *,
    base: float = 0.1,
    rate: float = 0.1,
    low: float = 0.02,
    high: float = 0.2,
    window: int = 20,
) -> tuple[float, list[float]]:
    """GARDO's adaptive gated fraction (``RiskCompensator``, train_sd3_grpo_gardo.py L219-238), called
    once a step before :func:`gate_uncertain`.

    ``m`` is this step's mean non-negative uncertainty. With no history the fraction is ``base``;
    otherwise it grows by ``rate`` (``* (1 + rate)``) when ``m`` is above every value in the history,
    shrinks by it when below every one, and is kept otherwise; then it is clipped to ``[low, high]``
    and ``m`` joins the history, which keeps its last ``window`` values. Their defaults: 0.1, 0.1,
    0.02, 0.2, 20. The history belongs in the checkpoint. A step without a non-negative finite
    uncertainty leaves both unchanged.

    Returns:
        ``(fraction, history)``: the fraction for this step and the new history.
    """
    u = _column(uncertainty, None, "uncertainty")
    pool = u[np.isfinite(u) & (u >= 0)]
    history = [float(h) for h in history]
    if pool.size == 0:
        return fraction, history
    m = float(pool.mean())
    if not history:
        fraction = base
    elif m > max(history):
        fraction = fraction * (1 + rate)
    elif m < min(history):
        fraction = fraction * (1 - rate)
    fraction = float(min(max(fraction, low), high))
    return fraction, (history + [m])[-window:]


def step_gate(settings: RegularizeSettings, state: GateState, proxy: np.ndarray, auxiliaries: Mapping[str, np.ndarray],
              trained: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """A step's per-sample KL weights under ``regularize.gate: uncertain`` (module docstring, 1), over
    the whole step's samples (every process computes the same from the gathered scores).

    1. the uncertainty of each sample (:func:`reward_uncertainty`, over the batch, ``settings.direction``);
    2. the gated fraction moved by GARDO's rule (``adapt_fraction``; ``state`` holds it);
    3. the gate (:func:`gate_uncertain`): 1 on the regularized samples, 0 elsewhere, times
       ``1 / gated_fraction``, so the KL is averaged over the regularized samples, as GARDO does.

    Args:
        settings: the ``regularize`` section; state: its :class:`GateState` (updated in place).
        proxy: ``(B,)`` the training reward (NaN: invalid); auxiliaries: ``{label: (B,)}``.
        trained: ``(B,)`` the samples the update trains on.

    Returns:
        ``((B,) float32 KL weights, metrics)``: ``regularize/gated_fraction`` (of the trained
        samples), ``regularize/fraction`` (the gate's fraction this step), ``regularize/unjudged``
        (trained samples no judge scored: regularized).

    Hand-worked (tests/rl/test_gardo.py): proxy [4, 3, 2, 1], one judge [1, 2, 3, 4], all trained,
    fraction 0.5, not adapted: win rates 1, 2/3, 1/3, 0 against 0, 1/3, 2/3, 1: U = [1, 1/3, -1/3, -1];
    the pool U >= 0 is [1, 1/3], its 50th percentile 2/3: sample 0 alone is gated, 1/4 of the trained,
    so its weight is 4 and the others' 0.
    """
    u = reward_uncertainty(proxy, auxiliaries, direction=settings.direction)
    if settings.adapt_fraction:
        state.fraction, state.history = adapt_gate_fraction(state.fraction, state.history, u)
    gate = gate_uncertain(u, trained, fraction=state.fraction if settings.adapt_fraction else settings.fraction)
    metrics = {"regularize/gated_fraction": gate.gated_fraction, "regularize/fraction": state.fraction if settings.adapt_fraction else settings.fraction,
               "regularize/unjudged": float(gate.unjudged)}
    return (gate.weights * gate.scale).astype(np.float32), metrics


def judge_advantages(
    auxiliaries: Mapping[str, Sequence[float] | np.ndarray],
    groups: Sequence[Hashable],
    trained: Sequence[bool] | np.ndarray,
    *,
    std: str = "group",
    clip: float | None = None,
) -> np.ndarray:
    """The judges' advantage of each sample (module docstring, 1b): each judge's scores standardized
    within the groups as the training reward's are (:func:`cac_align.rl.advantages.group_advantages`
    with the same ``std`` and ``clip``, over the ``trained`` samples that judge scored), then averaged
    over the judges that scored the sample.

    Returns:
        ``(B,)`` float64; NaN where no judge gives the sample an advantage (a failed score, a group
        the judge scored fewer than two of, or rated all alike).
    """
    from cac_align.rl.advantages import group_advantages

    if not auxiliaries:
        raise ValueError("judge_advantages needs at least one auxiliary judge")
    trained = np.asarray(trained, dtype=bool).reshape(-1)
    rows = []
    for name, values in auxiliaries.items():
        adv = group_advantages(_column(values, trained.size, f"auxiliary {name!r}"), groups, valid=trained, std=std, clip=clip)
        rows.append(np.where(adv.trainable, adv.advantages.astype(np.float64), np.nan))
    stacked = np.stack(rows)
    scored = np.isfinite(stacked).any(axis=0)
    out = np.full(trained.size, np.nan)
    out[scored] = np.nanmean(stacked[:, scored], axis=0)
    return out


def worst_case_advantages(advantages: Sequence[float] | np.ndarray, judges: Sequence[float] | np.ndarray,
                          marked: Sequence[bool] | np.ndarray) -> np.ndarray:
    """``regularize.hold: worst_case``: a marked sample's advantage becomes ``min(A_proxy, A_judges)``
    (module docstring, 1b); an unmarked one, or one without a judges' advantage (NaN), keeps its own.

    Args:
        advantages: ``(B,)`` the training reward's advantages; judges: ``(B,)`` :func:`judge_advantages`;
        marked: ``(B,)`` the samples the gate marks.

    Returns:
        ``(B,)`` float32.

    Hand-worked (tests/rl/test_gardo.py): advantages [1.5, -0.5, 0.8, -1.2], judges [-1, 0.7, 2, NaN],
    marked [T, T, T, T] -> [-1, -0.5, 0.8, -1.2]: the first lowered to the judges', the second and third
    already the lower, the fourth unjudged.
    """
    a = _column(advantages, None, "advantages")
    j = _column(judges, a.size, "judges")
    m = np.asarray(marked, dtype=bool).reshape(-1)
    if m.size != a.size:
        raise ValueError(f"{a.size} advantages but {m.size} marks")
    take = m & np.isfinite(j)
    out = a.copy()
    out[take] = np.minimum(a[take], j[take])
    return out.astype(np.float32)


def projected_advantages(advantages: Sequence[float] | np.ndarray, judges: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
    """``regularize.project``: the step's advantages projected off the judges' where the two conflict
    (module docstring, 1c).

    Over the samples with a finite judges' advantage: ``a - (a . j / j . j) j`` when ``a . j < 0``
    (and ``j`` is not all 0); the other samples, and every sample of a step whose two vectors agree,
    keep their own.

    Args:
        advantages: ``(B,)`` the training reward's advantages over the whole step (0 where untrained);
        judges: ``(B,)`` :func:`judge_advantages` (NaN where no judge gives one).

    Returns:
        ``((B,) float32 advantages, cosine)``: the cosine of ``a`` and ``j`` before the projection
        (NaN when either is all 0 over the samples both score): negative where the step projected.

    Hand-worked (tests/rl/test_gardo.py): ``a = [1, -1, 0.5, -0.5]``, ``j = [-1, 1, 1, -1]``:
    ``a . j = -1``, ``j . j = 4``, so ``a + j / 4 = [0.75, -0.75, 0.75, -0.75]``, orthogonal to ``j``;
    the cosine ``-1 / (sqrt(2.5) * 2)``.
    """
    a = _column(advantages, None, "advantages")
    j = _column(judges, a.size, "judges")
    ok = np.isfinite(j) & np.isfinite(a)
    out = a.copy()
    dot, jj, aa = float(a[ok] @ j[ok]), float(j[ok] @ j[ok]), float(a[ok] @ a[ok])
    cosine = dot / math.sqrt(aa * jj) if aa > 0 and jj > 0 else math.nan
    if dot < 0 and jj > 0:
        out[ok] = a[ok] - (dot / jj) * j[ok]
    return out.astype(np.float32), cosine


# ---------------------------------------------------------------------------------------
# 2. The adaptive reference
# ---------------------------------------------------------------------------------------
def reference_reset_due(
    step: int,
    last_reset: int,
    *,
    reset_every: int | None = None,
    kl: float | None = None,
    kl_bound: float | None = None,
) -> bool:
    """Whether the reference policy becomes the current one before step ``step`` trains (module
    docstring; GARDO's adaptive reference).

    True when at least one step has trained since the last reset (``step > last_reset``) and either
    ``step - last_reset >= reset_every`` (every ``reset_every`` steps: GARDO's ``reset_freq`` is
    compared with ``>``, so their 15 is every 16 steps) or ``kl > kl_bound``, where ``kl`` is the
    largest KL to the reference logged over the previous step's updates (GARDO sets its flag when any
    update's logged KL passes its bound). Either rule is off when its setting is None.

    Args:
        step: the step about to train (0-based).
        last_reset: the step before which the reference was last set (0 at the start: the base model).
        reset_every: N >= 1, or None.
        kl: the previous step's largest logged KL to the reference, or None.
        kl_bound: the KL bound, or None.
    """
    if reset_every is not None and reset_every < 1:
        raise ValueError(f"reset_every must be >= 1 or None, got {reset_every}")
    if step <= last_reset:
        return False
    if reset_every is not None and step - last_reset >= reset_every:
        return True
    return kl_bound is not None and kl is not None and math.isfinite(kl) and kl > kl_bound


# ---------------------------------------------------------------------------------------
# 3. Diversity-aware amplification
# ---------------------------------------------------------------------------------------
def latent_features(latents: Any, grid: int = 4) -> np.ndarray:
    """Each sample's final latents ``(B, C, T, H, W)`` average-pooled to ``grid x grid`` per latent
    frame and flattened: ``(B, C * T * grid * grid)`` float32, the features of
    ``regularize.diversity: latents`` (a few thousand numbers a video at full size, so a step's can be
    gathered from every process). Pooling keeps where the colour and the layout are, and drops the
    pixel-level noise the sampler's last steps leave."""
    import torch

    x = torch.as_tensor(latents).float()
    if x.ndim != 5:
        raise ValueError(f"latent_features takes (B, C, T, H, W) latents, got shape {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), (min(grid, h), min(grid, w)))
    return pooled.reshape(b, -1).cpu().numpy().astype(np.float32)

def nearest_neighbour_distance(
    features: np.ndarray,
    groups: Sequence[Hashable],
    valid: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """Each sample's cosine distance ``1 - cos`` to its nearest other sample of the same group.

    Args:
        features: ``(B, D)`` feature vectors (any scale: they are L2-normalized); a row with a
            non-finite entry or zero norm takes no part.
        groups: ``(B,)`` group keys.
        valid: optional ``(B,)``: only valid samples take part.

    Returns:
        ``(B,)`` float64 in [0, 2]; NaN where the sample takes no part or has no other member.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (B, D), got shape {f.shape}")
    n = f.shape[0]
    norms = np.linalg.norm(f, axis=1)
    ok = np.isfinite(f).all(axis=1) & (norms > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    unit = np.where(ok[:, None], f / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    out = np.full(n, np.nan)
    for members in _groups_of(groups, n):
        rows = np.flatnonzero(members & ok)
        if rows.size < 2:
            continue
        distance = 1.0 - np.clip(unit[rows] @ unit[rows].T, -1.0, 1.0)
        np.fill_diagonal(distance, np.inf)
        out[rows] = distance.min(axis=1)
    return out


def diversity_multipliers(
    rewards: Sequence[float] | np.ndarray,
    features: np.ndarray,
    groups: Sequence[Hashable],
    valid: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """GARDO's amplification factors (module docstring): ``d_i / mean_g(d)`` for a sample at or above
    its group's mean reward, 1 below it; ``d`` is :func:`nearest_neighbour_distance`.

    1 also where it cannot be computed: an invalid reward or feature, a group with fewer than two
    usable members, or a group whose members all coincide (``mean_g(d) = 0``).

    Returns:
        ``(B,)`` float64, >= 0.
    """
    r = _column(rewards, None, "rewards")
    ok = np.isfinite(r)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    d = nearest_neighbour_distance(features, groups, ok)
    if d.size != r.size:
        raise ValueError(f"{r.size} rewards but {d.size} feature rows")
    out = np.ones(r.size)
    for members in _groups_of(groups, r.size):
        rows = members & ok & np.isfinite(d)
        if rows.sum() < 2:
            continue
        mean_d = d[rows].mean()
        if mean_d <= 0:
            continue
        mean_r = r[members & ok].mean()
        lifted = rows & (r >= mean_r)
        out[lifted] = d[lifted] / mean_d
    return out


def diversity_advantages(
    rewards: Sequence[float] | np.ndarray,
    features: np.ndarray,
    groups: Sequence[Hashable],
    *,
    valid: Sequence[bool] | np.ndarray | None = None,
    clip: float | None = None,
    zero_std_tol: float = 1e-8,
) -> GroupAdvantages:
    """GARDO's diversity-aware advantages: ``(r_i - mean_g(r)) * m_i`` with
    :func:`diversity_multipliers` and no division by the std (module docstring).

    Invalid rewards and groups whose valid rewards are all equal (or fewer than two) get 0 and
    ``trainable=False``, as :func:`cac_align.rl.advantages.group_advantages`.

    Args:
        rewards: ``(B,)``; NaN where invalid.
        features: ``(B, D)`` per-sample feature vectors.
        groups: ``(B,)`` group keys.
        valid: optional ``(B,)``.
        clip: clip to ``[-clip, clip]`` (GARDO trains with ``adv_clip_max = 5``); None = no clip.
        zero_std_tol: a group std at or below this counts as zero variance.
    """
    r = _column(rewards, None, "rewards")
    ok = np.isfinite(r)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool).reshape(-1)
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    m = diversity_multipliers(r, features, groups, ok)
    advantages = np.zeros(r.size)
    trainable = np.zeros(r.size, dtype=bool)
    member_masks = _groups_of(groups, r.size)
    zero_std = 0
    for members in member_masks:
        rows = members & ok
        if rows.sum() < 2 or float(r[rows].std()) <= zero_std_tol:
            zero_std += 1
            continue
        advantages[rows] = (r[rows] - r[rows].mean()) * m[rows]
        trainable[rows] = True
    if clip is not None:
        advantages = np.clip(advantages, -clip, clip)
    return GroupAdvantages(advantages=advantages.astype(np.float32), trainable=trainable,
                           zero_std_fraction=zero_std / len(member_masks) if member_masks else 0.0, num_groups=len(member_masks))
