"""The OpenAI-compatible backend against a local server answering in vLLM's response format."""

from __future__ import annotations

import json
import math
import socket
import time

import numpy as np
import pytest

from cac_align.cac.infer import CaCScorer
from cac_align.video import Video
from cac_align.vlm.backend import Backend, BackendBase, Completion, user
from cac_align.vlm.openai import OpenAIBackend, ServerUnavailableError
from chat_server import ChatServer, char_logprob
from conftest import smooth_video


def _request(seed=0, frames=4):
    return [user(Video(smooth_video(frames, 32, 48, seed=seed), 4.0), "normal or abnormal?")]


def test_is_a_backend():
    assert isinstance(OpenAIBackend("m"), Backend)
    assert OpenAIBackend("m").url == "http://127.0.0.1:8000/v1/chat/completions"  # localhost by default


def test_the_generic_abilities_of_a_backend_without_a_cheaper_way():
    """BackendBase: generate_scored reads nothing with the generation (NaN rows, for the caller
    to ask choice_probs); choice_probs_steps asks choice_probs once per round, each round's
    prefixes grown by extend, which is not called after the last round."""

    class Plain(BackendBase):
        def __init__(self):
            self.asked = []

        def generate(self, requests, max_new_tokens=1024, temperature=0.0, top_p=1.0, seed=None):
            return [Completion(f"answer {i}") for i in range(len(requests))]

        def choice_probs(self, requests, prefixes, choices):
            self.asked.append(list(prefixes))
            return np.array([[0.25 * (len(p) % 4), 0.5] for p in prefixes])

    backend = Plain()
    assert isinstance(backend, Backend)
    completions, probs = backend.generate_scored([_request(), _request(1)], ["a", "b"], lambda text: text)
    assert [c.text for c in completions] == ["answer 0", "answer 1"] and probs.shape == (2, 2) and np.isnan(probs).all()
    extended = []

    def extend(step, row, values):
        extended.append((step, row))
        return f"<{step}>"

    rounds = backend.choice_probs_steps([_request(), _request(1)], ["x", "yy"], ["a", "b"], 3, extend)
    assert backend.asked == [["x", "yy"], ["x<0>", "yy<0>"], ["x<0><1>", "yy<0><1>"]]
    assert extended == [(0, 0), (0, 1), (1, 0), (1, 1)] and len(rounds) == 3
    np.testing.assert_array_equal(rounds[2], [[0.25 * (7 % 4), 0.5], [0.25 * (8 % 4), 0.5]])


def test_generate_sends_each_video_as_the_processor_gets_it():
    """``video_input: video`` (the default): one lossless part per video with its own metadata,
    decoded by the server exactly into what the in-process backend gives its processor."""
    from cac_align.vlm.hf import video_metadata

    with ChatServer(answer=lambda messages: "hello") as server:
        backend = OpenAIBackend("cac", base_url=server.url)
        out = backend.generate([_request(0, frames=5), _request(1)], max_new_tokens=7)
    assert [c.text for c in out] == ["hello", "hello"]
    assert [p["type"] for p in server.requests[0]["messages"][0]["content"]] == ["video_url", "text"]
    assert len(server.videos) == 2
    for seed, frames in ((0, 5), (1, 4)):
        expected_frames, meta = video_metadata(Video(smooth_video(frames, 32, 48, seed=seed), 4.0))
        got_frames, got = next((f, m) for f, m in server.videos if len(f) == len(expected_frames) and f[0].tobytes() == expected_frames[0].tobytes())
        np.testing.assert_array_equal(got_frames, expected_frames)  # 5 frames: the last repeated, as in-process
        assert (got["fps"], got["frames_indices"], got["total_num_frames"]) == (meta.fps, meta.frames_indices, meta.total_num_frames)
    assert server.videos[0][1]["do_sample_frames"] is False


