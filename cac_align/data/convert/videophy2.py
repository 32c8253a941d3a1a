"""VideoPhy-2 (HF ``videophysics/videophy2_train`` / ``_test``, MIT) -> status-only CaC records.

One human label per generated video: ``pc``, physical commonsense from 1 (significant
violations) to 5 (full compliance), the generated rules annotators judged broken
(``physics_rules_unfollowed``), the rules they wrote themselves (``human_violated_rules``), and
``metadata_rules``, each rule's physical law ("Gravity", "Elasticity", ...). Export the split to
CSV or JSONL and download the videos.

How a row becomes a record:

- **The video** is the row's local path (``videopath``, the column VideoPhy-2's own AutoEval
  reads, or ``video`` / ``video_path``) under ``video_root``, else the ``video_url``'s path under
  ``video_root``, folders kept (``<generator folder>/<file>.mp4``, or ``<host>/<folder>/<file>``
  as ``wget -x`` saves it). Several generators name their files after the caption, so the file name
  alone is only a fallback, counted (``found_by_file_name``); two rows that reach one file are both
  bad rows (``apply_results``), never a label on the wrong model's video.
- **Status** by the dataset's own threshold: VideoPhy-2 counts a video as physically
  commonsensical when ``pc >= 4`` (its README's joint score: SA >= 4 and PC >= 4), so
  ``pc <= pc_threshold`` (3) is **abnormal**. With ``rules_make_abnormal`` a listed rule makes the
  video abnormal whatever its ``pc`` (off by default: annotators list trivial rules on videos
  they rate 4 or 5).
- **Types**: each broken rule is a Physical Violation unless its text says that a body or an
  object keeps its shape (the rule broken means it did not): then Human Distortion (a body part)
  or Object Distortion (:func:`rule_type`; counted per type in the report's notes). One anomaly
  per type, the rules with their laws as its reason; **no window and no box** (a status-only
  record: the label says *that*, not *when* or *where*). Without a rule, one Physical Violation
  whose reason is the rating.
- **Otherwise** (``pc`` above the threshold) the video is only physically plausible to its
  annotators: AI-generated and never checked for CaC's other anomalies, so not a reliable
  normal. It converts to nothing (``plausible_not_normal``) unless ``plausible_as_normal``.
- **Prompt**: the caption the video was generated from: ``upsampled_caption`` for the videos of
  generators given dense captions (their URL folder says ``upsampled``), ``caption`` otherwise
  (``prompt_from`` overrides).
- **Provenance**: every record keeps its file and line, ``video_url``, ``model_name``, ``pc``
  and ``sa``.
- Empty rule cells, ``[]``, ``nan`` / ``None`` cells and ``[nan]`` lists are no rules.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from cac_align.cac.schema import AnnotationRecord, Anomaly
from cac_align.data.convert import BadRow, RowResult, SourceReport, video_info

__all__ = ["LICENSE", "PLAUSIBLE_MIN", "PROMPT_FROM", "SOURCE", "convert_row", "rule_laws", "rule_type", "rules"]

SOURCE = "VideoPhy-2"
LICENSE = "MIT"
PLAUSIBLE_MIN = 4  # VideoPhy-2's README: high physical commonsense is PC >= 4
PROMPT_FROM = ("auto", "caption", "upsampled_caption")

_MISSING = ("", "nan", "none", "null", "[]")
_MISSING_ITEM = re.compile(r"^\[\s*(?:(?:nan|none|null)\s*,?\s*)*\]$", re.IGNORECASE)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING


def rules(value: Any, column: str = "rules") -> list[str]:
    """A rules cell as a list of rule texts.

    Accepts a list, a Python or JSON list literal (VideoPhy-2's CSV writes Python literals), or
    ``;`` / newline separated text. Missing values (empty, ``nan``, ``None``, ``[nan]``) are no
    rules. Raises :class:`BadRow` naming ``column`` for a list literal that does not parse.
    """
    if _missing(value):
        return []
    if isinstance(value, list):
        items = value
    else:
        text = str(value).strip()
        if _MISSING_ITEM.match(text):
            return []
        if text.startswith("["):
            items = None
            for parse in (ast.literal_eval, json.loads):
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, list):
                    items = parsed
                    break
            if items is None:
                raise BadRow(f"column '{column}': {text[:80]!r} is not a list of rules", kind="malformed cell")
        else:
            items = text.replace("\n", ";").split(";")
    return [str(item).strip() for item in items if not _missing(item) and str(item).strip()]


def rule_laws(value: Any) -> dict[str, str]:
    """``metadata_rules`` (a dict literal: rule text -> law, or a list of laws) as rule -> "law, law";
    an empty or unreadable cell gives no laws (the laws only annotate the reason)."""
    if _missing(value) or str(value).strip() == "{}":
        return {}
    parsed = value if isinstance(value, dict) else None
    if parsed is None:
        for parse in (ast.literal_eval, json.loads):
            try:
                parsed = parse(str(value))
                break
            except (ValueError, SyntaxError):
                continue
    if not isinstance(parsed, dict):
        return {}
    laws = {}
    for rule, law in parsed.items():
        names = law if isinstance(law, list) else [law]
        names = [str(n).strip() for n in names if not _missing(n) and str(n).strip()]
        if names:
            laws[str(rule).strip()] = ", ".join(names)
    return laws


# A rule that says a thing keeps its shape: broken, the thing was distorted.
_KEEPS_SHAPE = re.compile(
    r"\b(?:retains?|maintains?|keeps?|preserves?|holds?)\b[^.;]*\b(?:shape|form|structure)\b"
    r"|\bremains?\s+(?:mostly\s+|largely\s+|fully\s+)?(?:intact|whole|spherical|round|rigid|straight|in one piece)\b"
    r"|\bdoes(?: not|n't) (?:flatten|deform|warp|bend out of shape)\b",
    re.IGNORECASE,
)
_BODY = re.compile(
    r"\b(?:hands?|fingers?|thumbs?|arms?|legs?|feet|foot|faces?|heads?|necks?|limbs?|torsos?|knees?|elbows?|wrists?|ankles?|bod(?:y|ies))\b",
    re.IGNORECASE,
)
_BODY_MOVES = re.compile(r"\bnatural range of motion\b|\banatomic\w*|\bnumber of (?:fingers|limbs|arms|legs)\b", re.IGNORECASE)


def rule_type(rule: str) -> str:
    """CaC's type for one broken VideoPhy-2 rule, from its text.

    - a body part that keeps its shape or moves within its natural range -> Human Distortion
      ("The person's leg must bend within a natural range of motion");
    - anything else that keeps its shape -> Object Distortion ("The oar retains its shape while
      being rowed and does not flatten.");
    - every other rule -> Physical Violations (gravity, momentum, mass, ...).
    """
    keeps_shape = bool(_KEEPS_SHAPE.search(rule))
    if _BODY.search(rule) and (keeps_shape or _BODY_MOVES.search(rule)):
        return "Human Distortion"
    if keeps_shape:
        return "Object Distortion"
    return "Physical Violations"


def _url_candidates(url: str, video_root: Path) -> list[Path]:
    """Where a downloaded copy of ``url`` is looked for: its path with folders, under the root,
    then under the root and the host (``wget -x``)."""
    parts = urlsplit(url)  # not urlparse: that cuts the path at ';'
    path = PurePosixPath(unquote(parts.path).lstrip("/"))
    found = [video_root / path]
    if parts.netloc:
        found.append(video_root / parts.netloc / path)
    return found


def _video_path(row: dict, base: Path, video_root: Path | None, report: SourceReport) -> Path:
    local = next((row[k] for k in ("videopath", "video", "video_path") if not _missing(row.get(k))), None)
    if local is not None:
        path = Path(str(local))
        return path if path.is_absolute() else (video_root or base) / path
    url = row.get("video_url")
    if _missing(url):
        raise BadRow("no 'videopath', 'video', 'video_path' or 'video_url'", kind="no video")
    url = str(url)
    if video_root is None:
        raise BadRow(f"video_url {url!r} is remote: give video_root, the folder holding the downloaded videos", kind="missing video")
    candidates = _url_candidates(url, video_root)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    by_name = video_root / PurePosixPath(unquote(urlsplit(url).path)).name
    if by_name.is_file():
        report.notes["found_by_file_name"] += 1
        return by_name
    looked = ", ".join(str(c) for c in (*candidates, by_name))
    raise BadRow(f"missing video: none of {looked}", kind="missing video")


def _prompt(row: dict, prompt_from: str, report: SourceReport) -> str:
    caption = "" if _missing(row.get("caption")) else str(row["caption"])
    upsampled = "" if _missing(row.get("upsampled_caption")) else str(row["upsampled_caption"])
    if prompt_from == "auto":
        folders = str(PurePosixPath(urlsplit(str(row.get("video_url") or "")).path).parent).lower()
        prompt_from = "upsampled_caption" if "upsampled" in folders else "caption"
    if prompt_from == "upsampled_caption":
        if not upsampled:
            raise BadRow("the video was generated from 'upsampled_caption', which is empty", kind="no prompt")
        report.notes["prompt_from_upsampled_caption"] += 1
        return upsampled
    return caption or str(row.get("prompt") or "")


def _score(row: dict, name: str, required: bool) -> float | None:
    value = row.get(name)
    if _missing(value):
        if required:
            raise BadRow(f"column '{name}' must be a number from 1 to 5, got {value!r}", kind="malformed cell")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRow(f"column '{name}' must be a number from 1 to 5, got {value!r}", kind="malformed cell") from None
    if not (math.isfinite(number) and 1 <= number <= 5):
        raise BadRow(f"column '{name}' must be a number from 1 to 5, got {value!r}", kind="malformed cell")
    return number


def convert_row(row: Any, line: int, base: Path, video_root: Path | None, report: SourceReport, pc_threshold: int = PLAUSIBLE_MIN - 1,
                plausible_as_normal: bool = False, rules_make_abnormal: bool = False, prompt_from: str = "auto") -> RowResult:
    """One VideoPhy-2 row -> its video and record, or the reason it converts to nothing.

    Raises :class:`BadRow` for a row that cannot be converted.
    """
    if not isinstance(row, dict):
        raise BadRow(f"a row must be an object, got {type(row).__name__}", kind="malformed row")
    pc = _score(row, "pc", required=True)
    sa = _score(row, "sa", required=False)
    broken = list(dict.fromkeys(rules(row.get("physics_rules_unfollowed"), "physics_rules_unfollowed")
                                + rules(row.get("human_violated_rules"), "human_violated_rules")))
    info = video_info(_video_path(row, base, video_root, report))
    provenance = {"file": report.path, "line": line}
    for key in ("video_url", "model_name"):
        if not _missing(row.get(key)):
            provenance[key] = str(row[key])
    provenance.update({"pc": pc} if sa is None else {"pc": pc, "sa": sa})
    common = {"video": info.path, "prompt": _prompt(row, prompt_from, report), "annotation_fps": info.fps,
              "num_frames": info.num_frames, "source": SOURCE, "license": report.license, "provenance": provenance}
    if pc <= pc_threshold or (rules_make_abnormal and broken):
        if pc > pc_threshold:
            report.notes["abnormal_by_rules_alone"] += 1
        if not broken:
            anomaly = Anomaly(type="Physical Violations", frames=None, boxes={}, reason=f"physical commonsense rated {pc:g} of 5",
                              region="", saliency="salient")
            return RowResult(info.path, AnnotationRecord(status="abnormal", anomalies=[anomaly], **common))
        laws = rule_laws(row.get("metadata_rules"))
        by_type: dict[str, list[str]] = {}
        for rule in broken:
            kind = rule_type(rule)
            report.notes[f"type from rule text: {kind}"] += 1
            by_type.setdefault(kind, []).append(f"{rule} ({laws[rule]})" if rule in laws else rule)
        anomalies = [Anomaly(type=kind, frames=None, boxes={}, reason="; ".join(reasons), region="", saliency="salient")
                     for kind, reasons in by_type.items()]
        return RowResult(info.path, AnnotationRecord(status="abnormal", anomalies=anomalies, **common))
    if plausible_as_normal:
        report.notes["plausible_kept_as_normal"] += 1
        return RowResult(info.path, AnnotationRecord(status="normal", **common))
    return RowResult(info.path, dropped="plausible_not_normal")
