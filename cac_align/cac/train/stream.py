"""Training samples from synthetic videos rendered on the fly (``train-cac`` with ``stream:``).

Instead of an annotation file, a stage can read an endless stream of freshly rendered videos
from :mod:`cac_align.data.synthetic`: video ``i`` of the stream is a pure function of the
stream's seed and ``i``, drawn with a ``synth`` recipe's scene settings (the anomaly mix,
durations, sizes and frame rate of e.g. ``recipes/synth/default.yaml``), rendered in memory
when a sample needs it and never written to disk. Every sample is then a new video, so a small
model trained from scratch sees tens of thousands of scenes instead of reusing a few hundred
(rendering costs ~30 ms a video; writing and decoding an mp4 costs ~250 ms).

Samples are built by the same code as file-based samples (:class:`~cac_align.cac.train.data.ChatBuilder`),
so prompts, frame sampling and targets are identical:

- **Stage 1** (``kind="frame"``): ``data.frames_per_anomaly`` frames per video. Anomalous frames
  are drawn inside the planted window of videos whose type is in ``data.frame_types`` (the
  stream keeps only those types); normal frames come from normal videos. Only the frames used
  are rendered.
- **Stage 2**: two samples per video, the whole video at ``data.scan_fps`` (``"global"``) and a
  clip shorter than 1 s at ``data.clip_fps`` (``"clip"``): for an anomalous video it covers
  the planted window (or, for a window longer than ``data.clip_max_s``, lies inside it), for
  a normal one it is a random stretch.

With ``clean_twins: true`` every video is planted, and its normal samples are its *clean twin*:
the same scene rendered with nothing planted (``render(spec, plant=False)``), shown at the same
times. The twin is an ordinary normal video of the same scene distribution; what pairing adds
is that the two labels differ only by the defect, so a batch holding both carries the defect's
gradient without the scene's (colours, sizes, positions) noise. In our probes a model trained
from scratch learned about twice as fast this way (docs/cac_training.md, "The demo model"). Items of one
video are consecutive (planted, then twin) and the Trainer reads a stream in order, so pairs
share a batch.

The stream's held-out samples come from ``eval_seed`` (a seed the training stream never uses)
and are never paired: held-out normal videos are independent scenes, as in evaluation.
Sample ``i`` is deterministic, so a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import MISSING

from cac_align.cac.schema import AnnotationRecord
from cac_align.cac.train.data import Chat, ChatBuilder, DataConfig, Sample, on_screen

__all__ = ["StageStream", "StreamConfig", "SynthStream", "load_stream_synth", "stream_steps"]

_EPS = 1e-6


@dataclass
class StreamConfig:
    """The ``stream:`` section of a train-cac recipe.

    Attributes:
        synth: a ``synth`` recipe whose scene settings draw the videos (its ``out_dir``, ``n`` and
            ``seed`` are not used), e.g. ``recipes/synth/default.yaml``.
        overrides: ``synth`` keys changed for this stream, e.g. ``{normal_fraction: 0.5}``
            (CaC trains on 1:1 normal : anomalous).
        seed: master seed of the training videos.
        eval_seed: master seed of the held-out videos; must differ from ``seed``.
        eval_videos: held-out videos (eval loss and detection metrics).
        clean_twins: train on minimal pairs: every training video is planted and its normal
            samples come from its clean twin (module doc). Held-out videos are not paired.
    """

    synth: str = MISSING
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 1000
    eval_seed: int = 999
    eval_videos: int = 64
    clean_twins: bool = False

    def __post_init__(self) -> None:
        if self.seed == self.eval_seed:
            raise ValueError(f"stream.seed and stream.eval_seed must differ (both {self.seed}): held-out videos would be training videos")
        if self.eval_videos < 0:
            raise ValueError(f"stream.eval_videos must be >= 0, got {self.eval_videos}")
        load_stream_synth(self)  # a missing recipe or a bad override fails when the recipe loads


def stream_steps(train: Any) -> int:
    """A streamed stage's length: ``train.max_steps`` (a stream has no epochs to count)."""
    from cac_align.config import RecipeError

    if train.max_steps <= 0:
        raise RecipeError("a streamed stage needs train.max_steps > 0 (the stream has no epochs)")
    return int(train.max_steps)


