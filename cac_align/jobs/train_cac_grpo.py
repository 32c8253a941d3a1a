"""CaC stage 3: two-turn GRPO (CaC §3.2 "Stage 3", §3.3, Eq. 8–12). Job: ``cac-align train-cac stage=3``.

No public trainer does this (trl's GRPO passes only dataset images to the loss and the other
frameworks run one turn), so this is a small loop on transformers + accelerate, on the RL core it
shares with ``cac-align flow-grpo`` (:mod:`cac_align.rl.advantages`). Each training step:

1. takes the step's videos (``grpo.videos_per_step``, a global intent split evenly over the
   processes; a seeded order that covers every video once per epoch): the ``stage3`` split of
   the annotations, or videos rendered on the fly (``stream:``);
2. samples G two-turn rollouts per video and scores them (Eq. 2–6;
   :mod:`cac_align.cac.train.rollouts`), seeded by (seed, step, process);
3. computes advantages (Eq. 8): each rollout's total reward normalized within its video's group
   of G (a video's group stays on one process, so they are local);
4. trains: the token-level clipped surrogate over every generated token of both turns (Eq.
   9–12), each rollout averaged over its own length, then over rollouts, plus ``β`` times the k3
   estimator of KL(π_θ ‖ π_ref), ``ρ − log ρ − 1`` with ``ρ = π_ref / π_θ``, against the frozen
   stage-2 model; log-probs are recomputed on the full two-turn conversation (turn-1 video +
   answer + turn-2 clip + answer) with the loss on the generated tokens only; micro-batches of
   ``train.per_device_batch_size`` rollouts accumulate into ``grpo.iterations`` AdamW updates,
   gradients all-reduced once per update;
5. gathers every process's numbers and logs them (``metrics.jsonl`` + accelerate's tracker);
6. checkpoints every ``train.save_steps`` steps and at the last (``save_steps: 0``: none).

**π_old.** With ``grpo.iterations = 1`` (default) each batch drives one optimizer update, so
π_old is the current policy: ``old = logp.detach()``, the ratio is exactly 1 and its gradient
is ∇log π (the on-policy GRPO case). With ``iterations > 1`` the old log-probs are computed
once before the first update and the clip starts to act. The ``hf`` sampler records the
log-probs it sampled with; ``sampler_logprob_max_abs_diff`` logs their largest difference from
the recomputed ones (a check that the trainer scores exactly what was sampled).

Outputs in ``out_dir``: ``metrics.jsonl`` and ``tensorboard/train_cac_stage3/`` (per step: every
reward component's mean, the fraction of rollouts reaching turn 2, the mean window length,
response lengths, KL, clip fraction, ratio, loss, grad norm; with several processes
``process_param_spread``, the spread of a parameter checksum across them, 0 when the replicas
agree), ``rollouts.jsonl`` (every rollout's texts, window, rewards and advantage),
``checkpoints/step_NNNNNN/`` (accelerate's ``save_state`` + ``state.json``; resume with
``resume=true``), ``data.json`` and ``cac_align_run.json`` (the run manifest,
docs/run_folders.md), and ``final/`` (model + processor).

Multi-process: accelerate (``accelerate launch``), DDP. Tested on CPU with two processes;
FSDP / ZeRO sharding is not wired in for this stage (generation would need the full parameters
gathered), and an FSDP launch is refused.

**Full or LoRA.** ``finetune: full`` (the paper's) trains every parameter in float32 beside a
bf16 reference: about 18 bytes a parameter, ~160 GB at 8B, more than one GPU holds.
``finetune: lora`` (ours) keeps the stage-2 weights frozen in ``dtype`` and trains ``lora``'s
adapters; the KL reference is the same weights with the adapters switched off
(``disable_adapter``), so no second model is loaded. ``final/`` is then the adapters merged
into the weights, ``adapter/`` the adapters alone. Checkpoints hold the whole model either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import OmegaConf
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, gather_object
from tqdm.auto import tqdm
from transformers import get_scheduler

from cac_align.cac.schema import load_annotations
from cac_align.cac.train.collate import collate
from cac_align.cac.train.data import split_records
from cac_align.cac.train.losses import grpo_loss, token_logprobs
from cac_align.cac.train.rollouts import HFSampler, Rollout, RolloutSampler, SimulatedPolicy, collect_rollouts, placeholder_token_ids
from cac_align.cac.train.settings import TrainCaCConfig
from cac_align.cac.train.setup import add_lora, load_model, run_folder, set_trainable
from cac_align.cac.train.stream import SynthStream, load_stream_synth, stream_steps
from cac_align.config import RecipeError
from cac_align.rl.advantages import group_advantages
from cac_align.run.checkpoints import checkpoints, read_checkpoint_state, save_checkpoint
from cac_align.run.dist import derive_seed, next_setting, per_process, step_indices
from cac_align.run.folder import keep_log_steps, share_modes
from cac_align.cac.infer import write_settings
from cac_align.run.metrics import end_trackers, log_metrics, merge_sums, start_trackers, trackers_for
from cac_align.video import VideoError, load_video
from cac_align.vlm.hf import StaticShapes

__all__ = ["run"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
class _Trainer:
    """State of one run: setup() builds everything, train() is the loop (train_step() one step),
    cleanup() saves the final weights; the same split as flow-grpo's trainer."""

    def __init__(self, config: TrainCaCConfig, sampler: RolloutSampler | None = None):
        self.config = config
        self.sampler = sampler

    # -- setup -----------------------------------------------------------------------
    def setup(self) -> None:
        config, t, grpo = self.config, self.config.train, self.config.grpo
        self.out = Path(config.out_dir)
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise RecipeError(
                "stage 3 runs under data parallel (recipes/accelerate/ddp.yaml), not FSDP: each process generates "
                "its own rollouts and needs the full parameters (docs/cac_training.md, Multi-process)"
            )
        self.accelerator = acc = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision="bf16" if t.bf16 else "no",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            log_with=list(trackers_for(t.log_with, "train.log_with")) or None,  # accelerate's trackers, as flow-grpo's
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "tensorboard")),
        )
        self.videos_per_process = self._videos_per_process(acc.num_processes)
        self.videos_per_step = self.videos_per_process * acc.num_processes

        # 1. data: the stage-3 split (every process computes the same one), or a stream of
        # videos rendered on the fly (each step new ones)
        describe = self._data()

        # 2. run folder: checked now by the main process (recorded once the models have
        # loaded), then the newest complete checkpoint
        folder = run_folder(config) if acc.is_main_process else None
        acc.wait_for_everyone()
        found = checkpoints(self.out) if config.resume and self.out.is_dir() else []

        # 3. models. Full (the paper's): the policy in float32 (bf16 autocast when train.bf16:
        # master weights stay float32, so 1e-6 updates are not rounded away), the frozen
        # reference in config.dtype. LoRA: the stage-2 weights frozen in config.dtype with
        # float32 adapters; the reference is those weights, the adapters switched off.
        self.lora = config.finetune == "lora"
        if self.lora:
            model, self.processor = load_model(config)
            if t.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model = add_lora(model, config.lora, t.seed)
        else:
            model, self.processor = load_model(dataclasses.replace(config, dtype="float32"))
            set_trainable(model, config)
            if t.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference = None
        if grpo.beta > 0 and not self.lora:
            self.reference, _ = load_model(config)
            self.reference.requires_grad_(False).eval().to(acc.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
        updates = self.total_steps * grpo.iterations
        self.scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=round(t.warmup_ratio * updates), num_training_steps=updates)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.register_for_checkpointing(self.scheduler)
        policy = acc.unwrap_model(self.model)
        if self.sampler is None:
            if grpo.sampler == "hf":
                static = None if grpo.cache == "dynamic" else StaticShapes(grpo.generation_batch_size, grpo.batch_buckets, grpo.length_multiple, auto=grpo.cache == "auto")
                self.sampler = HFSampler(policy, self.processor, grpo.temperature, grpo.generation_batch_size, acc.autocast, static)
            else:
                self.sampler = SimulatedPolicy(self.processor.tokenizer, grpo.simulated_noise)
        if folder is not None:  # the models loaded: record the run (a failed start leaves no record)
            folder.start()
            (self.out / "data.json").write_text(json.dumps(describe, indent=1))
        acc.wait_for_everyone()

        # 4. resume: model, optimizer, scheduler and RNG state; the logs lose later steps
        self.start_step = 0
        if found:
            acc.load_state(str(found[-1]))
            self.start_step = read_checkpoint_state(found[-1])["step"]
            if acc.is_main_process:
                for name in ("metrics.jsonl", "rollouts.jsonl"):
                    keep_log_steps(self.out / name, self.start_step)
                log.info("train-cac stage 3: resuming from %s (step %d)", found[-1], self.start_step)
        acc.wait_for_everyone()
        # tensorboard/train_cac_stage3/ and/or wandb/ (main process); a resumed run's TensorBoard drops the
        # stopped run's steps after its checkpoint (purge_step), as metrics.jsonl does above
        start_trackers(acc, t.log_with, "train_cac_stage3", self.out.name, self.out, OmegaConf.to_container(OmegaConf.structured(config), resolve=True),
                       resume_step=self.start_step)
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.suppressed = placeholder_token_ids(self.processor)

    def _videos_per_process(self, processes: int) -> int:
        t, grpo = self.config.train, self.config.grpo
        if grpo.videos_per_step is not None:  # the global intent, split over the processes here
            nearest = next_setting(grpo.videos_per_step, lambda videos: videos % processes == 0)
            return per_process(grpo.videos_per_step, processes, "grpo.videos_per_step",
                               f"set grpo.videos_per_step={nearest} (a video's group of rollouts stays on one process)")
        rollouts = t.per_device_batch_size * t.gradient_accumulation_steps
        if rollouts % grpo.group_size:
            raise RecipeError(
                f"train.per_device_batch_size x train.gradient_accumulation_steps = {rollouts} rollouts per process "
                f"must be a multiple of grpo.group_size = {grpo.group_size} (a video's group stays on one process)"
            )
        return rollouts // grpo.group_size

    def _data(self) -> dict:
        """Set the video pool, ``fetch(index) -> (record, video)`` and the number of steps;
        returns what ``data.json`` records."""
        config, t = self.config, self.config.train
        if config.stream is not None:
            self.total_steps = stream_steps(t)
            stream = SynthStream(load_stream_synth(config.stream, n=self.total_steps * self.videos_per_step))
            self.pool = list(range(len(stream)))
            self.fetch: Callable[[int], tuple[Any, Any]] = lambda index: (stream.record(index), stream.video(index))
            return {"stage": 3, "stream": dataclasses.asdict(config.stream), "videos": len(self.pool)}
        records = load_annotations(config.annotations).records
        self.pool = split_records(records, config.data.splits, config.data.seed)["stage3"]
        if not self.pool:
            raise RecipeError(f"{config.annotations}: the stage3 split is empty; give data.splits.stage3 a share of the videos")
        self.total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_epochs * len(self.pool) / self.videos_per_step)
        self.fetch = lambda index: (records[index], load_video(str(records[index].video)))
        return {"stage": 3, "stage3_records": self.pool, "videos": [str(records[i].video) for i in self.pool]}

    # -- the loop ----------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        t, acc = self.config.train, self.accelerator
        metrics: dict[str, float] = {}
        progress = tqdm(total=self.total_steps, initial=self.start_step, desc="stage 3 GRPO", disable=not acc.is_main_process)
        for step in range(self.start_step, self.total_steps):
            metrics, summaries = self.train_step(step)
            done = step + 1
            log_metrics(acc, self.out, done, metrics, trackers=t.log_with != "none")
            if acc.is_main_process and summaries:
                with (self.out / "rollouts.jsonl").open("a") as handle:
                    handle.writelines(json.dumps(s) + "\n" for s in summaries)
            if t.save_steps and (done % t.save_steps == 0 or done == self.total_steps):  # 0: no checkpoint
                save_checkpoint(acc, self.out, done, lambda folder: acc.save_state(str(folder)), {}, t.save_total_limit)
            progress.update(1)
            progress.set_postfix(reward=f"{metrics.get('reward/total', math.nan):.3f}", kl=f"{metrics.get('kl', 0.0):.2e}")
        progress.close()
        return metrics

    def train_step(self, step: int) -> tuple[dict[str, float], list[dict]]:
        """One step; returns the gathered metrics and the rollout summaries (main process)."""
        config, t, grpo, acc = self.config, self.config.train, self.config.grpo, self.accelerator
        rank = acc.process_index
        began = time.perf_counter()

        # 1. the step's videos; this process's share (a video's G rollouts stay together)
        positions = step_indices(len(self.pool), self.videos_per_step, step, (t.seed, 3))
        videos, failed = [], 0
        for position in positions[rank * self.videos_per_process : (rank + 1) * self.videos_per_process]:
            index = self.pool[position]
            try:
                videos.append((index, *self.fetch(index)))
            except VideoError as exc:
                failed += 1
                log.warning("train-cac stage 3: skipping video %s: %s", index, exc)

        # 2. G two-turn rollouts per video, scored
        rollouts = collect_rollouts(videos, self.sampler, self.processor, config, derive_seed(t.seed, step, rank)) if videos else []
        generated_at = time.perf_counter()

        # 3. advantages within each video's group
        advantages = group_advantages([r.reward.total for r in rollouts], [r.group for r in rollouts], eps=grpo.advantage_eps)
        for rollout, advantage in zip(rollouts, advantages.advantages):
            rollout.advantage = float(advantage)

        # 4. train: micro-batches of per_device_batch_size rollouts, grpo.iterations updates
        local = self._update(rollouts)

        # 5. every process's numbers, merged on the main process
        local.update(_rollout_stats(rollouts))
        local["zero_std_fraction"] = (advantages.zero_std_fraction * advantages.num_groups, float(advantages.num_groups))
        local["videos_failed"] = (float(failed), 1.0)
        if acc.num_processes > 1:  # DDP keeps replicas identical; a spread above 0 means they diverged
            with torch.no_grad():
                local["_param_fingerprint"] = (sum(float(p.double().sum()) for p in self.model.parameters()), 1.0)
        gathered = gather_object([local])
        summaries = gather_object([r.summary() | {"step": step + 1} for r in rollouts]) if grpo.save_rollouts else []
        metrics = _merge(gathered)
        metrics.update(
            learning_rate=self.scheduler.get_last_lr()[0],
            time_generation_s=generated_at - began,
            time_train_s=time.perf_counter() - generated_at,
        )
        return metrics, summaries

    def _update(self, rollouts: list[Rollout]) -> dict[str, tuple[float, float]]:
        """Step 4: the loss over ``rollouts`` and ``grpo.iterations`` AdamW updates; returns
        this process's ``{name: (sum, count)}`` numbers."""
        t, grpo, acc = self.config.train, self.config.grpo, self.accelerator
        model = self.model
        batches = [rollouts[i : i + t.per_device_batch_size] for i in range(0, len(rollouts), t.per_device_batch_size)]
        # kept on the CPU and moved per micro-batch: a step's pixels can be GBs
        encoded = [collate([r.sequence for r in b], self.pad_id) for b in batches]

        def on_device(batch: dict) -> dict:
            return {k: v.to(acc.device) for k, v in batch.items()}

        refs, olds = [], []
        with_reference = grpo.beta > 0
        with torch.no_grad(), acc.autocast():
            for batch in encoded:
                if with_reference or grpo.iterations > 1:
                    inputs = on_device(batch)
                if self.reference is not None:
                    refs.append(token_logprobs(self.reference, inputs, grpo.temperature, self.suppressed)[0])
                elif with_reference:  # LoRA: the frozen weights under the adapters are the reference
                    policy = acc.unwrap_model(model)
                    with policy.disable_adapter():
                        refs.append(token_logprobs(policy, inputs, grpo.temperature, self.suppressed)[0])
                if grpo.iterations > 1:
                    olds.append(token_logprobs(model, inputs, grpo.temperature, self.suppressed)[0])
        token_stats = {"kl": 0.0, "clipped": 0.0, "ratio": 0.0, "tokens": 0.0}
        loss_sum, grad_norm, sampler_diff = 0.0, 0.0, 0.0
        model.train()
        for iteration in range(grpo.iterations):
            for i, (b, batch) in enumerate(zip(batches, encoded)):
                # gradients are all-reduced once per update, on its last backward
                sync = acc.no_sync(model) if i < len(batches) - 1 else nullcontext()
                with sync, acc.autocast():
                    logp, mask = token_logprobs(model, on_device(batch), grpo.temperature, self.suppressed)
                    old = olds[i] if olds else logp.detach()
                    adv = torch.tensor([r.advantage for r in b], device=logp.device)
                    per_rollout, stats = grpo_loss(logp, old, refs[i] if refs else None, adv, mask, grpo.clip_epsilon, grpo.beta)
                    loss = per_rollout.sum() / len(rollouts)
                    acc.backward(loss)
                loss_sum += float(loss.detach())
                if iteration == 0:
                    for key in token_stats:
                        token_stats[key] += stats[key]
                    sampler_diff = max(sampler_diff, _sampler_difference(b, logp.detach(), mask))
            if not batches:  # every video failed: still take part in the gradient all-reduce
                acc.backward(sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad))
            grad_norm = float(acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], t.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        out = {
            "kl": (token_stats["kl"], token_stats["tokens"]),
            "clip_fraction": (token_stats["clipped"], token_stats["tokens"]),
            "ratio_mean": (token_stats["ratio"], token_stats["tokens"]),
            "loss": (loss_sum / grpo.iterations, 1.0),
            "grad_norm": (grad_norm, 1.0),
        }
        if any(r.turn1_logprobs is not None or r.turn2_logprobs is not None for r in rollouts):
            out["_sampler_logprob_max_abs_diff"] = (sampler_diff, 1.0)
        return out

    # -- the end -----------------------------------------------------------------------
    def cleanup(self) -> None:
        """Final weights in ``config.dtype`` (``final/``) with their ``cac_align.json``; with LoRA,
        also the adapter (``adapter/``), merged into the weights for ``final/``."""
        acc = self.accelerator
        if acc.is_main_process:
            final = self.out / "final"
            dtype = getattr(torch, self.config.dtype)
            unwrapped = acc.unwrap_model(self.model)
            if self.lora:
                unwrapped.save_pretrained(str(self.out / "adapter"), safe_serialization=True)
                share_modes(self.out / "adapter")
                unwrapped = unwrapped.merge_and_unload()
            state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in unwrapped.state_dict().items()}
            unwrapped.save_pretrained(str(final), state_dict=state, safe_serialization=True)
            self.processor.save_pretrained(str(final))
            # how to ask it: the data section's settings and the larger of the turns' token budgets
            grpo = self.config.grpo
            write_settings(final, {**self.config.data.inference_settings(), "max_new_tokens": max(grpo.max_new_tokens_turn1, grpo.max_new_tokens_turn2)})
            share_modes(final)  # safetensors writes 0600 files
            print(f"train-cac stage 3: done; model in {final}")  # the result line, as stages 1-2 and the other jobs print theirs
        acc.wait_for_everyone()
        end_trackers(acc)


