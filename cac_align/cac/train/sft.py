"""CaC stages 1 and 2: single-frame LoRA warmup and multi-frame full fine-tuning (CaC §3.2).
Job: ``cac-align train-cac stage=1|2`` (``stage=3``, two-turn GRPO, is :mod:`cac_align.cac.train.grpo`).

- **Stage 1** trains a LoRA (rank 32, lr 1e-4) on every linear layer of Qwen3-VL: the vision
  encoder, the vision-language merger ("adapter") and the LLM, as the paper's implementation
  section describes, on single frames (:mod:`cac_align.cac.train.data`). At the end the adapter
  is saved (``adapter/``) and merged into the base weights (``final/``).
- **Stage 2** fine-tunes all parameters (lr 1e-4, the paper's value) starting from stage 1's
  merged ``final/``, on 4 fps global videos and 8 fps clips shorter than 1 s.

The loop is transformers' ``Trainer``: it already gives gradient accumulation, bf16, gradient
checkpointing, multi-GPU through accelerate (DDP, FSDP or DeepSpeed ZeRO: configs under
``recipes/accelerate/``), checkpoints with exact resume (optimizer, scheduler, RNG and
data-order state) and eval loss. What we add is the data side, which no stock collator does
for this task: chats encoded by :func:`~cac_align.cac.train.collate.encode_chat` with the loss
on the assistant's tokens only, images and videos (with their source timestamps) in one batch,
variable frame counts. trl's ``SFTTrainer`` was not used: its VLM collator takes images only
(no per-video timestamps) and would need the same custom collator, so it would add a
dependency without removing code. After each evaluation a small detection accuracy is logged
(``eval_detection_accuracy``): the held-out samples' status read, as the CaC reward reads it,
from P("normal") vs P("abnormal") at the status position of the answer.

Outputs in ``out_dir``: ``checkpoints/checkpoint-N`` (resume with ``resume=true``),
``metrics.jsonl`` and ``tensorboard/``, ``data.json`` (splits and samples), ``run_config.json``,
and ``final/`` (model + processor; ``cac-align score`` loads it with ``reward.model.name=<out_dir>/final``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from cac_align.cac.train.data import DataConfig
from cac_align.cac.train.grpo import GrpoSettings

__all__ = ["LoraSettings", "TrainCaCConfig", "TrainSettings", "detection_accuracy", "run"]


@dataclass
class LoraSettings:
    """Stage-1 LoRA. ``target_modules: all-linear`` covers the vision encoder, merger and LLM
    (every linear layer but the output head)."""

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
        bf16: bf16 autocast (needs a GPU with bf16 or a recent CPU).
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        eval_steps, save_steps, logging_steps: in optimizer steps; eval_steps 0 = no eval.
        detection_eval_samples: held-out samples for the detection accuracy (0 = skip).
        num_workers: dataloader worker processes (decoding and encoding happen there).
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


@dataclass
class TrainCaCConfig:
    """Config of `cac-align train-cac` (all three stages).

    Attributes:
        stage: 1 (single-frame LoRA warmup), 2 (multi-frame full fine-tuning) or 3 (two-turn
            GRPO, :mod:`cac_align.cac.train.grpo`).
        annotations: annotation JSONL (ideally with reasoning from `cac-align synth-cot`;
            records without it get the template reasoning).
        out_dir: the run folder.
        model: base weights: a hub id ("Qwen/Qwen3-VL-8B-Instruct") for stage 1, stage 1's
            ``<out_dir>/final`` for stage 2, stage 2's for stage 3 (also the frozen KL reference);
            "tiny-random:qwen3_vl" for offline runs.
        dtype, attn_implementation, trust_remote_code: how the model loads.
        data, lora, train, grpo: see :class:`DataConfig`, :class:`LoraSettings`,
            :class:`TrainSettings` and :class:`~cac_align.cac.train.grpo.GrpoSettings` (stage 3;
            there ``train.per_device_batch_size`` counts rollouts).
        resume: continue from the newest checkpoint in ``out_dir`` (the config must match).
        overwrite: start again in a folder holding another run.
    """

    stage: int = MISSING
    annotations: str = MISSING
    out_dir: str = MISSING
    model: str = MISSING
    dtype: str = "bfloat16"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage}")
        if self.resume and self.overwrite:
            raise ValueError("resume=true and overwrite=true contradict each other")
        t = self.train
        if t.per_device_batch_size < 1 or t.gradient_accumulation_steps < 1:
            raise ValueError("train.per_device_batch_size and train.gradient_accumulation_steps must be >= 1")
        if t.learning_rate <= 0 or (t.max_steps <= 0 and t.num_epochs <= 0):
            raise ValueError("train.learning_rate must be > 0, and train needs max_steps > 0 or num_epochs > 0")
        if self.lora.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.lora.r}")
        rollouts = t.per_device_batch_size * t.gradient_accumulation_steps
        if self.stage == 3 and rollouts % self.grpo.group_size:
            raise ValueError(
                f"stage 3: train.per_device_batch_size x train.gradient_accumulation_steps = {rollouts} rollouts per process "
                f"must be a multiple of grpo.group_size = {self.grpo.group_size} (a video's group stays on one process)"
            )


# Keys that may change between a run and its resumption.
_RUN_ONLY_KEYS = ("resume", "overwrite", "train.max_steps", "train.num_workers", "train.logging_steps", "grpo.save_rollouts")


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------
def load_model(config: TrainCaCConfig) -> tuple[Any, Any]:
    """(model on the CPU, processor) from ``config.model``; the Trainer places the model."""
    from cac_align.vlm.config import TINY_PREFIX

    if config.model.startswith(TINY_PREFIX):
        from cac_align.tiny_job import TINY_BUILDERS

        kind = config.model[len(TINY_PREFIX) :]
        if kind != "qwen3_vl":
            from cac_align.config import RecipeError

            raise RecipeError(f"model={config.model!r}: CaC trains Qwen3-VL; the tiny one is 'tiny-random:qwen3_vl'")
        tiny = TINY_BUILDERS[kind](0)
        return tiny.model, tiny.processor
    from cac_align.vlm.hf import load_vlm

    return load_vlm(
        config.model,
        dtype=config.dtype,
        device="cpu",
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
        key="model",
    )


def _add_lora(model: Any, lora: LoraSettings, seed: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA A matrices are random: seeded for reproducible runs
    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target, bias="none")
    return get_peft_model(model, config)


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
class ChatDataset:
    """A map-style dataset: sample -> chat -> :class:`~cac_align.cac.train.collate.EncodedChat`."""

    def __init__(self, samples: list, builder: Any, processor: Any):
        self.samples = samples
        self.builder = builder
        self.processor = processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        from cac_align.cac.train.collate import encode_chat

        return encode_chat(self.processor, self.builder(self.samples[index]).messages)


def detection_accuracy(model: Any, processor: Any, chats: list, batch_size: int = 4) -> dict[str, float]:
    """Share of chats whose status the model gets right, read as the CaC reward reads it.

    For each chat, P("normal") and P("abnormal") are teacher-forced at the position where the
    status value starts in its target answer (after the target's reasoning); the prediction is
    the likelier one. Returns accuracy and per-class recall (NaN for an absent class).
    """
    import re

    from cac_align.cac.prompts import STATUS_KEY_PATTERN
    from cac_align.vlm.hf import HFBackend

    requests, prefixes, labels = [], [], []
    for chat in chats:
        match = re.search(STATUS_KEY_PATTERN, chat.target)
        if match is None:
            raise ValueError(f"target has no status field: {chat.target[:100]!r}")
        requests.append(chat.prompt_messages)
        prefixes.append(chat.target[: match.end()])
        labels.append(chat.label)
    was_training = model.training
    model.eval()
    try:
        probs = HFBackend(model, processor, max_batch_size=batch_size).choice_probs(requests, prefixes, ["normal", "abnormal"])
    finally:
        model.train(was_training)
    predicted = ["normal" if p[0] >= p[1] else "abnormal" for p in probs]
    out = {"detection_accuracy": sum(p == y for p, y in zip(predicted, labels)) / max(1, len(labels))}
    for cls in ("normal", "abnormal"):
        idx = [i for i, y in enumerate(labels) if y == cls]
        out[f"detection_recall_{cls}"] = sum(predicted[i] == cls for i in idx) / len(idx) if idx else float("nan")
    return out


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def _prepare_out_dir(config: TrainCaCConfig) -> tuple[Path, str | None]:
    """Check the run folder against the config; returns (folder, checkpoint to resume or None)."""
    import shutil

    from cac_align.config import RecipeError, config_fingerprint, differing_keys

    out = Path(config.out_dir)
    data = config_fingerprint(config, _RUN_ONLY_KEYS)
    saved = out / "run_config.json"
    checkpoint = None
    if saved.exists():
        if config.overwrite:
            shutil.rmtree(out)
        elif config.resume:
            changed = differing_keys(json.loads(saved.read_text()), data)
            if changed:
                raise RecipeError(f"{out}: cannot resume, the config changed: {', '.join(changed)}")
            checkpoint = _latest_checkpoint(out)
        else:
            raise RecipeError(f"{out} already holds a train-cac run; pass resume=true to continue it or overwrite=true to start again")
    elif config.resume:
        raise RecipeError(f"resume=true but {out} holds no train-cac run")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(data, indent=1))
    return out, checkpoint


def _latest_checkpoint(out: Path) -> str | None:
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def run(config: TrainCaCConfig) -> dict:
    """Train stage 1, 2 or 3; returns the final metrics (also in ``metrics.jsonl``)."""
    if config.stage == 3:
        from cac_align.cac.train.grpo import run as run_grpo

        return run_grpo(config)
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from cac_align.cac.schema import load_annotations
    from cac_align.cac.train.collate import collate
    from cac_align.cac.train.data import ChatBuilder, build_stage, save_description

    # 1. data (deterministic: every process builds the same samples)
    records = load_annotations(config.annotations).records
    stage_data = build_stage(config.stage, records, config.data)
    if not stage_data.train:
        from cac_align.config import RecipeError

        raise RecipeError(f"{config.annotations}: stage {config.stage} has no training samples ({stage_data.stats}); add videos or change data.splits")
    builder = ChatBuilder(records, config.data)
    out = Path(config.out_dir)

    # 2. training arguments (this also sets up the processes under `accelerate launch`)
    t = config.train
    do_eval = bool(stage_data.eval) and t.eval_steps > 0
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a fraction of the total steps
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        **_checkpointing_args(t.gradient_checkpointing),
        logging_steps=t.logging_steps,
        eval_strategy="steps" if do_eval else "no",
        eval_steps=t.eval_steps if do_eval else None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    # 3. run folder: checked and prepared by the main process, then read by the others
    with args.main_process_first(local=False, desc="run folder"):
        if args.process_index == 0:
            out, checkpoint = _prepare_out_dir(config)
            save_description(stage_data, out / "data.json")
        else:
            checkpoint = _latest_checkpoint(out) if config.resume else None

    # 4. model: LoRA on every linear layer (stage 1) or all parameters (stage 2)
    model, processor = load_model(config)
    if config.stage == 1:
        model = _add_lora(model, config.lora, config.train.seed)
    else:
        model.requires_grad_(True)
    pad_id = processor.tokenizer.pad_token_id
    metrics_path = out / "metrics.jsonl"

    class JsonlLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(out / "tensorboard")
    detection_chats = [builder(s) for s in stage_data.eval[: t.detection_eval_samples]] if do_eval else []

    class CaCTrainer(Trainer):
        def evaluate(self, *a: Any, **kw: Any) -> dict:
            metrics = super().evaluate(*a, **kw)
            if detection_chats:
                extra = detection_accuracy(self.accelerator.unwrap_model(self.model), processor, detection_chats)
                extra = {f"eval_{k}": v for k, v in extra.items()}
                self.log(extra)
                metrics.update(extra)
            return metrics

    trainer = CaCTrainer(
        model=model,
        args=args,
        train_dataset=ChatDataset(stage_data.train, builder, processor),
        eval_dataset=ChatDataset(stage_data.eval, builder, processor) if do_eval else None,
        data_collator=lambda batch: collate(batch, pad_id),
        processing_class=processor,
        callbacks=[JsonlLog(), tensorboard],
    )
    # 5. train (resuming restores optimizer, scheduler, RNG and the data position)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    for entry in trainer.state.log_history:  # the latest value of every logged eval metric
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})

    # 6. final weights: stage 1 saves the adapter, then merges it into the base weights
    final = out / "final"
    if config.stage == 1:
        trainer.save_model(str(out / "adapter"))
        if trainer.is_world_process_zero():
            _merge_adapter(config, out / "adapter", final)
    else:
        trainer.save_model(str(final))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        print(f"train-cac stage {config.stage}: done; model in {final}")
    return metrics


def _checkpointing_args(enabled: bool) -> dict:
    """Non-reentrant activation checkpointing, under the argument names this transformers has
    (``activation_checkpointing`` replaced ``gradient_checkpointing`` in later 5.x releases)."""
    import inspect

    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def _merge_adapter(config: TrainCaCConfig, adapter: Path, final: Path) -> None:
    """Load the base weights fresh, apply the saved adapter, merge, save model + processor."""
    from peft import PeftModel

    base, processor = load_model(config)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(final), safe_serialization=True)
    processor.save_pretrained(str(final))
