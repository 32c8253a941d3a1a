"""Stage-3 GRPO rewards of a two-turn CaC rollout (CaC §3.3, Eq. 2–6). Pure functions.

A rollout is turn 1's :class:`~cac_align.cac.judgment.Judgment` (the whole video at the scan
rate) and, when turn 1 said abnormal with a usable window, turn 2's (the clip). Against the
ground-truth :class:`~cac_align.cac.schema.AnnotationRecord`:

- **Format** (Eq. 2): ``R_fmt = ½ Σ_t (0 if turn t passes its schema else −1)``. Turn 2 not
  needed (turn 1 said normal) counts as passing; turn 2 needed but not run (turn 1's window was
  unusable) counts as failing. A turn 1 with no readable status fails both turns (nothing after
  it can be judged).
- **Status**: 0 if correct, −1 otherwise. GT normal: correct iff turn 1 says normal. GT abnormal:
  correct iff both turns say abnormal.
- **Type IoU** (Eq. 3): ``½ Σ_t |T_pred^t ∩ T_gt| / |T_pred^t ∪ T_gt|``; a turn with no
  predicted type (or not run) scores 0.
- **Temporal IoU** (Eq. 4): IoU of the sets of anomalous frame indices on turn 1's grid: the
  union of turn 1's predicted windows vs the GT windows converted through seconds.
- **Spatial IoU** (Eq. 5): on turn 2's clip frames holding both predicted and GT boxes (GT boxes
  re-indexed to the clip through time), each of the M GT boxes there takes the IoU of its
  best-matching predicted box on that frame; the mean over the M boxes, 0 if M = 0.
- **Total** (Eq. 6): ``R = w1·R_fmt + w2·γ̄·R_stat + m·(w3·R̃_type + w4·R̃_temp + w5·R̃_spa)`` with
  ``R̃_k = 1 − γ̄·(1 − R_k)``, ``m`` = 1 for GT abnormal and 0 for GT normal, ``γ̄`` = 1 for GT
  normal and otherwise the mean of γ (1 salient, 0.5 non-salient) over the GT anomalies.

  A term the ground truth cannot support is masked like the three are for a normal video (ours,
  for status-only records such as VideoPhy-2's): a record with an anomaly that has no time window
  (and so no boxes) masks the temporal (``m_temp``) and spatial (``m_spa``) terms; the type term
  needs only the types. ``R = w1·R_fmt + w2·γ̄·R_stat + m·w3·R̃_type + m_temp·w4·R̃_temp + m_spa·w5·R̃_spa``,
  which is Eq. 6 whenever the record has its windows and boxes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from cac_align.cac.judgment import Judgment
from cac_align.cac.schema import AnnotationRecord, box_iou, seconds_to_frames

__all__ = [
    "PAPER_WEIGHTS",
    "SALIENCY_GAMMA",
    "RewardBreakdown",
    "cac_reward",
    "format_reward",
    "spatial_iou",
    "status_reward",
    "temporal_iou",
    "type_iou",
]

PAPER_WEIGHTS = (1.0, 2.0, 2.0, 2.0, 5.0)  # (format, status, type, temporal, spatial), CaC Eq. 6
SALIENCY_GAMMA = {"salient": 1.0, "non-salient": 0.5}


@dataclass
class RewardBreakdown:
    """The total reward and every component (raw ``R_k``, before the saliency discount)."""

    total: float
    format: float
    status: float
    type_iou: float
    temporal_iou: float
    spatial_iou: float
    gamma: float
    mask: float
    reached_turn2: bool
    mask_temporal: float = 0.0
    mask_spatial: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _status_of(judgment: Judgment | None) -> str | None:
    return judgment.status if judgment is not None else None


def format_reward(turn1: Judgment | None, turn2: Judgment | None) -> float:
    """Eq. 2 (see the module doc for turns that did not run)."""
    if turn1 is None or turn1.status is None:
        return -1.0
    first = 0.0 if turn1.valid else -1.0
    if turn1.status == "normal":
        second = 0.0  # turn 2 not needed
    else:
        second = 0.0 if turn2 is not None and turn2.valid else -1.0
    return 0.5 * (first + second)


def status_reward(turn1: Judgment | None, turn2: Judgment | None, gt_status: str) -> float:
    """0 if the rollout's verdict is right, −1 otherwise."""
    if gt_status == "normal":
        return 0.0 if _status_of(turn1) == "normal" else -1.0
    return 0.0 if _status_of(turn1) == "abnormal" and _status_of(turn2) == "abnormal" else -1.0


def type_iou(turn1: Judgment | None, turn2: Judgment | None, gt_types: set[str]) -> float:
    """Eq. 3: the mean over the two turns of the Jaccard index of predicted vs GT types."""
    total = 0.0
    for turn in (turn1, turn2):
        predicted = set(turn.types) if turn is not None else set()
        if predicted:
            total += len(predicted & gt_types) / len(predicted | gt_types)
    return 0.5 * total


