"""`cac-align`: one subcommand per job, each configured by a recipe plus key=value overrides.

    cac-align --help
    cac-align <job> --config recipes/<job>/<recipe>.yaml [--out DIR] [key=value ...]
    cac-align <job> --config ... --print-config      # show the resolved config, run nothing
    cac-align <job> --config score/cac_demo           # a shipped recipe by name, from any folder
    cac-align recipes [cp NAME DEST]                  # list the shipped recipes, or copy one out to edit
    cac-align check-recipe recipes/**/*.yaml          # validate recipes without loading weights
    cac-align check-recipe --processes 8 --gpu-gib 74.5 FILE   # and a generator trainer's memory plan on 8 GPUs
    cac-align eval bench --config ...                 # = cac-align eval-bench (likewise eval vbench / expert)

Errors the user can fix (a bad recipe, a setting a reward refuses as it builds, a missing video,
missing weights) print one line naming the input and exit with status 2, instead of a traceback. A
reward server that is not there, or a job whose every sample failed in the reward backend, prints one
line and exits 1.
Ctrl-C prints one line and exits 130. A run of many processes prints each such line once, from the
process that failed first, naming it where the others did not fail alike (cac_align/run/voice.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from cac_align import __version__
from cac_align.config import RecipeError, load_config, running_recipe
from cac_align.jobs import JOBS, load_recipe

__all__ = ["main"]


def _user_errors() -> tuple[type[BaseException], ...]:
    from cac_align.loading import WeightsNotFoundError
    from cac_align.video import VideoError

    # the file system refusing what a recipe asked for (an out_dir that is a file, a folder
    # without write permission): one line naming the path, like any other bad setting
    file_errors = (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError)
    return (RecipeError, VideoError, WeightsNotFoundError, *file_errors)


def _backend_errors() -> tuple[type[BaseException], ...]:
    # RewardError: a reward's refusal (invalid: fail, a step with no valid sample; BackendFailure
    # is one): the job stops with its reason, in one line
    # CollectiveTimeout: a collective that waited longer than parallel.timeout_s, named in its line
    from cac_align.gen.parallel import CollectiveTimeout
    from cac_align.rewards.base import RewardError
    from cac_align.vlm.openai import ServerDown, ServerUnavailableError

    return (RewardError, ServerUnavailableError, ServerDown, CollectiveTimeout)


class _TopParser(argparse.ArgumentParser):
    """The top parser: its help ends with the generator families, read from the one list
    (``cac_align.gen.family.families``) when the help is shown, not at every command's start."""

    def format_help(self) -> str:
        from cac_align.gen.family import families

        titles = ", ".join(family.title for family in families())
        repairs = ", ".join(family.title for family in families("regenerator"))
        self.epilog = (f"{_EPILOG}\n\nGenerators (flow-grpo, nft, dpo, bon): {titles}; text or image to video where the family is.\n"
                       f"Repair pipelines (repair): {repairs}.")
        return super().format_help()


_EPILOG = "Run `cac-align <job> --help` for a job's options. `cac-align recipes` lists the shipped recipes."


