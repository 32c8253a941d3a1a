"""Annotation JSONL -> the training samples of CaC's three stages (CaC §3.1–3.2, App. C.2).

Every sample becomes a chat in exactly the format inference uses (same prompts from
:mod:`cac_align.cac.prompts`, same frame sampling via :func:`~cac_align.cac.infer.sample_capped`,
same JSON answer shape), so what is trained is what is asked:

- **Stage 1, single frames** (``kind="frame"``): an anomalous frame is taken from inside the
  annotated window of a single-frame-recognizable anomaly (Object / Human Distortion,
  Character Anomalies) and sent as a still image with :func:`~cac_align.cac.prompts.frame_prompt`;
  the target is status abnormal, the type, reason and boxes for "frame 0" (every such anomaly
  boxed on that frame). Normal frames come from normal videos. Balance 1:1 (configurable).
- **Stage 2, global videos** (``kind="global"``): the whole video at 4 fps with the turn-1 prompt;
  target status, anomalies with their time window (seconds) and type, and the reasoning.
- **Stage 2, clips** (``kind="clip"``): a stretch shorter than 1 s cut from the source and
  resampled at 8 fps, with the turn-2 prompt. An anomalous clip fully covers one annotated
  window (anomalies too long for that get no clip; they are counted); its target boxes are
  re-indexed to the clip's frames through source time. Normal clips come from normal videos.
  Global and clip samples are each balanced 1:1 (configurable).
- **Stage 3**: the records themselves (the GRPO trainer builds its prompts per rollout).

**Status-only records** (an anomaly with a type but no time window and no boxes, e.g. converted
from VideoPhy-2): stage 1 cannot show one as a frame and skips it (``anomalies_without_boxes``);
stage 2 trains its global sample (turn-1 status and types, no "Attributed Time Region") and makes
no clip of it (``anomalies_without_window``); stage 3 masks the reward terms it cannot compute
(:func:`~cac_align.cac.train.rewards.cac_reward`).

Videos are split **by video** into disjoint ``stage1 / stage2 / stage3 / eval`` sets, seeded and
stratified by status, before any sample is built, so no video is seen by two stages.

Samples are light (a video path and a time span); :class:`ChatBuilder` decodes the video and
builds the chat when a sample is used, so targets that depend on the frames actually shown (a
clip's box indices) are computed from those frames.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from cac_align.cac.prompts import PROMPT_STYLES
from cac_align.cac.schema import AnnotationRecord, Anomaly
from cac_align.cac.train.collate import encode_chat
from cac_align.cac.train.targets import _EPS, anomaly_json, answer_json, checklist_cot, clip_boxes, frames_shown, on_screen, template_local_cot, template_video_cot

__all__ = [
    "SINGLE_FRAME_TYPES",
    "SPLITS",
    "Chat",
    "ChatBuilder",
    "DataConfig",
    "Sample",
    "StageData",
    "build_stage",
    "answer_json",
    "anomaly_json",
    "clip_boxes",
    "describe",
    "frames_shown",
    "on_screen",
    "save_description",
    "split_records",
    "video_duration",
]

# Types a single frame can show (CaC §3.2 "Stage 1"): shape, anatomy and text defects.
SINGLE_FRAME_TYPES = ("Object Distortion", "Human Distortion", "Character Anomalies")
SPLITS = ("stage1", "stage2", "stage3", "eval")
TEMPLATE_COTS = ("describe", "checklist")


@dataclass
class DataConfig:
    """How annotation records become stage samples.

    Attributes:
        splits: fraction of videos per split (``stage1``, ``stage2``, ``stage3``, ``eval``);
            normalized to sum to 1. Splits are disjoint by video, stratified by status.
        seed: seeds the split and every random choice (frames, clip positions).
        scan_fps, clip_fps: turn-1 and turn-2 rates (paper: 4 and 8 fps).
        max_frames_turn1, max_frames_turn2, max_pixels, size_multiple: the same caps inference
            applies (:class:`~cac_align.cac.infer.CaCOptions`).
        prompt_style: "full" or "compact" wording of the prompts (:mod:`cac_align.cac.prompts`);
            inference must use the same one.
        template_cot: reasoning written into targets that have no teacher reasoning:
            "describe" (from the annotation: what is wrong where, then the verdict) or
            "checklist" (a fixed inspection plan that leaves the decision to "status", so the
            status probability is the model's own judgment of the pixels; for small models
            trained from scratch, see docs/cac_training.md).
        frame_types: anomaly types that stage 1 shows as single frames (CaC §3.2: types a
            single frame can show).
        frames_per_anomaly: stage-1 frames drawn (evenly spaced) from each anomaly window.
        normal_per_anomalous: normal samples per anomalous sample, per sample kind (paper: 1).
        clip_max_s: stage-2 clips last at most this long (paper: shorter than 1 s).
        clip_min_s: shortest normal clip.
        clip_context: ours. When true, a stage-2 clip sample is the whole two-turn conversation
            inference holds (turn 1: the 4 fps scan and its gold answer; turn 2: the clip and
            its answer), with the loss on both answers. When false (the paper's stage 2), a clip
            is a one-turn chat and the two-turn form is first seen in stage 3. A small model
            trained from scratch never answers a second turn without it (docs/cac_training.md).
    """

    # the values a setting takes, shown by `cac-align <job> --help` beside its default
    CHOICES: ClassVar[dict[str, Sequence[Any]]] = {"prompt_style": PROMPT_STYLES, "template_cot": TEMPLATE_COTS}

    splits: dict[str, float] = field(default_factory=lambda: {"stage1": 0.3, "stage2": 0.4, "stage3": 0.2, "eval": 0.1})
    seed: int = 0
    scan_fps: float = 4.0
    clip_fps: float = 8.0
    max_frames_turn1: int = 64
    max_frames_turn2: int = 32
    max_pixels: int | None = None
    size_multiple: int = 32
    prompt_style: str = "full"
    template_cot: str = "describe"
    frame_types: list[str] = field(default_factory=lambda: list(SINGLE_FRAME_TYPES))
    frames_per_anomaly: int = 2
    normal_per_anomalous: float = 1.0
    clip_max_s: float = 0.875
    clip_min_s: float = 0.25
    clip_context: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"data.splits has unknown split(s) {unknown}; splits are {list(SPLITS)}")
        if any(v < 0 for v in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise ValueError(f"data.splits fractions must be >= 0 and not all 0, got {dict(self.splits)}")
        if self.scan_fps <= 0 or self.clip_fps <= 0:
            raise ValueError("data.scan_fps and data.clip_fps must be > 0")
        from cac_align.cac.prompts import PROMPT_STYLES
        from cac_align.cac.schema import ANOMALY_TYPES

        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"data.prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.template_cot not in TEMPLATE_COTS:
            raise ValueError(f"data.template_cot must be one of {TEMPLATE_COTS}, got {self.template_cot!r}")
        unknown = [t for t in self.frame_types if t not in ANOMALY_TYPES]
        if unknown:
            raise ValueError(f"data.frame_types has unknown type(s) {unknown}; types are {list(ANOMALY_TYPES)}")
        if self.size_multiple < 1:
            raise ValueError(f"data.size_multiple must be >= 1, got {self.size_multiple}")
        if self.frames_per_anomaly < 1:
            raise ValueError(f"data.frames_per_anomaly must be >= 1, got {self.frames_per_anomaly}")
        if self.normal_per_anomalous < 0:
            raise ValueError(f"data.normal_per_anomalous must be >= 0, got {self.normal_per_anomalous}")
        if not 0 < self.clip_min_s <= self.clip_max_s < 1.0:
            raise ValueError(
                f"need 0 < data.clip_min_s <= data.clip_max_s < 1 s (clips are shorter than 1 s), "
                f"got {self.clip_min_s}, {self.clip_max_s}"
            )
        if self.clip_min_s * self.clip_fps < 2 - _EPS:
            raise ValueError(f"data.clip_min_s={self.clip_min_s} holds fewer than 2 frames at clip_fps={self.clip_fps}")

    def inference_settings(self) -> dict[str, Any]:
        """The settings inference must ask a model trained on these samples with, as a model
        folder's ``cac_align.json`` holds them (:class:`~cac_align.cac.infer.CaCOptions`): the
        wording, both turns' rates and frame caps, and the pixel grid."""
        return {
            "prompt_style": self.prompt_style,
            "scan_fps": float(self.scan_fps),
            "clip_fps": float(self.clip_fps),
            "max_frames_turn1": int(self.max_frames_turn1),
            "max_frames_turn2": int(self.max_frames_turn2),
            "max_pixels": self.max_pixels,
            "size_multiple": int(self.size_multiple),
        }


@dataclass
class Sample:
    """One training sample before decoding.

    Attributes:
        kind: "frame" (stage 1), "global" or "clip" (stage 2).
        record: index of the annotation record it comes from.
        label: "normal" or "abnormal".
        start_s, end_s: the source span shown: the whole video (global), the clip (clip), or
            for a frame the annotation frame's span (the image is the frame on screen at start_s).
        anomaly: for anomalous clips, the index of the anomaly the clip covers.
    """

    kind: str
    record: int
    label: str
    start_s: float
    end_s: float
    anomaly: int | None = None


@dataclass
class StageData:
    """A stage's samples per split plus counts of what could not be used (never dropped silently)."""

    stage: int
    train: list[Sample]
    eval: list[Sample]
    stats: dict[str, Any]


@dataclass
class Chat:
    """A sample as the model sees it: the chat (prompt messages + assistant target) and its label."""

    messages: list[dict]
    target: str
    label: str
    kind: str

    @property
    def prompt_messages(self) -> list[dict]:
        return self.messages[:-1]


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------
def split_records(records: Sequence[AnnotationRecord], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Assign each *video* to one split: record indices per split, disjoint by video path.

    Stratified by status (normal / abnormal each divided by the fractions, largest remainder),
    so every split keeps the overall balance. Records sharing a video path stay together.
    """
    total = sum(fractions.get(s, 0.0) for s in SPLITS)
    weights = np.array([fractions.get(s, 0.0) / total for s in SPLITS])
    by_video: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_video.setdefault(str(record.video), []).append(i)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    rng = np.random.default_rng([seed, 1])
    for status in ("abnormal", "normal"):
        videos = sorted(v for v, idx in by_video.items() if records[idx[0]].status == status)
        order = rng.permutation(len(videos))
        exact = weights * len(videos)
        counts = np.floor(exact).astype(int)
        for k in np.argsort(-(exact - counts), kind="stable")[: len(videos) - counts.sum()]:
            counts[k] += 1
        start = 0
        for split, count in zip(SPLITS, counts):
            for j in order[start : start + count]:
                out[split].extend(by_video[videos[j]])
            start += count
    return {s: sorted(v) for s, v in out.items()}


def video_duration(record: AnnotationRecord) -> float:
    """Length of the record's video in seconds: from ``num_frames`` when known, else the file."""
    if record.num_frames is not None:
        return record.num_frames / record.annotation_fps
    from cac_align.video import open_video_reader

    reader = open_video_reader(record.video)
    return len(reader) / float(reader.get_avg_fps())


# ---------------------------------------------------------------------------------------
# Sample building
# ---------------------------------------------------------------------------------------
def _balance(anomalous: list[Sample], normal_pool: list[Sample], ratio: float, rng: np.random.Generator) -> list[Sample]:
    """Keep ``round(ratio * len(anomalous))`` normal samples drawn from the pool (fewer if short)."""
    want = int(round(ratio * len(anomalous)))
    keep = rng.permutation(len(normal_pool))[:want]
    return anomalous + [normal_pool[k] for k in sorted(keep)]


def _frame_samples(records: Sequence[AnnotationRecord], indices: list[int], config: DataConfig, rng: np.random.Generator) -> tuple[list[Sample], dict]:
    anomalous: list[Sample] = []
    skipped, unboxed = 0, 0
    for i in indices:
        record = records[i]
        fps = record.annotation_fps
        for a, anomaly in enumerate(record.anomalies):
            boxed = sorted(anomaly.boxes)
            if anomaly.type not in config.frame_types:
                skipped += 1
                continue
            if not boxed:  # nothing says where on a frame (a status-only label, a global artifact)
                unboxed += 1
                continue
            picks = np.unique(np.linspace(0, len(boxed) - 1, config.frames_per_anomaly).round().astype(int))
            for k in picks:
                frame = boxed[k]
                anomalous.append(Sample("frame", i, "abnormal", frame / fps, (frame + 1) / fps, a))
    # Normal frames: distinct random annotation-grid frames of normal videos, drawn round-robin.
    normal_videos = [i for i in indices if records[i].status == "normal"]
    want = int(round(config.normal_per_anomalous * len(anomalous)))
    pools = {}
    for i in normal_videos:
        fps = records[i].annotation_fps
        n = max(1, int(math.floor(video_duration(records[i]) * fps + _EPS)))
        pools[i] = list(rng.permutation(n))
    normal: list[Sample] = []
    while len(normal) < want and any(pools.values()):
        for i in normal_videos:
            if pools[i] and len(normal) < want:
                frame = int(pools[i].pop())
                fps = records[i].annotation_fps
                normal.append(Sample("frame", i, "normal", frame / fps, (frame + 1) / fps))
    stats = {"frame_anomalous": len(anomalous), "frame_normal": len(normal), "anomalies_not_single_frame": skipped, "anomalies_without_boxes": unboxed}
    return anomalous + normal, stats


def _clip_samples(records: Sequence[AnnotationRecord], indices: list[int], config: DataConfig, rng: np.random.Generator) -> tuple[list[Sample], dict]:
    anomalous: list[Sample] = []
    too_long, no_window = 0, 0
    for i in indices:
        record = records[i]
        duration = video_duration(record)
        for a, anomaly in enumerate(record.anomalies):
            if not anomaly.has_window:  # a status-only label: no clip can be cut for it
                no_window += 1
                continue
            w0, w1 = anomaly.window_s(record.annotation_fps)
            w1 = min(w1, duration)
            if w1 - w0 > config.clip_max_s + _EPS:
                too_long += 1
                continue
            length = min(rng.uniform(max(w1 - w0, config.clip_min_s), config.clip_max_s), duration)
            lo, hi = max(0.0, w1 - length), min(w0, duration - length)
            start = rng.uniform(lo, hi) if hi > lo else lo
            anomalous.append(Sample("clip", i, "abnormal", float(start), float(start + length), a))
    pool: list[Sample] = []
    per_video = max(1, math.ceil(config.normal_per_anomalous * len(anomalous) / max(1, sum(records[i].status == "normal" for i in indices))))
    for i in indices:
        if records[i].status != "normal":
            continue
        duration = video_duration(records[i])
        for _ in range(per_video):
            length = min(rng.uniform(config.clip_min_s, config.clip_max_s), duration)
            start = rng.uniform(0.0, duration - length)
            pool.append(Sample("clip", i, "normal", float(start), float(start + length)))
    samples = _balance(anomalous, pool, config.normal_per_anomalous, rng)
    stats = {
        "clip_anomalous": len(anomalous),
        "clip_normal": len(samples) - len(anomalous),
        "anomalies_too_long_for_clip": too_long,
        "anomalies_without_window": no_window,
    }
    return samples, stats


def _global_samples(records: Sequence[AnnotationRecord], indices: list[int], config: DataConfig, rng: np.random.Generator) -> tuple[list[Sample], dict]:
    anomalous, pool = [], []
    for i in indices:
        sample = Sample("global", i, records[i].status, 0.0, video_duration(records[i]))
        (anomalous if sample.label == "abnormal" else pool).append(sample)
    samples = _balance(anomalous, pool, config.normal_per_anomalous, rng)
    return samples, {"global_anomalous": len(anomalous), "global_normal": len(samples) - len(anomalous)}


def _stage_samples(stage: int, records: Sequence[AnnotationRecord], indices: list[int], config: DataConfig, rng: np.random.Generator) -> tuple[list[Sample], dict]:
    if stage == 1:
        return _frame_samples(records, indices, config, rng)
    glob, stats = _global_samples(records, indices, config, rng)
    clips, clip_stats = _clip_samples(records, indices, config, rng)
    return glob + clips, {**stats, **clip_stats}


def build_stage(stage: int, records: Sequence[AnnotationRecord], config: DataConfig) -> StageData:
    """The train samples of ``stage`` (1 or 2) from its split and eval samples from ``eval``.

    Deterministic in ``config.seed``. ``stats`` holds the split sizes and per-kind counts,
    including anomalies that could not become samples.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2 for SFT samples, got {stage}")
    splits = split_records(records, config.splits, config.seed)
    own = f"stage{stage}"
    train, train_stats = _stage_samples(stage, records, splits[own], config, np.random.default_rng([config.seed, stage, 0]))
    held, eval_stats = _stage_samples(stage, records, splits["eval"], config, np.random.default_rng([config.seed, stage, 1]))
    stats = {
        "split_videos": {s: len(v) for s, v in splits.items()},
        "train": train_stats,
        "eval": eval_stats,
    }
    return StageData(stage, train, held, stats)


# ---------------------------------------------------------------------------------------
# Targets and chats
# ---------------------------------------------------------------------------------------
class ChatBuilder:
    """Builds a sample's :class:`Chat` (prompts and sampling as in inference).

    Videos come from ``video_source(record)`` (default: decode ``record.video``); decoded
    videos are cached (``cache_size`` most recent), since a video gives several samples.
    """

    def __init__(
        self,
        records: Sequence[AnnotationRecord],
        config: DataConfig,
        cache_size: int = 8,
        video_source: Callable[[AnnotationRecord], Any] | None = None,
    ):
        self.records = records
        self.config = config
        self.cache_size = cache_size
        self.video_source = video_source
        self._cache: dict[str, Any] = {}

    def video(self, record: AnnotationRecord) -> Any:
        from cac_align.video import load_video

        key = str(record.video)
        if key not in self._cache:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.video_source(record) if self.video_source is not None else load_video(key)
        return self._cache[key]

    def __call__(self, sample: Sample, record: AnnotationRecord | None = None) -> Chat:
        record = self.records[sample.record] if record is None else record
        return {"frame": self._frame, "global": self._global, "clip": self._clip}[sample.kind](sample, record)

    def _capped(self, video: Any, fps: float, cap: int) -> Any:
        from cac_align.cac.infer import sample_capped

        return sample_capped(video, fps, cap, self.config.max_pixels, self.config.size_multiple)

    # -- stage 1 ----------------------------------------------------------------------------
    def _frame(self, sample: Sample, record: AnnotationRecord) -> Chat:
        from cac_align.cac.prompts import frame_prompt
        from cac_align.vlm.backend import assistant, user

        video = self.video(record)
        index = min(video.num_frames - 1, on_screen(sample.start_s - video.start_s, video.fps))
        image = video.select(np.array([index]), video.fps)
        if self.config.max_pixels:
            image = image.fit_pixels(self.config.max_pixels, self.config.size_multiple)
        frame = on_screen(sample.start_s, record.annotation_fps)
        kinds = self.config.frame_types
        shown = [a for a in record.anomalies if a.type in kinds and frame in a.boxes] if sample.label == "abnormal" else []
        anomalies = [anomaly_json(a, boxes={0: a.boxes[frame]}) for a in shown]
        cot = self._local_cot(shown, "frame")
        target = answer_json(cot, sample.label, anomalies)
        messages = [user(image.frames[0], frame_prompt(record.prompt, style=self.config.prompt_style)), assistant(target)]
        return Chat(messages, target, sample.label, sample.kind)

    # -- stage 2 ----------------------------------------------------------------------------
    def _global(self, sample: Sample, record: AnnotationRecord) -> Chat:
        from cac_align.cac.prompts import turn1_prompt
        from cac_align.vlm.backend import assistant, user

        video = self.video(record)
        scan = self._capped(video, self.config.scan_fps, self.config.max_frames_turn1)
        anomalies = []
        for a in record.anomalies:
            if not a.has_window:  # status-only: the type is taught, the time is not claimed
                anomalies.append(anomaly_json(a))
                continue
            start, end = a.window_s(record.annotation_fps)
            anomalies.append(anomaly_json(a, time_region=frames_shown(scan.timestamps, (start, min(end, video.end_s)))))
        if self.config.template_cot == "checklist":
            cot = checklist_cot("video")
        else:
            cot = record.cot if record.cot is not None else template_video_cot(record)
        target = answer_json(cot, record.status, anomalies)
        text = turn1_prompt(video.duration_s, scan.fps, scan.num_frames, record.prompt, style=self.config.prompt_style)
        return Chat([user(scan, text), assistant(target)], target, sample.label, sample.kind)

    def _clip(self, sample: Sample, record: AnnotationRecord) -> Chat:
        from cac_align.cac.prompts import turn2_prompt
        from cac_align.vlm.backend import assistant, user

        video = self.video(record)
        clip = self._capped(video.crop(sample.start_s, sample.end_s), self.config.clip_fps, self.config.max_frames_turn2)
        anomalies, shown = [], []
        if sample.label == "abnormal":
            for a in record.anomalies:
                boxes = clip_boxes(a, record.annotation_fps, clip.timestamps)
                if boxes:
                    shown.append(a)
                    anomalies.append(anomaly_json(a, time_region=(min(boxes), max(boxes)), boxes=boxes))
        covered = record.anomalies[sample.anomaly] if sample.anomaly is not None else None
        if covered is not None and covered.cot is not None and self.config.template_cot != "checklist":
            cot = covered.cot
        else:
            cot = self._local_cot(shown, "clip")
        target = answer_json(cot, "abnormal" if anomalies else "normal", anomalies)
        text = turn2_prompt((sample.start_s, sample.end_s), clip.fps, clip.num_frames, style=self.config.prompt_style)
        turn2 = [user(clip, text), assistant(target)]
        turn1 = self._global(sample, record).messages if self.config.clip_context else []
        return Chat(turn1 + turn2, target, "abnormal" if anomalies else "normal", sample.kind)

    def _local_cot(self, shown: list[Anomaly], scope: str) -> str:

        if self.config.template_cot == "checklist":
            return checklist_cot(scope)
        return template_local_cot(shown, scope=scope) if not shown or shown[0].cot is None else shown[0].cot


def describe(data: StageData) -> dict:
    """A JSON-able summary of a stage's samples (written next to a training run)."""
    return {"stage": data.stage, "stats": data.stats, "train": [asdict(s) for s in data.train], "eval": [asdict(s) for s in data.eval]}


def save_description(data: StageData, path: str | Path) -> None:
    Path(path).write_text(json.dumps(describe(data), indent=1))


class ChatDataset:
    """A map-style dataset: sample -> chat -> :class:`~cac_align.cac.train.collate.EncodedChat`."""

    def __init__(self, samples: list, builder: Any, processor: Any):
        self.samples = samples
        self.builder = builder
        self.processor = processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return encode_chat(self.processor, self.builder(self.samples[index]).messages)
