"""Launch a test script on one or more processes without paying each process's imports.

A process started with ``python`` (or by ``torchrun``) spends about 6 s of one core importing torch,
diffusers, transformers, peft and our jobs before it runs a line of the script (``python -X importtime
-c "import cac_align.jobs.flow_grpo"``), and tests/jobs/test_parallel.py starts a few dozen of them, two
at a time on two cores. Here the imports happen once per pytest process, in Python's own forkserver
(``multiprocessing``'s ``forkserver`` start method with ``set_forkserver_preload``): a clean process that
imports :data:`PRELOAD` and then forks a child per process launched. A child is a copy of that clean
process, not of the test's: no state a test left behind reaches it.

- one process: a forkserver child runs the script, as ``python SCRIPT ARGS`` would (no torchrun variables);
- several: torch's own elastic agent (:func:`torch.distributed.launcher.api.elastic_launch`, what
  ``torchrun`` runs) on this host with the static rendezvous ``torchrun --master_port`` uses, its workers
  started with ``start_method="forkserver"``: each worker gets the variables torchrun gives its workers
  (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_PORT``, ``TORCHELASTIC_RESTART_COUNT``, ...) from the
  same agent code, and runs the script as ``torchrun --run-path`` would;
- several simulated nodes (:func:`launch_nodes`): one such agent a node, each in a thread here, meeting in torch's
  c10d rendezvous as ``torchrun --nnodes N --rdzv-backend c10d`` agents do (tests/jobs/test_nodes.py checks each process
  sees what two ``torchrun`` agents give it).

What the tests whose subject is the launcher itself need (restarts after a SIGKILL, a node killed, a
stalled process) stays on the ``torchrun`` command line (tests/jobs/test_faults.py, test_nodes.py, and
test_parallel.py's restart cases). The jobs' own two-process tests give their ``accelerate launch`` or ``torchrun``
command to :func:`accelerate_launch` / :func:`torchrun_launch`, which read it with accelerate's or torch's own parser.

Each launch's environment is the one given (the caller's ``os.environ`` plus its own variables), set in
the child before the script runs; the preloaded modules were imported with the environment the forkserver
started with (this process's, ``OMP_NUM_THREADS=1``), so a launch whose environment changes what a library reads as
it is imported (``HF_HOME``, ``HF_HUB_OFFLINE``: huggingface_hub's constants) must use the command line. The
launches here differ only in ``CAC_TEST_*`` variables, which tests/parallel_launch.py reads as it runs. Each process's stdout and stderr go to files, read
back into the returned :class:`subprocess.CompletedProcess` (stdout of every rank, in rank order; stderr
likewise, then the agent's failure summary).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# What a launched process imports before it runs anything (the jobs tests/parallel_launch.py runs and the
# libraries they load); a module that fails to import here is imported by the child as usual.
PRELOAD = [
    "torch", "torch.distributed.fsdp", "torch.distributed.tensor", "diffusers", "transformers", "peft", "accelerate",
    "cac_align.gen.parallel", "cac_align.jobs.flow_grpo", "cac_align.jobs.nft", "cac_align.jobs.dpo", "cac_align.cli",
]
_started = False


def _ensure_forkserver() -> None:
    """Start this process's forkserver once, with :data:`PRELOAD` imported, one intra-op thread and the
    repository and tests/ importable (what the launched scripts and :func:`_run` need)."""
    global _started
    if _started:
        return
    tests = str(Path(__file__).resolve().parent)
    saved = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "PYTHONPATH")}
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(tests).parent), tests, *filter(None, [saved["PYTHONPATH"]])])
    try:
        multiprocessing.set_forkserver_preload(PRELOAD)
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    _started = True


def _run(script: str, args: list[str], env: dict[str, str], logs: str, cwd: str, module: bool = False) -> None:
    """In a launched process: send stdout and stderr to this rank's files, take the launch's environment
    (torchrun's variables kept), then run ``script`` as ``__main__`` with ``args`` (as ``python SCRIPT ARGS``;
    ``module``: ``script`` is a module, as ``python -m SCRIPT ARGS``)."""
    import runpy

    import torch

    rank = os.environ.get("RANK", "0")
    Path(logs, f"pid{rank}").write_text(str(os.getpid()))  # for the launch's timeout to end it
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(os.path.join(logs, f"{name}{rank}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    torchrun = {key: value for key, value in os.environ.items() if key in TORCHRUN_VARIABLES or key.startswith(("TORCHELASTIC_", "TORCH_NCCL_"))}
    os.environ.clear()
    os.environ.update({**env, **torchrun})
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.chdir(cwd)
    sys.argv = [script, *args]
    # the launch's PYTHONPATH, which a new interpreter would put on its path (the forkserver's is there already)
    for entry in reversed([e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]):
        if os.path.abspath(entry) not in sys.path:
            sys.path.insert(0, os.path.abspath(entry))
    # as python puts the script's folder first, or for -m the working folder
    sys.path.insert(0, os.getcwd() if module else os.path.dirname(os.path.abspath(script)))
    try:
        if module:
            runpy.run_module(script, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


# The variables torch's elastic agent sets for each worker (LocalElasticAgent._start_workers)
TORCHRUN_VARIABLES = {"RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
                      "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


@contextlib.contextmanager
def _main_not_rerun():
    """While processes start: multiprocessing would have each child run this process's ``__main__`` file again
    (pytest's script, or whatever called us) before its target, as the ``spawn`` start method must; a forkserver
    child already holds what it needs, so the file is hidden from multiprocessing meanwhile."""
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


def _deadline(logs: Path, processes: int, timeout: float, done: threading.Event) -> None:
    """A launch past its timeout: SIGKILL its processes (children of the forkserver, not of this process), and any
    that starts later, until the launch returns (the agent sees them fail and returns)."""
    if done.wait(timeout):
        return
    (logs / "timed_out").touch()
    while not done.is_set():
        for rank in range(processes):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((logs / f"pid{rank}").read_text()), signal.SIGKILL)
        done.wait(0.5)


def _outputs(logs: Path, processes: int) -> tuple[str, str]:
    """Every rank's stdout and stderr (each in rank order), read back; the files are removed."""
    read = ["".join((logs / f"{name}{rank}.txt").read_text(errors="replace") for rank in range(processes) if (logs / f"{name}{rank}.txt").exists())
            for name in ("stdout", "stderr")]
    shutil.rmtree(logs, ignore_errors=True)
    return read[0], read[1]


def launch(script: Path | str, args: list[str], *, processes: int, port: int, env: dict[str, str], cwd: Path,
           timeout: float = 600, module: bool = False) -> subprocess.CompletedProcess:
    """Run ``script`` with ``args`` on ``processes`` processes (1: as ``python``; more: as ``torchrun
    --nproc_per_node processes --master_port port``) and return the finished launch, whatever its status
    (``returncode`` 0 when every process ended well). ``module``: ``script`` names a module (``-m``)."""
    with _main_not_rerun():
        return _launch(script, args, processes=processes, port=port, env=env, cwd=cwd, timeout=timeout, module=module)


def launch_nodes(script: Path | str, args: list[str], *, nodes: int, per_node: int, port: int, env: dict[str, str], cwd: Path,
                 timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``script`` on ``nodes`` simulated nodes of ``per_node`` processes each, as ``nodes`` agents of ``torchrun --nnodes
    NODES --nproc-per-node PER_NODE --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT`` on this machine would: one
    torch elastic agent a node (:func:`torch.distributed.launcher.api.elastic_launch`, each in a thread of this process),
    meeting in the c10d rendezvous, the first hosting its store; their workers forked from the preloaded forkserver
    with the variables each agent gives them (``GROUP_RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ...). No restarts:
    a node killed and started again stays on the ``torchrun`` command line (tests/jobs/test_nodes.py). Returns the
    finished launch (``returncode`` 0 when every agent's workers ended well; stdout and stderr of every rank, in rank
    order, then each failing agent's summary)."""
    with _main_not_rerun():
        return _launch_nodes(script, args, nodes=nodes, per_node=per_node, port=port, env=env, cwd=cwd, timeout=timeout)


def torchrun_launch(command: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` (``[python, "-m", "torch.distributed.run", *ARGS]``) as a forked launch when torch's own parser reads
    ARGS as one node's static launch without restarts (``--nproc_per_node N --master_port P``, a script or ``-m``
    module): :func:`launch` runs it. Any other launch, or ``CAC_TEST_TORCHRUN=1``, runs the command itself."""
    from torch.distributed.run import get_args_parser

    assert command[1:3] == ["-m", "torch.distributed.run"], command
    args = get_args_parser().parse_args(command[3:])
    forked = (str(args.nnodes) in ("1", "1:1") and int(args.max_restarts) == 0 and args.rdzv_backend == "static" and not args.standalone
              and not args.no_python and not args.run_path)
    if os.environ.get("CAC_TEST_TORCHRUN") or not forked:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return launch(args.training_script, list(args.training_script_args), processes=int(args.nproc_per_node), port=int(args.master_port),
                  env=env, cwd=cwd, timeout=timeout, module=bool(args.module))


def accelerate_launch(command: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` (``[python, "-m", "accelerate.commands.launch", *ARGS]``, a ``--multi_gpu`` launch or one whose
    config file shards) as a forked launch: accelerate's own parser and checks read ARGS (``launch_command_parser``,
    ``_validate_launch_command``), its own ``prepare_multi_gpu_env`` makes the workers' environment from ``env``, as
    ``accelerate launch`` does before it hands the launch to torchrun, and :func:`launch` runs what torchrun would
    (the script, or ``-m`` module, on ``--num_processes`` processes at ``--main_process_port``). Under
    ``CAC_TEST_TORCHRUN=1`` the command itself runs. A launch accelerate would not give torchrun (``--cpu``, DeepSpeed,
    a single-process launch) is refused. Not for test_fsdp's FSDP config: its forked workers finished their work but did
    not exit (2026-11-28), so it runs the command."""
    if os.environ.get("CAC_TEST_TORCHRUN"):
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import check_cuda_p2p_ib_support, prepare_multi_gpu_env

    assert command[1:3] == ["-m", "accelerate.commands.launch"], command
    saved = dict(os.environ)
    try:  # accelerate reads the launch's environment (its defaults, then prepare_multi_gpu_env's copy of it)
        os.environ.clear()
        os.environ.update(env)
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
        if args.cpu or args.use_deepspeed or not (args.multi_gpu or args.use_fsdp):
            raise ValueError(f"accelerate would not hand this launch to torchrun (launch_command): {command}")
        workers = prepare_multi_gpu_env(args)
        if not check_cuda_p2p_ib_support():  # as multi_gpu_launcher
            workers.setdefault("NCCL_P2P_DISABLE", "1")
            workers.setdefault("NCCL_IB_DISABLE", "1")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return launch(args.training_script, list(args.training_script_args), processes=int(args.num_processes), port=int(args.main_process_port),
                  env=workers, cwd=cwd, timeout=timeout, module=bool(args.module))


def _launch(script: Path | str, args: list[str], *, processes: int, port: int, env: dict[str, str], cwd: Path,
            timeout: float, module: bool = False) -> subprocess.CompletedProcess:
    _ensure_forkserver()
    logs = Path(tempfile.mkdtemp(prefix="forked_launch_"))
    work = (str(script), list(args), {key: str(value) for key, value in env.items()}, str(logs), str(cwd), module)
    command = ["forked_launch", str(processes), str(script), *args]
    if processes == 1:
        process = multiprocessing.get_context("forkserver").Process(target=_run, args=work)
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, *_outputs(logs, 1))
        return subprocess.CompletedProcess(command, process.exitcode, *_outputs(logs, 1))

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's defaults for `--nproc_per_node N --master_port P`: the same run id and role names reach the workers
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id="none", role="default", rdzv_backend="static",
                          rdzv_endpoint=f"127.0.0.1:{port}", rdzv_configs={"rank": 0}, max_restarts=0, monitor_interval=0.1,
                          start_method="forkserver")
    # the agent puts this in its own environment for its workers to inherit (launcher/api.py's launch_agent); ours
    # take the launch's environment instead, so it goes there
    work[2]["TORCHELASTIC_SIGNALS_TO_HANDLE"] = config.signals_to_handle
    returncode, failure = 0, ""
    done = threading.Event()  # the agent has no deadline of its own
    threading.Thread(target=_deadline, args=(logs, processes, timeout, done), daemon=True).start()
    try:
        elastic_launch(config, _run)(*work)
    except ChildFailedError as error:
        returncode, failure = 1, error.format_msg()
    finally:
        done.set()
    timed_out = (logs / "timed_out").exists()
    stdout, stderr = _outputs(logs, processes)
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr + failure)
    return subprocess.CompletedProcess(command, returncode, stdout, stderr + failure)


def _launch_nodes(script: Path | str, args: list[str], *, nodes: int, per_node: int, port: int, env: dict[str, str], cwd: Path,
                  timeout: float) -> subprocess.CompletedProcess:
    _ensure_forkserver()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logs = Path(tempfile.mkdtemp(prefix="forked_nodes_"))
    processes = nodes * per_node
    work = (str(script), list(args), {key: str(value) for key, value in env.items()}, str(logs), str(cwd), False)
    failures: list[str] = [""] * nodes

    def agent(node: int) -> None:
        # torchrun's settings for `--nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID`;
        # the first agent hosts the rendezvous store (is_host), as the first node's agent started alone does
        config = LaunchConfig(min_nodes=nodes, max_nodes=nodes, nproc_per_node=per_node, run_id=f"cac{port}", role="default",
                              rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", rdzv_configs={"is_host": node == 0},
                              max_restarts=0, monitor_interval=0.1, start_method="forkserver")
        try:
            elastic_launch(config, _run)(*work)
        except ChildFailedError as error:
            failures[node] = error.format_msg()
        except Exception as error:  # noqa: BLE001 - an agent that failed to start or meet the others: said, not raised in its thread
            failures[node] = f"node {node}'s agent: {type(error).__name__}: {error}"

    # launch_agent puts its default in its own environment for its workers; ours take the launch's environment instead
    work[2]["TORCHELASTIC_SIGNALS_TO_HANDLE"] = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=1).signals_to_handle
    # the agents read these from their own (this process's) environment: each round's first worker serves a store of its own
    # (gen/parallel/connect.py, several nodes), as test_nodes' command-line agents are told
    saved = {name: os.environ.get(name) for name in ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE",)}
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "0")
    done = threading.Event()
    threading.Thread(target=_deadline, args=(logs, processes, timeout, done), daemon=True).start()
    try:
        agents = [threading.Thread(target=agent, args=(node,), name=f"node{node}") for node in range(nodes)]
        for thread in agents:
            thread.start()
        for thread in agents:
            thread.join()
    finally:
        done.set()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    timed_out = (logs / "timed_out").exists()
    stdout, stderr = _outputs(logs, processes)
    failure = "".join(failures)
    command = ["forked_launch", f"{nodes}x{per_node}", str(script), *args]
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr + failure)
    return subprocess.CompletedProcess(command, 1 if failure else 0, stdout, stderr + failure)
