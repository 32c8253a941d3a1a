"""Connecting the processes: the process group with ``parallel.timeout_s`` (reconnecting after a torchrun
restart), a collective that outwaits it stopped in one line, and a trainer's end.

The jobs (``flow-grpo``, ``nft``, ``dpo``) run under :func:`named_timeout` and call
:func:`connect_processes` before accelerate's ``Accelerator``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cac_align.gen.parallel.dims import ParallelSettings

__all__ = ["CollectiveTimeout", "collective_timed_out", "connect_processes", "named_timeout", "release_trainer"]

log = logging.getLogger(__name__)


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than ``parallel.timeout_s`` for another process; the message is
    one line naming the setting, this process and what torch said."""


def connect_processes(settings: ParallelSettings, cpu: bool) -> list[Any]:
    """Connect this process to the others of its launch before accelerate would, and return the
    ``kwargs_handlers`` entry that gives accelerate ``parallel.timeout_s`` where it connects them
    itself (call before ``Accelerator(...)``, on every process).

    Launched by torchrun (or ``accelerate launch``, which runs torchrun's agent) with two processes
    or more on gloo or NCCL, the default process group is made here, with ``parallel.timeout_s``, on
    the agent's store under a prefix of the restart round (``TORCHELASTIC_RESTART_COUNT``). Why:
    torchrun's agent keeps one store for the whole launch and hands it to every round of workers
    (torch 2.14: ``StaticTCPRendezvous.next_rendezvous`` makes its ``TCPStore`` once;
    ``DynamicRendezvousHandler.next_rendezvous`` reuses its shared store server; workers reach it as
    clients, ``rendezvous._create_c10d_store``). A group restarted by ``--max-restarts`` then reads
    the killed round's addresses under the same keys (gloo: ``Gloo connectFullMesh failed ...
    Connection refused``; NCCL's unique id the same way) and dies. torch keyed the workers' store by
    the restart count itself once (``/worker/attempt_N``) and dropped it, because the count is each
    node's own (pytorch#135712): one node restarts its workers for a failure and another for the
    new round. So the prefix holds on one node; on several, launch with ``--rdzv-backend c10d`` and
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (each round's first worker then serves a new store, and
    no prefix is needed; a warning says so at the start of such a launch).
    """
    from accelerate.utils import InitProcessGroupKwargs

    handlers = [InitProcessGroupKwargs(timeout=settings.timeout)]
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if torch.distributed.is_initialized() or world < 2 or not all(k in env for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        return handlers  # one process, or a launch of another kind: accelerate connects them (with the timeout)
    # the backend accelerate would pick (its PartialState._prepare_backend); others (MPI) are left to it
    if cpu and not torch.distributed.is_mpi_available():
        backend = "gloo"
    elif not cpu and torch.cuda.is_available():
        backend = "nccl"
    else:
        return handlers
    store, rank, world = next(torch.distributed.rendezvous("env://", int(env["RANK"]), world, timeout=settings.timeout))
    store.set_timeout(settings.timeout)
    prefix = "default_pg"  # what init_process_group itself puts before its keys
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # the agent's store, kept over the rounds
        prefix += f"/restart_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        if int(env.get("GROUP_WORLD_SIZE", "1")) > 1 and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and rank == 0:
            log.warning("torchrun --max-restarts on %s nodes with the agent's shared store: a restart may not reconnect (each node counts its "
                        "own restarts); launch with --rdzv-backend c10d and TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/flow_grpo.md, "
                        "'Long runs')", env.get("GROUP_WORLD_SIZE"))
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore(prefix, store), rank=rank, world_size=world,
                                         timeout=settings.timeout)
    return handlers


# What torch raises in a process whose collective outlived its group's timeout (torch 2.14):
# gloo: "[.../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 1800000ms for recv operation
# to complete" (send alike), measured on this CPU; NCCL (ProcessGroupNCCL.cpp): "... timed out in
# blocking wait" under TORCH_NCCL_BLOCKING_WAIT=1, and the watchdog's "Watchdog caught collective
# operation timeout: WorkNCCL(..., Timeout(ms)=...)" where it reaches Python (by default the
# watchdog tears the process down itself, after logging that line); a store wait (a barrier
# through the store, a group's set-up): "wait timeout after ...ms".
_TIMEOUT_PATTERNS = re.compile(r"Timed out waiting \d+ms for (send|recv) operation|timed out in blocking wait|"
                               r"Watchdog caught collective operation timeout|wait timeout after \d+ms")


def collective_timed_out(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of a collective (or a store wait) that outlived its timeout."""
    return isinstance(error, RuntimeError) and not isinstance(error, CollectiveTimeout) and bool(_TIMEOUT_PATTERNS.search(str(error)))


@contextlib.contextmanager
def named_timeout(settings: ParallelSettings):
    """Run a trainer (its setup, loop and cleanup) so that a collective that waited longer than
    ``parallel.timeout_s`` stops it with a :class:`CollectiveTimeout`: one line naming the setting,
    this process and torch's own words (the original chained as its cause)."""
    try:
        yield
    except RuntimeError as error:
        if not collective_timed_out(error):
            raise
        if torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        said = " ".join(str(error).split())
        said = said if len(said) <= 200 else said[:197] + "..."
        raise CollectiveTimeout(
            f"a collective waited longer than parallel.timeout_s={settings.timeout_s:g} s on process {rank} of {world} ({said}): another "
            "process did not reach it in time; if that process is slow (a judge's first scoring compiles for minutes, a big model "
            "loads), raise parallel.timeout_s; if it stopped, its own error says why") from error



def release_trainer(trainer: Any) -> None:
    """End a generator trainer's run (call in the ``finally`` of a job's ``run``, on every process):
    close its layout's own group (:func:`~.dims.close_layout`), drop everything the trainer holds (the
    FSDP-wrapped model, its optimizer, the Accelerator) and collect the garbage now.

    Why now: the wrapped model sits in reference cycles (hooks, FSDP's state), so without a
    collection it lives until the interpreter finalizes, and its process-group objects and collective
    handles die there, after Python's own teardown began. A 2-process gloo run (FSDP2, CI under load,
    2026-11-27) then aborted at exit in 1 of about 30 launches: "terminate called without an active
    exception", after its last step had finished and its files were written (the C++ threads of a
    group destroyed during finalization; pytorch PR #179291 describes the same class of exit-time
    abort). Collected here, they die while everything they need is alive."""
    import gc

    from cac_align.gen.parallel.dims import close_layout

    layout = getattr(trainer, "layout", None)
    if layout is not None:
        close_layout(layout)  # a one-process group of a sharded run on one process
    trainer.__dict__.clear()
    gc.collect()

