"""`cac-align serve`: start a vLLM server for a judge so that it sees what it sees in-process.

    cac-align serve --config recipes/serve/cac_demo.yaml                      # the shipped cac-demo
    cac-align serve --config recipes/serve/cac_demo.yaml model=runs/cac_stage3/final port=8001

then score against it with ``backend: openai`` (``recipes/score/cac_demo_vllm.yaml``).

vLLM pins its own torch and transformers, so it lives in an environment of its own, named by
``python:`` (its interpreter); this package must be installed there without its dependencies
(``pip install --no-deps /path/to/cac_align``: ``tests/conformance/build_vllm_venv.sh`` does both),
which installs the video plugin of :mod:`cac_align.integrations.vllm`.

Steps: 1. check that ``python`` has vLLM and the plugin (one line naming the fix if not);
2. start ``python -m vllm.entrypoints.openai.api_server`` with the model, the flags the plugin
needs (:data:`cac_align.integrations.vllm.SERVER_ARGS`: each video with its own metadata, and
normalisation as in-process) and ``extra_args``, in a process group of its own; 3. wait until
``GET /v1/models`` answers, then print the URL; 4. serve until interrupted (Ctrl-C or SIGTERM), or
until the server dies (its exit code is this job's error). Stopping stops the server and every
engine process it forked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

from omegaconf import MISSING

__all__ = ["ServeConfig", "run", "serve_command", "started_server"]


@dataclass
class ServeConfig:
    """Config of `cac-align serve`.

    Attributes:
        model: the judge: a built-in name (``cac-demo``), a local checkpoint folder or a hub id.
        served_model_name: the name clients ask for (a recipe's ``model.name`` with ``backend: openai``).
        python: the interpreter of the vLLM install (``.venv-vllm/bin/python`` after
            ``tests/conformance/build_vllm_venv.sh``); default: this one.
        host: where the server listens; localhost by default (nothing is exposed unless you say so).
        port: its port.
        dtype: vLLM's ``--dtype`` ("auto", "bfloat16", "float32", ...); "auto": the model folder's
            ``cac_align.json`` ``dtype`` when it has one (``cac-demo``: float32), else vLLM's own.
        max_model_len: vLLM's ``--max-model-len`` (None: the model's own).
        extra_args: more vLLM flags, as a list (``["--tensor-parallel-size", "2"]``).
        env: extra environment for the server (``VLLM_CPU_KVCACHE_SPACE: "1"`` on a CPU).
        ready_timeout_s: how long to wait for the server to answer before giving up.
    """

    model: str = MISSING
    served_model_name: str = "cac"
    python: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    max_model_len: int | None = 4096
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be from 1 to 65535, got {self.port}")
        if self.ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {self.ready_timeout_s}")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def serve_command(config: ServeConfig) -> list[str]:
    """The server's command line: vLLM's OpenAI server with the plugin's flags."""
    from cac_align.integrations.vllm import SERVER_ARGS
    from cac_align.loading import check_weights_source

    from cac_align.models import model_settings

    model = check_weights_source(config.model, "model")
    dtype = model_settings(model).get("dtype", "auto") if config.dtype == "auto" else config.dtype  # the model's own, as in-process
    command = [config.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", model, "--served-model-name", config.served_model_name,
               "--host", config.host, "--port", str(config.port), "--dtype", dtype, *SERVER_ARGS]
    if config.max_model_len is not None:
        command += ["--max-model-len", str(config.max_model_len)]
    return command + [str(arg) for arg in config.extra_args]


def _check_python(python: str) -> None:
    from cac_align.config import RecipeError

    probe = ("from importlib.metadata import entry_points; import vllm; "
             "assert 'cac_align.integrations.vllm:register' in [e.value for e in entry_points(group='vllm.general_plugins')], 'plugin'")
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise RecipeError(f"python={python!r}: no such interpreter; build one with: bash tests/conformance/build_vllm_venv.sh") from None
    if done.returncode != 0:
        what = ("does not see cac_align's vLLM plugin (pip install --no-deps this package there; a stale cac_align.egg-info "
                "in the working folder hides it: reinstall with pip install -e .)") if "plugin" in done.stderr else "cannot import vllm"
        raise RecipeError(f"python={python!r} {what}; build one with: bash tests/conformance/build_vllm_venv.sh "
                          f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no output'})")


def _answers(base_url: str) -> bool:
    import requests

    try:
        return requests.get(base_url + "/models", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the server's process group (vLLM forks its engine), then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)
            break
    with contextlib.suppress(ProcessLookupError):  # any engine process left behind
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def started_server(config: ServeConfig, log: str | None = None) -> Iterator[subprocess.Popen]:
    """Start the server, wait until it answers, yield its process; stop it (and its engine) on exit.

    Args:
        log: a file for the server's output (default: this process's stdout / stderr).

    Raises:
        BackendFailure: the server exited, or did not answer within ``ready_timeout_s`` (the end
            of its log is in the message when ``log`` is given); the CLI prints it as one line.
    """
    from cac_align.rewards.base import BackendFailure

    python = config.python or sys.executable
    _check_python(python)
    if _answers(config.base_url):
        raise BackendFailure(f"something already answers at {config.base_url}: stop it, or choose another port")
    command = serve_command(config)
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    env = {**os.environ, **{str(k): str(v) for k, v in config.env.items()}}
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + config.ready_timeout_s
        while not _answers(config.base_url):
            if process.poll() is not None:
                tail = open(log, errors="replace").read()[-2000:] if log else ""
                raise BackendFailure(f"the vLLM server exited with code {process.returncode} before answering{': ' + tail if tail else ''}")
            if time.monotonic() > deadline:
                raise BackendFailure(f"the vLLM server did not answer at {config.base_url} within {config.ready_timeout_s:g} s")
            time.sleep(1.0)
        yield process
    finally:
        _stop(process)
        if out is not None:
            out.close()


def run(config: ServeConfig) -> int:
    """Serve until interrupted; returns 0, or raises :class:`BackendFailure` when the server dies
    on its own."""
    from cac_align.rewards.base import BackendFailure

    # 1-3. check the interpreter, start, wait for the first answer
    stop = {"signal": None}

    def on_term(signum: int, _frame: object) -> None:
        stop["signal"] = signum
        raise KeyboardInterrupt

    # Ctrl-C and `kill` both stop it, whatever SIGINT disposition this process inherited (a
    # background start ignores SIGINT unless a handler is set here)
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with started_server(config) as process:
            print(f"serving {config.model} as {config.served_model_name!r} at {config.base_url} "
                  f"(vLLM pid {process.pid}; Ctrl-C stops it)", flush=True)
            # 4. serve until interrupted, or until the server dies
            while process.poll() is None:
                time.sleep(1.0)
            raise BackendFailure(f"the vLLM server exited with code {process.returncode}; its engine is stopped too")
    except KeyboardInterrupt:
        print("stopped the vLLM server", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
