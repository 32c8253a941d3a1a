"""CaC prompts, in our own words, asking for the paper's output schema (CaC §3.4, App. C.3, Fig. S5).

Every answer is one JSON object in the schema of the paper's appendix:

    {"COT": "<reasoning>", "status": "normal" | "abnormal",
     "anomalies": [{"Attributed Time Region": "3-5",          # frames of the grid this turn saw
                    "Attributed Label": "Object Distortion",  # one of the five types
                    "Reason for Anomaly": "...", "Problem Region": "...",
                    "BBOX": {"Frame 0": [xmin, ymin, xmax, ymax], ...}}]}   # turn 2: clip frames, 0-1000

The reasoning ("COT") comes *before* "status", so the status is conditioned on the reasoning,
and the reward reads P(normal) / P(abnormal) exactly where the status value begins. A checkpoint
trained on the paper's data answers in this schema; :func:`~cac_align.cac.judgment.parse_judgment`
reads it (and the short keys "type", "time", "bbox" too).

- Turn 1 sees the whole video sampled at 4 fps and answers status + anomalies with a time region
  (a frame range on that 4 fps grid) and a type.
- Turn 2 follows turn 1's answer in the same conversation, sees only the predicted window
  resampled at 8 fps, and answers status + types + per-frame boxes (frames re-indexed from 0).
- ``single_turn`` asks for time regions and boxes in one pass (the paper's ablation); ``no_cot``
  asks for the status alone (cheap reward passes).
- ``frame_prompt`` asks about one still image (stage-1 single-frame warmup, CaC §3.2); its
  answer has turn 2's shape with boxes for "Frame 0".

Two wordings (``style``), same schema:

- ``"full"`` (default): role, the five types with definitions, step-by-step instructions and
  the format; for large pretrained backbones (Qwen3-VL-8B), which read the instructions.
- ``"compact"``: one line of role, the type names and the format. For small models trained
  from scratch on these prompts (the shipped ``cac-demo``), where a long fixed prompt would be
  most of every training sequence. A model answers best with the wording it was trained on;
  a model folder says which in its ``cac_align.json`` (see :mod:`cac_align.cac.demo`).
"""

from __future__ import annotations

from cac_align.cac.schema import ANOMALY_TYPES

__all__ = [
    "PROMPT_STYLES",
    "STATUS_KEY_PATTERN",
    "TYPE_DEFINITIONS",
    "frame_prompt",
    "no_cot_prompt",
    "single_turn_prompt",
    "turn1_prompt",
    "turn2_prompt",
]

PROMPT_STYLES = ("full", "compact")

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
_COMPACT_ROLE = "Find sparse, local anomalies"

# The schema's pieces, as the prompts show them.
_TIME = '"Attributed Time Region": "<first frame>-<last frame>"'
_LABEL = '"Attributed Label": "<one of the types>"'
_REASON_REGION = '"Reason for Anomaly": "<what is wrong>", "Problem Region": "<where in the frame>"'
_HEAD = '{"COT": "<your step-by-step reasoning>", "status": "normal" or "abnormal", '


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def _types_block() -> str:
    return "Anomaly types:\n" + "\n".join(f"- {name}: {text}" for name, text in TYPE_DEFINITIONS.items())


def _type_names() -> str:
    return "Types: " + ", ".join(ANOMALY_TYPES) + "."


def _about(caption: str | None, style: str = "full") -> str:
    if not caption:
        return ""
    return f'Prompt: "{caption}"\n' if style == "compact" else f'The video was generated from the prompt: "{caption}".\n'


def _format(anomaly_fields: str) -> str:
    return "Answer with one JSON object and nothing else, in this format:\n" + _HEAD + '"anomalies": [{' + anomaly_fields + "}]}\n"


def _compact_format(*anomaly_keys: str) -> str:
    """The schema as a terse key list: the compact wording's whole format instruction."""
    return 'JSON: {"COT", "status": "normal"/"abnormal", "anomalies": [{' + ", ".join(anomaly_keys) + "}]}"


_COMPACT_BOX = '"BBOX": {"Frame k": [xmin, ymin, xmax, ymax]} (0-1000)'


def turn1_prompt(duration_s: float, fps: float, num_frames: int, caption: str | None = None, style: str = "full") -> str:
    """Turn 1: scan the whole video, decide, and locate the anomalous time region (frames)."""
    _check_style(style)
    grid = f"{num_frames} frames sampled at {fps:g} fps, numbered from 0 (frame i is at i/{fps:g} s)"
    fields = f"{_TIME}, {_LABEL}, {_REASON_REGION}"
    if style == "compact":
        return (
            f"{_about(caption, style)}{_COMPACT_ROLE} in this {duration_s:.2f} s video ({num_frames} frames at {fps:g} fps, "
            f"frame i at i/{fps:g} s). {_type_names()}\n"
            + _compact_format('"Attributed Time Region": "first-last frame"', '"Attributed Label"', '"Reason for Anomaly"', '"Problem Region"')
        )
    return (
        f"{_ROLE}\n{_about(caption)}"
        f"The video lasts {duration_s:.2f} s and is shown as {grid}; each frame's time is given before it.\n"
        f"{_types_block()}\n"
        "Think step by step: 1) describe the scene and the main subjects; 2) follow each subject over time "
        "and look for the anomaly types above; 3) for each anomaly, name the type and the frames where it is visible; "
        "4) decide whether the video is normal or abnormal.\n"
        + _format(fields)
        + 'For a normal video use "anomalies": [].'
    )