class _JobParser(argparse.ArgumentParser):
    """A job's parser: its help ends with the job's settings and their defaults, read from its config
    class when the help is shown (that imports the job's module: never at a command's start)."""

    def __init__(self, *args: Any, job: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job

    def format_help(self) -> str:
        if self.job is not None and self.epilog is None:
            self.epilog = settings_help(self.job.config_class())
        return super().format_help()


def _default_text(value: Any) -> str:
    """A default as a recipe would write it: ``???`` (required), null, true, 1.0e-4, [a, b], {k: v}."""
    import yaml

    if value == "???":
        return "??? (required)"
    if isinstance(value, str) and value and value.strip() == value:
        return value
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip().removesuffix("\n...").strip()


def field_docs(cls: type) -> dict[str, str]:
    """Each field's line of a config class's docstring ("Attributes:", Google style), read through its bases
    (``nft``'s config extends ``flow-grpo``'s): ``{name: its description, continuation lines joined}``; a line
    naming several fields (``dtype, vae_dtype: ...``) gives each the same."""
    import inspect
    import re

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.getdoc(klass) if klass.__doc__ else None
        found = re.search(r"^Attributes:\s*$", text or "", re.M)
        if found is None:
            continue
        names: list[str] = []
        for line in text[found.end():].splitlines():  # type: ignore[index]
            if not line.strip() or not line.startswith(" "):
                if not line.startswith(" ") and line.strip():
                    break
                names = []
                continue
            head = re.match(r"^    ([A-Za-z_][\w]*(?:, [A-Za-z_][\w]*)*):\s*(.*)$", line)
            if head and not line.startswith("     "):
                names = head.group(1).split(", ")
                docs.update(dict.fromkeys(names, head.group(2).strip()))
            elif names:
                docs.update({name: f"{docs[name]} {line.strip()}" for name in names})
    return docs


def _one_line(text: str, most: int = 110) -> str:
    """The first sentence of ``text`` (a period and a space outside parentheses ends it), or its first ``most``
    characters, cut at a word."""
    depth, end = 0, len(text)
    for k, char in enumerate(text):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if char == "." and depth <= 0 and text[k + 1: k + 2] in (" ", "") and text[k - 1: k] != ".":
            end = k
            break
    sentence = " ".join(text[:end].split())
    return sentence if len(sentence) <= most else sentence[:most].rsplit(" ", 1)[0] + " ..."


def settings_help(config_class: type) -> str:
    """Every setting of a job's config dataclass, nested sections as dotted keys (``lora.rank``), in the
    class's order: its default (what a recipe's omitted key takes), the values it allows where they are
    few (a class's ``CHOICES``; true / false), and one line of what it does (the class's docstring)."""
    rows: list[tuple[str, str, str]] = []

    def walk(owner: Any, prefix: str) -> None:
        cls = owner if isinstance(owner, type) else type(owner)
        docs, choices = field_docs(cls), getattr(cls, "CHOICES", {})
        for field in dataclasses.fields(owner):
            if isinstance(owner, type):  # the class: a field's default, or its factory's value
                if field.default is not dataclasses.MISSING:
                    value = field.default
                elif field.default_factory is not dataclasses.MISSING:
                    value = field.default_factory()
                else:
                    value = "???"
            else:  # a section's instance (its defaults)
                value = getattr(owner, field.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, f"{prefix}{field.name}.")
                continue
            allowed = choices.get(field.name) or (("true", "false") if isinstance(value, bool) else ())
            what = _one_line(docs.get(field.name, ""))
            rows.append((prefix + field.name, _default_text(value), (f"[{' | '.join(map(str, allowed))}] " if allowed else "") + what))

    walk(config_class, "")
    width = max(len(key) for key, _, _ in rows)
    shown = max(len(text) for _, text, _ in rows if len(text) <= 24) if rows else 0
    return "\n".join([("settings: default, [the values it takes], what it does (set them in the recipe or as key=value; null: unset, the job "
                       "or the model's own files decide; --print-config shows a recipe's resolved values):"),
                      *(f"  {key:{width}s}  {text:{shown}s}  {what}".rstrip() for key, text, what in rows)])


def _build_parser() -> argparse.ArgumentParser:
    parser = _TopParser(
        prog="cac-align",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="CaC anomaly reward model and reward toolkit for aligning text-to-video generators.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cac-align {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<job>", required=True, parser_class=_JobParser)
    for spec in JOBS.values():
        job = sub.add_parser(spec.name, help=spec.help, description=textwrap.fill(spec.help, 100), job=spec, formatter_class=argparse.RawDescriptionHelpFormatter)
        job.add_argument("--config", "-c", type=Path, help="recipe YAML, or a shipped recipe's name (score/cac_demo; defaults when omitted)")
        job.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        job.add_argument("--out", "-o", help="output folder (shorthand for out_dir=...)")
        job.add_argument("--verbose", "-v", action="store_true",
                         help="also show the third-party messages cac-align hides (docs/cli.md: quiet by default) and its own debug lines")
        job.add_argument("overrides", nargs="*", metavar="key=value", help="overrides merged over the recipe")
    check = sub.add_parser(
        "check-recipe", help="validate recipes and plan each one's memory (every job: trainers, score, bon, repair, train-cac, ...), "
                             "without loading weights",
        description="Validate recipes, and plan each one's GPU (and a generator trainer's host) memory from its models' configs: the "
                    "generator trainers, score's judges, bon, repair, train-cac's stages (and stage 3's ms-swift launchers), serve, "
                    "synth-cot, eval vbench; the jobs on the CPU say they hold nothing on a GPU. One verdict line a recipe on stdout "
                    "(ok, FAIL or UNKNOWN), its plan indented under it, "
                    "fitted to the terminal's width. "
                    "Exit 0: every recipe valid and every plan fits; 1: a recipe invalid or a launch refused (the fix is named); "
                    "3: valid, but a plan left a model uncounted (its files are not on this machine: the line says what to fetch).",
    )
    check.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files, folders of recipes or shipped recipes' names (as --config "
                       "takes them: align/flow_grpo_tiny), and key=value overrides merged over each")
    check.add_argument("--processes", type=int, default=None, metavar="N",
                       help="the processes (GPUs) a generator trainer's memory plan is made for (default: what the launch on the "
                            "recipe's first line starts, else its context_parallel degree); the plan is printed where the models' "
                            "configs can be read")
    check.add_argument("--nodes", type=int, default=None, metavar="N",
                       help="plan for N nodes of --gpus-per-node GPUs (instead of --processes): a sharded flow-grpo or nft recipe "
                            "gets its per-GPU memory under full sharding and under HSDP, and the network of a step inside and across nodes")
    check.add_argument("--gpus-per-node", type=int, default=8, metavar="G", help="GPUs (processes) on each node, with --nodes (default 8)")
    check.add_argument("--gpu-gib", type=float, default=None, metavar="GIB",
                       help="the memory of one GPU, GiB: the plan says whether it fits and, if not, the fix (an 80 GB GPU: 74.5)")
    check.add_argument("--gpu-gb", type=float, default=None, metavar="GB",
                       help="the memory of one GPU as its card says, GB (10^9 bytes; 80 is 74.5 GiB); instead of --gpu-gib")
    check.add_argument("--network-gbps", type=float, default=None, metavar="GBPS",
                       help="with --nodes: the network a GPU has across nodes, Gbit/s, that the network table's bytes are timed at "
                            "(default 400: a 400 Gbit/s NIC a GPU)")
    check.add_argument("--nvlink-gbps", type=float, default=None, metavar="GBPS",
                       help="with --nodes: a GPU's link inside a node, Gbit/s each way (default 3600: NVLink 4 of an H100 or H200, 450 GB/s)")
    recipes = sub.add_parser(
        "recipes", help="list the shipped recipes, or copy one out to edit (`cac-align recipes cp NAME DEST`)",
        description="The shipped recipes, by the names --config takes from any folder (score/cac_demo, ...).",
    )
    recipes.add_argument("action", nargs="?", choices=["list", "cp"], default="list", help="list (default) or cp")
    recipes.add_argument("name", nargs="?", help="list: a word their name or description holds (sound); cp: the recipe's name (score/cac_demo)")
    recipes.add_argument("dest", nargs="?", type=Path, help="cp: a file or a folder to copy it into")
    return parser


