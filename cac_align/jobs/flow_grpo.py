"""`cac-align flow-grpo`: Flow-GRPO training of a generator's LoRA with a scalar video reward (CaC §4.2).

    cac-align flow-grpo --config recipes/align/flow_grpo_tiny.yaml          # offline, CPU, seconds
    accelerate launch --num_processes 8 -m cac_align.cli flow-grpo \\
        --config recipes/align/flow_grpo_wan_ur_cac.yaml prompts=train.txt out_dir=runs/grpo

The paper trains Wan-2.1-1.3B with Flow-GRPO (LoRA rank 32, group size 16, noise level 0.3,
50 sampling steps, 480p x 81 frames, 2 prompts per step, 120 steps) on the average of the
normalized UnifiedReward and CaC scores. Each training step:

1. takes the step's prompts (``prompts_per_step``, in a seeded order that covers every prompt
   once per epoch) and makes ``group_size`` copies of each; the copies are split evenly over
   the processes;
2. samples every copy with the SDE sampler (:mod:`cac_align.rl.sde`) and the generator family's
   own guided velocity (:mod:`cac_align.gen.family`: Wan-2.1, Wan2.2, LTX-2 and MiniMax-H3, whose
   audio latents take the deterministic step beside the video's, or with ``audio: trained`` an SDE
   step of their own: docs/audio.md), keeping its latents and per-step log-probs, and decodes it
   (and its soundtrack, for a reward that hears); each sampled batch goes to a reward thread pool at
   once, so scoring overlaps the sampling of the next batch;
3. collects the rewards and gathers them from every process (each batch's output read into per-sample
   columns: :mod:`cac_align.rewards.columns`);
4. computes per-prompt advantages (:mod:`cac_align.rl.advantages`); samples whose reward is invalid
   or whose group has zero variance are dropped (weight 0) and counted; ``advantage.routing:
   routed`` gives each component's advantage to the latents of what it judges (:mod:`cac_align.rl.routing`);
5. trains: for each micro-batch and each trained timestep (of a two-expert Wan2.2-A14B, only the
   steps its adapted experts serve: ``lora.experts``), recomputes the log-prob of the stored
   next latent under the current policy and takes the PPO-clip loss + beta * KL to the reference
   policy (the same transformer with the LoRA disabled); gradients accumulate over micro-batches
   and timesteps into ``updates_per_step`` AdamW updates, with gradient clipping;
6. updates the EMA of the LoRA weights (optional), logs, evaluates on held-out prompts with
   deterministic (ODE) sampling every ``eval_every`` steps and at the last, and checkpoints every
   ``checkpoint_every`` steps and at the last (``checkpoint_every: 0``: no checkpoint at all).

Every random draw comes from a generator seeded by (seed, step, sample), so a run resumed from a
checkpoint (``resume=true``) continues exactly as if it had not stopped, and the same recipe
gives the same videos on 1 or N processes.

The run folder (the manifest, metrics.jsonl, checkpoints, the final ``lora/`` for ``cac-align bon
generator.lora=<out_dir>/lora``, a few held-out videos per evaluation): docs/flow_grpo.md, "The run folder".
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from omegaconf import MISSING, OmegaConf
from tqdm.auto import tqdm

from cac_align.config import RecipeError
from cac_align.gen.lora import (LoraSettings, adapted_denoiser, add_lora, ddp_kwargs_handlers, load_sharded_lora_checkpoint,
                               register_lora_checkpoint, export_lora, save_sharded_lora_checkpoint, swapped_lora, trainable, build_optimizer)
from cac_align.plan.check import check_memory
from cac_align.plan.rows import guided_rows
from cac_align.gen.parallel import (Layout, ParallelSettings, apply_parallelism, check_context_parallel, check_parallel_resume, clip_grad_norm_,
                                   connect_processes, encoders_on, gather_from_leaders, gather_numbers, gradient_sync, layout_for,
                                   layout_state, load_generator, named_timeout, prepare_for_training, release_trainer, scaled_backward)
from cac_align.gen.family import check_prompt_images, check_trainable, fixed_frames, whole_latents
from cac_align.gen.generator import GeneratorConfig, chunk_count, encode_conditioning, predict_velocity, sample_with_log_probs, sde_transitions, step_conditioning, video_decode
from cac_align.rl.credit import chunk_credit, position_terms
from cac_align.rl.sde import NOISE_SCHEDULES, SDESchedule, SideStreamLoss, flow_grpo_loss
from cac_align.run.folder import run_fingerprint
from cac_align.run.input_files import read_prompt_rows
from cac_align.rewards.base import ErrorKind, Reward
from cac_align.rewards.columns import (check_prompt_heard, check_step_scored, collect_outputs, reward_columns, route_table, routed_credit_maps,
                                      routed_step, score_batch, step_credit)
from cac_align.rewards.guards import RunGuards, check_guards, sampled_mean, step_advantages
from cac_align.rewards.registry import build_reward, reward_config
from cac_align.rl.advantages import nan_mean_std, shuffle_within_groups
from cac_align.rl.gardo import RegularizeSettings
from cac_align.rl.trust_region import DEFAULT_DELTAS, TRUST_REGIONS
from cac_align.rl.routing import AdvantageSettings
from cac_align.run.checkpoints import checkpoints, read_checkpoint_state, save_checkpoint
from cac_align.run.dist import StepPlan, gather_floats, plan_step, sample_seed, step_indices, trained_timesteps
from cac_align.run.folder import RunFolder, keep_log_steps
from cac_align.run.metrics import LOG_WITH, end_trackers, log_metrics, start_trackers, trackers_for, world_means
from cac_align.run.watch import RunWatch, WatchSettings
from cac_align.eval.run_view import HeldOutEvaluation, RunView, trainer_card
from cac_align.vlm.config import served_urls
from cac_align.vlm.openai import FleetHealth, router_workers

__all__ = ["AUDIO_MODES", "RUN_ONLY_KEYS", "AdvantageSettings", "FlowGrpoConfig", "StepPlan", "LoraSettings", "add_lora", "plan_step", "run", "sample_seed", "trained_timesteps"]

log = logging.getLogger(__name__)


# ``audio``: the generator's sound on the deterministic path (as before), or trained beside the video
AUDIO_MODES = ("frozen", "trained")
# the LoRA's optimizer: AdamW (the default, Flow-GRPO's and DiffusionNFT's) or plain SGD (no momentum: no state,
# so its update is linear in the gradient; tests/jobs/test_parallel.py compares layouts under it to 1e-9)
OPTIMIZERS = ("adamw", "sgd")


# Settings that may change when a run is resumed (they change no sample and no update).
RUN_ONLY_KEYS = (
    "out_dir", "steps", "resume", "overwrite", "eval_every", "eval_at_start", "eval_videos", "eval_rewards", "watch", "checkpoint_every", "keep_checkpoints",
    "log_with", "reward_workers", "store_latents_on_cpu", "memory_budget_gib", "generator.device", "parallel.timeout_s",
    "parallel.share_encoders",  # where the encoders' weights live in host memory changes no sample
    "parallel.share_dir",
)


@dataclass
class FlowGrpoConfig:
    """Config of `cac-align flow-grpo` (defaults: the paper's Wan-2.1-1.3B run).

    Attributes:
        out_dir: the run folder (module docstring).
        prompts: training prompts, a text file (one per line) or JSONL with "prompt" and, for an
            image-to-video model, "image" (and "last_image"): each group's videos animate its
            prompt's image (docs/flow_grpo.md, "Image-to-video").
        eval_prompts: held-out prompts for periodic ODE evaluation (None: no evaluation), in the
            same form.
        generator: the generator (any family: Wan-2.1, Wan2.2, LTX-2) and its sampling settings
            (steps, resolution, frames, guidance).
        reward: the reward section (``ur_cac`` by default; ``unified_reward`` for the UR-only row).
        lora: the LoRA settings.
        parallel: how the processes share the generator (:mod:`cac_align.gen.parallel`): FSDP2
            sharding (``shard: fsdp2``) and context parallel (``context_parallel: 2``); the default
            is data parallel with a whole generator on every process.
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
        optimizer: the LoRA weights' optimizer: "adamw" (the default) or "sgd" (``torch.optim.SGD``,
            no momentum: the update is ``-learning_rate * (gradient + weight_decay * weight)``).
        learning_rate, weight_decay: the optimizer's (either optimizer's).
        adam_beta1, adam_beta2, adam_eps: AdamW's (unused with ``optimizer: sgd``).
        max_grad_norm: gradient clipping (0 turns it off).
        clip_range: PPO ratio clip; the ratio is kept within [1 - clip_range, 1 + clip_range_high].
        clip_range_high: a separate upper clip (None: the same as ``clip_range``).
        loss: the trust region of the policy loss: "ppo_clip" (the ratio clip above) or DPPO's mask
            on the divergence of the old and the current SDE step, "dppo_kl" (its exact KL) or
            "dppo_tv" (its total variation), masked where it passes ``dppo_delta`` in the direction
            the advantage pushes (:mod:`cac_align.rl.trust_region`; it acts from an update's second
            chunk on: ``updates_per_step > 1``). docs/flow_grpo.md, "When your reward is hacked".
        dppo_delta: DPPO's threshold (null: 1e-6 for the KL, Flow-Factory's, and 5.6e-4 for the TV).
        adv_clip_max: advantages are clipped to [-adv_clip_max, adv_clip_max].
        adv_std: "group" (each prompt's own std) or "global" (std of all rewards in the step).
        advantage: ``localize``: localized credit from the reward's evidence (docs/flow_grpo.md,
            "Localized credit"); ``routing``: each component's advantage to the modality it judges.
        audio: "frozen" (a generator's sound steps on the deterministic path, no audio layer adapted:
            as before) or "trained" (a family with sound: its audio latents take the SDE step with
            their own log-probability in the same forward as the video, the loss covers them, and the
            audio branch's layers join the LoRA's default targets; docs/audio.md).
        audio_rewards_blind_ok: allow a run that trains the sound (``audio: trained``) with audio
            components that all ignore the prompt (``reads_prompt`` false: AudioBox, sync); refused
            otherwise (docs/audio.md, "Guards").
        beta: weight of the KL to the reference policy (0 skips the reference forward pass).
        regularize: GARDO's guards against reward hacking (:class:`~cac_align.rl.gardo.RegularizeSettings`):
            the KL on the samples the auxiliary judges disagree on only, an adaptive reference, diversity.
        ema_decay: EMA of the LoRA weights (None: no EMA); evaluation and the final export use it.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        mixed_precision: "no", "bf16" or "fp16" (accelerate autocast).
        seed: base seed for prompt order, LoRA init and every sample's noise.
        eval_every: evaluate every this many steps and at the last (0: only at the last).
        eval_at_start: also evaluate the model the run starts from, before the first step (``step 0`` in
            ``metrics.jsonl``: the baseline of every ``eval/`` curve, of the watch and of the best LoRA's rule;
            a resumed run does not evaluate it again); false skips it.
        eval_videos: held-out videos written to ``eval/`` per evaluation (and shown on ``run.html``).
        eval_rewards: judges the run does not train on, by a label of yours (``{label: reward
            section}``): each scores the evaluation videos at every evaluation
            (``eval/<label>/mean``, ``eval/<label>/valid_fraction``) for the reward-hacking watch.
        watch: the reward-hacking watch over the trained reward and ``eval_rewards``
            (:mod:`cac_align.run.watch`: a warning, or a stop with ``stop: true``).
        checkpoint_every: checkpoint every this many steps and at the last step, which a finished
            run resumes or extends from (0: no checkpoint at all; ``lora/`` is still written, but
            a killed run starts again from step 0 and a finished one cannot be extended).
        keep_checkpoints: how many recent checkpoints to keep.
        log_with: "tensorboard", "wandb" (Weights & Biases, an optional extra), "both" or "none"
            (``metrics.jsonl`` is always written).
        reward_workers: threads scoring sampled batches while the next batch samples.
        memory_budget_gib: the memory per device the plan is checked against (null: the GPU's own;
            on a CPU the plan is printed, and checked only against this); docs/flow_grpo.md,
            "Sharding and long videos".
        store_latents_on_cpu: keep the recorded trajectories in host memory (saves GPU memory
            at full size: 51 latents of 16 x 21 x 60 x 104 floats are 430 MB per video).
        resume: continue from the latest checkpoint in ``out_dir``.
        overwrite: replace a different run in ``out_dir``.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"audio": AUDIO_MODES, "optimizer": OPTIMIZERS, "noise_schedule": NOISE_SCHEDULES, "adv_std": ("group", "global"),
                                                       "loss": TRUST_REGIONS,
                                                       "mixed_precision": ("no", "bf16", "fp16"), "log_with": tuple(LOG_WITH)}

    out_dir: str = MISSING
    prompts: str = MISSING
    eval_prompts: str | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig.unset)
    reward: Any = field(default_factory=lambda: {"name": "ur_cac"})
    lora: LoraSettings = field(default_factory=LoraSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    steps: int = 120
    prompts_per_step: int = 2
    group_size: int = 16
    sample_batch_size: int = 4
    train_batch_size: int = 2
    updates_per_step: int = 1
    noise_level: float = 0.3
    noise_schedule: str = "sqrt"
    timestep_fraction: float = 1.0
    optimizer: str = "adamw"
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
    loss: str = "ppo_clip"
    dppo_delta: float | None = None
    advantage: AdvantageSettings = field(default_factory=AdvantageSettings)
    audio: str = "frozen"
    audio_rewards_blind_ok: bool = False
    beta: float = 0.004
    regularize: RegularizeSettings = field(default_factory=RegularizeSettings)
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str = "bf16"
    seed: int = 0
    eval_every: int = 10
    eval_at_start: bool = True
    eval_videos: int = 4
    eval_rewards: dict[str, Any] = field(default_factory=dict)
    watch: WatchSettings = field(default_factory=WatchSettings)
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    log_with: str = "tensorboard"
    reward_workers: int = 1
    store_latents_on_cpu: bool = False
    memory_budget_gib: float | None = None
    resume: bool = False
    overwrite: bool = False

    def _check_sampler(self) -> None:
        """The SDE's settings (``cac-align nft``'s config replaces this: it samples with the ODE)."""
        if self.noise_schedule == "sqrt" and self.noise_level <= 0:
            raise ValueError("noise_level must be > 0: with no noise the policy has no log-probability to train")

    def _check_audio(self) -> None:
        """``audio`` and ``advantage.routing``: known words, sound trained only where the model makes it."""
        if self.audio not in AUDIO_MODES:
            raise ValueError(f"audio must be one of {AUDIO_MODES}, got {self.audio!r}")
        if self.audio == "trained" and not getattr(self.generator.family, "audio", False):
            raise ValueError(f"audio=trained: {self.generator.family.title} makes no sound; leave audio at 'frozen'")
        if self.audio == "trained" and self.parallel.context_parallel > 1:
            raise ValueError("audio=trained with parallel.context_parallel > 1 is not supported yet (the audio stream is whole on every "
                             "process of a group, and its loss is not proven equal to one process there); shard with parallel.shard=fsdp2")
        if self.advantage.routing == "routed" and self.parallel.context_parallel > 1:
            raise ValueError("advantage.routing=routed with parallel.context_parallel > 1 is not supported yet (the components are read on "
                             "each group's first process only); use context_parallel: 1")
        if self.advantage.routing == "routed" and self.audio != "trained":
            raise ValueError("advantage.routing=routed gives the audio latents the audio components' advantage: set audio=trained "
                             "(or routing=summed)")
        localize = self.advantage.localize
        if self.advantage.routing == "routed" and localize.enabled and (localize.estimator != "default" or localize.confine > 0):
            raise ValueError("advantage.routing=routed with advantage.localize takes the default estimator without confine "
                             "(a per-position advantage of several components); leave estimator and confine at their defaults")

    def __post_init__(self) -> None:

        positive = ("steps", "prompts_per_step", "group_size", "sample_batch_size", "train_batch_size", "updates_per_step", "keep_checkpoints",
                    "reward_workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: only at the last step), got {self.eval_every}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: no checkpoint), got {self.checkpoint_every}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare samples of one prompt), got {self.group_size}")
        if not 0.0 < self.timestep_fraction <= 1.0:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {self.noise_schedule!r}")
        self._check_sampler()
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
        trackers_for(self.log_with)
        localize = self.advantage.localize
        if localize.enabled and localize.estimator == "vipo" and self.clip_range_high not in (None, self.clip_range):
            raise ValueError("advantage.localize.estimator=vipo clips symmetrically (ViPO): leave clip_range_high null")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.learning_rate <= 0 or self.beta < 0 or self.adv_clip_max <= 0:
            raise ValueError("learning_rate and adv_clip_max must be > 0 and beta >= 0")
        self._check_audio()
        check_trainable(self.generator)  # weights no trainer can adapt (Cosmos 3's FP8): refused before they load
        if self.lora.target_modules is None:  # the family's: Wan's attention projections, LTX-2's video branch (+ its audio branch, trained)
            family = self.generator.family
            audio = list(family.audio_lora_target_modules) if self.audio == "trained" else []
            self.lora.target_modules = list(family.lora_target_modules) + audio
        if self.lora.rank < 1 or not self.lora.target_modules:
            raise ValueError("lora.rank must be >= 1 and lora.target_modules non-empty")
        if self.parallel.context_parallel > 1 and localize.enabled:
            raise ValueError("advantage.localize with parallel.context_parallel > 1 is not supported yet (the reward's evidence is read "
                             "on each group's first process only); use context_parallel: 1")
        if self.parallel.shard == "fsdp2" and self.mixed_precision == "fp16":
            raise ValueError("parallel.shard=fsdp2 trains in mixed_precision 'bf16' or 'no' (fp16's loss scaling is not wired to the shards)")
        if self.generator.lora is not None:
            raise ValueError("generator.lora is for generation (bon, eval); flow-grpo trains a new LoRA from the base model")
        reward_config(self.reward, "reward")
        for label, section in self.eval_rewards.items():
            if not label.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"eval_rewards: a label is a name of letters, digits, '_' or '-' (it names the metrics), got {label!r}")
            if label == "reward":
                raise ValueError("eval_rewards.reward: 'reward' names the trained reward in the run's records; give the judge another label")
            reward_config(section, f"eval_rewards.{label}")
        if self.eval_rewards and not self.eval_prompts:
            raise ValueError("eval_rewards score the evaluation videos: set eval_prompts (held-out prompts) too")
        check_guards(self)  # loss, advantage.aggregate, regularize (rewards/guards.py)


