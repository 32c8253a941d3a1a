"""Anomaly-detection bench metrics (CaC Table 1, Fig. 4, Tables S3 and S4). Job: ``cac-align eval bench`` (:mod:`cac_align.jobs.eval_bench`).

Ground truth is an annotation JSONL (:mod:`cac_align.cac.schema`); predictions are one JSONL per
system, so a reward model scored here (``cac-align score``'s ``results.jsonl``) and baselines
evaluated elsewhere compare in one table. A prediction line needs ``video`` and ``status``
("normal" / "abnormal"); optional evidence:

- ``window_s`` ([start, end] seconds) or ``windows_s`` (a list of them): the predicted anomalous
  time; ``boxes``: ``[{"time_s": t, "boxes": [[x0, y0, x1, y1], ...]}, ...]`` (0–1000);
- a ``cac-align score`` line carries these inside ``details`` (the CaC turn-2 window and boxes),
  and they are read from there.

Predictions are matched to annotations by the video's resolved path (a relative prediction path
is looked for from the predictions file's folder and from the current folder, an annotation's
from the current folder). Matching by file name alone, for predictions made on copies of the
videos elsewhere, must be asked for (``match: name``): two different videos can share a name,
and a bench scored on the wrong videos looks like any other. The number of rows matched by name
is reported (``coverage.matched_by_name``). A video with no prediction, or whose prediction has
no valid status (a failed reward), is **not scored**: it is left out of every metric and counted
in ``coverage`` (never turned into a guess).

Metrics (``abnormal`` is the positive class of the "anomalous" columns):

- **Table 1**: :func:`detection_metrics`: recall, precision and F1 for each class, and accuracy.
  A ratio whose denominator is 0 is undefined and reported as NaN (``null`` in JSON, "–" in
  tables): precision of a class never predicted, recall of a class absent from the ground
  truth, accuracy of an empty set. F1 is ``2TP / (2TP + FP + FN)``, NaN only when the class is
  neither present nor predicted, so a class that is present but never predicted has F1 = 0.
- **Fig. 4, hard split**: recall of anomalous videos in four groups, by anomaly duration
  (shorter than ``long_s`` = 1 s, or not) and spatial extent (smaller than ``large_area`` =
  20% of the frame, or not). A video's duration is the total length of the union of its
  anomaly windows; its extent is the largest, over its anomalies, of the mean over annotated
  frames of the frame fraction covered by that anomaly's boxes (overlaps counted once). A video
  with no boxes has no extent and is counted under ``no_boxes``.
- **Table S3**: detection recall per anomaly type (anomalous videos having that type).
- **Table S4**: on true positives (anomalous, predicted abnormal), mean temporal IoU of the
  predicted window(s) with the annotated windows (unions of intervals, in seconds) and mean
  spatial IoU: on each predicted frame that is annotated, each GT box takes its best-matching
  predicted box's IoU; a video's value is the mean over those GT boxes (0 when the prediction
  boxes no annotated frame). A true positive without a predicted window / boxes scores 0.
- **Bias flag**: set when one class's recall is at least ``bias_high`` (0.95) while the other's
  is at most ``bias_low`` (0.2): a model that calls nearly everything one class.
- **Reward**: ``valid_fraction`` (videos with a valid prediction / annotated videos) and the
  AUROC of the prediction's ``score`` (a reward, higher = more normal: CaC's P(normal) /
  (P(normal) + P(abnormal))) for telling normal from anomalous videos, over the scored videos
  that carry a score (NaN when none does or one class is missing).
- **Confidence intervals**: accuracy and reward AUROC carry a percentile bootstrap interval
  (``accuracy_ci``, ``auroc_ci``; ``bootstrap`` = 1000 resamples of the scored videos within each
  class, ``ci_level`` = 0.95, fixed ``seed``; :func:`~cac_align.eval.metrics.bootstrap_interval`).
  On 200 videos an AUROC near 0.7 is known to about ±0.07: compare systems on the same videos,
  and read a difference inside the intervals as no difference.

Outputs in ``out_dir``: ``bench.json`` (every number), ``bench.md`` and one CSV per table
(``table1.csv``, ``hard_split.csv``, ``per_type.csv``, ``localization.csv``, ``reward.csv``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from omegaconf import MISSING

from cac_align.eval.metrics import auroc, bootstrap_interval

__all__ = [
    "BenchConfig", "Prediction", "detection_metrics", "evaluate_system", "grade_evidence", "hard_split_recall", "interval_iou",
    "load_predictions", "per_type_auroc", "per_type_recall", "prediction_bias", "truth_summary", "video_extent",
]

LABELS = ("normal", "abnormal")
NAN = float("nan")


@dataclass
class BenchConfig:
    """Config of `cac-align eval bench`.

    Attributes:
        annotations: ground-truth annotation JSONL.
        predictions: system name -> prediction JSONL (module doc for the line format).
        out_dir: receives bench.json, bench.md and the CSV tables.
        long_s: duration threshold of the hard split (CaC Fig. 4: 1 s).
        large_area: spatial-extent threshold, a fraction of the frame (CaC Fig. 4: 20%).
        bias_high, bias_low: the bias flag's recall thresholds.
        bootstrap: resamples for the confidence intervals of accuracy and reward AUROC (0 = none).
        ci_level: their coverage (0.95: the 2.5% and 97.5% quantiles).
        seed: the bootstrap's seed.
        match: how predictions find their annotation: "path" (the resolved video path; default)
            or "name" (the file name alone, when it is unique on both sides; module doc).
        min_window_iou: the temporal IoU from which a video's predicted window agrees with its
            annotated one, in the per-video rows (:func:`grade_evidence`).
        overwrite: replace a bench run of another config in ``out_dir`` (its outputs only).
    """

    # the name a "takes a mapping" error writes in its example (cac_align.config)
    EXAMPLE_NAMES: ClassVar[dict[str, str]] = {"predictions": "cac"}

    annotations: str = MISSING
    predictions: dict[str, str] = field(default_factory=dict)
    out_dir: str = "outputs/bench"
    long_s: float = 1.0
    large_area: float = 0.2
    bias_high: float = 0.95
    bias_low: float = 0.2
    bootstrap: int = 1000
    ci_level: float = 0.95
    seed: int = 0
    match: str = "path"
    min_window_iou: float = 0.5
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.match not in ("path", "name"):
            raise ValueError(f"match must be 'path' or 'name', got {self.match!r}")
        if not self.predictions:
            raise ValueError("predictions is empty: give at least one system, e.g. 'predictions={cac: runs/score/results.jsonl}'")
        if self.long_s <= 0 or not 0 < self.large_area < 1:
            raise ValueError(f"need long_s > 0 and 0 < large_area < 1, got {self.long_s}, {self.large_area}")
        if not 0 <= self.bias_low < self.bias_high <= 1:
            raise ValueError(f"need 0 <= bias_low < bias_high <= 1, got {self.bias_low}, {self.bias_high}")
        if self.bootstrap < 0 or not 0 < self.ci_level < 1:
            raise ValueError(f"need bootstrap >= 0 and 0 < ci_level < 1, got {self.bootstrap}, {self.ci_level}")
        if not 0 < self.min_window_iou <= 1:
            raise ValueError(f"min_window_iou must be in (0, 1], got {self.min_window_iou}")


# ---------------------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float:
    return num / den if den else NAN


def detection_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Per-class recall, precision, F1 and accuracy (module doc for the undefined cases).

    Args:
        y_true, y_pred: "normal" / "abnormal" per video, same length.

    Returns:
        ``anomalous_recall``, ``anomalous_precision``, ``anomalous_f1``, ``normal_recall``,
        ``normal_precision``, ``normal_f1``, ``accuracy``, and the counts ``n``, ``tp``, ``fp``,
        ``fn``, ``tn`` (abnormal positive).
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    bad = sorted({str(v) for v in list(y_true) + list(y_pred) if v not in LABELS})
    if bad:
        raise ValueError(f"labels must be 'normal' or 'abnormal', got {bad}")
    pairs = list(zip(y_true, y_pred))
    tp = sum(t == "abnormal" and p == "abnormal" for t, p in pairs)
    fp = sum(t == "normal" and p == "abnormal" for t, p in pairs)
    fn = sum(t == "abnormal" and p == "normal" for t, p in pairs)
    tn = sum(t == "normal" and p == "normal" for t, p in pairs)
    out = {
        "anomalous_recall": _ratio(tp, tp + fn),
        "anomalous_precision": _ratio(tp, tp + fp),
        "anomalous_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "normal_recall": _ratio(tn, tn + fp),
        "normal_precision": _ratio(tn, tn + fn),
        "normal_f1": _ratio(2 * tn, 2 * tn + fn + fp),
        "accuracy": _ratio(tp + tn, len(pairs)),
    }
    out.update(n=len(pairs), tp=tp, fp=fp, fn=fn, tn=tn)
    return out


def prediction_bias(metrics: dict[str, float], high: float = 0.95, low: float = 0.2) -> str | None:
    """A warning when one class's recall is >= ``high`` and the other's <= ``low``, else None."""
    for cls, other in (("anomalous", "normal"), ("normal", "anomalous")):
        a, b = metrics[f"{cls}_recall"], metrics[f"{other}_recall"]
        if not (math.isnan(a) or math.isnan(b)) and a >= high and b <= low:
            said = "abnormal" if cls == "anomalous" else "normal"
            return f"predicts '{said}' for nearly everything ({cls} recall {a:.2f}, {other} recall {b:.2f})"
    return None


# ---------------------------------------------------------------------------------------
# Geometry of the annotations
# ---------------------------------------------------------------------------------------
def _merge(intervals: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _length(intervals: Sequence[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def interval_iou(predicted: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> float:
    """IoU of two unions of time intervals ([start, end] seconds); 0 when both are empty."""
    p, t = _merge(predicted), _merge(truth)
    union = _length(_merge(p + t))
    if union == 0:
        return 0.0
    inter = sum(max(0.0, min(b, d) - max(a, c)) for a, b in p for c, d in t)
    return inter / union


def _union_area(boxes: Sequence[Sequence[float]]) -> float:
    """Area (fraction of the frame) covered by 0–1000 boxes, overlaps counted once."""
    xs = sorted({float(v) for b in boxes for v in (b[0], b[2])})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        spans = [(b[1], b[3]) for b in boxes if b[0] <= x0 and b[2] >= x1]
        area += (x1 - x0) * _length(_merge(spans))
    return area / 1e6


def video_extent(record: Any) -> float | None:
    """The record's spatial extent (module doc): None when it has no boxes."""
    extents = []
    for anomaly in record.anomalies:
        if anomaly.boxes:
            extents.append(float(np.mean([_union_area(boxes) for boxes in anomaly.boxes.values()])))
    return max(extents) if extents else None


