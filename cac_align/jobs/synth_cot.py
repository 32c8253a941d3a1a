"""``cac-align synth-cot``: write reasoning (CoT) into annotations with a teacher VLM
(generate, check, verify; up to ``max_rounds`` rounds) or a template offline. The method is
described in :mod:`cac_align.cac.train.cot`.

Outputs in ``out_dir``: ``cot_log.jsonl`` (one line per finished video: outcome, rounds, every
attempt with its answer and why it failed; a killed run resumes from it), ``annotations.jsonl``
(the kept records with ``cot``, ``cot_source`` and saliency written in) and ``discarded.jsonl``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from cac_align.cac.schema import AnnotationRecord
from cac_align.cac.train.cot import check_answer, generation_prompt, parse_verdict, saliency_for_round, verification_prompt
from cac_align.cac.train.targets import on_screen, template_video_cot
from cac_align.vlm.config import ModelConfig

__all__ = ["SynthCotConfig", "apply_entry", "run"]


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
@dataclass
class SynthCotConfig:
    """Config of `cac-align synth-cot`.

    Attributes:
        annotations: input annotation JSONL.
        out_dir: receives cot_log.jsonl, annotations.jsonl, discarded.jsonl.
        teacher: the teacher VLM (``name``, ``backend: openai``, ``base_url``...); leave unset
            (null) for the offline template reasoning.
        max_rounds: generate–verify rounds before a sample is discarded (paper: 5).
        salient_rounds: verified within this many rounds -> salient (paper: 3).
        iou_threshold: window and box IoU a teacher answer must exceed (paper: 0.5).
        fps, max_frames, max_pixels: how the video is shown to the teacher.
        crops_per_anomaly: close-up crops of the annotated region sent per anomaly.
        temperature: teacher sampling temperature (> 0 so that a retry can differ).
        max_new_tokens: teacher generation budget.
        batch_size: videos whose requests are sent together.
        overwrite: start again in a folder holding a run of another config.
    """

    annotations: str = MISSING
    out_dir: str = MISSING
    teacher: ModelConfig | None = None
    max_rounds: int = 5
    salient_rounds: int = 3
    iou_threshold: float = 0.5
    fps: float = 4.0
    max_frames: int = 64
    max_pixels: int | None = None
    crops_per_anomaly: int = 2
    temperature: float = 0.7
    max_new_tokens: int = 2048
    batch_size: int = 8
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.salient_rounds <= self.max_rounds:
            raise ValueError(f"need 1 <= salient_rounds <= max_rounds, got {self.salient_rounds}, {self.max_rounds}")
        if not 0 <= self.iou_threshold < 1:
            raise ValueError(f"iou_threshold must be in [0, 1), got {self.iou_threshold}")
        if self.fps <= 0 or self.max_frames < 2 or self.batch_size < 1 or self.crops_per_anomaly < 0:
            raise ValueError("need fps > 0, max_frames >= 2, batch_size >= 1, crops_per_anomaly >= 0")


@dataclass
class _Pending:
    index: int
    record: AnnotationRecord
    video: Any = None
    crops: list = field(default_factory=list)
    attempts: list = field(default_factory=list)
    feedback: list = field(default_factory=list)


def _crops(record: AnnotationRecord, video: Any, per_anomaly: int) -> list[tuple[str, np.ndarray]]:
    """Close-ups of the annotated regions: (caption, image) with 10% padding around the box."""
    out = []
    for anomaly in record.anomalies:
        frames = sorted(anomaly.boxes)
        if not frames or per_anomaly == 0:
            continue
        for k in np.unique(np.linspace(0, len(frames) - 1, per_anomaly).round().astype(int)):
            frame = frames[k]
            t = frame / record.annotation_fps
            source = min(video.num_frames - 1, on_screen(t - video.start_s, video.fps))
            image = video.frames[source]
            h, w = image.shape[:2]
            x0, y0, x1, y1 = anomaly.boxes[frame][0]
            px, py = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
            c0, c1 = int(max(0, (x0 - px) / 1000 * w)), int(min(w, math.ceil((x1 + px) / 1000 * w)))
            r0, r1 = int(max(0, (y0 - py) / 1000 * h)), int(min(h, math.ceil((y1 + py) / 1000 * h)))
            if c1 - c0 >= 2 and r1 - r0 >= 2:
                out.append((f"Close-up of the {anomaly.region or anomaly.type} at {t:.2f} s:", np.ascontiguousarray(image[r0:r1, c0:c1])))
    return out


COT_OUTPUTS = ("cot_log.jsonl", "annotations.jsonl", "discarded.jsonl", "summary.json")
# Where and how the teacher is reached does not change its answers.
_RUN_ONLY_KEYS = ("out_dir", "overwrite", "batch_size") + tuple(
    f"teacher.{k}" for k in ("base_url", "api_key_env", "timeout_s", "max_retries", "max_batch_size", "device")
)


def _read_log(path: Path) -> dict[str, dict]:
    """Finished videos from a previous run's log. A half-written last line (a killed run) is
    dropped with a warning and the log rewritten without it, so the next entry appended starts
    on a line of its own."""
    from cac_align.run.folder import read_jsonl_log, write_text_atomic

    rows = [(line, entry) for line, entry in read_jsonl_log(path) if isinstance(entry, dict) and "video" in entry]
    if path.exists() and sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) != len(rows):
        write_text_atomic(path, "".join(line + "\n" for line, _ in rows))
    return {entry["video"]: entry for _, entry in rows}


def _template_entry(record: AnnotationRecord) -> dict:
    return {"video": record.video, "outcome": "template", "rounds": 0, "cot": template_video_cot(record), "anomaly_cots": [None] * len(record.anomalies), "attempts": []}


def _teacher_rounds(batch: list[_Pending], backend: Any, config: SynthCotConfig, write: Any) -> None:
    """Run generate–check–verify rounds for a batch of videos; ``write(entry)`` each one finished."""
    from cac_align.cac.infer import sample_capped
    from cac_align.video import load_video
    from cac_align.vlm.backend import user

    assert config.teacher is not None
    live = []
    for p in batch:
        try:
            video = load_video(p.record.video)
        except Exception as exc:  # noqa: BLE001 - a corrupt video is logged, not fatal
            write({"video": p.record.video, "outcome": "discarded", "rounds": 0, "error": f"video could not be read: {exc}", "attempts": []})
            continue
        p.video = sample_capped(video, config.fps, config.max_frames, config.max_pixels)
        p.crops = _crops(p.record, video, config.crops_per_anomaly)
        live.append(p)
    for round_ in range(1, config.max_rounds + 1):
        if not live:
            return
        requests = []
        for p in live:
            parts: list[Any] = [p.video, generation_prompt(p.record, p.video.timestamps, p.feedback)]
            for caption, image in p.crops:
                parts += [caption, image]
            requests.append([user(*parts)])
        answers = backend.generate(requests, max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=round_)
        checked = []
        for p, answer in zip(live, answers):
            obj, problems = check_answer(answer.text, p.record, p.video.fps, p.video.timestamps, config.iou_threshold)
            p.attempts.append({"round": round_, "answer": answer.text, "problems": problems})
            if not problems:
                checked.append((p, obj))
        verdicts = []
        if checked:
            requests = [[user(p.video, verification_prompt(p.record, p.video.timestamps, obj))] for p, obj in checked]
            verdicts = backend.generate(requests, max_new_tokens=512, temperature=0.0)
        passed = {}
        for (p, obj), verdict in zip(checked, verdicts):
            consistent, problems = parse_verdict(verdict.text)
            p.attempts[-1]["verdict"] = verdict.text
            if consistent:
                passed[id(p)] = obj
            else:
                p.attempts[-1]["problems"] = [f"teacher verification: {problems or 'inconsistent'}"]
        still = []
        for p in live:
            if id(p) in passed:
                obj = passed[id(p)]
                write(
                    {
                        "video": p.record.video,
                        "outcome": saliency_for_round(round_, config.salient_rounds),
                        "rounds": round_,
                        "cot": _answer_cot(obj),
                        "anomaly_cots": _anomaly_cots(obj, p.record),
                        "source": f"teacher:{config.teacher.name}",
                        "attempts": p.attempts,
                    }
                )
            else:
                p.feedback = p.attempts[-1]["problems"]
                still.append(p)
        live = still
    for p in live:
        write({"video": p.record.video, "outcome": "discarded", "rounds": config.max_rounds, "attempts": p.attempts})


def _answer_cot(obj: dict) -> str:
    from cac_align.cac.judgment import answer_fields

    cot = answer_fields(obj).get("cot", "")
    return cot if isinstance(cot, str) else json.dumps(cot, ensure_ascii=False)


def _anomaly_cots(obj: dict, record: AnnotationRecord) -> list[str | None]:
    """Per annotated anomaly, the close-up reasoning of the teacher's anomaly of the same type."""
    from cac_align.cac.schema import normalize_type

    from cac_align.cac.judgment import answer_fields

    top = answer_fields(obj)
    items = top.get("anomalies") if isinstance(top.get("anomalies"), list) else []
    by_type = {}
    for item in items:
        fields = answer_fields(item, anomaly=True) if isinstance(item, dict) else {}
        if isinstance(fields.get("cot"), str):
            by_type.setdefault(normalize_type(fields.get("type")), fields["cot"])
    return [by_type.get(a.type) for a in record.anomalies]