def load_stream_synth(stream: StreamConfig, seed: int | None = None, n: int = 1, **extra: Any) -> Any:
    """The :class:`~cac_align.data.synthetic.SynthConfig` of ``stream`` (recipe + overrides),
    with ``seed`` and ``n`` set; ``extra`` keys override both."""
    from cac_align.config import RecipeError, load_config
    from cac_align.data.synthetic import SynthConfig

    overrides = {**dict(stream.overrides), **extra}
    items = [f"{k}={_override_value(v)}" for k, v in overrides.items()]
    items += [f"seed={stream.seed if seed is None else seed}", f"n={n}", "out_dir=(stream)"]
    try:
        return load_config(SynthConfig, stream.synth, items, job="synth")
    except RecipeError as exc:
        raise RecipeError(f"stream.synth={stream.synth!r}: {exc}") from None


def _override_value(value: Any) -> str:
    import json

    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if not isinstance(value, dict) else value)
    return str(value)


class SynthStream:
    """Video ``i`` of a synth config, drawn and labelled on demand.

    Args:
        synth: the scene settings (``n`` = how many videos the stream can give).
    """

    def __init__(self, synth: Any):
        from cac_align.data.synthetic import video_kinds

        self.synth = synth
        self.kinds = video_kinds(synth)
        self._last: tuple[Any, Any] | None = None  # the most recent full render

    def __len__(self) -> int:
        return self.synth.n

    def spec(self, index: int) -> Any:
        from cac_align.data.synthetic import make_spec

        return make_spec(self.synth, index, self.kinds[index])

    def name(self, index: int, twin: bool = False) -> str:
        return f"synth-stream:{self.synth.seed}:{index}" + (":clean" if twin else "")

    def record(self, index: int, twin: bool = False) -> AnnotationRecord:
        """Video ``index``'s annotation (as ``synth`` would write it), without rendering pixels;
        ``twin`` gives its clean twin's (normal, same prompt)."""
        from cac_align.data.synthetic import annotate, planted_boxes

        import dataclasses

        spec = self.spec(index)
        if twin:  # the same scene with nothing planted is a normal video
            spec = dataclasses.replace(spec, kind="normal", planted=None)
        return annotate(spec, {} if twin else planted_boxes(spec), self.name(index, twin), self.synth)

    def video(self, index: int, times_s: list[float] | None = None, twin: bool = False) -> Any:
        """Video ``index`` (or its clean twin) as a :class:`~cac_align.video.Video`: every frame,
        or only the source frames on screen at ``times_s`` (single-frame samples render just those)."""
        from cac_align.data.synthetic import render
        from cac_align.video import Video

        spec = self.spec(index)
        if times_s is None:
            if self._last is None or self._last[0] != (index, twin):
                frames, _ = render(spec, plant=not twin)
                self._last = ((index, twin), Video(frames, spec.fps, source=self.name(index, twin)))
            return self._last[1]
        wanted = sorted({min(spec.num_frames - 1, on_screen(t, spec.fps)) for t in times_s})
        frames, _ = render(spec, plant=not twin, frames=wanted)
        return Video(frames, spec.fps, np.asarray(wanted, dtype=np.float64) / spec.fps, self.name(index, twin))