def video_anomaly_duration(record: Any) -> float | None:
    """Total length (seconds) of the union of the record's anomaly windows; None when no
    anomaly has a window (a status-only label)."""
    windows = [a.window_s(record.annotation_fps) for a in record.anomalies if a.has_window]
    return _length(_merge(windows)) if windows else None


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """One system's verdict on one video (``status`` None = failed / invalid)."""

    video: str
    status: str | None
    windows_s: list[list[float]] = field(default_factory=list)
    boxes: list[dict] = field(default_factory=list)
    score: float | None = None


def _from_line(row: dict, where: str) -> Prediction:
    from cac_align.cac.evidence import cac_details

    if "video" not in row:
        raise ValueError(f"{where}: no 'video' field")
    status = row.get("status")
    if status is not None and status not in LABELS:
        raise ValueError(f"{where}: status must be 'normal', 'abnormal' or null, got {status!r}")
    if row.get("valid") is False:
        status = None  # a failed reward: not scored
    source = row
    details = row.get("details")
    if isinstance(details, dict):
        source = cac_details(details) or row
    windows = source.get("windows_s") or ([source["window_s"]] if source.get("window_s") else [])
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        raise ValueError(f"{where}: score must be a finite number or null, got {score!r}")
    return Prediction(
        str(row["video"]), status, [list(map(float, w)) for w in windows], list(source.get("boxes") or []),
        float(score) if score is not None and status is not None else None,
    )