def _recipes(action: str, name: str | None, dest: Path | None) -> int:
    """``cac-align recipes``: the shipped recipes by name, each with one sentence of what it does
    (:func:`recipe_description`), or ``cp NAME DEST``: a copy to edit, byte for byte (its paths under
    recipes/ still resolve to the shipped files from any folder)."""
    import shutil

    from cac_align.config import SHIPPED_RECIPES, find_recipe, shipped_recipes

    if action == "list":  # `recipes list [WORD]`: those whose name or description holds WORD
        shown = [(recipe, recipe_description(SHIPPED_RECIPES / f"{recipe}.yaml")) for recipe in shipped_recipes()]
        if name is not None:
            shown = [(recipe, text) for recipe, text in shown if name.lower() in f"{recipe} {text}".lower()]
            if not shown:
                raise RecipeError(f"no shipped recipe's name or description holds {name!r}; `cac-align recipes` lists them all")
        width = max(len(recipe) for recipe, _ in shown)
        for recipe, text in shown:
            print(f"{recipe:{width}s}  {text}")
        print(f"({len(shown)} recipes; each one's first line is the command that runs it: `cac-align recipes cp NAME .` copies it out)")
        return 0
    if name is None or dest is None:
        raise RecipeError("recipes cp needs a recipe's name and a destination: cac-align recipes cp score/cac_demo my_recipe.yaml")
    source = find_recipe(name)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists():
        raise RecipeError(f"{target} exists: choose another destination (nothing was overwritten)")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    job = _recipe_job(source) if source.suffix == ".yaml" else None
    if job is not None:
        print(f"copied {source} to {target}: edit it, then cac-align {job} --config {target}")
    else:  # a file a recipe reads (a prompt list, the tiny rows of data/convert_tiny)
        print(f"copied {source} to {target}")
    return 0


def recipe_description(recipe: Path) -> str:
    """A shipped recipe's one line: the first sentence of its header after the command (its second and following
    comment lines), else the command itself. Every shipped header opens with a sentence of what the recipe does, with
    no command or setting in it (tests/test_recipes_by_name.py holds them to it)."""
    lines = recipe.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# ").strip())
    text = " ".join(part for part in header if part)
    return _one_line(text, 100) if text else (lines[0].lstrip("# ") if lines else "")


def _recipe_job(recipe: Path) -> str | None:
    """The job a recipe is for: its ``job:`` key, else the job its first line runs (every shipped
    recipe opens with its command: ``# cac-align bon --config ...``, or a launcher's ``-m
    cac_align.cli dpo ...``); None when neither names a job."""
    import re

    from cac_align.config import read_recipe_file
    from cac_align.jobs import JOBS

    stated = read_recipe_file(recipe).get("job")
    if stated in JOBS:
        return str(stated)
    first = recipe.read_text(encoding="utf-8").splitlines()[:1]
    found = re.search(r"(?:cac-align|cac_align\.cli)\s+([a-z][a-z0-9-]*)", first[0]) if first else None
    return found.group(1) if found and found.group(1) in JOBS else None


def header_processes(recipe: Path) -> int | None:
    """The processes the command on a recipe's first line launches: torchrun's ``--nproc_per_node N``
    (times ``--nnodes``), accelerate's ``--num_processes N`` or its ``--config_file``'s
    ``num_processes``, 1 for a plain ``cac-align <job>``; None when the line names no launch."""
    import re

    first = recipe.read_text(encoding="utf-8").splitlines()[:1]
    line = first[0] if first else ""
    found = re.search(r"--(?:nproc_per_node|nproc-per-node|num_processes|num-processes)[ =](\d+)", line)
    if found:
        nodes = re.search(r"--nnodes[ =](\d+)", line)
        return int(found.group(1)) * (int(nodes.group(1)) if nodes else 1)
    launch_config = re.search(r"--config_file[ =](\S+)", line)
    if launch_config:
        import yaml

        from cac_align.config import SHIPPED_RECIPES

        path = Path(launch_config.group(1))  # a shipped one (recipes/accelerate/...) from any folder
        path = path if path.is_file() or path.parts[:1] != ("recipes",) else SHIPPED_RECIPES.joinpath(*path.parts[1:])
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        return int(settings.get("num_processes", 1)) if isinstance(settings, dict) else None
    return 1 if re.match(r"#\s*cac-align\s+[a-z]", line) else None


def header_nodes(recipe: Path) -> int:
    """The nodes the command on a recipe's first line launches on (torchrun's ``--nnodes N``; else 1)."""
    import re

    first = recipe.read_text(encoding="utf-8").splitlines()[:1]
    found = re.search(r"--nnodes[ =](\d+)", first[0]) if first else None
    return int(found.group(1)) if found else 1


