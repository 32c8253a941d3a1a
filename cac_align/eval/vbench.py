"""VBench dimensions of generated videos (CaC Table 2). Job: ``cac-align eval vbench`` (:mod:`cac_align.jobs.eval_vbench`).

Three VBench dimensions, each computed by the ``vbench`` package's own metric function on one or
more systems' videos (e.g. the base model, Best-of-5 with UR, Best-of-5 with UR + CaC,
Flow-GRPO):

- ``dynamic_degree``: ``vbench.dynamic_degree.dynamic_degree`` with RAFT optical flow. Per video
  1 if the video moves (enough frame pairs with large flow) else 0; the system's value is the
  fraction of moving videos.
- ``subject_consistency``: ``vbench.subject_consistency.subject_consistency`` with DINO
  ViT-B/16 features. Per video the mean, over frames after the first, of the cosine similarity
  to the previous and to the first frame. The system's value is VBench's: the mean over all
  frame pairs of all videos (a long video weighs more), i.e. ``sum(score_i * pairs_i) /
  sum(pairs_i)``, with ``pairs`` = frames − 1 kept per video.
- ``imaging_quality``: ``vbench.imaging_quality.technical_quality`` with MUSIQ (SPAQ weights).
  Per video the mean MUSIQ score of its frames; VBench divides the system mean by 100, and so
  do we for the per-video scores, so that ``per_video`` and ``mean`` share the 0–1 scale.

Each video is scored with its own call, so every score is saved as it is made (resumable: a
rerun skips the videos already scored in ``out_dir``) and a bad video fails alone. A video that
cannot be scored (unreadable, not ``.mp4``, one frame) keeps its error in ``per_video`` and is
left out of the mean; it is never turned into a number.

**Weights** come from the vbench cache directory (``cache_dir``, else ``$VBENCH_CACHE_DIR``,
else ``~/.cache/vbench``: vbench's own rule), at the paths vbench's local mode uses (see
:data:`WEIGHTS`). vbench downloads them on first use; that cannot happen offline, so a missing
file stops the job before any model loads, with the list of missing files, where vbench expects
them, and the commands that fetch them.

Loading (safe by default): RAFT through vbench's ``DynamicDegree``, after the file is checked
here to hold tensors only (vbench's ``torch.load`` is weights-only in torch >= 2.6 anyway); MUSIQ built by pyiqa without weights, then its state dict loaded
here with ``weights_only=True`` (pyiqa's own loader unpickles arbitrary objects); DINO built by
the DINO repository's ``hubconf.py`` in the cache (as vbench does; ``pretrained=False``, so
nothing is fetched) and its state dict loaded here with ``weights_only=True``.

Outputs in ``out_dir``:

- ``vbench.json``: ``{"systems": {name: {"source", "dimensions": {dim: {"mean", "n", "failed",
  "per_video": [{"video", "prompt", "score", "error", ...}]}}}}, ...}``, which ``cac-align
  report`` reads;
- ``vbench.md`` (one row per system) and ``per_video.csv`` (one row per system and video);
- ``per_video/<system>/<dimension>.jsonl``: the rows as they were scored; ``cac_align_run.json``:
  the run manifest with the settings the scores were made with (a rerun with other settings is
  refused, key by key; docs/run_folders.md).

Install: vbench 0.1.5 pins old transformers and numpy, so it and pyiqa are installed without
their dependencies (docs/install.md). pyiqa is licensed PolyForm-Noncommercial.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cac_align.config import RecipeError
from cac_align.loading import WeightsNotFoundError

__all__ = ["DIMENSIONS", "WEIGHTS", "aggregate", "check_weights", "load_backbone", "missing_weights", "score_video", "vbench_cache_dir"]

DIMENSIONS = ("dynamic_degree", "subject_consistency", "imaging_quality")

_DINO_REPO = "dino_model/facebookresearch_dino_main"
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
_RAFT_URL = "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip"
_MUSIQ_URL = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth"


@dataclass(frozen=True)
class WeightFile:
    """One file a dimension needs, relative to the vbench cache, and the commands that fetch it
    (``$CACHE`` stands for the cache directory)."""

    key: str
    path: str
    fetch: str


# The paths are vbench 0.1.5's (``vbench.utils.init_submodules``, local mode).
WEIGHTS: dict[str, list[WeightFile]] = {
    "dynamic_degree": [
        WeightFile(
            "raft",
            "raft_model/models/raft-things.pth",
            f"wget -P $CACHE/raft_model {_RAFT_URL} && unzip -d $CACHE/raft_model $CACHE/raft_model/models.zip",
        ),
    ],
    "subject_consistency": [
        WeightFile(
            "dino_repo",
            f"{_DINO_REPO}/hubconf.py",
            f"git clone https://github.com/facebookresearch/dino $CACHE/{_DINO_REPO}",
        ),
        WeightFile("dino", "dino_model/dino_vitbase16_pretrain.pth", f"wget -P $CACHE/dino_model {_DINO_URL}"),
    ],
    "imaging_quality": [
        WeightFile("musiq", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", f"wget -P $CACHE/pyiqa_model {_MUSIQ_URL}"),
    ],
}

IQ_MODES = ("longer", "shorter", "shorter_centercrop", "None")
SYSTEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------
def vbench_cache_dir(cache_dir: str | None = None) -> Path:
    """The vbench cache: ``cache_dir``, else ``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench``."""
    return Path(cache_dir or os.environ.get("VBENCH_CACHE_DIR") or Path("~/.cache/vbench")).expanduser()


def missing_weights(dimensions: Sequence[str], cache_dir: str | None = None) -> list[tuple[str, WeightFile]]:
    """(dimension, file) for every needed file absent from the cache."""
    cache = vbench_cache_dir(cache_dir)
    return [(dim, item) for dim in dimensions for item in WEIGHTS[dim] if not (cache / item.path).is_file()]


def check_weights(dimensions: Sequence[str], cache_dir: str | None = None) -> dict[str, dict[str, Path]]:
    """The weight paths per dimension; raises :class:`WeightsNotFoundError` naming every
    missing file, where vbench expects it and how to get it."""
    cache = vbench_cache_dir(cache_dir)
    missing = missing_weights(dimensions, cache_dir)
    if missing:
        source = f"cache_dir={cache_dir}" if cache_dir else (
            "$VBENCH_CACHE_DIR" if os.environ.get("VBENCH_CACHE_DIR") else "the default ~/.cache/vbench"
        )
        lines = [f"VBench weights are missing from the vbench cache directory {cache} ({source}):"]
        lines += [f"  {dim}: {cache / item.path}" for dim, item in missing]
        lines.append("vbench downloads these on first use, which this job never does. On a machine with internet, run:")
        lines.append(f"  CACHE={cache}")
        lines += [f"  {item.fetch}" for item in dict.fromkeys(item for _, item in missing)]
        lines.append(
            "and copy the files to those paths here, or point cache_dir=<folder> (or $VBENCH_CACHE_DIR) at a "
            "folder that holds them."
        )
        raise WeightsNotFoundError("\n".join(lines))
    return {dim: {item.key: cache / item.path for item in WEIGHTS[dim]} for dim in dimensions}


def import_vbench() -> None:
    """Import vbench's metric modules, or say how to install them."""
    try:
        import vbench.dynamic_degree  # noqa: F401
        import vbench.imaging_quality  # noqa: F401
        import vbench.subject_consistency  # noqa: F401
    except ImportError as exc:
        raise RecipeError(
            f"eval vbench needs the vbench package ({exc}). Install it without its pins (it wants transformers "
            "4.33 and numpy<2): pip install -e '.[eval]' && pip install --no-deps -r requirements-vbench.txt"
        ) from None


