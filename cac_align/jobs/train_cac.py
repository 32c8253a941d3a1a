"""CaC stages 1 and 2: single-frame LoRA warmup and multi-frame full fine-tuning (CaC §3.2).
Job: ``cac-align train-cac stage=1|2`` (``stage=3``, two-turn GRPO, is :mod:`cac_align.jobs.train_cac_grpo`).

- **Stage 1** trains a LoRA (rank 32, lr 1e-4) on every linear layer of Qwen3-VL: the vision
  encoder, the vision-language merger ("adapter") and the LLM, as the paper's implementation
  section describes, on single frames (:mod:`cac_align.cac.train.data`). At the end the adapter
  is saved (``adapter/``) and merged into the base weights (``final/``).
  A model trained from scratch (``cac-demo``) sets ``finetune: full`` instead: a low-rank
  update of random weights learns little.
- **Stage 2** fine-tunes all parameters (lr 1e-4, the paper's value) starting from stage 1's
  merged ``final/``, on 4 fps global videos and 8 fps clips shorter than 1 s.

Samples come from an annotation file (``annotations:``, split by video) or from synthetic videos
rendered on the fly (``stream:``, :mod:`cac_align.cac.train.stream`: every sample a new video).

The loop is transformers' ``Trainer``: it already gives gradient accumulation, bf16, gradient
checkpointing, multi-GPU through accelerate (DDP, FSDP or DeepSpeed ZeRO: configs under
``recipes/accelerate/``), checkpoints with exact resume (optimizer, scheduler, RNG and
data-order state) and eval loss. What we add is the data side, which no stock collator does
for this task: chats encoded by :func:`~cac_align.cac.train.collate.encode_chat` with the loss
on the assistant's tokens only, images and videos (with their source timestamps) in one batch,
variable frame counts. trl's ``SFTTrainer`` was not used: its VLM collator takes images only
(no per-video timestamps) and would need the same custom collator, so it would add a
dependency without removing code. After each evaluation the detection metrics are logged
(``eval_detection_accuracy``, ``_valid_fraction``, ``_auroc``, per-class recall): the model
*generates* each held-out answer and its own status is scored, with the reward read at the
position where its generated status starts. Gold reasoning is never shown, so reasoning that
states the verdict cannot leak the label into the metric.

Outputs in ``out_dir``: ``checkpoints/checkpoint-N`` (resume with ``resume=true``),
``metrics.jsonl`` and ``tensorboard/``, ``data.json`` (splits and samples), ``cac_align_run.json``
(the run manifest, docs/run_folders.md), and ``final/`` (model + processor; ``cac-align score`` loads it with ``reward.model.name=<out_dir>/final``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from cac_align.cac.schema import load_annotations
from cac_align.cac.train.collate import collate
from cac_align.cac.train.data import ChatBuilder, ChatDataset, build_stage, describe
from cac_align.eval.held_out import held_out_metrics
from cac_align.cac.train.losses import weighted_token_loss, window_attention_loss
from cac_align.cac.train.settings import TrainCaCConfig, TrainSettings
from cac_align.cac.train.setup import add_lora, check_sharding, load_model, run_folder, set_trainable
from cac_align.cac.train.stream import StageStream, SynthStream, load_stream_synth, stream_steps
from cac_align.config import RecipeError
from cac_align.jobs.train_cac_grpo import run as run_grpo
from cac_align.plan.stages import check_train_cac
from cac_align.run.folder import keep_log_steps, read_jsonl_log, share_modes
from cac_align.run.input_files import ANNOTATIONS_MADE_BY, existing
from cac_align.cac.infer import write_settings
from cac_align.run.metrics import flush_wandb, trackers_for

__all__ = ["TrainCaCConfig", "run"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def _prepare_out_dir(config: TrainCaCConfig) -> tuple[Path, str | None]:
    """Check and record the run folder (main process, once data and model are loaded); returns
    (folder, checkpoint to resume or None)."""
    folder = run_folder(config)
    folder.start()
    checkpoint = _latest_checkpoint(folder.path) if folder.resuming else None
    if folder.resuming and checkpoint is None:
        log.warning("resume=true but %s has no checkpoint yet: starting from step 0", folder.path)
    return folder.path, checkpoint


def _finished(checkpoint: str, max_steps: int, final: Path) -> bool:
    """Whether a run resumed from ``checkpoint`` has nothing left to do: the checkpoint is at the
    run's last step (``max_steps``, or the number of steps its epochs planned) and ``final/``
    holds the finished model."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    target = max_steps if max_steps > 0 else int(state.get("max_steps", 0))
    return bool(target) and int(state["global_step"]) >= target and (final / "config.json").is_file()