def _step_split(spec: Any, config: Any, processes: int) -> str | None:
    """Why a generator trainer's launch on ``processes`` would be refused for its layout or its
    step's split (the launch's own message), or None: what the job itself checks first."""
    import importlib

    if spec.memory_inputs is None:
        return None
    cp = config.parallel.context_parallel
    if processes % cp:
        return f"parallel.context_parallel={cp} does not divide the {processes} processes"
    plan_step = getattr(importlib.import_module(spec.module), "plan_step", None)  # each generator trainer's module has one
    if plan_step is None:
        return None
    try:
        plan_step(config, processes // cp, 0)
    except RecipeError as exc:
        return str(exc)
    return None


def recipe_plan(spec: Any, config: Any, processes: int, nodes: int = 1) -> Any:
    """The memory plan (:func:`cac_align.plan.check.plan_generator`: ``(plan, host)``, or None for the synthetic
    generator) of a generator trainer's recipe, loaded as ``load_recipe`` gives it, on ``processes`` GPUs over
    ``nodes`` nodes: what ``check-recipe`` prints.

    Raises:
        ConfigsNotFound: its models' configs are not on this machine.
    """
    from cac_align.config import resolve
    from cac_align.plan.check import plan_generator

    return plan_generator(config.generator, config.lora, config.parallel, processes, **resolve(spec.memory_inputs)(config),
                          node_processes=max(1, processes // nodes))


# check-recipe's exit codes: every recipe valid and every plan fits (0), a recipe invalid or a launch refused
# (1), or every recipe valid but a plan not whole: some model not counted, its files not on this machine (3)
CHECK_OK, CHECK_FAILED, CHECK_UNKNOWN = 0, 1, 3
VERDICT_WORDS = {CHECK_OK: "ok", CHECK_FAILED: "FAIL", CHECK_UNKNOWN: "UNKNOWN"}

_DETAIL = "     "  # a recipe's plan, indented under its verdict


@dataclasses.dataclass
class _Checked:
    """What ``check-recipe`` found of one recipe: its verdict (:data:`CHECK_OK`, :data:`CHECK_FAILED` or
    :data:`CHECK_UNKNOWN`), why, in a few words, and the plan printed under it (one string a line)."""

    verdict: int = CHECK_OK
    why: str = ""
    lines: list[str] = dataclasses.field(default_factory=list)


def _fit(lines: Sequence[str], width: int) -> list[str]:
    """``lines`` at most ``width`` characters where they can be: a longer one wraps at its spaces, its
    continuation indented four more than it; a table's row (two spaces between columns) is left as it is (the
    plan's tables fit their rows themselves: :func:`cac_align.plan.rows.table_lines`)."""
    out: list[str] = []
    for line in lines:
        text = line.lstrip(" ")
        if len(line) <= width or "  " in text:  # short, or a table's row (columns two spaces apart): fitted already, or as narrow as it gets
            out.append(line)
            continue
        lead = line[: len(line) - len(text)]
        out += textwrap.wrap(text, width, initial_indent=lead, subsequent_indent=lead + "    ", break_long_words=False, break_on_hyphens=False)
    return out


def _memory_plan(spec: Any, config: Any, processes: int | None, gpu_gib: float | None, header: int | None = None,
                 nodes: int = 1, width: int | None = None, gbps: tuple[float, float] | None = None, recipe: Path | None = None) -> _Checked:
    """A generator trainer's memory plan (``cac_align.plan``) where its models' configs can be read (a tiny
    in-process generator's too: built in a moment), or one line saying which it needs; a score recipe's judges
    (:func:`_judges_plan`); another job's own plan (:func:`_job_plan`). The verdict is :data:`CHECK_FAILED` where its
    launch would be refused (the step does not split over the processes, or the plan does not fit ``gpu_gib``),
    :data:`CHECK_UNKNOWN` where a model was not counted (its configs or weights are not here: the plan cannot say it fits)."""
    import warnings

    from cac_align.plan.configs import ConfigsNotFound, planned_from_shipped
    from cac_align.plan.counts import GIB
    from cac_align.plan.refusal import refusal

    if spec.name == "score":
        return _judges_plan(config, gpu_gib, width)
    if spec.memory_inputs is None:
        return _job_plan(spec, config, processes if processes is not None else header or 1, gpu_gib, width, recipe)
    n = processes if processes is not None else header if header is not None else config.parallel.context_parallel
    split = _step_split(spec, config, n)
    if split is not None:
        return _Checked(CHECK_FAILED, f"{n} processes: {split}")
    try:
        with warnings.catch_warnings():  # the models built for counting (a tiny one's deprecation notes) say nothing here
            warnings.simplefilter("ignore")
            planned = recipe_plan(spec, config, n, nodes)
    except ConfigsNotFound as exc:
        return _Checked(CHECK_UNKNOWN, exc.line())  # what to fetch, and the command, in the one verdict line
    except ValueError as exc:  # e.g. a process count the layout cannot split
        return _Checked(CHECK_FAILED, f"memory plan: not made for {n} processes: {exc}")
    if planned is None:
        return _Checked(why=f"valid ({config.generator.name} is the synthetic stand-in generator: nothing to plan)")
    plan, host = planned
    limit = int(gpu_gib * GIB) if gpu_gib is not None else None
    lines = []
    if planned_from_shipped(config.generator.name):
        lines.append(f"planned from the configs of {config.generator.name} shipped with cac-align (config numbers only, each with its source: "
                     "cac_align/plan/full_size/SOURCES.md); its own files in the Hugging Face cache take their place")
    lines += (plan.table(limit, width) + "\n" + host.table(width)).splitlines()
    lines += _network(spec, config, plan, n, nodes, limit, gbps)
    reason = refusal(plan, limit) if limit is not None else None
    if reason is not None:
        return _Checked(CHECK_FAILED, f"refused: {reason}", lines)
    if plan.unknown_rows:
        return _Checked(CHECK_UNKNOWN, plan.unknown_verdict(), lines)
    fits = f", fits {gpu_gib:.1f} GiB" if limit is not None else ""
    return _Checked(why=f"planned: {plan.peak_bytes / GIB:.2f} GiB a GPU on {n} process{'es' if n != 1 else ''}{fits}", lines=lines)


def _job_plan(spec: Any, config: Any, processes: int, gpu_gib: float | None, width: int | None, recipe: Path | None) -> _Checked:
    """The plan of a job that trains no generator (:class:`cac_align.plan.job.JobPlan`, its ``spec.plan``): what
    each of its GPUs holds, refused with the fix where it does not fit ``gpu_gib``, UNKNOWN where something is not
    counted, or that it holds nothing on a GPU and why."""
    import warnings

    from cac_align.config import resolve
    from cac_align.plan.configs import ConfigsNotFound
    from cac_align.plan.counts import GIB

    if spec.plan is None:
        return _Checked(why="valid (no memory plan for this job)")
    try:
        with warnings.catch_warnings():  # the models built for counting say nothing here
            warnings.simplefilter("ignore")
            plan = resolve(spec.plan)(config, processes, recipe)
    except ConfigsNotFound as exc:
        return _Checked(CHECK_UNKNOWN, exc.line())
    except RecipeError as exc:  # a launch the job itself refuses (stage 3 sharded)
        return _Checked(CHECK_FAILED, str(exc))
    if plan.nothing:
        return _Checked(why=f"planned: holds nothing on a GPU ({plan.nothing})")
    limit = int(gpu_gib * GIB) if gpu_gib is not None else None
    lines = [*plan.notes, *plan.table(limit, width).splitlines()]
    reason = plan.refusal(limit) if limit is not None else None
    if reason is not None:
        return _Checked(CHECK_FAILED, f"refused: {reason}", lines)
    if plan.unknown_rows:
        return _Checked(CHECK_UNKNOWN, plan.not_counted(), lines)
    if plan.holds_nothing:
        return _Checked(why="planned: holds nothing on a GPU (its models on the CPU or served)", lines=lines)
    fits = f", fits {gpu_gib:.1f} GiB" if limit is not None else ""
    n = plan.processes
    return _Checked(why=f"planned: {plan.peak_bytes / GIB:.2f} GiB a GPU on {n} process{'es' if n != 1 else ''}{fits}", lines=lines)


def _swift_checked(script: Path, overrides: Sequence[str], processes: int | None, gpu_gib: float | None, width: int | None) -> _Checked:
    """A ms-swift stage-3 launcher's plan (:func:`cac_align.plan.swift.plan_swift`), its variables given as
    ``NAME=value`` among the overrides; the verdict as :func:`_job_plan` gives one."""
    import warnings

    from cac_align.plan.counts import GIB
    from cac_align.plan.swift import plan_swift

    given = dict(item.split("=", 1) for item in overrides if item.split("=", 1)[0].isupper())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_swift(script, given, processes)
    limit = int(gpu_gib * GIB) if gpu_gib is not None else None
    lines = plan.table(limit, width).splitlines()
    if limit is not None and plan.refusal(limit) is not None:
        return _Checked(CHECK_FAILED, f"refused: {plan.refusal(limit)}", lines)
    if plan.unknown_rows:
        return _Checked(CHECK_UNKNOWN, plan.not_counted(), lines)
    return _Checked(why=f"planned: {plan.peak_bytes / GIB:.2f} GiB a GPU on {plan.processes} processes", lines=lines)


def _judges_plan(config: Any, gpu_gib: float | None, width: int | None) -> _Checked:
    """A score recipe's judges on its one GPU (:func:`cac_align.plan.check.plan_judges`): the memory each judge in
    this process holds, :data:`CHECK_FAILED` where it does not fit ``gpu_gib``, :data:`CHECK_UNKNOWN` where a judge's
    files are not here."""
    import warnings

    from cac_align.plan.check import plan_judges
    from cac_align.plan.counts import GIB

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_judges({"reward": config.reward})
    limit = int(gpu_gib * GIB) if gpu_gib is not None else None
    lines = plan.table(limit, width).splitlines()
    if limit is not None and not plan.fits(limit):
        return _Checked(CHECK_FAILED, f"the judges need {plan.peak_bytes / GIB:.1f} GiB of a GPU of {gpu_gib:.1f} GiB: put a judge on another "
                                      "GPU (its model.device: cuda:1) or serve it (model.backend: openai; docs/score.md, \"Through a vLLM server\")", lines)
    if plan.unknown_rows:
        return _Checked(CHECK_UNKNOWN, plan.unknown_verdict(), lines)
    if not any(row.bytes for row in plan.rows):
        return _Checked(why="planned: its judges hold nothing on a GPU (served, or on the CPU)", lines=lines)
    fits = f", fits {gpu_gib:.1f} GiB" if limit is not None else ""
    return _Checked(why=f"planned: its judges {plan.peak_bytes / GIB:.2f} GiB a GPU{fits}", lines=lines)


def _network(spec: Any, config: Any, plan: Any, processes: int, nodes: int, limit: int | None,
             gbps: tuple[float, float] | None = None) -> list[str]:
    """A sharded flow-grpo or nft run over several nodes: the per-GPU peak under full sharding and under hybrid
    sharding (one replica a node), the network table of a step (:mod:`cac_align.plan.network`), timed at ``gbps``
    (inside a node, across nodes), and which layout to take."""
    from cac_align.plan.counts import GIB
    from cac_align.plan.network import NETWORK_GBPS, NVLINK_GBPS, network_plan, step_traffic

    if nodes < 2 or config.parallel.shard != "fsdp2" or spec.name not in ("flow-grpo", "nft") or processes % nodes:
        return []
    inside_gbps, across_gbps = gbps if gbps is not None else (NVLINK_GBPS, NETWORK_GBPS)
    per_node = processes // nodes
    other = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, replicate=1 if config.parallel.replicate > 1 else nodes))
    other_plan, _ = recipe_plan(spec, other, processes, nodes)
    full, hybrid = (plan, other_plan) if config.parallel.replicate == 1 else (other_plan, plan)
    network = network_plan(plan.inputs["counts"], step_traffic(config, processes, spec.name), nodes=nodes, per_node=per_node,
                           lora_rank=config.lora.rank, dtype=config.generator.dtype)
    fits = (lambda p: p.fits(limit)) if limit is not None else (lambda p: None)  # noqa: E731  (None: no GPU named, not known)
    choice = f"choose: {network.choice(fits(full), fits(hybrid), across_gbps)}"
    return [f"layouts on {nodes} nodes x {per_node} GPUs (this recipe: parallel.replicate={config.parallel.replicate}), peak per GPU:",
            f"  full sharding (parallel.replicate=1)          {full.peak_bytes / GIB:8.2f} GiB",
            f"  HSDP (parallel.replicate={nodes}, one a node){'':<5} {hybrid.peak_bytes / GIB:8.2f} GiB",
            *network.table(inside_gbps, across_gbps).splitlines(), choice]


def _check_recipes(paths: Sequence[str], processes: int | None = None, gpu_gib: float | None = None, gpu_gb: float | None = None,
                   nodes: int | None = None, gpus_per_node: int = 8, network_gbps: float | None = None,
                   nvlink_gbps: float | None = None) -> int:
    """Validate recipes (and plan the generator trainers' and score's memory), each named as ``--config`` takes it
    (a file, a folder of recipes, or a shipped recipe's name), with the ``key=value`` items among ``paths`` merged
    over every one. Each recipe gets one verdict line on stdout (ok, FAIL or UNKNOWN, the recipe, its job and why:
    one line whatever its length, so that ``grep ^FAIL`` finds each), its plan indented under it, each of those lines
    fitted to the terminal (:func:`cac_align.plan.rows.output_width`); the last line counts the verdicts.

    Returns :data:`CHECK_FAILED` when any fails, an argument is not valid (said on stderr: nothing is checked), or a
    launch on ``processes`` would be refused; else :data:`CHECK_UNKNOWN` when a plan left a model uncounted; else
    :data:`CHECK_OK`."""
    from cac_align.config import find_recipe
    from cac_align.plan.network import NETWORK_GBPS, NVLINK_GBPS
    from cac_align.plan.rows import output_width
    from cac_align.plan.swift import is_swift_launcher

    overrides = [item for item in paths if "=" in item and not Path(item).exists()]
    names = [item for item in paths if item not in overrides]
    bad = ([f"--processes must be at least 1, got {processes}"] if processes is not None and processes < 1 else []) + \
          [f"{flag} must be > 0 (one GPU's memory), got {value:g}" for flag, value in (("--gpu-gib", gpu_gib), ("--gpu-gb", gpu_gb))
           if value is not None and not value > 0] + \
          [f"{flag} must be > 0 (a link's rate, Gbit/s), got {value:g}" for flag, value in (("--network-gbps", network_gbps),
                                                                                         ("--nvlink-gbps", nvlink_gbps))
           if value is not None and not value > 0]
    if gpu_gib is not None and gpu_gb is not None:
        bad.append("give --gpu-gib or --gpu-gb, not both")
    if nodes is not None and (nodes < 1 or gpus_per_node < 1 or processes is not None):
        bad.append(f"--nodes {nodes} --gpus-per-node {gpus_per_node}: both must be >= 1, and --processes is then theirs (not both)")
    elif nodes is not None:
        processes = nodes * gpus_per_node
    if not names:
        bad.append("name a recipe (a file, a folder, or a shipped recipe's name: cac-align recipes lists them)")
    files: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            # A folder's recipes, less accelerate launch configs (recipes/accelerate/), which are
            # accelerate's files, not cac-align recipes.
            files.extend(sorted(p for p in path.rglob("*.yaml") if "accelerate" not in p.relative_to(path).parts[:-1]))
            files.extend(sorted(p for p in path.rglob("*.sh") if is_swift_launcher(p)))  # stage 3 on ms-swift (cac_align.plan.swift)
            continue
        try:
            files.append(find_recipe(name))
        except RecipeError as exc:
            bad.append(str(exc))
    if bad:  # the command itself is wrong: said as an error, nothing checked
        for line in bad:
            print(f"cac-align check-recipe: error: {line}", file=sys.stderr)
        return CHECK_FAILED
    if gpu_gb is not None:  # the card's label: 80 GB = 80e9 bytes = 74.5 GiB
        gpu_gib = gpu_gb * 1e9 / 2**30
    width = output_width()
    gbps = (nvlink_gbps or NVLINK_GBPS, network_gbps or NETWORK_GBPS)
    counts = dict.fromkeys(VERDICT_WORDS, 0)
    for file in files:
        if is_swift_launcher(file):  # a ms-swift launcher, not a recipe: its plan from its own arguments
            checked, job = _swift_checked(file, overrides, processes, gpu_gib, width - len(_DETAIL)), " (job: train-cac stage 3 on ms-swift)"
            counts[checked.verdict] += 1
            print("\n".join([f"{VERDICT_WORDS[checked.verdict]:<7} {file}{job}: {checked.why}", *_fit([_DETAIL + line for line in checked.lines], width)]),
                  flush=True)
            continue
        try:
            spec, config = load_recipe(file, overrides)
        except RecipeError as exc:
            checked, job = _Checked(CHECK_FAILED, str(exc).removeprefix(f"{file}: ")), ""
        else:
            header = header_processes(file) if processes is None else None
            on = nodes if nodes is not None else header_nodes(file) if header is not None else 1
            checked = _memory_plan(spec, config, processes, gpu_gib, header, on, width - len(_DETAIL), gbps, file)
            job = f" (job: {spec.name})"
        counts[checked.verdict] += 1
        verdict = f"{VERDICT_WORDS[checked.verdict]:<7} {file}{job}" + (f": {checked.why}" if checked.why else "")  # one line: grep ^FAIL finds each
        print("\n".join([verdict, *_fit([_DETAIL + line for line in checked.lines], width)]), flush=True)
    code = CHECK_FAILED if counts[CHECK_FAILED] else CHECK_UNKNOWN if counts[CHECK_UNKNOWN] else CHECK_OK
    print(f"{len(files)} recipe{'s' if len(files) != 1 else ''}: {counts[CHECK_OK]} ok, {counts[CHECK_FAILED]} failed"
          + (f", {counts[CHECK_UNKNOWN]} not planned whole" if counts[CHECK_UNKNOWN] else "") + f" (exit {code})")
    return code


def _eval_alias(argv: Sequence[str]) -> list[str]:
    """``cac-align eval bench ...`` is ``cac-align eval-bench ...`` (likewise vbench, expert)."""
    argv = list(argv)
    if len(argv) >= 2 and argv[0] == "eval" and f"eval-{argv[1]}" in JOBS:
        return [f"eval-{argv[1]}", *argv[2:]]
    return argv


def _show_job_logs(verbose: bool = False) -> None:
    """The jobs' own log lines (``cac_align.*`` loggers: resumed from, checkpoint written, a
    skipped video) on stderr, INFO and up (DEBUG with --verbose), as plain lines; other libraries' loggers are left as
    they are. Once per process (``main`` may run several times in one interpreter)."""
    import logging

    class _Stderr(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is at the time (a caller may have replaced it)."""

        @property  # type: ignore[override]
        def stream(self):  # noqa: ANN202
            return sys.stderr

        @stream.setter
        def stream(self, value):  # noqa: ANN001, ANN202
            pass

    logger = logging.getLogger("cac_align")
    if not any(getattr(h, "_cac_align", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._cac_align = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if verbose:
        logger.setLevel(logging.DEBUG)  # the memory table of a CPU run, and the rest of our debug lines
    elif logger.level in (logging.NOTSET, logging.DEBUG):
        logger.setLevel(logging.INFO)
    from cac_align.run.voice import quiet_other_processes

    quiet_other_processes(logger)  # many processes: the first speaks, the others warn (cac_align/run/voice.py)


def _interrupted(spec: object, config: object) -> str:
    """The line a Ctrl-C ends a job with: how its run continues (a resumable job whose ``out_dir``
    holds its run), or that it stopped before it recorded anything (models still loading)."""
    from cac_align.run.folder import read_manifest

    resume = getattr(spec, "resume", None)
    if not resume:
        return "interrupted"
    out_dir = getattr(config, "out_dir", None)
    if out_dir is not None:
        try:
            manifest = read_manifest(out_dir)
        except RecipeError:
            manifest = None
        if manifest is None or manifest.get("job") != getattr(spec, "name", None):
            return f"interrupted before its run started (nothing recorded in {out_dir}); rerun the same command to start it"
    return f"interrupted; {resume}"


# Third-party messages that tell a cac-align user nothing, hidden unless --verbose (docs/cli.md,
# "Quiet by default", lists them): (logger, the message's start) and (warning category, message regex).
QUIET_LOGS = (
    ("diffusers.guiders.guider_utils", "Guiders are currently an experimental feature"),  # every guider diffusers builds (HunyuanVideo-1.5's pipeline: two)
)
QUIET_WARNINGS = (
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated"),  # MiniMax-H3's vocoder, as diffusers builds it
)


class _QuietFilter:
    """A logging filter that drops the records of :data:`QUIET_LOGS` on its logger."""

    def __init__(self, start: str) -> None:
        self.start = start

    def filter(self, record: Any) -> bool:
        return not record.getMessage().startswith(self.start)


def _third_party_quiet(quiet: bool) -> None:
    """Hide (``quiet``) or show the messages of :data:`QUIET_LOGS` and :data:`QUIET_WARNINGS`;
    idempotent, so ``main`` run again in one process (tests) leaves one filter of each."""
    import logging
    import warnings

    for name, start in QUIET_LOGS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _QuietFilter)]:
            logger.removeFilter(old)
        if quiet:
            logger.addFilter(_QuietFilter(start))
    for category, message in QUIET_WARNINGS:
        warnings.filters[:] = [f for f in warnings.filters if not (f[0] == "ignore" and f[2] is category and getattr(f[1], "pattern", None) == message)]
        if quiet:
            warnings.filterwarnings("ignore", message=message, category=category)


def _record_for_torchrun(exc: BaseException, line: str | None = None) -> None:
    """Under torchrun, write why this process ends where torchrun reads a failure's root cause
    (``TORCHELASTIC_ERROR_FILE``): its summary then names it instead of a blank "Root Cause" (a job
    that ends with an exit status raises nothing torchrun can see).

    A crash (``line`` None) goes through torch's own ``ErrorHandler``, traceback and all. A refusal
    that the job says in one ``line`` (a bad recipe, a run folder of another run) is written in the
    same JSON layout with that line where the traceback would be: torchrun's summary prints the
    ``py_callstack`` field as the failure's "traceback" (torch.distributed.elastic.multiprocessing.errors,
    ``ChildFailedError._format_failure``), so it shows the one line the terminal showed, not our code's frames."""
    import json
    import os
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    try:
        if line is None:
            ErrorHandler().record_exception(exc)
            return
        with open(path, "w", encoding="utf-8") as handle:  # the layout ErrorHandler.record_exception writes
            json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}, handle)
    except OSError:  # the file is torchrun's: never let writing it hide the job's own line
        pass


