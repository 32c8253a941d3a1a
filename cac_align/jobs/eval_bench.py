"""``cac-align eval bench``: anomaly-detection metrics of one or more systems against annotations
(Table 1, the hard split, per type, localization, the reward), written as ``bench.json``,
``bench.md`` and one CSV per table. The metrics are in :mod:`cac_align.eval.bench`."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from cac_align.eval.bench import BenchConfig, evaluate_system, load_predictions, match_predictions
from cac_align.eval.metrics import nan_to_none
from cac_align.run.folder import RunFolder, config_fingerprint, write_text_atomic

__all__ = ["BenchConfig", "run"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _interval(bounds: Sequence[float]) -> str:
    return "" if any(math.isnan(b) for b in bounds) else f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"


TABLES = ("table1", "hard_split", "per_type", "localization", "reward", "videos")  # one CSV each (videos: not in bench.md)


def _tables(results: dict[str, dict]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    t1_keys = ["anomalous_recall", "anomalous_precision", "anomalous_f1", "normal_recall", "normal_precision", "normal_f1", "accuracy"]
    groups = ["short_small", "short_large", "long_small", "long_large", "no_boxes"]
    types = list(next(iter(results.values()))["per_type"])
    return {
        "table1": (["system", *t1_keys, "accuracy_ci_low", "accuracy_ci_high", "scored", "invalid", "missing"], [
            [name, *(r["table1"][k] for k in t1_keys), *r["table1"]["accuracy_ci"], r["coverage"]["scored"], r["coverage"]["invalid"], r["coverage"]["missing"]]
            for name, r in results.items()
        ]),
        "hard_split": (["system", *(f"{g}_recall" for g in groups), *(f"{g}_n" for g in groups)], [
            [name, *(r["hard_split"][g]["recall"] for g in groups), *(r["hard_split"][g]["n"] for g in groups)] for name, r in results.items()
        ]),
        "per_type": (["system", *types], [[name, *(r["per_type"][t]["recall"] for t in types)] for name, r in results.items()]),
        "localization": (["system", "temporal_iou", "spatial_iou", "n_true_positives"], [
            [name, r["localization"]["temporal_iou"], r["localization"]["spatial_iou"], r["localization"]["n_true_positives"]]
            for name, r in results.items()
        ]),
        "reward": (["system", "valid_fraction", "auroc", "auroc_ci_low", "auroc_ci_high", "n_scores", *(f"auroc {t}" for t in types)], [
            [name, r["reward"]["valid_fraction"], r["reward"]["auroc"], *r["reward"]["auroc_ci"], r["reward"]["n_scores"], *(r["reward"]["per_type_auroc"][t] for t in types)]
            for name, r in results.items()
        ]),
        # per video: what each system's verdict got right (status, window, boxes; grade_evidence)
        "videos": (["system", "video", "truth_status", "status", "status_agrees", "window_iou", "window_agrees", "boxes_touch_defect", "localized"], [
            [name, v["video"], v["truth"], v["status"], *("" if v[k] is None else v[k] for k in ("status_agrees", "window_iou", "window_agrees", "boxes_touch_defect", "localized"))]
            for name, r in results.items() for v in r["videos"]
        ]),
    }


def _markdown(results: dict[str, dict], config: BenchConfig) -> str:
    titles = {
        "table1": "Detection (Table 1; anomalous = positive class)",
        "hard_split": f"Hard split: recall of anomalous videos by duration (< / >= {config.long_s:g} s) and extent (< / >= {config.large_area:.0%} of the frame)",
        "per_type": "Recall per anomaly type (Table S3)",
        "localization": "Localization on true positives (Table S4)",
        "reward": "Reward: valid fraction and AUROC of the score (normal = positive class; per type: normal videos against that type's)",
    }
    lines = ["# Anomaly-detection bench", "", f"Ground truth: `{config.annotations}`. – = undefined (no video to divide by).", ""]
    for name, (header, rows) in _tables(results).items():
        if name == "videos":  # one row per video: videos.csv and bench.json only
            continue
        lines += [f"## {titles[name]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        lines.append("")
    flagged = [(n, r["bias"]) for n, r in results.items() if r["bias"]]
    if flagged:
        lines += ["## Prediction bias", ""] + [f"- **{n}**: {msg}" for n, msg in flagged] + [""]
    return "\n".join(lines)


def run(config: BenchConfig) -> dict:
    """Evaluate every system against the annotations; write the tables; return the numbers."""
    from cac_align.cac.schema import load_annotations
    from cac_align.config import RecipeError, relative_path_hint

    from cac_align.cac.schema import AnnotationError

    if not Path(config.annotations).exists():
        raise RecipeError(f"annotations file {config.annotations} does not exist{relative_path_hint(config.annotations)}")
    try:
        records = load_annotations(config.annotations).records
    except AnnotationError as exc:
        raise RecipeError(str(exc).splitlines()[0] if str(exc) else f"{config.annotations}: bad annotation lines") from None
    results = {}
    for name, path in config.predictions.items():
        predictions = load_predictions(path)
        matched, by_name = match_predictions(records, predictions, Path(path).parent, config.match)
        if all(p is None for p in matched):
            hint = ""
            if config.match == "path":
                names = {Path(p.video).name for p in predictions}
                same = sum(Path(r.video).name in names for r in records)
                if same:
                    hint = (f"; {same} of them share a file name with an annotated video: if they are the same videos "
                            "(copied elsewhere), pass match=name")
            raise RecipeError(f"predictions[{name}] = {path}: none of its videos is in {config.annotations} by {config.match}{hint}")
        results[name] = evaluate_system(records, matched, config)
        results[name]["coverage"]["matched_by_name"] = by_name
        if by_name:
            print(f"{name}: {by_name} of {len(records)} annotated videos matched a prediction by file name alone (match=name)")
    out = Path(config.out_dir)
    tables = _tables(results)
    folder = RunFolder(out, "eval-bench", ("bench.json", "bench.md", *(f"{name}.csv" for name in TABLES)),
                       config_fingerprint(config, ("out_dir", "overwrite")), dataclasses.asdict(config), overwrite=config.overwrite)
    folder.start()
    write_text_atomic(out / "bench.json", json.dumps({"annotations": config.annotations, "systems": nan_to_none(results)}, indent=1))
    for name, (header, rows) in tables.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows([["" if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows])
        write_text_atomic(out / f"{name}.csv", buffer.getvalue())
    write_text_atomic(out / "bench.md", _markdown(results, config))
    for name, result in results.items():
        t = result["table1"]
        print(f"{name}: accuracy {_fmt(t['accuracy'])}{_interval(t['accuracy_ci'])}, anomalous F1 {_fmt(t['anomalous_f1'])}, normal F1 {_fmt(t['normal_f1'])}, "
              f"reward AUROC {_fmt(result['reward']['auroc'])}{_interval(result['reward']['auroc_ci'])}, valid {_fmt(result['reward']['valid_fraction'])} "
              f"({result['coverage']['scored']}/{result['coverage']['annotated']} scored)" + (f"; BIAS: {result['bias']}" if result["bias"] else ""))
    print(f"bench: {out / 'bench.md'}, {out / 'bench.json'}")
    return results
