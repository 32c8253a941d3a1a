"""Record what the jobs produce on fixed seeds, and compare two recordings (the house moves).

Before a refactor that moves code but must not change what it does, record; after it, record
again and compare. Everything runs offline on the CPU with the tiny recipes (about 2 minutes on
2 idle cores):

    python benchmarks/record_behaviour.py record /tmp/before
    ... move code ...
    python benchmarks/record_behaviour.py record /tmp/after
    python benchmarks/record_behaviour.py compare /tmp/before /tmp/after

What is recorded (each job runs in ``<dir>/work`` through the ``cac-align`` command, so the CLI,
recipe loading and run folders are part of what is compared):
- the README main job (``score`` with ``recipes/score/cac_demo.yaml``): ``results.jsonl``;
- a tiny Best-of-N (``recipes/align/bon_tiny.yaml``): its manifest (``candidates.jsonl``,
  ``summary.json``) and the SHA-256 of every video it wrote;
- a tiny Flow-GRPO run (``recipes/align/flow_grpo_tiny.yaml``) and a localized one
  (``flow_grpo_tiny_localized.yaml``), a tiny NFT run (``nft_tiny.yaml``), and a tiny DPO run
  (``dpo_tiny.yaml``) on the pairs of a tiny repair (``repair_tiny_wan.yaml``): the LoRA tensors
  each saved and its ``metrics.jsonl`` (the repair's rows and videos);
- a tiny LTX-2 Best-of-N (``bon_tiny_ltx2.yaml``): its rows, videos and soundtracks;
- tiny stages 1-3 of ``train-cac`` (after ``synth``): each stage's ``metrics.jsonl`` and the
  tensors of its final weights;
- the memory plan of every shipped big recipe (a generator trainer on a released model, and a
  ``bon`` or ``repair`` recipe on one), as ``check-recipe`` makes it offline on the layout its first
  line launches: each row's label and bytes per GPU, and the host rows (``plans/big_recipes.json``; ``record_behaviour.py plans FILE`` writes
  that file alone, as ``tests/fixtures/big_recipe_plans.json`` is written).

``compare`` reads JSON and JSONL rows with wall-clock fields left out (keys naming seconds, time,
dates, throughput) and the recording's own folder replaced by ``<work>`` (a per-step log's rows, each with its own
``step``, matched by step: a step only one recording logged is one line); it compares tensors as
tensors (``torch.equal``: identical, not close) and every other file by its bytes. It prints one
line per difference and exits 1 if there is any, 0 if the two recordings are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]

# (name, cac-align arguments); run in order, in one working folder (later jobs read earlier ones)
JOBS: list[tuple[str, list[str]]] = [
    ("score_demo", ["score", "--config", "recipes/score/cac_demo.yaml", "out_dir=outputs/score_demo"]),
    ("bon_tiny", ["bon", "--config", "recipes/align/bon_tiny.yaml"]),
    ("flow_grpo_tiny", ["flow-grpo", "--config", "recipes/align/flow_grpo_tiny.yaml"]),
    ("flow_grpo_tiny_localized", ["flow-grpo", "--config", "recipes/align/flow_grpo_tiny_localized.yaml"]),
    ("nft_tiny", ["nft", "--config", "recipes/align/nft_tiny.yaml"]),
    ("bon_tiny_ltx2", ["bon", "--config", "recipes/align/bon_tiny_ltx2.yaml"]),
    ("repair_tiny_wan", ["repair", "--config", "recipes/align/repair_tiny_wan.yaml"]),
    ("dpo_tiny", ["dpo", "--config", "recipes/align/dpo_tiny.yaml"]),
    ("synth_tiny", ["synth", "--config", "recipes/cac/synth_tiny.yaml"]),
    ("stage1_tiny", ["train-cac", "--config", "recipes/cac/stage1_tiny.yaml"]),
    ("stage2_tiny", ["train-cac", "--config", "recipes/cac/stage2_tiny.yaml"]),
    ("stage3_tiny", ["train-cac", "--config", "recipes/cac/stage3_grpo_tiny.yaml"]),
]

# the files compared, per output folder (globs relative to outputs/)
RECORDED = [
    "score_demo/results.jsonl",
    "bon_tiny/candidates.jsonl",
    "bon_tiny/summary.json",
    "bon_tiny/**/*.mp4",
    "flow_grpo_tiny/metrics.jsonl",
    "flow_grpo_tiny/**/*.safetensors",
    "flow_grpo_tiny_localized/metrics.jsonl",
    "flow_grpo_tiny_localized/**/*.safetensors",
    "nft_tiny/metrics.jsonl",
    "nft_tiny/**/*.safetensors",
    "bon_tiny_ltx2/candidates.jsonl",
    "bon_tiny_ltx2/**/*.mp4",
    "bon_tiny_ltx2/**/*.wav",
    "repair_tiny_wan/*.jsonl",
    "repair_tiny_wan/**/*.mp4",
    "dpo_tiny/metrics.jsonl",
    "dpo_tiny/**/*.safetensors",
    "cac_stage1_tiny/metrics.jsonl",
    "cac_stage1_tiny/final/*.safetensors",
    "cac_stage2_tiny/metrics.jsonl",
    "cac_stage2_tiny/final/*.safetensors",
    "cac_stage3_tiny/metrics.jsonl",
    "cac_stage3_tiny/final/*.safetensors",
    "plans/big_recipes.json",
]

# JSON keys whose values are wall-clock facts, not behaviour
CLOCK_WORDS = ("second", "time", "date", "elapsed", "per_s", "throughput", "started", "finished", "duration_s_wall")


def record(dest: Path) -> int:
    work = dest / "work"
    if work.exists():
        print(f"{work} exists; record into a new folder", file=sys.stderr)
        return 2
    work.mkdir(parents=True)
    for entry in ("recipes", "cac_align"):
        (work / entry).symlink_to(REPO / entry)
    env = {**os.environ, "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}
    for name, args in JOBS:
        start = time.perf_counter()
        with open(dest / f"{name}.log", "w") as log:
            proc = subprocess.run(["cac-align", *args], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        print(f"{name}: exit {proc.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode:
            print(f"{name} failed; see {dest / (name + '.log')}", file=sys.stderr)
            return 1
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # an empty Hugging Face cache: the plans from the configs shipped with cac-align
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "plans", str(work / "outputs" / "plans" / "big_recipes.json")],
                              cwd=REPO, env={**env, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"})
    print(f"plans: exit {proc.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
    if proc.returncode:
        return 1
    files = sorted(str(p.relative_to(work / "outputs")) for pattern in RECORDED for p in (work / "outputs").glob(pattern))
    (dest / "files.json").write_text(json.dumps(files, indent=1))
    print(f"recorded {len(files)} files in {dest}")
    return 0


def big_recipes() -> list[Path]:
    """The shipped generator trainers (flow-grpo, nft, dpo) whose generator is a released model (a hub id)."""
    from cac_align.jobs import load_recipe

    found = []
    for path in sorted((REPO / "recipes" / "align").glob("*.yaml")):
        spec, config = load_recipe(path)
        if spec.memory_inputs is not None and "/" in config.generator.name and not config.generator.name.startswith("tiny-random:"):
            found.append(path)
    return found


def big_sampling_recipes() -> list[Path]:
    """The shipped ``bon`` and ``repair`` recipes whose generator or regenerator is a released model (a hub id)."""
    from cac_align.jobs import load_recipe

    found = []
    for path in sorted((REPO / "recipes" / "align").glob("*.yaml")):
        if not path.stem.startswith(("bon_", "repair_")):
            continue
        spec, config = load_recipe(path)
        name = config.generator.name if spec.name == "bon" else config.regenerator.name
        if "/" in name and not name.startswith(("tiny-random:", "synthetic:")):
            found.append(path)
    return found


def big_recipe_plans() -> dict[str, Any]:
    """``{recipe: {processes, nodes, peak, gpu: [[label, bytes, source, phase], ...], host: [...]}}`` of every
    :func:`big_recipes` as ``check-recipe`` plans it (:func:`cac_align.cli.recipe_plan`) on the layout its first
    line launches, and of every :func:`big_sampling_recipes` (bon, repair: its own plan, one process's GPU;
    :mod:`cac_align.plan.sampling`). Offline: a release not in the Hugging Face cache is planned from the configs
    shipped with cac-align (run it with an empty cache to record those)."""
    from cac_align.cli import header_nodes, header_processes, recipe_plan
    from cac_align.config import resolve
    from cac_align.jobs import load_recipe

    plans = {}
    for path in big_recipes():
        spec, config = load_recipe(path)
        processes, nodes = header_processes(path), header_nodes(path)
        plan, host = recipe_plan(spec, config, processes, nodes)
        plans[path.stem] = {"processes": processes, "nodes": nodes, "peak": plan.peak_bytes,
                            "gpu": [[r.label, r.bytes, r.source, r.phase] for r in plan.rows],
                            "host": [[r.label, r.bytes, r.source, r.phase] for r in host.rows]}
    for path in big_sampling_recipes():
        spec, config = load_recipe(path)
        processes = header_processes(path) or 1
        plan = resolve(spec.plan)(config, processes, path)
        plans[path.stem] = {"processes": plan.processes, "nodes": 1, "peak": plan.peak_bytes,
                            "gpu": [[r.label, r.bytes, r.source, r.phase] for r in plan.rows],
                            "host": [[r.label, r.bytes, r.source, r.phase] for r in plan.host.rows]}
    return plans


def _normalized(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _normalized(v, root) for k, v in value.items() if not any(w in k.lower() for w in CLOCK_WORDS)}
    if isinstance(value, list):
        return [_normalized(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<work>")
    return value


def _json_rows(path: Path, root: str) -> list[Any]:
    text = path.read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
    return [_normalized(row, root) for row in rows]


def _by_step(rows: list[Any]) -> dict[int, Any] | None:
    """A per-step log's rows by their ``step`` (one row a step), or None for rows of another kind."""
    steps = [row.get("step") if isinstance(row, dict) else None for row in rows]
    if not rows or not all(isinstance(step, int) for step in steps) or len(set(steps)) != len(steps):
        return None
    return dict(zip(steps, rows))


