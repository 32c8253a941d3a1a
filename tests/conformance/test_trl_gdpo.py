"""GDPO: our ``normalize_then_sum`` (cac_align.rl.advantages) equals trl 1.16.0's own GRPOTrainer with
``multi_objective_aggregation="normalize_then_sum"`` on the same reward numbers, invalid ones
(``None``) included, to float32 rounding (issue #104).

Runs tests/conformance/trl_gdpo_check.py in .venv-trl (``bash tests/conformance/build_trl_venv.sh``;
``CAC_TRL_PYTHON`` names another interpreter): trl's ``_generate_and_score_completions`` generates with
a tiny random Llama, calls reward functions that return the fixed numbers, and turns them into
advantages; this process computes ours on the same numbers. About 30 s.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cac_align.rl.advantages import normalize_then_sum
from conftest import REPO_ROOT

pytestmark = pytest.mark.conformance

TRL_PYTHON = os.environ.get("CAC_TRL_PYTHON") or str(REPO_ROOT / ".venv-trl" / "bin" / "python")


def _f32(x: float | None) -> float | None:
    return None if x is None else float(np.float32(x))


def _random_case(seed: int, groups: int, g: int, scales: list[float], weights: list[float], missing: float) -> dict:
    rng = np.random.default_rng(seed)
    columns = {}
    for k, scale in enumerate(scales):
        values = rng.normal(0.0, scale, size=groups * g) + 3.0 * scale
        columns[f"r{k}"] = [None if rng.random() < missing else _f32(v) for v in values]
    return {"num_generations": g, "columns": columns, "weights": weights}


CASES = {
    # tests/rl/test_gdpo.py's first hand-worked case: -+0.86591934
    "by_hand": {"num_generations": 2, "columns": {"a": [1, 3, 0, 0], "b": [0, 0, 2, 4]}, "weights": [1.0, 1.0]},
    # invalid scores: a row with no valid component, components with one valid value in a group, weight 2
    "invalid": {"num_generations": 3, "columns": {"a": [1, 2, None, None, 0, 2], "b": [None, 4, 6, None, None, None]}, "weights": [1.0, 2.0]},
    # a group without signal (all equal), a group whose components cancel, and scales 100x apart
    "no_signal": {"num_generations": 2, "columns": {"a": [2, 2, 0, 100, 0, 1, 5, 7], "b": [4, 4, 0, 1, 1, 0, 0.5, 0.25]},
                  "weights": [1.0, 1.0]},
    # one scorable row in the whole batch: every advantage 0
    "one_scorable": {"num_generations": 2, "columns": {"a": [0.5, None, None, None]}, "weights": [1.0]},
    "random_3x4_three_components": _random_case(0, groups=3, g=4, scales=[100.0, 1.0, 0.01], weights=[1.0, 0.5, 2.0], missing=0.15),
    "random_2x8_two_components": _random_case(1, groups=2, g=8, scales=[1.0, 10.0], weights=[0.3, 1.0], missing=0.1),
    "random_4x2_one_component": _random_case(2, groups=4, g=2, scales=[5.0], weights=[1.0], missing=0.2),
}


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    if not Path(TRL_PYTHON).exists():
        pytest.fail(f"no trl interpreter at {TRL_PYTHON}: build it with `bash tests/conformance/build_trl_venv.sh`")
    folder = tmp_path_factory.mktemp("trl")
    (folder / "cases.json").write_text(json.dumps(list(CASES.values())))
    run = subprocess.run([TRL_PYTHON, str(REPO_ROOT / "tests" / "conformance" / "trl_gdpo_check.py"), str(folder / "cases.json"),
                          str(folder / "out.json")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0 and (folder / "out.json").exists(), run.stderr[-3000:]
    return dict(zip(CASES, json.loads((folder / "out.json").read_text())))


def _ours(case: dict):
    columns = {name: [np.nan if v is None else v for v in values] for name, values in case["columns"].items()}
    n = len(next(iter(columns.values())))
    groups = [i // case["num_generations"] for i in range(n)]
    return normalize_then_sum(columns, groups, weights=dict(zip(columns, case["weights"]))), columns


@pytest.mark.parametrize("name", list(CASES))
def test_advantages_equal_trls(theirs, name):
    ours, columns = _ours(CASES[name])
    trl = np.array(theirs[name], dtype=np.float32)
    # float32 rounding: trl computes in float32, we in float64 and round at the end
    np.testing.assert_allclose(ours.advantages, trl, rtol=1e-5, atol=1e-6)
    # where we say "not trainable", trl's advantage is 0 (unscorable) or 0 up to rounding (no signal)
    assert np.all(np.abs(trl[~ours.trainable]) < 1e-6)
    unscorable = ~np.isfinite(np.stack(list(columns.values()))).any(axis=0)
    assert not ours.trainable[unscorable].any()


def test_the_cases_exercise_what_they_name(theirs):
    # not a vacuous comparison: signal where expected, the invalid rows and the silent groups present
    assert abs(theirs["by_hand"][0] + 0.86591934) < 1e-6
    assert theirs["invalid"][3] == 0.0  # the row with no valid component
    ours, _ = _ours(CASES["no_signal"])
    assert ours.trainable.tolist() == [False, False, True, True, False, False, True, True] and ours.zero_std_fraction == 0.5
    assert all(a == 0.0 for a in theirs["one_scorable"])
    random = np.array(theirs["random_3x4_three_components"])
    assert np.abs(random).max() > 0.5 and any(v is None for values in CASES["random_3x4_three_components"]["columns"].values() for v in values)