def test_generate_sends_frames_as_images_with_timestamps_when_asked():
    with ChatServer(answer=lambda messages: "hello") as server:
        backend = OpenAIBackend("cac", base_url=server.url, image_format="png", video_input="images")
        out = backend.generate([_request(0), _request(1)], max_new_tokens=7)
    assert [c.text for c in out] == ["hello", "hello"]
    body = server.requests[0]
    assert body["model"] == "cac" and body["max_tokens"] == 7 and body["temperature"] == 0.0
    parts = body["messages"][0]["content"]
    assert [p["text"] for p in parts if p["type"] == "text"][:4] == ["<t=0.000 s>", "<t=0.250 s>", "<t=0.500 s>", "<t=0.750 s>"]
    # PNG frames arrive losslessly: the server decodes exactly the frames we sent.
    assert len(server.images) == 8
    sent = {smooth_video(4, 32, 48, seed=s)[k].tobytes() for s in (0, 1) for k in range(4)}
    assert {np.asarray(img).tobytes() for img in server.images} == sent


def test_choice_probs_sums_teacher_forced_logprobs_of_every_choice_token():
    # The toy server gives each character c the log-probability char_logprob(ord(c)); the
    # candidate's tokens are its characters, so P = exp(sum over its characters).
    expected = [math.exp(sum(char_logprob(ord(ch)) for ch in word)) for word in ("normal", "abnormal")]
    with ChatServer() as server:
        backend = OpenAIBackend("cac", base_url=server.url)
        probs = backend.choice_probs([_request()], ['{"status": "'], ["normal", "abnormal"])
    np.testing.assert_allclose(probs[0], expected, rtol=1e-12)
    # read through the prefix cache: the tokens from /tokenize (the prefix, and prefix + each
    # choice), then one one-token generation per inner node of the choices' trie (the prefix, n,
    # no, ..., norma; a, ab, ..., abnorma: 13), each continuing the assistant message with the
    # node's text (from /detokenize) and asking for its next tokens' log-probabilities
    by_path = {p: [b for b, q in zip(server.requests, server.paths) if q == p] for p in set(server.paths)}
    assert {b["messages"][-1]["content"] for b in by_path["/tokenize"]} == {'{"status": "', '{"status": "normal', '{"status": "abnormal'}
    reads = by_path["/v1/chat/completions"]
    assert len(reads) == 13 and not any(b.get("prompt_logprobs") is not None for b in reads)
    assert all(b["continue_final_message"] and not b["add_generation_prompt"] and b["max_tokens"] == 1 and b["logprobs"] for b in reads)
    root = next(b for b in reads if b["messages"][-1]["content"] == '{"status": "')
    assert sorted(root["logprob_token_ids"]) == [ord("a"), ord("n")]
    ab = next(b for b in reads if b["messages"][-1]["content"] == '{"status": "ab')
    assert ab["logprob_token_ids"] == [ord("n")]
    assert len(by_path["/detokenize"]) == 12  # one per node below the root, remembered after
    # a server without /tokenize: the prompt_logprobs reads (prefix + one per choice), same numbers
    with ChatServer(tokenize=False) as server:
        backend = OpenAIBackend("cac", base_url=server.url)
        probs = backend.choice_probs([_request()], ['{"status": "'], ["normal", "abnormal"])
    np.testing.assert_allclose(probs[0], expected, rtol=1e-12)
    scoring = [b for b in server.requests if b.get("prompt_logprobs") is not None]
    assert len(scoring) == 3  # prefix only + one per choice
    assert all(b["continue_final_message"] and not b["add_generation_prompt"] for b in scoring)
    assert {b["messages"][-1]["content"] for b in scoring} == {'{"status": "', '{"status": "normal', '{"status": "abnormal'}


def test_retries_with_backoff_then_succeeds():
    with ChatServer(answer=lambda m: "ok", fail_first=2) as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=3, backoff_s=0.01)
        assert backend.generate([_request()])[0].text == "ok"
    assert len(server.requests) == 3


def test_gives_up_naming_the_url():
    with ChatServer(fail_first=10) as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=1, backoff_s=0.01)
        with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1.*after 2 attempts.*HTTP 503"):
            backend.generate([_request()])


