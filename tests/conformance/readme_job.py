"""The README main job's rows in-process (recipes/score/cac_demo.yaml): the reference the served runs of
test_vllm_server.py and test_vllm_fleet.py are compared with.

``.ci/run`` names one folder for its whole run in ``CAC_TEST_SHARED_DIR``. Its wheel check runs this very job (``cac-align
score --config score/cac_demo`` from the installed wheel, tests/wheel_check.sh) and leaves its rows there, so the two
modules, run side by side in two pytest processes, read them: the job is scored in-process once a run, not twice (about
45 s of a CPU each time). Were they missing, the first process to ask scores the 16 videos and writes their rows
there, and the other waits for them and reads them. Without the variable, each process scores its own.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from conftest import REPO_ROOT


def _score(out: Path) -> list[dict]:
    from cac_align.cli import main

    assert main(["score", "--config", str(REPO_ROOT / "recipes/score/cac_demo.yaml"), f"out_dir={out}"]) == 0
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def readme_job_rows(out: Path) -> list[dict]:
    """The rows of ``cac-align score --config recipes/score/cac_demo.yaml`` run in this process into ``out``, or, under
    ``CAC_TEST_SHARED_DIR``, those another process of the same run wrote there (the wheel check, or the first to ask,
    holding the folder's lock while it scores; a process that failed leaves none, and the next scores them itself)."""
    shared = os.environ.get("CAC_TEST_SHARED_DIR")
    if not shared:
        return _score(out)
    folder = Path(shared)
    folder.mkdir(parents=True, exist_ok=True)
    written = folder / "readme_job_results.jsonl"
    with open(folder / "readme_job.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if not written.is_file():
            rows = _score(out)
            partial = written.with_suffix(".partial")
            partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
            partial.replace(written)
            return rows
    return [json.loads(line) for line in written.read_text().splitlines()]
