"""A sampled video as one lossless payload with its own metadata, for a server (vLLM) to read.

The OpenAI backend sends each video as ``data:video/x-npz;base64,<npz>``: an ``.npz`` archive of
``frames`` (T, H, W, 3) uint8, the frames the in-process backend gives its processor, and
``meta``, a JSON string with ``fps`` (of the frame index grid), ``frames_indices`` (index / fps =
source seconds) and ``total_num_frames``. On the server, the ``cac_frames`` video loader of
:mod:`cac_align.integrations.vllm` reads it back. The archive is read with ``allow_pickle=False``:
nothing received is unpickled. numpy only, so it loads in vLLM's environment too.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

__all__ = ["LOADER", "MEDIA_TYPE", "decode_video", "encode_video"]

LOADER = "cac_frames"  # the vLLM video loader that reads this payload (integrations/vllm)
MEDIA_TYPE = "video/x-npz"


def encode_video(frames: np.ndarray, fps: float, frames_indices: list[int]) -> str:
    """A data URL holding a sampled video: ``frames`` (T, H, W, 3) uint8 and its metadata
    (``fps`` of the index grid, ``frames_indices`` on it; ``index / fps`` = source seconds)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames_indices) != len(frames):
        raise ValueError(f"frames must be (T, H, W, 3) uint8 with one index each, got {frames.shape} {frames.dtype} and {len(frames_indices)} indices")
    frames = np.ascontiguousarray(frames)
    meta = {"fps": float(fps), "frames_indices": [int(i) for i in frames_indices], "total_num_frames": len(frames)}
    buffer = io.BytesIO()
    np.savez(buffer, frames=frames, meta=np.array(json.dumps(meta)))
    return f"data:{MEDIA_TYPE};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_video(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """(frames, metadata) of what :func:`encode_video` wrote (the URL's bytes after base64);
    ``ValueError`` for anything else. Never unpickles."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            frames = archive["frames"]
            meta = json.loads(str(archive["meta"]))
    except Exception as exc:  # noqa: BLE001 - any malformed payload is the client's error
        raise ValueError(f"not a {MEDIA_TYPE} video ({exc.__class__.__name__}: {exc})") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{MEDIA_TYPE}: frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    indices = meta.get("frames_indices")
    fps = meta.get("fps")
    if not isinstance(indices, list) or len(indices) != len(frames) or not isinstance(fps, (int, float)) or fps <= 0:
        raise ValueError(f"{MEDIA_TYPE}: metadata needs fps > 0 and one frame index per frame, got {meta}")
    total = int(meta.get("total_num_frames", len(frames)))
    return frames, {"fps": float(fps), "frames_indices": [int(i) for i in indices], "total_num_frames": total,
                    "duration": total / float(fps), "video_backend": LOADER, "do_sample_frames": False}
