"""ViF-CoT-4K (Skyra, HF ``JoeLeelyf/ViF-CoT-4K``, CC BY 4.0) -> CaC annotation records.

Its supervised data is in LLaMA-Factory's conversation layout: a row holds ``messages`` (or
``conversations``) and the video (``videos``), or the frames it was cut into (``images``, listed
in the prompt as ``[T=0.5 s] <image>`` lines). The assistant's answer reasons in ``<think>...
</think>``, tagging every artifact as
``<type>L3 Category</type> in <t>[start, end]</t> at <bbox>[x1, y1, x2, y2]</bbox>`` (seconds;
an all-zero box for a defect with no place), and ends with ``<answer>Real</answer>`` or
``<answer>Fake</answer>``.

How a row becomes a record:

- **Real** -> a normal record (real videos are the reliable normals; tags in a real video's
  reasoning clear regions, they do not flag them, and are counted as ``real_with_tags``).
- **Fake** -> an abnormal record with one anomaly per tag whose L3 category maps onto CaC's five
  types (:data:`CATEGORY_MAP`); low-level categories (texture jittering, blur, saturation,
  lighting) are dropped and counted by name. A fake whose every tag was dropped converts to
  nothing (``fake_without_our_types``): being AI-generated is not an anomaly by itself.
- Times become a frame window on the video's own rate; the one box of a tag is held over every
  frame of its window; an all-zero box gives the anomaly no box.
- **Box scale**, not confirmed by the dataset's documentation (0–1 in its test strings, pixels as
  Qwen2.5-VL usually writes them), is detected per record: every coordinate within [0, 1] ->
  fractions; otherwise pixels of the frames the model was shown (the first listed image's size
  when the file is there, else the video's), and the report counts each.
- The video is ``videos[0]`` (or ``video``); for a row that lists only frames, the video whose
  file name (without extension) is the frames' folder name is looked for under ``video_root``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cac_align.cac.schema import AnnotationRecord, Anomaly
from cac_align.data.convert import BadRow, SourceReport, box_to_grid, seconds_to_window, video_info

__all__ = ["CATEGORY_MAP", "LICENSE", "LOW_LEVEL", "SOURCE", "convert_row", "find_tags"]

SOURCE = "ViF-CoT-4K"
LICENSE = "CC BY 4.0"

# Skyra's L3 categories -> CaC's types (issue #33's mapping)
CATEGORY_MAP: dict[str, str] = {
    "Shape Distortion": "Object Distortion",
    "Structure Anomaly": "Object Distortion",
    "Abnormal General Object Structure": "Object Distortion",
    "General Object Identity Inconsistency": "Object Distortion",
    "Abnormal Human Body Structure": "Human Distortion",
    "Person Identity Inconsistency": "Human Distortion",
    "Unnatural Human Movement": "Motion Anomalies",
    "Unnatural Animal Movement": "Motion Anomalies",
    "Unnatural General Object Movement": "Motion Anomalies",
    "Camera Motion Inconsistency": "Motion Anomalies",
    "Abnormal Rigid-Body Crossing": "Physical Violations",
    "Abnormal Multi-Object Merging": "Physical Violations",
    "Abnormal Object Splitting": "Physical Violations",
    "General Interaction Anomaly": "Physical Violations",
    "Violation of Physical Law": "Physical Violations",
    "Violation of General Causality Law": "Physical Violations",
    "Abnormal Object Disappearance": "Physical Violations",
    "Abnormal Object Appearance": "Physical Violations",
    "Text Distortion": "Character Anomalies",
}
# Low-level forgery categories: real defects, but none of CaC's five types -> dropped, counted
LOW_LEVEL = ("Texture Jittering", "Unnatural Blur", "Color Over-saturation", "Lighting Inconsistency")

_TAG = re.compile(
    r"<type>\s*(?P<type>[^<]+?)\s*</type>\s*(?:in\s*)?<t>\s*\[(?P<time>[^\]]*)\]\s*</t>"
    r"(?:\s*(?:at\s*)?<bbox>\s*\[(?P<box>[^\]]*)\]\s*</bbox>)?",
    re.IGNORECASE,
)
_ANSWER = re.compile(r"<answer>\s*(real|fake)\s*</answer>", re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_CANONICAL = {name.lower(): name for name in (*CATEGORY_MAP, *LOW_LEVEL)}


def _numbers(text: str, what: str, count: int) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadRow(f"{what} [{text}] is not numbers") from None
    if len(values) != count:
        raise BadRow(f"{what} [{text}] needs {count} numbers")
    return values


def find_tags(text: str) -> list[dict]:
    """The artifact tags of an answer's reasoning: ``{"category", "time": (start, end), "box",
    "sentence"}`` in order (``box`` None when the tag has none)."""
    think = _THINK.search(text)
    body = think.group(1) if think else text
    tags = []
    for match in _TAG.finditer(body):
        start, end = _numbers(match.group("time"), "time", 2)
        box = _numbers(match.group("box"), "bbox", 4) if match.group("box") is not None else None
        # the sentence the tag sits in, tags removed: the anomaly's reason
        lo = max(body.rfind(".", 0, match.start()), body.rfind("\n", 0, match.start())) + 1
        hi_candidates = [i for i in (body.find(".", match.end()), body.find("\n", match.end())) if i >= 0]
        sentence = body[lo : min(hi_candidates) if hi_candidates else len(body)]
        sentence = re.sub(r"<[^>]+>|\s+", " ", _TAG.sub(lambda m: m.group("type"), sentence)).strip()
        tags.append({"category": match.group("type").strip(), "time": (start, end), "box": box, "sentence": sentence[:300]})
    return tags


def _answer_text(row: dict) -> str:
    messages = row.get("messages") or row.get("conversations")
    if not isinstance(messages, list) or not messages:
        raise BadRow("no 'messages' (or 'conversations') list")
    for message in reversed(messages):
        if isinstance(message, dict) and (message.get("role") or message.get("from")) in ("assistant", "gpt"):
            content = message.get("content", message.get("value"))
            if isinstance(content, str):
                return content
    raise BadRow("no assistant answer in the conversation")


def _resolve(path: str, base: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else base / candidate


def _video_path(row: dict, base: Path, video_root: Path | None, index: dict[str, Path] | None) -> Path:
    videos = row.get("videos") or ([row["video"]] if isinstance(row.get("video"), str) else None)
    if videos:
        return _resolve(str(videos[0]), video_root or base)
    images = row.get("images")
    if not images:
        raise BadRow("no video: the row has neither 'videos' nor 'images'")
    folder = Path(str(images[0])).parent.name
    if index is None:
        raise BadRow(f"the row lists frames only (folder {folder!r}): give video_root, the folder holding the source videos")
    if folder not in index:
        raise BadRow(f"no source video named {folder}.* under video_root for the frames of folder {folder!r}")
    return index[folder]


def _reference_size(row: dict, base: Path, video_root: Path | None, info: Any) -> tuple[float, float]:
    """The size of the frames the model was shown: the first listed image when it is there."""
    images = row.get("images")
    if images:
        first = _resolve(str(images[0]), video_root or base)
        if first.is_file():
            from PIL import Image

            with Image.open(first) as image:
                return float(image.width), float(image.height)
    return float(info.width), float(info.height)


def convert_row(row: Any, base: Path, video_root: Path | None, index: dict[str, Path] | None, report: SourceReport) -> AnnotationRecord | None:
    """One ViF-CoT row -> a record (None: converted to nothing on purpose, counted in ``report``).
    Raises :class:`BadRow` with the reason for a row that cannot be converted."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be an object, got {type(row).__name__}")
    text = _answer_text(row)
    verdict = _ANSWER.search(text)
    if verdict is None:
        raise BadRow("no <answer>Real</answer> or <answer>Fake</answer> in the answer")
    info = video_info(_video_path(row, base, video_root, index))
    tags = find_tags(text)
    common = {"video": info.path, "prompt": str(row.get("prompt") or ""), "annotation_fps": info.fps,
              "num_frames": info.num_frames, "source": SOURCE, "license": report.license}
    if verdict.group(1).lower() == "real":
        if tags:
            report.notes["real_with_tags"] += 1
        return AnnotationRecord(status="normal", **common)
    unknown = [t["category"] for t in tags if t["category"].lower() not in _CANONICAL]
    if unknown:
        raise BadRow(f"unknown category {unknown[0]!r} (not one of Skyra's L3 categories)")
    kept = []
    for tag in tags:
        name = _CANONICAL[tag["category"].lower()]
        if name in LOW_LEVEL:
            report.dropped_categories[name] += 1
        else:
            kept.append((name, tag))
    if not kept:
        report.dropped_rows["fake_without_our_types"] += 1
        return None
    boxes = [tag["box"] for _, tag in kept if tag["box"] is not None and any(v != 0 for v in tag["box"])]
    if not boxes:
        scale = "none"
    elif all(0.0 <= v <= 1.0 for box in boxes for v in box):
        scale = "fraction"
    else:
        scale = "pixels"
    width, height = _reference_size(row, base, video_root, info) if scale == "pixels" else (None, None)
    anomalies = []
    for name, tag in kept:
        first, last = seconds_to_window(tag["time"][0], tag["time"][1], info)
        box = box_to_grid(tag["box"], scale, width, height) if tag["box"] is not None and scale != "none" else None
        anomalies.append(Anomaly(
            type=CATEGORY_MAP[name], frames=(first, last),
            boxes={f: [list(box)] for f in range(first, last + 1)} if box is not None else {},
            reason=tag["sentence"] or name, region="", saliency="salient",
        ))
    report.box_scales[scale if scale != "pixels" else f"pixels of {width:g}x{height:g}"] += 1
    return AnnotationRecord(status="abnormal", anomalies=anomalies, **common)
