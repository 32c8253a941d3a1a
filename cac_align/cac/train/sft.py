"""CaC stages 1 and 2: single-frame LoRA warmup and multi-frame full fine-tuning (CaC §3.2).
Job: ``cac-align train-cac stage=1|2`` (``stage=3``, two-turn GRPO, is :mod:`cac_align.cac.train.grpo`).

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
import inspect
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback

from cac_align.cac.judgment import parse_judgment
from cac_align.cac.prompts import STATUS_KEY_PATTERN
from cac_align.cac.schema import load_annotations
from cac_align.cac.train.collate import IGNORE_INDEX, collate, encode_chat
from cac_align.cac.train.data import ChatBuilder, build_stage, describe
from cac_align.cac.train.grpo import run as run_grpo
from cac_align.cac.train.settings import LoraSettings, TrainCaCConfig, TrainSettings
from cac_align.cac.train.shared import add_lora, check_sharding, load_model, run_folder, set_trainable
from cac_align.cac.train.stream import StageStream, SynthStream, load_stream_synth, stream_steps
from cac_align.config import RecipeError
from cac_align.eval.metrics import auroc
from cac_align.run.folder import keep_log_steps, read_jsonl_log, share_modes
from cac_align.vlm.hf import HFBackend

__all__ = ["LoraSettings", "TrainCaCConfig", "TrainSettings", "detection_metrics", "run", "run_folder", "weighted_token_loss", "window_attention_loss"]


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
        return encode_chat(self.processor, self.builder(self.samples[index]).messages)


def weighted_token_loss(logits: Any, labels: Any, status_mask: Any, status_weight: float, num_items: Any = None) -> Any:
    """Next-token cross-entropy with the status tokens counted ``status_weight`` times:
    ``sum_t w_t * CE_t / N``, where ``w_t`` is ``status_weight`` on a token marked in
    ``status_mask`` and 1 elsewhere, and ``N`` is the number of answer tokens (``num_items``:
    the Trainer's count over the whole accumulated batch, else this batch's). With weight 1 it
    is the causal-LM loss transformers computes (shifted labels, -100 ignored, summed / N)."""
    shifted_labels = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    weights = 1.0 + (status_weight - 1.0) * status_mask[:, 1:].to(ce.dtype)
    n = num_items if num_items is not None else (shifted_labels != IGNORE_INDEX).sum()
    return (ce * weights).sum() / n


def window_attention_loss(attentions: Any, query: Any, window: Any, eps: float = 1e-6) -> tuple[Any, Any]:
    """Stage 2's attention term (``train.attention_loss_weight``): ``-log(m + eps)`` averaged
    over the supervised rows, where ``m`` is the attention mass that the row's query position
    (the one that predicts the status value) puts on its window (the video tokens of the
    frames the target answer attributes the anomaly to), averaged over heads first:
    ``m_b = sum_{k in window_b} mean_h A[b, h, query_b, k]``.

    Args:
        attentions: one layer's attention probabilities, (batch, heads, length, length).
        query: (batch,) long, -1 for a row that is not supervised.
        window: (batch, length) bool.

    Returns:
        (loss, mean mass) over supervised rows, or (None, None) when the batch has none.
    """
    rows = (query >= 0).nonzero().flatten()
    if len(rows) == 0:
        return None, None
    rows = rows.to(attentions.device)
    attended = attentions[rows, :, query.to(attentions.device)[rows], :].float().mean(1)  # (rows, length)
    mass = (attended * window.to(attentions.device)[rows].float()).sum(-1)
    return -torch.log(mass + eps).mean(), mass.detach().mean()


def detection_metrics(model: Any, processor: Any, chats: list, batch_size: int = 8, max_new_tokens: int = 384) -> dict[str, float]:
    """Detection as the model itself answers held-out chats (no gold reasoning shown).

    The model generates each answer greedily from the prompt alone; the status it wrote is its
    prediction (an answer with no readable status counts as wrong), and the reward is read as
    CaC reads it: P(normal) / (P(normal) + P(abnormal)) at the position where the generated
    status value starts (CaC Eq. 7). Global videos are parsed as turn 1, clips and frames as
    turn 2.

    Returns:
        ``detection_accuracy``, ``detection_valid_fraction`` (answers that parse and follow the
        schema), ``detection_recall_normal`` / ``_abnormal`` (NaN for an absent class) and
        ``detection_auroc`` of the reward (normal = positive; NaN if a class is missing).
    """
    was_training = model.training
    model.eval()
    try:
        backend = HFBackend(model, processor, max_batch_size=batch_size)
        texts = [c.text for c in backend.generate([chat.prompt_messages for chat in chats], max_new_tokens=max_new_tokens)]
        judgments = [parse_judgment(text, 1 if chat.kind == "global" else 2) for text, chat in zip(texts, chats)]
        readable = [i for i, text in enumerate(texts) if judgments[i].status is not None and re.search(STATUS_KEY_PATTERN, text)]
        prefixes = [texts[i][: re.search(STATUS_KEY_PATTERN, texts[i]).end()] for i in readable]  # type: ignore[union-attr]
        probs = backend.choice_probs([chats[i].prompt_messages for i in readable], prefixes, ["normal", "abnormal"]) if readable else []
    finally:
        model.train(was_training)
    labels = [chat.label for chat in chats]
    predicted = [j.status for j in judgments]
    out = {
        "detection_accuracy": sum(p == y for p, y in zip(predicted, labels)) / max(1, len(labels)),
        "detection_valid_fraction": sum(j.valid for j in judgments) / max(1, len(judgments)),
    }
    for cls in ("normal", "abnormal"):
        idx = [i for i, y in enumerate(labels) if y == cls]
        out[f"detection_recall_{cls}"] = sum(predicted[i] == cls for i in idx) / len(idx) if idx else float("nan")
    rewards = [float(p[0] / (p[0] + p[1])) if p[0] + p[1] > 0 else 0.5 for p in probs]
    out["detection_auroc"] = auroc(rewards, [labels[i] == "normal" for i in readable]) if readable else float("nan")
    return out


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def _prepare_out_dir(config: TrainCaCConfig) -> tuple[Path, str | None]:
    """Check and record the run folder (main process, once data and model are loaded); returns
    (folder, checkpoint to resume or None)."""
    folder = run_folder(config)
    folder.start()
    return folder.path, _latest_checkpoint(folder.path) if folder.resuming else None


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
    if config.stage == 3:
        return run_grpo(config)

    # 1. data (deterministic: every process builds the same samples); model + processor
    model, processor = load_model(config)
    t = config.train
    train_dataset, eval_dataset, detection_chats, description = _stage_datasets(config, processor)
    out = Path(config.out_dir)

    # 2. training arguments (this also sets up the processes under `accelerate launch`)
    do_eval = eval_dataset is not None and len(eval_dataset) > 0 and t.eval_steps > 0
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
        # A stream is random already and keeps a clean twin next to its planted video.
        train_sampling_strategy="sequential" if config.stream is not None else "random",
        remove_unused_columns=False,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
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

    # 4. trainable parameters: LoRA on every linear layer (stage 1) or all of them (stage 2,
    # or stage 1 with finetune: full, for a model trained from scratch; freeze_vision keeps
    # the vision tower as it arrived)
    lora = config.stage == 1 and config.finetune == "lora"
    if lora:
        model = add_lora(model, config.lora, config.train.seed)
    else:
        set_trainable(model, config)
    pad_id = processor.tokenizer.pad_token_id
    metrics_path = out / "metrics.jsonl"

    class JsonlLog(TrainerCallback):
        """metrics.jsonl rows; a training row also gets ``step_seconds``, the mean wall time of the
        optimizer steps since the previous row (data loading included; the first step also
        holds the start-up: CUDA kernels, FSDP's first gathers)."""

        def __init__(self) -> None:
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
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:  # safetensors writes 0600 files
                share_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(out / "tensorboard")
    detection_chats = detection_chats[: t.detection_eval_samples] if do_eval else []

    # The attention term needs the last language-model layer's attention probabilities: eager
    # attention in the language model (its memory grows with length^2 per layer: meant for
    # small models; the vision tower keeps its implementation). Its batches also go through
    # the token-loss function below (weight 1 = the plain loss), so the token loss is
    # normalized by the accumulated batch's token count and the Trainer does not rescale it:
    # the term is divided by the accumulation steps here, so that it weighs the same with or
    # without accumulation.
    attention = t.attention_loss_weight > 0
    last_attention: Any = None
    if attention:
        try:
            model.set_attn_implementation({"text_config": "eager"})
        except (KeyError, TypeError, ValueError):
            model.set_attn_implementation("eager")
        last_attention = model.get_decoder().layers[-1].self_attn
    weighted = t.status_loss_weight != 1.0 or attention
    status_mask: list[Any] = [None]  # the current batch's marks, for the loss function
    attention_log = {"loss": 0.0, "mass": 0.0, "n": 0}  # since the last log line

    def status_weighted_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        return weighted_token_loss(outputs.logits, labels, status_mask[0], t.status_loss_weight, num_items_in_batch)

    class CaCTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            status_mask[0] = inputs.pop("status_mask", None)
            query, window = inputs.pop("window_query", None), inputs.pop("window_tokens", None)
            if query is None or not model.training or not bool((query >= 0).any()):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # eager attention modules return their probabilities; a hook keeps the last layer's
            # (asking the whole model for output_attentions would collect every layer's)
            captured: list[Any] = []
            handle = last_attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
            try:
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            finally:
                handle.remove()
            term, mass = window_attention_loss(captured[0], query, window)
            steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
            loss = loss + t.attention_loss_weight * term / steps
            attention_log["loss"] += float(term.detach())
            attention_log["mass"] += float(mass)
            attention_log["n"] += 1
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict, *a: Any, **kw: Any) -> None:
            if "loss" in logs and attention_log["n"]:  # a training log line: the term's mean since the last one
                n = attention_log["n"]
                logs = {**logs, "attention_loss": attention_log["loss"] / n, "attention_mass": attention_log["mass"] / n}
                attention_log.update(loss=0.0, mass=0.0, n=0)
            super().log(logs, *a, **kw)

        def evaluate(self, *a: Any, **kw: Any) -> dict:
            metrics = super().evaluate(*a, **kw)
            if detection_chats:
                unwrapped = self.accelerator.unwrap_model(self.model)
                extra = detection_metrics(unwrapped, processor, detection_chats, max_new_tokens=t.detection_max_new_tokens)
                extra = {f"eval_{k}": v for k, v in extra.items()}
                self.log(extra)
                metrics.update(extra)
            return metrics

    trainer = CaCTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if do_eval else None,
        data_collator=lambda batch: collate(batch, pad_id, status_mask=weighted, attention_window=attention),
        compute_loss_func=status_weighted_loss if weighted else None,
        processing_class=processor,
        callbacks=[JsonlLog(), tensorboard],
    )
    check_sharding(trainer.accelerator.distributed_type)  # fsdp.yaml on a machine where accelerate cannot shard
    # 5. train (resuming restores optimizer, scheduler, RNG and the data position)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = dict(result.metrics)
    for entry in trainer.state.log_history:  # the latest value of every logged eval metric
        metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})

    # 6. final weights: stage 1 saves the adapter, then merges it into the base weights
    final = out / "final"
    if lora:
        trainer.save_model(str(out / "adapter"))
        if trainer.is_world_process_zero():
            _merge_adapter(config, out / "adapter", final)
    else:
        trainer.save_model(str(final))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        for folder in (final, out / "adapter"):
            if folder.is_dir():
                share_modes(folder)  # safetensors writes 0600 files
        print(f"train-cac stage {config.stage}: done; model in {final}")
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
