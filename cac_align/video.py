"""Video values: frames, frame rate and timestamps; loading, resampling, cropping, saving.

Every reward and every CaC turn sees videos through :class:`Video`. A ``Video`` carries
``frames`` as a uint8 array ``(T, H, W, 3)``, its frame rate ``fps`` and, for every frame, the
time in seconds at which that frame sits in the *source* video. Resampling and cropping keep
those source timestamps, so a prompt built from a cropped, resampled clip can still say
"frame 3 is at 2.75 s" of the original video (CaC turn 2 needs this).

Time convention: frame ``i`` of a video decoded at ``fps`` sits at ``i / fps`` seconds, and a
video of ``T`` frames lasts ``T / fps`` seconds (81 frames at 16 fps last 5.0625 s). Windows
are half-open, ``[start_s, end_s)``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LazyFrames",
    "Video",
    "VideoError",
    "load_video",
    "open_video_reader",
    "save_video",
    "save_wav",
    "sample_times",
]

# Tolerance for comparing times, far below any real frame period (1 ms ~ 1000 fps).
_TIME_EPS = 1e-6


class VideoError(ValueError):
    """A video could not be read, built or cut; the message names the input and the fix."""


def _check_fps(fps: Any, what: str) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise VideoError(f"{what} must be a number > 0, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise VideoError(f"{what} must be a finite number > 0, got {fps!r}")
    return value


def sample_times(num_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Indices of the frames that sample a video uniformly in time at ``target_fps``.

    Target times are ``k / target_fps`` for ``k = 0, 1, ...`` while they fall inside the
    video (``< num_frames / source_fps``); each picks the source frame nearest in time
    (ties round up). A 16 fps, 81-frame video at 4 fps gives indices 0, 4, 8, ..., 80, i.e.
    the frames at 0, 0.25, ..., 5.0 s. Asking for more fps than the source has repeats
    frames, as a constant-frame-rate player would.

    Args:
        num_frames: frame count ``T`` of the source (>= 1).
        source_fps: the source's frame rate.
        target_fps: the wanted frame rate.

    Returns:
        (K,) int64 array of source frame indices, non-decreasing, ``K >= 1``.
    """
    if num_frames < 1:
        raise VideoError(f"cannot sample from a video with {num_frames} frames")
    source_fps = _check_fps(source_fps, "source fps")
    target_fps = _check_fps(target_fps, "target fps")
    duration = num_frames / source_fps
    # k / target < duration  <=>  k < duration * target; the epsilon keeps an exact boundary out.
    count = max(1, math.ceil(duration * target_fps - _TIME_EPS))
    times = np.arange(count, dtype=np.float64) / target_fps
    indices = np.floor(times * source_fps + 0.5 + _TIME_EPS).astype(np.int64)
    return np.clip(indices, 0, num_frames - 1)


