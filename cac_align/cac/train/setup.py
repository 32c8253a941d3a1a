"""The setup step both ``train-cac`` trainers share (stages 1-2 in :mod:`~cac_align.jobs.train_cac`,
stage 3 in :mod:`~cac_align.jobs.train_cac_grpo`): the model to train, its LoRA or trainable
parameters, the run folder and the FSDP check.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cac_align.cac.train.settings import RUN_ONLY_KEYS, LoraSettings, TrainCaCConfig

__all__ = ["SMALL_VLM", "TRAIN_CAC_OUTPUTS", "add_lora", "build_demo_start", "check_sharding", "demo_corpus", "load_model", "run_folder",
           "set_trainable"]

log = logging.getLogger(__name__)


def add_lora(model: Any, lora: LoraSettings, seed: int) -> Any:
    """``model`` as a peft model with ``lora``'s adapters (the only trainable parameters; peft
    keeps them in float32 over a bf16 base)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA A matrices are random: seeded for reproducible runs
    target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target, bias="none")
    return get_peft_model(model, config)


def demo_corpus() -> list[str]:
    """What the small model reads and writes: CaC prompts in both wordings (with the synthetic
    scenes' captions), the answer schema, type names and the synthetic generator's reasons."""
    import json

    from cac_align.cac.prompts import frame_prompt, no_cot_prompt, single_turn_prompt, turn1_prompt, turn2_prompt
    from cac_align.cac.train.targets import checklist_cot
    from cac_align.data.synthetic import REASONS, WORDS

    texts: list[str] = []
    for word in WORDS:
        caption = f"A ball rolls along the floor past a '{word}' sign while a person walks by."
        for style in ("compact", "full"):
            texts += [
                turn1_prompt(5.0, 4.0, 20, caption, style=style),
                turn2_prompt((1.25, 2.5), 8.0, 8, style=style),
                frame_prompt(caption, style=style),
                single_turn_prompt(5.0, 4.0, 20, caption, style=style),
                no_cot_prompt(5.0, 4.0, 20, caption, style=style),
            ]
    for kind, (reason, region) in REASONS.items():
        anomaly = {"Attributed Time Region": "3-5", "Attributed Label": kind, "Reason for Anomaly": reason, "Problem Region": region,
                   "BBOX": {"Frame 0": [12, 345, 678, 901]}}
        texts.append(json.dumps({"COT": checklist_cot("video"), "status": "abnormal", "anomalies": [anomaly]}))
    texts += [json.dumps({"COT": checklist_cot(scope), "status": "normal", "anomalies": []}) for scope in ("video", "clip", "frame")]
    return texts


def build_demo_start(seed: int = 0) -> Any:
    """``tiny-random:qwen3_vl_small``: the small Qwen3-VL (:func:`cac_align.vlm.tiny.build_small_qwen3_vl`) whose
    tokenizer learned :func:`demo_corpus`, random weights from ``seed``; cac-demo's starting point."""
    from cac_align.vlm.tiny import build_small_qwen3_vl

    return build_small_qwen3_vl(seed, demo_corpus())


# the tiny VLM train-cac knows beside those of cac_align.vlm.tiny (``make-tiny`` builds it too)
SMALL_VLM = {"qwen3_vl_small": build_demo_start}


def set_trainable(model: Any, config: TrainCaCConfig) -> None:
    """Full fine-tuning: every parameter trains, except the vision tower with ``freeze_vision``."""
    model.requires_grad_(True)
    if config.freeze_vision:
        getattr(model, "model", model).visual.requires_grad_(False)


def load_model(config: TrainCaCConfig) -> tuple[Any, Any]:
    """(model on the CPU, processor) from ``config.model``; the Trainer places the model."""
    from cac_align.vlm.config import TINY_PREFIX, build_tiny_vlm

    if config.model.startswith(TINY_PREFIX):
        # qwen3_vl: the code-path model, the same weights scoring builds; qwen3_vl_small (~9M
        # parameters) is trained from scratch, initialised with the run's seed
        seed = config.train.seed if config.model == f"{TINY_PREFIX}qwen3_vl_small" else 0
        built = build_tiny_vlm(config.model, "model", seed, kinds=("qwen3_vl", "qwen3_vl_small"), extra=SMALL_VLM)
        return built.model, built.processor
    from cac_align.vlm.hf import load_vlm

    return load_vlm(
        config.model,
        dtype=config.dtype,
        device="cpu",
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
        key="model",
    )


TRAIN_CAC_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "wandb", "data.json", "adapter", "final", "rollouts.jsonl")


def run_folder(config: TrainCaCConfig) -> Any:
    """The run folder (:class:`~cac_align.run.folder.RunFolder`, docs/run_folders.md): another job's
    folder, another config without ``overwrite`` and files of the user's where outputs go are
    refused; a run of this config needs ``resume=true`` (continue) or ``overwrite=true``
    (replace its outputs, nothing else). Checked by the main process."""
    from omegaconf import OmegaConf

    from cac_align.config import RecipeError
    from cac_align.run.folder import RunFolder, config_fingerprint

    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    folder = RunFolder(
        config.out_dir, "train-cac", TRAIN_CAC_OUTPUTS, config_fingerprint(config, RUN_ONLY_KEYS), resolved, overwrite=config.overwrite
    )
    if folder.resuming and not config.resume:
        raise RecipeError(f"{folder.path} already holds a train-cac run; pass resume=true to continue it or overwrite=true to start again")
    if config.resume and not folder.resuming:
        log.warning("resume=true but %s holds no train-cac run yet: starting from step 0", folder.path)
    return folder


def check_sharding(distributed_type: Any, environ: Any = None) -> str | None:
    """The warning, logged by each process, when an accelerate config asks for FSDP (``accelerate launch``
    sets ``ACCELERATE_USE_FSDP=true``) and accelerate did not turn it on: accelerate (1.15) shards
    only on GPUs and similar devices, so on a CPU-only machine the same config runs as plain data
    parallel, each process holding the whole model and its optimizer state. Returns the message
    (None when there is nothing to say)."""
    environ = os.environ if environ is None else environ
    if str(environ.get("ACCELERATE_USE_FSDP", "false")).lower() != "true" or str(distributed_type).endswith("FSDP"):
        return None
    message = (
        f"the accelerate config asks for FSDP but accelerate runs {str(distributed_type).rsplit('.', 1)[-1]}: nothing is sharded, "
        "every process holds the whole model and its optimizer state (accelerate enables FSDP only on GPUs and similar devices)"
    )
    log.warning(message)
    return message