def _state_dict(path: Path) -> dict:
    """Tensors only: safetensors, or ``torch.load(weights_only=True)``."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported with the path
        raise WeightsNotFoundError(f"could not read {path} as a tensors-only checkpoint: {exc}") from None
    for key in ("state_dict", "params", "model"):  # common wrappers around the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(dimension: str, files: dict[str, Path], device: Any) -> Any:
    """The network vbench's metric function for ``dimension`` takes, on ``device``, in eval mode."""
    import torch

    import_vbench()
    if dimension == "dynamic_degree":
        from easydict import EasyDict
        from vbench.dynamic_degree import DynamicDegree

        _state_dict(files["raft"])  # refuse anything but tensors before vbench's own torch.load reads it
        # vbench's own args for RAFT-things (vbench.dynamic_degree.compute_dynamic_degree)
        args = EasyDict({"model": str(files["raft"]), "small": False, "mixed_precision": False, "alternate_corr": False})
        return DynamicDegree(args, device)
    if dimension == "subject_consistency":
        repo = files["dino_repo"].parent
        model = torch.hub.load(str(repo), "dino_vitb16", source="local", pretrained=False)
        model.load_state_dict(_state_dict(files["dino"]), strict=True)
        return model.to(device).eval()
    if dimension == "imaging_quality":
        from pyiqa.archs.musiq_arch import MUSIQ

        model = MUSIQ(pretrained=False)  # num_class=1: the SPAQ head, as vbench builds it
        model.load_state_dict(_state_dict(files["musiq"]), strict=True)
        return model.to(device).eval()
    raise ValueError(f"unknown dimension {dimension!r}")


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------
def _frame_count(path: str) -> int:
    """Frames vbench's ``load_video`` reads from an mp4 (all of them, with decord)."""
    from decord import VideoReader

    return len(VideoReader(path, num_threads=1))


