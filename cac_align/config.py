"""Recipes: YAML files mapped onto typed dataclass configs, with CLI overrides.

A recipe is a YAML file under ``recipes/`` whose top-level ``job:`` names the job it
configures; every other key belongs to that job's config dataclass. Loading goes

    dataclass defaults  <-  recipe YAML  <-  command-line ``key=value`` overrides

through omegaconf structured configs, so types are checked on every merge. A config class may
name settings that a command line's value of another one turns off (``COMMAND_LINE_WINS``: score's
``videos=`` sets the recipe's demo ``synth_videos`` to 0), so that the command line's intent wins
over a recipe without a second override. Any problem (an
unknown or misspelled key, a wrong type, a required value left unset, an impossible
combination reported by the dataclass's ``__post_init__``) raises :class:`RecipeError`
naming the recipe file and the key, never a bare omegaconf traceback.

The job table (which config class a recipe's ``job:`` names) and :func:`load_recipe` live with
the jobs, in :mod:`cac_align.jobs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import math
import re
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "RecipeError",
    "describe_error",
    "check_finite",
    "relative_path_hint",
    "running_recipe",
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


def describe_error(exc: Exception, where: str, root: Any, *, command_line: bool = False) -> RecipeError:
    """Turn an omegaconf error into a RecipeError that names the recipe and the key
    (``command_line``: the value came from a ``key=value`` override, and a fix is written so)."""
    return RecipeError(f"{where}: {_error_body(exc, root, command_line)}")


def _error_body(exc: Exception, root: Any, command_line: bool = False) -> str:
    """What an omegaconf error says about the key, without naming where the value came from."""
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
            return f"key '{key}' is gone: set '{(parent_key + '.') if parent_key else ''}{now}' ({why})"
        hint = difflib.get_close_matches(leaf, _known_keys(parent), n=1)
        suggestion = f"; did you mean '{(parent_key + '.') if parent_key else ''}{hint[0]}'?" if hint else ""
        known = ", ".join(_known_keys(parent))
        return f"unknown key '{key}'{suggestion} (known keys here: {known})"
    if isinstance(exc, MissingMandatoryValue):
        return f"required key '{key}' has no value; set it in the recipe or pass {key}=..."
    if isinstance(exc, ValidationError):
        mapping = _mapping_example(exc, str(key), root, command_line)
        return mapping or f"wrong type for key '{key}': {msg}"
    return f"key '{key}': {msg}"


def _mapping_example(exc: Exception, key: str, root: Any, command_line: bool) -> str | None:
    """For a mapping key given one value (``predictions=results.jsonl``): how to write a mapping,
    with the config class's example name for it (``EXAMPLE_NAMES``: ``{"predictions": "cac"}``)."""
    from omegaconf import OmegaConf

    value = getattr(exc, "value", None)
    try:
        node = OmegaConf.select(root, key) if OmegaConf.is_config(root) else None
    except Exception:
        node = None
    if not OmegaConf.is_dict(node) or isinstance(value, (dict, list)) or OmegaConf.is_config(value):
        return None
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(root, parent_key) if parent_key else root
    names = getattr(OmegaConf.get_type(parent), "EXAMPLE_NAMES", {}) if OmegaConf.is_config(parent) else {}
    example = f"{{{names.get(leaf, 'NAME')}: {value}}}"
    if command_line:
        return f"key '{key}' takes a mapping of names to values, not {value!r}: write '{key}={example}' (quoted, a space after the colon)"
    return f"key '{key}' takes a mapping of names to values, not {value!r}: write {leaf}: {example}"


# The recipe the running job was configured from (None: defaults and command-line values only),
# set by the CLI around a job (:func:`running_recipe`) so that a "no such file" message speaks of
# recipes only when there is one.
_RUNNING_RECIPE: list[str | None] = [None]


@contextlib.contextmanager
def running_recipe(recipe: str | Path | None):
    """While a job runs: which recipe configured it (``relative_path_hint`` reads it)."""
    previous = _RUNNING_RECIPE[0]
    _RUNNING_RECIPE[0] = None if recipe is None else str(recipe)
    try:
        yield
    finally:
        _RUNNING_RECIPE[0] = previous


def relative_path_hint(path: str | Path) -> str:
    """For a "no such file" message: how a relative path was looked for (in a recipe: also among
    the shipped recipes)."""
    if Path(path).is_absolute():
        return ""
    if _RUNNING_RECIPE[0] is None:
        return f" (a relative path is resolved from the current folder, {Path.cwd()}: run from the folder that holds it, or give an absolute path)"
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
    found = _nonfinite(data, prefix)
    if found is not None:
        raise RecipeError(f"{where}: {found}")


