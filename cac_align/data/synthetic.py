"""Procedural videos with planted, exactly labelled anomalies (one generator per CaC type).

Every video shows the same kind of scene: a sky-and-floor background with fixed texture, a
shop sign with a word on it, a ball rolling along the floor on the left, and a stick figure
walking on the right. An abnormal video plants one sparse, local defect in one of them for a
short window:

- Object Distortion: the ball's outline warps into a lumpy blob.
- Human Distortion: the figure grows a third arm at an impossible angle.
- Motion Anomalies: the ball vanishes and reappears, or teleports sideways and back.
- Physical Violations: the ball floats above the floor with no support.
- Character Anomalies: the sign's letters garble, changing from frame to frame.

The renderer knows the exact pixel box of the affected object in every frame; annotations are
written from that geometry (0–1000 normalized boxes on the ``annotation_fps`` sequence), so
tests, demos and small training runs get ground truth without downloads. Normal videos come
from the same scene generator with nothing planted. Everything is a pure function of
``(seed, index)``: the same config writes the same videos and annotations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from cac_align.cac.schema import ANOMALY_TYPES, AnnotationRecord, Anomaly, seconds_to_frames, write_annotations

__all__ = [
    "NORMAL", "REASONS", "SUBJECTS", "WORDS", "SynthConfig", "SynthSpec", "annotate", "generate", "make_spec", "planted_boxes", "render",
    "render_demo_videos", "subject_boxes", "video_kinds",
]

NORMAL = "normal"
WORDS = ("OPEN", "CAFE", "HOTEL", "PARK", "SALE", "BAKERY", "MUSEUM", "GARDEN")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
REASONS = {
    "Object Distortion": ("the ball's outline warps into an irregular blob and then recovers", "ball"),
    "Human Distortion": ("the walking figure grows a third arm at an impossible angle", "figure's torso and arms"),
    "Motion Anomalies": ("the ball jumps discontinuously instead of rolling smoothly", "ball"),
    "Physical Violations": ("the ball hovers above the floor with nothing holding it up", "ball"),
    "Character Anomalies": ("the letters on the sign change and become unreadable", "shop sign text"),
}


MAX_SIDE = 4096  # the largest frame side synth draws

@dataclass
class SynthConfig:
    """Config of `cac-align synth` (and of :func:`generate`).

    Attributes:
        out_dir: output folder: ``videos/*.mp4`` and ``annotations.jsonl``.
        n: number of videos.
        seed: master seed; video ``i`` uses ``(seed, i)``.
        height, width: frame size in pixels (even, >= 32).
        fps: frame rate of the written videos.
        duration_s: length of each video.
        anomaly_duration_s: [min, max] length of a planted anomaly (e.g. [0.25, 0.9] for a
            "< 1 s" hard split).
        object_scale: [min, max] height of the affected object as a fraction of the frame
            height (small values give "< 20% of the frame" hard splits).
        normal_fraction: share of normal videos.
        types: anomaly types to plant, cycled evenly.
        annotation_fps: rate of the frame sequence annotation indices refer to; None = ``fps``.
        salient_min_area: box area fraction at or above which an anomaly is salient ...
        salient_min_duration_s: ... provided it also lasts at least this long.
        crf: x264 quality of the written mp4s.
        overwrite: replace the synth run in ``out_dir`` (its videos and labels, nothing else) and
            render every video again; otherwise a rerun of the same config resumes.
    """

    out_dir: str = MISSING
    n: int = 20
    seed: int = 0
    height: int = 128
    width: int = 192
    fps: float = 16.0
    duration_s: float = 3.0
    anomaly_duration_s: list[float] = field(default_factory=lambda: [0.5, 1.25])
    object_scale: list[float] = field(default_factory=lambda: [0.2, 0.35])
    normal_fraction: float = 0.25
    types: list[str] = field(default_factory=lambda: list(ANOMALY_TYPES))
    annotation_fps: float | None = None
    salient_min_area: float = 0.02
    salient_min_duration_s: float = 0.5
    crf: int = 18
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.height < 32 or self.width < 32 or self.height % 2 or self.width % 2:
            raise ValueError(f"height and width must be even and >= 32, got {self.height}x{self.width}")
        if self.height > MAX_SIDE or self.width > MAX_SIDE:  # a frame is drawn whole in memory, per frame
            raise ValueError(f"height and width must be at most {MAX_SIDE} (4K), got {self.height}x{self.width}")
        if self.fps <= 0 or self.duration_s <= 0:
            raise ValueError("fps and duration_s must be > 0")
        for name in ("anomaly_duration_s", "object_scale"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
                raise ValueError(f"{name} must be [min, max] with 0 < min <= max, got {low_high}")
        if self.anomaly_duration_s[1] > 0.8 * self.duration_s:
            raise ValueError(f"anomaly_duration_s {self.anomaly_duration_s} must fit in 80% of duration_s ({self.duration_s})")
        if self.anomaly_duration_s[0] * self.fps < 1:
            raise ValueError(f"anomaly_duration_s minimum {self.anomaly_duration_s[0]} s is shorter than one frame at {self.fps} fps")
        if self.object_scale[1] > 0.45:
            raise ValueError(f"object_scale maximum must be <= 0.45 of the frame height, got {self.object_scale[1]}")
        if not 0 <= self.normal_fraction <= 1:
            raise ValueError(f"normal_fraction must be in [0, 1], got {self.normal_fraction}")
        unknown = [t for t in self.types if t not in ANOMALY_TYPES]
        if unknown or not self.types:
            raise ValueError(f"types must be a non-empty subset of {list(ANOMALY_TYPES)}, got unknown {unknown}")
        if self.annotation_fps is not None and self.annotation_fps <= 0:
            raise ValueError(f"annotation_fps must be > 0, got {self.annotation_fps}")


@dataclass(frozen=True)
class SynthSpec:
    """Everything needed to render video ``index``; cheap to build, deterministic."""

    index: int
    kind: str  # NORMAL or one of ANOMALY_TYPES
    variant: str  # e.g. "vanish" / "teleport" for motion anomalies
    seed: int
    height: int
    width: int
    fps: float
    num_frames: int
    planted: tuple[int, int] | None  # inclusive source frame window of the anomaly
    sky: tuple[tuple[int, int, int], tuple[int, int, int]]
    floor_color: tuple[int, int, int]
    ball_color: tuple[int, int, int]
    ball_radius: float
    ball_x0: float
    ball_speed: float  # pixels per frame
    figure_height: float
    figure_x0: float
    figure_speed: float
    sign_word: str
    sign_height: float
    jump: float  # teleport offset (pixels) or float height

    @property
    def name(self) -> str:
        return f"synth_{self.index:05d}"

    @property
    def floor_y(self) -> float:
        return 0.8 * self.height


def video_kinds(config: SynthConfig) -> list[str]:
    """What each of the ``n`` videos shows ("normal" or an anomaly type): ``normal_fraction`` of
    them normal, the rest cycling through ``types``, in an order shuffled by ``seed``."""
    rng = np.random.default_rng([config.seed, 2**31 - 1])
    n_normal = int(round(config.n * config.normal_fraction))
    kinds = [NORMAL] * n_normal + [config.types[i % len(config.types)] for i in range(config.n - n_normal)]
    rng.shuffle(kinds)
    return kinds


def make_spec(config: SynthConfig, index: int, kind: str | None = None) -> SynthSpec:
    """Draw the scene and anomaly parameters of video ``index`` from ``(seed, index)``."""
    if kind is None:
        kind = video_kinds(config)[index]
    rng = np.random.default_rng([config.seed, index])
    h, w = config.height, config.width
    num_frames = max(2, int(round(config.duration_s * config.fps)))
    scale = float(rng.uniform(*config.object_scale))

    def color(lo: int, hi: int) -> tuple[int, int, int]:
        return tuple(int(c) for c in rng.integers(lo, hi, size=3))  # type: ignore[return-value]

    planted = None
    if kind != NORMAL:
        length = int(round(rng.uniform(*config.anomaly_duration_s) * config.fps))
        length = min(max(1, length), num_frames - 2)
        margin = max(1, int(0.1 * num_frames))
        start = int(rng.integers(margin, max(margin + 1, num_frames - length - margin + 1)))
        planted = (start, min(num_frames - 1, start + length - 1))
    variant = {"Motion Anomalies": str(rng.choice(["vanish", "teleport"]))}.get(kind, "")
    ball_radius = scale * h / 2
    return SynthSpec(
        index=index,
        kind=kind,
        variant=variant,
        seed=int(rng.integers(0, 2**31 - 1)),
        height=h,
        width=w,
        fps=float(config.fps),
        num_frames=num_frames,
        planted=planted,
        sky=(color(120, 200), color(180, 255)),
        floor_color=color(40, 110),
        ball_color=color(180, 256),
        ball_radius=ball_radius,
        ball_x0=float(rng.uniform(0.1, 0.4) * w),
        ball_speed=float(rng.uniform(0.15, 0.5) * w / num_frames) * float(rng.choice([-1, 1])),
        figure_height=min(2.0 * scale, 0.6) * h,
        figure_x0=float(rng.uniform(0.62, 0.8) * w),
        figure_speed=float(rng.uniform(0.02, 0.08) * w / num_frames) * float(rng.choice([-1, 1])),
        sign_word=str(rng.choice(WORDS)),
        sign_height=max(10.0, 0.6 * scale * h),
        jump=float(rng.uniform(1.5, 2.5)),
    )


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------
def _bounce(x0: float, speed: float, t: int, lo: float, hi: float) -> float:
    """Position after ``t`` frames moving at ``speed`` and bouncing between ``lo`` and ``hi``."""
    span = hi - lo
    if span <= 0:
        return lo
    p = (x0 - lo + speed * t) % (2 * span)
    return lo + (p if p <= span else 2 * span - p)


def _background(spec: SynthSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    top, bottom = np.array(spec.sky[0], np.float32), np.array(spec.sky[1], np.float32)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(top + (bottom - top) * ramp, (h, w, 3)).copy()
    floor = int(spec.floor_y)
    image[floor:] = np.array(spec.floor_color, np.float32)
    image += rng.normal(0, 4, size=(h, w, 1)).astype(np.float32)  # static texture
    return np.clip(image, 0, 255).astype(np.uint8)


def _font(size: float) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _ball_polygon(spec: SynthSpec, cx: float, cy: float, t: int, warped: bool) -> list[tuple[float, float]]:
    r = spec.ball_radius
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if warped:
        # Lobes whose phase drifts over time: the outline visibly warps (Object Distortion).
        phase = 0.7 * t
        radius = r * (1 + 0.45 * np.sin(3 * angles + phase) + 0.2 * np.cos(5 * angles - phase))
        xs, ys = cx + 1.3 * radius * np.cos(angles), cy + 0.8 * radius * np.sin(angles)
    else:
        xs, ys = cx + r * np.cos(angles), cy + r * np.sin(angles)
    return list(zip(xs.tolist(), ys.tolist()))


def _figure_lines(spec: SynthSpec, x: float, t: int, extra_arm: bool) -> list[tuple[float, float, float, float]]:
    """Stick-figure segments (x0, y0, x1, y1); feet on the floor."""
    fh = spec.figure_height
    feet = spec.floor_y
    hip = feet - 0.45 * fh
    shoulder = feet - 0.78 * fh
    swing = math.sin(t * 0.6) * 0.18 * fh
    lines = [
        (x, hip, x - swing, feet),  # legs
        (x, hip, x + swing, feet),
        (x, hip, x, shoulder),  # torso
        (x, shoulder, x - 0.22 * fh, shoulder + 0.2 * fh + 0.3 * swing),  # arms
        (x, shoulder, x + 0.22 * fh, shoulder + 0.2 * fh - 0.3 * swing),
    ]
    if extra_arm:  # a third arm sticking up and out from the mid torso
        lines.append((x, (hip + shoulder) / 2, x + 0.35 * fh, shoulder - 0.12 * fh))
    return lines


def _lines_box(lines: list[tuple[float, float, float, float]], pad: float) -> list[float]:
    xs = [v for seg in lines for v in (seg[0], seg[2])]
    ys = [v for seg in lines for v in (seg[1], seg[3])]
    return [min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad]


def _garble(word: str, rng: np.random.Generator) -> str:
    letters = list(word)
    for i in rng.choice(len(letters), size=max(1, (len(letters) + 1) // 2), replace=False):
        letters[i] = str(rng.choice([c for c in _LETTERS if c != word[i]]))
    return "".join(letters)


SUBJECTS = ("ball", "figure", "sign")


@dataclass
class _Frame:
    """The geometry of one frame: what is drawn where (pixels), and which subject is defective."""

    word: str
    board: list[float]
    ball_polygon: list[tuple[float, float]]
    ball_visible: bool
    figure_x: float
    figure_lines: list[tuple[float, float, float, float]]
    head: list[float]
    target: list[float] | None  # pixel box of the planted defect in this frame, if any

    def subject_boxes(self, spec: SynthSpec, line_width: int) -> dict[str, list[float] | None]:
        xs, ys = [p[0] for p in self.ball_polygon], [p[1] for p in self.ball_polygon]
        ball = [min(xs) - 1, min(ys) - 1, max(xs) + 1, max(ys) + 1] if self.ball_visible else None
        body = _lines_box(self.figure_lines, line_width)
        figure = [min(body[0], self.head[0]), min(body[1], self.head[1]), max(body[2], self.head[2]), body[3]]
        return {name: _clip_box(box, spec) for name, box in (("ball", ball), ("figure", figure), ("sign", self.board))}


def _clip_box(box: list[float] | None, spec: SynthSpec) -> list[float] | None:
    if box is None:
        return None
    return [max(0.0, box[0]), max(0.0, box[1]), min(float(spec.width), box[2]), min(float(spec.height), box[3])]


def _scene(spec: SynthSpec, plant: bool) -> tuple[list[_Frame], Any, int]:
    """Every frame's geometry (the one source of truth for drawing and for boxes), the sign
    font and the line width."""
    from PIL import Image, ImageDraw

    h, w = spec.height, spec.width
    line_width = max(2, int(round(spec.figure_height / 18)))
    font = _font(spec.sign_height * 0.7)
    text_box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), spec.sign_word, font=font)
    pad = 0.25 * spec.sign_height
    sign_x, sign_y = 0.06 * w, 0.08 * h
    board = [sign_x, sign_y, sign_x + (text_box[2] - text_box[0]) + 2 * pad, sign_y + spec.sign_height + pad]
    frames = []
    for t in range(spec.num_frames):
        active = plant and spec.planted is not None and spec.planted[0] <= t <= spec.planted[1]
        target: list[float] | None = None

        # 1. sign: board + word (Character Anomalies garble the word)
        word = spec.sign_word
        if active and spec.kind == "Character Anomalies":
            word = _garble(word, np.random.default_rng([spec.seed, t]))
            target = board

        # 2. ball rolling on the floor in the left half
        r = spec.ball_radius
        bx = _bounce(spec.ball_x0, spec.ball_speed, t, r + 1, 0.5 * w - r)
        by = spec.floor_y - r
        visible = True
        if active and spec.kind == "Physical Violations":
            by -= spec.jump * r  # hovering with no support
        if active and spec.kind == "Motion Anomalies":
            if spec.variant == "vanish":
                visible = False
            else:  # teleport towards the middle of the frame and back
                bx = bx + spec.jump * r if bx < 0.25 * w else bx - spec.jump * r
        polygon = _ball_polygon(spec, bx, by, t, active and spec.kind == "Object Distortion")
        if active and spec.kind in ("Object Distortion", "Physical Violations", "Motion Anomalies"):
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            target = [min(xs) - 1, min(ys) - 1, max(xs) + 1, max(ys) + 1]

        # 3. stick figure walking in the right half (Human Distortion: extra arm)
        fx = _bounce(spec.figure_x0, spec.figure_speed, t, 0.6 * w, 0.9 * w)
        extra = active and spec.kind == "Human Distortion"
        lines = _figure_lines(spec, fx, t, extra)
        head_r = 0.11 * spec.figure_height
        head_y = spec.floor_y - 0.78 * spec.figure_height - head_r
        head = [fx - head_r, head_y - head_r, fx + head_r, head_y + head_r]
        if extra:
            body = _lines_box(lines, line_width)
            target = [min(body[0], head[0]), min(body[1], head[1]), max(body[2], head[2]), body[3]]
        frames.append(_Frame(word, board, polygon, visible, fx, lines, head, target))
    return frames, (font, text_box, pad), line_width


def render(spec: SynthSpec, plant: bool = True, frames: Any = None) -> tuple[np.ndarray, dict[int, list[float]]]:
    """Render a video and the pixel box of the anomaly's object in every planted frame.

    Args:
        spec: from :func:`make_spec`.
        plant: False renders the same scene with nothing planted (the clean reference).
        frames: source frame indices to draw (default: all); the others are not rendered,
            which is what single-frame training samples need.

    Returns:
        frames: (T, H, W, 3) uint8, or (len(frames), H, W, 3) for the requested frames.
        boxes: source frame index -> ``[x0, y0, x1, y1]`` pixel box of the affected object
            (clipped to the frame), for the planted frames (empty for normal videos).
    """
    from PIL import Image, ImageDraw

    background = _background(spec)
    geometry, (font, text_box, pad), line_width = _scene(spec, plant)
    wanted = range(spec.num_frames) if frames is None else [int(t) for t in frames]
    out = np.empty((len(wanted), spec.height, spec.width, 3), np.uint8)
    boxes: dict[int, list[float]] = {}
    for t, g in enumerate(geometry):
        if g.target is not None:
            boxes[t] = _clip_box(g.target, spec)  # type: ignore[assignment]
    for k, t in enumerate(wanted):
        g = geometry[t]
        image = Image.fromarray(background.copy())
        draw = ImageDraw.Draw(image)
        draw.rectangle(g.board, fill=(245, 240, 225), outline=(60, 40, 20), width=max(1, line_width // 2))
        draw.text((g.board[0] + pad - text_box[0], g.board[1] + pad / 2), g.word, fill=(20, 20, 120), font=font)
        if g.ball_visible:
            draw.polygon(g.ball_polygon, fill=spec.ball_color, outline=(30, 30, 30))
        for seg in g.figure_lines:
            draw.line(seg, fill=(20, 20, 20), width=line_width)
        draw.ellipse(g.head, fill=(230, 190, 160), outline=(20, 20, 20))
        out[k] = np.asarray(image)
    return out, boxes


def planted_boxes(spec: SynthSpec) -> dict[int, list[float]]:
    """The boxes :func:`render` returns (source frame -> pixel box of the planted defect),
    computed from the geometry alone, without drawing a pixel."""
    geometry, _, _ = _scene(spec, plant=True)
    return {t: _clip_box(g.target, spec) for t, g in enumerate(geometry) if g.target is not None}  # type: ignore[misc]


def subject_boxes(spec: SynthSpec, plant: bool = True) -> list[dict[str, list[float] | None]]:
    """Per source frame, the pixel box ``[x0, y0, x1, y1]`` of each subject of the scene
    (``ball``, ``figure``, ``sign``; None where it is not visible), from the same geometry
    :func:`render` draws. Grounded template reasoning names the subjects with these boxes."""
    geometry, _, line_width = _scene(spec, plant)
    return [g.subject_boxes(spec, line_width) for g in geometry]


# ---------------------------------------------------------------------------------------
# Annotation
# ---------------------------------------------------------------------------------------
def _normalized(box: list[float], width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [round(1000 * x0 / width, 1), round(1000 * y0 / height, 1), round(1000 * x1 / width, 1), round(1000 * y1 / height, 1)]


def annotate(
    spec: SynthSpec, boxes: dict[int, list[float]], video: str, config: SynthConfig
) -> AnnotationRecord:
    """The annotation record of a rendered video (frame indices on the ``annotation_fps`` grid)."""
    afps = float(config.annotation_fps or spec.fps)
    num_frames = max(1, math.ceil(spec.num_frames / spec.fps * afps - 1e-6))
    prompt = f"A ball rolls along the floor past a '{spec.sign_word}' sign while a person walks by."
    if spec.planted is None:
        return AnnotationRecord(video=video, prompt=prompt, status="normal", annotation_fps=afps, num_frames=num_frames)
    start_f, end_f = spec.planted
    first, last = seconds_to_frames(start_f / spec.fps, (end_f + 1) / spec.fps, afps)
    frame_boxes: dict[int, list[list[float]]] = {}
    for k in range(first, last + 1):
        source = min(end_f, int(math.floor(k / afps * spec.fps + 1e-6)))  # frame on screen at k / afps
        frame_boxes[k] = [_normalized(boxes[source], spec.width, spec.height)]
    area = np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes.values()]) / (spec.width * spec.height)
    duration = (end_f - start_f + 1) / spec.fps
    salient = area >= config.salient_min_area and duration >= config.salient_min_duration_s
    reason, region = REASONS[spec.kind]
    anomaly = Anomaly(
        type=spec.kind,
        frames=(first, last),
        boxes=frame_boxes,
        reason=reason,
        region=region,
        saliency="salient" if salient else "non-salient",
    )
    return AnnotationRecord(
        video=video, prompt=prompt, status="abnormal", annotation_fps=afps, anomalies=[anomaly], num_frames=num_frames
    )


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
_RUN_ONLY_KEYS = ("out_dir", "overwrite")  # everything else decides which video gets which label


SYNTH_OUTPUTS = ("videos", "annotations.jsonl")


def _run_folder(config: SynthConfig) -> Any:
    """The run folder (:class:`~cac_align.run.folder.RunFolder`, docs/run_folders.md). Its manifest
    records the config the videos come from (written before the first video): resuming into
    videos of another config would give them the wrong labels, so that is refused, naming the
    keys, unless ``overwrite`` (which deletes the old videos and renders every one again); so are
    videos with no record of their config."""
    from omegaconf import OmegaConf

    from cac_align.run.folder import RunFolder, config_fingerprint

    resolved = OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    return RunFolder(config.out_dir, "synth", SYNTH_OUTPUTS, config_fingerprint(config, _RUN_ONLY_KEYS), resolved, overwrite=config.overwrite)


def render_demo_videos(folder: str | Path, n: int, seed: int, recipe: str | None = None) -> list[AnnotationRecord]:
    """Render ``n`` demo videos into ``folder`` afresh (``overwrite``): the scenes of the ``synth``
    ``recipe`` (e.g. recipes/synth/default.yaml, what ``cac-demo`` was trained on) at ``seed``, or
    without one small 64x96, 2 s scenes (fast, for tiny random models). What ``score`` and
    ``repair`` render for their offline demos; returns the records (videos relative to ``folder``)."""
    from cac_align.config import load_config

    where = [f"out_dir={folder}", f"n={n}", f"seed={seed}", "overwrite=true"]
    if recipe is not None:
        config = load_config(SynthConfig, recipe, where, job="synth")
    else:
        config = SynthConfig(out_dir=str(folder), n=n, seed=seed, height=64, width=96, fps=8.0, duration_s=2.0, overwrite=True)
    return generate(config)


def generate(config: SynthConfig) -> list[AnnotationRecord]:
    """Write ``n`` videos and ``annotations.jsonl`` under ``out_dir``; returns the records.

    Steps: 0. check that ``out_dir`` holds no videos of another config (its manifest);
    1. draw every video's spec; 2. render and save the mp4s that are missing (all of them with
    ``overwrite``), so a killed run resumes; 3. write the annotations atomically.
    """
    from tqdm.auto import tqdm

    from cac_align.video import Video, save_video

    out = Path(config.out_dir)
    run_folder = _run_folder(config)
    run_folder.start()  # with overwrite: the old videos and labels go first
    (out / "videos").mkdir(parents=True, exist_ok=True)
    # 1. specs
    kinds = video_kinds(config)
    specs = [make_spec(config, i, kinds[i]) for i in range(config.n)]
    # 2. render + save
    records = []
    for spec in tqdm(specs, desc="synth videos", unit="video"):
        relative = f"videos/{spec.name}.mp4"
        frames, boxes = render(spec)
        path = out / relative
        if config.overwrite or not path.exists():
            save_video(Video(frames, spec.fps, source=spec.name), path, crf=config.crf)
        records.append(annotate(spec, boxes, relative, config))
    # 3. annotations (relative video paths resolve against the JSONL's folder)
    write_annotations(records, out / "annotations.jsonl")
    return records