def load_predictions(path: str | Path) -> list[Prediction]:
    """Read a prediction JSONL; a malformed line (torn by a kill, or not a prediction) raises
    RecipeError naming the file and line."""
    from cac_align.config import RecipeError, relative_path_hint

    path = Path(path)
    if not path.exists():
        raise RecipeError(f"predictions file {path} does not exist{relative_path_hint(path)}")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(_from_line(json.loads(line), f"{path}:{number}"))
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path}:{number}: not JSON ({exc.msg} at character {exc.pos}); a torn last line means the run that wrote it was killed") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise RecipeError(f"{path}:{number}: not a prediction ({exc})") from None
    return out


def match_predictions(records: Sequence[Any], predictions: Sequence[Prediction], base: Path, by: str = "path") -> tuple[list[Prediction | None], int]:
    """The prediction of each record, and how many were matched by file name.

    ``by="path"``: the record's resolved path is one of the prediction's (a relative prediction
    path from ``base``, the predictions file's folder, or from the current folder). ``by="name"``:
    the file name, where it is unique among the predictions.
    """
    if by == "name":
        by_name: dict[str, list[Prediction]] = {}
        for p in predictions:
            by_name.setdefault(Path(p.video).name, []).append(p)
        out = [by_name[Path(r.video).name][0] if len(by_name.get(Path(r.video).name, [])) == 1 else None for r in records]
        return out, sum(p is not None for p in out)
    by_path: dict[str, Prediction] = {}
    for p in predictions:
        video = Path(p.video)
        for candidate in ([video] if video.is_absolute() else [base / video, video]):
            by_path.setdefault(str(candidate.resolve()), p)
    return [by_path.get(str(Path(r.video).resolve())) for r in records], 0