def test_unreachable_server_names_the_url():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend("cac", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(ServerUnavailableError, match=f"127.0.0.1:{port}/v1/chat/completions unreachable"):
        backend.generate([_request()])


def test_timeout_is_a_retryable_failure():
    with ChatServer(delay_s=0.5) as server:
        backend = OpenAIBackend("cac", base_url=server.url, timeout_s=0.05, max_retries=0)
        with pytest.raises(ServerUnavailableError, match="Timeout"):
            backend.generate([_request()])


def _turn2_videos(body):
    """The metadata of a request's videos, in order, read as the server reads them."""
    import base64

    from cac_align.vlm.video_payload import decode_video

    parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"] if p["type"] == "video_url"]
    return [decode_video(base64.b64decode(p["video_url"]["url"].split(",", 1)[1]))[1] for p in parts]


def test_two_turn_cac_through_the_server():
    turn1 = json.dumps({"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "time": [0.25, 0.75]}]})
    turn2 = json.dumps({"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "bbox": {"frame 0": [1, 2, 3, 4]}}]})
    with ChatServer(answer=lambda messages: turn1 if len(messages) == 1 else turn2) as server:
        backend = OpenAIBackend("cac", base_url=server.url)
        video = Video(smooth_video(16, 32, 48), 16.0)  # 1 s
        (result,) = CaCScorer(backend).score([video])
    assert result.valid and result.status == "abnormal" and result.window_s == (0.25, 0.75)
    # Turn 2 (three messages) carried the 4 fps scan and the 8 fps clip, each with its own
    # metadata: the clip's 4 frames at 0.25, 0.375, 0.5, 0.625 s are indices 2-5 on its 8 fps grid
    turn2_body = next(b for b in server.requests if len(b["messages"]) == 3 and b.get("prompt_logprobs") is None)
    assert [p["type"] for m in turn2_body["messages"] if isinstance(m["content"], list) for p in m["content"]].count("video_url") == 2
    scan, clip = _turn2_videos(turn2_body)
    assert (scan["fps"], scan["frames_indices"]) == (4.0, [0, 1, 2, 3])
    assert (clip["fps"], clip["frames_indices"]) == (8.0, [2, 3, 4, 5])
    p_n = math.exp(sum(char_logprob(ord(c)) for c in "normal"))
    p_a = math.exp(sum(char_logprob(ord(c)) for c in "abnormal"))
    assert result.reward == pytest.approx(p_n / (p_n + p_a))


def test_requests_per_video_of_two_turn_cac_through_a_server():
    """What a vLLM server is asked per video (docs/rewards.md, "Cost per video"): each generation
    is one request; the final status costs /tokenize calls (no model run) and one one-token read
    per inner node of the candidates' trie, which a real server answers from its prefix cache."""
    turn1 = json.dumps({"COT": "scan", "status": "abnormal", "anomalies": [{"Attributed Time Region": "1-2", "Attributed Label": "Human Distortion"}]})
    turn2 = json.dumps({"COT": "look", "status": "abnormal", "anomalies": [{"Attributed Label": "Human Distortion", "BBOX": {"Frame 0": [100, 100, 300, 300]}}]})
    normal = json.dumps({"COT": "fine", "status": "normal", "anomalies": []})

    def answer(messages):
        if len(messages) > 1:
            return turn2
        return turn1 if "flag" in json.dumps(messages[0]["content"][-1]) else normal

    videos = [Video(smooth_video(16, 32, 48, seed=i), 4.0) for i in range(2)]
    with ChatServer(answer=answer) as server:
        scorer = CaCScorer(OpenAIBackend("cac", base_url=server.url))
        results = scorer.score(videos, ["flag me", "a calm scene"])
        kinds = [path if path != "/v1/chat/completions" else ("read" if body.get("logprob_token_ids") else "generate")
                 for path, body in zip(server.paths, server.requests)]
    assert [r.valid for r in results] == [True, True] and results[0].turn2 is not None and results[1].turn2 is None
    # flagged video: 2 generations; normal video: 1; each final status: 3 /tokenize and 13 reads
    # (this stand-in's tokens are characters: a real tokenizer's trie has 2 or 3 inner nodes);
    # the 12 texts of the nodes are remembered by the backend (two videos read at once may both ask)
    assert (kinds.count("generate"), kinds.count("read"), kinds.count("/tokenize")) == (3, 26, 6) and 12 <= kinds.count("/detokenize") <= 24
    assert not any(body.get("prompt_logprobs") is not None for body in server.requests)
    # the turns' prompt tokens, as the server counted them (usage.prompt_tokens)
    assert results[0].turn1.prompt_tokens > 0 and results[0].turn2.prompt_tokens > results[0].turn1.prompt_tokens


def test_the_circuit_breaker_stops_asking_a_failing_server():
    from chat_server import ChatServer

    from cac_align.vlm.openai import ServerDown, ServerUnavailableError

    request = [user("hello")]
    # up (it lists its models) but failing every request: open after failure_limit in a row
    with ChatServer(fail_if=lambda body: True) as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, failure_limit=3)
        for _ in range(3):
            with pytest.raises(ServerUnavailableError, match="HTTP 503"):
                backend.generate([request], max_new_tokens=4)
        asked = len(server.requests)
        with pytest.raises(ServerDown, match=r"stopped answering: 3 requests in a row failed"):
            backend.generate([request], max_new_tokens=4)
        assert len(server.requests) == asked  # the open breaker sends nothing
    # a success in between resets the count (five requests of their own: an answered one is
    # answered again from memory, never sent again)
    answers = iter([True, True, False, True, True])
    with ChatServer(fail_if=lambda body: next(answers)) as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, failure_limit=3)
        outcomes = []
        for k in range(5):
            try:
                backend.generate([[user(f"hello {k}")]], max_new_tokens=4)
                outcomes.append("ok")
            except ServerUnavailableError:
                outcomes.append("failed")
        assert outcomes == ["failed", "failed", "ok", "failed", "failed"]


def test_behind_a_router_failures_in_a_row_do_not_open_the_breaker_while_it_lists_the_model():
    """One replica of a fleet dies: its requests fail (503 from the router) until the router drops
    it, more than failure_limit in a row, while the router still lists the model: the breaker stays
    closed. When the router stops listing the model, the next failure opens it."""
    from cac_align.vlm.openai import ServerDown

    request = [user("hello")]
    with ChatServer(fail_if=lambda body: True, workers=["http://127.0.0.1:1", "http://127.0.0.1:2"]) as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, failure_limit=3)
        backend.check()
        for _ in range(6):
            with pytest.raises(ServerUnavailableError, match="HTTP 503"):
                backend.generate([request], max_new_tokens=4)
        server.models = []  # the router no longer lists the model: the fleet is down
        with pytest.raises(ServerUnavailableError):
            backend.generate([request], max_new_tokens=4)
        with pytest.raises(ServerDown, match="no longer lists its models"):
            backend.generate([request], max_new_tokens=4)


def test_behind_a_router_whose_model_list_fails_the_breaker_stays_closed_while_a_replica_is_up():
    """vllm-router proxies GET /v1/models to one replica: while that one is dead (and the router has
    not marked it yet) the model list fails (HTTP 500 naming it), though another replica serves. A
    failed request then does not open the breaker: the fleet is down only when no replica is up
    (replica_health: the router's verdict, and each replica's /health asked from here)."""
    from cac_align.vlm.openai import ServerDown, replica_health

    request = [user("hello")]
    with ChatServer() as alive:
        root = alive.url[: -len("/v1")]
        with ChatServer(fail_if=lambda body: True, workers=[root, "http://127.0.0.1:1"]) as router:
            backend = OpenAIBackend("cac", base_url=router.url, max_retries=0, failure_limit=1)
            backend.check()
            router.models = []  # its model list fails, as the dead replica's would
            assert replica_health(router.url) == {root: True, "http://127.0.0.1:1": False}
            for k in range(3):
                with pytest.raises(ServerUnavailableError, match="HTTP 503") as failed:
                    backend.generate([request], max_new_tokens=4)
                assert not isinstance(failed.value, ServerDown) and sum(router.arrivals.values()) == k + 1  # sent, not refused by a breaker
            alive.kill()  # now no replica is up: the next failure opens the breaker
            with pytest.raises(ServerUnavailableError, match="HTTP 503"):
                backend.generate([request], max_new_tokens=4)
            with pytest.raises(ServerDown, match="no longer lists its models"):
                backend.generate([request], max_new_tokens=4)
    assert replica_health("http://127.0.0.1:1/v1") is None  # not a router (nothing answers there)


def test_a_server_that_went_away_opens_the_breaker_at_once():
    from chat_server import ChatServer

    from cac_align.vlm.openai import ServerDown, ServerUnavailableError

    server = ChatServer()
    with server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, failure_limit=5)
        backend.check()
        backend.generate([[user("hi")]], max_new_tokens=4)
    assert backend.generate([[user("hi")]], max_new_tokens=4)  # answered before: from memory, the server not asked
    # the server is gone: the first failure probes its model list, which fails too
    with pytest.raises(ServerUnavailableError):
        backend.generate([[user("hi again")]], max_new_tokens=4)
    start = time.monotonic()
    with pytest.raises(ServerDown, match="no longer lists its models"):
        backend.generate([[user("and again")]], max_new_tokens=4)
    assert time.monotonic() - start < 0.5


def test_an_answer_from_another_model_stops_the_backend():
    from chat_server import ChatServer

    from cac_align.vlm.openai import ServerDown

    with ChatServer(answer_model="someone-else") as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0)
        with pytest.raises(ServerDown, match="answered as model 'someone-else', not 'cac'"):
            backend.generate([[user("hi")]], max_new_tokens=4)


