"""Faults in a generator trainer's run (docs/flow_grpo.md, "When something fails"): a reward that raises on
one process never hangs the others (every process makes the same gathers, the failed samples are invalid),
and a failure that must stop the run stops every process with one line naming the process and its cause.

The multi-process cases run tests/parallel_launch.py under torchrun (gloo) and are marked slow:
`pytest -m slow tests/jobs/test_faults.py` (.ci/run runs them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cac_align.config import load_config
from cac_align.jobs.flow_grpo import FlowGrpoConfig, run
from cac_align.rewards.columns import invalid_output, reward_columns
from cac_align.video import Video
from conftest import REPO_ROOT
from fault_rewards import FlakyPair

BRIGHTNESS = REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml"
PART_KEYS = ["reward/flaky_pair", "reward/brightness_raw", "reward/brightness_normalized", "reward/dimness_raw", "reward/dimness_normalized"]


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_reward_metric_keys_come_from_the_reward_not_from_a_batch():
    """A step's per-part columns are the reward's declared parts, whatever its batches did: a batch whose
    call raised (no details at all) fills NaN, a scored one its parts' numbers, in sample order."""
    reward = FlakyPair()
    assert reward.components == ("brightness", "dimness")
    grey = np.full((4, 8, 8, 3), 64, dtype=np.uint8)  # brightness 64/255
    scored = reward([Video(grey, fps=16.0), Video(grey * 2, fps=16.0)], ["a", "b"])
    failed = invalid_output(reward.name, 3, RuntimeError("the judge's server went away"))
    columns = reward_columns(reward, [failed, scored])  # the failed batch first: it used to decide the keys
    assert list(columns) == PART_KEYS
    assert all(len(v) == 5 and np.isnan(v[:3]).all() for v in columns.values())
    bright = [64 / 255, 128 / 255]
    np.testing.assert_allclose(columns["reward/brightness_raw"][3:], bright)
    np.testing.assert_allclose(columns["reward/dimness_raw"][3:], [1 - b for b in bright])
    # fixed [0, 1] normalizers: normalized = raw; the trained score is 0.75 x brightness + 0.25 x dimness
    np.testing.assert_allclose(columns["reward/dimness_normalized"][3:], [1 - b for b in bright])
    np.testing.assert_allclose(columns["reward/flaky_pair"][3:], [0.75 * b + 0.25 * (1 - b) for b in bright])
    # a single reward declares no parts: one column
    assert list(reward_columns(reward.rewards[0], [scored])) == ["reward/brightness"]


def test_a_later_batch_whose_reward_raises_is_invalid_and_the_run_goes_on(tmp_path):
    """One process, 8 samples in 4 reward calls of 2: the second call raises. Its 2 samples are invalid,
    the per-part metrics are logged over the other 6 (the keys used to come from the first batch's
    details, and a later failed batch raised KeyError)."""
    config = load_config(FlowGrpoConfig, BRIGHTNESS, [f"out_dir={tmp_path / 'run'}", "steps=1", "sample_batch_size=2", "log_with=none",
                                                      "eval_prompts=null", "checkpoint_every=0"], job="flow-grpo")
    run(config, reward=FlakyPair("p0c2"))
    (row,) = _metrics(tmp_path / "run")
    assert row["reward/valid_fraction"] == 0.75
    for key in PART_KEYS:
        assert np.isfinite(row[f"{key}_mean"]), key
    assert row["reward/brightness_raw_mean"] + row["reward/dimness_raw_mean"] == pytest.approx(1.0)