# ---------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------
def memory_inputs(config: FlowGrpoConfig) -> dict[str, Any]:
    """What the memory plan (:func:`cac_align.plan.check.plan_generator`) needs of a flow-grpo
    recipe beyond its generator, LoRA and layout: the rows of a training micro-batch (its videos x
    the forwards a guided velocity batches), the reward, every held-out judge and the gate's own judges
    (``regularize.judges``; all scored on the GPUs that train: the leaders'), and ``sample_batch_size``
    videos decoded at once."""
    family = config.generator.family
    return dict(batch_per_process=config.train_batch_size * guided_rows(family.guidance(config.generator)),
                gradient_checkpointing=config.gradient_checkpointing, ema=config.ema_decay is not None,
                rewards={"reward": config.reward, **{f"eval_rewards.{label}": section for label, section in config.eval_rewards.items()},
                         **{f"regularize.judges.{label}": section for label, section in config.regularize.judges.items()}},
                decode_batch=config.sample_batch_size, optimizer=config.optimizer)


# ---------------------------------------------------------------------------------------
# Run folder, checkpoints
# ---------------------------------------------------------------------------------------
FLOW_GRPO_OUTPUTS = ("checkpoints", "lora", "lora_best", "eval", "tensorboard", "wandb", "metrics.jsonl", "reward.png", "best.json", "run.html", "run_page")
# advantage.localize settings that came after localized credit itself, with their defaults (off)
LOCALIZE_LATER_DEFAULTS = {"confine": 0.0, "estimator": "default", "adv_clamp": 5.0}


