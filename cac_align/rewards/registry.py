"""The reward registry: the one table of reward names that every job and integration reads.

A recipe's ``reward:`` section names a reward; :func:`build_reward` builds it::

    reward:
      name: unified_reward        # a registered short name, or "package.module:factory"
      model: {name: CodeGoat24/UnifiedReward-qwen-7b}
      scoring: probs

Each registered reward has a config dataclass, so a misspelled argument is an error naming the
key, found by :func:`reward_config` before any model loads. ``cac-align score``, ``bon``, both
GRPO trainers and every trainer integration (:mod:`cac_align.integrations`) read :data:`REWARDS`;
a reward added with :func:`register_reward` is usable from all of them.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from cac_align.rewards.base import Reward

__all__ = ["REWARDS", "RewardSpec", "build_reward", "load_section", "register_reward", "reward_config", "reward_judges", "reward_names"]


# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardSpec:
    """A registered reward: its config dataclass, ``build(config) -> Reward`` and
    ``judges(config, where, video) -> list[JudgeModel]`` (what a section of it loads, for the
    memory plan: :mod:`cac_align.rewards.judges`; empty: not said)."""

    name: str
    config: str  # "module:ConfigClass"
    build: str  # "module:function"
    help: str = ""
    judges: str = ""  # "module:function"


REWARDS: dict[str, RewardSpec] = {}


def register_reward(name: str, config: str, build: str, help: str = "", judges: str = "") -> None:
    """Register a reward under a short name (config, builder and judges as "module:attr" strings).

    ``judges`` names the function that says which models a section of this reward loads, from its
    typed config, before anything loads (:mod:`cac_align.rewards.judges`): the memory plan of a
    generator trainer counts them. A reward registered without it is counted as unknown.

    A built-in reward calls this at the bottom of its own module in ``cac_align/rewards/``;
    :func:`_discover_builtins` imports every module there, so adding a reward touches its module,
    its recipe and its test, and no table elsewhere. A reward of your own package can call it too
    (then import your module before building), or be named by dotted path without registering.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a reward name is an identifier (a recipe key and a trainer's reward name), got {name!r}")
    known = REWARDS.get(name)
    if known is not None and (known.config, known.build) != (config, build):
        raise ValueError(f"reward name {name!r} is taken by {known.build}; choose another name for {build}")
    REWARDS[name] = RewardSpec(name, config, build, help, judges)


def reward_names() -> list[str]:
    """Every registered reward name, sorted (what ``name:`` and the trainer integrations accept)."""
    return sorted(REWARDS)


def load_section(config_cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Fill ``config_cls`` from a mapping (a recipe section), with errors that name the key.

    Raises:
        ValueError: ``"{where}: unknown key 'x'; did you mean 'y'?"`` and the like (the recipe
            loader adds the file name).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from cac_align.config import check_finite, describe_error

    schema = OmegaConf.structured(config_cls)
    try:
        merged = OmegaConf.merge(schema, dict(data))
        container = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise ValueError(str(describe_error(exc, where, schema))) from None
    check_finite(container, where)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(str(describe_error(exc, where, schema))) from None
    except (ValueError, TypeError) as exc:  # a config's __post_init__ checks
        raise ValueError(f"{where}: {exc}") from None


def _as_dict(spec: Any, where: str) -> dict[str, Any]:
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = dataclasses.asdict(spec)
    elif not isinstance(spec, Mapping):
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(spec, DictConfig):
                spec = OmegaConf.to_container(spec, resolve=True)
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: a reward is a mapping with a 'name' key, got {type(spec).__name__}")
    return dict(spec)


def reward_config(spec: Any, where: str = "reward") -> tuple[str, Any]:
    """Validate a reward section without loading any model: ``(name, typed config)``.

    For a dotted-path reward (``name: mypkg.rewards:MyReward``) the config is the remaining
    arguments as a dict, checked when the factory is called.
    """
    data = _as_dict(spec, where)
    name = data.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: missing 'name' (one of: {', '.join(sorted(REWARDS))}, or 'module:factory')")
    if name in REWARDS:
        return name, load_section(_resolve(REWARDS[name].config), data, where)
    if ":" in name or "." in name:
        _resolve(name)  # import errors surface now, at recipe-check time
        return name, data
    hint = difflib.get_close_matches(name, list(REWARDS), n=1)
    extra = f"; did you mean '{hint[0]}'?" if hint else ""
    raise ValueError(f"{where}: unknown reward '{name}'{extra} (known: {', '.join(sorted(REWARDS))}, or 'module:factory')")


def section_keys(name: Any) -> list[str] | None:
    """The keys a section of the registered reward ``name`` takes beside ``name`` (its config's fields), or
    None for a name that is not registered (a dotted path's arguments are its factory's)."""
    import dataclasses

    if not isinstance(name, str) or name not in REWARDS:
        return None
    config = _resolve(REWARDS[name].config)
    return [f.name for f in dataclasses.fields(config) if f.init] if dataclasses.is_dataclass(config) else None


def resolved_section(spec: Any, where: str = "reward") -> dict[str, Any]:
    """A reward section with every default filled in (what ``--print-config`` shows): ``name``
    plus the typed config's fields, nested sections included; a dotted-path reward's section as
    given (its factory's defaults are its own)."""
    import dataclasses

    name, config = reward_config(spec, where)
    fields = dataclasses.asdict(_with_model_settings(config)) if dataclasses.is_dataclass(config) else dict(config)
    return {"name": name, **fields}


def _with_model_settings(config: Any) -> Any:
    """``config`` with what its models' folders decide filled in, at any depth: a section whose
    config has ``with_model_settings()`` (CaC's options, a model's dtype) gives its resolved self,
    so two sections that would ask a model alike compare equal however they were written."""
    import dataclasses

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    changes = {f.name: _with_model_settings(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not getattr(config, k)})
    resolve = getattr(config, "with_model_settings", None)
    return resolve() if callable(resolve) else config


# Modules of cac_align/rewards that hold the layer itself, not a reward.
_NOT_REWARDS = frozenset({"audio", "authors", "base", "judges", "registry", "normalize"})


def _discover_builtins() -> None:
    """Import every reward module of ``cac_align/rewards`` (each registers its own names)."""
    import importlib
    import pkgutil
    from pathlib import Path

    # This module's own folder and package (importing the package here would be an import circle).
    for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
        if module not in _NOT_REWARDS and not module.startswith("_"):
            importlib.import_module(f"{__package__}.{module}")


def _resolve(dotted: str) -> Any:
    from cac_align.config import resolve

    return resolve(dotted)


def build_reward(spec: Any, where: str = "reward") -> Reward:
    """Build a reward from a recipe section ``{name: ..., <arguments>}`` (loads its models).

    ``name`` is a registered short name (see :data:`REWARDS`) or a dotted path to a factory
    called with the other keys as keyword arguments and returning a :class:`Reward`.

    Raises:
        ValueError: the section is not valid (:func:`reward_config`).
        RecipeError: the reward refused its settings while it was built: a ``ValueError`` its builder
            or constructor raised (a size its model cannot read, a component without a scale), said
            as one line that names ``where``, whichever reward raised it (the CLI prints a
            ``RecipeError`` as one line, not a traceback; the original stays its ``__cause__``).
    """
    from cac_align.config import RecipeError

    name, config = reward_config(spec, where)
    try:
        return _built(name, config, where)
    except RecipeError:
        raise
    except ValueError as exc:  # a reward's own check of its settings, found as it builds
        message = str(exc)
        raise RecipeError(message if message.startswith(where) else f"{where}: {message}") from exc


def _built(name: str, config: Any, where: str) -> Reward:
    """:func:`build_reward` once its section is validated."""
    if name in REWARDS:
        return _resolve(REWARDS[name].build)(config, where)
    factory = _resolve(name)
    try:
        reward = factory(**config)
    except TypeError as exc:
        raise ValueError(f"{where}: {name} does not accept these arguments: {exc}") from None
    if not isinstance(reward, Reward):
        missing = [m for m in ("name", "score_range", "components", "modality", "reads_prompt", "needs_prompt", "modalities", "__call__", "state_dict", "load_state_dict", "to") if not hasattr(reward, m)]
        raise ValueError(
            f"{where}: {name} returned {type(reward).__name__}, which lacks {', '.join(missing)} of the Reward contract; "
            "subclass cac_align.rewards.base.RewardBase (it gives the defaults) and write name and __call__"
        )
    return reward


_discover_builtins()


def reward_judges(spec: Any, where: str, video: Any) -> list[Any]:
    """The models a reward section loads (:class:`~cac_align.rewards.judges.JudgeModel`), said
    from its config before anything loads, for the memory plan; loads nothing.

    Args:
        spec: a reward section (``{name: ..., <arguments>}``).
        where: its recipe key ("reward", "eval_rewards.vs2"), named in each model's ``where``.
        video: the videos it will score (:class:`~cac_align.rewards.judges.VideoShape`).

    Returns:
        Its judges, in load order; a reward whose models are not known before it loads (a
        dotted-path reward, or one registered without ``judges``) is one
        :class:`~cac_align.rewards.judges.UnknownJudge`.
    """
    from cac_align.rewards.judges import UnknownJudge

    name, config = reward_config(spec, where)
    if name not in REWARDS:
        return [UnknownJudge(where, f"{name} is a reward named by dotted path: its models are its own")]
    registered = REWARDS[name]
    if not registered.judges:
        return [UnknownJudge(where, f"{name} was registered without judges= (register_reward): its models are not known before it loads")]
    return list(_resolve(registered.judges)(config, where, video))


def reward_differences(first: Any, second: Any) -> list[str]:
    """The dotted keys in which two reward sections would score differently: both resolved with
    their defaults (:func:`resolved_section`), less how their models are reached (a server's
    address, a timeout, a device: :data:`cac_align.run.folder.SERVING_KEYS`). [] when they are the
    same judge; ``["name"]`` when they are different rewards altogether."""
    from cac_align.run.folder import differing_keys, drop_serving_keys

    a, b = (drop_serving_keys(resolved_section(s, where)) for s, where in ((first, "the first reward"), (second, "the second reward")))
    if a["name"] != b["name"]:
        return ["name"]
    return differing_keys(a, b)


def describe_reward(section: Any) -> str:
    """One phrase naming a reward section's judge: its name and, where it has one, its model."""
    data = dict(section) if isinstance(section, Mapping) else {}
    model = data.get("model")
    name = model.get("name") if isinstance(model, Mapping) else None
    return f"{data.get('name')!s}" + (f" ({name})" if name else "")
