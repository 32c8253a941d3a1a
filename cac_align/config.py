"""Recipes: YAML files mapped onto typed dataclass configs, with CLI overrides.

A recipe is a YAML file under ``recipes/`` whose top-level ``job:`` names the job it
configures; every other key belongs to that job's config dataclass. Loading goes

    dataclass defaults  <-  recipe YAML  <-  command-line ``key=value`` overrides

through omegaconf structured configs, so types are checked on every merge. Any problem (an
unknown or misspelled key, a wrong type, a required value left unset, an impossible
combination reported by the dataclass's ``__post_init__``) raises :class:`RecipeError`
naming the recipe file and the key, never a bare omegaconf traceback.

The job table (which config class a recipe's ``job:`` names) and :func:`load_recipe` live with
the jobs, in :mod:`cac_align.jobs`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "RecipeError",
    "describe_error",
    "check_finite",
    "relative_path_hint",
    "find_recipe",
    "shipped_recipes",
    "SHIPPED_RECIPES",
    "load_config",
    "resolve",
]


class RecipeError(ValueError):
    """A recipe or override is invalid; the message names the file and the key."""


def resolve(dotted: str) -> Any:
    """Import ``"package.module:attribute"`` (or ``"package.module.attribute"``)."""
    module_name, sep, attr = dotted.partition(":")
    if not sep:
        module_name, _, attr = dotted.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:attribute' or 'module.attribute', got {dotted!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} (from {dotted!r}): {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {dotted!r})") from None


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def _known_keys(node: Any) -> list[str]:
    try:
        return [str(k) for k in node.keys()]
    except Exception:
        return []


def describe_error(exc: Exception, where: str, root: Any) -> RecipeError:
    """Turn an omegaconf error into a RecipeError that names the recipe and the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    msg = getattr(exc, "msg", None) or str(exc)
    msg = msg.split("\n")[0]
    if isinstance(exc, ConfigKeyError):
        parent_key, _, leaf = str(key).rpartition(".")
        parent = OmegaConf.select(root, parent_key) if parent_key else root
        moved = getattr(OmegaConf.get_type(parent), "MOVED_KEYS", {}) if OmegaConf.is_config(parent) else {}
        if leaf in moved:  # a key its config class retired ({leaf: (the key now, why)}): name the new one
            now, why = moved[leaf]
            return RecipeError(f"{where}: key '{key}' is gone: set '{(parent_key + '.') if parent_key else ''}{now}' ({why})")
        hint = difflib.get_close_matches(leaf, _known_keys(parent), n=1)
        suggestion = f"; did you mean '{(parent_key + '.') if parent_key else ''}{hint[0]}'?" if hint else ""
        known = ", ".join(_known_keys(parent))
        return RecipeError(f"{where}: unknown key '{key}'{suggestion} (known keys here: {known})")
    if isinstance(exc, MissingMandatoryValue):
        return RecipeError(f"{where}: required key '{key}' has no value; set it in the recipe or pass {key}=...")
    if isinstance(exc, ValidationError):
        return RecipeError(f"{where}: wrong type for key '{key}': {msg}")
    return RecipeError(f"{where}: key '{key}': {msg}")


def relative_path_hint(path: str | Path) -> str:
    """For a "no such file" message: how a relative path in a recipe was looked for."""
    if Path(path).is_absolute():
        return ""
    return (
        f" (relative paths in recipes are resolved from the current folder, {Path.cwd()}, and a path under recipes/ "
        "from the shipped recipes when the current folder has no such file: run from the folder the recipe was "
        "written for, or give an absolute path)"
    )


# The shipped recipes: package data, so they are found from any folder (`recipes/` at the
# repository root links here).
SHIPPED_RECIPES = Path(__file__).resolve().parent / "recipes"
_SHIPPED_PREFIX = "recipes/"


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes (``score/cac_demo``, ...), sorted: every YAML under
    :data:`SHIPPED_RECIPES` but accelerate's launch configs (``accelerate/``)."""
    return sorted(str(p.relative_to(SHIPPED_RECIPES).with_suffix("")) for p in SHIPPED_RECIPES.rglob("*.yaml") if p.parent.name != "accelerate")