def _tensor_differences(a: Path, b: Path) -> Iterator[str]:
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    if set(ta) != set(tb):
        yield f"tensor names differ: only in first {sorted(set(ta) - set(tb))[:5]}, only in second {sorted(set(tb) - set(ta))[:5]}"
    for key in sorted(set(ta) & set(tb)):
        x, y = ta[key], tb[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            yield f"{key}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"
        elif not torch.equal(x, y):
            diff = (x.double() - y.double()).abs().max().item()
            yield f"{key}: values differ (max abs difference {diff:.3g})"


def _file_differences(a: Path, b: Path, roots: tuple[str, str]) -> Iterator[str]:
    if a.suffix in (".json", ".jsonl"):
        ra, rb = _json_rows(a, roots[0]), _json_rows(b, roots[1])
        if _by_step(ra) is not None and _by_step(rb) is not None:  # a per-step log (metrics.jsonl): rows matched by their step
            sa, sb = _by_step(ra), _by_step(rb)
            for step in sorted(set(sa) - set(sb)):
                yield f"step {step} only in the first"
            for step in sorted(set(sb) - set(sa)):
                yield f"step {step} only in the second"
            pairs = [(f"step {step}", sa[step], sb[step]) for step in sorted(set(sa) & set(sb))]
        else:
            if len(ra) != len(rb):
                yield f"{len(ra)} rows vs {len(rb)}"
            pairs = [(f"row {i}", x, y) for i, (x, y) in enumerate(zip(ra, rb))]
        for where, x, y in pairs:
            if x != y:
                keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k)) if isinstance(x, dict) and isinstance(y, dict) else []
                yield f"{where} differs" + (f" in {keys[:6]}: {[x.get(k) for k in keys[:3]]} vs {[y.get(k) for k in keys[:3]]}" if keys else "")
    elif a.suffix == ".safetensors":
        yield from _tensor_differences(a, b)
    elif hashlib.sha256(a.read_bytes()).digest() != hashlib.sha256(b.read_bytes()).digest():
        yield "bytes differ"