def _latest_checkpoint(out: Path) -> str | None:
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def _detection_chats(chats: list, data: Any) -> list:
    """Held-out chats fit for the detection metrics: a clip that carries turn 1 before it
    (``data.clip_context``) shows the gold turn-1 answer, which gives the verdict away, so
    only global videos and frames are asked then (the file-based path filters the same way)."""
    return [c for c in chats if not (data.clip_context and c.kind == "clip")]


def _stage_datasets(config: TrainCaCConfig, processor: Any) -> tuple[Any, Any, list, dict]:
    """(train dataset, eval dataset, held-out chats for the detection metrics, a JSON-able
    description for data.json) of stage 1 or 2, from the annotation file or the stream."""
    if config.stream is not None:
        t = config.train
        processes = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        steps = stream_steps(t)
        twins = config.stream.clean_twins
        per_video = (config.data.frames_per_anomaly if config.stage == 1 else 2) * (2 if twins else 1)
        videos = math.ceil(steps * t.per_device_batch_size * t.gradient_accumulation_steps * processes / per_video) + 1
        extra = {"types": [k for k in load_stream_synth(config.stream).types if k in config.data.frame_types]} if config.stage == 1 else {}
        if config.stage == 1 and not extra["types"]:
            raise RecipeError(f"stage 1 streams only data.frame_types {config.data.frame_types}, and the synth recipe plants none of them")
        planted = {"normal_fraction": 0.0} if twins else {}  # every training video planted; its twin is the normal one
        train = StageStream(
            config.stage, SynthStream(load_stream_synth(config.stream, n=videos, **extra, **planted)), config.data, processor, config.data.seed, twins
        )
        held = StageStream(
            config.stage,
            SynthStream(load_stream_synth(config.stream, seed=config.stream.eval_seed, n=config.stream.eval_videos, **extra)),
            config.data,
            processor,
            config.data.seed + 1,
        )
        chats = _detection_chats([held.chat(i) for i in range(len(held))], config.data)
        description = {"stage": config.stage, "stream": dataclasses.asdict(config.stream), "train_videos": videos, "train_samples": len(train), "eval_samples": len(held)}
        return train, held, chats, description

    assert config.annotations is not None
    records = load_annotations(config.annotations).records
    stage_data = build_stage(config.stage, records, config.data)
    if not stage_data.train:
        raise RecipeError(f"{config.annotations}: stage {config.stage} has no training samples ({stage_data.stats}); add videos or change data.splits")
    builder = ChatBuilder(records, config.data)
    asked = [s for s in stage_data.eval if not (config.data.clip_context and s.kind == "clip")]
    chats = [builder(s) for s in asked[: config.train.detection_eval_samples]]
    return ChatDataset(stage_data.train, builder, processor), ChatDataset(stage_data.eval, builder, processor), chats, describe(stage_data)


