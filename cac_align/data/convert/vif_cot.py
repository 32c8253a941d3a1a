"""ViF-CoT-4K (Skyra, HF ``JoeLeelyf/ViF-CoT-4K``, CC BY 4.0) -> CaC annotation records.

Its supervised data is in LLaMA-Factory's conversation layout: a row holds ``messages`` (or
``conversations``) and the video (``videos``), or the frames it was cut into (``images``, listed
in the prompt as ``[T=0.5 s] <image>`` lines; Skyra keeps them as
``parsed_frames/<set>/{real,fake/<generator>}/<video id>/1.png ...``). The assistant's answer
reasons in ``<think>...</think>``, tagging every artifact as
``<type>L3 Category</type> in <t>[start, end]</t> at <bbox>[x1, y1, x2, y2]</bbox>`` (seconds;
an all-zero box for a defect with no place), and ends with ``<answer>Real</answer>`` or
``<answer>Fake</answer>``.

How a row becomes a record:

- **Paths as LLaMA-Factory resolves them**: a relative ``videos`` / ``images`` entry is looked
  for under ``media_dir`` (LLaMA-Factory's setting; its default, and ours, is the data file's
  folder), else taken as written, relative to the working folder (LLaMA-Factory's fallback,
  counted as ``media_from_working_dir``).
- **The video** is ``videos[0]``. For a row that lists frames only, it is the file under
  ``video_root`` whose path ends like the frames' folder (``fake/Wan2.1/abc-0/`` ->
  ``.../fake/Wan2.1/abc-0.mp4``; a folder named ``abc-0.mp4`` works too). A real video and its fakes
  share a file name, so a frame path that says ``real`` or ``fake`` must match through that
  folder: a fake's defects never land on its real twin. Two candidates equally close are a bad
  row; a match by name alone is counted (``source_video_by_name_only``).
- **Real** -> a normal record (real videos are the reliable normals; tags in a real video's
  reasoning clear regions, they do not flag them, and are counted as ``real_with_tags``).
- **Fake** -> an abnormal record with one anomaly per tag whose L3 category maps onto CaC's five
  types (:data:`CATEGORY_MAP`). Skyra's low-level forgery categories (:data:`LOW_LEVEL`, as its
  own prompt lists them) are dropped and counted by name. A fake left with none of our types
  converts to nothing (``fake_without_our_types``; ``fake_without_tags`` when it has no tag):
  being AI-generated is not an anomaly by itself. A ``<type>`` tag that does not parse is a bad
  row, never a silently smaller label.
- Times become a frame window on the video's own rate; the one box of a tag is held over every
  frame of its window; an all-zero box gives the anomaly no box. The reason is the tag's clause of
  its sentence (tags written as their category).
- **Box scale** (not stated by the dataset; Skyra's own reward code writes fractions) is decided
  per record from what is known: every coordinate within [0, 1] -> fractions; otherwise pixels
  of the frames the model was shown, whose size is read from the first listed image. A pixel box
  whose frames are not listed or not found cannot be scaled: a bad row (never a guessed size).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cac_align.cac.schema import AnnotationRecord, Anomaly
from cac_align.data.convert import BadRow, RowResult, SourceReport, box_to_grid, seconds_to_window, video_info

__all__ = ["CATEGORY_MAP", "LICENSE", "LOW_LEVEL", "SOURCE", "SourceVideos", "convert_row", "find_tags"]

SOURCE = "ViF-CoT-4K"
LICENSE = "CC BY 4.0"

# Skyra's L3 categories of "Violation of Laws" -> CaC's types (issue #33's mapping)
CATEGORY_MAP: dict[str, str] = {
    "Shape Distortion": "Object Distortion",
    "Abnormal General Object Structure": "Object Distortion",
    "General Object Identity Inconsistency": "Object Distortion",
    "Abnormal Human Body Structure": "Human Distortion",
    "Person Identity Inconsistency": "Human Distortion",
    "Unnatural Human Movement": "Motion Anomalies",
    "Unnatural Animal Movement": "Motion Anomalies",
    "Unnatural General Object Movement": "Motion Anomalies",
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
# Skyra's "Low-Level Forgery" (texture, colour and lighting, camera move), as its prompt lists
# them: real defects, but none of CaC's five types -> dropped, counted
LOW_LEVEL = ("Structure Anomaly", "Texture Jittering", "Unnatural Blur", "Color Over-saturation", "Lighting Inconsistency",
             "Camera Motion Inconsistency")

_TAG = re.compile(
    r"<type>\s*(?P<type>[^<]+?)\s*</type>\s*(?:in\s*)?<t>\s*\[(?P<time>[^\]]*)\]\s*</t>"
    r"(?:\s*(?:at\s*)?<bbox>\s*\[(?P<box>[^\]]*)\]\s*</bbox>)?",
    re.IGNORECASE,
)
_TYPE_OPEN = re.compile(r"<type>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>\s*(real|fake)\s*</answer>", re.IGNORECASE)
_THINK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")  # "1.5" is no sentence end
_CANONICAL = {name.lower(): name for name in (*CATEGORY_MAP, *LOW_LEVEL)}


def _numbers(text: str, what: str, count: int) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadRow(f"{what} [{text}] is not numbers", kind="unparsed tag") from None
    if len(values) != count:
        raise BadRow(f"{what} [{text}] needs {count} numbers", kind="unparsed tag")
    return values


def _clean(text: str) -> str:
    text = re.sub(r"<[^>]+>|\s+", " ", text).strip()
    return re.sub(r"^(?:and|but|while|then|also)\b\s*|^[,;:\s]+", "", text, flags=re.IGNORECASE).strip()


def find_tags(text: str) -> list[dict]:
    """The artifact tags of an answer's reasoning: ``{"category", "time": (start, end), "box",
    "sentence"}`` in order (``box`` None when the tag has none). ``sentence`` is the tag's own
    clause: from the previous tag of its sentence (or the sentence's start) to this tag, and to the
    sentence's end for its last tag, the tag written as its category in parentheses."""
    think = _THINK.search(text)
    body = think.group(1) if think else text
    matches = list(_TAG.finditer(body))
    # sentence boundaries outside the tags
    spans = [(m.start(), m.end()) for m in matches]
    ends = [e.end() for e in _SENTENCE_END.finditer(body) if not any(a <= e.start() < b for a, b in spans)]
    def sentence_of(position: int) -> tuple[int, int]:
        start = max((e for e in ends if e <= position), default=0)
        stop = min((e for e in ends if e > position), default=len(body))
        return start, stop

    tags = []
    for i, match in enumerate(matches):
        start, end = _numbers(match.group("time"), "time", 2)
        box = _numbers(match.group("box"), "bbox", 4) if match.group("box") is not None else None
        lo, hi = sentence_of(match.start())
        previous = matches[i - 1] if i and matches[i - 1].start() >= lo else None
        following = matches[i + 1] if i + 1 < len(matches) and matches[i + 1].start() < hi else None
        clause = body[previous.end() if previous else lo : match.start()] + f" ({match.group('type').strip()})"
        if following is None:
            clause += body[match.end() : hi]
        tags.append({"category": match.group("type").strip(), "time": (start, end), "box": box, "sentence": _clean(clause)[:300]})
    return tags


def _answer_text(row: dict) -> str:
    messages = row.get("messages") or row.get("conversations")
    if not isinstance(messages, list) or not messages:
        raise BadRow("no 'messages' (or 'conversations') list", kind="malformed row")
    for message in reversed(messages):
        if isinstance(message, dict) and (message.get("role") or message.get("from")) in ("assistant", "gpt"):
            content = message.get("content", message.get("value"))
            if isinstance(content, str):
                return content
    raise BadRow("no assistant answer in the conversation", kind="malformed row")


def _media(entry: Any, media_dir: Path, report: SourceReport) -> Path:
    """A ``videos`` / ``images`` entry resolved as LLaMA-Factory resolves it: under ``media_dir``
    when the file is there, else as written (relative to the working folder)."""
    path = Path(str(entry))
    if path.is_absolute():
        return path
    if (media_dir / path).exists():
        return media_dir / path
    if path.exists():
        report.notes["media_from_working_dir"] += 1
        return path
    return media_dir / path  # missing: reported by whoever opens it


class SourceVideos:
    """The video files under ``video_root``, found for a frame folder by the longest match of
    trailing path parts (the last part without its extension)."""

    def __init__(self, root: Path) -> None:
        from cac_align.run.input_files import VIDEO_SUFFIXES

        self.root = root
        self.videos = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        self._parts = [tuple(x.lower() for x in (*p.relative_to(root).parent.parts, p.stem)) for p in self.videos]

    def find(self, frame_dir: Path, report: SourceReport) -> Path:
        from cac_align.run.input_files import VIDEO_SUFFIXES

        parts = [x.lower() for x in frame_dir.parts]
        if Path(parts[-1]).suffix in VIDEO_SUFFIXES:  # a folder named "abc-0.mp4"
            parts[-1] = Path(parts[-1]).stem
        # "real" / "fake" in the frames' path must be matched too: twins share their file name
        marker = max((i for i, part in enumerate(parts) if part in ("real", "fake")), default=None)
        needed = 1 if marker is None else len(parts) - marker
        best: list[Path] = []
        best_length = 0
        for path, candidate in zip(self.videos, self._parts):
            length = 0
            while length < min(len(parts), len(candidate)) and parts[-1 - length] == candidate[-1 - length]:
                length += 1
            if length and length > best_length:
                best, best_length = [path], length
            elif length and length == best_length:
                best.append(path)
        where = "/".join(frame_dir.parts[-needed:])
        if best_length < needed:
            raise BadRow(f"no source video under video_root {self.root} whose path ends like the frames' folder {where!r}", kind="missing video")
        if len(best) > 1:
            raise BadRow(f"{len(best)} source videos match the frames' folder {where!r} equally: {', '.join(str(p) for p in best[:3])}",
                         kind="ambiguous video")
        if best_length == 1:
            report.notes["source_video_by_name_only"] += 1
        return best[0]


def _listed_frames(row: dict) -> list | None:
    """The frames the row shows the model: ``images``, or a video given as its frames."""
    videos = row.get("videos")
    return videos[0] if videos and isinstance(videos[0], list) else row.get("images")


def _video_path(row: dict, media_dir: Path, sources: SourceVideos | None, report: SourceReport) -> Path:
    videos = row.get("videos") or ([row["video"]] if isinstance(row.get("video"), str) else None)
    if videos and not isinstance(videos[0], list):
        return _media(videos[0], media_dir, report)
    frames = _listed_frames(row)
    if not frames:
        raise BadRow("no video: the row has neither 'videos' nor 'images'", kind="no video")
    folder = _media(frames[0], media_dir, report).parent
    if sources is None:
        raise BadRow(f"the row lists frames only (folder {folder.name!r}): give video_root, the folder holding the source videos", kind="missing video")
    return sources.find(folder, report)


def _frame_size(row: dict, media_dir: Path, report: SourceReport) -> tuple[float, float]:
    """The size of the frames the model was shown (the first listed image); :class:`BadRow` when
    the row lists none or it is not there: pixel boxes cannot be scaled without it."""
    frames = _listed_frames(row)
    if not frames:
        raise BadRow("pixel boxes, but the row lists no frames whose size they refer to (the size a video was "
                     "resized to for the model is not known): cannot scale them", kind="box scale unknown")
    first = _media(frames[0], media_dir, report)
    if not first.is_file():
        raise BadRow(f"pixel boxes refer to the listed frames, but {first} is not there: cannot scale them", kind="box scale unknown")
    from PIL import Image

    with Image.open(first) as image:
        return float(image.width), float(image.height)


def convert_row(row: Any, line: int, media_dir: Path, sources: SourceVideos | None, report: SourceReport) -> RowResult:
    """One ViF-CoT row -> its video and record, or the reason it converts to nothing.
    Raises :class:`BadRow` with the reason for a row that cannot be converted."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be an object, got {type(row).__name__}", kind="malformed row")
    text = _answer_text(row)
    verdict = _ANSWER.search(text)
    if verdict is None:
        raise BadRow("no <answer>Real</answer> or <answer>Fake</answer> in the answer", kind="no verdict")
    info = video_info(_video_path(row, media_dir, sources, report))
    media = row.get("videos") or row.get("images") or []
    provenance = {"file": report.path, "line": line, ("videos" if row.get("videos") else "images"): str(media[0]) if media else ""}
    common = {"video": info.path, "prompt": str(row.get("prompt") or ""), "annotation_fps": info.fps,
              "num_frames": info.num_frames, "source": SOURCE, "license": report.license, "provenance": provenance}
    if verdict.group(1).lower() == "real":
        if _TYPE_OPEN.search(text):
            report.notes["real_with_tags"] += 1
        return RowResult(info.path, AnnotationRecord(status="normal", **common))
    tags = find_tags(text)
    think = _THINK.search(text)
    body = think.group(1) if think else text
    written, written_boxes = len(_TYPE_OPEN.findall(body)), len(re.findall(r"<bbox>", body, re.IGNORECASE))
    if written > len(tags) or written_boxes > sum(tag["box"] is not None for tag in tags):
        raise BadRow(f"{written - len(tags) or 'a'} of {written} <type> tags (or their <bbox>) are not in the form "
                     "<type>...</type> in <t>[s, e]</t> at <bbox>[x1, y1, x2, y2]</bbox>", kind="unparsed tag")
    if not tags:
        return RowResult(info.path, dropped="fake_without_tags")
    unknown = [t["category"] for t in tags if t["category"].lower() not in _CANONICAL]
    if unknown:
        raise BadRow(f"unknown category {unknown[0]!r} (not one of Skyra's L3 categories)", kind="unknown category")
    kept = []
    for tag in tags:
        name = _CANONICAL[tag["category"].lower()]
        if name in LOW_LEVEL:
            report.dropped_categories[name] += 1
        else:
            kept.append((name, tag))
    if not kept:
        return RowResult(info.path, dropped="fake_without_our_types")
    boxes = [tag["box"] for _, tag in kept if tag["box"] is not None and any(v != 0 for v in tag["box"])]
    if not boxes:
        scale = "none"
    elif all(0.0 <= v <= 1.0 for box in boxes for v in box):
        scale = "fraction"
    else:
        scale = "pixels"
    width, height = _frame_size(row, media_dir, report) if scale == "pixels" else (None, None)
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
    return RowResult(info.path, AnnotationRecord(status="abnormal", anomalies=anomalies, **common))