def test_chat_template_kwargs_go_with_every_request():
    """``model.chat_template_kwargs`` (UnifiedReward's qwen35 checkpoints: enable_thinking false)
    reach the server with generation and prompt-log-prob requests alike; none are sent unset."""
    from cac_align.vlm.config import ModelConfig, build_backend

    with ChatServer(answer=lambda messages: "hello") as server:
        backend = build_backend(ModelConfig(name="cac", backend="openai", base_url=server.url, chat_template_kwargs={"enable_thinking": False}))
        backend.generate([_request()], max_new_tokens=3)
        backend.choice_probs([_request()], [""], ["normal"])
        OpenAIBackend("cac", base_url=server.url).generate([_request()], max_new_tokens=3)
    asked = [r for r in server.requests if "messages" in r]
    sent = [r.get("chat_template_kwargs") for r in asked]
    assert len(sent) >= 3 and sent[:-1] == [{"enable_thinking": False}] * (len(sent) - 1) and sent[-1] is None


def test_served_urls_are_found_however_deep_a_section_nests_them():
    from cac_align.vlm.config import DEFAULT_BASE_URL, served_urls

    section = {"name": "combined", "components": [
        {"name": "cac", "model": {"name": "cac", "backend": "openai", "base_url": "http://10.0.0.1:8000/v1"}},
        {"name": "unified_reward", "model": {"name": "ur", "backend": "openai"}},
        {"name": "skyra", "model": {"name": "JoeLeelyf/Skyra-SFT"}},  # in-process
        {"name": "cac", "model": {"name": "cac", "backend": "openai", "base_url": "http://10.0.0.1:8000/v1"}},
    ]}
    assert served_urls(section) == ["http://10.0.0.1:8000/v1", DEFAULT_BASE_URL]
    assert served_urls({"name": "cac", "model": {"name": "cac-demo"}}) == []


