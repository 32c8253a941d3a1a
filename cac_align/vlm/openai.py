"""A Backend that talks to an OpenAI-compatible chat server (vLLM, sglang) serving the VLM.

Videos travel as their frames: for each frame a text part ``<t=1.250 s>`` followed by an
``image_url`` part holding a base64 JPEG/PNG data URL, so any server that accepts images sees
the same timestamps the in-process backend states. Still images go as one ``image_url`` part each.

``choice_probs`` uses vLLM's documented extensions of the chat API: the assistant prefix
plus a candidate is sent as an unfinished assistant message (``continue_final_message=true``,
``add_generation_prompt=false``) with ``prompt_logprobs=0`` and ``return_token_ids=true``,
which return the log-probability of every prompt token. The candidate's tokens are the ones
after the longest common prefix with the prefix-only prompt; their log-probabilities are summed,
so every token of the candidate is teacher-forced.

Responses are JSON, never unpickled. The default URL is localhost; timeouts and retries with
exponential backoff are configurable, and an unreachable server raises
:class:`ServerUnavailableError` naming the URL.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from cac_align.vlm.backend import ChatRequest, Completion

__all__ = ["OpenAIBackend", "ServerUnavailableError"]


class ServerUnavailableError(ConnectionError):
    """The server could not be reached or kept failing; the message names the URL."""


class OpenAIBackend:
    """Backend over HTTP for an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        model: the served model name (``--served-model-name`` in vLLM).
        base_url: server root including ``/v1``.
        api_key: sent as a bearer token when given.
        timeout_s: per-request timeout.
        max_retries: retries after a connection error, timeout or 5xx/429 answer.
        backoff_s: first retry delay; doubles each retry.
        image_format: "jpeg" (smaller) or "png" (lossless) for frames.
        max_workers: concurrent HTTP requests.
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
    ):
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.image_format = image_format
        self.max_workers = max_workers

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
                if part.get("type") == "video":
                    video = part["video"]
                    for frame, stamp in zip(video.frames, video.timestamps):
                        parts.append({"type": "text", "text": f"<t={stamp:.3f} s>"})
                        parts.append({"type": "image_url", "image_url": {"url": self._frame_url(frame)}})
                elif part.get("type") == "image":
                    parts.append({"type": "image_url", "image_url": {"url": self._frame_url(part["image"])}})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            if message["role"] == "assistant":  # assistant turns are plain text
                messages.append({"role": "assistant", "content": "".join(p["text"] for p in parts)})
            else:
                messages.append({"role": message["role"], "content": parts})
        return messages

    def _post(self, body: dict) -> dict:
        import requests

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = requests.post(self.url, data=json.dumps(body), headers=headers, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last_error = f"{exc.__class__.__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code != 200:
                raise ServerUnavailableError(f"{self.url} rejected the request: HTTP {response.status_code}: {response.text[:500]}")
            try:
                return response.json()
            except ValueError:
                raise ServerUnavailableError(f"{self.url} answered with non-JSON: {response.text[:200]!r}") from None
        raise ServerUnavailableError(f"{self.url} unreachable after {self.max_retries + 1} attempts: {last_error}")

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(pool.map(fn, items))

    # -- Backend protocol -------------------------------------------------------------------
    def generate(
        self,
        requests: Sequence[ChatRequest],
        max_new_tokens: int = 1024,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Completion]:
        def one(request: ChatRequest) -> Completion:
            body = {"model": self.model, "messages": self._messages(request), "max_tokens": max_new_tokens,
                    "temperature": temperature, "top_p": top_p}
            if seed is not None:
                body["seed"] = seed
            answer = self._post(body)
            try:
                text = answer["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise ServerUnavailableError(f"{self.url} answered without choices[0].message.content: {str(answer)[:200]}") from None
            return Completion(text, list(answer["choices"][0].get("token_ids") or []))

        return self._map(one, list(requests))

    def _prompt_logprobs(self, request: ChatRequest, assistant_text: str) -> tuple[list[int], list[float | None]]:
        body = {
            "model": self.model,
            "messages": self._messages(request) + [{"role": "assistant", "content": assistant_text}],
            "max_tokens": 1,
            "temperature": 0.0,
            "add_generation_prompt": False,
            "continue_final_message": True,
            "prompt_logprobs": 0,
            "return_token_ids": True,
        }
        answer = self._post(body)
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
                tail = logprobs[common:]
                if not tail or any(lp is None for lp in tail):
                    raise ServerUnavailableError(f"{self.url}: no log-probabilities for the tokens of choice {choices[c]!r}")
                out[i, c] = math.exp(sum(tail))  # type: ignore[arg-type]
        return out
