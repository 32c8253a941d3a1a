"""Reasoning (CoT) for CaC's training targets: generate–verify synthesis with a teacher VLM, or a
deterministic template built from the annotation (CaC §3.1, App. B.2). The job is
``cac-align synth-cot`` (:mod:`cac_align.jobs.synth_cot`).

With a teacher (any OpenAI-compatible server: vLLM, or a hosted API with such an endpoint; or
an in-process model), each video goes through up to ``max_rounds`` rounds:

1. **Generate.** The teacher sees the video (``fps`` frames with their times), the human
   annotation (windows in seconds, boxes on the frames it sees) and close-up crops of the
   annotated regions, and writes reasoning in a fixed structure: frame-by-frame analysis of
   humans, objects and environment; inter-frame coherence; overall assessment; then a strict
   JSON answer with status, anomalies (type, time window, per-frame boxes) and the reasoning.
2. **Check programmatically** against the annotation: status equal; the same set of types; per
   annotated anomaly a predicted one of its type whose window IoU > ``iou_threshold``, and whose
   boxes on the annotated frames reach a mean best-match IoU > ``iou_threshold``.
3. **Verify with the teacher**: a second prompt shows the annotation and the reasoning and asks
   whether the reasoning is consistent with it (``{"consistent": true/false, "problems": ...}``).

A video passing both in round r is kept: ``r <= salient_rounds`` (3) labels its anomalies
"salient", otherwise "non-salient" (the stage-3 reward discounts those, γ = 0.5); a video that
never passes is discarded. Failure reasons are fed back into the next round's prompt.

Without a teacher, :func:`~cac_align.cac.train.targets.template_video_cot` writes the reasoning from the annotation itself
(``cot_source: "template"``), so training runs offline; saliency labels are kept as annotated.

"""

from __future__ import annotations

import json

import numpy as np

from cac_align.cac.prompts import TYPE_DEFINITIONS
from cac_align.cac.schema import AnnotationRecord, box_iou, window_iou
from cac_align.cac.train.targets import anomaly_json, clip_boxes, frames_shown

__all__ = ["check_answer", "generation_prompt", "parse_verdict", "saliency_for_round", "verification_prompt"]


# ---------------------------------------------------------------------------------------
# Teacher prompts (our words, App. B.2's structure)
# ---------------------------------------------------------------------------------------
def _annotation_for_teacher(record: AnnotationRecord, times: np.ndarray) -> dict:
    """The annotation in the teacher's terms, in the paper's schema: time regions as frame
    ranges and boxes on the numbered frames it sees."""
    anomalies = []
    for anomaly in record.anomalies:
        if not anomaly.has_window:  # a status-only label: the type alone
            anomalies.append(anomaly_json(anomaly))
            continue
        start, end = anomaly.window_s(record.annotation_fps)
        boxes = clip_boxes(anomaly, record.annotation_fps, times)
        anomalies.append(anomaly_json(anomaly, time_region=frames_shown(times, (start, end)), boxes=boxes))
    return {"status": record.status, "anomalies": anomalies}


def generation_prompt(record: AnnotationRecord, times: np.ndarray, feedback: list[str]) -> str:
    annotation = json.dumps(_annotation_for_teacher(record, times), ensure_ascii=False)
    types = "\n".join(f"- {name}: {text}" for name, text in TYPE_DEFINITIONS.items())
    retry = ""
    if feedback:
        retry = "A previous attempt was rejected for these reasons; avoid them:\n" + "\n".join(f"- {f}" for f in feedback) + "\n"
    return (
        "You are an expert annotator of AI-generated videos. You are given a video (its frames are numbered "
        f"from 0 and each one's time is shown), a human expert's annotation of its anomalies, and close-up crops "
        "of the annotated regions. Write the reasoning a careful judge would follow to reach this annotation.\n"
        f"Anomaly types:\n{types}\n"
        f"Human annotation (boxes are [xmin, ymin, xmax, ymax] in 0-1000 coordinates on the numbered frames):\n{annotation}\n"
        "Structure the reasoning in three parts:\n"
        "1. Frame-by-frame analysis: for the frames in order, examine the humans (anatomy, hands, faces), "
        "the objects (shape, size, structure) and the environment (text, lighting, support and contact).\n"
        "2. Inter-frame coherence: compare consecutive frames for continuity of motion, identity, object permanence and physics.\n"
        "3. Overall assessment: the status, and for each anomaly its type, its time window and where it is.\n"
        f"{retry}"
        "Answer with one JSON object and nothing else:\n"
        '{"COT": "<the reasoning, parts 1-3>", "status": "normal" or "abnormal", "anomalies": [{'
        '"Attributed Time Region": "<first frame>-<last frame>", "Attributed Label": "<type>", '
        '"Reason for Anomaly": "<what is wrong>", "Problem Region": "<where>", '
        '"BBOX": {"Frame <index>": [xmin, ymin, xmax, ymax], ...}, "COT": "<close-up reasoning about this anomaly>"}]}\n'
        'For a normal video use "anomalies": [].'
    )


