"""The ``train-cac`` recipe's configuration: what each of CaC's three stages reads.

Kept apart from the trainers (:mod:`cac_align.jobs.train_cac` for stages 1-2,
:mod:`cac_align.jobs.train_cac_grpo` for stage 3) so that either can import it without importing
the other, and so a recipe is checked without loading a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from omegaconf import MISSING

from cac_align.cac.train.data import DataConfig
from cac_align.cac.train.rewards import PAPER_WEIGHTS
from cac_align.cac.train.stream import StreamConfig
from cac_align.run.metrics import LOG_WITH, trackers_for
from cac_align.vlm.backend import MAX_NEW_TOKENS

__all__ = ["SAMPLERS", "GrpoSettings", "LoraSettings", "RUN_ONLY_KEYS", "TrainCaCConfig", "TrainSettings"]


SAMPLERS = ("hf", "simulated")


@dataclass
class GrpoSettings:
    """Stage-3 settings (the ``grpo:`` section of a train-cac recipe; ignored by stages 1–2).

    Videos per optimizer step: ``videos_per_step`` when set (the global intent: the code gives
    each of N processes ``videos_per_step / N`` videos, G rollouts each, in micro-batches of
    ``train.per_device_batch_size``; ``train.gradient_accumulation_steps`` is not used), else
    ``train.per_device_batch_size`` x processes x ``train.gradient_accumulation_steps`` rollouts
    (paper: 64 = 2 x 1 x 32), i.e. that number / G videos.

    Attributes:
        group_size: G, rollouts per video (CaC: 8).
        iterations: optimizer updates per batch of rollouts (μ; 1 = on-policy).
        clip_epsilon: PPO clip range ε of the ratio.
        beta: weight of the k3 KL to the reference (0 = no reference model is loaded).
        temperature: sampling temperature; log-probs use the same softmax(logits / T).
        max_new_tokens_turn1, max_new_tokens_turn2: generation budget per turn.
        reward_weights: (format, status, type, temporal, spatial), CaC Eq. 6: (1, 2, 2, 2, 5).
        advantage_eps: added to the group's reward std (Eq. 8).
        sampler: "hf" (the policy samples) or "simulated" (offline stand-in, module doc).
        generation_batch_size: rollouts per ``generate`` call.
        cache: the ``hf`` sampler's KV cache: "dynamic" (transformers' default; the default here
            until stage 3's static rollouts are measured on a GPU), "static" (preallocated,
            decode step compiled on CUDA, batches in shape buckets;
            :class:`~cac_align.vlm.hf.HFBackend` explains) or "auto" (static on CUDA from the
            first call that fills ``generation_batch_size``, dynamic on a CPU).
        batch_buckets, length_multiple: the static cache's shape buckets (batch sizes padded up
            to, capped at ``generation_batch_size``; prompt and cache length granularity).
        simulated_noise: how damaged the simulated policy's answers are (0 = ground truth).
        save_rollouts: write every rollout to ``rollouts.jsonl``.
        videos_per_step: videos per optimizer step over all processes (CaC: 8 videos x G 8 = 64
            rollouts); None: derived from the batch settings as above.
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"sampler": SAMPLERS, "cache": ("auto", "dynamic", "static")}

    group_size: int = 8
    iterations: int = 1
    clip_epsilon: float = 0.2
    beta: float = 0.04
    temperature: float = 1.0
    max_new_tokens_turn1: int = MAX_NEW_TOKENS  # the budget scoring gives the same answers
    max_new_tokens_turn2: int = MAX_NEW_TOKENS
    reward_weights: list[float] = field(default_factory=lambda: list(PAPER_WEIGHTS))
    advantage_eps: float = 1e-4
    sampler: str = "hf"
    generation_batch_size: int = 8
    cache: str = "dynamic"
    batch_buckets: list[int] | None = None
    length_multiple: int = 256
    simulated_noise: float = 0.5
    save_rollouts: bool = True
    videos_per_step: int | None = None

    def __post_init__(self) -> None:
        if self.videos_per_step is not None and self.videos_per_step < 1:
            raise ValueError(f"grpo.videos_per_step must be >= 1 (or null), got {self.videos_per_step}")
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (advantages compare rollouts of a video), got {self.group_size}")
        if self.iterations < 1:
            raise ValueError(f"grpo.iterations must be >= 1, got {self.iterations}")
        if not 0 < self.clip_epsilon < 1:
            raise ValueError(f"grpo.clip_epsilon must be in (0, 1), got {self.clip_epsilon}")
        if self.beta < 0:
            raise ValueError(f"grpo.beta must be >= 0, got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"grpo.temperature must be > 0 (GRPO samples), got {self.temperature}")
        if self.max_new_tokens_turn1 < 1 or self.max_new_tokens_turn2 < 1 or self.generation_batch_size < 1:
            raise ValueError("grpo.max_new_tokens_turn1/2 and grpo.generation_batch_size must be >= 1")
        if len(self.reward_weights) != 5:
            raise ValueError(f"grpo.reward_weights are (format, status, type, temporal, spatial), got {list(self.reward_weights)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"grpo.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.cache not in ("auto", "dynamic", "static"):
            raise ValueError(f"grpo.cache must be 'auto', 'dynamic' or 'static', got {self.cache!r}")
        if self.length_multiple < 1 or (self.batch_buckets is not None and min(self.batch_buckets, default=0) < 1):
            raise ValueError("grpo.length_multiple and every grpo.batch_buckets size must be >= 1")
        if self.simulated_noise < 0:
            raise ValueError(f"grpo.simulated_noise must be >= 0, got {self.simulated_noise}")


@dataclass
class LoraSettings:
    """LoRA of stage 1 (and of stage 3 with ``finetune: lora``).

    Attributes:
        r: its rank (CaC §4: 32).
        alpha: its scale's numerator (scale = alpha / r).
        dropout: peft's LoRA dropout.
        target_modules: the layers adapted; ``all-linear`` covers the vision encoder, merger and LLM
            (every linear layer but the output head).
    """

    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: Any = "all-linear"


@dataclass
class TrainSettings:
    """Optimizer and loop settings, passed to transformers' ``TrainingArguments``.

    Attributes:
        learning_rate: 1e-4 in both stages (CaC implementation details).
        num_epochs, max_steps: training length (``max_steps > 0`` wins).
        per_device_batch_size, gradient_accumulation_steps: effective batch =
            per_device_batch_size x processes x gradient_accumulation_steps.
        warmup_ratio: the share of the steps the learning rate warms up over.
        lr_scheduler: transformers' schedule name ("cosine", "linear", "constant", ...).
        weight_decay: AdamW's weight decay.
        max_grad_norm: gradient clipping.
        save_total_limit: checkpoints kept (null: all).
        seed: the run's seed (data order, LoRA init, sampling).
        bf16: bf16 autocast (needs a GPU with bf16 or a recent CPU).
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        eval_steps, save_steps, logging_steps: in optimizer steps; eval_steps 0 = no eval. A
            checkpoint is saved every ``save_steps`` and at the last step, which a finished run's
            ``resume=true`` recognises; save_steps 0 = no checkpoint at all (``final/`` is still
            written, but a killed run starts again from step 0).
        detection_eval_samples: held-out samples for the detection metrics (0 = skip).
        detection_max_new_tokens: generation budget of the detection metrics' answers.
        num_workers: dataloader worker processes (decoding and encoding happen there).
        status_loss_weight: ours, stages 1-2 (1 = the plain token-mean loss, the paper's): the
            cross-entropy of the tokens that spell a ``"status"`` value counts this many times.
            The status is a token or two of a ~60-token answer whose other tokens (format,
            boxes, times) dominate the loss; a model trained from scratch learns the format
            long before the verdict. The loss stays normalized by the number of answer tokens.
        attention_loss_weight: ours, stage 2 only (0 = off, the paper's): adds this weight x
            ``-log`` of the attention mass that the last language-model layer (mean over heads)
            puts, from the position that predicts an abnormal turn-1 answer's status, on the
            video tokens of the frames its "Attributed Time Region" names
            (:func:`~cac_align.jobs.train_cac.window_attention_loss`). A small model trained from
            scratch keeps a sparse anomaly at the video tokens without routing it to where it
            answers (docs/cac_training.md, items 9-10). Needs eager attention in the language
            model (switched on for the run; memory ~ length^2 per layer).
        log_with: the trackers besides ``metrics.jsonl``: "tensorboard", "wandb" (Weights &
            Biases, an optional extra), "both" or "none" (:func:`cac_align.run.metrics.trackers_for`).
    """

    learning_rate: float = 1e-4
    num_epochs: float = 1.0
    max_steps: int = -1
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = True
    gradient_checkpointing: bool = True
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 100
    save_total_limit: int | None = 2
    seed: int = 42
    num_workers: int = 2
    detection_eval_samples: int = 64
    detection_max_new_tokens: int = 384
    status_loss_weight: float = 1.0
    attention_loss_weight: float = 0.0
    log_with: str = "tensorboard"


@dataclass
class TrainCaCConfig:
    """Config of `cac-align train-cac` (all three stages).

    Attributes:
        stage: 1 (single-frame LoRA warmup), 2 (multi-frame full fine-tuning) or 3 (two-turn
            GRPO, :mod:`cac_align.jobs.train_cac_grpo`).
        annotations: annotation JSONL (ideally with reasoning from `cac-align synth-cot`;
            records without it get the template reasoning). Set this or ``stream``.
        stream: train on synthetic videos rendered on the fly instead of a file
            (:class:`~cac_align.cac.train.stream.StreamConfig`): every sample a new video.
        out_dir: the run folder.
        model: base weights: a hub id ("Qwen/Qwen3-VL-8B-Instruct") for stage 1, stage 1's
            ``<out_dir>/final`` for stage 2, stage 2's for stage 3 (also the frozen KL reference);
            "tiny-random:qwen3_vl" for offline runs; "tiny-random:qwen3_vl_small" for a ~10M
            Qwen3-VL with random weights to train from scratch (the ``cac-demo`` model).
        dtype, attn_implementation, trust_remote_code: how the model loads.
        finetune: "lora" or "full"; unset, the stage's own: stage 1 "lora" (the paper's), stage 2
            "full" (always: the paper's full fine-tuning), stage 3 "full" (the paper's). Stage 1
            with "full" is for a model trained from scratch, where a low-rank update of random
            weights would learn little. Stage 3 with "lora" is ours, for 80 GB GPUs: the full
            policy trains in float32 (weights, gradients, AdamW: 16 bytes a parameter, 140 GB
            at 8B) beside a bf16 reference, more than any one GPU holds and not sharded in
            stage 3; with "lora" the stage-2 weights stay frozen in ``dtype``, serve as the KL
            reference with the adapters switched off, and only the adapters (``lora``) train.
        freeze_vision: ours, off by default: keep the vision tower (patch embedding, blocks,
            merger) as the model arrives and train the rest. For a model trained from scratch,
            stage 1 teaches the tower what anomalies look like on frames; letting stage 2's sparse
            video signal rewrite it loses that (the cac-demo finding, docs/cac_training.md).
        data, lora, train, grpo: see :class:`DataConfig`, :class:`LoraSettings`,
            :class:`TrainSettings` and :class:`~cac_align.jobs.train_cac_grpo.GrpoSettings` (stage 3;
            there ``train.per_device_batch_size`` counts rollouts).
        resume: continue from the newest checkpoint in ``out_dir`` (the config must match).
        overwrite: start again in a folder holding another run.
        memory_budget_gib: the memory per GPU the stage's plan is checked against before anything loads (null: the
            GPU's own; docs/memory_plan.md, "The judge's training stages").
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"finetune": ("lora", "full"), "log_with": tuple(LOG_WITH)}

    stage: int = MISSING
    annotations: str | None = None
    stream: StreamConfig | None = None
    out_dir: str = MISSING
    model: str = MISSING
    dtype: str = "bfloat16"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    finetune: str | None = None
    freeze_vision: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    resume: bool = False
    overwrite: bool = False
    memory_budget_gib: float | None = None

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage}")
        if self.resume and self.overwrite:
            raise ValueError("resume=true and overwrite=true contradict each other")
        if (self.annotations is None) == (self.stream is None):
            raise ValueError("set exactly one of 'annotations' (an annotation JSONL) or 'stream' (videos rendered on the fly)")
        if self.finetune is None:
            self.finetune = "lora" if self.stage == 1 else "full"
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.stage == 2 and self.finetune == "lora":
            raise ValueError("finetune: lora applies to stages 1 and 3; stage 2 fine-tunes every parameter (shard it with recipes/accelerate/fsdp.yaml)")
        if self.freeze_vision and self.finetune == "lora":
            raise ValueError("freeze_vision applies to full fine-tuning; LoRA covers every linear layer (set finetune: full, or lora.target_modules)")
        t = self.train
        trackers_for(t.log_with, "train.log_with")
        if t.save_steps < 0 or t.eval_steps < 0:
            raise ValueError(f"train.save_steps and train.eval_steps must be >= 0 (0: none), got {t.save_steps} and {t.eval_steps}")
        if t.per_device_batch_size < 1 or t.gradient_accumulation_steps < 1:
            raise ValueError("train.per_device_batch_size and train.gradient_accumulation_steps must be >= 1")
        if t.learning_rate <= 0 or (t.max_steps <= 0 and t.num_epochs <= 0):
            raise ValueError("train.learning_rate must be > 0, and train needs max_steps > 0 or num_epochs > 0")
        if t.status_loss_weight <= 0:
            raise ValueError(f"train.status_loss_weight must be > 0 (1 = the plain token-mean loss), got {t.status_loss_weight}")
        if t.attention_loss_weight < 0 or (t.attention_loss_weight > 0 and self.stage != 2):
            raise ValueError(f"train.attention_loss_weight must be >= 0 and applies to stage 2 only (0 = off), got {t.attention_loss_weight} at stage {self.stage}")
        if self.lora.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.lora.r}")
        rollouts = t.per_device_batch_size * t.gradient_accumulation_steps
        if self.stage == 3 and self.grpo.videos_per_step is None and rollouts % self.grpo.group_size:
            raise ValueError(
                f"stage 3: train.per_device_batch_size x train.gradient_accumulation_steps = {rollouts} rollouts per process "
                f"must be a multiple of grpo.group_size = {self.grpo.group_size} (a video's group stays on one process)"
            )


# Keys that may change between a run and its resumption.
RUN_ONLY_KEYS = ("out_dir", "resume", "overwrite", "train.max_steps", "train.num_workers", "train.logging_steps", "train.log_with", "grpo.save_rollouts",
                 "memory_budget_gib")
