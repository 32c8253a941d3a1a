"""Prompt sets a recipe names instead of a file: VBench's suite, read from the installed ``vbench``
wheel (``vbench/VBench_full_info.json``: 946 entries, each prompt with the VBench dimensions it
serves), with a seeded held-out split for evaluation.

A ``prompts`` (or ``eval_prompts``) value ``vbench[:<dimension>][:<part>]`` names it:

- ``vbench``: the training part of all 944 distinct prompts (two prompts appear twice in the file,
  under different dimensions: each is one prompt here, with both entries' dimensions);
- ``vbench:<dimension>`` (``vbench:human_action``): the training part of that dimension's prompts;
- ``...:heldout``: the held-out part instead (``vbench:heldout``, ``vbench:scene:heldout``): the
  evaluation prompts, which the training part never holds;
- ``...:all``: both parts (e.g. Best-of-N over a whole dimension).

The split is by prompt, not by position: a prompt is held out when the first 8 bytes of
``sha256("<SPLIT_SEED>:<prompt>")``, read as a fraction of 2**64, fall below
:data:`HELDOUT_FRACTION` (0.1). So it is the same for every dimension (a held-out prompt is held
out wherever it appears) and for every vbench version that keeps the prompt. The paper's own 240
training prompts are not published; this is a start, not them.

Standard library only (the package is located, not imported: importing vbench pulls its models'
code in).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from cac_align.config import RecipeError

__all__ = ["HELDOUT_FRACTION", "PARTS", "SPLIT_SEED", "is_prompt_set", "is_heldout", "vbench_info", "vbench_prompts"]

HELDOUT_FRACTION = 0.1  # a tenth of the prompts are held out for evaluation
SPLIT_SEED = 0  # the split's seed: part of the hashed text, fixed so that every run splits alike
PARTS = ("train", "heldout", "all")
INFO_FILE = "VBench_full_info.json"
INSTALL = "pip install --no-deps -r requirements-vbench.txt (docs/install.md)"


def is_prompt_set(value: object) -> bool:
    """Whether a ``prompts`` value names a prompt set (``vbench`` or ``vbench:...``) rather than a
    file. (A file of that name is still reachable as ``./vbench``.)"""
    return isinstance(value, str) and (value == "vbench" or value.startswith("vbench:"))


def is_heldout(prompt: str, seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether ``prompt`` is in the held-out part: ``sha256(f"{seed}:{prompt}")``'s first 8 bytes,
    as a fraction of 2**64, below ``fraction``."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def vbench_info() -> dict[str, list[str]]:
    """``{prompt: [dimensions]}`` of the installed vbench's suite, in the file's order (a prompt
    listed twice keeps its first place and gets both entries' dimensions).

    Raises:
        RecipeError: vbench is not installed (one line saying how), or its wheel lacks the file.
    """
    try:
        spec = importlib.util.find_spec("vbench")
    except (ImportError, ValueError):  # a parent that fails, or an import blocked in sys.modules
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(f"prompts=vbench reads VBench's prompt suite from the vbench package, which is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / INFO_FILE
    if not path.is_file():
        raise RecipeError(f"prompts=vbench: the installed vbench has no {INFO_FILE} ({path}); install the version docs/install.md names: {INSTALL}")
    info: dict[str, list[str]] = {}
    for entry in json.loads(path.read_text(encoding="utf-8")):
        dimensions = info.setdefault(entry["prompt_en"].strip(), [])
        dimensions.extend(d for d in entry["dimension"] if d not in dimensions)
    return info


def vbench_prompts(name: str) -> list[str]:
    """The prompts ``name`` (``vbench[:<dimension>][:<part>]``, module docstring) names, in the
    suite's order.

    Raises:
        RecipeError: vbench not installed; an unknown dimension or part (one line listing them).
    """
    fields = name.split(":")[1:]
    part = fields.pop() if fields and fields[-1] in PARTS else "train"
    info = vbench_info()
    dimensions = sorted({d for ds in info.values() for d in ds})
    if len(fields) > 1 or (fields and fields[0] not in dimensions):
        asked = ":".join(fields)
        raise RecipeError(f"prompts={name!r}: {asked!r} is not a VBench dimension or part; write vbench[:<dimension>][:{'|'.join(PARTS)}] "
                          f"with a dimension of {', '.join(dimensions)}")
    prompts = [p for p, ds in info.items() if not fields or fields[0] in ds]
    if part == "all":
        return prompts
    return [p for p in prompts if is_heldout(p) == (part == "heldout")]