def turn2_prompt(window_s: tuple[float, float], fps: float, num_frames: int, style: str = "full") -> str:
    """Turn 2: look closely at the predicted window, confirm, and box the defect per frame."""
    _check_style(style)
    start, end = window_s
    fields = f'{_TIME}, {_LABEL}, {_REASON_REGION}, "BBOX": {{"Frame 0": [xmin, ymin, xmax, ymax], ...}}'
    clip = f"{num_frames} frames at {fps:g} fps, numbered Frame 0 to Frame {num_frames - 1}"
    if style == "compact":
        return (
            f"Close-up of {start:.2f}-{end:.2f} s ({num_frames} frames at {fps:g} fps, Frame 0 to {num_frames - 1}): "
            "confirm the anomaly and box it in each frame.\n"
            + _compact_format('"Attributed Time Region"', '"Attributed Label"', '"Reason for Anomaly"', '"Problem Region"', _COMPACT_BOX)
        )
    return (
        f"Here is the window from {start:.2f} s to {end:.2f} s, shown densely as {clip}.\n"
        "Look closely and check whether the anomaly you reported is really there. Think step by step: "
        "1) find the subject you suspected; 2) compare it across these frames; 3) confirm or reject the anomaly; "
        "4) if confirmed, draw a box around the defect in every frame where it is visible, as [xmin, ymin, xmax, ymax] "
        "in coordinates normalized to 0-1000.\n"
        + _format(fields)
        + 'If the anomaly is not really there, answer "status": "normal" with "anomalies": [].'
    )


def single_turn_prompt(duration_s: float, fps: float, num_frames: int, caption: str | None = None, style: str = "full") -> str:
    """One pass that must both localize in time and box (the paper's single-turn ablation)."""
    _check_style(style)
    if style == "compact":
        head = turn1_prompt(duration_s, fps, num_frames, caption, style).rsplit("JSON:", 1)[0]
        return head + _compact_format(
            '"Attributed Time Region": "first-last frame"', '"Attributed Label"', '"Reason for Anomaly"', '"Problem Region"', _COMPACT_BOX
        )
    fields = f'{_TIME}, {_LABEL}, {_REASON_REGION}, "BBOX": {{"Frame <index>": [xmin, ymin, xmax, ymax], ...}}'
    head = turn1_prompt(duration_s, fps, num_frames, caption, style).rsplit("Answer with one JSON object", 1)[0]
    return head + _format(fields) + "Boxes are normalized to 0-1000. " + 'For a normal video use "anomalies": [].'


def no_cot_prompt(duration_s: float, fps: float, num_frames: int, caption: str | None = None, style: str = "full") -> str:
    """Ask for the status directly; the reward reads its probabilities without any reasoning."""
    _check_style(style)
    answer = 'Answer with JSON only: {"status": "normal"} or {"status": "abnormal"}.'
    if style == "compact":
        return f"{_about(caption, style)}{_COMPACT_ROLE} in this {duration_s:.2f} s video ({num_frames} frames at {fps:g} fps). {_type_names()}\n{answer}"
    return (
        f"{_ROLE}\n{_about(caption)}"
        f"The video lasts {duration_s:.2f} s, shown as {num_frames} frames at {fps:g} fps.\n"
        f"{_types_block()}\n"
        f"Does the video contain any of these anomalies? {answer}"
    )


def frame_prompt(caption: str | None = None, style: str = "full") -> str:
    """One still frame: decide whether it shows a visible defect and box it (stage-1 warmup)."""
    _check_style(style)
    about = f'The frame comes from a video generated from the prompt: "{caption}".\n' if caption else ""
    if caption and style == "compact":
        about = _about(caption, style)
    fields = f'{_LABEL}, {_REASON_REGION}, "BBOX": {{"Frame 0": [xmin, ymin, xmax, ymax]}}'
    if style == "compact":
        return (
            f"{about}{_COMPACT_ROLE} in this frame (Frame 0). {_type_names()}\n"
            + _compact_format('"Attributed Label"', '"Reason for Anomaly"', '"Problem Region"', _COMPACT_BOX)
        )
    return (
        f"{_ROLE}\n{about}"
        "Here is a single frame of the video (Frame 0).\n"
        f"{_types_block()}\n"
        "Think step by step: 1) describe the scene and the main subjects; 2) check each subject's shape, "
        "anatomy and any written text for the anomaly types above that can be seen in one frame; "
        "3) decide whether the frame is normal or abnormal; 4) if abnormal, draw a box around each defect "
        "as [xmin, ymin, xmax, ymax] in coordinates normalized to 0-1000.\n"
        + _format(fields)
        + 'For a normal frame use "anomalies": [].'
    )
