"""`cac-align convert`: public labelled sets (and your own labels) -> one annotation JSONL.

    cac-align convert --config recipes/data/convert.yaml                       # ViF-CoT-4K + VideoPhy-2
    cac-align convert --config recipes/data/convert_tiny.yaml                  # offline: the shipped tiny rows (after make-tiny --config tiny/convert_tiny_videos)

Each source names its format, its file and where its videos are:

    sources:
      - {format: vif_cot, path: ViF-CoT-4K/sft.json, media_dir: ViF-CoT-4K, video_root: ViF-CoT-4K/source_videos}
      - {format: videophy2, path: videophy2_train.csv, video_root: videophy2/videos, pc_threshold: 3}
      - {format: labels, path: our_labels.csv, license: "internal", box_scale: pixels}

Steps: 1. read every source's rows and convert them (:mod:`cac_align.data.convert` says how each
format maps onto CaC's schema); 2. write ``annotations.jsonl`` (every record with its ``source``
and ``license``, and ``provenance``: the file and line it came from) and ``convert_report.json`` /
``.md``: per source, rows read, records by status, anomalies by type, dropped categories by
name, rows converted to nothing on purpose with their reasons and lines, box scales detected,
rows that reached one video file (collisions), and every bad row with its file line and reason,
grouped by kind. A row is numbered by the file line it starts on (a JSON list's element too).
Two rows whose videos are one file are both bad rows: which label belongs to the file cannot be
known. Bad rows are never kept or dropped in silence; with ``strict: true`` any bad row fails the
job (nothing written).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from omegaconf import MISSING

from cac_align.data.convert.videophy2 import PROMPT_FROM

__all__ = ["ConvertConfig", "ConvertSource", "FORMATS", "run"]

FORMATS = ("vif_cot", "videophy2", "labels")
BOX_SCALES = ("pixels", "thousand", "fraction")
CONVERT_OUTPUTS = ("annotations.jsonl", "convert_report.json", "convert_report.md")


@dataclass
class ConvertSource:
    """One input of `cac-align convert`.

    Attributes:
        format: "vif_cot" (ViF-CoT-4K's LLaMA-Factory rows), "videophy2" (VideoPhy-2 rows) or
            "labels" (your own CSV / JSONL; columns in :mod:`cac_align.data.convert.labels`).
        path: the file (``.jsonl``, ``.json`` list, or ``.csv``).
        video_root: labels: where relative video paths are (default: the file's folder).
            VideoPhy-2: the downloaded videos, laid out as the ``video_url`` paths give them
            (``<generator folder>/<file>.mp4``; a flat folder is a counted fallback).
            ViF-CoT: the source videos of rows that list frames only.
        media_dir: ViF-CoT only: LLaMA-Factory's ``media_dir``, under which the rows' relative
            ``videos`` / ``images`` paths are found (default, as LLaMA-Factory's: the data
            file's folder).
        license: the labels' licence, kept in every record (defaults: CC BY 4.0 for ViF-CoT-4K,
            MIT for VideoPhy-2, "unspecified" for your labels).
        pc_threshold: VideoPhy-2: abnormal when physical commonsense <= this (default 3: the
            dataset counts PC >= 4 as physically commonsensical).
        plausible_as_normal: VideoPhy-2: keep the physically plausible videos as normal (they
            are AI-generated and were not checked for other anomalies; off by default).
        rules_make_abnormal: VideoPhy-2: a listed broken rule makes a video abnormal whatever its
            ``pc`` (off by default: annotators list trivial rules on videos rated 4 or 5).
        prompt_from: VideoPhy-2: "auto" (``upsampled_caption`` for the videos generated from it,
            whose URL folder says so; ``caption`` otherwise), "caption" or "upsampled_caption".
        box_scale: your labels' boxes: "pixels" of the video (default), "thousand" (0–1000) or
            "fraction" (0–1). ViF-CoT's scale is detected per record.
    """

    format: str = MISSING
    path: str = MISSING
    video_root: str | None = None
    media_dir: str | None = None
    license: str | None = None
    pc_threshold: int = 3
    plausible_as_normal: bool = False
    rules_make_abnormal: bool = False
    prompt_from: str = "auto"
    box_scale: str = "pixels"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.box_scale not in BOX_SCALES:
            raise ValueError(f"box_scale must be one of {BOX_SCALES}, got {self.box_scale!r}")
        if not 1 <= self.pc_threshold <= 5:
            raise ValueError(f"pc_threshold must be from 1 to 5, got {self.pc_threshold}")
        from cac_align.data.convert.videophy2 import PROMPT_FROM

        if self.prompt_from not in PROMPT_FROM:
            raise ValueError(f"prompt_from must be one of {PROMPT_FROM}, got {self.prompt_from!r}")
        if self.media_dir is not None and self.format != "vif_cot":
            raise ValueError(f"media_dir is ViF-CoT's setting (LLaMA-Factory's media_dir); a {self.format} source finds videos under video_root")


@dataclass
class ConvertConfig:
    """Config of `cac-align convert`.

    Attributes:
        out_dir: receives annotations.jsonl and the report.
        sources: the inputs (:class:`ConvertSource`), converted in order into one file.
        strict: fail (write nothing) when any row is bad, instead of reporting it.
        overwrite: replace a convert run of another config in ``out_dir`` (its outputs only).
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"format": FORMATS, "box_scale": BOX_SCALES, "prompt_from": PROMPT_FROM}

    out_dir: str = MISSING
    sources: list[ConvertSource] = field(default_factory=list)
    strict: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources is empty: name at least one input, e.g. {format: labels, path: labels.csv}")


_DEFAULT_LICENSES = {"vif_cot": "CC BY 4.0", "videophy2": "MIT", "labels": "unspecified"}


def written_by_make_tiny(folder: Path) -> str:
    """For a missing input folder: ``"; it is written by `cac-align make-tiny --config NAME`: run
    that first"`` when a shipped make-tiny recipe writes it (``convert_videos: true`` renders
    ``out_dir/videos``), else ``""``. Read from the shipped recipes, so the hint follows them."""
    import yaml

    from cac_align.config import SHIPPED_RECIPES

    target = folder.resolve()
    for path in sorted(SHIPPED_RECIPES.rglob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("job") == "make-tiny" and data.get("convert_videos") and data.get("out_dir"):
            if (Path(str(data["out_dir"])) / "videos").resolve() == target:
                name = path.relative_to(SHIPPED_RECIPES).with_suffix("").as_posix()
                return f"; it is written by `cac-align make-tiny --config {name}`: run that first"
    return ""


def convert_source(source: ConvertSource) -> tuple[list[Any], Any]:
    """(records, report) of one source; its bad rows are in the report."""
    from cac_align.config import RecipeError, relative_path_hint
    from cac_align.data.convert import BadRow, SourceReport, apply_results, labels, read_rows, videophy2, vif_cot

    path = Path(source.path)
    if not path.is_file():
        raise RecipeError(f"sources: {source.format} path={source.path!r}: no such file{relative_path_hint(path)}")
    folders = {}
    for key in ("video_root", "media_dir"):
        value = getattr(source, key)
        folders[key] = Path(value) if value else None
        if value and not folders[key].is_dir():
            raise RecipeError(f"sources: {source.format} {key}={value!r}: no such folder{written_by_make_tiny(folders[key])}"
                              f"{relative_path_hint(folders[key])}")
    root = folders["video_root"]
    report = SourceReport(source.format, str(path), source.license or _DEFAULT_LICENSES[source.format])
    rows = list(read_rows(path))
    if source.format == "labels":
        return labels.collect(rows, path.parent, root, source.box_scale, report), report
    sources = vif_cot.SourceVideos(root) if source.format == "vif_cot" and root is not None else None
    results = []
    for line, row in rows:
        report.rows += 1
        try:
            if isinstance(row, BadRow):
                raise row
            if source.format == "vif_cot":
                result = vif_cot.convert_row(row, line, folders["media_dir"] or path.parent, sources, report)
            else:
                result = videophy2.convert_row(row, line, path.parent, root, report, source.pc_threshold, source.plausible_as_normal,
                                               source.rules_make_abnormal, source.prompt_from)
        except BadRow as exc:
            report.bad(line, str(exc), exc.kind)
            continue
        results.append((line, result))
    return apply_results(results, report), report


def _first_lines(lines: list[int], limit: int = 5) -> str:
    """``line 4`` / ``lines 4, 9, 12 ... (3 more)``."""
    shown = ", ".join(str(line) for line in lines[:limit])
    more = f" ... ({len(lines) - limit} more)" if len(lines) > limit else ""
    return f"{'line' if len(lines) == 1 else 'lines'} {shown}{more}"


def _markdown(reports: list[Any], written: int) -> str:
    lines = ["# cac-align convert", "", f"{written} records written to annotations.jsonl.", ""]
    for r in reports:
        d = r.to_dict()
        written_here = sum(d["records"].values())
        lines += [f"## {d['format']}: {d['path']} ({d['license']})", "",
                  f"- rows read: {d['rows']}",
                  f"- records written: {written_here} ({d['records'].get('normal', 0)} normal, {d['records'].get('abnormal', 0)} abnormal)",
                  f"- anomalies by type: {d['anomalies_by_type'] or 'none'}",
                  f"- dropped categories (not CaC types): {d['dropped_categories'] or 'none'}",
                  f"- box scales (records): {d['box_scales'] or 'none'}"]
        if d["notes"]:
            lines.append(f"- notes: {d['notes']}")
        lines.append(f"- rows converted to nothing, on purpose: {sum(d['dropped_rows'].values()) or 'none'}")
        lines += [f"  - {reason}: {count} ({_first_lines(d['dropped_lines'][reason])})" for reason, count in d["dropped_rows"].items()]
        lines.append(f"- collisions (rows whose videos are one file, all of them bad rows): {len(d['collisions']) or 'none'}")
        lines += [f"  - {c['video']}: {_first_lines(c['lines'])}" for c in d["collisions"][:20]]
        by_kind: dict[str, list[int]] = {}
        for bad in d["bad_rows"]:
            by_kind.setdefault(bad["kind"], []).append(bad["line"])
        lines.append(f"- bad rows: {len(d['bad_rows']) or 'none'}")
        lines += [f"  - {kind}: {len(found)} ({_first_lines(found)})" for kind, found in by_kind.items()]
        if d["bad_rows"]:
            lines += ["", "| line | kind | reason |", "| --- | --- | --- |"]
            lines += [f"| {b['line']} | {b['kind']} | {b['reason'].replace('|', '/')} |" for b in d["bad_rows"][:50]]
            if len(d["bad_rows"]) > 50:
                lines.append(f"\n... {len(d['bad_rows']) - 50} more in convert_report.json")
        lines.append("")
    return "\n".join(lines)


def run(config: ConvertConfig) -> dict:
    """Convert every source; write annotations.jsonl and the report; return the report."""
    from omegaconf import OmegaConf

    from cac_align.cac.schema import write_annotations
    from cac_align.config import RecipeError
    from cac_align.run.folder import RunFolder, config_fingerprint, write_text_atomic

    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    folder = RunFolder(config.out_dir, "convert", CONVERT_OUTPUTS, config_fingerprint(config, ("out_dir", "overwrite")), resolved, overwrite=config.overwrite)
    # 1. convert each source, in order
    records, reports = [], []
    for source in config.sources:
        converted, report = convert_source(source)
        for record in converted:
            report.records[record.status] += 1
            for anomaly in record.anomalies:
                report.anomalies[anomaly.type] += 1
        records += converted
        reports.append(report)
    bad = sum(len(r.bad_rows) for r in reports)
    if config.strict and bad:
        listed = [f"{r.path} line {b['line']}: {b['reason']}" for r in reports for b in r.bad_rows]
        shown = "; ".join(listed[:5]) + (f"; ... {len(listed) - 5} more" if len(listed) > 5 else "")
        raise RecipeError(f"{bad} bad row(s) with strict=true ({shown}); nothing written")
    # 2. write the records and the report
    folder.start()
    out = folder.path
    for record in records:  # the annotation file's rule: a relative video path resolves against its folder
        record.video = os.path.relpath(os.path.abspath(record.video), os.path.abspath(out))
    write_annotations(records, out / "annotations.jsonl")
    summary = {"written": len(records), "bad_rows": bad, "sources": [r.to_dict() for r in reports]}
    write_text_atomic(out / "convert_report.json", json.dumps(summary, indent=1) + "\n")
    write_text_atomic(out / "convert_report.md", _markdown(reports, len(records)) + "\n")
    counts = ", ".join(f"{r.format}: {sum(r.records.values())} of {r.rows} rows" for r in reports)
    print(f"converted {len(records)} records ({counts}); {bad} bad row(s): {out / 'annotations.jsonl'}, report {out / 'convert_report.md'}")
    return summary
