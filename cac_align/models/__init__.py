"""Models shipped inside the package, loaded by a short built-in name.

``cac-demo`` is a ~9M-parameter Qwen3-VL trained from scratch by CaC's three stages on the
synthetic cartoons of :mod:`cac_align.data.synthetic` (its model card is
``cac_align/models/cac-demo/README.md``). It judges those scenes, not real generated videos.
A recipe names it like any checkpoint (``reward.model.name: cac-demo``); it loads through the
ordinary ``from_pretrained`` path from the package folder, so nothing is downloaded.

A model folder may carry ``cac_align.json``: the inference settings it was trained with
(prompt wording, both turns' frame rates and caps, token budget, pixel cap and grid), which CaC
scoring uses wherever the model is loaded, unless the recipe or caller sets them
(:meth:`cac_align.cac.infer.CaCOptions.for_model`). ``train-cac`` writes it into its ``final/``
(:func:`cac_align.cac.infer.write_settings`) and ``cac-align export`` carries it over (and may add to
it). This module reads; it imports nothing of the package, so everything may ask it where a model is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_MODELS", "SETTINGS_FILE", "builtin_path", "model_settings", "resolve_model_name"]

_HERE = Path(__file__).resolve().parent
BUILTIN_MODELS = {"cac-demo": "cac-demo"}  # name -> folder under cac_align/models/
SETTINGS_FILE = "cac_align.json"
# the keys a cac_align.json may hold: cac_align.cac.infer's MODEL_SETTINGS (how to ask the model)
# and LOAD_SETTINGS (how to load it: its compute dtype)


def builtin_path(name: str) -> Path | None:
    """The folder of a built-in model name, or None for any other name."""
    folder = BUILTIN_MODELS.get(name)
    return _HERE / folder if folder is not None else None


def resolve_model_name(name: str) -> str:
    """A built-in name's folder (as a string); any other name unchanged."""
    path = builtin_path(name)
    return str(path) if path is not None else name


def model_settings(name: str) -> dict[str, Any]:
    """The ``cac_align.json`` settings of a built-in name or local model folder ({} if none)."""
    path = Path(resolve_model_name(name)).expanduser() / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