def run(config: TrainCaCConfig) -> dict:
    """Train stage 1, 2 or 3; returns the final metrics (also in ``metrics.jsonl``)."""
    if config.annotations is not None:  # every stage reads it after a model loads (1, 2) or a process group forms (3): said first
        existing(config.annotations, "annotations", made_by=ANNOTATIONS_MADE_BY)
    check_train_cac(config)  # the stage's memory plan, refused with the fix before the model loads (cac_align.plan.stages)
    if config.stage == 3:
        return run_grpo(config)

    # 1. data (deterministic: every process builds the same samples); model + processor
    model, processor = load_model(config)
    t = config.train
    train_dataset, eval_dataset, detection_chats, description = _stage_datasets(config, processor)
    out = Path(config.out_dir)

    # 2. training arguments (this also sets up the processes under `accelerate launch`)
    do_eval = eval_dataset is not None and len(eval_dataset) > 0 and t.eval_steps > 0
    args = _training_arguments(config, out, do_eval)

    # 3. run folder: checked and prepared by the main process, then read by the others
    with args.main_process_first(local=False, desc="run folder"):
        if args.process_index == 0:
            out, checkpoint = _prepare_out_dir(config)
            (out / "data.json").write_text(json.dumps(description, indent=1))
            if checkpoint is not None:  # lines of steps after the checkpoint (and a torn one) go: they are logged again
                keep_log_steps(out / "metrics.jsonl", int(Path(checkpoint).name.split("-")[-1]))
        else:
            checkpoint = _latest_checkpoint(out) if config.resume else None

    if checkpoint is not None and _finished(checkpoint, t.max_steps, out / "final"):
        # resume=true on a run that is done: the Trainer would log an empty summary row (and, in
        # this transformers, even take one step past the end); the run is left as it is
        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        if args.process_index == 0:
            print(f"train-cac stage {config.stage}: the run in {out} has finished (step {step}); its model is in {out / 'final'}; nothing to resume")
        rows = [row for _, row in read_jsonl_log(out / "metrics.jsonl") if isinstance(row, dict)]
        return rows[-1] if rows else {}
    if checkpoint is not None and args.process_index == 0:  # say so, as stage 3, flow-grpo and dpo do
        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        log.info("train-cac stage %d: resuming from %s (step %d)", config.stage, checkpoint, step)

    # 4. trainable parameters: LoRA on every linear layer (stage 1) or all of them (stage 2,
    # or stage 1 with finetune: full, for a model trained from scratch; freeze_vision keeps
    # the vision tower as it arrived)
    lora = config.stage == 1 and config.finetune == "lora"
    if lora:
        model = add_lora(model, config.lora, config.train.seed)
    else:
        set_trainable(model, config)
    callbacks: list[TrainerCallback] = [_JsonlLog(out / "metrics.jsonl"), *_tracker_callbacks(config, out, args)]
    losses = _Losses(t, model, processor, detection_chats[: t.detection_eval_samples] if do_eval else [])
    trainer = _CaCTrainer(
        losses=losses,
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if do_eval else None,
        data_collator=functools.partial(collate, pad_token_id=processor.tokenizer.pad_token_id, status_mask=losses.weighted, attention_window=losses.attention),
        compute_loss_func=losses.token_loss if losses.weighted else None,
        processing_class=processor,
        callbacks=callbacks,
    )
    check_sharding(trainer.accelerator.distributed_type)  # fsdp.yaml on a machine where accelerate cannot shard

    # 5. train (resuming restores optimizer, scheduler, RNG and the data position)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if "wandb" in trackers_for(t.log_with) and args.process_index == 0:
            import wandb

            wandb.finish()
            flush_wandb()  # the record is complete when the job returns
    metrics = dict(result.metrics)
    for entry in trainer.state.log_history:  # the latest value of every logged eval metric
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})

    # 6. final weights: stage 1 saves the adapter, then merges it into the base weights
    _save_final(trainer, config, out, lora)
    return metrics


def _tracker_callbacks(config: TrainCaCConfig, out: Path, args: TrainingArguments) -> list[TrainerCallback]:
    """transformers' callbacks for ``train.log_with``: TensorBoard under ``out/tensorboard``,
    Weights & Biases as a run named after the run folder with the resolved recipe as its config and
    its files under ``out/wandb`` (started here on the main process, so transformers' callback
    logs into it rather than into a run of its own defaults)."""
    from omegaconf import OmegaConf

    names = trackers_for(config.train.log_with, "train.log_with")
    callbacks: list[TrainerCallback] = []
    if "tensorboard" in names:
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(out / "tensorboard")
        callbacks.append(tensorboard)
    if "wandb" in names:
        from transformers.integrations import WandbCallback

        if args.process_index == 0:
            import wandb

            wandb.init(project=f"train_cac_stage{config.stage}", name=out.name, dir=str(out),
                       config=OmegaConf.to_container(OmegaConf.structured(config), resolve=True))
        callbacks.append(WandbCallback())
    return callbacks


