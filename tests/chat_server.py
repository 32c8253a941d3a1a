"""A small local HTTP server answering like vLLM's OpenAI-compatible chat endpoint.

It stands in for a vLLM server in the default suite (tests/conformance/ runs a real one). Its "model" tokenizes the
rendered conversation one character per token (token id = ord(char)) and gives every token
the log-probability ``char_logprob(id)``, so expected probabilities are computable by hand.
Generation answers come from a function the test supplies. Videos are read as this package's
vLLM plugin reads them (``data:video/x-npz``) and kept in ``videos``. ``GET /v1/models`` lists the served
model names (``models``). It listens on 127.0.0.1 only.

For failure tests: ``delay_s`` holds every answer back, ``trickle_s`` sends the answer one byte
at a time with that pause between bytes (each read is quick, the whole answer is not),
``fail_first`` / ``fail_if`` answer 503, ``status_if(body, seen)`` answers the HTTP status it
returns (``seen``: how many times this very body came before; None: answer normally), and
``answer_model`` answers as another model. ``die_after=K`` makes it go down after its K-th chat
answer, for ``down_s`` seconds (None: until :meth:`ChatServer.revive`): while down it closes every
connection without an answer, as a server that is gone; :meth:`ChatServer.kill` takes it down at
once. ``arrivals`` and ``answered`` count each chat request body (by its SHA-256) as it arrived and
as it was answered 200. ``GET /health`` answers 200 while up, as vLLM's does.

To run it as a process of its own (a fleet's replica, tests/fixtures/stand_in_vllm): ``port`` to
listen on; ``on_arrival(digest, session)`` is called as each chat request arrives, before it is
answered, and ``on_answered(digest, session)`` once its 200 answer is sent, both while
``answering`` is held: a process that takes ``answering`` and then kills itself dies between two
answers, never in the middle of one, so what it recorded as answered is what it answered.

Like vLLM 0.32 it also answers ``POST /tokenize`` (chat form: the rendered conversation's ids)
and ``POST /detokenize``, and a chat request with ``logprobs`` and ``logprob_token_ids`` gets
those tokens' log-probabilities at the next position (``char_logprob``, as vLLM's raw mode gives
the model's). ``tokenize=False`` answers both endpoints 404, as a server without them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from cac_align.vlm.video_payload import MEDIA_TYPE, decode_video


def char_logprob(token_id: int) -> float:
    return -0.01 - 0.001 * (token_id % 17)


def render(messages: list[dict]) -> str:
    """Conversation -> text: images and videos become '#', each message is 'role:content' + '|' unless continued."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(p["text"] if p["type"] == "text" else "#" for p in content)
        out.append(f"{message['role']}:{content}")
    return "|".join(out)


