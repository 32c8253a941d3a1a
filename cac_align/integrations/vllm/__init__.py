"""What a vLLM server needs to see our judges' videos as the in-process backend shows them.

Two things differ between vLLM 0.32 and transformers for a video, both measured on the same
Qwen3-VL weights with identical prompt token ids (tests/conformance/):

1. **Per-video metadata.** CaC's turn 2 holds two videos, the 4 fps scan and the 8 fps clip,
   each with its own source timestamps. vLLM's own video inputs take ``fps`` and frame indices
   once per request (``media_io_kwargs``), not per video. This plugin registers a video loader,
   ``cac_frames``, that reads each video from a ``data:video/x-npz;base64,...`` URL holding its
   already sampled frames (uint8, lossless) and its own metadata (:mod:`cac_align.vlm.video_payload`),
   and hands vLLM's processor the frames with ``do_sample_frames=False``, as
   :func:`cac_align.vlm.hf.processor_inputs` does.
2. **Normalisation.** By default vLLM normalises video pixels on the device with the *image*
   processor's mean and std (``mm_device_do_normalize``); a checkpoint whose video processor
   normalises otherwise (cac-demo: CLIP constants for images, 0.5 for video, as transformers'
   Qwen3-VL processors default) is then shown other pixels than it was trained on (P(normal) off
   by up to 0.18). ``--no-mm-device-do-normalize`` keeps normalisation in the processor.
   ``tests/conformance/repro_video_normalization.py`` reproduces it in one file.

:data:`SERVER_ARGS` are the server flags both need; ``cac-align serve`` passes them. The plugin is
found through the ``vllm.general_plugins`` entry point once ``cac_align`` is installed in the
server's environment (``pip install --no-deps``: vLLM pins its own transformers;
``tests/conformance/build_vllm_venv.sh``).

This module and the payload format import numpy only (vLLM itself inside :func:`register`), so
they load in vLLM's environment without this package's dependencies.
"""

from __future__ import annotations

import json
from typing import Any

from cac_align.vlm.video_payload import LOADER, decode_video

__all__ = ["SERVER_ARGS", "register"]

SERVER_ARGS = ["--no-mm-device-do-normalize", "--media-io-kwargs", json.dumps({"video": {"video_backend": LOADER}})]


def register() -> None:
    """vLLM's plugin hook (entry point ``vllm.general_plugins``): registers the ``cac_frames``
    video loader. Idempotent; vLLM calls it in every process it starts."""
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

    if LOADER in VIDEO_LOADER_REGISTRY.name2class:
        return

    @VIDEO_LOADER_REGISTRY.register(LOADER)
    class CaCFramesLoader(VideoLoader):
        """Frames already sampled by the client, each video with its own metadata."""

        @classmethod
        def load_bytes(cls, data: bytes, num_frames: int = -1, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
            return decode_video(data)