def _opening(body):
    """A request's conversation opening (system and first user turn) as text: which video it is for."""
    opening = []
    for message in body["messages"]:
        opening.append(message)
        if message["role"] == "user":
            break
    return json.dumps(opening, sort_keys=True)


def test_every_request_of_a_videos_judgment_carries_its_session_key():
    """Both turns, every status read, /tokenize and /detokenize, and retries: one key per video's
    judgment (so a consistent-hash router keeps it on the replica that caches its prefix); other
    videos other keys; a rerun the same keys."""
    turn1 = json.dumps({"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "time": [0.25, 0.75]}]})
    turn2 = json.dumps({"status": "abnormal", "anomalies": [{"type": "Motion Anomalies", "bbox": {"frame 0": [1, 2, 3, 4]}}]})
    videos = [Video(smooth_video(16, 32, 48, seed=i), 16.0) for i in range(3)]
    with ChatServer(answer=lambda messages: turn1 if len(messages) == 1 else turn2) as server:
        first = CaCScorer(OpenAIBackend("cac", base_url=server.url)).score(videos)
        n_first = len(server.requests)
        again = CaCScorer(OpenAIBackend("cac", base_url=server.url)).score(videos)  # a rerun: another process, its own backend
        sessions, paths, bodies = list(server.sessions), list(server.paths), list(server.requests)
    assert all(r.valid and r.turn2 is not None for r in first + again)
    assert None not in sessions  # every request carries a key
    by_video: dict[str, set] = {}
    for path, body, key in zip(paths, bodies, sessions):
        if path != "/detokenize":
            by_video.setdefault(_opening(body), set()).add(key)
    assert len(by_video) == 3 and all(len(keys) == 1 for keys in by_video.values())  # one key per video, over both runs
    keys = [next(iter(k)) for k in by_video.values()]
    assert len(set(keys)) == 3 and all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    assert {k for p, k in zip(paths, sessions) if p == "/detokenize"} <= set(keys)  # detokenize goes with its video
    assert set(sessions[:n_first]) == set(sessions[n_first:]) == set(keys)  # a rerun lands where it did
    # a request answered 503 twice, then retried: all three attempts carry its video's key
    with ChatServer(answer=lambda messages: turn1 if len(messages) == 1 else turn2, fail_first=2) as server:
        (result,) = CaCScorer(OpenAIBackend("cac", base_url=server.url, backoff_s=0.01)).score(videos[:1])
        assert result.valid and len(set(server.sessions)) == 1 and server.sessions[0] in keys and len(server.sessions) > 3


def test_session_keys_spread_videos_over_replicas_and_the_header_can_be_off():
    """16 videos' keys on a stand-in consistent-hash ring (jump hash, our own: vllm-router's
    hash is its own, and the conformance test measures the real router) put at most about 2/N
    of them on any one of N replicas. session_header=None sends no header."""
    backend = OpenAIBackend("cac")
    keys = [backend.session_key(backend._messages(_request(seed=i))) for i in range(16)]
    assert len(set(keys)) == 16

    def jump(key: int, buckets: int) -> int:  # Lamping and Veach's jump consistent hash
        b, j = -1, 0
        while j < buckets:
            b = j
            key = (key * 2862933555777941757 + 1) % 2**64
            j = int((b + 1) * (2**31 / ((key >> 33) + 1)))
        return b

    for n in (2, 4):
        counts = np.bincount([jump(int(k, 16) % 2**64, n) for k in keys], minlength=n)
        assert counts.max() <= 2 * 16 / n, (n, counts)
    # the same video with another question is another conversation: another key
    other = [user(Video(smooth_video(4, 32, 48, seed=0), 4.0), "is it broken?")]
    assert backend.session_key(backend._messages(other)) != keys[0]
    with ChatServer() as server:
        OpenAIBackend("cac", base_url=server.url, session_header=None).generate([_request()], max_new_tokens=4)
        assert server.sessions == [None]


def test_a_fleets_counters_are_its_replicas_summed_and_each_ones_share():
    """Behind a router (GET /list_workers), server_counters reads every replica's /metrics: the
    sums, and each replica's own; served_cost gives each replica's delta and share of requests,
    and leaves out a replica that stopped answering (it died mid-run)."""
    from cac_align.vlm.openai import served_cost, server_counters

    with ChatServer() as a, ChatServer() as b:
        roots = [a.url[: -len("/v1")], b.url[: -len("/v1")]]
        with ChatServer(workers=roots) as router:
            before = server_counters(router.url)
            OpenAIBackend("cac", base_url=a.url).generate([_request(seed=i) for i in range(3)], max_new_tokens=4)
            OpenAIBackend("cac", base_url=b.url).generate([_request(seed=9)], max_new_tokens=4)
            after = server_counters(router.url)
            expected = {k: a.counters()[m] + b.counters()[m] for k, m in (("requests", "vllm:request_success_total"),
                                                                           ("prompt_tokens", "vllm:prompt_tokens_total"))}
            assert (after["requests"], after["prompt_tokens"]) == (expected["requests"], expected["prompt_tokens"])
            cost = served_cost(before, after, videos=4)
            assert cost["requests"] == 4 and [r["requests"] for r in cost["replicas"].values()] == [3, 1]
            assert [r["share_of_requests"] for r in cost["replicas"].values()] == [0.75, 0.25]
            assert cost["computed_prompt_tokens"] == sum(r["computed_prompt_tokens"] for r in cost["replicas"].values())
            b.metrics = False  # replica b stops answering its counters
            gone = served_cost(before, server_counters(router.url), videos=4)
            assert gone["replicas"][roots[1]] is None and gone["requests"] == 3
    assert server_counters(a.url) is None  # a plain server that is gone: no counters