def verification_prompt(record: AnnotationRecord, times: np.ndarray, answer: dict) -> str:
    annotation = json.dumps(_annotation_for_teacher(record, times), ensure_ascii=False)
    return (
        "You check reasoning written about an AI-generated video against a human expert's annotation.\n"
        f"Human annotation:\n{annotation}\n"
        f"Reasoning to check:\n{json.dumps(answer, ensure_ascii=False)}\n"
        "Is the reasoning consistent with the annotation and with the video: does it describe the same anomalies, "
        "of the same types, at the same times and places, without inventing others or contradicting itself?\n"
        'Answer with one JSON object and nothing else: {"consistent": true or false, "problems": "<what is wrong, or empty>"}'
    )


# ---------------------------------------------------------------------------------------
# Checking a teacher answer against the annotation
# ---------------------------------------------------------------------------------------
def check_answer(text: str, record: AnnotationRecord, fps: float, times: np.ndarray, iou_threshold: float = 0.5) -> tuple[dict | None, list[str]]:
    """Programmatic check of a teacher answer; returns (its JSON object, reasons it fails).

    ``times`` are the source times of the frames the teacher saw (its box indices refer to
    them); an empty reason list means the answer agrees with the annotation.
    """
    from cac_align.cac.judgment import extract_json, parse_judgment

    judgment = parse_judgment(text, 1, fps=fps, num_frames=len(times))
    obj = extract_json(text)
    problems = list(judgment.errors)
    if obj is None or judgment.status is None:
        return obj, problems or ["no JSON answer with a status"]
    if judgment.status != record.status:
        problems.append(f"status is {judgment.status}, the annotation says {record.status}")
    predicted_types = {a.type for a in judgment.anomalies if a.type}
    annotated_types = {a.type for a in record.anomalies}
    if predicted_types != annotated_types:
        problems.append(f"types {sorted(predicted_types)} differ from the annotated {sorted(annotated_types)}")
    for gt in record.anomalies:
        if not gt.has_window:  # a status-only label: only its type is checked (above)
            continue
        gt_window = gt.window_s(record.annotation_fps)
        candidates = [a for a in judgment.anomalies if a.type == gt.type and a.window_s is not None]
        if not candidates:
            continue  # already reported as a type mismatch
        best = max(candidates, key=lambda a: window_iou(a.window_s, gt_window))
        tiou = window_iou(best.window_s, gt_window)
        if tiou <= iou_threshold:
            problems.append(f"{gt.type}: time window {list(best.window_s)} has IoU {tiou:.2f} <= {iou_threshold} with the annotated {list(gt_window)}")
        gt_boxes = clip_boxes(gt, record.annotation_fps, times)
        if not gt_boxes:
            continue
        scores = [max((box_iou(g, p) for p in best.boxes.get(k, [])), default=0.0) for k, boxes in gt_boxes.items() for g in boxes]
        siou = float(np.mean(scores))
        if siou <= iou_threshold:
            problems.append(f"{gt.type}: boxes have mean IoU {siou:.2f} <= {iou_threshold} with the annotated boxes")
    return obj, problems


def saliency_for_round(round_passed: int | None, salient_rounds: int = 3) -> str | None:
    """Round at which a sample was verified -> "salient" (<= salient_rounds), "non-salient", or
    None when it never was (discarded)."""
    if round_passed is None:
        return None
    return "salient" if round_passed <= salient_rounds else "non-salient"


def parse_verdict(text: str) -> tuple[bool, str]:
    from cac_align.cac.judgment import extract_json

    obj = extract_json(text)
    if obj is None or not isinstance(obj.get("consistent"), bool):
        return False, f"verifier answer unreadable: {text[:200]!r}"
    problems = obj.get("problems", "")
    return obj["consistent"], problems if isinstance(problems, str) else json.dumps(problems)
