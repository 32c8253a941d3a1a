"""The guards against reward hacking, as a generator trainer holds them (docs/flow_grpo.md, "When your
reward is hacked"): the judges that watch a run also gate its regularization.

``cac-align flow-grpo`` and ``cac-align nft`` (whose trainer extends flow-grpo's) keep one :class:`RunGuards`;
the math is :mod:`cac_align.rl.gardo`'s, :mod:`cac_align.rl.advantages`' and :mod:`cac_align.rl.trust_region`'s,
and this module is only what a step does with it:

- :meth:`RunGuards.score`: the gate's auxiliary judges (``regularize.judges``, else the run's
  ``eval_rewards``) score each sampled batch in the reward pool beside the trained reward;
- :meth:`RunGuards.kl_weights`: their scores gathered over the step, GARDO's gate
  (:func:`~cac_align.rl.gardo.step_gate`): the KL weight of each of this process's samples, or
  (``regularize.hold: worst_case``) the marked samples' advantages lowered to the judges'
  (:func:`~cac_align.rl.gardo.worst_case_advantages`); with ``regularize.project``, first the step's advantages
  projected off the judges' where the two conflict (:func:`~cac_align.rl.gardo.projected_advantages`);
- :meth:`RunGuards.reset_reference`, :meth:`RunGuards.reference_policy`: the adaptive reference, a copy of
  the LoRA reset to the current one (:func:`~cac_align.rl.gardo.reference_reset_due`), which the KL holds
  the policy to; its copy and the gate's state go into each checkpoint (:meth:`RunGuards.save`,
  :meth:`RunGuards.load`), so a resumed run is the same run;
- :func:`step_advantages`: the step's group advantages of the combined score, or GDPO's per component
  (``advantage.aggregate: normalize_then_sum``), amplified for diverse good samples (``regularize.diversity``);
- :func:`sampled_mean`: DPPO's old policy, the step mean under the LoRA that sampled (``loss: dppo_*``).

With every setting at its default nothing here runs but :func:`step_advantages`' group advantages: today's
numbers, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cac_align.gen.lora import adapters_disabled, load_lora_copy, swapped_lora, trainable
from cac_align.rewards.columns import collect_outputs, component_raw, route_table, score_batch
from cac_align.rl.advantages import GroupAdvantages, group_advantages, nan_mean_std, normalize_then_sum
from cac_align.rl.gardo import (GateState, diversity_multipliers, judge_advantages, latent_features, projected_advantages, reference_reset_due,
                                step_gate, worst_case_advantages)

__all__ = ["REFERENCE_FILE", "RunGuards", "check_guards", "sampled_mean", "step_advantages"]

REFERENCE_FILE = "reference.safetensors"  # a checkpoint's copy of the adaptive reference (regularize.reference: adaptive)


def check_guards(config: Any) -> None:
    """A flow-grpo or nft config's ``loss``, ``advantage.aggregate`` and ``regularize`` against the rest of it
    (called from the config's ``__post_init__``; each refusal one line naming the settings)."""
    from cac_align.rewards.registry import reward_config
    from cac_align.rl.trust_region import TRUST_REGIONS

    if config.loss not in TRUST_REGIONS:
        raise ValueError(f"loss must be one of {TRUST_REGIONS}, got {config.loss!r}")
    if config.dppo_delta is not None and (config.loss == "ppo_clip" or not config.dppo_delta > 0):
        raise ValueError(f"dppo_delta={config.dppo_delta} is DPPO's threshold: > 0, with loss dppo_kl or dppo_tv")
    if config.loss != "ppo_clip" and (config.audio == "trained" or config.advantage.localize.estimator == "vipo"):
        raise ValueError(f"loss={config.loss} masks the video's policy loss of the default estimator: not with audio=trained (the sound's "
                         "steps keep their clip) nor advantage.localize.estimator=vipo; use loss=ppo_clip there")
    guard = config.regularize
    if (guard.kl_gated or guard.adaptive) and not (config.beta > 0):
        acting = " and ".join(s for s, on in ((f"regularize.gate={guard.gate}", guard.kl_gated), (f"regularize.reference={guard.reference}", guard.adaptive)) if on)
        raise ValueError(f"{acting} act(s) on the KL term, which beta={config.beta:g} turns off: set beta > 0")
    if guard.judged and not (guard.judges or config.eval_rewards):
        asked = [s for s, on in (("regularize.gate=uncertain", guard.gated), ("regularize.project=true", guard.project)) if on]
        raise ValueError(f"{' and '.join(asked)} need{'s' if len(asked) == 1 else ''} auxiliary judges: regularize.judges, or eval_rewards "
                         "(the run's held-out judges)")
    for label, section in guard.judges.items():
        reward_config(section, f"regularize.judges.{label}")
    if config.advantage.aggregate == "normalize_then_sum" and config.parallel.context_parallel > 1:
        raise ValueError("advantage.aggregate=normalize_then_sum with parallel.context_parallel > 1 is not supported yet (the components "
                         "are read on each group's first process only); use context_parallel: 1")
    if guard.gated and guard.hold == "worst_case" and config.advantage.routing == "routed":
        raise ValueError("regularize.hold=worst_case lowers the summed advantage; advantage.routing=routed trains each component's own: "
                         "use regularize.hold=kl there (the gate's KL), or advantage.routing=summed")
    if guard.project and config.advantage.routing == "routed":
        raise ValueError("regularize.project=true projects the summed advantage; advantage.routing=routed trains each component's own: "
                         "use advantage.routing=summed with it")
    if config.advantage.aggregate == "normalize_then_sum" and config.advantage.routing == "routed":
        raise ValueError("advantage.aggregate=normalize_then_sum sums the components' group-normalized scores; advantage.routing=routed "
                         "routes them apart: use one of them")


class RunGuards:
    """A run's guards (module docstring).

    Args:
        settings: the ``regularize`` section (:class:`~cac_align.rl.gardo.RegularizeSettings`).
        judges: the gate's judges by label, built on the processes that score (None on the others); ignored
            without the gate.
        model: the trained denoiser (its LoRA is what the adaptive reference copies).
        std, clip: the trainer's ``adv_std`` and ``adv_clip_max``: the judges' advantages under ``hold: worst_case``
            are standardized and clipped as the training reward's.
    """

    def __init__(self, settings: Any, judges: dict[str, Any], model: torch.nn.Module, *, std: str = "group", clip: float | None = None):
        self.settings, self.model, self.std, self.clip = settings, model, std, clip
        self.judges = judges if settings.judged else {}
        self.gate = GateState(fraction=settings.fraction)
        # an adaptive reference starts as the LoRA itself, whose B is 0: the base model
        self.reference = {name: p.detach().clone() for name, p in trainable(model).items()} if settings.adaptive else None

    # -- the gate ---------------------------------------------------------------------------
    def score(self, pool: Any, videos: Any, texts: list[str], groups: list[int], fps: float, sound: Any) -> dict[str, Any]:
        """Each judge's scoring of one sampled batch, submitted to the reward ``pool``: ``{label: future}``."""
        return {label: pool.submit(score_batch, judge, videos, texts, groups, fps, sound) for label, judge in self.judges.items()}

    def kl_weights(self, judged: list[tuple[int, dict[str, Any]]], scores: np.ndarray, adv: GroupAdvantages, groups: list[int], local: list[int],
                   gather: Callable[[np.ndarray], np.ndarray], metrics: dict[str, Any], device: Any) -> torch.Tensor | None:
        """This process's samples' KL weights under ``regularize.gate: uncertain`` (None without it, and with
        ``hold: worst_case``): each judge's scores of the step gathered from every process (NaN where it failed;
        ``judged``: this process's batches as ``(size, {label: future})``, empty on a process that does not score),
        then GARDO's gate over the step. With ``project`` the step's advantages in ``adv`` (the whole step's, with
        their ``groups``) are first projected off the judges' where the two conflict; with ``hold: worst_case`` the
        marked samples' advantages are then lowered to the judges' instead of a KL weight. Both in place."""
        if not self.settings.judged:
            return None
        trainable_samples = adv.trainable
        columns = {}
        for label, judge in self.judges.items():  # every process gathers every judge's, in the config's order
            outputs, _ = collect_outputs(judge, [(n, futures[label]) for n, futures in judged]) if judged else ([], 0.0)
            mine = np.concatenate([o.scores for o in outputs]) if outputs else np.full(len(local), np.nan)
            columns[label] = gather(mine)
            metrics[f"regularize/{label}_mean"] = nan_mean_std(columns[label])[0]
        judges = judge_advantages(columns, groups, trainable_samples, std=self.std, clip=self.clip) if self.settings.project or \
            self.settings.hold == "worst_case" else None
        if self.settings.project:  # PCGrad on the advantages (rl/gardo.py, 1c)
            adv.advantages, cosine = projected_advantages(adv.advantages, judges)  # an untrained sample: 0, its judges' NaN: as it was
            metrics["regularize/cosine"], metrics["regularize/projected"] = cosine, float(cosine < 0)
        if not self.settings.gated:
            return None
        weights, said = step_gate(self.settings, self.gate, scores, columns, trainable_samples)
        metrics.update(said)
        if self.settings.hold == "worst_case":
            held = worst_case_advantages(adv.advantages, judges, weights > 0)
            n_trained = max(int(trainable_samples.sum()), 1)
            metrics["regularize/lowered_fraction"] = float((held < adv.advantages).sum()) / n_trained
            adv.advantages = held
            return None
        return torch.as_tensor(weights[local], device=device)

    # -- the adaptive reference -------------------------------------------------------------
    def reset_reference(self, step: int, metrics: dict[str, Any]) -> None:
        """``regularize.reference: adaptive``: the reference becomes the current LoRA every ``reset_every`` steps,
        or after a step whose KL passed ``kl_bound`` (GARDO's rule); call before the step trains."""
        s = self.settings
        if self.reference is None or not reference_reset_due(step, self.gate.last_reset, reset_every=s.reset_every, kl=self.gate.last_kl,
                                                             kl_bound=s.kl_bound):
            return
        with torch.no_grad():
            for name, p in trainable(self.model).items():
                self.reference[name].copy_(p.detach())
        self.gate.last_reset, self.gate.last_kl = step, None
        metrics["regularize/reference_reset"] = 1.0

    def reference_policy(self) -> Any:
        """The context in which the model is the policy the KL holds the LoRA to: the base model (the adapters
        off), or the adaptive reference's copy swapped in."""
        return adapters_disabled(self.model) if self.reference is None else swapped_lora(self.model, self.reference)

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint's ``state.json`` records (nothing when no guard is on: its checkpoints are as before)."""
        return {"regularize": self.gate.state_dict()} if self.settings.gated or self.reference is not None else {}

    def save(self, folder: Path, is_main: bool) -> None:
        """The adaptive reference's copy, whole, into checkpoint ``folder`` (every process: a collective when sharded)."""
        if self.reference is not None:
            from safetensors.torch import save_file

            from cac_align.gen.parallel import full_tensors

            whole = full_tensors(self.reference)
            if is_main:
                save_file(whole, str(folder / REFERENCE_FILE))

    def load(self, folder: Path, state: dict[str, Any]) -> None:
        """The gate's state and the reference's copy from checkpoint ``folder`` (``state``: its ``state.json``)."""
        if state.get("regularize"):
            self.gate.load_state_dict(state["regularize"])
        if self.reference is not None:
            load_lora_copy(self.reference, folder / REFERENCE_FILE, "the adaptive reference (regularize.reference=adaptive)")


def step_advantages(config: Any, reward: Any, outputs: list[Any], scores: np.ndarray, step_groups: list[int], trajectories: list[Any],
                    gather: Callable[[np.ndarray], np.ndarray]) -> GroupAdvantages:
    """The step's group advantages (the trainers' step 4): of the combined ``scores``, or (``advantage.aggregate:
    normalize_then_sum``, GDPO) of each component's raw score normalized in its group, summed with the combination's
    weights and normalized over the step (:func:`~cac_align.rl.advantages.normalize_then_sum`; every process scored,
    so each reads the parts); then, with ``regularize.diversity: latents``, a group's good samples amplified by how far
    their pooled final latents (of this process's ``trajectories``, gathered) lie from each other, and clipped again
    (:func:`~cac_align.rl.gardo.diversity_multipliers`)."""
    if config.advantage.aggregate == "normalize_then_sum":
        table = route_table(reward)
        columns = {name: gather(np.concatenate([component_raw(o, name) for o in outputs])) for name in table}
        for values in columns.values():
            values[~np.isfinite(scores)] = np.nan  # the combined score's invalid policy holds (drop: out of every statistic)
        adv = normalize_then_sum(columns, step_groups, weights={name: weight for name, (weight, _) in table.items()}, clip=config.adv_clip_max)
    else:
        adv = group_advantages(scores, step_groups, std=config.adv_std, clip=config.adv_clip_max)
    if config.regularize.diversity == "latents":
        final = torch.cat([t.final for t in trajectories])  # this process's clean latents (B, C, T, H, W), every chunk's
        features = gather(latent_features(final).reshape(-1)).reshape(len(scores), -1)
        amplified = adv.advantages * diversity_multipliers(scores, features, step_groups)
        adv.advantages = np.clip(amplified, -config.adv_clip_max, config.adv_clip_max).astype(np.float32)
    return adv


def sampled_mean(model: torch.nn.Module, sampler: dict[str, torch.Tensor], step_of: Callable[[torch.nn.Module], Any]) -> torch.Tensor:
    """DPPO's old policy for an update after the step's first: the step mean under the LoRA that sampled
    (``sampler``: its weights at the step's start), with no gradient (one more forward). ``step_of(model)`` is
    the trainer's SDE transition of the step from the model's velocity."""
    with torch.no_grad(), swapped_lora(model, sampler):
        return step_of(model).mean