def _said(lines: dict[int, str], delays: dict[int, float] | None = None) -> dict[int, str | None]:
    """What each of ``len(lines)`` processes prints for its failure ``lines[rank]`` (cac_align/run/voice.py
    ``failure_line``), each in a thread of its own failing after ``delays[rank]`` seconds, against one real
    TCPStore as torchrun's agent serves it."""
    import threading
    import time
    from datetime import timedelta

    from torch.distributed import PrefixStore, TCPStore

    from cac_align.run.voice import failure_line

    server = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    said: dict[int, str | None] = {}

    def fail(rank: int) -> None:
        time.sleep((delays or {}).get(rank, 0.0))
        client = PrefixStore("run/0/", TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10)))
        said[rank] = failure_line(lines[rank], 1.0, rank=rank, world=len(lines), store=client)

    threads = [threading.Thread(target=fail, args=(rank,)) for rank in lines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return said


def test_an_error_every_process_meets_is_printed_once_by_the_first_process():
    line = "cac-align flow-grpo: failed: step 1: no valid reward for any sample; check the reward section"
    assert _said({0: line, 1: line, 2: line}, {0: 0.2}) == {0: line, 1: None, 2: None}  # as one process prints it


def test_an_error_of_one_process_is_printed_by_it_alone_and_its_consequences_stay_quiet():
    crash = "cac-align flow-grpo: failed: RuntimeError: CUDA out of memory"
    peer_gone = "cac-align flow-grpo: failed: RuntimeError: [gloo] Connection closed by peer"
    said = _said({0: peer_gone, 1: crash}, {0: 0.3})  # process 1 fails first; process 0 meets its peer gone after
    assert said == {0: None, 1: "cac-align flow-grpo: failed on process 1 of 2: RuntimeError: CUDA out of memory"}
    # a process alone with its error (the others still running, or stopped by the launcher without a word)
    assert _said({0: peer_gone, 1: crash}, {0: 1.5})[1].startswith("cac-align flow-grpo: failed on process 1 of 2:")
    # no store to reach: each says its own, named (nothing is lost)
    from cac_align.run.voice import failure_line

    assert failure_line("cac-align dpo: error: x", rank=3, world=4, store=None) in ("cac-align dpo: error on process 3 of 4: x",)


# ---------------------------------------------------------------------------------------------
# Slow: two processes under torchrun
# ---------------------------------------------------------------------------------------------
LAUNCH = REPO_ROOT / "tests/parallel_launch.py"
FLAKY = 'reward={name: "fault_rewards:flaky_pair", fail: "%s"}'


def _launch(out, *overrides, env=None, timeout=600, recipe=BRIGHTNESS):
    """tests/parallel_launch.py's flow-grpo on the brightness recipe (or ``recipe``), 2 processes: the finished
    launch (its return code is not checked here) and its wall time. Under the ``torchrun`` command when the
    launch runs through ``cac-align``'s own ``main`` (``CAC_TEST_VIA_CLI``: how the launcher ends the others is
    what such a test reads) or ``CAC_TEST_TORCHRUN=1`` is set; else forked from a process that imported the
    libraries once, by torch's own elastic agent (tests/forked_launch.py)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import forked_launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    args = ["flow-grpo", str(recipe), str(out), *overrides]
    if not environment.get("CAC_TEST_VIA_CLI") and not environment.get("CAC_TEST_TORCHRUN"):
        done = forked_launch.launch(LAUNCH, args, processes=2, port=port, env=environment, cwd=REPO_ROOT, timeout=timeout)
        return done, time.time()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(LAUNCH), *args]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    return done, time.time()


COMMON = ("steps=2", "sample_batch_size=2", "eval_prompts=null", "checkpoint_every=0")


@pytest.mark.slow
@pytest.mark.parametrize("shard", ["none", "fsdp2"])
def test_a_reward_that_raises_on_one_process_leaves_its_samples_invalid_and_the_run_goes_on(shard, tmp_path):
    """Process 1's first reward call and process 0's second raise (2 processes, 4 samples each in 2 calls
    of 2 a step): both steps finish, data parallel and sharded, with the 4 failed samples of step 1
    invalid and every per-part metric logged from the others."""
    out = tmp_path / "run"
    done, _ = _launch(out, *COMMON, FLAKY % "p1c1,p0c2", f"parallel.shard={shard}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    first, second = _metrics(out)
    assert first["reward/valid_fraction"] == 0.5 and second["reward/valid_fraction"] == 1.0
    for key in PART_KEYS:
        assert np.isfinite(first[f"{key}_mean"]) and np.isfinite(second[f"{key}_mean"]), key
    assert "reward failed on a batch of 2" in done.stderr and "injected" in done.stderr
    assert (out / "lora/pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_control_the_old_metric_keys_hang_until_the_timeout(tmp_path):
    """The control: with the per-part keys read from each process's first batch (as before), process 1,
    whose first batch failed, makes 1 gather where process 0 makes 5; the run stops only on the process
    group's timeout (here 15 s): process 0 names it, or, when process 1 sees its peer close the connection
    at that timeout and fails first, the launcher stops process 0 before it can (a race that CI's loaded
    run of 2026-11-28 lost); either way not before the timeout."""
    import time

    began = time.time()
    done, ended = _launch(tmp_path / "run", *COMMON, FLAKY % "p1c1", "parallel.timeout_s=15", env={"CAC_TEST_OLD_REWARD_KEYS": "1"})
    assert done.returncode != 0 and ended - began >= 15, done.stderr[-5000:]
    assert "parallel.timeout_s" in done.stderr or "Connection closed by peer" in done.stderr, done.stderr[-5000:]


@pytest.mark.slow
def test_a_crash_on_one_process_stops_the_run_within_seconds_in_one_line(tmp_path):
    """Process 1 crashes in step 2 (through `cac-align flow-grpo`, as a user runs it): the run ends soon
    after, and the error is printed once, by process 1, naming itself; process 0's consequences (its
    peer gone) stay quiet."""
    out = tmp_path / "run"
    done, ended = _launch(out, *COMMON, env={"CAC_TEST_VIA_CLI": "1", "CAC_TEST_CRASH": "p1s1"})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("cac-align flow-grpo:")]
    assert lines == ["cac-align flow-grpo: failed on process 1 of 2: RuntimeError: injected: process 1 crashed in step 1"], done.stderr[-5000:]
    assert ended - float((out / "crashed1.txt").read_text()) < 30  # measured 4.7 s on 2 idle cores; the default timeout is 30 min
    assert len(_metrics(out)) == 1  # step 1 was logged, step 2 never finished


def _revive_when_a_step_is_missed(server, run, stop) -> None:
    """Bring ``server`` back as soon as the run's metrics.jsonl records a step whose samples it
    missed (``reward/down_fraction``): its absence then spans at least one whole step whatever the
    machine's speed, and the next steps find it back."""
    import time

    while not stop.is_set():
        try:
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        except (OSError, ValueError):  # not written yet, or a line half written
            rows = []
        if any("reward/down_fraction" in row for row in rows):
            server.revive()
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_served_judge_that_dies_and_comes_back_is_used_again_by_every_process(tmp_path):
    """2 processes score with a served CaC (recipes/align/flow_grpo_tiny_served.yaml, status reads only)
    whose server goes down after its 100th answer (in step 2: a status read is about 13 requests here)
    and comes back once the run has recorded a step it missed: the run finishes every step
    with no restart; the samples of the dead window are invalid ("down"), the later steps are whole
    again on both processes (each process's breaker asked after its cooldown and closed), and no
    request was answered twice."""
    import threading

    from chat_server import ChatServer

    served = REPO_ROOT / "recipes/align/flow_grpo_tiny_served.yaml"
    stop = threading.Event()
    with ChatServer(models=("cac-demo",), die_after=100, down_s=None) as server:
        # down until the watcher sees a missed step (not for a fixed time: an idle machine ran 3 steps in 0.6 s)
        watcher = threading.Thread(target=_revive_when_a_step_is_missed, args=(server, tmp_path / "run", stop), daemon=True)
        watcher.start()
        try:
            done, _ = _launch(tmp_path / "run", "steps=5", "generator.num_inference_steps=16", f"reward.model.base_url={server.url}",
                              "reward.model.max_retries=0", "reward.model.backoff_s=0.01", "reward.model.cooldown_s=0.2",
                              "reward.model.liveness_s=5", recipe=served)
        finally:
            stop.set()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    hit = [r for r in rows if r["reward/valid_fraction"] < 1.0]
    assert hit and all(r.get("reward/down_fraction", 0) > 0 for r in hit)  # the dead window's samples: down, not made up
    assert rows[-1]["reward/valid_fraction"] == 1.0 and "reward/down_fraction" not in rows[-1]  # both processes scored again
    assert server.refused > 0 and set(server.answered.values()) == {1}  # it was down; nothing answered twice


