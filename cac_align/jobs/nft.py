"""`cac-align nft`: DiffusionNFT training of a generator's LoRA with a scalar video reward.

    cac-align nft --config recipes/align/nft_tiny.yaml          # offline, CPU, seconds
    accelerate launch --num_processes 8 -m cac_align.cli nft \\
        --config recipes/align/nft_wan_ur_cac.yaml prompts=train.txt out_dir=runs/nft

DiffusionNFT (Zheng et al., arXiv 2509.16117) trains on the forward process: no SDE, no
log-probabilities, no PPO ratio. Its equations are :mod:`cac_align.rl.nft`. It shares everything
else with `cac-align flow-grpo` (:mod:`cac_align.jobs.flow_grpo`, whose trainer this one extends:
the prompts, rewards in a thread pool and read into columns (:mod:`cac_align.rewards.columns`), group
advantages and invalid samples, evaluation, the held-out watch, trackers, the run folder, exact
resume, the LoRA, the parallel layout and the memory plan). Each training step:

1. takes the step's prompts and ``group_size`` copies of each, split over the processes
   (flow-grpo's step 1);
2. samples every copy with the **old policy** (the EMA of the trained LoRA, :func:`old_policy_decay`)
   by the family's deterministic flow-matching ODE (Euler over the family's own schedule, any
   ``generator.num_inference_steps``), decodes it and scores it in the reward pool;
3. gathers the rewards; 4. group advantages (flow-grpo's steps 3-4; localized: the credit maps);
5. trains: for each micro-batch and trained timestep ``j``, noises the sampled clean latent again,
   ``x_t = (1 - sigma_j) x0 + sigma_j eps`` (``eps`` seeded by (seed, step, sample, j)), takes the
   old, the current and (``beta > 0``) the reference policy's velocities at ``x_t`` and the NFT loss
   (:func:`cac_align.rl.nft.nft_loss`); gradients accumulate into ``updates_per_step`` AdamW updates;
6. moves the old policy towards the trained one (:func:`cac_align.rl.nft.update_old_policy`), then
   logs, evaluates and checkpoints as flow-grpo (a checkpoint also holds ``old_policy.safetensors``).

Output directory: flow-grpo's (docs/flow_grpo.md), plus ``checkpoints/step_N/old_policy.safetensors``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from safetensors.torch import save_file

from cac_align.gen.generator import predict_velocity, video_conditioning
from cac_align.rl.credit import chunk_credit
from cac_align.gen.lora import load_lora_copy, swapped_lora, trainable
from cac_align.gen.parallel import full_tensors, gradient_sync, scaled_backward
from cac_align.rl.nft import ADV_MODES, DECAY_SCHEDULES, nft_loss, old_policy_decay, update_old_policy
from cac_align.jobs.flow_grpo import FlowGrpoConfig, _Trainer, memory_inputs, plan_step, trained_timesteps
from cac_align.rewards.base import Reward
from cac_align.run.metrics import world_means

__all__ = ["NftConfig", "memory_inputs", "noise_seed", "plan_step", "run"]  # memory_inputs, plan_step: read by the CLI (check-recipe)

log = logging.getLogger(__name__)

OLD_POLICY_FILE = "old_policy.safetensors"
# Flow-GRPO's SDE and PPO settings, which NFT does not have: left at these values or refused (DPPO's trust region is the
# SDE step's too)
_SDE_SETTINGS = {"noise_schedule": "sqrt", "clip_range": 1e-4, "clip_range_high": None, "loss": "ppo_clip", "dppo_delta": None}


@dataclass
class NftConfig(FlowGrpoConfig):
    """Config of `cac-align nft`: flow-grpo's (:class:`~cac_align.jobs.flow_grpo.FlowGrpoConfig`,
    every shared setting means the same) and DiffusionNFT's own.

    Attributes:
        nft_beta: the guidance strength ``beta`` of the positive and implicit negative policies
            (:func:`cac_align.rl.nft.nft_velocities`; authors ``config.beta``: 1.0 by default,
            0.1 in their OCR and multi-reward runs (sd3_ocr, sd3_multi_reward), ``config/nft.py``).
        adv_mode: how the advantage becomes ``r`` (:data:`cac_align.rl.nft.ADV_MODES`).
        decay_type: the old policy's EMA schedule (:data:`cac_align.rl.nft.DECAY_SCHEDULES`;
            authors' default 1, their OCR run (sd3_ocr) 2).
        beta: the KL weight to the reference policy, flow-grpo's meaning (authors
            ``config.train.beta``: 1e-4; 0 skips the reference forward).
        noise_level: must stay 0: NFT samples with the ODE.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {**FlowGrpoConfig.CHOICES, "adv_mode": ADV_MODES, "decay_type": tuple(DECAY_SCHEDULES)}

    nft_beta: float = 1.0
    adv_mode: str = "all"
    decay_type: int = 1
    beta: float = 1e-4
    noise_level: float = 0.0

    def _check_sampler(self) -> None:
        if self.noise_level != 0:
            raise ValueError(f"noise_level={self.noise_level}: nft samples with the ODE (no SDE); leave noise_level at 0")
        for key, default in _SDE_SETTINGS.items():
            if getattr(self, key) != default:
                raise ValueError(f"{key} is a Flow-GRPO setting (its SDE or PPO clip), which nft does not have; remove it from the recipe")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nft_beta <= 0:
            raise ValueError(f"nft_beta must be > 0 (the loss divides by it), got {self.nft_beta}")
        if self.adv_mode not in ADV_MODES:
            raise ValueError(f"adv_mode must be one of {ADV_MODES}, got {self.adv_mode!r}")
        if self.decay_type not in DECAY_SCHEDULES:
            raise ValueError(f"decay_type must be one of {sorted(DECAY_SCHEDULES)}, got {self.decay_type}")
        localize = self.advantage.localize
        if localize.enabled and (localize.estimator != "default" or localize.confine > 0):
            raise ValueError("advantage.localize for nft weights the x0 errors by the map: estimator 'vipo' and confine are "
                             "Flow-GRPO's (per-position ratios, per-position KL); leave them at their defaults")
        if localize.enabled and self.advantage.routing == "routed":
            raise ValueError("advantage.routing=routed with advantage.localize is flow-grpo's (a per-position advantage); nft's loss takes "
                             "one advantage a sample: use routing=summed or localize.enabled=false")


