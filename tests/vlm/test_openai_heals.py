"""The served judge's client heals (cac_align/vlm/openai.py): a breaker that closes again when the
judge is back, answered samples kept when it dies mid-batch, retries only where a retry can help
(408, 429, 5xx, with backoff), every request answered at most once, and a judge that stops
answering found in seconds while a slow one is waited for. Against tests/chat_server.py's stand-in,
which counts each request body as it arrives and as it is answered."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cac_align.rewards.unified import UnifiedReward
from cac_align.video import Video
from cac_align.vlm.backend import BackendDown, user
from cac_align.vlm.openai import OpenAIBackend, RequestRejected, ServerDown, ServerUnavailableError
from chat_server import ChatServer
from conftest import smooth_video

UR_ANSWER = "Alignment Score (1-5): 4\nPhysics Score (1-5): 2\nStyle Score (1-5): 3"


def _video(seed: int) -> Video:
    return Video(smooth_video(16, 32, 48, seed=seed), 16.0)


def _about(word):
    """``body -> bool``: whether a chat request's text mentions ``word`` (which sample it is for)."""
    return lambda body: any(word in part.get("text", "") for m in body["messages"] if isinstance(m["content"], list) for part in m["content"])


def test_server_down_is_a_connection_error_of_a_backend_that_is_down():
    assert issubclass(ServerDown, BackendDown) and issubclass(ServerDown, ConnectionError) and issubclass(ServerDown, ServerUnavailableError)
    assert not issubclass(RequestRejected, BackendDown)


def test_the_breaker_opens_asks_again_after_its_cooldown_and_closes_when_the_judge_is_back():
    with ChatServer() as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, backoff_s=0.0, failure_limit=3, cooldown_s=1.0)
        backend.check()
        assert backend.generate([[user("one")]], max_new_tokens=4)[0].text
        server.kill()  # gone: connections closed without an answer
        with pytest.raises(ServerUnavailableError):
            backend.generate([[user("two")]], max_new_tokens=4)  # its failure asks for the model list, which fails: open
        sent, probes = sum(server.arrivals.values()), server.gets.count("/v1/models")
        with pytest.raises(ServerDown, match="stopped answering"):
            backend.generate([[user("three")]], max_new_tokens=4)
        assert sum(server.arrivals.values()) == sent and server.refused  # nothing sent through the open breaker
        time.sleep(1.1)  # past the cooldown, still down: one probe, refused, open again for another cooldown
        with pytest.raises(ServerDown, match=r"asked again after 1 s"):
            backend.generate([[user("three")]], max_new_tokens=4)
        with pytest.raises(ServerDown):
            backend.generate([[user("three")]], max_new_tokens=4)  # within the new cooldown: not even a probe
        server.revive()  # the judge restarted
        with pytest.raises(ServerDown):
            backend.generate([[user("three")]], max_new_tokens=4)  # still within the cooldown
        assert server.gets.count("/v1/models") == probes  # no probe reached it while down or cooling
        time.sleep(1.1)
        assert backend.generate([[user("three")]], max_new_tokens=4)[0].text  # the probe passes, the breaker closes, it is asked
        assert server.gets.count("/v1/models") == probes + 1
        assert backend.generate([[user("four")]], max_new_tokens=4)[0].text  # closed: straight through
        assert server.gets.count("/v1/models") == probes + 1


def test_one_request_probes_while_the_others_wait_for_its_answer():
    with ChatServer() as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, backoff_s=0.0, failure_limit=1, cooldown_s=0.2)
        backend.check()
        server.kill()
        with pytest.raises(ServerUnavailableError):
            backend.generate([[user("a")]], max_new_tokens=4)
        server.revive()
        time.sleep(0.3)
        server.get_delay_s = 0.5  # the probe is slow: the batch's other requests all arrive while it asks
        gets = len(server.gets)
        answers = backend.generate([[user(f"request {k}")] for k in range(8)], max_new_tokens=4)  # 8 threads at once
        assert len(answers) == 8 and all(a.text for a in answers)  # none failed at the half-open breaker
        assert server.gets[gets:] == ["/v1/models"]  # exactly one probe, then every request went through


def test_an_answer_from_another_model_does_not_heal():
    with ChatServer(answer_model="someone-else") as server:
        backend = OpenAIBackend("cac", base_url=server.url, max_retries=0, cooldown_s=0.0)
        for _ in range(2):
            with pytest.raises(ServerDown, match="answered as model 'someone-else'"):
                backend.generate([[user("hi")]], max_new_tokens=4)
        assert sum(server.arrivals.values()) == 1  # the second was refused at the breaker: it did not heal


def test_a_judge_that_dies_mid_batch_leaves_its_answers_scored():
    """The judge answers 2 of a batch of 4 (one request at a time) and goes down: those 2 keep their
    scores, the other 2 are invalid as "down", and no request is answered twice."""
    with ChatServer(answer=lambda messages: UR_ANSWER, die_after=2) as server:
        backend = OpenAIBackend("ur", base_url=server.url, max_retries=0, backoff_s=0.0, max_workers=1)
        out = UnifiedReward(backend, version="2.0", num_frames=4, batch_size=4)([_video(k) for k in range(4)], ["a cat", "a dog", "a cup", "a car"])
    assert out.valid.tolist() == [True, True, False, False]
    assert out.scores[0] == pytest.approx(3.0) and np.isnan(out.scores[2:]).all()
    assert [d.get("error_kind") for d in out.details[2:]] == ["down", "down"]
    assert sum(server.answered.values()) == 2 and set(server.answered.values()) == {1}  # each answer once