def _run_folder(config: FlowGrpoConfig, prompts: list[str], images: list[Any] | None = None, job: str = "flow-grpo", processes: int | None = None) -> RunFolder:
    """The run folder (:class:`~cac_align.run.folder.RunFolder`), checked on every process: another
    job's folder, another config without ``overwrite`` and files of the user's where outputs go
    are refused; a run of this config needs ``resume=true`` (continue) or ``overwrite=true``."""
    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    fingerprint = run_fingerprint(config, prompts, RUN_ONLY_KEYS, images)
    advantage = fingerprint.get("advantage", {})  # settings added later, at their defaults, are out of it (run/folder.py LATER_DEFAULTS)
    if config.regularize.judged and not config.regularize.judges:  # the guards' judges are the held-out ones: no longer run-only
        fingerprint["regularize"]["judges"] = resolved["eval_rewards"]
    if not config.advantage.localize.enabled:  # the scalar estimator: a run folder of before the setting still matches
        advantage.pop("localize", None)
    else:  # settings added later, at their defaults: a localized run folder of before them still matches
        localize = advantage.get("localize", {})
        for key, default in LOCALIZE_LATER_DEFAULTS.items():
            if localize.get(key) == default:
                localize.pop(key, None)
    if not advantage:
        fingerprint.pop("advantage", None)
    folder = RunFolder(config.out_dir, job, FLOW_GRPO_OUTPUTS, fingerprint, resolved, overwrite=config.overwrite, processes=processes)
    out = folder.path
    if folder.resuming and not config.resume:
        raise RecipeError(f"out_dir={str(out)!r} already holds a {job} run; pass resume=true to continue it, overwrite=true to replace it, "
                          "or choose another out_dir")
    if config.resume and not folder.resuming:
        log.warning("resume=true but %s holds no run yet: starting from step 0", out)
    elif config.resume and not checkpoints(out):
        log.warning("resume=true but %s has no checkpoint yet: starting from step 0", out)
    return folder