def _say(line: str, traceback: BaseException | None = None) -> None:
    """Print the line a job ends with on stderr (with ``traceback``'s above it): once for a run of many
    processes, by the process that failed first (cac_align/run/voice.py)."""
    from cac_align.run.voice import failure_line

    said = failure_line(line)
    if said is None:
        return
    if traceback is not None:
        import traceback as tb

        tb.print_exception(traceback, file=sys.stderr)
    print(said, file=sys.stderr)


def _print_config(spec: Any, recipe: Any, overrides: list[str]) -> None:
    """``--print-config``: the resolved config (the reward section with its defaults); where it
    cannot be built yet (``out_dir`` with no recipe, a choice still to make), the defaults with
    ``???`` where a value is required, and on stderr what a run would still need."""
    from omegaconf import OmegaConf

    from cac_align.config import merged_config

    try:
        config = load_config(spec.config_class(), recipe, overrides, job=spec.name)
    except RecipeError as exc:
        print(OmegaConf.to_yaml(merged_config(spec.config_class(), recipe, overrides, job=spec.name)), end="")
        print(f"cac-align {spec.name}: not runnable as it stands: {exc}", file=sys.stderr)
        return
    resolved = dataclasses.asdict(config)
    if isinstance(resolved.get("reward"), dict):  # the reward section with its defaults
        from cac_align.rewards.registry import resolved_section

        resolved["reward"] = resolved_section(resolved["reward"])
    print(OmegaConf.to_yaml(OmegaConf.structured(resolved)), end="")