@pytest.mark.parametrize("status", [408, 429, 503])
def test_a_busy_answer_is_retried_with_backoff_and_then_scored_once(status):
    times: list[float] = []

    def busy_once(body, seen):
        times.append(time.monotonic())
        return status if seen == 0 else None

    with ChatServer(answer=lambda messages: UR_ANSWER, status_if=busy_once) as server:
        backend = OpenAIBackend("ur", base_url=server.url, max_retries=2, backoff_s=0.2)
        out = UnifiedReward(backend, version="2.0", num_frames=4)([_video(0)], ["a cat"])
    assert out.valid.tolist() == [True] and out.scores[0] == pytest.approx(3.0)
    assert list(server.arrivals.values()) == [2] and list(server.answered.values()) == [1]  # sent twice, answered once
    assert times[1] - times[0] >= 0.1  # the backoff (0.2 s, jitter down to half)


def test_a_rejected_request_is_not_retried_and_no_batch_mate_is_sent_twice():
    """HTTP 400 for the "storm" sample: it is invalid ("backend", with the server's reason) after one
    try; the batch is asked again one request at a time, from memory: every body arrived once."""
    with ChatServer(answer=lambda messages: UR_ANSWER, status_if=lambda body, seen: 400 if _about("storm")(body) else None) as server:
        backend = OpenAIBackend("ur", base_url=server.url, max_retries=3, backoff_s=0.0)
        out = UnifiedReward(backend, version="2.0", num_frames=4, batch_size=3)([_video(0), _video(1), _video(2)], ["a cat", "a storm", "a dog"])
    assert out.valid.tolist() == [True, False, True]
    assert out.details[1]["error_kind"] == "backend" and "HTTP 400" in out.details[1]["error"]
    assert len(server.arrivals) == 3 and set(server.arrivals.values()) == {1}
    assert sum(server.answered.values()) == 2


def test_a_request_asked_again_is_answered_from_memory_only_when_its_answer_cannot_change():
    with ChatServer() as server:
        backend = OpenAIBackend("cac", base_url=server.url)
        backend.generate([[user("greedy")]], max_new_tokens=4)
        backend.generate([[user("greedy")]], max_new_tokens=4)  # temperature 0: the same answer, not asked again
        backend.generate([[user("seeded")]], max_new_tokens=4, temperature=1.0, seed=3)
        backend.generate([[user("seeded")]], max_new_tokens=4, temperature=1.0, seed=3)
        backend.generate([[user("sampled")]], max_new_tokens=4, temperature=1.0)
        backend.generate([[user("sampled")]], max_new_tokens=4, temperature=1.0)  # sampled, no seed: asked again
    assert sorted(server.arrivals.values()) == [1, 1, 2]


def test_a_judge_that_stops_answering_is_found_in_seconds_and_a_slow_one_is_waited_for():
    """Both hold every answer back; one also goes down (its health check refused) a moment after the
    batch starts. liveness_s=0.3: the dead one ends the batch within about a second (its deadline was
    30 s), the live one (it answers its health check) is waited for and answers."""
    with ChatServer(delay_s=5.0) as server:
        backend = OpenAIBackend("cac", base_url=server.url, timeout_s=30.0, max_retries=0, liveness_s=0.3)
        threading.Timer(0.2, server.kill).start()
        start = time.monotonic()
        with pytest.raises(ServerDown, match=r"nothing of a batch was answered for 0\.3 s"):
            backend.generate([[user("a")], [user("b")]], max_new_tokens=4)
        assert time.monotonic() - start < 3.0
    with ChatServer(delay_s=1.0) as server:
        backend = OpenAIBackend("cac", base_url=server.url, timeout_s=30.0, max_retries=0, liveness_s=0.3)
        assert [a.text for a in backend.generate([[user("a")], [user("b")]], max_new_tokens=4)]
        assert server.gets.count("/health") >= 2  # asked while it worked, and it answered


def test_the_deadline_grows_with_the_request_and_the_defaults_trip_within_a_minute():
    backend = OpenAIBackend("cac", timeout_s=10.0, timeout_per_mb_s=2.0)
    assert backend.deadline_s(0) == 10.0 and backend.deadline_s(5_000_000) == pytest.approx(20.0)
    defaults = OpenAIBackend("cac")
    assert defaults.liveness_s + 5.0 < 60.0  # a judge that stops answering: found within a minute
    with pytest.raises(ValueError, match="backoff_s"):
        OpenAIBackend("cac", backoff_s=-1.0)
    with pytest.raises(ValueError, match="liveness_s"):
        OpenAIBackend("cac", liveness_s=0.0)


def test_the_retry_settings_are_a_recipes(tmp_path):
    from cac_align.config import RecipeError, load_config
    from cac_align.jobs.score import ScoreConfig
    from cac_align.vlm.config import ModelConfig, build_backend
    from conftest import REPO_ROOT

    with ChatServer() as server:
        model = ModelConfig(name="cac", backend="openai", base_url=server.url, backoff_s=0.05, max_backoff_s=2.0, cooldown_s=4.0, liveness_s=7.0,
                            timeout_per_mb_s=0.5)
        backend = build_backend(model, "reward.model")
    assert (backend.backoff_s, backend.max_backoff_s, backend.cooldown_s, backend.liveness_s, backend.timeout_per_mb_s) == (0.05, 2.0, 4.0, 7.0, 0.5)
    recipe = REPO_ROOT / "recipes/score/cac_vllm.yaml"
    config = load_config(ScoreConfig, recipe, [f"out_dir={tmp_path}", "reward.model.backoff_s=0.25"], job="score")
    assert config.reward["model"]["backoff_s"] == 0.25
    with pytest.raises((RecipeError, ValueError), match="backoff_s"):
        ModelConfig(name="cac", backend="openai", backoff_s=-1.0)
