"""Export a trained VLM as a compact model folder: half-precision safetensors, processor, settings, card.

The job is ``cac-align export`` (:mod:`cac_align.jobs.export`), e.g. how ``cac-demo`` is shipped::

    cac-align export source=outputs/cac_demo/stage3/final out_dir=cac_align/models/cac-demo \\
        "settings={prompt_style: compact, max_pixels: 24576, size_multiple: 64}" card=card.md

The folder loads through the ordinary ``from_pretrained`` path (any dtype: the weights are
stored as float16 and cast on load). ``cac_align.json`` holds the inference settings the model
was trained with (:func:`cac_align.models.model_settings`), ``README.md`` the model card.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

__all__ = ["export_model", "folder_size"]


def folder_size(path: str | Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def export_model(source: str | Path, target: str | Path, settings: dict[str, Any] | None = None, card: str | None = None, dtype: str = "float16") -> Path:
    """Write ``source`` (a ``save_pretrained`` model + processor folder) to ``target``.

    Args:
        source: the trained model folder (e.g. a train-cac ``final/``).
        target: the folder to write; replaced if it exists (written beside it, then renamed).
        settings: written as ``cac_align.json`` (inference settings, see :mod:`cac_align.models`).
        card: the model card, written as ``README.md``.
        dtype: storage dtype of the weights ("float16" halves the size of float32 weights).

    Returns:
        The target folder.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cac_align.loading import resolve_dtype
    from cac_align.models import write_settings
    from cac_align.run.folder import share_modes

    source, target = Path(source), Path(target)
    staging = target.with_name(target.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    model = AutoModelForImageTextToText.from_pretrained(str(source), dtype=resolve_dtype(dtype), use_safetensors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    AutoProcessor.from_pretrained(str(source)).save_pretrained(str(staging))
    if settings is not None:
        write_settings(staging, settings)
    if card is not None:
        (staging / "README.md").write_text(card)
    share_modes(staging)  # safetensors writes 0600 files
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)
    return target
