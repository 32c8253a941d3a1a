"""Run folders never lose a user's work: the rules of cac_align.run.folder.RunFolder, job by job.

Every test here puts files of "the user" where a job runs and checks they survive, overwrite
included; a folder of another job is refused with that job's name.
"""

from __future__ import annotations

import json

import pytest

from cac_align.config import RecipeError
from cac_align.run.folder import MANIFEST, RunFolder, read_manifest
from conftest import default_sigint, stop_process_tree

OUTPUTS = ("results.jsonl", "figures")


def _user_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "my_data").mkdir(exist_ok=True)
    (folder / "my_data" / "x.json").write_text("{}")


def _user_files_survive(folder):
    return (folder / "notes.txt").read_text() == "my notes" and (folder / "my_data" / "x.json").exists()


# ---------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------
def test_manifest_is_written_on_start_only(tmp_path):
    folder = RunFolder(tmp_path / "run", "score", OUTPUTS, {"seed": 1}, {"seed": 1, "out_dir": "x"})
    assert not folder.resuming and not (tmp_path / "run").exists()  # checking writes nothing
    folder.start()
    manifest = read_manifest(tmp_path / "run")
    assert manifest["job"] == "score" and manifest["outputs"] == list(OUTPUTS)
    assert manifest["fingerprint"] == {"seed": 1} and manifest["config"]["out_dir"] == "x"
    assert RunFolder(tmp_path / "run", "score", OUTPUTS, {"seed": 1}).resuming  # same config: continue
    assert (folder / "results.jsonl") == tmp_path / "run" / "results.jsonl"
    with pytest.raises(ValueError, match="not among the declared outputs"):
        folder / "summary.md"


def test_another_config_is_refused_and_overwrite_deletes_only_the_runs_outputs(tmp_path):
    out = tmp_path / "run"
    RunFolder(out, "score", OUTPUTS, {"seed": 1, "model": {"name": "a"}}).start()
    (out / "results.jsonl").write_text("old\n")
    (out / "figures").mkdir()
    (out / "figures" / "f.png").write_bytes(b"png")
    _user_files(out)
    with pytest.raises(RecipeError, match=r"holds a score run with a different config \(differs in: model.name, seed\)"):
        RunFolder(out, "score", OUTPUTS, {"seed": 2, "model": {"name": "b"}})
    folder = RunFolder(out, "score", OUTPUTS, {"seed": 2, "model": {"name": "b"}}, overwrite=True)
    assert (out / "results.jsonl").exists()  # nothing is deleted before the run starts
    folder.start()
    assert not (out / "results.jsonl").exists() and not (out / "figures").exists()
    assert _user_files_survive(out) and read_manifest(out)["fingerprint"]["seed"] == 2


