"""Our ``audiobox`` reward equals AudioBox-Aesthetics' own predictor (PyPI ``audiobox-aesthetics``
0.0.4, in .venv-audiobox) on the same waveforms, on a random-weight model of their class (issue #89,
"Authors' numbers"); and the sync reward's log-mel equals torchaudio's.

Runs tests/conformance/audiobox_check.py in that venv (``bash tests/conformance/build_audiobox_venv.sh``;
``CAC_AUDIOBOX_PYTHON`` names another interpreter). About 20 s.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.conformance

AUDIOBOX_PYTHON = os.environ.get("CAC_AUDIOBOX_PYTHON") or str(REPO_ROOT / ".venv-audiobox" / "bin" / "python")
AXES = ("CE", "CU", "PC", "PQ")


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    if not Path(AUDIOBOX_PYTHON).exists():
        pytest.fail(f"no AudioBox-Aesthetics interpreter at {AUDIOBOX_PYTHON}: build it with `bash tests/conformance/build_audiobox_venv.sh`")
    folder = tmp_path_factory.mktemp("audiobox")
    run = subprocess.run([AUDIOBOX_PYTHON, str(REPO_ROOT / "tests" / "conformance" / "audiobox_check.py"), str(folder)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and (folder / "out.json").exists(), run.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())


def test_at_the_models_rate_each_axis_equals_their_predictor(checked):
    got = checked["stereo_16k_12.5s"]  # two windows (10 s + 2.5 s, weighted 1 and 0.25), two channels mixed
    assert got["valid"]
    for axis in AXES:
        assert got["ours"][axis] == pytest.approx(got["theirs"][axis], abs=1e-4), axis
    assert got["score"] == pytest.approx(got["theirs_score"], abs=1e-5)
    assert len({round(got["theirs"][a], 3) for a in AXES}) == 4  # four different numbers, not one repeated


def test_at_another_rate_the_resamplers_differ_a_little(checked):
    # 48 kHz: scipy's polyphase filter here, torchaudio's sinc there
    got = checked["mono_48k_3s"]
    assert got["valid"]
    for axis in AXES:
        assert got["ours"][axis] == pytest.approx(got["theirs"][axis], abs=0.02), axis


def test_silence_is_invalid_not_scored(checked):
    # their predictor would give silence four numbers; a reward gives it none (rewards/audio.py)
    got = checked["silent"]
    assert not got["valid"] and got["error_kind"] == "audio" and "silent" in got["error"]


def test_the_sync_rewards_log_mel_equals_torchaudios(checked):
    assert checked["log_mel"] < 1e-3
