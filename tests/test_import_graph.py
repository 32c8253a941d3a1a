"""The package's shape: no import circles, low-level modules never import a job, the jobs' index
or the CLI, every job in the jobs/ wing, no function longer than MAX_FUNCTION_LINES, and no caller
that sniffs a reward's or a backend's abilities (``getattr(reward, "score_range", None)``): what
a caller reads is part of the contract (rewards/base.py ``Reward``, vlm/backend.py ``Backend``).

Read from the source with ``ast`` (nothing is imported), counting imports inside functions too
(they hide circles, they do not remove them) and leaving out ``if TYPE_CHECKING:`` blocks (never
run), except for the circles a reader sees: there an annotation's import is an arrow too
(``farm-studio look`` draws it). ``pytest tests/test_import_graph.py`` is the check; on a failure it
names the modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from cac_align.jobs import JOBS
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "cac_align"
MAX_FUNCTION_LINES = 120  # a function longer than this is split into named steps

# Modules that are only a job (or the CLI): every module of the jobs/ wing (its index, which
# maps CLI names to modules as strings and imports none of them, is not a job).
JOB_MODULES = {spec.module for spec in JOBS.values()} | {
    f"cac_align.jobs.{p.stem}" for p in (PACKAGE / "jobs").glob("*.py") if p.stem != "__init__"
} | {"cac_align.cli"}
# The jobs' index (CLI names -> job modules) is the CLI's to read; below the jobs it is a job import.
JOB_MODULES = JOB_MODULES | {"cac_align.jobs"}
# The jobs spread over two modules: `train-cac` dispatches stage 3 to its trainer; `dpo` reads its pairs
# (dpo_pairs.py: run folders and the reward registry, both above gen/).
# `nft` extends flow-grpo's trainer (the same loop with DiffusionNFT's sampling and update).
SECOND_MODULES = {"train_cac_grpo": "train_cac", "dpo_pairs": "dpo"}
ALLOWED_JOB_IMPORTS = {(f"cac_align.jobs.{job}", f"cac_align.jobs.{part}") for part, job in SECOND_MODULES.items()} | {
    ("cac_align.jobs.nft", "cac_align.jobs.flow_grpo")}
# Names our contract objects go by in the package: getattr / hasattr on them looks for an ability
# the contract should state instead.
CONTRACT_OBJECTS = {"reward", "rewards", "backend", "generator", "scorer"}
# The registry's contract check itself names what a built reward lacks.
ALLOWED_SNIFFS = {"cac_align/rewards/registry.py"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph(package: Path = PACKAGE, type_checking: bool = False) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` (``from pkg import sub`` counts as ``sub``);
    ``type_checking``: the imports under ``if TYPE_CHECKING:`` counted too."""
    files = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package_name = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                    for other in child.orelse:
                        visit(other)
                    continue
                if isinstance(child, ast.Import):
                    targets.update(alias.name for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:  # relative: resolve against this module's package
                        up = package_name.split(".")[: len(package_name.split(".")) - child.level + 1]
                        base = ".".join(up + ([base] if base else []))
                    for alias in child.names:
                        targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
                visit(child)

        visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_checks_can_fail(tmp_path):
    # a package with a circle hidden in a function, a TYPE_CHECKING-only back edge, and a relative import
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from . import c\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import X\nfrom pkg.a import f\n")
    (package / "d.py").write_text("from pkg import c\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.c"}  # c's TYPE_CHECKING import of d is not an edge
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    read = import_graph(package, type_checking=True)  # as a reader sees it: c's annotation import of d is an arrow
    assert read["pkg.c"] == {"pkg.a", "pkg.d"} and cycles(read) == [["pkg.a", "pkg.b", "pkg.c", "pkg.d"]]


def test_no_import_circles():
    graph = import_graph()
    assert "cac_align.jobs.train_cac_grpo" in graph and graph["cac_align.jobs.train_cac_grpo"]  # it read the package
    assert cycles(graph) == []


def test_no_circle_even_through_the_imports_of_annotations():
    """What ``farm-studio look`` draws: a function that takes a class imports it (for its annotation, under
    ``if TYPE_CHECKING:``), so the class's module must not import that function's. gen/parallel/: the
    :class:`Layout` is data in dims.py; loading, parallelize, gradients and gather are functions that take it."""
    graph = import_graph(type_checking=True)
    assert "cac_align.gen.parallel.dims" in graph["cac_align.gen.parallel.gradients"]  # it reads the annotations' imports
    assert not graph["cac_align.gen.parallel.dims"] & {m for m in graph if m.startswith("cac_align.gen.parallel.")}
    assert cycles(graph) == []


def test_every_job_lives_in_the_jobs_wing():
    outside = sorted(spec.module for spec in JOBS.values() if not spec.module.startswith("cac_align.jobs."))
    assert outside == []
    files = {p.stem for p in (PACKAGE / "jobs").glob("*.py")} - {"__init__"}
    assert {spec.module.rpartition(".")[2] for spec in JOBS.values()} | set(SECOND_MODULES) == files


def job_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, job module) for every import of a job, or of the jobs' index, by a module that is
    not the CLI, and of a job by another job (bar :data:`ALLOWED_JOB_IMPORTS`)."""
    return sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if target in JOB_MODULES and (module, target) not in ALLOWED_JOB_IMPORTS
        and not (module == "cac_align.cli" and target == "cac_align.jobs")
        and not (module.startswith("cac_align.jobs.") and target == "cac_align.jobs")  # a job reads its own index
    )


def test_low_level_modules_import_no_job_and_jobs_no_other_job():
    assert {"cac_align.jobs.score", "cac_align.jobs.flow_grpo", "cac_align.jobs.train_cac", "cac_align.jobs.eval_bench"} <= JOB_MODULES
    assert job_imports(import_graph()) == []
    # the check sees the index imported from a library module, and a job from another job
    assert job_imports({"cac_align.integrations.x": {"cac_align.jobs"}, "cac_align.jobs.score": {"cac_align.jobs.synth"}}) == [
        ("cac_align.integrations.x", "cac_align.jobs"), ("cac_align.jobs.score", "cac_align.jobs.synth")]


def ability_sniffs(package: Path = PACKAGE) -> list[str]:
    """``path:line`` of every ``getattr`` / ``hasattr`` on a contract object (a reward, a backend,
    ...: :data:`CONTRACT_OBJECTS`), directly or through another getattr."""

    def on_contract(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in CONTRACT_OBJECTS
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" and bool(node.args) and on_contract(node.args[0])

    found = []
    for path in sorted(package.rglob("*.py")):
        where = str(path.relative_to(package.parent))
        if where in ALLOWED_SNIFFS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and node.args and on_contract(node.args[0]):
                found.append(f"{where}:{node.lineno}")
    return sorted(found)


def test_no_caller_sniffs_a_contract_objects_abilities(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.py").write_text(
        "def f(reward, backend, other):\n"
        "    a = getattr(reward, 'score_range', None)\n"
        "    b = getattr(getattr(backend, 'processor', None), 'image_processor', None)\n"
        "    c = hasattr(backend, 'x')\n"
        "    d = getattr(other, 'y', None)\n"
    )
    assert ability_sniffs(package) == ["pkg/m.py:2", "pkg/m.py:3", "pkg/m.py:3", "pkg/m.py:4"]
    assert ability_sniffs() == []


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` of every function or method longer than ``limit`` lines
    (decorators and docstring included; a nested function counts inside its parent too)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_long_functions_are_found(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(8))
    (package / "m.py").write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n")
    assert long_functions(package, limit=8) == ["pkg/m.py:6 long (9 lines)"]
    assert long_functions(package, limit=9) == []


def test_no_function_is_longer_than_the_limit():
    assert long_functions() == []


# The floors under the plug-in layer (DESIGN.md: jobs -> integrations/rewards/eval -> cac/gen/vlm ->
# run/rl/video/config): the generator side, the judge, the models' backends, the data and the ground floor
# import nothing of the floors above them, lazily or not.
BELOW_THE_REWARDS = ("cac_align.gen", "cac_align.cac", "cac_align.vlm", "cac_align.data", "cac_align.run", "cac_align.rl", "cac_align.video",
                     "cac_align.config", "cac_align.regions", "cac_align.loading")
ABOVE_THEM = ("cac_align.rewards", "cac_align.integrations", "cac_align.eval", "cac_align.plan", "cac_align.jobs", "cac_align.cli")


def _under(module: str, places: tuple[str, ...]) -> bool:
    return any(module == place or module.startswith(place + ".") for place in places)


def imports_back_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, module it imports) for every import from :data:`BELOW_THE_REWARDS` into :data:`ABOVE_THEM`."""
    return sorted((module, target) for module, targets in graph.items() if _under(module, BELOW_THE_REWARDS)
                  for target in targets if _under(target, ABOVE_THEM))