def _nonfinite(data: Any, prefix: str = "") -> str | None:
    """What :func:`check_finite` says of the first number that is not finite, or None."""
    if isinstance(data, dict):
        items = [(f"{prefix}{key}.", value) for key, value in data.items()]
    elif isinstance(data, (list, tuple)):
        items = [(f"{prefix.rstrip('.')}[{i}].", value) for i, value in enumerate(data)]
    elif isinstance(data, float) and not math.isfinite(data):
        return f"key '{prefix.rstrip('.')}' is {data}; every number in a recipe must be finite"
    else:
        return None
    for key, value in items:
        found = _nonfinite(value, key)
        if found is not None:
            return found
    return None


def _merge(base: Any, other: Any, where: str, command_line: bool = False) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise describe_error(exc, where, base, command_line=command_line) from None


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


# `{cac:path}`: YAML's flow mapping needs a space after the colon, or `cac:path` is one key with
# no value. The fix shown: a space after the first colon of each key that follows `{` or `,`, and
# one after each such comma (`{a:1,b:2}` -> `{a: 1, b: 2}`).
_GLUED_COLON = re.compile(r"([{,]\s*)([^:{},\s]+):(?!\s)")


def _glued_key(data: Any) -> str | None:
    """A key of a parsed mapping that holds a colon and no value (``{cac:path}`` read by YAML), or None."""
    if isinstance(data, dict):
        for key, value in data.items():
            if value is None and isinstance(key, str) and ":" in key:
                return key
            found = _glued_key(value)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = _glued_key(value)
            if found is not None:
                return found
    return None


def _parse_overrides(overrides: Sequence[str], where: str = "command line") -> Any:
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise RecipeError(f"{where}: {item!r} must look like key=value")
    try:
        parsed = OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise RecipeError(f"{where}: {list(overrides)}: {exc}") from None
    for item in overrides:
        glued = _glued_key(OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False))
        if glued is not None:
            key, _, value = item.partition("=")
            fixed = _GLUED_COLON.sub(lambda m: ("{" if m.group(1).startswith("{") else ", ") + m.group(2) + ": ", value)
            raise RecipeError(f"{where}: {item!r} reads {glued!r} as a name with no value; put a space after the colon "
                              f"(and quote it): '{key}={fixed}'")
    return parsed


class _Invalid(Exception):
    """A config that does not build; ``body`` says why, without naming where its values came from."""

    def __init__(self, body: str):
        super().__init__(body)
        self.body = body


def _build(merged: Any, recipe: str | Path | None, command_line: bool) -> Any:
    """The config object of ``merged`` (every check run: types, finite numbers, ``__post_init__``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise _Invalid(_error_body(exc, merged, command_line)) from None
    found = _nonfinite(container)
    if found is not None:
        raise _Invalid(found)
    try:
        with running_recipe(recipe):  # a check's "no such file" speaks of recipes only when there is one
            return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _Invalid(_error_body(exc, merged, command_line)) from None
    except (ValueError, TypeError) as exc:  # raised by a config's __post_init__ checks
        raise _Invalid(str(exc)) from None


def _overrides_at_fault(from_recipe: Any, recipe: str | Path, overrides: Sequence[str], body: str) -> bool:
    """Whether a config that fails with ``body`` fails because of the command line: the recipe
    (with only the overrides that give its required keys a value) builds, or fails otherwise."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    def fills_a_required_key(item: str) -> bool:
        try:
            OmegaConf.select(from_recipe, item.partition("=")[0], throw_on_missing=True)
        except MissingMandatoryValue:
            return True
        except Exception:
            return False
        return False

    fillers = [item for item in overrides if fills_a_required_key(item)]
    try:
        base = OmegaConf.merge(from_recipe, OmegaConf.from_dotlist(fillers)) if fillers else from_recipe
        _build(base, recipe, command_line=False)
    except _Invalid as exc:
        return exc.body != body
    except Exception:
        return True
    return True


def _recipe_node(config_cls: type, recipe: str | Path | None, job: str | None) -> Any:
    """``config_cls``'s defaults with the recipe merged over them (a recipe for another job refused)."""
    from omegaconf import OmegaConf

    from_recipe = OmegaConf.structured(config_cls)
    if recipe is not None:
        data = read_recipe_file(Path(recipe))
        recipe_job = data.pop("job", None)
        if job is not None and recipe_job is not None and recipe_job != job:
            raise RecipeError(f"{recipe}: this recipe is for job '{recipe_job}', not '{job}'")
        from_recipe = _merge(from_recipe, data, str(recipe))
    return from_recipe


