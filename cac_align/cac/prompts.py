"""CaC prompts, in our own words, following the paper's structure (CaC §3.4, Appendix C.3).

Every prompt has the same parts: the judge's role, the five anomaly types with definitions,
step-by-step reasoning requirements, and a strict JSON output format. The reasoning ("cot")
comes *before* "status" in the JSON, so the status is conditioned on the reasoning, and the
reward reads P(normal) / P(abnormal) exactly where the status value begins.

- Turn 1 sees the whole video sampled at 4 fps and answers status + anomalies with a time
  window (seconds) and a type.
- Turn 2 follows turn 1's answer in the same conversation, sees only the predicted window
  resampled at 8 fps, and answers status + types + per-frame boxes (0–1000).
- ``single_turn`` asks for windows and boxes in one pass (the paper's ablation); ``no_cot``
  asks for the status alone (cheap reward passes).
- ``frame_prompt`` asks about one still image (stage-1 single-frame warmup, CaC §3.2); its
  answer has turn 2's shape with boxes for "frame 0".
"""

from __future__ import annotations

from cac_align.cac.schema import ANOMALY_TYPES

__all__ = [
    "STATUS_KEY_PATTERN",
    "TYPE_DEFINITIONS",
    "frame_prompt",
    "no_cot_prompt",
    "single_turn_prompt",
    "turn1_prompt",
    "turn2_prompt",
]

# Where the status value starts in a generated answer: after `"status": "`.
STATUS_KEY_PATTERN = r'"status"\s*:\s*"'

TYPE_DEFINITIONS = {
    "Object Distortion": "an object's shape, size or structure deforms unnaturally (melting, warping, merging, parts missing).",
    "Human Distortion": "a person's body is malformed: extra or missing limbs or fingers, impossible joints, a face that warps.",
    "Motion Anomalies": "movement is discontinuous or impossible: teleporting, flickering, vanishing and reappearing, jittering.",
    "Physical Violations": "physics is broken: objects float without support, pass through solids, or fall and bounce wrongly.",
    "Character Anomalies": "written text is wrong: letters garble, change between frames, or form no real word.",
}
assert tuple(TYPE_DEFINITIONS) == ANOMALY_TYPES

_ROLE = (
    "You are an expert judge of AI-generated videos. Your job is to find sparse, local anomalies: "
    "defects that appear in a small region for a short time while the rest of the video looks fine."
)


def _types_block() -> str:
    return "Anomaly types:\n" + "\n".join(f"- {name}: {text}" for name, text in TYPE_DEFINITIONS.items())


def turn1_prompt(duration_s: float, fps: float, num_frames: int, caption: str | None = None) -> str:
    """Turn 1: scan the whole video, decide, and locate the anomalous time window."""
    about = f'The video was generated from the prompt: "{caption}".\n' if caption else ""
    return (
        f"{_ROLE}\n{about}"
        f"The video lasts {duration_s:.2f} s and is shown as {num_frames} frames sampled at {fps:g} fps; "
        "each frame's time is given before it.\n"
        f"{_types_block()}\n"
        "Think step by step: 1) describe the scene and the main subjects; 2) follow each subject over time "
        "and look for the anomaly types above; 3) for each anomaly, name the type and the time window where it is visible; "
        "4) decide whether the video is normal or abnormal.\n"
        "Answer with one JSON object and nothing else, in this format:\n"
        '{"cot": "<your step-by-step reasoning>", "status": "normal" or "abnormal", '
        '"anomalies": [{"type": "<one of the types>", "time": [<start seconds>, <end seconds>], '
        '"reason": "<what is wrong>", "region": "<where in the frame>"}]}\n'
        'For a normal video use "anomalies": [].'
    )


def turn2_prompt(window_s: tuple[float, float], fps: float, num_frames: int) -> str:
    """Turn 2: look closely at the predicted window, confirm, and box the defect per frame."""
    start, end = window_s
    return (
        f"Here is the window from {start:.2f} s to {end:.2f} s, shown densely as {num_frames} frames at {fps:g} fps "
        f"(frame 0 to frame {num_frames - 1}).\n"
        "Look closely and check whether the anomaly you reported is really there. Think step by step: "
        "1) find the subject you suspected; 2) compare it across these frames; 3) confirm or reject the anomaly; "
        "4) if confirmed, draw a box around the defect in every frame where it is visible, as [xmin, ymin, xmax, ymax] "
        "in coordinates normalized to 0-1000.\n"
        "Answer with one JSON object and nothing else, in this format:\n"
        '{"cot": "<your step-by-step reasoning>", "status": "normal" or "abnormal", '
        '"anomalies": [{"type": "<one of the types>", "bbox": {"frame 0": [xmin, ymin, xmax, ymax], ...}, '
        '"reason": "<what is wrong>", "region": "<where in the frame>"}]}\n'
        'If the anomaly is not really there, answer "status": "normal" with "anomalies": [].'
    )


def single_turn_prompt(duration_s: float, fps: float, num_frames: int, caption: str | None = None) -> str:
    """One pass that must both localize in time and box (the paper's single-turn ablation)."""
    return (
        turn1_prompt(duration_s, fps, num_frames, caption).rsplit("Answer with one JSON object", 1)[0]
        + "Answer with one JSON object and nothing else, in this format:\n"
        '{"cot": "<your step-by-step reasoning>", "status": "normal" or "abnormal", '
        '"anomalies": [{"type": "<one of the types>", "time": [<start seconds>, <end seconds>], '
        '"bbox": {"frame <index>": [xmin, ymin, xmax, ymax], ...}, "reason": "<what is wrong>", "region": "<where>"}]}\n'
        "Frame indices count the frames shown, from 0; boxes are normalized to 0-1000. "
        'For a normal video use "anomalies": [].'
    )


def no_cot_prompt(duration_s: float, fps: float, num_frames: int, caption: str | None = None) -> str:
    """Ask for the status directly; the reward reads its probabilities without any reasoning."""
    about = f'The video was generated from the prompt: "{caption}".\n' if caption else ""
    return (
        f"{_ROLE}\n{about}"
        f"The video lasts {duration_s:.2f} s, shown as {num_frames} frames at {fps:g} fps.\n"
        f"{_types_block()}\n"
        'Does the video contain any of these anomalies? Answer with JSON only: {"status": "normal"} or {"status": "abnormal"}.'
    )


def frame_prompt(caption: str | None = None) -> str:
    """One still frame: decide whether it shows a visible defect and box it (stage-1 warmup)."""
    about = f'The frame comes from a video generated from the prompt: "{caption}".\n' if caption else ""
    return (
        f"{_ROLE}\n{about}"
        "Here is a single frame of the video (frame 0).\n"
        f"{_types_block()}\n"
        "Think step by step: 1) describe the scene and the main subjects; 2) check each subject's shape, "
        "anatomy and any written text for the anomaly types above that can be seen in one frame; "
        "3) decide whether the frame is normal or abnormal; 4) if abnormal, draw a box around each defect "
        "as [xmin, ymin, xmax, ymax] in coordinates normalized to 0-1000.\n"
        "Answer with one JSON object and nothing else, in this format:\n"
        '{"cot": "<your step-by-step reasoning>", "status": "normal" or "abnormal", '
        '"anomalies": [{"type": "<one of the types>", "bbox": {"frame 0": [xmin, ymin, xmax, ymax]}, '
        '"reason": "<what is wrong>", "region": "<where in the frame>"}]}\n'
        'For a normal frame use "anomalies": [].'
    )