def find_recipe(recipe: str | Path) -> Path:
    """A recipe file: the path as given when it exists, else the shipped recipe of that name,
    from any folder: ``score/cac_demo``, ``score/cac_demo.yaml`` or ``recipes/score/cac_demo.yaml``.

    Raises:
        RecipeError: neither, naming the closest shipped names.
    """
    import difflib

    path = Path(recipe)
    if path.is_file():
        return path
    name = str(recipe)
    name = name[len(_SHIPPED_PREFIX):] if name.startswith(_SHIPPED_PREFIX) else name
    for candidate in (SHIPPED_RECIPES / name, SHIPPED_RECIPES / f"{name}.yaml"):
        if not path.is_absolute() and candidate.is_file():
            return candidate
    close = difflib.get_close_matches(name.removesuffix(".yaml"), shipped_recipes(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RecipeError(f"recipe not found: {recipe} (no such file from {Path.cwd()}, and no shipped recipe of that name{hint}; "
                      "`cac-align recipes` lists them)")


def resolve_shipped_paths(data: Any) -> Any:
    """A recipe's relative paths under ``recipes/`` (a prompt list, a synth recipe) that the
    current folder lacks, pointed at the shipped recipes: a shipped recipe (or a copy of one,
    ``cac-align recipes cp``) then runs from any folder. Every other value is left as it is:
    other relative paths resolve from the current folder, as ever."""
    if isinstance(data, dict):
        return {key: resolve_shipped_paths(value) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve_shipped_paths(value) for value in data]
    if isinstance(data, str) and data.startswith(_SHIPPED_PREFIX) and not Path(data).exists():
        shipped = SHIPPED_RECIPES / data[len(_SHIPPED_PREFIX):]
        if shipped.exists():
            return str(shipped)
    return data


def check_finite(data: Any, where: str, prefix: str = "") -> None:
    """Every number in a recipe is finite: ``nan`` or ``inf`` anywhere (a float setting, a list,
    a nested reward section) is a :class:`RecipeError` naming the key. One rule for all keys, so
    no setting silently takes NaN (which compares false with everything) or infinity.
    Missing values (``???``) are skipped: their own error names them."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_finite(value, where, f"{prefix}{key}.")
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_finite(value, where, f"{prefix.rstrip('.')}[{i}].")
    elif isinstance(data, float) and not math.isfinite(data):
        raise RecipeError(f"{where}: key '{prefix.rstrip('.')}' is {data}; every number in a recipe must be finite")


def _merge(base: Any, other: Any, where: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise describe_error(exc, where, base) from None


def read_recipe_file(path: Path) -> dict:
    """A recipe's keys (:func:`find_recipe`: a file, or a shipped recipe by name), with its
    shipped paths resolved (:func:`resolve_shipped_paths`)."""
    import yaml
    from omegaconf import OmegaConf

    path = find_recipe(path)
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    container = OmegaConf.to_container(node, resolve=False)
    if container is None:
        return {}
    if not isinstance(container, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got {type(container).__name__}")
    return resolve_shipped_paths(container)


def _parse_overrides(overrides: Sequence[str]) -> Any:
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise RecipeError(f"command-line override {item!r} must look like key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise RecipeError(f"command-line overrides {list(overrides)}: {exc}") from None


def load_config(
    config_cls: type,
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    job: str | None = None,
) -> Any:
    """Build a ``config_cls`` instance from defaults, a recipe file and overrides.

    Args:
        config_cls: a dataclass type whose fields are the recipe's keys.
        recipe: YAML file path, or None for defaults + overrides only.
        overrides: ``key=value`` strings (dotted keys for nested configs).
        job: if given, a recipe's ``job:`` must match it.

    Returns:
        An instance of ``config_cls`` (nested dataclasses instantiated).

    Raises:
        RecipeError: naming the recipe file (or "command line") and the offending key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    where = str(recipe) if recipe is not None else "defaults"
    schema = OmegaConf.structured(config_cls)
    merged = schema
    if recipe is not None:
        data = read_recipe_file(Path(recipe))
        recipe_job = data.pop("job", None)
        if job is not None and recipe_job is not None and recipe_job != job:
            raise RecipeError(f"{recipe}: this recipe is for job '{recipe_job}', not '{job}'")
        merged = _merge(merged, data, str(recipe))
    if overrides:
        merged = _merge(merged, _parse_overrides(overrides), f"{where} (command-line override)")
    try:
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise describe_error(exc, where, merged) from None
    check_finite(container, where)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise describe_error(exc, where, merged) from None
    except (ValueError, TypeError) as exc:  # raised by a config's __post_init__ checks
        raise RecipeError(f"{where}: {exc}") from None