def main(argv: Sequence[str] | None = None) -> int:
    from cac_align.run.interrupts import install as ctrl_c_stops_at_a_safe_point

    args = _build_parser().parse_args(_eval_alias(sys.argv[1:] if argv is None else argv))
    _show_job_logs(verbose=getattr(args, "verbose", False))
    _third_party_quiet(not getattr(args, "verbose", False))
    ctrl_c = ctrl_c_stops_at_a_safe_point()  # cac_align/run/interrupts.py: never raised inside a lock or a finalizer
    config = None
    completed = False
    try:
        if args.command == "check-recipe":
            return _check_recipes(args.recipes, args.processes, args.gpu_gib, args.gpu_gb, args.nodes, args.gpus_per_node, args.network_gbps,
                                  args.nvlink_gbps)
        if args.command == "recipes":
            return _recipes(args.action, args.name, args.dest)
        spec = JOBS[args.command]
        overrides = list(args.overrides)
        if args.out is not None:
            overrides.append(f"out_dir={args.out}")
        if args.print_config:
            _print_config(spec, args.config, overrides)
            return 0
        config = load_config(spec.config_class(), args.config, overrides, job=spec.name)
        with running_recipe(args.config):  # a "no such file" speaks of recipes only when there is one
            spec.runner()(config)
        completed = True
        return 0
    except KeyboardInterrupt:
        # Ctrl-C: one line, not a traceback; 130 = 128 + SIGINT, as shells report it. First of the
        # clauses: the next ones import torch to name their errors, a minute on a loaded machine
        if ctrl_c is not None:
            ctrl_c.stopping = True  # a second SIGINT (torchrun's agent passes the terminal's on) waits for this one
        _say(f"cac-align {args.command}: {_interrupted(JOBS.get(args.command), config)}")
        return 130
    except _user_errors() as exc:
        line = f"cac-align {args.command}: error: {exc}"
        _say(line)
        _record_for_torchrun(exc, line)  # torchrun's summary: the same one line
        return 2
    except _backend_errors() as exc:
        # a reward server that is not there, a job whose every sample failed, a reward's refusal
        line = f"cac-align {args.command}: failed: {exc}"
        _say(line)
        _record_for_torchrun(exc, line)
        return 1
    except Exception as exc:
        # a bug or a crash (out of memory, a collective that failed) keeps its traceback; with many
        # processes, the one that failed first prints it, naming itself, and the rest stay quiet
        from cac_align.run.voice import process_rank

        if process_rank()[1] == 1:
            raise
        _say(f"cac-align {args.command}: failed: {type(exc).__name__}: {exc}", traceback=exc)
        _record_for_torchrun(exc)
        return 1
    finally:
        from cac_align.run.dist import end_processes
        from cac_align.run.folder import release_locks

        end_processes(completed)  # every job's process group ends here, the same way (a run of many processes)
        release_locks()  # the job's out_dir is free for the next run (main may run again in-process)
        if ctrl_c is not None:  # main may run in-process: leave the caller's handler as it was
            ctrl_c.uninstall()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