def apply_entry(record: AnnotationRecord, entry: dict) -> AnnotationRecord | None:
    """The record with the log entry's reasoning and saliency written in; None if discarded."""
    if entry["outcome"] == "discarded":
        return None
    out = copy.deepcopy(record)
    out.cot = entry["cot"]
    out.cot_source = entry.get("source", "template")
    for anomaly, cot in zip(out.anomalies, entry.get("anomaly_cots") or []):
        anomaly.cot = cot
        if entry["outcome"] in ("salient", "non-salient"):
            anomaly.saliency = entry["outcome"]
    return out


def run(config: SynthCotConfig) -> dict:
    """Fill every record's reasoning; returns the outcome counts. Resumes from ``cot_log.jsonl``."""
    from tqdm.auto import tqdm

    from omegaconf import OmegaConf

    from cac_align.cac.schema import load_annotations, write_annotations
    from cac_align.run.folder import RunFolder, config_fingerprint, write_text_atomic
    from cac_align.run.input_files import ANNOTATIONS_MADE_BY, existing

    out = Path(config.out_dir)
    records = load_annotations(existing(config.annotations, "annotations", made_by=ANNOTATIONS_MADE_BY)).records
    for record in records:  # absolute paths: the log's keys do not depend on the working folder
        record.video = str(Path(record.video).resolve())
    # 1. the run folder (docs/run_folders.md): two configs' results never mix in one folder; a
    # rerun of the same config resumes from the log; overwrite replaces this job's outputs only
    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    folder = RunFolder(out, "synth-cot", COT_OUTPUTS, config_fingerprint(config, _RUN_ONLY_KEYS), resolved, overwrite=config.overwrite)
    log_path = out / "cot_log.jsonl"
    # 2. what is left to do; the teacher is reached before the run is recorded (a dead server
    # leaves no record)
    done = _read_log(log_path) if folder.resuming else {}
    todo = [_Pending(i, r) for i, r in enumerate(records) if r.video not in done]
    backend = None
    if config.teacher is not None and todo:
        from cac_align.vlm.config import build_backend

        backend = build_backend(config.teacher, key="teacher")
    folder.start()
    # 3. template or teacher; every finished video is appended to the log at once
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="synth-cot", unit="video")
    with log_path.open("a", encoding="utf-8") as log:

        def write(entry: dict) -> None:
            log.write(json.dumps(entry, ensure_ascii=False) + "\n")
            log.flush()
            done[entry["video"]] = entry
            bar.update(1)

        if config.teacher is None:
            for p in todo:
                write(_template_entry(p.record))
        else:
            for start in range(0, len(todo), config.batch_size):
                _teacher_rounds(todo[start : start + config.batch_size], backend, config, write)
    bar.close()
    # 4. annotations with reasoning + saliency; discarded records listed apart
    kept, discarded = [], []
    for record in records:
        updated = apply_entry(record, done[record.video]) or copy.deepcopy(record)
        # video paths relative to the written file, as the annotation format resolves them
        updated.video = os.path.relpath(record.video, out.resolve())
        (kept if done[record.video]["outcome"] != "discarded" else discarded).append(updated)
    write_annotations(kept, out / "annotations.jsonl")
    write_annotations(discarded, out / "discarded.jsonl")
    counts: dict[str, int] = {}
    for record in records:
        outcome = done[record.video]["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
    write_text_atomic(out / "summary.json", json.dumps(counts, indent=1))
    print(f"synth-cot: {counts}; wrote {out / 'annotations.jsonl'} ({len(kept)} records)")
    return counts