def compare(first: Path, second: Path) -> int:
    files_a = json.loads((first / "files.json").read_text())
    files_b = json.loads((second / "files.json").read_text())
    problems = [f"only in {first}: {f}" for f in sorted(set(files_a) - set(files_b))]
    problems += [f"only in {second}: {f}" for f in sorted(set(files_b) - set(files_a))]
    roots = (str((first / "work").resolve()), str((second / "work").resolve()))
    tensors = 0
    for rel in sorted(set(files_a) & set(files_b)):
        a, b = first / "work" / "outputs" / rel, second / "work" / "outputs" / rel
        if a.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(a, "pt") as f:
                tensors += len(list(f.keys()))
        problems += [f"{rel}: {d}" for d in _file_differences(a, b, roots)]
    for line in problems:
        print(line)
    common = len(set(files_a) & set(files_b))
    verdict = "identical" if not problems else f"{len(problems)} differences"
    print(f"{common} files compared ({tensors} tensors, compared exactly): {verdict}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the jobs and keep their outputs in DIR")
    rec.add_argument("dir", type=Path)
    cmp = sub.add_parser("compare", help="compare two recordings")
    cmp.add_argument("first", type=Path)
    cmp.add_argument("second", type=Path)
    plans = sub.add_parser("plans", help="write the big recipes' memory plans (bytes per row) to FILE")
    plans.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        return record(args.dir.resolve())
    if args.command == "plans":
        args.file.parent.mkdir(parents=True, exist_ok=True)
        args.file.write_text(json.dumps(big_recipe_plans(), indent=1) + "\n")
        return 0
    return compare(args.first.resolve(), args.second.resolve())


if __name__ == "__main__":
    sys.exit(main())
