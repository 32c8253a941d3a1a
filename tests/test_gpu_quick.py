"""``bash benchmarks/gpu_quick.sh --check``: the GPU script's steps on tiny models on the CPU.

Slow (48 s beside another test on 2 cores, 2026-11-29: the tiny judge's steps no longer trace the decode step with
dynamo, which tests/vlm/test_grouped_decode.py does): ``.ci/run`` runs ``pytest -m slow`` after the default suite. The GPU run itself needs a GPU (benchmarks/README.md says how).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

STEPS = ("bon_wan", "stage2_8b", "judge_ours", "judge_stock", "decode_attention", "ltx2_step", "ur7b")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO_ROOT / "benchmarks/gpu_quick.sh"), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)


def _results(summary: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for line in summary.splitlines():
        name, _, rest = line.partition(" ")
        if name in STEPS and rest.startswith("{"):
            found.setdefault(name, []).append(json.loads(rest))
    return found


@pytest.mark.slow
def test_check_runs_every_step_and_writes_its_figures(tmp_path):
    out = tmp_path / "quick"
    done = _run("--check", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for name in STEPS:
        assert f"== {name}: done in" in summary, summary
        assert (out / f"{name}.txt").stat().st_size > 0
    results = _results(summary)
    for name in ("judge_ours", "judge_stock"):  # both passes, both turns, as the GPU run reports them
        passes = results[name]
        assert [p["pass"] for p in passes] == [1, 2] and all(p["attention"] == name.split("_")[1] for p in passes)
        assert all(p["s_per_video"] > 0 and set(p["ms_per_token"]) == {"turn1", "turn2"} for p in passes)
    (attention,) = results["decode_attention"]
    assert attention["stock"]["kv_copies"] == 2 and attention["ours"]["kv_copies"] == 0  # K and V copied per query head: stock only
    assert attention["read_ratio"] >= 3 and attention["max_abs_difference"] < 1e-2
    (ltx2,) = results["ltx2_step"]  # one Flow-GRPO step of the tiny LTX-2, and Gemma-3-12B's bf16 weights as arithmetic
    assert ltx2["sample_s_per_video_step"] > 0 and ltx2["train_s_per_video_timestep"] > 0 and ltx2["gemma_3_12b_gib_arithmetic"] == 22.7
    # the memory plans of bon and of stage 2 (#116), each printed, on the tiny models (the GPU run sets its peaks beside them)
    (bon,) = results["bon_wan"]
    assert bon["recipe"] == "bon_wan_ur_cac.yaml" and bon["planned_peak_bytes"] > 0 and set(bon["planned_phases"]) == {"sample", "encode", "decode", "score"}
    (stage2,) = results["stage2_8b"]
    assert stage2["stage"] == 2 and stage2["planned_peak_bytes"] > 0 and stage2["failed"] is None
    assert len(list(out.iterdir())) <= 8  # the device tool brings back at most 8 files


@pytest.mark.slow
def test_a_closing_window_skips_steps_and_the_gpu_mode_needs_a_gpu(tmp_path):
    done = _run("--check", "--budget", "1", str(tmp_path / "late"), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "late" / "summary.txt").read_text()
    assert all(f"== {name}: skipped" in summary for name in STEPS), summary
    import torch

    if not torch.cuda.is_available():
        gpu = _run(str(tmp_path / "gpu"), timeout=300)
        assert gpu.returncode == 1 and "no CUDA GPU visible to torch" in (tmp_path / "gpu" / "summary.txt").read_text()