def _with_overrides(from_recipe: Any, recipe: str | Path | None, overrides: Sequence[str], config_cls: type | None = None) -> Any:
    """The command line's ``key=value`` merged over a recipe's node, errors naming where they came from.
    ``key:=value`` replaces the recipe's value whole instead of merging into it (a section: ``'reward:={name:
    brightness}'`` on a recipe whose reward is a combination, which ``reward={...}`` would merge into).
    ``config_cls``'s ``COMMAND_LINE_WINS`` (module docstring) applies first."""
    command_line = f"{recipe} (command-line override)" if recipe is not None else "command line"
    from_recipe = _command_line_wins(from_recipe, config_cls, overrides)
    replaced = [item for item in overrides if ":=" in item.partition("=")[0] + "="]
    merged = [item for item in overrides if item not in replaced]
    node = _replace(from_recipe, replaced, command_line) if replaced else from_recipe
    return _merge(node, _parse_overrides(merged, command_line), command_line, command_line=True) if merged else node


def _command_line_wins(node: Any, config_cls: type | None, overrides: Sequence[str]) -> Any:
    """``node`` with the settings that ``config_cls.COMMAND_LINE_WINS`` names set, for each key the command line
    gives a value (``{"videos": {"synth_videos": 0}}``: a command line's ``videos=`` turns the recipe's demo off),
    unless the command line sets them too (then both are the user's, and the config's own checks judge them)."""
    from omegaconf import OmegaConf

    wins = getattr(config_cls, "COMMAND_LINE_WINS", None) or {}
    given = {item.partition("=")[0].rstrip(":").strip() for item in overrides}
    resets = {key: value for trigger, settings in wins.items() if trigger in given for key, value in settings.items() if key not in given}
    if not resets:
        return node
    node = node.copy()
    for key, value in resets.items():
        OmegaConf.update(node, key, value, merge=False)
    return node


def _replace(node: Any, items: Sequence[str], where: str) -> Any:
    """``node`` with each ``key:=value`` of ``items`` set whole (not merged), as its type allows."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = node.copy()
    for item in items:
        key, _, value = item.partition(":=")
        if not key or OmegaConf.select(node, key, default=_ABSENT) is _ABSENT:
            parent, _, leaf = key.rpartition(".")
            known = _known_keys(OmegaConf.select(node, parent) if parent else node)
            hint = difflib.get_close_matches(leaf, known, n=1)
            raise RecipeError(f"{where}: {item!r}: no key '{key}' to replace" + (f"; did you mean '{parent + '.' if parent else ''}{hint[0]}'?" if hint else ""))
        parsed = _parse_overrides([f"value={value}"], where).value
        try:
            OmegaConf.update(node, key, parsed, merge=False)
        except OmegaConfBaseException as exc:
            raise describe_error(exc, where, node, command_line=True) from None
    return node


_ABSENT = object()


def merged_config(config_cls: type, recipe: str | Path | None = None, overrides: Sequence[str] = (), job: str | None = None) -> Any:
    """The OmegaConf node of ``config_cls``'s defaults, a recipe and overrides, merged but not
    built: a required key nobody gave is ``???`` and no ``__post_init__`` check has run (what
    ``--print-config`` shows when the config cannot be built yet). Unknown keys and wrong types
    raise :class:`RecipeError` as :func:`load_config` words them."""
    return _with_overrides(_recipe_node(config_cls, recipe, job), recipe, overrides, config_cls)


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
        RecipeError: naming where the bad value came from (the recipe file, ``<recipe>
            (command-line override)``, or ``command line`` when there is no recipe) and the key.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    # where a value came from: the recipe, or the command line (over a recipe, or alone)
    command_line = f"{recipe} (command-line override)" if recipe is not None else "command line"
    from_recipe = _recipe_node(config_cls, recipe, job)
    merged = _with_overrides(from_recipe, recipe, overrides, config_cls)
    try:
        return _build(merged, recipe, command_line=bool(overrides))
    except _Invalid as exc:
        # a check that fails after the merge (a reward section's unknown key, a value out of range)
        # names the command line when the recipe alone passes it
        if recipe is None:
            where = command_line
        elif overrides and _overrides_at_fault(from_recipe, recipe, overrides, exc.body):
            where = command_line
        else:
            where = str(recipe)
        raise RecipeError(f"{where}: {exc.body}{_replace_hint(from_recipe, overrides, exc.body)}") from None


def _replace_hint(from_recipe: Any, overrides: Sequence[str], body: str) -> str:
    """Where an override gave a section of another ``name`` than the recipe's (``reward={name: brightness}``
    over a combined reward), and the error is in that section: how to replace it whole instead of merging."""
    from omegaconf import OmegaConf

    for item in overrides:
        key, _, value = item.partition("=")
        if key.endswith(":") or not value.lstrip().startswith("{") or not body.startswith(key):
            continue
        try:
            given = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"])).get("value")
        except Exception:
            continue
        present = OmegaConf.select(from_recipe, key, default=None)
        if isinstance(given, dict) and OmegaConf.is_dict(present) and given.get("name") not in (None, present.get("name")):
            return f" (the override merged into the recipe's {key}; to replace the section whole, write '{key}:={value}')"
    return ""
