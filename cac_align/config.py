"""Recipes: YAML files mapped onto typed dataclass configs, with CLI overrides.

A recipe is a YAML file under ``recipes/`` whose top-level ``job:`` names the job it
configures; every other key belongs to that job's config dataclass. Loading goes

    dataclass defaults  <-  recipe YAML  <-  command-line ``key=value`` overrides

through omegaconf structured configs, so types are checked on every merge. Any problem (an
unknown or misspelled key, a wrong type, a required value left unset, an impossible
combination reported by the dataclass's ``__post_init__``) raises :class:`RecipeError`
naming the recipe file and the key, never a bare omegaconf traceback.

Jobs are registered in :data:`JOBS` by short name, with their config class and entry point
given as ``"module:attribute"`` strings so that ``cac-align --help`` imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = [
    "JOBS",
    "JobSpec",
    "RecipeError",
    "describe_error",
    "check_finite",
    "relative_path_hint",
    "load_config",
    "load_recipe",
    "resolve",
]


class RecipeError(ValueError):
    """A recipe or override is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class JobSpec:
    """A CLI job: its config dataclass and its ``run(config)`` entry point."""

    name: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function" taking the config instance
    help: str
    resume: str | None = None  # how an interrupted run continues (None: it starts over)

    def config_class(self) -> type:
        return resolve(self.config)

    def runner(self) -> Callable[[Any], Any]:
        return resolve(self.run)


# One entry per job; later jobs (synth, score, best-of-n, flow-grpo, ...) add themselves here.
JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in [
        JobSpec(
            name="make-tiny",
            config="cac_align.tiny_job:MakeTinyConfig",
            run="cac_align.tiny_job:run",
            help="build tiny random Qwen3-VL / Qwen2.5-VL / Wan-2.1 models offline and save them",
        ),
        JobSpec(
            name="convert",
            config="cac_align.jobs.convert:ConvertConfig",
            run="cac_align.jobs.convert:run",
            help="convert public labelled sets (ViF-CoT-4K, VideoPhy-2) or your own labels into annotations.jsonl, with a report",
        ),
        JobSpec(
            name="synth",
            config="cac_align.data.synthetic:SynthConfig",
            run="cac_align.data.synthetic:run",
            help="render synthetic videos with planted, exactly labelled anomalies + annotations.jsonl",
            resume="rerun the same command to resume: finished videos are kept",
        ),
        JobSpec(
            name="score",
            config="cac_align.score_job:ScoreConfig",
            run="cac_align.score_job:run",
            help="score videos with a reward (cac, unified_reward, ur_cac, ...): results.jsonl + HTML report",
        ),
        JobSpec(
            name="flow-grpo",
            config="cac_align.gen.grpo_config:FlowGrpoConfig",
            run="cac_align.gen.grpo_trainer:run",
            help="Flow-GRPO: train a Wan-2.1 LoRA on a video reward (SDE sampling, PPO-clip, KL to the base)",
            resume="rerun the same command with resume=true to continue from its last saved checkpoint",
        ),
        JobSpec(
            name="synth-cot",
            config="cac_align.cac.train.cot:SynthCotConfig",
            run="cac_align.cac.train.cot:run",
            help="write reasoning (CoT) into annotations: generate-verify with a teacher VLM, or a template offline",
            resume="rerun the same command to resume: finished videos are kept",
        ),
        JobSpec(
            name="train-cac",
            config="cac_align.cac.train.settings:TrainCaCConfig",
            run="cac_align.cac.train.sft:run",
            help="train the CaC model: stage=1 single-frame LoRA warmup, stage=2 multi-frame full fine-tuning, stage=3 two-turn GRPO",
            resume="rerun the same command with resume=true to continue from its last saved checkpoint",
        ),
        JobSpec(
            name="eval-bench",
            config="cac_align.eval.bench:BenchConfig",
            run="cac_align.eval.bench:run",
            help="anomaly-detection metrics of one or more systems against annotations (also: `cac-align eval bench`)",
        ),
        JobSpec(
            name="eval-expert",
            config="cac_align.eval.expert:ExpertConfig",
            run="cac_align.eval.expert:run",
            help="expert anomaly rate: export a blinded HTML labelling sheet, or analyze the labels (also: `cac-align eval expert`)",
        ),
        JobSpec(
            name="eval-vbench",
            config="cac_align.eval.vbench:VBenchConfig",
            run="cac_align.eval.vbench:run",
            help="VBench dynamic degree, subject consistency and imaging quality per system, by vbench's own code (also: `cac-align eval vbench`)",
            resume="rerun the same command to resume: scored videos are kept",
        ),
        JobSpec(
            name="report",
            config="cac_align.eval.report:ReportConfig",
            run="cac_align.eval.report:run",
            help="Table 2: VBench dimensions and expert anomaly rate per system, best in bold, deltas vs the base; markdown, HTML, charts",
        ),
        JobSpec(
            name="bon",
            config="cac_align.gen.best_of_n:BonConfig",
            run="cac_align.gen.best_of_n:run",
            help="Best-of-N video generation: N candidates per prompt, keep the one the reward scores highest",
            resume="rerun the same command to resume: finished candidates are kept",
        ),
    ]
}


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
        f" (relative paths in recipes are resolved from the current folder, {Path.cwd()}: run from the folder the "
        "recipe was written for, the repository root for the shipped recipes, or give an absolute path)"
    )


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


def _read_yaml(path: Path) -> dict:
    import yaml
    from omegaconf import OmegaConf

    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}{relative_path_hint(path)}")
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    container = OmegaConf.to_container(node, resolve=False)
    if container is None:
        return {}
    if not isinstance(container, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got {type(container).__name__}")
    return container


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
        data = _read_yaml(Path(recipe))
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


def load_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> tuple[JobSpec, Any]:
    """Read a recipe's ``job:`` key, then load and validate it with that job's config.

    This loads no weights: it is what ``cac-align check-recipe`` and the recipe tests run.
    """
    path = Path(recipe)
    data = _read_yaml(path)
    name = data.get("job")
    if name is None:
        raise RecipeError(f"{path}: missing top-level key 'job' (one of: {', '.join(sorted(JOBS))})")
    if name not in JOBS:
        hint = difflib.get_close_matches(str(name), list(JOBS), n=1)
        extra = f"; did you mean '{hint[0]}'?" if hint else ""
        raise RecipeError(f"{path}: unknown job '{name}'{extra} (known jobs: {', '.join(sorted(JOBS))})")
    spec = JOBS[name]
    return spec, load_config(spec.config_class(), path, overrides, job=name)