def _training_arguments(config: TrainCaCConfig, out: Path, do_eval: bool) -> TrainingArguments:
    """transformers' arguments from the recipe's ``train:`` section."""
    t = config.train
    return TrainingArguments(
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
        # save_steps 0: no checkpoint at all (transformers would still save one at the last step)
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        dataloader_num_workers=t.num_workers,
        # A stream is random already and keeps a clean twin next to its planted video.
        train_sampling_strategy="sequential" if config.stream is not None else "random",
        remove_unused_columns=False,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def _save_final(trainer: Trainer, config: TrainCaCConfig, out: Path, lora: bool) -> None:
    """``final/``: the trained model (stage 1 with LoRA: ``adapter/``, then merged into the base)
    and its ``cac_align.json`` (the data section's wording, rates, caps and pixel grid)."""
    final = out / "final"
    if lora:
        trainer.save_model(str(out / "adapter"))
        if trainer.is_world_process_zero():
            _merge_adapter(config, out / "adapter", final)
    else:
        trainer.save_model(str(final))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        write_settings(final, config.data.inference_settings())  # how to ask it: its cac_align.json
        for folder in (final, out / "adapter"):
            if folder.is_dir():
                share_modes(folder)  # safetensors writes 0600 files
        print(f"train-cac stage {config.stage}: done; model in {final}")


class _JsonlLog(TrainerCallback):
    """metrics.jsonl rows; a training row also gets ``step_seconds``, the mean wall time of the
    optimizer steps since the previous row (data loading included; the first step also
    holds the start-up: CUDA kernels, FSDP's first gathers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = 0.0
        self.seconds: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        row = {"step": state.global_step, **(logs or {})}
        if "loss" in row and self.seconds:
            row["step_seconds"] = sum(self.seconds) / len(self.seconds)
            self.seconds = []
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:  # safetensors writes 0600 files
            share_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class _Losses:
    """What stages 1-2 add to the Trainer's loss: the status token's weight and the optional
    attention term, with the current batch's marks and the term's running sums.

    The attention term needs the last language-model layer's attention probabilities: eager
    attention in the language model (its memory grows with length^2 per layer: meant for
    small models; the vision tower keeps its implementation). Its batches also go through
    :meth:`token_loss` (weight 1 = the plain loss), so the token loss is normalized by the
    accumulated batch's token count and the Trainer does not rescale it: the term is divided
    by the accumulation steps, so that it weighs the same with or without accumulation.
    """

    def __init__(self, t: TrainSettings, model: Any, processor: Any, detection_chats: list) -> None:
        self.t, self.processor, self.detection_chats = t, processor, detection_chats
        self.attention = t.attention_loss_weight > 0
        self.last_attention: Any = None
        if self.attention:
            try:
                model.set_attn_implementation({"text_config": "eager"})
            except (KeyError, TypeError, ValueError):
                model.set_attn_implementation("eager")
            self.last_attention = model.get_decoder().layers[-1].self_attn
        self.weighted = t.status_loss_weight != 1.0 or self.attention
        self.status_mask: Any = None  # the current batch's marks, for the loss function
        self.attention_log = {"loss": 0.0, "mass": 0.0, "n": 0}  # since the last log line

    def token_loss(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        return weighted_token_loss(outputs.logits, labels, self.status_mask, self.t.status_loss_weight, num_items_in_batch)


class _CaCTrainer(Trainer):
    """transformers' Trainer with :class:`_Losses` and the detection metrics after each evaluation."""

    def __init__(self, *args: Any, losses: _Losses, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.losses = losses

    def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        losses = self.losses
        losses.status_mask = inputs.pop("status_mask", None)
        query, window = inputs.pop("window_query", None), inputs.pop("window_tokens", None)
        if query is None or not model.training or not bool((query >= 0).any()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # eager attention modules return their probabilities; a hook keeps the last layer's
        # (asking the whole model for output_attentions would collect every layer's)
        captured: list[Any] = []
        handle = losses.last_attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
        try:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            handle.remove()
        term, mass = window_attention_loss(captured[0], query, window)
        steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        loss = loss + losses.t.attention_loss_weight * term / steps
        losses.attention_log["loss"] += float(term.detach())
        losses.attention_log["mass"] += float(mass)
        losses.attention_log["n"] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *a: Any, **kw: Any) -> None:
        log = self.losses.attention_log
        if "loss" in logs and log["n"]:  # a training log line: the term's mean since the last one
            n = log["n"]
            logs = {**logs, "attention_loss": log["loss"] / n, "attention_mass": log["mass"] / n}
            log.update(loss=0.0, mass=0.0, n=0)
        super().log(logs, *a, **kw)

    def evaluate(self, *a: Any, **kw: Any) -> dict:
        metrics = super().evaluate(*a, **kw)
        losses = self.losses
        if losses.detection_chats:
            unwrapped = self.accelerator.unwrap_model(self.model)
            extra = held_out_metrics(unwrapped, losses.processor, losses.detection_chats, max_new_tokens=losses.t.detection_max_new_tokens)
            extra = {f"eval_{k}": v for k, v in extra.items()}
            self.log(extra)
            metrics.update(extra)
        return metrics


def _checkpointing_args(enabled: bool) -> dict:
    """Non-reentrant activation checkpointing, under the argument names this transformers has
    (``activation_checkpointing`` replaced ``gradient_checkpointing`` in later 5.x releases)."""
    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False}}


def _merge_adapter(config: TrainCaCConfig, adapter: Path, final: Path) -> None:
    """Load the base weights fresh, apply the saved adapter, merge, save model + processor."""
    base, processor = load_model(config)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(final), safe_serialization=True)
    processor.save_pretrained(str(final))