# ---------------------------------------------------------------------------------------------
# Slow: a fleet of two replicas behind the real vllm-router, one killed mid-step
# ---------------------------------------------------------------------------------------------
def _answered(record, after: dict[int, int] | None = None) -> list[dict]:
    """The chat requests each replica of the fleet answered so far (after its first ``after[port]``), with its port."""
    return [{**json.loads(line), "port": port} for path in sorted(record.glob("answered_*.jsonl")) for port in [int(path.stem.split("_")[1])]
            for line in path.read_text().splitlines()[(after or {}).get(port, 0):]]


@pytest.mark.slow
def test_a_replica_killed_mid_step_loses_no_sample_scores_none_twice_and_is_named(tmp_path):
    """The judge as a fleet: two replicas behind the real vllm-router, started by `cac-align serve`'s own
    code (started_fleet, consistent_hash on our X-Session-ID); each replica is tests/chat_server.py's
    server in a process of its own (tests/fixtures/stand_in_vllm, STAND_IN_RECORD), writing down every
    chat request it answers. A flow-grpo run on the served recipe (recipes/align/flow_grpo_tiny_served.yaml:
    6 samples a step, each a status read of several requests) runs once whole, then again with the fleet's
    chat request half-way through step 1 killing the replica it reaches (SIGKILL, before answering it).
    The second run completes both steps with every sample valid and the same rewards; the replicas
    answered exactly the requests of the whole run, each once (the killed one's by the other replica: the
    router routed around the dead replica, and our client's retries of its 5xx reached the survivor);
    and each step's metrics count the dead replica and name it by its URL, where the whole run's count 0."""
    import os
    import sys
    from collections import Counter

    from cac_align.integrations.vllm.serving import free_ports, started_fleet
    from cac_align.jobs.serve import ServeConfig

    record = tmp_path / "record"
    record.mkdir()
    paths = [REPO_ROOT / "tests/fixtures/stand_in_vllm", REPO_ROOT, REPO_ROOT / "tests"]
    serve = ServeConfig(model="cac-demo", served_model_name="cac-demo", python=sys.executable, port=free_ports(3), replicas=2,
                        env={"PYTHONPATH": os.pathsep.join(map(str, paths)), "STAND_IN_RECORD": str(record)}, ready_timeout_s=60)
    served = REPO_ROOT / "recipes/align/flow_grpo_tiny_served.yaml"

    def flow_grpo(out):
        run(load_config(FlowGrpoConfig, served, [f"out_dir={out}", f"reward.model.base_url={fleet.url}"], job="flow-grpo"))
        return _metrics(out)

    with started_fleet(serve, log_dir=str(tmp_path)) as fleet:
        whole = flow_grpo(tmp_path / "whole")
        first = _answered(record)
        per_step = len(first) // len(whole)
        # the kill: the second run's chat request half-way through its step 1
        (record / "die_at").write_text(str(len((record / "arrivals").read_text()) + per_step // 2))
        killed = flow_grpo(tmp_path / "killed")
        dead = fleet.dead_replicas()
    second = _answered(record, after=Counter(a["port"] for a in first))
    (victim,) = record.glob("killed_*")
    victim_port, request = int(victim.name.split("_")[1]), json.loads(victim.read_text())
    victim_url = f"http://127.0.0.1:{victim_port}"
    assert dead == [fleet.replica_urls.index(victim_url + "/v1")]
    # both steps complete, every sample valid, with the rewards of the whole run
    assert [r["step"] for r in killed] == [1, 2] and all(r["reward/valid_fraction"] == 1.0 for r in killed), killed
    assert [r["reward/mean"] for r in killed] == [r["reward/mean"] for r in whole]
    # every request of the whole run answered once (each sample scored once), none twice, none lost
    assert set(Counter(a["digest"] for a in first).values()) == {1}
    assert Counter(a["digest"] for a in second) == Counter(a["digest"] for a in first)
    assert len({a["session"] for a in first}) == 12  # 6 samples a step, each its own session key
    # the request that reached the dying replica was answered by the other one
    assert [a["port"] for a in second if a["digest"] == request["digest"]] == [victim_port + (1 if victim_port == serve.port + 1 else -1)]
    # the metrics: 2 replicas, none down in the whole run; the dead one counted and named in each step after the kill
    assert all(r["reward/replicas"] == 2 and r["reward/replicas_down"] == 0 and "reward/replicas_down_urls" not in r for r in whole)
    assert all(r["reward/replicas"] == 2 and r["reward/replicas_down"] == 1 and r["reward/replicas_down_urls"] == [victim_url] for r in killed)
