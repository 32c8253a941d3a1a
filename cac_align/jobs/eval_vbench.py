"""``cac-align eval vbench``: VBench dimensions per system by vbench's own code (the weights,
backbones and per-video scoring are in :mod:`cac_align.eval.vbench`); rerunning resumes,
keeping scored videos."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from omegaconf import MISSING

from cac_align.config import RecipeError
from cac_align.eval.vbench import DIMENSIONS, IQ_MODES, SYSTEM_NAME, aggregate, check_weights, import_vbench, load_backbone, score_video, vbench_cache_dir
from cac_align.run.folder import write_text_atomic

__all__ = ["VBenchConfig", "run"]


@dataclass
class VBenchConfig:
    """Config of `cac-align eval vbench`.

    Attributes:
        systems: system name -> its videos: a folder of ``.mp4`` files, a JSONL manifest with
            ``video`` (and ``prompt``) per line (``cac-align bon`` writes
            ``chosen/prompts.jsonl``), or one file. The first system is the base model in
            ``cac-align report``.
        dimensions: any of dynamic_degree, subject_consistency, imaging_quality.
        out_dir: receives vbench.json, vbench.md, per_video.csv and per_video/.
        cache_dir: the vbench cache holding the weights; null = ``$VBENCH_CACHE_DIR``, else
            ``~/.cache/vbench``.
        device: "auto" (cuda when available), "cpu", "cuda:1", ...
        imaging_quality_preprocessing_mode: vbench's resize before MUSIQ: "longer" (vbench's
            default: longer side at most 512), "shorter", "shorter_centercrop" or "None".
        overwrite: discard the scores already in ``out_dir`` instead of resuming.
    """

    # the name a "takes a mapping" error writes in its example (cac_align.config)
    EXAMPLE_NAMES: ClassVar[dict[str, str]] = {"systems": "base"}

    systems: dict[str, str] = field(default_factory=dict)
    dimensions: list[str] = field(default_factory=lambda: list(DIMENSIONS))
    out_dir: str = MISSING
    cache_dir: str | None = None
    device: str = "auto"
    imaging_quality_preprocessing_mode: str = "longer"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.systems:
            raise ValueError("systems is empty: give at least one, e.g. 'systems={base: runs/base/videos}'")
        for name in self.systems:
            if not SYSTEM_NAME.match(str(name)):
                raise ValueError(f"system name {name!r}: use letters, digits and _ . + - (it names a folder)")
        unknown = [d for d in self.dimensions if d not in DIMENSIONS]
        if unknown or not self.dimensions:
            raise ValueError(f"dimensions {list(self.dimensions)}: choose from {', '.join(DIMENSIONS)}")
        if self.imaging_quality_preprocessing_mode not in IQ_MODES:
            raise ValueError(f"imaging_quality_preprocessing_mode={self.imaging_quality_preprocessing_mode!r}: one of {IQ_MODES}")


def _settings(config: VBenchConfig, vbench_version: str) -> dict:
    """What the scores depend on (the manifest's fingerprint); the device and systems may change on resume."""
    return {
        "cache_dir": str(vbench_cache_dir(config.cache_dir).resolve()),
        "imaging_quality_preprocessing_mode": config.imaging_quality_preprocessing_mode,
        "vbench": vbench_version,
    }


def _read_rows(path: Path) -> dict[str, dict]:
    """Rows of a per-video JSONL by video, the last line of a video winning. A line cut short
    by a killed run is cut off the file, so that the next row appended starts a line."""
    rows: dict[str, dict] = {}
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "video" in row:
                rows[row["video"]] = row
    return rows


VBENCH_OUTPUTS = ("vbench.json", "vbench.md", "per_video.csv", "per_video")


def _prepare_out_dir(out: Path, settings: dict, overwrite: bool, config: Any = None) -> None:
    """The run folder (docs/run_folders.md): scores made with other settings are refused, naming
    them, unless ``overwrite`` (which discards this job's outputs, nothing else); the same
    settings resume from the per-video files."""
    from cac_align.run.folder import RunFolder

    RunFolder(out, "eval-vbench", VBENCH_OUTPUTS, settings, config, overwrite=overwrite).start()


def _label(dimension: str) -> str:
    return dimension.replace("_", " ").capitalize()


def _markdown(results: dict, dimensions: Sequence[str]) -> str:
    lines = ["# VBench", "", "| system | " + " | ".join(f"{_label(d)} ↑" for d in dimensions) + " |"]
    lines.append("| --- |" + " --- |" * len(dimensions))
    for name, system in results.items():
        cells = []
        for dim in dimensions:
            entry = system["dimensions"][dim]
            value = "–" if entry["mean"] is None else f"{entry['mean']:.4f}"
            failed = f", {entry['failed']} failed" if entry["failed"] else ""
            cells.append(f"{value} (n={entry['n']}{failed})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Dynamic degree: fraction of videos that move. Subject consistency: mean over all frame pairs.",
        "Imaging quality: MUSIQ / 100. n = videos scored; failed videos are left out (errors in vbench.json).",
    ]
    return "\n".join(lines) + "\n"


def run(config: VBenchConfig, backbones: dict[str, Any] | None = None) -> dict:
    """Score every system's videos on every dimension; write the outputs; return vbench.json's content.

    Args:
        backbones: dimension -> a ready network, used instead of loading one from the cache
            (and then the cache is not checked for that dimension).
    """
    from importlib.metadata import version

    from tqdm.auto import tqdm

    from cac_align.run.input_files import collect_inputs, existing
    from cac_align.loading import resolve_device

    backbones = dict(backbones or {})
    # 1. inputs, all of them before any output is written, and the paths given before the weights are looked for in them
    inputs: dict[str, tuple[list[str], list[str | None]]] = {}
    for name, source in config.systems.items():
        try:
            paths, prompts = collect_inputs(str(source), None)
        except RecipeError as exc:
            raise RecipeError(f"systems.{name}: {exc}") from None
        inputs[name] = ([str(Path(p).resolve()) for p in paths], prompts)
    if config.cache_dir is not None:
        existing(config.cache_dir, "cache_dir", "folder", "point it at the folder that holds vbench's weights, or leave it null ($VBENCH_CACHE_DIR)")
    # 2. weights and vbench itself, before any work
    weights = check_weights([d for d in config.dimensions if d not in backbones], config.cache_dir)
    import_vbench()
    out = Path(config.out_dir)
    _prepare_out_dir(out, _settings(config, version("vbench")), config.overwrite, dataclasses.asdict(config))
    device = resolve_device(config.device)
    # 3. score: one backbone at a time, every system, resuming from the per-video files
    for dim in config.dimensions:
        files = {name: out / "per_video" / name / f"{dim}.jsonl" for name in inputs}
        done = {name: _read_rows(files[name]) for name in inputs}
        todo = [
            (name, path, prompt)
            for name, (paths, prompts) in inputs.items()
            for path, prompt in zip(paths, prompts)
            if done[name].get(path, {}).get("score") is None
        ]
        if not todo:
            continue
        backbone = backbones.get(dim) or load_backbone(dim, weights[dim], device)
        with tqdm(total=len(todo), desc=f"vbench {dim}", unit="video") as bar:
            for name, path, prompt in todo:
                row = {**score_video(dim, backbone, path, device, config.imaging_quality_preprocessing_mode), "prompt": prompt}
                files[name].parent.mkdir(parents=True, exist_ok=True)
                with files[name].open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                bar.update(1)
        if dim not in backbones:
            del backbone
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
    # 4. assemble
    results: dict[str, dict] = {}
    for name, (paths, _) in inputs.items():
        dims = {}
        for dim in config.dimensions:
            done = _read_rows(out / "per_video" / name / f"{dim}.jsonl")
            rows = [done[p] for p in paths]
            dims[dim] = {
                "mean": aggregate(dim, rows),
                "n": sum(r["score"] is not None for r in rows),
                "failed": sum(r["score"] is None for r in rows),
                "per_video": rows,
            }
        results[name] = {"source": str(config.systems[name]), "dimensions": dims}
    payload = {"vbench": version("vbench"), "cache_dir": str(vbench_cache_dir(config.cache_dir)), "systems": results}
    write_text_atomic(out / "vbench.json", json.dumps(payload, indent=1))
    write_text_atomic(out / "vbench.md", _markdown(results, config.dimensions))
    with (out / "per_video.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["system", "video", "prompt", *config.dimensions, "errors"])
        for name, (paths, prompts) in inputs.items():
            for index, (path, prompt) in enumerate(zip(paths, prompts)):
                rows = {dim: results[name]["dimensions"][dim]["per_video"][index] for dim in config.dimensions}
                errors = "; ".join(f"{dim}: {row['error']}" for dim, row in rows.items() if row["error"])
                writer.writerow([name, path, prompt or "", *("" if r["score"] is None else r["score"] for r in rows.values()), errors])
    failed = sum(e["failed"] for s in results.values() for e in s["dimensions"].values())
    print(f"vbench: {out / 'vbench.md'}, {out / 'vbench.json'}" + (f" ({failed} video scores failed; see errors)" if failed else ""))
    return payload