class LazyFrames:
    """(T, H, W, 3) uint8 frames of a video file that are decoded only when read, by index.

    A :class:`Video` loaded with ``load_video(path, lazy=True)`` holds these instead of an array:
    selecting frames (``resample``, ``crop``, ``select``) composes indices and decodes nothing,
    so reading a 4 fps scan of a ten-minute film decodes the scan's frames, not the film. Reading
    pixels decodes the selected frames: ``np.asarray(frames)``, one frame by ``frames[i]``, or
    iteration (a few frames at a time). Slicing or indexing with an array gives LazyFrames again.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: str, indices: np.ndarray, height: int, width: int):
        self.path = str(path)
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.shape = (len(self.indices), int(height), int(width), 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):  # frames[t, y, x, c]: pick the frames, decode them, index the rest
            head, rest = (key[0], key[1:]) if key else (slice(None), ())
            picked = self[head]
            if isinstance(picked, LazyFrames):
                return np.asarray(picked)[(slice(None), *rest)]
            return picked[rest]
        if isinstance(key, (int, np.integer)):
            return self._decode(self.indices[[int(key)]])[0]
        return LazyFrames(self.path, self.indices[key], self.shape[1], self.shape[2])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        frames = self._decode(self.indices)
        return frames if dtype is None else frames.astype(dtype)

    def __iter__(self) -> Any:
        for start in range(0, len(self), 16):
            yield from self._decode(self.indices[start : start + 16])

    def _decode(self, indices: np.ndarray) -> np.ndarray:
        return _read_frames(Path(self.path), np.asarray(indices, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Video:
    """Decoded RGB frames with their frame rate and source timestamps.

    Attributes:
        frames: (T, H, W, 3) uint8, T >= 1: an array, or :class:`LazyFrames` of a file
            (decoded when read; ``np.asarray(video.frames)`` reads them).
        fps: frame rate of ``frames`` (> 0). For a resampled video this is the target rate.
        timestamps: (T,) float64 seconds of each frame in the source video; defaults to
            ``i / fps``.
        source: where the frames came from (a path, or a short description), for messages.
        audio: the soundtrack the generator made with the frames, float32 ``(channels, samples)``
            (a ``(samples,)`` waveform is taken as one channel), or None for a silent video. Kept as
            given: whether it is usable (finite, long enough, at a rate a reward takes) is the
            reward's to judge, which marks a sample with a bad track invalid with the reason.
        sample_rate: the soundtrack's samples per second (an int > 0); required with ``audio``.
        audio_problem: why a soundtrack that came with the video could not be taken (a file's audio
            stream that does not decode, a trainer's track of a shape or rate that is not one), with
            ``audio`` None: a reward that hears says it (``error_kind: audio``), while the frames
            stay whole for every reward that only sees.
    """

    frames: np.ndarray
    fps: float
    timestamps: np.ndarray = field(default=None)  # type: ignore[assignment]
    source: str = "<array>"
    audio: Any = None
    sample_rate: int | None = None
    audio_problem: str | None = None

    def __post_init__(self) -> None:
        frames = self.frames
        if not isinstance(frames, (np.ndarray, LazyFrames)):
            raise VideoError(f"{self.source}: Video.frames must be a numpy array, got {type(frames).__name__}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise VideoError(
                f"{self.source}: Video.frames must be uint8 (T, H, W, 3), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        if frames.shape[0] == 0:
            raise VideoError(f"{self.source}: video has zero frames")
        if frames.shape[1] == 0 or frames.shape[2] == 0:
            raise VideoError(f"{self.source}: video frames are empty ({tuple(frames.shape)})")
        object.__setattr__(self, "fps", _check_fps(self.fps, f"{self.source}: fps"))
        if self.timestamps is None:
            stamps = np.arange(frames.shape[0], dtype=np.float64) / self.fps
        else:
            stamps = np.asarray(self.timestamps, dtype=np.float64)
            if stamps.shape != (frames.shape[0],):
                raise VideoError(
                    f"{self.source}: timestamps must have one entry per frame "
                    f"({frames.shape[0]}), got shape {stamps.shape}"
                )
        object.__setattr__(self, "timestamps", stamps)
        if self.audio is not None:
            object.__setattr__(self, "audio", _soundtrack(self.audio, self.sample_rate, self.source))
            object.__setattr__(self, "sample_rate", int(self.sample_rate))  # type: ignore[arg-type]

    # -- properties ---------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def duration_s(self) -> float:
        """Length in seconds: ``T / fps``."""
        return self.num_frames / self.fps

    @property
    def start_s(self) -> float:
        """Source time of the first frame (0 unless the video was cropped)."""
        return float(self.timestamps[0])

    @property
    def end_s(self) -> float:
        """Source time at which the video ends (exclusive): ``start_s + duration_s``."""
        return self.start_s + self.duration_s

    def __repr__(self) -> str:
        return (
            f"Video(source={self.source!r}, frames={self.num_frames}x{self.height}x{self.width}, "
            f"fps={self.fps:g}, span=[{self.start_s:.3f}, {self.end_s:.3f}) s)"
        )

    # -- transforms ---------------------------------------------------------------------
    @property
    def is_lazy(self) -> bool:
        """Whether the frames are decoded only when read (:class:`LazyFrames`)."""
        return isinstance(self.frames, LazyFrames)

    def decoded(self) -> "Video":
        """This video with its frames as an array (a lazy video's selected frames decoded)."""
        if not self.is_lazy:
            return self
        return dataclasses.replace(self, frames=np.asarray(self.frames))

    def select(self, indices: np.ndarray, fps: float) -> "Video":
        """Frames at ``indices`` as a new video at ``fps``, keeping their source timestamps."""
        indices = np.asarray(indices, dtype=np.int64)
        return Video(self.frames[indices], fps, self.timestamps[indices], self.source)

    def resample(self, fps: float) -> "Video":
        """Sample uniformly in time at ``fps`` (CaC: 4 fps whole-video scan, 8 fps clip).

        Frame ``k`` of the result is the source frame nearest to ``start_s + k / fps``;
        see :func:`sample_times`.
        """
        fps = _check_fps(fps, f"{self.source}: resample fps")
        video = self.select(sample_times(self.num_frames, self.fps, fps), fps)
        # the same span of time: the soundtrack stays (a crop or a select of some frames drops it)
        sound = {"audio": self.audio, "sample_rate": self.sample_rate, "audio_problem": self.audio_problem}
        return video if self.audio is None and self.audio_problem is None else dataclasses.replace(video, **sound)

    def crop(self, start_s: float, end_s: float) -> "Video":
        """Frames whose timestamps fall in ``[start_s, end_s)`` (source seconds).

        The window is clamped to the video's span. An inverted window (``end_s < start_s``),
        an empty one, or one that contains no frame raises :class:`VideoError`.
        """
        start_s, end_s = float(start_s), float(end_s)
        if not (math.isfinite(start_s) and math.isfinite(end_s)):
            raise VideoError(f"{self.source}: crop window must be finite, got [{start_s}, {end_s})")
        if end_s < start_s:
            raise VideoError(f"{self.source}: inverted crop window [{start_s:g}, {end_s:g}) s (end before start)")
        if end_s - start_s <= _TIME_EPS:
            raise VideoError(f"{self.source}: empty crop window [{start_s:g}, {end_s:g}) s")
        lo, hi = max(start_s, self.start_s), min(end_s, self.end_s)
        keep = (self.timestamps >= lo - _TIME_EPS) & (self.timestamps < hi - _TIME_EPS)
        if not keep.any():
            raise VideoError(
                f"{self.source}: crop window [{start_s:g}, {end_s:g}) s holds no frame of a video "
                f"spanning [{self.start_s:g}, {self.end_s:g}) s at {self.fps:g} fps"
            )
        return self.select(np.flatnonzero(keep), self.fps)

    def resize(self, height: int, width: int) -> "Video":
        """Every frame resized to ``height x width`` (bicubic, antialiased); timing unchanged."""
        from PIL import Image

        if height < 1 or width < 1:
            raise VideoError(f"{self.source}: cannot resize to {height}x{width}")
        if (height, width) == (self.height, self.width):
            return self
        frames = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in self.frames])
        return Video(frames, self.fps, self.timestamps, self.source)

    def fit_pixels(self, max_pixels: int, multiple: int = 1) -> "Video":
        """Downscale so that height * width <= max_pixels, keeping the aspect ratio.

        With ``multiple > 1`` both sides also become multiples of ``multiple``: use the vision
        processor's patch x merge size (Qwen3-VL: 16 x 2 = 32) so that the processor keeps the
        frames as they are instead of resizing them a second time to its own grid (which would
        change the aspect ratio: 90x135 becomes 96x128). Among the grid sizes that fit, the
        largest one whose aspect ratio is within 10% of the frame's is taken (the closest
        aspect ratio if none is); a frame that already fits and lies on the grid is kept.
        """
        if multiple < 1 or max_pixels < 1:
            raise VideoError(f"{self.source}: fit_pixels needs max_pixels >= 1 and multiple >= 1, got {max_pixels}, {multiple}")
        h, w = self.height, self.width
        if multiple == 1:
            if h * w <= max_pixels:
                return self
            scale = math.sqrt(max_pixels / (h * w))
            return self.resize(max(1, int(h * scale)), max(1, int(w * scale)))
        if h * w <= max_pixels and h % multiple == 0 and w % multiple == 0:
            return self
        aspect = w / h
        cells = max_pixels // (multiple * multiple)
        if cells < 1:
            raise VideoError(f"{self.source}: max_pixels={max_pixels} holds no {multiple}x{multiple} cell")
        best: tuple[float, int, int, int] | None = None  # (aspect error, -area, rows, cols)
        close: tuple[int, int, int] | None = None  # (area, rows, cols) with aspect error <= 10%
        for rows in range(1, max(1, h // multiple) + 1):
            cols = max(1, min(w // multiple or 1, round(rows * aspect)))
            if rows * cols > cells:
                break
            error = abs(cols / rows - aspect) / aspect
            if best is None or (error, -rows * cols) < best[:2]:
                best = (error, -rows * cols, rows, cols)
            if error <= 0.1 and (close is None or rows * cols > close[0]):
                close = (rows * cols, rows, cols)
        if close is not None:
            rows, cols = close[1], close[2]
        elif best is not None:
            rows, cols = best[2], best[3]
        else:  # the frame is smaller than one cell along its height: one row of cells
            rows, cols = 1, max(1, min(cells, round(aspect)))
        return self.resize(rows * multiple, cols * multiple)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
# Float frames are turned into uint8 this many at a time, on the device they are on: the host
# then holds the uint8 video and one chunk's float32 temporaries, never a float32 copy of the
# whole video (704 x 1280 x 121 frames: 1.3 GB in float32, 0.33 GB in uint8).
FRAME_CHUNK = 8


def _soundtrack(audio: Any, sample_rate: Any, source: str) -> np.ndarray:
    """A video's soundtrack as float32 ``(channels, samples)``: the shape and rate checked, the values
    not (a NaN or silent track reaches the reward, which says why it cannot score it)."""
    whole = isinstance(sample_rate, (int, np.integer)) or (isinstance(sample_rate, (float, np.floating)) and float(sample_rate).is_integer())
    if isinstance(sample_rate, bool) or not whole or sample_rate <= 0:
        raise VideoError(f"{source}: a soundtrack needs its sample_rate, a whole number > 0, got {sample_rate!r}")
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().to("cpu").float().numpy()
    track = np.asarray(audio, dtype=np.float32)
    while track.ndim > 2 and track.shape[0] == 1:  # a batch of one, (1, channels, samples)
        track = track[0]
    if track.ndim == 1:
        track = track[None]
    if track.ndim != 2:
        raise VideoError(f"{source}: a soundtrack is (channels, samples) or (samples,), got shape {tuple(track.shape)}")
    return track


def float_frames_to_uint8(frames: Any, what: str = "frames", channels_first: bool = False, strict: bool = True) -> np.ndarray:
    """Float frames in [0, 1] to host uint8 ``(..., H, W, 3)``: ``round(clip(x, 0, 1) * 255)`` in float32.

    Args:
        frames: a numpy array or a torch tensor (on any device, any float dtype), with any
            leading dimensions: ``(..., H, W, 3)``, or ``(..., 3, H, W)`` with ``channels_first``
            (diffusers' ``output_type="pt"``).
        what: the input's name in error messages.
        channels_first: the channels come before height and width.
        strict: refuse NaN, inf and values outside [0, 1] (below); False clips them as a
            pipeline's own postprocessing does (a generator's decode: diffusers clamps already).

    The frames are converted :data:`FRAME_CHUNK` at a time, a tensor on its own device, so the
    host never holds a float32 copy of the video. Values equal NumPy's on the whole array bit for
    bit (float32 clip, scale and round-half-to-even are exact on every device).

    Raises:
        VideoError: NaN or inf anywhere, or values outside [0, 1] by more than 1e-3 (the message
            gives the range of the whole input).
    """
    torch_input = not isinstance(frames, np.ndarray)
    if torch_input:
        import torch
    shape = tuple(frames.shape)
    if len(shape) < 3 or shape[-3 if channels_first else -1] != 3:
        raise VideoError(f"{what}: expected float frames (..., {'3, H, W' if channels_first else 'H, W, 3'}), got shape {shape}")
    height, width = (shape[-2], shape[-1]) if channels_first else (shape[-3], shape[-2])
    flat = frames.reshape(-1, *shape[-3:])
    out = np.empty((flat.shape[0], height, width, 3), dtype=np.uint8)
    lo, hi = float("inf"), float("-inf")
    for start in range(0, flat.shape[0], FRAME_CHUNK):
        if torch_input:
            chunk = flat[start : start + FRAME_CHUNK].detach().float()
            chunk = chunk.permute(0, 2, 3, 1) if channels_first else chunk
            if strict:
                if not bool(chunk.isfinite().all()):
                    raise VideoError(f"{what}: float frames contain NaN or inf")
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            converted = chunk.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).cpu().numpy()  # one temporary (clamp's)
        else:
            chunk = np.asarray(flat[start : start + FRAME_CHUNK], dtype=np.float32)
            chunk = chunk.transpose(0, 2, 3, 1) if channels_first else chunk
            if strict:
                if not bool(np.isfinite(chunk).all()):
                    raise VideoError(f"{what}: float frames contain NaN or inf")
                lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            converted = np.clip(chunk, 0.0, 1.0)  # the one temporary: scaled and rounded in place
            np.round(np.multiply(converted, 255.0, out=converted), out=converted)
        out[start : start + len(chunk)] = converted
        del chunk, converted
    if strict and (lo < -1e-3 or hi > 1 + 1e-3):
        raise VideoError(
            f"{what}: float frames must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
            "rescale [-1, 1] output with (x + 1) / 2, or pass uint8 frames"
        )
    return out.reshape(*shape[:-3], height, width, 3)


def _frames_from_array(array: Any, what: str) -> np.ndarray:
    """(T, H, W, 3) uint8, or float (T, C, H, W) / (T, H, W, C) in [0, 1] (a numpy array or a
    torch tensor on any device) -> (T, H, W, 3) uint8 on the host."""
    if array.ndim != 4:
        raise VideoError(
            f"{what}: expected a 4-d video (T, H, W, 3) uint8 or (T, C, H, W) / (T, H, W, C) float, "
            f"got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0:
        raise VideoError(f"{what}: video has zero frames")
    if isinstance(array, np.ndarray) and array.dtype == np.uint8:
        if array.shape[-1] != 3:
            raise VideoError(f"{what}: uint8 frames must be (T, H, W, 3), got {tuple(array.shape)}")
        return np.ascontiguousarray(array)
    floating = np.issubdtype(array.dtype, np.floating) if isinstance(array, np.ndarray) else array.is_floating_point()
    if not floating:
        raise VideoError(f"{what}: frames must be uint8 or float in [0, 1], got dtype {_dtype_name(array)}")
    if array.shape[-1] == 3:  # (T, H, W, C)
        return float_frames_to_uint8(array, what)
    if array.shape[1] == 3:  # (T, C, H, W)
        return float_frames_to_uint8(array, what, channels_first=True)
    raise VideoError(
        f"{what}: float frames need 3 channels first (T, 3, H, W) or last (T, H, W, 3), "
        f"got {tuple(array.shape)}"
    )


def _dtype_name(array: Any) -> str:
    """``float32`` for a numpy array and a torch tensor alike."""
    return str(array.dtype).removeprefix("torch.")


def _as_frames(source: Any) -> Any:
    """``source`` as what :func:`_frames_from_array` reads: a numpy array; a float torch tensor
    kept as it is (it is converted a few frames at a time on its own device); another tensor
    as a numpy array. None when it is neither."""
    if isinstance(source, np.ndarray):
        return source
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return None
    if isinstance(source, torch.Tensor):
        return source.detach() if source.is_floating_point() else source.detach().cpu().numpy()
    return None


# decord's own C++ log line for a file it cannot open ("[05:20:48] /github/workspace/src/video/
# video_reader.cc:83: ERROR opening: x.mp4, Invalid data found ..."): printed on fd 2 before the
# exception that we turn into one line of our own; no decord setting silences it.
_DECORD_OPEN_ERROR = re.compile(rb"video_reader\.cc:\d+: ERROR opening")
_STDERR_LOCK = threading.Lock()
_DECORD_QUIET: list[bool] = [False]


def _decord() -> Any:
    """decord, with ffmpeg's logging off (``decord.logging.set_level``, decord's own switch): a file
    ffmpeg cannot read ("moov atom not found") is reported by us, once, naming the file."""
    import decord

    if not _DECORD_QUIET[0]:
        decord.logging.set_level(decord.logging.QUIET)
        _DECORD_QUIET[0] = True
    return decord


@contextlib.contextmanager
def _without_decord_noise() -> Any:
    """While decord opens a file, what is written to fd 2 goes to a temporary file; afterwards
    everything but decord's "ERROR opening" line is written on (another thread's progress bar,
    a warning), so nothing else is lost. One thread at a time; without a usable fd 2, a no-op."""
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved is None:
            yield
            return
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = b"".join(line for line in captured.read().splitlines(keepends=True) if not _DECORD_OPEN_ERROR.search(line))
                if kept:
                    os.write(2, kept)


def open_video_reader(path: str | Path) -> Any:
    """``decord.VideoReader`` of a video file (CPU, one thread), without decord's and ffmpeg's
    native log lines: a file it cannot open raises, and the caller reports it in its own words.

    Raises:
        VideoError: an empty (0-byte) file, named as such.
        Exception: decord's own error for any other file it cannot open.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise VideoError(f"video {path} is an empty file (0 bytes): write it again, or remove it")
    decord = _decord()
    with _without_decord_noise():
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _read_frames(path: Path, indices: np.ndarray) -> np.ndarray:
    """Frames ``indices`` of a video file, (K, H, W, 3) uint8 (decord reads by index)."""
    try:
        reader = open_video_reader(path)
        if reader[0].shape[-1] == 3:
            return reader.get_batch(indices.tolist()).asnumpy()
        # decord 0.6 mis-strides some narrow widths (16 or 48 px) and reports 4- or 6-channel
        # frames; ffmpeg decodes those files correctly.
        return _decode_with_ffmpeg(path, indices)
    except VideoError:
        raise
    except Exception as exc:
        raise VideoError(f"could not decode frames of video {path}: {exc.__class__.__name__}: {exc}") from None


def _decode_file(path: Path, fps: float | None, lazy: bool = False, audio: bool = False) -> Video:
    if not path.exists():
        raise VideoError(f"video file not found: {path}")
    if not path.is_file():
        raise VideoError(f"video path is not a file: {path}")
    try:
        reader = open_video_reader(path)
        total = len(reader)
        source_fps = float(reader.get_avg_fps())
    except VideoError:
        raise
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError
        raise VideoError(f"could not decode video {path}: {exc.__class__.__name__}: {exc}") from None
    if total < 1:
        raise VideoError(f"video {path} has zero frames")
    if not math.isfinite(source_fps) or source_fps <= 0:
        raise VideoError(f"video {path} reports an unusable frame rate ({source_fps}); re-encode it with a fixed fps")
    if fps is None:
        indices = np.arange(total, dtype=np.int64)
        out_fps = source_fps
    else:
        # Decode only the frames the target rate needs.
        indices = sample_times(total, source_fps, fps)
        out_fps = fps
    sound: dict[str, Any] = {}
    if audio:  # only a reward that hears pays for decoding the track; one that fails leaves the frames whole
        try:
            sound = dict(zip(("audio", "sample_rate"), read_soundtrack(path)))
        except VideoError as exc:
            sound = {"audio_problem": str(exc)}
    if lazy:
        try:
            height, width = reader[0].shape[:2]
        except Exception as exc:
            raise VideoError(f"could not decode frames of video {path}: {exc.__class__.__name__}: {exc}") from None
        del reader
        return Video(LazyFrames(str(path), indices, height, width), out_fps, indices / source_fps, str(path), **sound)
    del reader
    return Video(_read_frames(path, indices), out_fps, indices / source_fps, str(path), **sound)


def read_soundtrack(path: str | Path) -> tuple[np.ndarray | None, int | None]:
    """A video file's first audio stream, decoded by PyAV (ffmpeg): float32 ``(channels, samples)``
    and its rate, or ``(None, None)`` for a file without one. An AAC track (what :func:`save_video`
    writes) comes back at its rate and length: ffmpeg drops the encoder's priming samples, and the
    decoder's padding of the last frame is cut to the stream's duration.

    Raises:
        VideoError: an audio stream that cannot be decoded, naming the file.
    """
    import av  # PyAV, installed with qwen-vl-utils (a dependency); ffmpeg's own decoders

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None, None
            stream = container.streams.audio[0]
            chunks = [frame.to_ndarray() for frame in container.decode(stream)]
            rate = int(stream.rate)
            length = None if stream.duration is None else int(round(float(stream.duration * stream.time_base) * rate))
    except av.error.FFmpegError as exc:
        raise VideoError(f"could not decode the soundtrack of video {path}: {exc}") from None
    if not chunks:
        return None, None
    # planar formats give (channels, n) per frame; packed ones (s16, flt) give (1, n * channels)
    channels = stream.codec_context.channels if hasattr(stream.codec_context, "channels") else stream.channels
    planes = [c.reshape(-1, channels).T if c.shape[0] == 1 and channels > 1 else c for c in chunks]
    track = np.concatenate(planes, axis=1)
    if track.dtype.kind == "i":  # integer PCM to [-1, 1]
        track = track.astype(np.float32) / float(np.iinfo(track.dtype).max)
    return np.ascontiguousarray(track[:, :length], dtype=np.float32), rate


def _decode_with_ffmpeg(path: Path, indices: np.ndarray) -> np.ndarray:
    """Decode all frames with imageio-ffmpeg and keep ``indices`` (fallback path)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    if not frames or int(indices.max()) >= len(frames):
        raise VideoError(f"could not decode frames of video {path}: ffmpeg returned {len(frames)} frames")
    return np.stack([frames[i] for i in indices.tolist()])


def load_video(
    source: Any,
    fps: float | None = None,
    *,
    source_fps: float | None = None,
    lazy: bool = False,
    audio: bool = False,
) -> Video | list[Video]:
    """Load a video from a file, an array, a tensor or a diffusers batch.

    Args:
        source: one of
            - a path (``str`` / ``os.PathLike``) to a video file, decoded with decord;
            - a :class:`Video` (returned, resampled if ``fps`` is given);
            - a uint8 array ``(T, H, W, 3)``;
            - a float tensor/array ``(T, C, H, W)`` or ``(T, H, W, C)`` in [0, 1];
            - a diffusers batch ``(B, F, C, H, W)`` float in [0, 1] (``output_type="pt"``),
              returning a list of ``B`` videos.
        fps: if given, resample to this rate (for files only the needed frames are decoded).
        source_fps: frame rate of array/tensor input (files carry their own). Required for
            arrays: Wan-2.1 writes 16 fps.
        lazy: for files, decode nothing now: the video's frames are :class:`LazyFrames`,
            decoded when read, so memory follows the frames a caller selects, not the file's
            length (what rewards do with files).
        audio: for files, also decode the file's soundtrack (:func:`read_soundtrack`) into
            :attr:`Video.audio` (what a reward that hears asks for); a stream that cannot be decoded
            leaves the frames whole and says why in :attr:`Video.audio_problem`. Off by default: a
            reward that only sees does not pay for the track.

    Returns:
        A :class:`Video`, or a list of them for a 5-d batch.

    Raises:
        VideoError: missing or corrupt file, zero frames, wrong shape or dtype, values out of
            range, fps <= 0. The message names the input.
    """
    if fps is not None:
        fps = _check_fps(fps, "target fps")
    if isinstance(source, Video):
        return source.resample(fps) if fps is not None else source
    if isinstance(source, (str, os.PathLike)):
        return _decode_file(Path(source), fps, lazy, audio)

    array = _as_frames(source)
    if array is None:
        raise VideoError(
            f"cannot load a video from {type(source).__name__}; pass a file path, a Video, "
            "a uint8 (T, H, W, 3) array or a float (T, C, H, W) tensor in [0, 1]"
        )
    if source_fps is None:
        raise VideoError(
            f"array input of shape {tuple(array.shape)} carries no frame rate; "
            "pass source_fps= (Wan-2.1 writes 16 fps)"
        )
    source_fps = _check_fps(source_fps, "source_fps")
    if array.ndim == 5:
        if array.shape[0] == 0:
            raise VideoError("video batch (B, F, C, H, W) is empty (B = 0)")
        return [
            load_video(array[b], fps, source_fps=source_fps)  # type: ignore[misc]
            for b in range(array.shape[0])
        ]
    what = f"array {tuple(array.shape)} {_dtype_name(array)}"
    video = Video(_frames_from_array(array, what), source_fps, source=what)
    return video.resample(fps) if fps is not None else video


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------
def _without_interrupts(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with Ctrl-C (SIGINT) held back until it returns, on the main thread of a POSIX
    system: a pipe write to ffmpeg cut by the signal leaves it half a frame, and the job hanging on
    it (seen: 2 of 30 interrupts). The signal is delivered right after, between frames."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return fn(*args)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return fn(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_video(video: Video, path: str | os.PathLike, crf: int = 18, lossless: bool = False, audio: Any = None,
               sample_rate: int | None = None) -> Path:
    """Write ``video`` as an H.264 mp4 (yuv420p) that decord and browsers read, with its
    soundtrack if it has one.

    The file is written to a temporary name beside ``path`` and renamed when complete, so a
    killed run never leaves a truncated mp4 under the final name.

    Args:
        video: the video; its height and width must be even (yuv420p subsamples chroma 2x2).
        path: destination ``.mp4`` path; parent folders are created.
        crf: x264 constant rate factor (0 = lossless luma, 18 = visually lossless, 23 = default).
        lossless: write RGB H.264 at quantizer 0 instead (``libx264rgb -qp 0``): decoding gives
            back every frame bit for bit (checked through decord), any size; about 10x larger,
            and browsers do not play it.
        audio: a soundtrack, float ``(channels, samples)`` in [-1, 1] (an LTX-2 video's), muxed in
            as AAC at 192 kb/s; the frames are written as without it.
        sample_rate: the soundtrack's samples per second.

    Returns:
        The written path.
    """
    import imageio_ffmpeg

    if audio is not None and not sample_rate:
        raise ValueError("a soundtrack needs its sample_rate")

    path = Path(path)
    if (video.height % 2 or video.width % 2) and not lossless:
        raise VideoError(
            f"cannot save {video.source} as H.264 yuv420p: height and width must be even, got "
            f"{video.height}x{video.width}; crop or pad one row/column first"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    wav_name = None
    writer = None
    try:
        codec, pixels, params = ("libx264rgb", "rgb24", ["-qp", "0"]) if lossless else ("libx264", "yuv420p", ["-crf", str(int(crf))])
        sound: dict[str, Any] = {}
        if audio is not None:  # ffmpeg reads the soundtrack from a WAV file beside the frames it is sent
            fd, wav_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav", dir=path.parent)
            os.close(fd)
            save_wav(audio, sample_rate, wav_name)
            sound = {"audio_path": wav_name, "audio_codec": "aac"}
            params = [*params, "-b:a", "192k"]
        writer = imageio_ffmpeg.write_frames(
            tmp_name,
            (video.width, video.height),
            fps=video.fps,
            codec=codec,
            pix_fmt_in="rgb24",
            pix_fmt_out=pixels,
            quality=None,
            macro_block_size=1,
            output_params=[*params, "-movflags", "+faststart"],
            ffmpeg_log_level="error",
            **sound,
        )
        _without_interrupts(writer.send, None)  # start the generator (and ffmpeg)
        for frame in video.frames:
            _without_interrupts(writer.send, np.ascontiguousarray(frame))
        _without_interrupts(writer.close)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the video the usual mode
        os.replace(tmp_name, path)
    except BaseException:
        if writer is not None:
            # Stop ffmpeg now (imageio-ffmpeg kills it on an interrupt) instead of letting the
            # generator's clean-up wait for it to finish a file that is deleted below: a Ctrl-C
            # in that window once left a job waiting on ffmpeg forever.
            try:
                writer.throw(KeyboardInterrupt())
            except BaseException:  # noqa: BLE001 - the interrupt comes back out; the original error is raised below
                pass
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    finally:
        if wav_name is not None and os.path.exists(wav_name):
            os.unlink(wav_name)
    return path


def save_wav(audio: Any, sample_rate: int, path: str | os.PathLike) -> Path:
    """Write a soundtrack, float ``(channels, samples)`` in [-1, 1], as 16-bit PCM WAV (written
    to a temporary name and renamed when complete)."""
    import wave

    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2 or samples.shape[0] > 8:
        raise ValueError(f"a soundtrack is (channels, samples), got shape {samples.shape}")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").T  # interleaved frames
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with wave.open(str(tmp), "wb") as handle:
        handle.setnchannels(samples.shape[0])
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(pcm.tobytes())
    os.replace(tmp, path)
    return path