def run(config: TrainCaCConfig, sampler: RolloutSampler | None = None) -> dict:
    """Train stage 3 (module docstring); returns the last step's metrics (also in ``metrics.jsonl``).

    Args:
        config: a train-cac config with ``stage: 3``.
        sampler: overrides ``config.grpo.sampler`` (any object with ``generate(requests, seed)``).
    """
    trainer = _Trainer(config, sampler)
    trainer.setup()
    metrics = trainer.train()
    trainer.cleanup()
    return metrics


def _merge(gathered: list[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Every process's ``{name: (sum, count)}`` as the step's metrics: means, except the failed
    videos (a total), the sampler difference (the largest), the parameter checksum's spread over
    processes and the reward's std (from its mean square)."""
    metrics = merge_sums([{k: v for k, v in part.items() if not k.startswith("_")} for part in gathered])
    metrics["videos_failed"] *= len(gathered)  # a per-process count: the mean times the processes
    metrics["grad_norm"] = gathered[0]["grad_norm"][0]  # the same on every process (all-reduced gradients)
    diffs = [part["_sampler_logprob_max_abs_diff"][0] for part in gathered if "_sampler_logprob_max_abs_diff" in part]
    if diffs:
        metrics["sampler_logprob_max_abs_diff"] = max(diffs)
    prints = [part["_param_fingerprint"][0] for part in gathered if "_param_fingerprint" in part]
    if prints:
        metrics["process_param_spread"] = max(prints) - min(prints)
    mean = metrics.get("reward/total", math.nan)
    if "reward/total_sq" in metrics:
        metrics["reward/total_std"] = math.sqrt(max(0.0, metrics.pop("reward/total_sq") - mean**2))
    return metrics


def _rollout_stats(rollouts: list[Rollout]) -> dict[str, tuple[float, float]]:
    n = float(len(rollouts))
    stats: dict[str, tuple[float, float]] = {}
    for name in ("total", "format", "status", "type_iou", "temporal_iou", "spatial_iou"):
        stats[f"reward/{name}"] = (sum(getattr(r.reward, name) for r in rollouts), n)
    stats["reward/total_sq"] = (sum(r.reward.total**2 for r in rollouts), n)
    reached = [r for r in rollouts if r.turn2_ids is not None]
    stats["turn2_fraction"] = (float(len(reached)), n)
    stats["window_s"] = (sum(r.window_s[1] - r.window_s[0] for r in reached), float(len(reached)))
    stats["response_length/turn1"] = (float(sum(len(r.turn1_ids) for r in rollouts)), n)
    stats["response_length/turn2"] = (float(sum(len(r.turn2_ids) for r in reached)), float(len(reached)))
    stats["turn1_valid_json_fraction"] = (float(sum(r.turn1_valid_json for r in rollouts)), n)
    stats["status_accuracy"] = (float(sum(r.reward.status == 0 for r in rollouts)), n)
    stats["truncated_fraction"] = (float(sum(r.truncated for r in rollouts)), n)
    return stats


def _sampler_difference(batch: list[Rollout], logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest |recomputed − sampled| log-prob over the batch's generated tokens, for the turns
    whose sampler reported log-probs (0 when none did)."""
    worst = 0.0
    for row, rollout in enumerate(batch):
        recomputed = logp[row][mask[row]].float().cpu().numpy()
        split = len(rollout.turn1_ids)
        for sampled, part in ((rollout.turn1_logprobs, recomputed[:split]), (rollout.turn2_logprobs, recomputed[split:])):
            if sampled is None:
                continue
            if len(sampled) != len(part):
                raise RuntimeError(f"a rollout turn has {len(sampled)} sampled tokens but {len(part)} labelled ones")
            if len(part):
                worst = max(worst, float(np.abs(part - np.asarray(sampled, dtype=np.float64)).max()))
    return worst