# ---------------------------------------------------------------------------------------
# Pieces of the loop
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
class _Trainer:
    """State of one run: setup() builds everything, train() is the loop, cleanup() ends it."""

    job = "flow-grpo"  # the run folder's job and the logs' name (cac_align.jobs.nft's trainer: "nft")

    def __init__(self, config: FlowGrpoConfig, reward: Reward | None = None, pipe: Any = None, decode: Callable[..., np.ndarray] | None = None):
        self.config = config
        self.reward = reward
        self.pipe = pipe
        self.family = config.generator.family  # what the model is, from its own files (cac_align.gen.family)
        self.decode = decode or video_decode(config.generator, self.family)  # generator.decode: the VAE's, or the tiny Wan's preview
        self._down_steps = 0  # steps in a row whose every sample the reward's server did not answer (it was down)

    # -- setup -----------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        self.out = Path(config.out_dir)
        # the prompts and, for image-to-video, the images they animate: checked against the model now
        rows = read_prompt_rows(config.prompts)
        self.prompts, self.images = [r.prompt for r in rows], [r.image for r in rows]
        check_prompt_images(self.family, self.images, config.prompts)
        eval_rows = read_prompt_rows(config.eval_prompts, "eval_prompts") if config.eval_prompts else []
        self.eval_prompts, self.eval_images = [r.prompt for r in eval_rows], [r.image for r in eval_rows]
        check_prompt_images(self.family, self.eval_images, config.eval_prompts)
        self._check_inputs()
        # connected with parallel.timeout_s, keyed by torchrun's restart round (gen/parallel/connect.py)
        connected = connect_processes(config.parallel, cpu=config.generator.device == "cpu")
        self.accelerator = Accelerator(
            cpu=config.generator.device == "cpu",
            mixed_precision=config.mixed_precision,
            log_with=list(trackers_for(config.log_with)) or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "tensorboard")),
            kwargs_handlers=[*(ddp_kwargs_handlers(config.generator.name, config.lora) or []), *connected],
        )
        acc = self.accelerator
        # the processes' layout: data parallel x context parallel (cac_align.gen.parallel)
        self.layout: Layout = layout_for(acc, config.parallel)
        self.plan = plan_step(config, self.layout.dp, self.layout.dp_rank)
        if self.pipe is None:  # the memory plan, from the model's configs, before anything loads (cac_align/plan/)
            check_context_parallel(self.family, config.generator, config.parallel)
            inputs = memory_inputs(config)
            if self.reward is not None:  # given, not built from the section: its models are the caller's
                inputs["rewards"].pop("reward")
            check_memory(config.generator, config.lora, config.parallel, acc.num_processes, budget_gib=config.memory_budget_gib,
                         device=acc.device, main_process=acc.is_main_process, **inputs)
        run_folder = _run_folder(config, self.prompts, self.images, self.job, acc.num_processes)  # the processes: named if the layout changes
        if config.advantage.shuffle_scores and acc.is_main_process:
            log.warning("advantage.shuffle_scores=true: a no-signal control run; each group's scores are permuted among its "
                        "videos, so this LoRA learns nothing from the reward (docs/flow_grpo.md, 'A no-signal control')")
        found = checkpoints(self.out) if run_folder.resuming else []
        resume_from = found[-1] if found else None

        # 1. generator with a LoRA on its transformer (a two-expert model's: on lora.experts);
        #    text encoder, VAE and every expert without a LoRA stay frozen; then the parallel
        #    settings applied to it (sharded: loaded on the CPU, the transformers' weights read by the
        #    first process only, each process keeps its shards: gen/parallel/)
        if self.pipe is None:
            self.pipe = load_generator(self.layout, config.generator, acc.device)
        pipe = self.pipe
        denoiser = adapted_denoiser(pipe, self.family, config.lora, config.seed, config.gradient_checkpointing)
        apply_parallelism(self.layout, denoiser, self.family, pipe, acc.device)
        if acc.is_main_process and config.parallel.active:
            log.info("flow-grpo: %s", self.layout.describe())
        self.base_dtype = next(p for p in denoiser.transformer.parameters() if not p.requires_grad).dtype
        optimizer = build_optimizer(config, list(trainable(denoiser).values()))
        self.model, self.optimizer = prepare_for_training(self.layout, acc, denoiser, optimizer)
        self.unwrapped = acc.unwrap_model(self.model)
        # the sampling schedule, and the steps an adapted expert serves: the only ones whose loss has a gradient
        self.sigmas, self.timesteps = self.family.schedule(pipe, config.generator)
        self._sound_schedule()
        self.guidance = self.family.guidance(config.generator)
        self.video_chunks = chunk_count(self.family, config.generator)  # an autoregressive family's loops (Helios's chunks): K x N steps, each trained
        self.trainable_steps = [s for s in range(self.video_chunks * len(self.timesteps)) if denoiser.expert_index(self.timesteps[s % len(self.timesteps)]) in denoiser.trained_experts()]
        self.ema = {name: p.detach().float().clone() for name, p in trainable(self.unwrapped).items()} if config.ema_decay is not None else None
        if not self.layout.sharded:  # a sharded run writes its checkpoint whole itself (checkpoint())
            register_lora_checkpoint(acc, self.unwrapped, self.ema)

        # 2. the reward: built by the processes that score (each context-parallel group's leader; its
        #    other processes take the leader's scores and hold no judge), held-out judges by label
        if self.reward is None and self.layout.leader:
            self.reward = build_reward(config.reward, "reward")
        if self.reward is not None and self.family.audio and not config.audio_rewards_blind_ok:
            check_prompt_heard(self.reward)  # a text-to-sound run: its audio components must read the prompt
        if config.advantage.aggregate == "normalize_then_sum" and self.reward is not None and len(route_table(self.reward)) < 2:
            raise RecipeError(f"advantage.aggregate=normalize_then_sum normalizes each component of a combined reward; {self.reward.name!r} has "
                              "one (reward: name: combined, with two or more): use aggregate=sum_then_normalize")
        self.eval_rewards = {label: build_reward(section, f"eval_rewards.{label}") if self.layout.leader else None
                             for label, section in config.eval_rewards.items()}
        # the guards against reward hacking (rewards/guards.py): the gate's judges (its own, else the held-out ones)
        judges = {label: build_reward(section, f"regularize.judges.{label}") if self.layout.leader else None for label, section in config.regularize.judges.items()}
        self.guards = RunGuards(config.regularize, judges or self.eval_rewards, self.unwrapped, std=config.adv_std, clip=config.adv_clip_max)
        self.dppo_delta = config.dppo_delta or DEFAULT_DELTAS.get(config.loss)
        self.pool = ThreadPoolExecutor(max_workers=config.reward_workers, thread_name_prefix="reward")
        # the reward's servers that are vllm-routers in front of replicas: each step names the replicas found down
        self.fleet = FleetHealth([url for url in served_urls(config.reward) if router_workers(url) is not None] if acc.is_main_process else [])
        acc.wait_for_everyone()  # every process has checked the folder (_run_folder) before the main one takes it
        if acc.is_main_process:  # recorded once the models have loaded: a failed start leaves no record
            run_folder.start()  # with overwrite: the old run's outputs go now, and only those
        acc.wait_for_everyone()

        # 3. resume
        self.start_step = 0
        self._sources_logged = False  # the first step logged records reward/prompt_sources
        if resume_from is not None:
            state = read_checkpoint_state(resume_from)
            check_parallel_resume(state, self.layout, resume_from)  # the same processes and layout, or a message
            if self.layout.sharded:
                load_sharded_lora_checkpoint(resume_from, self.unwrapped, self.optimizer, self.ema)
            else:
                acc.load_state(str(resume_from))  # the LoRA, EMA, optimizer and every process's RNG state
            if state.get("reward_state") and self.reward is not None:  # the leaders' (their normalizers' running statistics)
                self.reward.load_state_dict(state["reward_state"])
            self.guards.load(resume_from, state)  # the gate's state, the adaptive reference's copy
            self.start_step = int(state["step"])
            log.info("%s: resuming from %s (step %d)", self.job, resume_from, self.start_step)
            if self.start_step >= config.steps and acc.is_main_process:  # nothing left to train: said, not silent
                print(f"{self.job}: the last checkpoint is at step {self.start_step}, at or past steps={config.steps}: nothing to train "
                      f"(set steps above {self.start_step} to train further); its LoRA is written as it is")
        if acc.is_main_process:
            keep_log_steps(self.out / "metrics.jsonl", self.start_step)  # later steps are redone
        self._evaluations()  # the watch, the run's view, the held-out evaluation
        start_trackers(acc, config.log_with, self.job.replace("-", "_"), self.out.name, self.out, OmegaConf.to_container(OmegaConf.structured(config), resolve=True),
                       resume_step=self.start_step)
        acc.wait_for_everyone()

    def _evaluations(self) -> None:
        """What watches and shows the held-out evaluations: the watch (:mod:`cac_align.run.watch`) over the held-out
        judges and the trained reward's parts (each process knows them: a context-parallel run, whose other processes
        hold no reward, watches none), the run's view (samples.jsonl, the trackers' videos, the best LoRA, run.html:
        eval/run_view.py), each resumed from metrics.jsonl, and the evaluation itself."""
        config = self.config
        parts = list(route_table(self.reward)) if self.reward is not None and self.layout.cp == 1 else []
        self.watched_parts = parts if config.watch.components and len(parts) > 1 else []
        self.watch = RunWatch(config.watch, list(self.eval_rewards), self.watched_parts)
        self.watch.resume(self.out / "metrics.jsonl", self.start_step)
        reward = self.reward.name if self.reward is not None else str(config.reward.get("name"))
        self.view = RunView(self.out, self.accelerator, list(self.eval_rewards), config.watch.margin, config.generator.fps, self._export,
                            trainer_card(config, self.job, reward))
        self.view.resume(self.start_step)
        seeds = [sample_seed(config.seed, -1, i) for i in range(len(self.eval_prompts))]
        self.held_out = HeldOutEvaluation(self.out, self.accelerator, self.layout, self.eval_prompts, seeds, self.reward, self.eval_rewards,
                                          self.watched_parts, self.pool, config.eval_videos, config.generator.fps, self.view)

    def _export(self, target: Path) -> None:
        """The LoRA as it is now, its EMA where kept, into ``target`` (every process: gen/lora.py ``export_lora``)."""
        export_lora(self.unwrapped, target, sharded=self.layout.sharded, main=self.accelerator.is_main_process, weights=self.ema)

    def _check_inputs(self) -> None:
        """What the model's family and the prompts' images rule out, before anything loads (one line each)."""
        config = self.config
        if config.advantage.localize.enabled and not getattr(self.family, "localized_credit", True):
            raise RecipeError(f"advantage.localize: {self.family.title}'s latent grid has no credit map here (rl/credit.py maps a judge's "
                              "window onto latent frames of 1 + k x the VAE's temporal factor); set advantage.localize.enabled=false")
        if config.parallel.context_parallel > 1 and any(self.images):
            raise RecipeError(f"parallel.context_parallel={config.parallel.context_parallel}: image-to-video runs are not split over a "
                              "context-parallel group (LTX-2's plan does not split the image frame's own timesteps, and no job run with "
                              "images is proven equal to one process under it); shard with parallel.shard=fsdp2 and context_parallel=1")

    def _sound_schedule(self) -> None:
        """Whether the sound is trained (``audio: trained``) and the noise levels its latents step down:
        the family's own (MiniMax-H3's audio shift), else the video's."""
        self.train_audio = self.config.audio == "trained"
        family = self.family
        self.side_sigmas = family.side_sigmas(self.pipe, self.config.generator, self.sigmas) if hasattr(family, "side_sigmas") else self.sigmas

    # -- the loop ----------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, acc = self.config, self.accelerator
        last: dict[str, Any] = {}
        if self.eval_prompts and config.eval_at_start and self.start_step == 0 and not self.view.has_step_0:
            self.evaluate_start()  # step 0: the model the run starts from (a resumed run has it already)
        progress = tqdm(total=config.steps, initial=self.start_step, desc=self.job, disable=not acc.is_main_process)
        self.done = self.start_step  # the steps trained so far (the last LoRA's step)
        for step in range(self.start_step, config.steps):
            last = self.train_step(step)
            done = self.done = step + 1
            last.update(self.fleet.metrics(done))  # the judge's replicas found down (docs/flow_grpo.md, "When something fails")
            stop = evaluated = False
            if self.eval_prompts and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                last.update(self.evaluate(done))
                stop, evaluated = self._watch(last, done), True  # the trained reward against the held-out judges
            log_metrics(acc, self.out, done, last, trackers=config.log_with != "none")
            if evaluated:
                self.view.evaluated(done, last)  # the best step so far (its LoRA kept), the trackers' videos, run.html
            if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps or stop):
                self.checkpoint(done)  # checkpoint_every=0: none, not even the last (docs/flow_grpo.md)
            progress.update(1)
            progress.set_postfix(reward=f"{last.get('reward/mean', math.nan):.4f}")
            if stop:
                kept = "its checkpoint and LoRA are kept" if config.checkpoint_every else "its LoRA is kept (checkpoint_every=0: no checkpoint)"
                log.error("flow-grpo: stopped at step %d by the reward-hacking watch (watch.stop); %s", done, kept)
                break
        progress.close()
        return last

    def evaluate_start(self) -> None:
        """Step 0: the held-out evaluation of the model the run starts from, logged as step 0 (``eval/`` and
        ``watch/`` only). The rewards' state (a running normalizer's statistics) is put back as it was, so the
        training that follows is the run's without it, number for number."""
        rewards = [r for r in (self.reward, *self.eval_rewards.values()) if r is not None]
        states = [reward.state_dict() for reward in rewards]
        metrics = self.evaluate(0)
        for reward, state in zip(rewards, states):
            if state:
                reward.load_state_dict(state)
        self._watch(metrics, 0)
        log_metrics(self.accelerator, self.out, 0, metrics, trackers=self.config.log_with != "none")
        self.view.evaluated(0, metrics)

    def _watch(self, metrics: dict[str, Any], step: int) -> bool:
        """Add step ``step``'s evaluation to the watch (:class:`~cac_align.run.watch.RunWatch`); log its alarms and say
        whether the run should stop."""
        alarms = self.watch.add(metrics, step)
        if alarms and self.reward is not None:  # said by the processes that scored (a non-leader builds no reward)
            for alarm in alarms:
                log.warning("flow-grpo: %s", alarm.message(self.reward.name))
        return bool(alarms) and self.config.watch.stop

    def train_step(self, step: int) -> dict[str, Any]:
        config, acc, plan, layout = self.config, self.accelerator, self.plan, self.layout
        G = config.group_size
        device = acc.device
        metrics: dict[str, Any] = {}

        # 1. the step's prompts; this process's share of their G copies
        prompt_ids = step_indices(len(self.prompts), config.prompts_per_step, step, config.seed)
        local = list(plan.local_range)
        groups = [k // G for k in local]  # position of the sample's prompt in this step
        texts = [self.prompts[prompt_ids[g]] for g in groups]
        images = [self.images[prompt_ids[g]] for g in groups]

        # 2. sample with log-probs, batch by batch; each batch goes to the reward pool at once
        start = time.perf_counter()
        embeds, negative = self._encode(texts, images)
        trajectories, futures, judged = [], [], []
        for lo in range(0, len(local), config.sample_batch_size):
            hi = min(lo + config.sample_batch_size, len(local))
            trajectory, videos = self._sample(
                embeds[lo:hi], None if negative is None else negative[lo:hi], [sample_seed(config.seed, step, k) for k in local[lo:hi]], config.noise_level
            )
            trajectories.append(trajectory)
            if layout.leader:  # a context-parallel group's videos are decoded and scored once, by its first process
                # a reward that hears (modality audio or both) gets what the generator made with the frames
                sound = self._soundtracks(trajectory) if self.reward.modality != "video" else None
                futures.append((hi - lo, self.pool.submit(score_batch, self.reward, videos, texts[lo:hi], groups[lo:hi], config.generator.fps, sound)))
                if self.guards.judges:  # regularize.gate: its judges score the training samples too
                    judged.append((hi - lo, self.guards.score(self.pool, videos, texts[lo:hi], groups[lo:hi], config.generator.fps, sound)))
        sample_seconds = time.perf_counter() - start

        # 3. collect the rewards (waiting only for what sampling did not hide) and gather them
        #    (each context-parallel group's once: its leader's)
        start = time.perf_counter()
        outputs, reward_compute = collect_outputs(self.reward, futures)
        reward_wait = time.perf_counter() - start
        local_scores = np.concatenate([o.scores for o in outputs]) if layout.leader else np.full(len(local), np.nan)
        scores = gather_numbers(layout, acc, local_scores)
        # which samples the reward's server did not answer because it was down (every process gathers, whatever it scored)
        local_down = [d.get("error_kind") == ErrorKind.DOWN for o in outputs for d in o.details] if layout.leader else [False] * len(local)
        down = gather_numbers(layout, acc, np.asarray(local_down, dtype=np.float64)) > 0
        if layout.leader:  # per-component numbers: only the leaders scored; one gather per key the reward declares
            for key, values in reward_columns(self.reward, outputs).items():
                mean, std = nan_mean_std(gather_from_leaders(layout, acc, values))
                metrics[f"{key}_mean"], metrics[f"{key}_std"] = mean, std
        metrics["reward/mean"], metrics["reward/std"] = nan_mean_std(scores)
        metrics["reward/valid_fraction"] = float(np.isfinite(scores).mean())
        sources = {k: v for o in outputs for k, v in o.info.get("prompt_sources", {}).items()}
        if sources and not self._sources_logged:  # once per process run: which question UR was asked
            metrics["reward/prompt_sources"] = sources
            self._sources_logged = True
        if down.any():
            metrics["reward/down_fraction"] = float(down.mean())
        self._down_steps = check_step_scored(step, scores, down, outputs, self._down_steps)  # every sample failed: stop, or a server down

        # 4. per-prompt advantages over the whole step; drop invalid and zero-variance samples
        step_groups = [k // G for k in range(plan.total_samples)]
        if config.advantage.shuffle_scores:  # the no-signal control: the same scores, each group's permuted
            scores = shuffle_within_groups(scores, step_groups, np.random.default_rng([config.seed, step, 0x5C0E]))
        gather = lambda v: gather_numbers(layout, acc, v)  # noqa: E731  (every process's, each context-parallel group's once)
        # GDPO's per component (advantage.aggregate), GARDO's diversity; then regularize.gate: the KL where the judges disagree
        adv = step_advantages(config, self.reward, outputs, scores, step_groups, trajectories, gather)
        kl_weights = self.guards.kl_weights(judged, scores, adv, step_groups, local, gather, metrics, device)  # (hold: worst_case: adv)
        metrics["zero_std_fraction"] = adv.zero_std_fraction
        metrics["trained_fraction"] = float(adv.trainable.mean())
        advantages = torch.as_tensor(adv.advantages[local], device=device)
        weights = torch.as_tensor(adv.trainable[local], dtype=torch.float32, device=device)
        credit = hold = None
        audio: dict[str, Any] = {}  # the sound's advantages (and credit), where it is trained
        trains = adv.trainable.any()
        if self.train_audio:  # summed: the sound takes the video's advantage
            audio["advantages"] = advantages
            metrics["advantage/video_abs_mean"] = metrics["advantage/audio_abs_mean"] = float(np.abs(adv.advantages).mean())
        if config.advantage.routing == "routed":  # 4c. each component's advantage to the latents of what it judges (rl/routing.py)
            streams, components, trainable = routed_step(self.reward, outputs, scores, step_groups, gather, config.adv_std, config.adv_clip_max)
            trains = trainable.any()
            weights = torch.as_tensor(trainable[local], dtype=torch.float32, device=device)
            advantages, audio["advantages"] = (torch.as_tensor(streams[k][local], device=device) for k in ("video", "audio"))
            for stream in ("video", "audio"):
                metrics[f"advantage/{stream}_abs_mean"] = float(np.abs(streams[stream]).mean())
            if config.advantage.localize.enabled:  # per-position advantages: each component's maps x its advantage
                audio_frames = self.family.side_frames(trajectories[0].side[:1, -1]).shape[1]
                video_map, audio_map = routed_credit_maps(self.reward, outputs, {k: v[local] for k, v in components.items()}, config.advantage.localize,
                                                          self.family.latent_grid(self.pipe), config.generator, audio_frames,
                                                          lambda v: gather_floats(acc, v), metrics)
                credit, audio["credit"] = torch.as_tensor(video_map, device=device), torch.as_tensor(audio_map, device=device)
                advantages = audio["advantages"] = torch.ones_like(advantages)
        if config.advantage.localize.enabled:  # 4b. each sample's evidence as a map over its latent positions
            if credit is None:
                maps, held = step_credit(outputs, adv.advantages[local], config.advantage.localize, self.family.latent_grid(self.pipe),
                                         config.generator, lambda v: gather_floats(acc, v), metrics)
                credit, hold = torch.as_tensor(maps, device=device), None if held is None else torch.as_tensor(held, device=device)
            fixed = fixed_frames(embeds)  # the maps cover the generated latents only: not the frames an image fixes
            credit, hold = credit[:, fixed:], (None if hold is None else hold[:, fixed:])

        # 5. train: one AdamW update over micro-batches x trained timesteps (an adaptive reference first reset where due)
        start = time.perf_counter()
        self.guards.reset_reference(step, metrics)  # regularize.reference=adaptive, where due
        if trains:
            metrics.update(self._update(step, trajectories, embeds, negative, advantages, weights, credit, hold, audio=audio, kl_weights=kl_weights))
            self.guards.gate.last_kl = metrics.get("train/kl")
        elif not self._down_steps:  # (a step the server missed whole said so above)
            log.warning("step %d: every group has zero reward variance; no update", step + 1)
        train_seconds = time.perf_counter() - start

        metrics.update({"time/sample_s": sample_seconds, "time/reward_wait_s": reward_wait, "time/reward_compute_s": reward_compute,
                        "time/train_s": train_seconds})
        return metrics

    def _video_velocity(self, model: Any, x: torch.Tensor, t: Any, emb: Any, neg: Any, side: Any) -> torch.Tensor:
        """The video's guided velocity at ``x`` (a side stream's, computed beside it, dropped)."""
        with self.accelerator.autocast():
            velocity = predict_velocity(model, x, t, emb, neg, self.guidance, self.base_dtype, side)
        return velocity if side is None else velocity[0]

    def _encode(self, texts: list[str], images: list[Any]) -> tuple[Any, Any]:
        """The conditioning of each (prompt, image) row, each distinct one encoded once."""
        keys = list(zip(texts, images))
        unique = list(dict.fromkeys(keys))
        with encoders_on(self.layout, self.pipe, self.family):  # sharded: the text (and image) encoders come for the encoding only
            embeds, negative = encode_conditioning(self.pipe, self.family, [t for t, _ in unique], [i for _, i in unique], self.config.generator,
                                                   self.guidance)
        index = [unique.index(k) for k in keys]
        return embeds[index], (negative[index] if negative is not None else None)

    def _sample(self, embeds: torch.Tensor, negative: torch.Tensor | None, seeds: list[int], noise_level: float) -> tuple[Any, np.ndarray]:
        device = self.accelerator.device
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        with self.accelerator.autocast():
            trajectory = sample_with_log_probs(
                self.pipe,
                self.unwrapped,
                embeds,
                negative,
                generators,
                config=self.config.generator,
                sigmas=self.sigmas,
                timesteps=self.timesteps,
                noise_level=noise_level,
                noise_schedule=self.config.noise_schedule,
                store_device="cpu" if self.config.store_latents_on_cpu else None,
                positions=self.config.advantage.localize.enabled and noise_level > 0,
                train_side=self.train_audio,
            )
        # the group's leader decodes the whole video: an image's fixed frames in front of the generated ones; the
        # seeds name each video's draw where decoding samples (the family's decode)
        videos = self.decode(self.pipe, whole_latents(embeds, trajectory.final), seeds=seeds) if self.layout.leader else None
        return trajectory, videos

    def _soundtracks(self, trajectory: Any) -> tuple[np.ndarray, int] | None:
        """The batch's decoded soundtracks and their rate (the family's ``decode_audio`` of the final
        side latents), None for a video-only model."""
        if trajectory.side is None:
            return None
        return self.family.decode_audio(self.pipe, trajectory.side[:, -1])

    def _optimizer_step(self, acc: Any, grad_norms: list[float]) -> None:
        """One AdamW update from the accumulated gradients: clipped at ``max_grad_norm`` (its norm
        appended to ``grad_norms``), then the evaluation EMA (``ema_decay``) moved. Flow-GRPO's and
        nft's updates both end so."""
        config = self.config
        if config.max_grad_norm > 0:
            grad_norms.append(clip_grad_norm_(self.layout, acc, self.model, config.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for name, p in trainable(self.unwrapped).items():
                    self.ema[name].mul_(config.ema_decay).add_(p.detach().float(), alpha=1 - config.ema_decay)

    def _update(self, step: int, trajectories: list[Any], embeds: Any, negative: Any, advantages: torch.Tensor,
                weights: torch.Tensor, credit: torch.Tensor | None = None, hold: torch.Tensor | None = None,
                audio: dict[str, Any] | None = None, kl_weights: torch.Tensor | None = None) -> dict[str, float]:
        """Flow-GRPO's update (step 5 of the module docstring). ``audio`` (``audio: trained``): the sound's
        ``advantages`` ``(B,)`` and, routed and localized, its per-frame ``credit`` ``(B, T_a)``: its own
        PPO-clip loss (and KL) on the side latents' SDE steps, added to the video's. ``kl_weights``: the gate's
        per-sample KL weights (``regularize.gate``). DPPO (``loss``): each step's divergence from the policy that
        sampled, whose mean the first chunk's policy is and later chunks recompute from the LoRA of the step's start."""
        config, acc = self.config, self.accelerator
        device = acc.device
        sound = None
        if audio:  # the sound's own PPO-clip loss on its recorded SDE steps (audio: trained; docs/audio.md)
            sound = SideStreamLoss(torch.cat([tr.side for tr in trajectories]), torch.cat([tr.side_log_probs for tr in trajectories]),
                                   audio["advantages"], SDESchedule(self.side_sigmas.to(device), config.noise_level, config.noise_schedule),
                                   config.beta, device, credit=audio.get("credit"), frames_of=self.family.side_frames,
                                   old_maps=torch.cat([tr.side_log_prob_maps for tr in trajectories]) if audio.get("credit") is not None else None)
        latents = torch.cat([t.latents for t in trajectories])
        old_log_probs = torch.cat([t.log_probs for t in trajectories])
        old_maps = torch.cat([t.log_prob_maps for t in trajectories]) if credit is not None else None
        # what steps with the video on the deterministic path (LTX-2's audio): the transformer's other input
        sides = torch.cat([t.side for t in trajectories]) if trajectories[0].side is not None else None
        timesteps = self.timesteps.to(device)
        transitions = sde_transitions(self.family, self.sigmas.to(device), config.noise_level, config.noise_schedule)
        steps_trained = [self.trainable_steps[k] for k in trained_timesteps(len(self.trainable_steps), config.timestep_fraction, step, config.seed)]
        micro = [(lo, min(lo + config.train_batch_size, len(latents))) for lo in range(0, len(latents), config.train_batch_size)]
        # updates_per_step contiguous chunks of micro-batches, one AdamW update each; after the
        # first, the policy is slightly off the rollout policy and the PPO clip starts to act
        chunks = [list(part) for part in np.array_split(np.arange(len(micro)), config.updates_per_step)]
        clip = (config.clip_range, config.clip_range if config.clip_range_high is None else config.clip_range_high)
        sampler = {n: p.detach().clone() for n, p in trainable(self.unwrapped).items()} if config.loss != "ppo_clip" and len(chunks) > 1 else None
        sums: dict[str, float] = {}
        grad_norms: list[float] = []
        count = 0
        self.model.train()
        for c, chunk in enumerate(chunks):
            # which expert each of the update's backwards runs: its gradients reduce once, at its last (gen/parallel/gradients.py)
            backwards, runs = 0, [{self.unwrapped.expert_index(timesteps[s % len(timesteps)])} for _ in chunk for s in steps_trained]
            chunk_total = len(runs)
            for index in chunk:
                lo, hi = micro[index]
                neg = negative[lo:hi] if negative is not None else None
                for s in steps_trained:  # step s = k N + j: chunk k's step j, from state s + k (the Trajectory's layout; k = 0 but Helios's)
                    k, j = divmod(s, len(timesteps))
                    count += 1
                    backwards += 1
                    emb = step_conditioning(self.family, embeds[lo:hi], latents[lo:hi], k, self.video_chunks)  # + the chunk's history (Helios), detached
                    x, x_next = latents[lo:hi, s + k].to(device), latents[lo:hi, s + k + 1].to(device)
                    side = sides[lo:hi, s + k].to(device) if sides is not None else None
                    with gradient_sync(self.layout, acc, self.model, backwards - 1, runs):
                        # the forwards without gradient first: an adaptive reference and DPPO's sampler swap the LoRA's weights in place
                        ref_mean = ref_side_velocity = old_mean = None
                        if config.loss != "ppo_clip" and c > 0:  # DPPO: the sampling policy's step mean (the first chunk's policy is it)
                            old_mean = sampled_mean(self.unwrapped, sampler, lambda m: transitions.step(j, x, self._video_velocity(m, x, timesteps[j], emb, neg, side),
                                                                                                      prev_sample=x_next))
                        if config.beta > 0 or hold is not None:
                            with torch.no_grad(), self.guards.reference_policy(), acc.autocast():
                                ref_velocity = predict_velocity(self.unwrapped, x, timesteps[j], emb, neg, self.guidance, self.base_dtype, side)
                            ref_velocity, ref_side_velocity = ref_velocity if side is not None else (ref_velocity, None)
                            ref_mean = transitions.step(j, x, ref_velocity, prev_sample=x_next).mean
                        with acc.autocast():
                            velocity = predict_velocity(self.model, x, timesteps[j], emb, neg, self.guidance, self.base_dtype, side)
                        velocity, side_velocity = velocity if side is not None else (velocity, None)
                        policy = transitions.step(j, x, velocity, prev_sample=x_next, positions=credit is not None)
                        localized = {} if credit is None else position_terms(
                            config.advantage.localize, policy.log_prob_map, old_maps[lo:hi, s].to(device), chunk_credit(credit[lo:hi], k, self.video_chunks),
                            None if hold is None else chunk_credit(hold[lo:hi], k, self.video_chunks), x.shape[1])
                        old_mean = policy.mean.detach() if config.loss != "ppo_clip" and c == 0 else old_mean
                        loss, parts = flow_grpo_loss(
                            policy.log_prob,
                            old_log_probs[lo:hi, s].to(device),
                            advantages[lo:hi],
                            clip_range=clip,
                            mean=policy.mean,
                            ref_mean=ref_mean,
                            std=policy.std,
                            beta=config.beta,
                            weights=weights[lo:hi],
                            trust_region=config.loss, delta=self.dppo_delta, old_mean=old_mean,
                            kl_weights=None if kl_weights is None else kl_weights[lo:hi],
                            **localized,
                        )
                        if sound is not None:  # the sound's own loss on its SDE step (audio: trained)
                            audio_loss, audio_parts = sound.loss(lo, hi, j, side_velocity, ref_side_velocity, weights[lo:hi], clip)
                            loss = loss + audio_loss
                            parts.update({f"audio_{key}": value for key, value in audio_parts.items()})
                        scaled_backward(self.layout, acc, loss / chunk_total)  # x context_parallel (gen/parallel/gradients.py)
                    for key, value in parts.items():
                        if key not in ("kl", "audio_kl") or config.beta > 0:  # with beta = 0 no KL is computed
                            sums[key] = sums.get(key, 0.0) + float(value)
                    sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            self._optimizer_step(acc, grad_norms)
        self.model.eval()
        out = {f"train/{k}": v for k, v in world_means(sums, count).items()}  # the world's mean, not this process's
        if grad_norms:
            out["train/grad_norm"] = float(np.mean(grad_norms))
        out["train/timesteps"] = len(steps_trained)
        return out

    def evaluate(self, done: int) -> dict[str, float]:
        """The held-out evaluation at step ``done`` (:class:`~cac_align.eval.run_view.HeldOutEvaluation`: scores, saved
        videos, ``samples.jsonl``, the ``eval/`` means) of the held-out prompts as :meth:`_held_out_videos` samples them."""
        return self.held_out.evaluate(done, self._held_out_videos)

    def _held_out_videos(self, indices: list[int]) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
        """The held-out prompts ``indices`` sampled with the ODE (noise 0) from their fixed seeds, with the LoRA (its EMA
        where kept), decoded: ``(videos, soundtracks, rate)`` on a group's leader (which decodes), Nones elsewhere."""
        config = self.config
        texts, images = [self.eval_prompts[i] for i in indices], [self.eval_images[i] for i in indices]
        videos_all, sounds = [], []
        with swapped_lora(self.unwrapped, self.ema):
            for lo in range(0, len(indices), config.sample_batch_size):
                hi = min(lo + config.sample_batch_size, len(indices))
                embeds, negative = self._encode(texts[lo:hi], images[lo:hi])
                trajectory, videos = self._sample(embeds, negative, [sample_seed(config.seed, -1, i) for i in indices[lo:hi]], 0.0)
                videos_all.append(videos)
                if trajectory.side is not None and self.layout.leader:  # their soundtracks (LTX-2, MiniMax-H3): heard and saved
                    sounds.append(self._soundtracks(trajectory))
        if not self.layout.leader:
            return None, None, None
        audio, rate = (np.concatenate([w for w, _ in sounds]), sounds[0][1]) if sounds else (None, None)
        return np.concatenate(videos_all), audio, rate

    def checkpoint(self, done: int) -> None:
        acc = self.accelerator
        # null for a stateless reward; the main process (a leader: it built the reward) writes state.json
        reward_state = (self.reward.state_dict() or None) if self.reward is not None else None
        state = {"reward_state": reward_state, **layout_state(self.layout), **self.guards.state()}  # the guards': a resumed run is the same run
        folder = save_checkpoint(acc, self.out, done, self._write_checkpoint, state, self.config.keep_checkpoints)
        self.view.write_card(folder / "lora", done, note="A checkpoint's LoRA (`resume=true` continues the run from it).", samples=False)
        log.info("%s: checkpoint %s", self.job, folder)

    def _write_checkpoint(self, tmp: Path) -> None:
        """A checkpoint's files into ``tmp``, on every process (save_checkpoint)."""
        if self.layout.sharded:  # the files whole, as one process writes them (gen/lora.py)
            save_sharded_lora_checkpoint(tmp, self.unwrapped, self.optimizer, self.ema, self.accelerator.is_main_process)
        else:
            self.accelerator.save_state(str(tmp))
        self.guards.save(tmp, self.accelerator.is_main_process)  # an adaptive reference's copy

    # -- cleanup -----------------------------------------------------------------------
    def cleanup(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        target = self.out / "lora"
        self._export(target)
        if acc.is_main_process:
            # the end of the run: the best evaluated LoRA kept (run/best.py's rule) and every LoRA folder's model card;
            # rewards first and last, the held-out figures, where everything is (cac_align/run/summary.py, from
            # metrics.jsonl), the reward per step as reward.png, the run page, then the result line
            from cac_align.run.summary import reward_plot, summary_lines

            self.view.write_card(target, self.done, note="The run's last LoRA" + (" (the EMA of its weights)." if self.ema is not None else "."))
            best = self.view.keep_best()
            if best is not None:
                self.view.write_card(best, self.view.best.step, note=f"The run's best evaluated step, {self.view.best.step}: {self.view.best.rule}.")
            reward_plot(self.out, self.job)
            self.view.write_page()
            for line in summary_lines(self.out, self.job):
                print(line)
            if self.eval_prompts:
                print(self.view.best.line(self.job))
            print(f"{self.job}: the run page: {self.out / 'run.html'} (each held-out prompt at every evaluation; docs/flow_grpo.md, 'The run page')")
            print(f"{self.job}: done; LoRA in {target} (generator.lora={target} samples with it)")
        self.pool.shutdown(wait=True)
        end_trackers(acc)


def run(config: FlowGrpoConfig, reward: Reward | None = None, pipe: Any = None, decode: Callable[..., np.ndarray] | None = None) -> dict[str, Any]:
    """Train (module docstring).

    Args:
        config: the run's config.
        reward, pipe: replace the reward and the pipeline the config names (tests, notebooks).
        decode: ``decode(pipe, latents, seeds=...) -> uint8 (B, F, H, W, 3)`` in place of the VAE
            decode (the family's ``decode``; ``seeds``: the videos' noise seeds); the toy benchmark
            uses a latent preview.

    Returns:
        The last step's logged numbers.
    """
    trainer = _Trainer(config, reward=reward, pipe=pipe, decode=decode)
    try:
        with named_timeout(config.parallel):  # a stuck collective: one line naming parallel.timeout_s
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