class ChatServer:
    def __init__(
        self,
        answer=lambda messages: '{"status": "normal", "anomalies": []}',
        fail_first: int = 0,
        delay_s: float = 0.0,
        fail_if=None,
        models=("cac", "teacher", "ur"),
        trickle_s: float = 0.0,
        answer_model: str | None = None,
        tokenize: bool = True,
        metrics: bool = True,
        workers: list[str] | None = None,
        status_if=None,
        die_after: int | None = None,
        down_s: float | None = None,
        port: int = 0,
        on_arrival=None,
        on_answered=None,
    ):
        """``fail_first``: answer the first N requests with 503; ``fail_if(body) -> bool``: answer
        matching requests with 503 (a server that stops answering for some samples)."""
        self.answer = answer
        self.fail_first = fail_first
        self.fail_if = fail_if
        self.delay_s = delay_s
        self.models = list(models)
        self.trickle_s = trickle_s
        self.answer_model = answer_model  # answer as this model instead of the one asked for
        self.tokenize = tokenize
        self.metrics = metrics
        self.workers = workers  # answer GET /list_workers as vllm-router does (a fleet's router)
        self.status_if = status_if
        self.die_after = die_after
        self.down_s = down_s
        self.down_until: float | None = None  # while time.monotonic() is before it, the server is down (inf: until revive())
        self.on_arrival = on_arrival
        self.on_answered = on_answered
        self.answering = threading.RLock()  # held around the hooks and each chat answer (docstring)
        self.get_delay_s = 0.0  # each GET answered this much later (a slow model list: a long probe)
        self.arrivals: Counter[str] = Counter()  # sha256 of each chat request body -> times it arrived
        self.answered: Counter[str] = Counter()  # ... -> times it was answered 200
        self.refused = 0  # connections closed without an answer while down
        self.sending = 0  # chat answers begun (die_after counts these)
        self.gets: list[str] = []  # the path of each GET answered (/v1/models: the client's probes)
        self.prompts: list[list[int]] = []  # the prompt ids of every chat request answered
        self.requests: list[dict] = []
        self.paths: list[str] = []  # the path of each request, beside its body in ``requests``
        self.sessions: list[str | None] = []  # its X-Session-ID header (None: none), beside it too
        self.images: list[Image.Image] = []
        self.videos: list[tuple] = []  # (frames, metadata) of each video part, decoded
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _gone(self) -> bool:
                """While the server is down: close the connection without an answer."""
                if not server.is_down():
                    return False
                with server._lock:
                    server.refused += 1
                self.close_connection = True
                return True

            def do_GET(self):
                if self._gone():
                    return
                time.sleep(server.get_delay_s)
                with server._lock:
                    server.gets.append(self.path)
                if self.path == "/health":
                    return self._send(200, {})
                if self.path == "/metrics" and server.metrics:
                    lines = [f'{name}{{engine="0",model_name="cac"}} {value}' for name, value in server.counters().items()]
                    return self._send_text("\n".join(["# HELP vllm counters, as vLLM names them", *lines]) + "\n")
                if self.path == "/list_workers" and server.workers is not None:
                    return self._send(200, {"urls": server.workers})
                if self.path != "/v1/models" or not server.models:
                    return self._send(404, {"error": "not found"})
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self._gone():
                    return
                body = json.loads(raw)
                digest = hashlib.sha256(raw).hexdigest()
                with server._lock:
                    server.requests.append(body)
                    server.paths.append(self.path)
                    server.sessions.append(self.headers.get("X-Session-ID"))
                    failing = server.fail_first > 0
                    if failing:
                        server.fail_first -= 1
                    failing = failing or bool(server.fail_if and server.fail_if(body))
                    seen = server.arrivals[digest] if self.path == "/v1/chat/completions" else 0
                    if self.path == "/v1/chat/completions":
                        server.arrivals[digest] += 1
                    status = server.status_if(body, seen) if server.status_if and self.path == "/v1/chat/completions" else None
                if server.on_arrival is not None and self.path == "/v1/chat/completions":
                    with server.answering:
                        server.on_arrival(digest, self.headers.get("X-Session-ID"))
                if status is not None:
                    return self._send(status, {"error": f"HTTP {status} (status_if)"})
                if server.delay_s:
                    time.sleep(server.delay_s)
                if self.path == "/tokenize" and server.tokenize:
                    ids = [ord(ch) for ch in render(body["messages"])]
                    return self._send(200, {"count": len(ids), "max_model_len": 4096, "tokens": ids})
                if self.path == "/detokenize" and server.tokenize:
                    return self._send(200, {"prompt": "".join(chr(t) for t in body["tokens"])})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if failing:
                    return self._send(503, {"error": "overloaded"})
                for message in body["messages"]:
                    if isinstance(message["content"], list):
                        for part in message["content"]:
                            if part["type"] == "image_url":
                                data = part["image_url"]["url"].split(",", 1)[1]
                                with server._lock:
                                    server.images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                            elif part["type"] == "video_url":  # read as the vLLM plugin's loader reads it
                                header, data = part["video_url"]["url"].split(",", 1)
                                if header != f"data:{MEDIA_TYPE};base64":
                                    return self._send(400, {"error": f"unsupported video {header}"})
                                with server._lock:
                                    server.videos.append(decode_video(base64.b64decode(data)))
                prompt = render(body["messages"])
                ids = [ord(ch) for ch in prompt]
                with server._lock:
                    server.prompts.append(ids)
                response = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "model": server.answer_model or body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": server.answer(body["messages"])}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
                }
                if body.get("prompt_logprobs") is not None:
                    response["prompt_logprobs"] = [None] + [
                        {str(t): {"logprob": char_logprob(t), "rank": 1, "decoded_token": chr(t)}} for t in ids[1:]
                    ]
                if body.get("return_token_ids"):
                    response["prompt_token_ids"] = ids
                if body.get("logprobs") and body.get("logprob_token_ids"):
                    asked = [{"token": f"token_id:{t}", "logprob": char_logprob(t)} for t in body["logprob_token_ids"]]
                    response["choices"][0]["logprobs"] = {"content": [{"token": "token_id:0", "logprob": 0.0, "top_logprobs": asked}]}
                if self._gone():  # it went down while this request was on its way
                    return
                with server._lock:  # down from its K-th answer on, set before that answer leaves: the client's next
                    server.sending += 1  # request (sent the moment it reads this one) finds it down, never a last answer
                    if server.die_after is not None and server.sending >= server.die_after:
                        server.die_after = None
                        server.down_until = float("inf") if server.down_s is None else time.monotonic() + server.down_s
                # answers go one at a time only for a server with hooks (a replica that may kill itself)
                with server.answering if server.on_answered is not None else contextlib.nullcontext():
                    self._send(200, response)
                    if server.on_answered is not None:
                        server.on_answered(digest, self.headers.get("X-Session-ID"))
                with server._lock:
                    server.answered[digest] += 1

            def _send_text(self, text):
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if server.trickle_s and code == 200:
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(server.trickle_s)
                    return
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.block_on_close = False  # closing does not wait for a request held back by delay_s
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def is_down(self) -> bool:
        with self._lock:
            return self.down_until is not None and time.monotonic() < self.down_until

    def kill(self, down_s: float | None = None) -> None:
        """Go down now, for ``down_s`` seconds (None: until :meth:`revive`)."""
        with self._lock:
            self.down_until = float("inf") if down_s is None else time.monotonic() + down_s

    def revive(self) -> None:
        with self._lock:
            self.down_until = None

    def counters(self) -> dict[str, float]:
        """vLLM's counters as this stand-in keeps them: finished chat requests, their prompt
        tokens, and as "cached" each prompt's longest shared start with an earlier one, in whole
        32-token blocks (a toy prefix cache: what it counts is ours, the format is vLLM's)."""
        with self._lock:
            prompts = list(self.prompts)
        cached = 0
        for k, ids in enumerate(prompts):
            best = 0
            for earlier in prompts[:k]:
                n = 0
                while n < min(len(ids), len(earlier)) - 1 and ids[n] == earlier[n]:
                    n += 1
                best = max(best, n)
            cached += best // 32 * 32
        return {"vllm:request_success_total": float(len(prompts)), "vllm:prompt_tokens_total": float(sum(map(len, prompts))),
                "vllm:prompt_tokens_cached_total": float(cached)}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
