"""Which VLM answers a reward's questions, and how it is built: :class:`ModelConfig`.

A recipe names a model by hub id, local folder, served model name (``backend: openai``) or
``tiny-random:qwen3_vl`` / ``tiny-random:qwen2_5_vl`` (a tiny random model built in-process for
offline runs and tests; its answers are meaningless). :func:`build_backend` turns that into a
:class:`~cac_align.vlm.backend.Backend`.

Inside ``with shared_backends(cache):`` every :func:`build_backend` call for an equal
:class:`ModelConfig` returns the one backend already in ``cache`` (a plain dict the caller
keeps): rewards built there share their models. The Flow-GRPO drop-in uses this so that its
training and eval reward functions, and a ``ur_cac`` beside a ``cac``, load each checkpoint
once per process and device. Backends lock around their calls, so sharing one across a
thread pool is safe.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from omegaconf import MISSING

from cac_align.config import RecipeError

__all__ = ["DEFAULT_BASE_URL", "ModelConfig", "TINY_PREFIX", "build_backend", "build_tiny_vlm", "model_dtype", "served_urls", "shared_backends"]

TINY_PREFIX = "tiny-random:"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # servers are on localhost unless a recipe says otherwise
DEFAULT_DTYPE = "bfloat16"  # a model's compute dtype when neither the recipe nor its folder says one


@dataclass
class ModelConfig:
    """Which VLM answers, and how it is loaded.

    Attributes:
        name: hub id ("Qwen/Qwen3-VL-8B-Instruct"), a local checkpoint folder, "cac-demo" (the
            small CaC trained on synthetic scenes that ships with the package), or
            "tiny-random:qwen3_vl" for the tiny random model built in-process (meaningless scores).
            With ``backend: openai`` it is the served model name.
        backend: "hf" (in-process transformers) or "openai" (an OpenAI-compatible server: vLLM).
        base_url: the server's root including /v1 (``backend: openai``); localhost by default.
        api_key_env: name of an environment variable holding the server's API key (keys are
            never written in recipes).
        dtype: the compute dtype; unset (null): the model folder's ``cac_align.json`` ``dtype``
            (``cac-demo``: float32, what it was trained in), else bfloat16.
        device, attn_implementation, trust_remote_code: passed to ``load_vlm``.
        max_batch_size: requests per forward pass (hf) or concurrent HTTP requests (openai);
            the rewards score this many videos together (their one batch setting).
        timeout_s, max_retries: per-request timeout and retries with backoff (openai): a
            request's deadline is ``timeout_s + timeout_per_mb_s`` per MB of its body (a long
            video's frames travel losslessly), and it is sent again after a connection error, a
            timeout or HTTP 408, 429 or 5xx, never after another 4xx (the request is wrong).
        backoff_s, max_backoff_s: the first retry's delay, doubling up to ``max_backoff_s``, each
            drawn between half and all of it (openai).
        cooldown_s: an open circuit breaker (``failure_limit``) asks the server again after this
            long, and closes when it answers: a judge that was restarted is used again (openai).
        liveness_s: when no request of a batch has finished for this long, the server is asked
            whether it is alive (vLLM's ``/health``); a server that is gone ends the batch then,
            its unanswered samples invalid ("down"), the answered ones scored (openai).
        video_input: how the openai backend sends a video: "video" (each video as one lossless
            part with its own metadata, read by this package's vLLM plugin: ``cac-align serve``
            starts such a server; the model sees the video input it was trained on) or "images"
            (frames as images with text stamps, for servers without the plugin).
        failure_limit: the openai backend's circuit breaker: after this many failed requests in
            a row (or one, when the server no longer lists its models), the job stops with one
            line instead of waiting out every remaining video's timeouts.
        cache: the hf backend's KV cache for generation: "auto" (the default: static on a CUDA
            device from the first call that brings a full batch, ``max_batch_size`` requests and
            never a single one; dynamic before that and on a CPU), "dynamic" (transformers'
            default) or "static" (preallocated; the decode step compiled on CUDA; batches in
            shape buckets, see :class:`~cac_align.vlm.hf.HFBackend`). Same answers and
            probabilities.
        batch_buckets: static cache: batch sizes a batch is padded up to (default 1, 4, 8, 16,
            32, capped at ``max_batch_size``; with "auto", ``max_batch_size`` alone).
        length_multiple: static cache: prompt and cache lengths round up to this many tokens.
        chat_template_kwargs: extra settings for the model's chat template, on every request
            (e.g. ``{enable_thinking: false}``, which UnifiedReward's qwen35 checkpoints are asked
            with): given to ``apply_chat_template`` in-process and sent as the request's
            ``chat_template_kwargs`` to a server (vLLM renders the template with them).
        session_header: the openai backend's session header (null: none): every request of one
            video's judgment carries the same key in it, so a consistent-hash router in front of
            several replicas (``cac-align serve replicas=N``) keeps that video on one replica,
            where its prefix is cached (:class:`~cac_align.vlm.openai.OpenAIBackend`).
    """

    name: str = MISSING
    backend: str = "hf"
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str | None = None
    dtype: str | None = None
    device: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    max_batch_size: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    timeout_per_mb_s: float = 1.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    cooldown_s: float = 15.0
    liveness_s: float = 20.0
    failure_limit: int = 3
    video_input: str = "video"
    cache: str = "auto"
    batch_buckets: list[int] | None = None
    length_multiple: int = 256
    chat_template_kwargs: dict[str, Any] | None = None
    session_header: str | None = "X-Session-ID"

    def __post_init__(self) -> None:
        from urllib.parse import urlparse

        from cac_align.loading import check_dtype

        if self.dtype is not None:
            check_dtype(self.dtype, "model.dtype")
        parsed = urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"model.base_url={self.base_url!r} is not a server URL; give one like http://127.0.0.1:8000/v1")
        if self.cache not in ("auto", "dynamic", "static"):
            raise ValueError(f"model.cache must be 'auto', 'dynamic' or 'static', got {self.cache!r}")
        if self.length_multiple < 1 or (self.batch_buckets is not None and min(self.batch_buckets, default=0) < 1):
            raise ValueError("model.length_multiple and every model.batch_buckets size must be >= 1")
        if self.video_input not in ("video", "images"):
            raise ValueError(f"model.video_input must be 'video' or 'images', got {self.video_input!r}")
        if self.backend not in ("hf", "openai"):
            raise ValueError(f"model.backend must be 'hf' or 'openai', got {self.backend!r}")
        if self.max_batch_size < 1:
            raise ValueError(f"model.max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("model.timeout_s must be > 0 and model.max_retries >= 0")
        for name in ("timeout_per_mb_s", "backoff_s", "max_backoff_s", "cooldown_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if not self.liveness_s > 0:
            raise ValueError(f"model.liveness_s must be > 0, got {self.liveness_s}")

    def with_model_settings(self) -> "ModelConfig":
        """This config with ``dtype`` resolved (:func:`model_dtype`)."""
        import dataclasses

        return self if self.dtype is not None else dataclasses.replace(self, dtype=model_dtype(self))


_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("cac_align_shared_backends", default=None)
_SHARED_LOCK = threading.Lock()


def served_urls(section: Any) -> list[str]:
    """The server addresses a reward section reaches (every ``model`` with ``backend: openai``,
    however deep: a combined reward's components too), in order, each once."""
    found: list[str] = []
    if isinstance(section, dict):
        model = section.get("model")
        if isinstance(model, dict) and model.get("backend") == "openai":
            found.append(str(model.get("base_url") or DEFAULT_BASE_URL))
        for value in section.values():
            found += served_urls(value)
    elif isinstance(section, list):
        for value in section:
            found += served_urls(value)
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def shared_backends(cache: dict) -> Iterator[dict]:
    """Share backends between the rewards built inside this block (module docstring).

    Args:
        cache: where backends are kept, keyed by their :class:`ModelConfig` (as JSON); keep the
            same dict across blocks to share across them.
    """
    token = _SHARED.set(cache)
    try:
        yield cache
    finally:
        _SHARED.reset(token)


def model_dtype(model: ModelConfig) -> str:
    """The compute dtype to load ``model`` in: ``model.dtype`` when set, else its folder's
    ``cac_align.json`` ``dtype`` (``cac-demo``: float32, what it was trained in), else bfloat16."""
    if model.dtype is not None:
        return model.dtype
    from cac_align.loading import check_dtype
    from cac_align.models import model_settings

    dtype = str(model_settings(model.name).get("dtype", DEFAULT_DTYPE))
    check_dtype(dtype, f"{model.name}/cac_align.json dtype")
    return dtype


def build_backend(model: ModelConfig, key: str = "model") -> Any:
    """The backend ``model`` names (tiny random models are built in-process, not downloaded).

    ``key`` is where ``model`` sits in the recipe ("reward.cac.model"), named in errors.
    Inside :func:`shared_backends`, an equal config returns the backend already built.
    """
    cache = _SHARED.get()
    if cache is None:
        return _build_backend(model, key)
    fingerprint = json.dumps(dataclasses.asdict(model), sort_keys=True)
    with _SHARED_LOCK:  # two threads building the same model must not load it twice
        if fingerprint not in cache:
            cache[fingerprint] = _build_backend(model, key)
        return cache[fingerprint]


def _build_backend(model: ModelConfig, key: str) -> Any:
    from cac_align.vlm.hf import HFBackend

    if model.backend == "openai":
        from cac_align.vlm.openai import OpenAIBackend

        api_key = None
        if model.api_key_env:
            api_key = os.environ.get(model.api_key_env)
            if api_key is None:
                raise RecipeError(f"{key}.api_key_env={model.api_key_env!r}: that environment variable is not set")
        backend = OpenAIBackend(
            model.name,
            base_url=model.base_url,
            api_key=api_key,
            timeout_s=model.timeout_s,
            timeout_per_mb_s=model.timeout_per_mb_s,
            max_retries=model.max_retries,
            backoff_s=model.backoff_s,
            max_backoff_s=model.max_backoff_s,
            cooldown_s=model.cooldown_s,
            liveness_s=model.liveness_s,
            max_workers=model.max_batch_size,
            failure_limit=model.failure_limit,
            video_input=model.video_input,
            chat_template_kwargs=model.chat_template_kwargs,
            session_header=model.session_header,
        )
        backend.check()  # a dead server or a wrong model name fails here, in seconds, not per sample
        return backend

    if model.name.startswith(TINY_PREFIX):
        tiny = build_tiny_vlm(model.name, f"{key}.name")
        return HFBackend(tiny.model, tiny.processor, max_batch_size=model.max_batch_size, **_cache_kwargs(model),
                         chat_template_kwargs=model.chat_template_kwargs)
    return HFBackend.from_pretrained(
        model.name,
        max_batch_size=model.max_batch_size,
        backend_kwargs={**_cache_kwargs(model), "chat_template_kwargs": model.chat_template_kwargs},
        dtype=model_dtype(model),
        device=model.device,
        attn_implementation=model.attn_implementation,
        trust_remote_code=model.trust_remote_code,
        key=f"{key}.name",
    )


def build_tiny_vlm(name: str, key: str, seed: int = 0, kinds: tuple[str, ...] | None = None,
                   extra: Mapping[str, Callable[[int], Any]] | None = None) -> Any:
    """The tiny random VLM named ``tiny-random:<kind>`` (a :class:`~cac_align.vlm.tiny.TinyVLM`,
    built in-process with ``seed``); ``kinds`` narrows the accepted kinds (default: every one
    :data:`~cac_align.vlm.tiny.TINY_VLM_BUILDERS` knows, and ``extra``'s: kind -> builder(seed), a
    caller's own). Another name raises a :class:`~cac_align.config.RecipeError` naming ``key`` and
    the accepted names."""
    from cac_align.vlm.tiny import TINY_VLM_BUILDERS

    builders = {**TINY_VLM_BUILDERS, **(extra or {})}
    kinds = tuple(builders) if kinds is None else kinds
    kind = name[len(TINY_PREFIX) :] if name.startswith(TINY_PREFIX) else None
    if kind not in kinds:
        accepted = ", ".join(repr(TINY_PREFIX + k) for k in kinds)
        raise RecipeError(f"{key}={name!r}: the random VLMs here are {accepted}")
    return builders[kind](seed)


def _cache_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The in-process backend's KV-cache settings from a model section."""
    return {"cache": model.cache, "batch_buckets": model.batch_buckets, "length_multiple": model.length_multiple}