def noise_seed(seed: int, step: int, index: int, j: int, stream: int = 0) -> int:
    """The seed of the noise that re-noises sample ``index``'s clean latent at trained timestep ``j`` of
    step ``step``; ``stream`` 1: its clean audio's (``audio: trained``)."""
    key = [seed, step + 1, index, j, 0x4E4654] + ([stream] if stream else [])
    return int(np.random.default_rng(key).integers(0, 2**62))


def _renoise(clean: torch.Tensor, sigma: float, seeds: list[int], device: Any) -> torch.Tensor:
    """The forward process at ``sigma``: ``(1 - sigma) x0 + sigma eps``, each sample's ``eps`` from its seed."""
    eps = torch.stack([torch.randn(tuple(clean.shape[1:]), generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    return (1 - sigma) * clean + sigma * eps


class _NftTrainer(_Trainer):
    """Flow-grpo's trainer with NFT's sampling (the old policy, the ODE), update and old policy."""

    job = "nft"

    def setup(self) -> None:
        super().setup()
        # the old (sampling) policy starts as the policy (authors: the "old" adapter copied from the new one)
        self.old = {name: p.detach().clone() for name, p in trainable(self.unwrapped).items()}
        self._evaluating = False
        if self.start_step:
            self._load_old_policy(self.out / "checkpoints" / f"step_{self.start_step:06d}")

    def _load_old_policy(self, folder: Path) -> None:
        load_lora_copy(self.old, folder / OLD_POLICY_FILE, "the old policy: an nft checkpoint's")

    def _write_checkpoint(self, tmp: Path) -> None:
        super()._write_checkpoint(tmp)
        old = full_tensors(self.old)  # every process: a collective when sharded
        if self.accelerator.is_main_process:
            save_file(old, str(tmp / OLD_POLICY_FILE))

    # 2. sampling: the old policy's ODE samples (evaluation: the policy's, or its EMA, as flow-grpo)
    def _sample(self, embeds: Any, negative: Any, seeds: list[int], noise_level: float) -> tuple[Any, np.ndarray]:
        swap = contextlib.nullcontext() if self._evaluating else swapped_lora(self.unwrapped, self.old)
        with swap:
            return super()._sample(embeds, negative, seeds, 0.0)

    def evaluate(self, done: int) -> dict[str, float]:
        self._evaluating = True
        try:
            return super().evaluate(done)
        finally:
            self._evaluating = False

    def train_step(self, step: int) -> dict[str, Any]:
        metrics = super().train_step(step)
        # 6. the old policy moves towards the trained one (authors: after each epoch, by the updates so far)
        decay = old_policy_decay((step + 1) * self.config.updates_per_step, self.config.decay_type)
        params = trainable(self.unwrapped)
        update_old_policy([self.old[name] for name in params], list(params.values()), decay)
        metrics["train/old_decay"] = decay
        return metrics

    # 5. the NFT update
    def _update(self, step: int, trajectories: list[Any], embeds: Any, negative: Any, advantages: torch.Tensor,
                weights: torch.Tensor, credit: torch.Tensor | None = None, hold: torch.Tensor | None = None,
                audio: dict[str, Any] | None = None, kl_weights: torch.Tensor | None = None) -> dict[str, float]:
        """NFT's update (step 5). ``kl_weights``: the gate's per-sample KL weights (``regularize.gate``). ``audio`` (``audio: trained``): the sound's ``advantages``; its clean
        latents are noised again at the audio's own level of each trained step and take the NFT loss
        too, from the same transformer calls as the video's (docs/audio.md)."""
        config, acc = self.config, self.accelerator
        device = acc.device
        clean = torch.cat([t.final for t in trajectories])  # x0: the sampled videos' latents
        sides = torch.cat([t.side for t in trajectories]) if trajectories[0].side is not None else None
        timesteps = self.timesteps.to(device)
        local = list(self.plan.local_range)
        steps_trained = [self.trainable_steps[k] for k in trained_timesteps(len(self.trainable_steps), config.timestep_fraction, step, config.seed)]
        micro = [(lo, min(lo + config.train_batch_size, len(clean))) for lo in range(0, len(clean), config.train_batch_size)]
        chunks = [list(part) for part in np.array_split(np.arange(len(micro)), config.updates_per_step)]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        grad_norms: list[float] = []
        self.model.train()
        N, K = len(timesteps), self.video_chunks  # an autoregressive family's K chunks of N steps (Helios); K = 1 for the others
        for chunk in chunks:
            # which expert each of the update's backwards runs: its gradients reduce once, at its last (gen/parallel/gradients.py)
            backwards, runs = 0, [{self.unwrapped.expert_index(timesteps[s % N])} for _ in chunk for s in steps_trained]
            chunk_total = len(runs)
            for index in chunk:
                lo, hi = micro[index]
                neg = negative[lo:hi] if negative is not None else None
                for s in steps_trained:  # step s = c N + j: chunk c's level j (docs/helios.md, "nft")
                    c, j = divmod(s, N)
                    backwards += 1
                    # chunk c's clean latents, and its history: the video's own clean earlier chunks (teacher forcing)
                    x0 = clean[lo:hi, :, c * clean.shape[2] // K:(c + 1) * clean.shape[2] // K].to(device)
                    emb = video_conditioning(self.family, embeds[lo:hi], clean[lo:hi], c, K)
                    sigma = float(self.sigmas[j])
                    x_t = _renoise(x0, sigma, [noise_seed(config.seed, step, local[k], s) for k in range(lo, hi)], device)
                    sigmas = torch.full((hi - lo,), sigma, device=device)
                    side = sides[lo:hi, j].to(device) if sides is not None else None
                    if audio:  # trained: the sound noised again from its clean latents, at its own level
                        side_sigma = float(self.side_sigmas[j])
                        side = _renoise(sides[lo:hi, -1].to(device), side_sigma, [noise_seed(config.seed, step, local[k], j, 1) for k in range(lo, hi)], device)
                    with gradient_sync(self.layout, acc, self.model, backwards - 1, runs):
                        with torch.no_grad(), acc.autocast():  # the old policy's and the reference's velocities
                            with swapped_lora(self.unwrapped, self.old):
                                old_velocity = self._velocities(self.unwrapped, x_t, timesteps[j], emb, neg, side)
                            ref_velocity = (None, None)
                            if config.beta > 0:
                                with self.guards.reference_policy():  # the base model, or regularize.reference=adaptive's copy
                                    ref_velocity = self._velocities(self.unwrapped, x_t, timesteps[j], emb, neg, side)
                        with acc.autocast():
                            velocity = self._velocities(self.model, x_t, timesteps[j], emb, neg, side)
                        loss, parts = nft_loss(
                            velocity[0].float(), old_velocity[0].float(), x_t, x0, sigmas, advantages[lo:hi],
                            beta=config.nft_beta, adv_clip_max=config.adv_clip_max, adv_mode=config.adv_mode,
                            ref_prediction=None if ref_velocity[0] is None else ref_velocity[0].float(), kl_beta=config.beta,
                            weights=weights[lo:hi], credit=None if credit is None else chunk_credit(credit[lo:hi], c, K),
                            kl_weights=None if kl_weights is None else kl_weights[lo:hi],
                        )
                        if audio:
                            audio_loss, audio_parts = nft_loss(
                                velocity[1].float(), old_velocity[1].float(), side, sides[lo:hi, -1].to(device), torch.full((hi - lo,), side_sigma, device=device),
                                audio["advantages"][lo:hi], beta=config.nft_beta, adv_clip_max=config.adv_clip_max, adv_mode=config.adv_mode,
                                ref_prediction=None if ref_velocity[1] is None else ref_velocity[1].float(), kl_beta=config.beta, weights=weights[lo:hi],
                                kl_weights=None if kl_weights is None else kl_weights[lo:hi],
                            )
                            loss = loss + audio_loss
                            parts.update({f"audio_{key}": value for key, value in audio_parts.items()})
                        scaled_backward(self.layout, acc, loss / chunk_total)
                    for key, value in {**parts, "loss": loss.detach()}.items():
                        if key in ("kl_div_loss", "audio_kl_div_loss") and config.beta == 0:
                            continue
                        if math.isfinite(float(value)):  # a micro-batch of dropped samples has no r_mean
                            sums[key] = sums.get(key, 0.0) + float(value)
                            counts[key] = counts.get(key, 0) + 1
            self._optimizer_step(acc, grad_norms)
        self.model.eval()
        out = {f"train/{k}": v for k, v in world_means(sums, counts).items()}  # the world's mean, not this process's
        if grad_norms:
            out["train/grad_norm"] = float(np.mean(grad_norms))
        out["train/timesteps"] = len(steps_trained)
        return out

    def _velocities(self, model: Any, x_t: torch.Tensor, timestep: Any, emb: Any, neg: Any, side: Any) -> tuple[torch.Tensor, Any]:
        """``(video velocity, side velocity or None)`` of one transformer call (:func:`predict_velocity`)."""
        out = predict_velocity(model, x_t, timestep, emb, neg, self.guidance, self.base_dtype, side)
        return (out, None) if side is None else out


def run(config: NftConfig, reward: Reward | None = None, pipe: Any = None, decode: Any = None) -> dict[str, Any]:
    """Train (module docstring); the arguments as :func:`cac_align.jobs.flow_grpo.run`."""
    from cac_align.gen.parallel import named_timeout, release_trainer

    trainer = _NftTrainer(config, reward=reward, pipe=pipe, decode=decode)
    try:
        with named_timeout(config.parallel):
            trainer.setup()
            try:
                last = trainer.train()
            except BaseException:
                trainer.pool.shutdown(wait=False, cancel_futures=True)
                raise
            trainer.cleanup()
    finally:
        release_trainer(trainer)  # its group closed and its objects collected while the interpreter is whole
    return last