# ---------------------------------------------------------------------------------------
# Per-system evaluation
# ---------------------------------------------------------------------------------------
def hard_split_recall(records: Sequence[Any], predicted: Sequence[str], long_s: float = 1.0, large_area: float = 0.2) -> dict[str, dict]:
    """Recall of anomalous videos per (duration, extent) group: ``{group: {recall, n}}``.

    Groups: ``short_small``, ``short_large``, ``long_small``, ``long_large`` and ``no_boxes``
    (no extent, status-only labels included); ``short`` is a duration < ``long_s``, ``small`` an
    extent < ``large_area``.
    """
    groups: dict[str, list[bool]] = {g: [] for g in ("short_small", "short_large", "long_small", "long_large", "no_boxes")}
    for record, pred in zip(records, predicted):
        if record.status != "abnormal":
            continue
        extent = video_extent(record)
        if extent is None or video_anomaly_duration(record) is None:
            key = "no_boxes"
        else:
            key = ("short" if video_anomaly_duration(record) < long_s else "long") + ("_small" if extent < large_area else "_large")
        groups[key].append(pred == "abnormal")
    return {g: {"recall": _ratio(sum(v), len(v)), "n": len(v)} for g, v in groups.items()}


def per_type_recall(records: Sequence[Any], predicted: Sequence[str]) -> dict[str, dict]:
    """Detection recall of anomalous videos having each anomaly type: ``{type: {recall, n}}``."""
    from cac_align.cac.schema import ANOMALY_TYPES

    out = {}
    for kind in ANOMALY_TYPES:
        hits = [pred == "abnormal" for record, pred in zip(records, predicted) if any(a.type == kind for a in record.anomalies)]
        out[kind] = {"recall": _ratio(sum(hits), len(hits)), "n": len(hits)}
    return out