class StageStream:
    """A map-style dataset of stage-1 or stage-2 samples over a :class:`SynthStream`.

    Item ``i`` belongs to video ``i // per_video``. ``chat(i)`` gives the :class:`Chat`;
    ``__getitem__`` encodes it with the processor (what the Trainer consumes).

    Args:
        stage: 1 (frames) or 2 (global videos and clips).
        stream: the videos.
        data: prompts, sampling caps, frame types, clip lengths (as for file-based samples).
        processor: the model's processor (None: ``chat`` only).
        seed: seeds the per-video choices (which frames, where the clip sits).
        clean_twins: each (planted) video's items are followed by the same items of its clean
            twin, labelled normal.
    """

    def __init__(self, stage: int, stream: SynthStream, data: DataConfig, processor: Any = None, seed: int = 0, clean_twins: bool = False):
        if stage not in (1, 2):
            raise ValueError(f"streamed samples are for stages 1 and 2, got {stage}")
        if clean_twins and stream.synth.normal_fraction > 0:
            raise ValueError("clean twins pair planted videos: the stream's normal_fraction must be 0")
        self.stage = stage
        self.stream = stream
        self.data = data
        self.processor = processor
        self.seed = seed
        self.clean_twins = clean_twins
        self.per_scene = data.frames_per_anomaly if stage == 1 else 2
        self.per_video = self.per_scene * (2 if clean_twins else 1)

    def __len__(self) -> int:
        return len(self.stream) * self.per_video

    def locate(self, index: int) -> tuple[int, int, bool]:
        """Item ``index`` -> (video, which of the scene's samples, from the clean twin?)."""
        video, k = divmod(index, self.per_video)
        return video, k % self.per_scene, k >= self.per_scene

    def sample(self, index: int) -> tuple[AnnotationRecord, Sample]:
        """The record and the :class:`Sample` of item ``index`` (deterministic). A twin's sample
        shows the same frames or span as its planted video's, labelled normal."""
        video, k, twin = self.locate(index)
        planted = self.stream.record(video)
        rng = np.random.default_rng([self.seed, self.stage, video, k])
        if self.stage == 1:
            sample = self._frame_sample(planted, k, np.random.default_rng([self.seed, self.stage, video]))
        elif k == 0:
            duration = planted.num_frames / planted.annotation_fps if planted.num_frames else self.stream.synth.duration_s
            sample = Sample("global", 0, planted.status, 0.0, float(duration))
        else:
            sample = self._clip_sample(planted, rng)
        if not twin:
            return planted, sample
        return self.stream.record(video, twin=True), Sample(sample.kind, 0, "normal", sample.start_s, sample.end_s)

    def _frame_sample(self, record: AnnotationRecord, k: int, rng: np.random.Generator) -> Sample:
        fps = record.annotation_fps
        if record.status == "abnormal":
            anomaly = record.anomalies[0]
            boxed = sorted(anomaly.boxes)
            picks = rng.permutation(boxed) if len(boxed) >= self.per_video else rng.choice(boxed, self.per_video)
            frame = int(picks[k])
            return Sample("frame", 0, "abnormal", frame / fps, (frame + 1) / fps, 0)
        count = record.num_frames or max(1, int(math.floor(self.stream.synth.duration_s * fps + _EPS)))
        picks = rng.permutation(count) if count >= self.per_video else rng.choice(count, self.per_video)
        frame = int(picks[k])
        return Sample("frame", 0, "normal", frame / fps, (frame + 1) / fps)

    def _clip_sample(self, record: AnnotationRecord, rng: np.random.Generator) -> Sample:
        data = self.data
        duration = record.num_frames / record.annotation_fps if record.num_frames else self.stream.synth.duration_s
        if record.status == "abnormal":
            w0, w1 = record.anomalies[0].window_s(record.annotation_fps)
            w1 = min(w1, duration)
            if w1 - w0 <= data.clip_max_s + _EPS:  # a clip that covers the whole window
                length = min(rng.uniform(max(w1 - w0, data.clip_min_s), data.clip_max_s), duration)
                lo, hi = max(0.0, w1 - length), min(w0, duration - length)
            else:  # a window longer than a clip: a clip inside it, anomalous in every frame
                length = data.clip_max_s
                lo, hi = w0, w1 - length
            start = rng.uniform(lo, hi) if hi > lo else lo
            return Sample("clip", 0, "abnormal", float(start), float(start + length), 0)
        length = min(rng.uniform(data.clip_min_s, data.clip_max_s), duration)
        start = rng.uniform(0.0, duration - length)
        return Sample("clip", 0, "normal", float(start), float(start + length))

    def chat(self, index: int) -> Chat:
        record, sample = self.sample(index)
        video, _, twin = self.locate(index)
        if sample.kind == "frame":
            source = lambda _r: self.stream.video(video, [sample.start_s], twin=twin)  # noqa: E731 - one frame
        else:
            source = lambda _r: self.stream.video(video, twin=twin)  # noqa: E731
        return ChatBuilder([record], self.data, cache_size=1, video_source=source)(sample, record)

    def __getitem__(self, index: int) -> Any:
        from cac_align.cac.train.collate import encode_chat

        if self.processor is None:
            raise RuntimeError("StageStream was built without a processor; use chat(index)")
        return encode_chat(self.processor, self.chat(index).messages)