def test_the_floors_below_the_rewards_import_nothing_above_them():
    graph = import_graph()
    assert "cac_align.rewards.registry" in graph["cac_align.jobs.dpo_pairs"]  # it reads imports inside functions
    assert imports_back_up(graph) == []
    # the check sees the arrow that ran back up until the pairs moved to the dpo job (gen/pairs.py -> the reward registry)
    assert imports_back_up({"cac_align.gen.pairs": {"cac_align.rewards.registry", "cac_align.regions"}, "cac_align.rewards.cac": {"cac_align.cac.infer"},
                            "cac_align.generator": {"cac_align.jobs.dpo"}}) == [("cac_align.gen.pairs", "cac_align.rewards.registry")]  # (a name that only begins as gen does is not gen)


# The RL math (cac_align/rl/) stands beside the ground floor: it may import itself and the ground
# floor's values (regions: a reward's evidence as a region), never a generator family, a job or an
# integration, nor anything else above it.
RL_MAY_IMPORT = ("cac_align.rl", "cac_align.regions", "cac_align.video", "cac_align.config")


def rl_imports_above(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(rl module, module it imports) for every import of :mod:`cac_align.rl` that leaves it and the
    ground floor (:data:`RL_MAY_IMPORT`)."""
    return sorted(
        (module, target)
        for module, targets in graph.items() if module == "cac_align.rl" or module.startswith("cac_align.rl.")
        for target in targets
        if not any(target == allowed or target.startswith(allowed + ".") for allowed in RL_MAY_IMPORT)
    )


def test_the_rl_math_imports_nothing_above_the_ground_floor():
    graph = import_graph()
    assert {"cac_align.rl.advantages", "cac_align.rl.sde", "cac_align.rl.nft", "cac_align.rl.dpo", "cac_align.rl.credit"} <= set(graph)
    assert "cac_align.regions" in graph["cac_align.rl.credit"]  # the check reads rl's imports
    assert rl_imports_above(graph) == []
    # the check sees an import of a family, a job and an integration (and lets rl import itself)
    assert rl_imports_above({"cac_align.rl.sde": {"cac_align.gen.families.wan", "cac_align.rl.advantages"},
                             "cac_align.rl.nft": {"cac_align.jobs.nft", "cac_align.integrations.verl_omni"}}) == [
        ("cac_align.rl.nft", "cac_align.integrations.verl_omni"), ("cac_align.rl.nft", "cac_align.jobs.nft"),
        ("cac_align.rl.sde", "cac_align.gen.families.wan")]


def test_gen_holds_no_rl_loss_and_no_family_module():
    """gen/ is the generator side's machinery: no RL loss (those are rl/'s) and no family module
    outside gen/families/ (a module that defines a family's ``FAMILIES`` or ``REGENERATORS``)."""
    misplaced = []
    for path in sorted((PACKAGE / "gen").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        if {"FAMILIES", "REGENERATORS"} & assigned or any(name.endswith("_loss") for name in defined):
            misplaced.append(path.name)
    assert misplaced == []
    families = sorted(p.stem for p in (PACKAGE / "gen" / "families").glob("*.py") if p.stem != "__init__")
    assert {"wan", "vace", "ltx2", "hunyuan15", "minimax_h3"} <= set(families)