def per_type_auroc(records: Sequence[Any], scores: Sequence[float]) -> dict[str, float]:
    """The reward's AUROC of the normal videos against the anomalous videos having each type
    (normal = positive class, as for the overall AUROC): which types the reward ranks below
    clean videos. NaN for a type with no video (or no normal video)."""
    from cac_align.cac.schema import ANOMALY_TYPES

    normal = [s for record, s in zip(records, scores) if record.status == "normal"]
    out = {}
    for kind in ANOMALY_TYPES:
        typed = [s for record, s in zip(records, scores) if any(a.type == kind for a in record.anomalies)]
        out[kind] = auroc(normal + typed, [True] * len(normal) + [False] * len(typed))
    return out


# ---------------------------------------------------------------------------------------
# One video's evidence against its ground truth (the report's and the per-video rows' grading)
# ---------------------------------------------------------------------------------------
def truth_summary(record: Any) -> dict:
    """A record's ground truth as a results row carries it: ``status`` and per anomaly its
    ``type``, ``window_s`` ([start, end) seconds, None when unknown) and ``boxes``
    (``[{"time_s", "boxes"}]``, 0-1000, at the annotated frames' times)."""
    fps = record.annotation_fps
    return {
        "status": record.status,
        "anomalies": [
            {
                "type": a.type,
                "window_s": list(a.window_s(fps)) if a.has_window else None,
                "boxes": [{"time_s": frame / fps, "boxes": boxes} for frame, boxes in sorted(a.boxes.items()) if boxes],
            }
            for a in record.anomalies
        ],
    }


