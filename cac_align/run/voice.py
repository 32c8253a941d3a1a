"""Many processes, one voice: what each process of a multi-process run (``torchrun``, ``accelerate
launch``) says on the terminal.

- **Logs and progress bars.** The first process (rank 0) speaks: the jobs' INFO lines, the progress bars,
  the memory plan. Every other process says only its warnings and errors, each line prefixed with the
  process it comes from (``process 1 of 8: reward failed on a batch of 2: ...``), and the loading bars of
  diffusers, transformers and the Hugging Face hub are off there (:func:`quiet_other_processes`).
- **The error that ends a run, once.** When a job fails, :func:`failure_line` decides which process prints
  its line. Every failing process posts its line, in the order the failures happened, to the store the
  launcher already runs (torchrun's rendezvous store, at ``MASTER_ADDR:MASTER_PORT``), and waits up to
  :data:`AGREE_S` seconds for the others:

  - an error every process meets (a refused recipe, a run folder that is another run's, a step with no
    valid reward anywhere, Ctrl-C) is printed once, by the first process, as a one-process run prints it;
  - an error of one process is printed by that process alone, naming it (``failed on process 1 of 2:``).
    What the others then meet because of it (gloo's "connection closed by peer", a collective that
    stopped) is a consequence, and stays quiet: it failed later.

  The launcher stops the rest: torchrun (and accelerate launch, which is torchrun) stops every other
  process as soon as one exits with an error (its ``--monitor-interval``, 0.1 s), and restarts the group
  when ``--max-restarts`` allows (docs/flow_grpo.md, "When something fails").

Where there is no store to reach (one process; a launcher of another kind whose first process is gone),
each failing process prints its own line with its process named: nothing is lost.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

__all__ = ["AGREE_S", "failure_line", "process_rank", "quiet_other_processes"]

log = logging.getLogger(__name__)

# How long a failing process waits for the others to post theirs before it decides whether its line is
# the one to print (an error every process meets is posted by all of them within this; the launcher stops
# the others only once this process has exited, so it is also the delay a failure adds to the stop).
AGREE_S = 2.0


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process as its launcher set them (``RANK``, ``WORLD_SIZE``: torchrun,
    accelerate launch), before any process group exists; ``(0, 1)`` for a plain run."""
    try:
        return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 0, 1


class _Prefixed(logging.Filter):
    """Prefix a record's message with the process it comes from (on processes other than the first)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_cac_align_prefixed", False):
            record.msg = f"{self.prefix}{record.msg}"
            record._cac_align_prefixed = True  # type: ignore[attr-defined]  (a record passes a handler once per logger)
        return True


def quiet_other_processes(logger: logging.Logger) -> None:
    """On a process other than the first of a multi-process run: ``logger`` (the jobs' ``cac_align``
    logger) at WARNING with each line naming the process, and the libraries' loading bars off. Nothing
    changes on the first process or in a one-process run."""
    rank, world = process_rank()
    if world == 1 or rank == 0:
        return
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:  # a logger's own filters skip its children's records: the handlers' do not
        if not any(isinstance(f, _Prefixed) for f in handler.filters):
            handler.addFilter(_Prefixed(f"process {rank} of {world}: "))
    for library in ("diffusers", "transformers"):
        try:
            module = __import__(f"{library}.utils.logging", fromlist=["disable_progress_bar"])
            module.disable_progress_bar()
        except ImportError:  # pragma: no cover - both are dependencies
            pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def _store() -> Any:
    """A client of the store the launcher runs (None where there is none to reach). Keys are kept apart
    per run and per restart of the group (torchrun's ``TORCHELASTIC_RUN_ID``, ``TORCHELASTIC_RESTART_COUNT``)."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not address or not port:
        return None
    from datetime import timedelta

    from torch.distributed import PrefixStore, TCPStore

    store = TCPStore(address, int(port), is_master=False, timeout=timedelta(seconds=5), wait_for_workers=False)
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return PrefixStore(f"cac_align/failures/{run}/{attempt}/", store)


def failure_line(line: str, wait_s: float = AGREE_S, *, rank: int | None = None, world: int | None = None, store: Any = None) -> str | None:
    """The line this process prints for the error that ends its job, or None when another process says
    it (module docstring). ``line`` is the error as a one-process run prints it; ``rank``, ``world`` and
    ``store`` default to the launcher's (``RANK``, ``WORLD_SIZE``, its store)."""
    if rank is None or world is None:
        rank, world = process_rank()
    if world == 1:
        return line
    named = line.replace(": failed: ", f": failed on process {rank} of {world}: ", 1).replace(
        ": error: ", f": error on process {rank} of {world}: ", 1)
    if named == line:
        named = f"process {rank} of {world}: {line}"
    try:
        store = store if store is not None else _store()
        if store is None:
            return named
        order = int(store.add("order", 1))  # 1 for the first process of the run to fail
        store.set(str(rank), f"{order}\t{line}")
        posted: dict[int, tuple[int, str]] = {}
        deadline = time.monotonic() + wait_s
        while True:
            for other in range(world):
                if other not in posted and store.check([str(other)]):
                    first, _, text = store.get(str(other)).decode("utf-8").partition("\t")
                    posted[other] = (int(first), text)
            if len(posted) == world or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    except Exception as exc:  # no store to reach (its host gone): say it here, named
        log.debug("failure_line: no store (%s)", exc)
        return named
    if len(posted) == world and len({text for _, text in posted.values()}) == 1:
        return line if rank == 0 else None  # every process met the same error: the first says it
    first_rank = min(posted, key=lambda r: posted[r][0])
    return named if first_rank == rank else None
