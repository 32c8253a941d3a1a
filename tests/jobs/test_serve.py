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
    config = ServeConfig(model=str(REPO_ROOT / "cac_align/models/cac-demo"), python=sys.executable, port=18765)
    with pytest.raises(RecipeError, match=r"cannot import vllm; build one with: bash tests/conformance/build_vllm_venv.sh"):
        with started_server(config):
            pass
    config = ServeConfig(model="cac-demo", python=str(tmp_path / "nope" / "python"))
    with pytest.raises(RecipeError, match=r"no such interpreter"):
        with started_server(config):
            pass
    with pytest.raises(ValueError, match="port must be from 1 to 65535"):
        ServeConfig(model="cac-demo", port=0)
