"""Metrics: per-process sums merged into means, and the one logger (``metrics.jsonl`` on the
main process plus accelerate's trackers) of both GRPO trainers; the evaluation videos in the trackers
(:func:`log_eval_videos`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["TRACKER_VIDEO_SIDE", "EvalVideo", "end_trackers", "flush_wandb", "gif_bytes", "log_eval_videos", "log_metrics", "merge_sums", "world_means"]


def merge_sums(parts: Sequence[dict[str, tuple[float, float]]]) -> dict[str, float]:
    """Merge per-process ``{name: (sum, count)}`` into means over all processes; names whose
    total count is 0 are left out."""
    totals: dict[str, list[float]] = {}
    for part in parts:
        for name, (value, count) in part.items():
            entry = totals.setdefault(name, [0.0, 0.0])
            entry[0] += value
            entry[1] += count
    return {name: value / count for name, (value, count) in totals.items() if count > 0}


def world_means(sums: dict[str, float], counts: dict[str, float] | float) -> dict[str, float]:
    """Means over every process of per-process ``sums`` of ``counts`` terms each (one count for every
    name, or one a name): what a trainer logs of its losses, the world's mean and not one process's
    (:func:`merge_sums` of every process's pairs). A collective: call on every process, whatever its
    names (a process whose terms were all dropped sends none of them)."""
    from accelerate.utils import gather_object

    mine = {name: (value, counts if isinstance(counts, (int, float)) else counts[name]) for name, value in sums.items()}
    return merge_sums(gather_object([mine]))


def log_metrics(accelerator: Accelerator, out: str | Path, step: int, metrics: dict[str, Any], trackers: bool = True) -> None:
    """Log one step: a ``metrics.jsonl`` line on the main process (non-finite numbers as null)
    and, with ``trackers``, accelerate's trackers (finite numbers only). Call on every process."""
    if trackers:
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}, step=step)
    if accelerator.is_main_process:
        line = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with open(Path(out) / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


# ---------------------------------------------------------------------------------------
# Trackers: which of accelerate's a run logs to
# ---------------------------------------------------------------------------------------
LOG_WITH = {"none": (), "tensorboard": ("tensorboard",), "wandb": ("wandb",), "both": ("tensorboard", "wandb")}


def trackers_for(log_with: str, key: str = "log_with") -> tuple[str, ...]:
    """accelerate's tracker names for a recipe's ``log_with`` ("tensorboard", "wandb", "both" or
    "none"). Weights & Biases is an optional dependency: asking for it without the package is an
    error here, at recipe-check time, with the install line; it is imported only when asked for."""
    if log_with not in LOG_WITH:
        raise ValueError(f"{key} must be one of {', '.join(repr(k) for k in LOG_WITH)}, got {log_with!r}")
    names = LOG_WITH[log_with]
    if "wandb" in names:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ValueError(f"{key}={log_with!r} needs Weights & Biases: pip install 'cac_align[wandb]' (or pip install wandb); "
                             "WANDB_MODE=offline logs without an account or network")
    return names


def start_trackers(accelerator: Accelerator, log_with: str, project: str, run_name: str, out: str | Path, config: dict[str, Any],
                   resume_step: int = 0) -> None:
    """Start the run's trackers (call on every process; accelerate starts them on the main one):
    TensorBoard under the accelerator's logging dir, Weights & Biases with ``run_name``, the whole
    resolved ``config`` and its files under ``out/wandb``, in the W&B project ``project``
    (``WANDB_ENTITY``, ``WANDB_MODE`` etc. apply as usual). TensorBoard gets no hparams: its
    hparams table takes flat scalars only.

    ``resume_step``: the step of the checkpoint a resumed run starts from. TensorBoard then drops what
    the stopped run logged after it (``SummaryWriter(purge_step=resume_step + 1)``: the killed run's
    last steps, which this run logs again), as ``metrics.jsonl`` does (:func:`~cac_align.run.folder.keep_log_steps`)."""
    names = trackers_for(log_with)
    if names:
        init_kwargs: dict[str, Any] = {"wandb": {"name": run_name, "config": config, "dir": str(out)}} if "wandb" in names else {}
        if resume_step and "tensorboard" in names:
            init_kwargs["tensorboard"] = {"purge_step": resume_step + 1}
        accelerator.init_trackers(project, init_kwargs=init_kwargs)


def flush_wandb() -> None:
    """Wait until Weights & Biases has written the runs this process finished.

    ``run.finish()`` only tells W&B's service process that the run is done; the service writes the
    rest of the run's record (``run-*.wandb``, what ``wandb sync`` uploads) afterwards, so right
    after ``finish()`` an offline record can still be its 7-byte header (seen with wandb 0.31).
    ``wandb.teardown()`` waits for the service to write everything and stop. It would also finish
    any run still open in this process, so it is called only when none is (a user's own run then
    completes with their own finish or at exit). A later ``wandb.init`` starts a new service.
    Nothing happens when wandb was never imported.
    """
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    if getattr(wandb, "run", None) is not None:
        return
    try:
        from wandb.sdk import wandb_setup

        if wandb_setup.singleton().most_recent_active_run is not None:
            return
    except (ImportError, AttributeError):  # another wandb layout: the global run above decided
        pass
    wandb.teardown()


def end_trackers(accelerator: Accelerator) -> None:
    """Finish the run's trackers (call on every process) and return once what they write is on
    disk: accelerate's ``end_training()``, then :func:`flush_wandb` on the main process.

    ``end_training()`` also destroys the process group, each process on its own; every process
    first waits for the others here, so none tears its group down while another still works in
    it (the main process writing the LoRA files): a worker of a 2-process gloo run that did aborted
    at exit ("terminate called without an active exception", seen once under load, 2026-11-27)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process:
        flush_wandb()


# ---------------------------------------------------------------------------------------
# The evaluation videos in the trackers
# ---------------------------------------------------------------------------------------
# TensorBoard's videos are animated GIFs inside its image summaries (what torch's ``add_video`` writes), shown
# as previews: the longer side at most this many pixels, so 30 evaluations of a few 480p videos stay megabytes.
TRACKER_VIDEO_SIDE = 256


@dataclass(frozen=True)
class EvalVideo:
    """One saved evaluation video as the trackers get it.

    Attributes:
        tag: its name under ``eval/videos/`` (``00000_a-red-ball``: the prompt's index and slug, as its mp4).
        path: the mp4 the run saved (``eval/step_N/...``).
        prompt: its held-out prompt.
        scores: the trained reward's (``reward``) and each held-out judge's score by label; None: invalid.
    """

    tag: str
    path: Path
    prompt: str
    scores: dict[str, float | None] = field(default_factory=dict)


def gif_bytes(frames: Any, fps: float, side: int = TRACKER_VIDEO_SIDE) -> bytes:
    """``frames`` ``(T, H, W, 3)`` uint8 as an animated GIF (looping, Pillow's encoder), scaled down so its
    longer side is at most ``side`` pixels (never up)."""
    import io

    import numpy as np
    from PIL import Image

    frames = np.asarray(frames)
    height, width = frames.shape[1:3]
    scale = min(1.0, side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    images = [Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR) if scale < 1 else Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return buffer.getvalue()


def _tensorboard_video(writer: Any, tag: str, frames: Any, fps: float, step: int) -> None:
    """One video in TensorBoard as ``SummaryWriter.add_video`` writes it (an image summary holding an animated
    GIF, shown in the Images tab), encoded here with Pillow: torch's own encoder needs moviepy's 1.x API."""
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    data = gif_bytes(frames, fps)
    width, height = Image.open(io.BytesIO(data)).size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()


def log_eval_videos(accelerator: Accelerator, step: int, videos: Sequence[EvalVideo], fps: float) -> None:
    """The saved evaluation videos of ``step`` in the run's trackers, beside the ``eval/`` scalars (main
    process only; the others return at once):

    - TensorBoard: each video under ``eval/videos/<tag>`` (an animated GIF preview, :data:`TRACKER_VIDEO_SIDE`);
    - Weights & Biases: each under ``eval/videos/<tag>`` (``wandb.Video`` of the mp4 itself, with its
      soundtrack where it has one), and ``eval/samples``: a ``wandb.Table`` of prompt, step, video and every
      score, one row per video.

    ``fps``: the videos' frame rate (the GIF's). Nothing is logged without a tracker or without videos."""
    if not accelerator.is_main_process or not videos:
        return
    names = {tracker.name for tracker in accelerator.trackers}
    if "tensorboard" in names:
        from cac_align.video import load_video

        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for video in videos:
            _tensorboard_video(writer, f"eval/videos/{video.tag}", load_video(video.path).frames, fps, step)
    if "wandb" in names:
        import wandb

        run = accelerator.get_tracker("wandb", unwrap=True)
        labels = list(dict.fromkeys(label for video in videos for label in video.scores))
        table = wandb.Table(columns=["prompt", "step", "video", *labels])
        logged: dict[str, Any] = {}
        for video in videos:
            logged[f"eval/videos/{video.tag}"] = wandb.Video(str(video.path), caption=video.prompt)
            # a media object of its own in the table (one already logged under a key is written there as its class name)
            table.add_data(video.prompt, step, wandb.Video(str(video.path), caption=video.prompt), *[video.scores.get(label) for label in labels])
        logged["eval/samples"] = table
        run.log(logged, step=step)