def temporal_iou(turn1: Judgment | None, record: AnnotationRecord, scan_fps: float, scan_frames: int | None = None) -> float:
    """Eq. 4: IoU of predicted and GT anomalous frame sets on turn 1's ``scan_fps`` grid."""
    predicted: set[int] = set()
    for anomaly in turn1.anomalies if turn1 is not None else []:
        if anomaly.frames is not None:
            predicted.update(range(anomaly.frames[0], anomaly.frames[1] + 1))
    truth: set[int] = set()
    for anomaly in record.anomalies:
        if not anomaly.has_window:  # a status-only label (its term is masked in cac_reward)
            continue
        start, end = anomaly.window_s(record.annotation_fps)
        try:
            first, last = seconds_to_frames(start, end, scan_fps)
        except ValueError:  # a window shorter than the grid's spacing between two frames
            continue
        truth.update(range(first, last + 1))
    if scan_frames is not None:
        truth = {f for f in truth if f < scan_frames}
    union = predicted | truth
    return len(predicted & truth) / len(union) if union else 0.0


def spatial_iou(turn2: Judgment | None, record: AnnotationRecord, clip_times: Sequence[float] | None) -> float:
    """Eq. 5: mean best-match IoU of the GT boxes on clip frames that also have predicted boxes.

    ``clip_times[k]`` is the source time (seconds) of turn 2's clip frame ``k``.
    """
    from cac_align.cac.train.targets import clip_boxes

    if turn2 is None or clip_times is None:
        return 0.0
    predicted: dict[int, list[list[float]]] = {}
    for anomaly in turn2.anomalies:
        for frame, boxes in anomaly.boxes.items():
            predicted.setdefault(frame, []).extend(boxes)
    truth: dict[int, list[list[float]]] = {}
    for anomaly in record.anomalies:
        for frame, boxes in clip_boxes(anomaly, record.annotation_fps, np.asarray(clip_times)).items():
            truth.setdefault(frame, []).extend(boxes)
    scores = [
        max(box_iou(gt, p) for p in predicted[frame])
        for frame in sorted(set(predicted) & set(truth))
        for gt in truth[frame]
    ]
    return float(np.mean(scores)) if scores else 0.0


def cac_reward(
    turn1: Judgment | None,
    turn2: Judgment | None,
    record: AnnotationRecord,
    weights: Sequence[float] = PAPER_WEIGHTS,
    *,
    scan_fps: float = 4.0,
    scan_frames: int | None = None,
    clip_times: Sequence[float] | None = None,
) -> RewardBreakdown:
    """The stage-3 reward of one rollout (Eq. 6) with every component.

    Args:
        turn1: turn 1's parsed answer (``parse_judgment(text, 1, fps=scan_fps, num_frames=...)``),
            or None if it produced nothing.
        turn2: turn 2's parsed answer, or None when turn 2 did not run.
        record: the ground truth.
        weights: (format, status, type, temporal, spatial); the paper's (1, 2, 2, 2, 5).
        scan_fps, scan_frames: turn 1's frame grid (its rate and frame count).
        clip_times: source times of turn 2's clip frames (needed for the spatial term).
    """
    if len(weights) != 5:
        raise ValueError(f"weights are (format, status, type, temporal, spatial), got {list(weights)}")
    w1, w2, w3, w4, w5 = (float(w) for w in weights)
    abnormal = record.status == "abnormal"
    gamma = float(np.mean([SALIENCY_GAMMA[a.saliency] for a in record.anomalies])) if abnormal else 1.0
    mask = 1.0 if abnormal else 0.0
    # terms the record cannot support are masked too, as the paper masks all three for normal
    # videos: no temporal term without every window, no spatial term without any box
    mask_temporal = mask if all(a.has_window for a in record.anomalies) else 0.0
    mask_spatial = 0.0 if record.status_only else mask
    r_fmt = format_reward(turn1, turn2)
    r_stat = status_reward(turn1, turn2, record.status)
    r_type = type_iou(turn1, turn2, {a.type for a in record.anomalies})
    r_temp = temporal_iou(turn1, record, scan_fps, scan_frames)
    r_spa = spatial_iou(turn2, record, clip_times)

    def discounted(value: float) -> float:
        return 1.0 - gamma * (1.0 - value)

    total = (
        w1 * r_fmt
        + w2 * gamma * r_stat
        + mask * w3 * discounted(r_type)
        + mask_temporal * w4 * discounted(r_temp)
        + mask_spatial * w5 * discounted(r_spa)
    )
    return RewardBreakdown(total, r_fmt, r_stat, r_type, r_temp, r_spa, gamma, mask, turn2 is not None, mask_temporal, mask_spatial)