def test_overwrite_never_deletes_what_a_tampered_record_names(tmp_path, caplog):
    # The manifest is data from disk: entries this job does not declare are ignored, whatever
    # they say (a sibling, the parent, an absolute path), and links are removed, not followed.
    parent = tmp_path / "p"
    out = parent / "run"
    RunFolder(out, "score", OUTPUTS, {"seed": 1}).start()
    (out / "results.jsonl").write_text("old\n")
    victim = parent / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("precious too")
    (out / "figures").symlink_to(elsewhere)  # a declared output that is a link
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["outputs"] += ["../victim", "..", str(victim), "figures"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    folder = RunFolder(out, "score", OUTPUTS, {"seed": 2}, overwrite=True)
    folder.start()
    assert (victim / "keep.txt").read_text() == "precious" and (parent / "run").is_dir()
    assert (elsewhere / "keep.txt").read_text() == "precious too"  # the link went, not its target
    assert not (out / "figures").exists() and not (out / "results.jsonl").exists()
    assert "../victim" in caplog.text and "does not write: left alone" in caplog.text


HOLD_A_RUN = """
import sys, time
from cac_align.run.folder import RunFolder
RunFolder(sys.argv[1], "score", ("results.jsonl",), {"seed": 1}).start()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow  # ~5 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_a_busy_folder_is_refused_and_a_killed_runs_lock_does_not_block(tmp_path):
    import signal
    import subprocess
    import sys

    from cac_align.cli import main
    from conftest import REPO_ROOT

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_RUN, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # a second process: the real CLI, refused with one line naming the first, before loading anything
        second = subprocess.run(
            [sys.executable, "-m", "cac_align.cli", "score", "--config", str(REPO_ROOT / "recipes/score/cac_tiny.yaml"), "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert second.returncode == 2, second.stderr
        assert f"is in use by a score run (pid {holder.pid} on " in second.stderr and "wait for it to finish" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and not (out / "results.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # killed mid-run: the kernel drops its lock
        holder.wait()
    assert (out / ".cac_align.lock").exists()  # the file stays; its lock does not
    # the refused command, run again after the kill, goes through (here in-process)
    assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_tiny.yaml"), "--out", str(out), "overwrite=true"]) == 0
    assert (out / "results.jsonl").exists()


def test_files_of_the_user_where_outputs_go_are_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "run"
    _user_files(out)
    (out / "results.jsonl").write_text("the user's own results\n")
    for overwrite in (False, True):
        with pytest.raises(RecipeError, match=r"already has results.jsonl, not written by a recorded score run there"):
            RunFolder(out, "score", OUTPUTS, {}, overwrite=overwrite)
    assert (out / "results.jsonl").read_text() == "the user's own results\n"
    # a folder of an older cac_align says so
    (out / "config.yaml").write_text("fingerprint: {}\n")
    with pytest.raises(RecipeError, match="older cac_align, recorded in config.yaml"):
        RunFolder(out, "score", OUTPUTS, {})


def test_another_jobs_folder_is_refused_with_its_name_and_a_bad_manifest_is_named(tmp_path):
    RunFolder(tmp_path / "run", "flow-grpo", ("lora", "metrics.jsonl"), {}).start()
    for overwrite in (False, True):
        with pytest.raises(RecipeError, match="holds a flow-grpo run; a bon run needs a folder of its own"):
            RunFolder(tmp_path / "run", "bon", ("summary.md",), {}, overwrite=overwrite)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(RecipeError, match="is not readable JSON"):
        RunFolder(tmp_path / "bad", "bon", ("summary.md",), {})
    (tmp_path / "bad" / MANIFEST).write_text(json.dumps({"hello": 1}))
    with pytest.raises(RecipeError, match="not a cac_align run manifest"):
        read_manifest(tmp_path / "bad")


# ---------------------------------------------------------------------------------------
# Job by job
# ---------------------------------------------------------------------------------------
def test_synth_keeps_the_users_files_and_refuses_their_annotations(tmp_path):
    from cac_align.data.synthetic import SynthConfig, generate

    out = tmp_path / "synth"
    _user_files(out)
    (out / "annotations.jsonl").write_text("my labels\n")
    with pytest.raises(RecipeError, match="already has annotations.jsonl"):
        generate(SynthConfig(out_dir=str(out), n=2, height=32, width=48, duration_s=2.0, fps=8.0, overwrite=True))
    assert (out / "annotations.jsonl").read_text() == "my labels\n"
    (out / "annotations.jsonl").unlink()
    generate(SynthConfig(out_dir=str(out), n=2, height=32, width=48, duration_s=2.0, fps=8.0))
    generate(SynthConfig(out_dir=str(out), n=1, height=32, width=48, duration_s=2.0, fps=8.0, overwrite=True))
    assert len(list((out / "videos").glob("*.mp4"))) == 1 and _user_files_survive(out)


def test_score_keeps_the_users_figure_and_refuses_their_report(tmp_path):
    from cac_align.jobs.score import ScoreConfig, run

    out = tmp_path / "score"
    _user_files(out)
    (out / "report.html").write_text("<p>my report</p>")
    config = ScoreConfig(out_dir=str(out), synth_videos=2, reward={"name": "brightness"})
    with pytest.raises(RecipeError, match="already has report.html"):
        run(config)
    (out / "report.html").unlink()
    run(config)
    # a picture of the user's in evidence/ survives the rerun; a picture of the job's own is replaced
    (out / "evidence" / "my_figure.png").write_bytes(b"mine")
    (out / "evidence" / "00001.png").write_bytes(b"stale")
    run(config)
    assert (out / "evidence" / "my_figure.png").read_bytes() == b"mine" and not (out / "evidence" / "00001.png").exists()
    with pytest.raises(RecipeError, match=r"differs in: synth_seed"):
        run(ScoreConfig(out_dir=str(out), synth_videos=2, synth_seed=3, reward={"name": "brightness"}))
    run(ScoreConfig(out_dir=str(out), synth_videos=2, synth_seed=3, reward={"name": "brightness"}, overwrite=True))
    assert _user_files_survive(out) and (out / "evidence" / "my_figure.png").exists()


def test_bon_refuses_a_flow_grpo_folder_and_the_users_summary(tmp_path):
    from test_best_of_n import ScriptedReward, _config

    from cac_align.jobs.best_of_n import run

    flow = tmp_path / "bon"  # the folder bon's _config points at
    RunFolder(flow, "flow-grpo", ("lora", "metrics.jsonl"), {"seed": 0}).start()
    before = (flow / MANIFEST).read_text()
    for overwrite in (False, True):
        with pytest.raises(RecipeError, match="holds a flow-grpo run"):
            run(_config(tmp_path, ["a cat"], overwrite=overwrite), reward=ScriptedReward({"a cat": [0.1, 0.2, 0.3]}))
    assert (flow / MANIFEST).read_text() == before  # that run can still resume
    (flow / MANIFEST).unlink()
    (flow / "summary.md").write_text("my summary")
    with pytest.raises(RecipeError, match="already has summary.md"):
        run(_config(tmp_path, ["a cat"]), reward=ScriptedReward({"a cat": [0.1, 0.2, 0.3]}))
    assert (flow / "summary.md").read_text() == "my summary"


def test_flow_grpo_refuses_a_folder_with_the_users_lora_and_metrics(tmp_path):
    from test_flow_grpo import _bright

    from cac_align.jobs.flow_grpo import run

    out = tmp_path / "run"
    (out / "lora").mkdir(parents=True)
    (out / "lora" / "my_adapter.safetensors").write_bytes(b"weights")
    (out / "metrics.jsonl").write_text('{"mine": 1}\n')
    for extra in ((), ("overwrite=true",)):
        with pytest.raises(RecipeError, match="already has lora, metrics.jsonl"):
            run(_bright(tmp_path, "steps=1", *extra, name="run"))
    assert (out / "lora" / "my_adapter.safetensors").read_bytes() == b"weights"
    assert (out / "metrics.jsonl").read_text() == '{"mine": 1}\n'


def _h3_layout(tmp_path, *overrides):
    from cac_align.config import load_config
    from cac_align.jobs.flow_grpo import FlowGrpoConfig
    from conftest import REPO_ROOT

    return load_config(FlowGrpoConfig, REPO_ROOT / "recipes/align/flow_grpo_tiny_brightness.yaml",
                       [f"out_dir={tmp_path / 'run'}", "parallel.shard=fsdp2", *overrides], job="flow-grpo")


def test_a_layout_change_names_both_layouts_and_the_lora_and_never_suggests_overwrite(tmp_path):
    """Issue #105: resuming an HSDP folder (4 processes, replicate 2) with replicate 1 on 2 processes was refused as
    "differs in: parallel.replicate; pass overwrite=true ...": no value named, and overwrite deletes the checkpoints."""
    from cac_align.jobs.flow_grpo import _run_folder

    out = tmp_path / "run"
    _run_folder(_h3_layout(tmp_path, "parallel.replicate=2"), ["a prompt"], processes=4).start()
    assert read_manifest(out)["processes"] == 4
    step = out / "checkpoints" / "step_000002"
    (step / "lora").mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"step": 2, "parallel": {"processes": 4, "shard": "fsdp2", "replicate": 2}}))
    with pytest.raises(RecipeError) as refused:
        _run_folder(_h3_layout(tmp_path, "resume=true"), ["a prompt"], processes=2)
    said = str(refused.value)
    assert ("that run: 4 processes, parallel.shard=fsdp2, parallel.replicate=2, parallel.context_parallel=1; "
            "this one: 2 processes, parallel.shard=fsdp2, parallel.replicate=1, parallel.context_parallel=1 "
            "(differs in: processes 4 -> 2; parallel.replicate 2 -> 1)") in said, said
    assert f"its trained LoRA is in {step / 'lora'}" in said and "generator.lora=" in said
    assert "pass overwrite=true" not in said and "\n" not in said
    # a folder of before the manifest recorded its processes: the checkpoint's state.json names them
    manifest = read_manifest(out)
    manifest.pop("processes")
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RecipeError, match=r"that run: 4 processes, .*this one: 2 processes"):
        _run_folder(_h3_layout(tmp_path, "resume=true"), ["a prompt"], processes=2)
    # the layout and more: replacing is a choice, said with what it deletes
    with pytest.raises(RecipeError, match=r"parallel.replicate 2 -> 1\), and its config differs too \(in: learning_rate\): choose another "
                                          r"out_dir, or pass overwrite=true to replace that run's outputs, which deletes its checkpoints and "
                                          r"lora/; its trained LoRA is in "):
        _run_folder(_h3_layout(tmp_path, "resume=true", "learning_rate=0.5"), ["a prompt"], processes=2)
    assert step.is_dir()  # nothing was deleted
    # the parallel section left out at its defaults (plain data parallel) on one side: named by its settings, not as "parallel"
    RunFolder(tmp_path / "one", "flow-grpo", ("lora",), {"seed": 1, "parallel": {"shard": "fsdp2"}}, processes=1).start()
    with pytest.raises(RecipeError, match=r"that run: 1 process, parallel.shard=fsdp2, .*this one: 1 process, parallel.shard=none, "
                                          r"parallel.replicate=1, parallel.context_parallel=1 \(differs in: parallel.shard fsdp2 -> none\)"):
        RunFolder(tmp_path / "one", "flow-grpo", ("lora",), {"seed": 1}, processes=1)


def test_synth_cot_refuses_to_write_into_a_synth_folder(tmp_path):
    from cac_align.jobs.synth_cot import SynthCotConfig, run
    from cac_align.data.synthetic import SynthConfig, generate

    data = tmp_path / "data"
    generate(SynthConfig(out_dir=str(data), n=2, height=32, width=48, duration_s=2.0, fps=8.0))
    labels = (data / "annotations.jsonl").read_text()
    with pytest.raises(RecipeError, match="holds a synth run; a synth-cot run needs a folder of its own"):
        run(SynthCotConfig(annotations=str(data / "annotations.jsonl"), out_dir=str(data), overwrite=True))
    assert (data / "annotations.jsonl").read_text() == labels  # the synth labels are intact


def test_eval_bench_and_report_keep_the_users_files(tmp_path):
    from cac_align.jobs.report import ReportConfig, run as report

    vbench = tmp_path / "vbench.json"
    vbench.write_text(json.dumps({"systems": {"base": {"dimensions": {"imaging_quality": {"mean": 0.5}}},
                                              "tuned": {"dimensions": {"imaging_quality": {"mean": 0.6}}}}}))
    out = tmp_path / "report"
    _user_files(out)
    (out / "report.md").write_text("my draft")
    with pytest.raises(RecipeError, match="already has report.md"):
        report(ReportConfig(vbench=str(vbench), out_dir=str(out)))
    (out / "report.md").unlink()
    report(ReportConfig(vbench=str(vbench), out_dir=str(out)))
    with pytest.raises(RecipeError, match="differs in: title"):
        report(ReportConfig(vbench=str(vbench), out_dir=str(out), title="Other"))
    report(ReportConfig(vbench=str(vbench), out_dir=str(out), title="Other", overwrite=True))
    assert _user_files_survive(out) and "# Other" in (out / "report.md").read_text()


def test_how_a_reward_model_is_reached_is_not_part_of_the_fingerprint(tmp_path):
    from test_best_of_n import _config

    from cac_align.jobs.best_of_n import _RUN_ONLY_KEYS
    from cac_align.run.folder import run_fingerprint

    def section(url, timeout, name="cac-server"):
        model = {"name": name, "backend": "openai", "base_url": url, "timeout_s": timeout, "max_retries": 1}
        return {"name": "ur_cac", "cac": {"model": model}, "unified_reward": {"model": dict(model, name="ur")}}

    a = run_fingerprint(_config(tmp_path, ["a cat"], reward=section("http://127.0.0.1:8000/v1", 120.0)), ["a cat"], _RUN_ONLY_KEYS)
    b = run_fingerprint(_config(tmp_path, ["a cat"], reward=section("http://127.0.0.1:9000/v1", 30.0)), ["a cat"], _RUN_ONLY_KEYS)
    c = run_fingerprint(_config(tmp_path, ["a cat"], reward=section("http://127.0.0.1:8000/v1", 120.0, name="other")), ["a cat"], _RUN_ONLY_KEYS)
    assert a == b  # a moved server resumes the run ...
    assert a != c and "base_url" not in json.dumps(a)  # ... another model does not


# ---------------------------------------------------------------------------------------
# Reward servers that are dead, trickle, hang or die midway
# ---------------------------------------------------------------------------------------
def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_score(tmp_path, url, *extra):
    from test_score_job import _write_videos

    from conftest import REPO_ROOT

    _write_videos(tmp_path / "videos", 2)
    return ["score", "--config", str(REPO_ROOT / "recipes/score/cac_vllm.yaml"), f"videos={tmp_path / 'videos'}",
            f"out_dir={tmp_path / 'out'}", f"reward.model.base_url={url}", *extra]


def test_a_dead_server_fails_score_in_seconds_with_one_line(tmp_path, capsys):
    import time

    from cac_align.cli import main

    start = time.monotonic()
    code = main(_vllm_score(tmp_path, f"http://127.0.0.1:{_free_port()}/v1"))
    err = capsys.readouterr().err.strip()
    assert code == 1 and time.monotonic() - start < 10
    assert err.startswith("cac-align score: failed: no reward server answers at http://127.0.0.1:") and "\n" not in err
    assert read_manifest(tmp_path / "out") is None  # a failed start leaves no record


def test_a_wrong_model_name_is_named(tmp_path, capsys):
    from chat_server import ChatServer

    from cac_align.cli import main

    with ChatServer(models=("Qwen/Qwen3-VL-8B-Instruct",)) as server:
        assert main(_vllm_score(tmp_path, server.url)) == 1
    assert "serves ['Qwen/Qwen3-VL-8B-Instruct'], not 'cac'; fix model.name" in capsys.readouterr().err


def test_a_server_that_fails_every_request_makes_score_exit_non_zero(tmp_path, capsys):
    from chat_server import ChatServer

    from cac_align.cli import main

    with ChatServer(fail_if=lambda body: True) as server:  # up, but every answer is a 503
        code = main(_vllm_score(tmp_path, server.url, "reward.model.max_retries=0"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # the circuit breaker: three failed requests in a row stop the job, in one line, exit 1
    assert code == 1 and f"the reward server at {server.url} stopped answering: 3 requests in a row failed" in err
    assert "stopped after 0 of 2 videos" in err
    assert (tmp_path / "out/results.jsonl").read_text() == ""  # nothing was scored, and nothing made up


@pytest.mark.slow  # ~12 s of the default suite on 2 cores (2026-11-26): `pytest -m slow`, which .ci/run runs
def test_a_server_that_dies_mid_run_stops_score_in_seconds_keeping_what_was_scored(tmp_path, capsys):
    import time

    from chat_server import ChatServer
    from test_score_job import _write_videos

    from cac_align.cli import main
    from conftest import REPO_ROOT

    _write_videos(tmp_path / "videos", 6)
    # what one video costs the server (its answer, then its status read through the cache)
    with ChatServer(answer=lambda messages: '{"status": "normal", "anomalies": []}') as server:
        assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_vllm.yaml"), f"videos={tmp_path / 'videos' / 'v0.mp4'}",
                     f"out_dir={tmp_path / 'probe'}", f"reward.model.base_url={server.url}"]) == 0
        per_video = len(server.requests)
    answered = []

    def dies_after_the_first_batch(body):
        answered.append(1)
        return len(answered) > 2 * per_video  # the first batch (2 videos) is answered, then none

    with ChatServer(answer=lambda messages: '{"status": "normal", "anomalies": []}', fail_if=dies_after_the_first_batch) as server:
        start = time.monotonic()
        code = main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_vllm.yaml"), f"videos={tmp_path / 'videos'}",
                     f"out_dir={tmp_path / 'out'}", f"reward.model.base_url={server.url}", "batch_size=2",
                     "reward.model.max_retries=1", "reward.model.timeout_s=5"])
        seconds = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "stopped answering" in err and "stopped after 2 of 6 videos" in err
    assert seconds < 30  # not the retries and timeouts of every remaining video
    rows = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["valid"] for r in rows)  # the videos scored before it died
    # the server is back (another one, on another port: serving keys are not the run's config):
    # the same command keeps the 2 rows and asks only for the 4 others
    with ChatServer(answer=lambda messages: '{"status": "normal", "anomalies": []}') as server:
        code = main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_vllm.yaml"), f"videos={tmp_path / 'videos'}",
                     f"out_dir={tmp_path / 'out'}", f"reward.model.base_url={server.url}", "batch_size=2"])
        asked = {json.dumps(body["messages"][0]["content"][0])[:200] for body in server.requests if "messages" in body}
    assert code == 0 and "resuming a stopped run: 2 of 6 videos kept" in capsys.readouterr().out
    resumed = [json.loads(line) for line in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert resumed[:2] == rows and len(resumed) == 6 and all(r["valid"] for r in resumed)
    # 4 videos, each as much as one video costs (less the node texts, remembered by the backend)
    assert 4 * (per_video - 12) <= len(server.requests) <= 4 * per_video and len(asked) == 4
    # a finished run is scored again on a rerun, as before
    with ChatServer(answer=lambda messages: '{"status": "normal", "anomalies": []}') as server:
        assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_vllm.yaml"), f"videos={tmp_path / 'videos'}",
                     f"out_dir={tmp_path / 'out'}", f"reward.model.base_url={server.url}", "batch_size=2"]) == 0
        answers = [body for body, path in zip(server.requests, server.paths) if path.endswith("/chat/completions") and not body.get("logprob_token_ids")]
    assert len(answers) == 6  # every video answered again


def test_a_trickling_server_hits_the_deadline():
    import time

    from chat_server import ChatServer

    from cac_align.vlm.backend import user
    from cac_align.vlm.openai import OpenAIBackend, ServerUnavailableError

    with ChatServer(trickle_s=0.02) as server:  # each byte arrives in time; the answer (~300 bytes) takes ~6 s
        backend = OpenAIBackend("cac", base_url=server.url, timeout_s=0.5, max_retries=0)
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=r"no complete answer within 0.5 s"):
            backend.generate([[user("hello")]], max_new_tokens=4)
        assert time.monotonic() - start < 2.0


def test_ctrl_c_during_a_hung_request_stops_at_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from chat_server import ChatServer

    script = tmp_path / "hang.py"
    script.write_text(
        "import sys\n"
        "from cac_align.vlm.backend import user\n"
        "from cac_align.vlm.openai import OpenAIBackend\n"
        "backend = OpenAIBackend('cac', base_url=sys.argv[1], timeout_s=60, max_retries=5)\n"
        "print('requesting', flush=True)\n"
        "try:\n"
        "    backend.generate([[user('hello')]] * 3)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    with ChatServer(delay_s=30) as server:  # never answers in time
        proc = subprocess.Popen([sys.executable, str(script), server.url], stdout=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        try:
            assert proc.stdout.readline().strip() == "requesting"
            time.sleep(1.0)
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=20)
        finally:
            stop_process_tree(proc)
        assert proc.returncode == 130 and "interrupted" in out
        assert time.monotonic() - start < 3.0  # not the 60 s timeout, nor five retries


def test_bon_leaves_a_prompt_the_backend_could_not_score_for_the_rerun(tmp_path, capsys):
    from test_best_of_n import _config, _rows

    from cac_align.gen.generator import PipelineGenerator
    from cac_align.gen.families.wan import build_tiny_wan_pipeline
    from cac_align.jobs.best_of_n import run
    from cac_align.rewards import RewardOutput
    from cac_align.rewards.base import BackendFailure

    class Server:
        """A reward whose server is down for the prompt "a dog" until it comes back."""

        name = "served"

        def __init__(self, down):
            self.down = down

        def __call__(self, videos, prompts, metadata=None):
            import numpy as np

            if self.down and prompts[0] == "a dog":
                details = [{"error": "backend failed: server unreachable", "error_kind": "backend"} for _ in prompts]
                return RewardOutput(self.name, np.full(len(prompts), np.nan), np.zeros(len(prompts), bool), details)
            return RewardOutput(self.name, np.arange(len(prompts), dtype=float) / 10, np.ones(len(prompts), bool))

    generator = PipelineGenerator(build_tiny_wan_pipeline(seed=0))
    with pytest.raises(BackendFailure, match="1 of 2 prompts were not scored.*rerun the same command"):
        run(_config(tmp_path, ["a cat", "a dog"]), reward=Server(down=True), generator=generator)
    assert {r["prompt"] for r in _rows(tmp_path / "bon")} == {"a cat"}  # no fallback recorded for "a dog"
    run(_config(tmp_path, ["a cat", "a dog"]), reward=Server(down=False), generator=generator)
    rows = _rows(tmp_path / "bon")
    assert {r["prompt"] for r in rows} == {"a cat", "a dog"} and all(r["chosen_by"] != "fallback" for r in rows if r["chosen"])