def score_video(dimension: str, backbone: Any, path: str, device: Any, preprocessing_mode: str = "longer") -> dict:
    """One video's score by vbench's metric function: ``{"score", "error"}`` (+ ``pairs`` for
    subject consistency). Never raises for a bad video: the error is returned instead."""
    import torch

    row: dict[str, Any] = {"video": path, "score": None, "error": None}
    if not path.lower().endswith(".mp4"):
        row["error"] = "vbench reads .mp4 files only; convert it first (ffmpeg -i in.webm out.mp4)"
        return row
    if not Path(path).is_file():
        row["error"] = "no such file"
        return row
    captured = io.StringIO()
    try:
        # vbench draws a progress bar per call; one-video bars are noise under ours.
        with torch.no_grad(), contextlib.redirect_stderr(captured):
            if dimension == "dynamic_degree":
                from vbench.dynamic_degree import dynamic_degree

                _, results = dynamic_degree(backbone, [path])
                row["score"] = float(bool(results[0]["video_results"]))
            elif dimension == "subject_consistency":
                from vbench.subject_consistency import subject_consistency

                pairs = _frame_count(path) - 1
                if pairs < 1:
                    raise ValueError("the video has a single frame; consistency needs two")
                _, results = subject_consistency(backbone, [path], device, False)
                row["score"], row["pairs"] = float(results[0]["video_results"]), pairs
            elif dimension == "imaging_quality":
                from vbench.imaging_quality import technical_quality

                _, results = technical_quality(backbone, [path], device, imaging_quality_preprocessing_mode=preprocessing_mode)
                row["score"] = float(results[0]["video_results"]) / 100.0
            else:
                raise ValueError(f"unknown dimension {dimension!r}")
        if not math.isfinite(row["score"]):
            raise ValueError(f"the metric returned {row['score']}")
    except Exception as exc:  # noqa: BLE001 - a bad video is recorded, never fatal
        row["score"] = None
        row.pop("pairs", None)
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        row["error"] = f"{type(exc).__name__}: {message}".rstrip(": ")
    return row


def aggregate(dimension: str, rows: Sequence[dict]) -> float | None:
    """The system's value from its scored rows, as vbench computes it (module doc); None when
    no video was scored."""
    scored = [r for r in rows if r.get("score") is not None]
    if not scored:
        return None
    if dimension == "subject_consistency":
        pairs = sum(r["pairs"] for r in scored)
        return sum(r["score"] * r["pairs"] for r in scored) / pairs
    return sum(r["score"] for r in scored) / len(scored)


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------


