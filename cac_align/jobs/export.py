"""``cac-align export``: a trained judge as a compact model folder others load by path.

    cac-align export source=outputs/my_cac/stage3/final out_dir=models/my-cac \\
        "settings={max_frames_turn2: 8}" card=card.md

The folder holds the weights as safetensors in ``dtype`` (float16 halves float32 weights; they
are cast back on load), the processor, ``cac_align.json`` (the inference settings the model was
trained with: the source's own, which train-cac writes, with ``settings`` over them; CaC scoring
takes them wherever the model is loaded, unless a recipe sets them:
:meth:`cac_align.cac.infer.CaCOptions.for_model`) and the model card as ``README.md``. It loads
through the ordinary ``from_pretrained`` path (``reward.model.name: models/my-cac``). The folder is
written beside ``out_dir`` and renamed into place, replacing what was there
(:func:`export_model`); this is how ``cac-demo`` is shipped
(``benchmarks/judge/reproduce_cac_demo.sh``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from cac_align.config import RecipeError

__all__ = ["ExportConfig", "export_model", "folder_size", "run"]


@dataclass
class ExportConfig:
    """Config of ``cac-align export``.

    Attributes:
        source: a trained model folder (``save_pretrained`` model + processor, e.g. a train-cac
            run's ``final/``).
        out_dir: the model folder to write (replaced if it exists).
        settings: inference settings written to ``cac_align.json``
            (:data:`~cac_align.cac.infer.MODEL_SETTINGS`' keys), over those the source folder's own
            ``cac_align.json`` holds (``train-cac`` writes one); neither: no file, scoring uses
            its defaults.
        card: a markdown file, written as the folder's ``README.md`` (the model card).
        dtype: storage dtype of the weights.
    """

    source: str = MISSING
    out_dir: str = MISSING
    settings: Optional[dict[str, Any]] = None
    card: Optional[str] = None
    dtype: str = "float16"


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
    from cac_align.cac.infer import write_settings
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


def run(config: ExportConfig) -> Path:
    from cac_align.cac.infer import CaCOptions
    from cac_align.loading import check_dtype, check_weights_source
    from cac_align.models import model_settings

    # 1. check what is asked before writing anything: the source, the settings, the card, the dtype
    source = check_weights_source(config.source, "source")
    try:
        carried = model_settings(str(source))  # what training wrote into the folder
    except ValueError as exc:
        raise RecipeError(f"source={config.source!r}: {exc}") from None
    settings = {**carried, **dict(config.settings)} if config.settings is not None else (carried or None)
    if settings is not None:
        try:
            CaCOptions().for_model(settings)  # scoring's own reading of the file: unknown keys refused
        except ValueError as exc:
            raise RecipeError(f"settings: {exc}".replace("cac_align.json: ", "")) from None
    card = None
    if config.card is not None:
        if not Path(config.card).is_file():
            raise RecipeError(f"card={config.card!r}: no such file")
        card = Path(config.card).read_text(encoding="utf-8")
    check_dtype(config.dtype, "dtype")
    # 2. write the folder beside out_dir, then rename it into place
    out = export_model(source, config.out_dir, settings, card, config.dtype)
    print(f"exported {config.source} -> {out} ({folder_size(out) / 1e6:.1f} MB)")
    return out
