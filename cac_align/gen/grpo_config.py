"""The ``flow-grpo`` recipe's configuration (the trainer is :mod:`cac_align.gen.grpo_trainer`).

Kept apart from the trainer so a recipe is checked without importing it, and so the trainer's
imports sit at its top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from cac_align.gen.sde import NOISE_SCHEDULES
from cac_align.gen.wan import GeneratorConfig
from cac_align.rewards.base import reward_config

__all__ = ["FlowGrpoConfig", "RUN_ONLY_KEYS", "WanLoraSettings"]

# Settings that may change when a run is resumed (they change no sample and no update).
RUN_ONLY_KEYS = (
    "out_dir",
    "steps",
    "resume",
    "overwrite",
    "eval_every",
    "eval_videos",
    "checkpoint_every",
    "keep_checkpoints",
    "log_with",
    "reward_workers",
    "store_latents_on_cpu",
    "generator.device",
)


@dataclass
class WanLoraSettings:
    """The LoRA on the Wan transformer (peft, through diffusers' ``add_adapter``).

    Attributes:
        rank: LoRA rank (CaC App. C.4: 32).
        alpha: LoRA alpha (scale = alpha / rank).
        target_modules: module names to adapt; the default covers the query/key/value/output
            projections of both self- and cross-attention of every block.
        init: peft ``init_lora_weights`` ("gaussian" as Flow-GRPO, or true for peft's default);
            either way B = 0, so the adapter starts as the identity.
    """

    rank: int = 32
    alpha: float = 64.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    init: str = "gaussian"


@dataclass
class FlowGrpoConfig:
    """Config of `cac-align flow-grpo` (defaults: the paper's Wan-2.1-1.3B run).

    Attributes:
        out_dir: the run folder (module docstring).
        prompts: training prompts, a text file (one per line) or JSONL with "prompt".
        eval_prompts: held-out prompts for periodic ODE evaluation (None: no evaluation).
        generator: Wan pipeline and sampling settings (steps, resolution, frames, CFG).
        reward: the reward section (``ur_cac`` by default; ``unified_reward`` for the UR-only row).
        lora: the LoRA settings.
        steps: training steps (CaC App. C.4: 120).
        prompts_per_step: prompts per step over all processes (CaC: batch size 2).
        group_size: videos per prompt (CaC: 16).
        sample_batch_size: videos per sampling call, per process.
        train_batch_size: videos per training micro-batch, per process.
        updates_per_step: AdamW updates per step: the step's micro-batches are split into this
            many contiguous parts, one update each (Flow-GRPO makes 2; with 1 every update is
            exactly on-policy and the PPO clip never acts).
        noise_level: SDE noise level ``a`` (CaC: 0.3).
        noise_schedule: "sqrt" (``a * sqrt(s / (1 - s))``) or "linear" (Flow-GRPO's Wan schedule).
        timestep_fraction: fraction of the sampling steps trained on each step (a seeded random
            subset; 1.0 trains all of them).
        learning_rate, adam_beta1, adam_beta2, adam_eps, weight_decay: AdamW on the LoRA weights.
        max_grad_norm: gradient clipping (0 turns it off).
        clip_range: PPO ratio clip; the ratio is kept within [1 - clip_range, 1 + clip_range_high].
        clip_range_high: a separate upper clip (None: the same as ``clip_range``).
        adv_clip_max: advantages are clipped to [-adv_clip_max, adv_clip_max].
        adv_std: "group" (each prompt's own std) or "global" (std of all rewards in the step).
        beta: weight of the KL to the reference policy (0 skips the reference forward pass).
        ema_decay: EMA of the LoRA weights (None: no EMA); evaluation and the final export use it.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        mixed_precision: "no", "bf16" or "fp16" (accelerate autocast).
        seed: base seed for prompt order, LoRA init and every sample's noise.
        eval_every: evaluate every this many steps and at the end (0: only at the end).
        eval_videos: held-out videos written to ``eval/`` per evaluation.
        checkpoint_every: checkpoint every this many steps and at the end (0: only at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        log_with: "tensorboard" or "none" (``metrics.jsonl`` is always written).
        reward_workers: threads scoring sampled batches while the next batch samples.
        store_latents_on_cpu: keep the recorded trajectories in host memory (saves GPU memory
            at full size: 51 latents of 16 x 21 x 60 x 104 floats are 430 MB per video).
        resume: continue from the latest checkpoint in ``out_dir``.
        overwrite: replace a different run in ``out_dir``.
    """

    out_dir: str = MISSING
    prompts: str = MISSING
    eval_prompts: str | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    reward: Any = field(default_factory=lambda: {"name": "ur_cac"})
    lora: WanLoraSettings = field(default_factory=WanLoraSettings)
    steps: int = 120
    prompts_per_step: int = 2
    group_size: int = 16
    sample_batch_size: int = 4
    train_batch_size: int = 2
    updates_per_step: int = 1
    noise_level: float = 0.3
    noise_schedule: str = "sqrt"
    timestep_fraction: float = 1.0
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    clip_range: float = 1e-4
    clip_range_high: float | None = None
    adv_clip_max: float = 5.0
    adv_std: str = "group"
    beta: float = 0.004
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str = "bf16"
    seed: int = 0
    eval_every: int = 10
    eval_videos: int = 4
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_with: str = "tensorboard"
    reward_workers: int = 1
    store_latents_on_cpu: bool = False
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:

        positive = (
            "steps",
            "prompts_per_step",
            "group_size",
            "sample_batch_size",
            "train_batch_size",
            "updates_per_step",
            "keep_checkpoints",
            "reward_workers",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare samples of one prompt), got {self.group_size}")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}")
        if self.noise_schedule == "sqrt" and self.noise_level <= 0:
            raise ValueError("noise_level must be > 0: with no noise the policy has no log-probability to train")
        if self.clip_range < 0 or (self.clip_range_high is not None and self.clip_range_high < 0):
            raise ValueError("clip_range and clip_range_high must be >= 0")
        if self.adv_std not in ("group", "global"):
            raise ValueError(f"adv_std must be 'group' or 'global', got {self.adv_std!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if str(self.mixed_precision).lower() == "false":  # YAML reads an unquoted `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.log_with not in ("tensorboard", "none"):
            raise ValueError(f"log_with must be 'tensorboard' or 'none', got {self.log_with!r}")
        if self.learning_rate <= 0 or self.beta < 0 or self.adv_clip_max <= 0:
            raise ValueError("learning_rate and adv_clip_max must be > 0 and beta >= 0")
        if self.lora.rank < 1 or not self.lora.target_modules:
            raise ValueError("lora.rank must be >= 1 and lora.target_modules non-empty")
        if self.generator.lora is not None:
            raise ValueError("generator.lora is for generation (bon, eval); flow-grpo trains a new LoRA from the base model")
        reward_config(self.reward, "reward")
