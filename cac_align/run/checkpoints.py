"""Complete-or-absent checkpoints: ``checkpoints/step_NNNNNN/`` exists only once whole
(``state.json`` written last, the folder renamed into place), the newest ``keep`` kept.

One format for both GRPO trainers (``flow-grpo`` and CaC's stage 3): accelerate's
``save_state`` inside (models, optimizer, scheduler, each process's RNG state; flow-grpo's hooks
keep its model file to the LoRA) and our ``state.json`` (the step, and what a trainer adds). A
generator trainer sharded with FSDP2 (``parallel.shard: fsdp2``) writes the same LoRA files whole
instead of accelerate's state (:func:`cac_align.gen.lora.save_sharded_lora_checkpoint`), and its
``state.json`` records the layout it resumes on.
Stages 1-2 run under transformers' Trainer and keep its checkpoints (docs/cac_training.md)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cac_align.run.folder import share_modes

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["checkpoints", "read_checkpoint_state", "save_checkpoint"]


def checkpoints(out: str | Path) -> list[Path]:
    """The complete checkpoints of the run in ``out`` (``checkpoints/step_NNNNNN/`` holding
    ``state.json``), oldest first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if (p / "state.json").is_file())


def save_checkpoint(accelerator: Accelerator, out: str | Path, step: int, write: Callable[[Path], None], state: dict, keep: int | None) -> Path:
    """Write checkpoint ``step`` of the run in ``out``; call on every process.

    ``write(folder)`` runs on every process into a temporary folder (accelerate's
    ``save_state`` writes each process's RNG state; a writer with one copy of everything writes
    on the main process only); then the main process adds ``state.json`` (``{"step": step,
    **state}``), renames the folder to ``checkpoints/step_NNNNNN`` and keeps the newest ``keep``.
    A run killed midway leaves only the temporary folder, which resuming ignores.
    """
    root = Path(out) / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    write(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2), encoding="utf-8")
        share_modes(tmp)  # safetensors writes 0600 files
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint folder exists only once it is complete
        if keep:
            for old in checkpoints(out)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_checkpoint_state(folder: str | Path) -> dict:
    """The ``state.json`` of a checkpoint written by :func:`save_checkpoint`."""
    return json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