def _touches(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two 0-1000 boxes share some area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def grade_evidence(
    truth: dict, status: str | None, windows_s: Sequence[Sequence[float]] | None, boxes: Sequence[dict] | None, min_window_iou: float = 0.5
) -> dict:
    """What a verdict got right of one video, beyond its status.

    Args:
        truth: :func:`truth_summary` of the video.
        status: the judge's verdict ("normal" / "abnormal"; None: not judged).
        windows_s: the judge's anomalous window(s) ([start, end) seconds each); None or empty: none.
        boxes: the judge's boxes, ``[{"time_s", "boxes": [[x0, y0, x1, y1], ...]}]`` (0-1000).
        min_window_iou: the temporal IoU from which a window agrees.

    Returns:
        ``status`` (the verdict equals the truth's), ``window_iou`` (temporal IoU of the judge's
        windows with the planted ones, each side a union of intervals), ``window`` (``window_iou >=
        min_window_iou``), ``boxes`` (a box of the judge's, on a frame inside a planted window,
        shares area with that anomaly's box on the annotated frame nearest in time: it touches
        the planted defect where it is) and ``localized`` (window and boxes both agree, each where
        it can be graded). Each is None where it cannot be graded: no verdict; the truth or the
        verdict is not "abnormal"; the truth has no window (boxes: no boxes).
    """
    graded: dict[str, Any] = {"status": None if status is None else status == truth["status"],
                              "window_iou": None, "window": None, "boxes": None, "localized": None}
    if status != "abnormal" or truth["status"] != "abnormal":
        return graded
    windows = [a["window_s"] for a in truth["anomalies"] if a.get("window_s") is not None]
    if windows:
        graded["window_iou"] = interval_iou([list(w) for w in windows_s or []], windows)
        graded["window"] = graded["window_iou"] >= min_window_iou
    planted = [a for a in truth["anomalies"] if a.get("window_s") is not None and a.get("boxes")]
    if planted:
        hit = False
        for entry in boxes or []:
            t = float(entry["time_s"])
            for anomaly in planted:
                start, end = anomaly["window_s"]
                if not start <= t < end:
                    continue
                nearest = min(anomaly["boxes"], key=lambda b: abs(float(b["time_s"]) - t))
                hit = hit or any(_touches(p, g) for p in entry.get("boxes") or [] for g in nearest["boxes"])
        graded["boxes"] = hit
    parts = [graded[k] for k in ("window", "boxes") if graded[k] is not None]
    graded["localized"] = all(parts) if parts else None
    return graded


def _spatial_iou(record: Any, boxes: Sequence[dict]) -> float:
    from cac_align.cac.schema import box_iou
    from cac_align.cac.train.targets import on_screen

    predicted: dict[int, list] = {}
    for entry in boxes:
        if "time_s" not in entry:
            continue
        predicted.setdefault(on_screen(float(entry["time_s"]), record.annotation_fps), []).extend(entry.get("boxes") or [])
    scores = []
    for frame, candidates in predicted.items():
        if not candidates:
            continue
        for anomaly in record.anomalies:
            for gt in anomaly.boxes.get(frame, []):
                scores.append(max(box_iou(gt, p) for p in candidates))
    return float(np.mean(scores)) if scores else 0.0


def evaluate_system(records: Sequence[Any], predictions: Sequence[Prediction | None], config: BenchConfig) -> dict:
    """Every metric of one system (``predictions`` aligned with ``records``)."""
    scored = [(r, p) for r, p in zip(records, predictions) if p is not None and p.status is not None]
    missing = sum(p is None for p in predictions)
    invalid = sum(p is not None and p.status is None for p in predictions)
    recs = [r for r, _ in scored]
    labels = [p.status for _, p in scored]
    table1 = detection_metrics([r.status for r in recs], labels)
    temporal, spatial = [], []
    for record, pred in scored:
        if record.status == "abnormal" and pred.status == "abnormal":
            if record.status_only:  # a label that says *that*, not *when* or *where*: no localization to score
                continue
            truth = [a.window_s(record.annotation_fps) for a in record.anomalies]
            temporal.append(interval_iou(pred.windows_s, truth))
            spatial.append(_spatial_iou(record, pred.boxes))
    videos = []  # per video: what the verdict got right (the report grades the same way)
    for record, pred in zip(records, predictions):
        truth = truth_summary(record)
        status = pred.status if pred is not None else None
        graded = grade_evidence(truth, status, pred.windows_s if pred else None, pred.boxes if pred else None, config.min_window_iou)
        videos.append({
            "video": record.video, "truth": record.status, "status": status, "status_agrees": graded["status"],
            "window_iou": graded["window_iou"], "window_agrees": graded["window"], "boxes_touch_defect": graded["boxes"],
            "localized": graded["localized"],
        })
    with_score = [(r, p) for r, p in scored if p.score is not None]
    correct = np.array([r.status == p.status for r, p in scored], dtype=np.float64)
    table1["accuracy_ci"] = list(bootstrap_interval(lambda i: float(correct[i].mean()), [r.status for r in recs], config.bootstrap, config.ci_level, config.seed))
    scores = np.array([p.score for _, p in with_score], dtype=np.float64)
    positive = np.array([r.status == "normal" for r, _ in with_score], dtype=bool)
    reward = {
        "valid_fraction": _ratio(len(scored), len(records)),
        "auroc": auroc(scores, positive),
        "auroc_ci": list(bootstrap_interval(lambda i: auroc(scores[i], positive[i]), positive, config.bootstrap, config.ci_level, config.seed)),
        "n_scores": len(with_score),
        "per_type_auroc": per_type_auroc([r for r, _ in with_score], scores),
    }
    return {
        "coverage": {"annotated": len(records), "scored": len(scored), "missing": missing, "invalid": invalid},
        "reward": reward,
        "table1": table1,
        "hard_split": hard_split_recall(recs, labels, config.long_s, config.large_area),
        "per_type": per_type_recall(recs, labels),
        "localization": {
            "temporal_iou": float(np.mean(temporal)) if temporal else NAN,
            "spatial_iou": float(np.mean(spatial)) if spatial else NAN,
            "n_true_positives": len(temporal),
        },
        "bias": prediction_bias(table1, config.bias_high, config.bias_low),
        "videos": videos,
    }


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


