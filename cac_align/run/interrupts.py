"""Ctrl-C that stops a job within seconds wherever the signal lands: raised at a safe point, once.

Python's own SIGINT handler raises ``KeyboardInterrupt`` in whatever Python code the main thread runs
when the signal arrives. Two kinds of place turn that stop into a hang:

- **a finalizer**: a weakref callback (logging's ``_removeHandlerRef``, run when a logging handler is
  collected), a ``__del__``, a generator the garbage collector closes (imageio-ffmpeg's writer, which
  waits for ffmpeg there). Python swallows any exception raised in one, printing "Exception ignored in
  ..." with a traceback, so the interrupt is lost and the job runs on: ``synth`` was still running 60 s
  after a Ctrl-C, its stderr holding a traceback through ``logging/__init__.py``'s lock functions;
- **the window between taking a lock and the ``try`` that releases it** (logging's module and handler
  locks, tqdm's, a thread pool's or a queue's): the lock stays taken, and the next thread that logs, or
  the interpreter joining a pool's workers at exit, waits forever.

:func:`install` puts a handler in its place that records the signal and raises ``KeyboardInterrupt``
only where the main thread's stack holds none of those places (:func:`unsafe_frame`). Landed in one, it
marks the first safe frame below them (the caller of the outermost unsafe one) with a trace function, the
way ``pdb.set_trace`` marks its callers, and raises there at that frame's next line: the job stops with
its one line at the next safe point, microseconds to milliseconds later. Where a tracer is already set (a
debugger, coverage) it asks for the signal again in :data:`REDELIVER_S` instead (a thread of its own sends
it to the main thread, taking no lock of the threading module). An interrupt that a finalizer swallowed
all the same (one :func:`unsafe_frame` does not know) reaches :data:`sys.unraisablehook`, which prints
nothing and delivers the signal again. Once raised, further SIGINTs (a second Ctrl-C, torchrun's agent
passing the terminal's on to its workers) change nothing while that interrupt is being handled, so the
clean-up the job runs on its way out (deleting a half-written video, ending its process group) is not
cut short.

A signal still waiting after :data:`FORCE_AFTER_S` (the main thread blocked inside one of those modules:
a ``Thread.join``, a queue's ``get``, a future's ``result``, a pipe full behind a logging handler) is
raised where it lands: those waits release their locks on the way out, and a job stops within seconds.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["FORCE_AFTER_S", "REDELIVER_S", "CtrlC", "install", "unsafe_frame"]

# How soon a signal that landed in an unsafe place is delivered again where no trace function can mark the
# safe point (a tracer already set): the stack is checked once per delivery (seconds).
REDELIVER_S = 0.02
# How long a signal may wait for a safe point before it is raised where it lands (seconds).
FORCE_AFTER_S = 2.0
# Modules that hold a lock across Python code, or run finalizers, on the main thread: an exception raised
# inside them may leave a lock taken or be swallowed (a module and its submodules).
LOCK_HOLDERS = ("logging", "threading", "queue", "concurrent.futures", "multiprocessing", "tqdm", "weakref", "_weakrefset")


def _unsafe(frame: FrameType) -> bool:
    module = frame.f_globals.get("__name__") or ""
    return frame.f_code.co_name == "__del__" or any(module == m or module.startswith(m + ".") for m in LOCK_HOLDERS)


def unsafe_frame(frame: FrameType | None) -> str | None:
    """The innermost frame of ``frame``'s stack where raising an exception is unsafe (a ``__del__``, or a
    function of :data:`LOCK_HOLDERS`), as ``"module.function"``; None where the whole stack is safe."""
    while frame is not None:
        if _unsafe(frame):
            return f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}"
        frame = frame.f_back
    return None


def _first_safe_frame(frame: FrameType | None) -> FrameType | None:
    """The caller of the outermost unsafe frame of ``frame``'s stack: where control is next safe."""
    outermost = None
    while frame is not None:
        if _unsafe(frame):
            outermost = frame
        frame = frame.f_back
    return outermost.f_back if outermost is not None else None


def _interrupt_being_handled() -> bool:
    """Whether the code the signal interrupted is handling a KeyboardInterrupt (an ``except`` or a
    ``finally`` on its way out), itself or as the context of what it handles."""
    exc: BaseException | None = sys.exc_info()[1]
    for _ in range(16):  # a chain of contexts is short; a cycle is not followed forever
        if exc is None:
            return False
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


class CtrlC:
    """The SIGINT handler :func:`install` sets, with what it restores. Module docstring: what it does.

    Attributes:
        stopping: set by the caller once it handles the interrupt (the CLI's ``except KeyboardInterrupt``):
            every SIGINT after it is ignored until :meth:`uninstall`.
    """

    def __init__(self) -> None:
        self.stopping = False
        self._main = threading.get_ident()
        self._active = True
        self._first_at: float | None = None  # when the first SIGINT arrived (monotonic)
        self._raised = False  # a KeyboardInterrupt is on its way
        self._marked: FrameType | None = None  # the frame whose next line raises it
        self._resend_scheduled = False
        self._send_lock = _thread.allocate_lock()  # held while a sender checks _active and sends
        self._sent = 0  # signals the senders sent, and deliveries the handler saw: uninstall waits for both to meet
        self._seen = 0
        self._previous_handler: Any = None
        self._previous_hook: Any = None

    # -- the handler ---------------------------------------------------------------------------------
    def __call__(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: raise KeyboardInterrupt here if it is safe, else at the next safe point.
        It takes no lock, logs nothing and prints nothing (the main thread may hold any lock now)."""
        self._seen += 1
        if not self._active or self.stopping:
            return
        if self._raised and _interrupt_being_handled():
            return  # the interrupt raised before is on its way out: its clean-up runs whole
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
            self._send_after(FORCE_AFTER_S)  # the deadline: a main thread blocked in an unsafe wait wakes
        if now - self._first_at < FORCE_AFTER_S and unsafe_frame(frame) is not None:
            if not self._mark_safe_point(frame) and not self._resend_scheduled:
                self._resend_scheduled = True
                self._send_after(REDELIVER_S)
            return
        self._raise()

    def _raise(self) -> None:
        self._unmark()
        self._raised = True
        raise KeyboardInterrupt

    # -- the next safe point: a trace function on its frame ------------------------------------------
    def _mark_safe_point(self, frame: FrameType | None) -> bool:
        """Mark the first safe frame below the unsafe ones to raise at its next line; False where it
        cannot (the whole stack unsafe, or a tracer of someone else's set: a debugger, coverage)."""
        target = _first_safe_frame(frame)
        if target is None or sys.gettrace() not in (None, self._trace_calls):
            return False
        self._unmark()
        target.f_trace = self._trace_marked
        target.f_trace_lines = True
        self._marked = target
        sys.settrace(self._trace_calls)  # tracing on for this thread; new calls are not traced
        return True

    def _trace_calls(self, frame: FrameType, event: str, arg: Any) -> None:
        return None

    def _trace_marked(self, frame: FrameType, event: str, arg: Any) -> Any:
        """The marked frame's trace function: its next event (a new line, its return, an exception going
        through it) is the safe point."""
        if frame is not self._marked:
            return None
        if not self._active or self.stopping or (self._raised and _interrupt_being_handled()):
            self._unmark()
            return None
        self._raise()

    def _unmark(self) -> None:
        if self._marked is not None:
            self._marked.f_trace = None
            self._marked = None
        if sys.gettrace() == self._trace_calls:
            sys.settrace(None)

    # -- delivering the signal again -----------------------------------------------------------------
    def _send_after(self, after_s: float) -> None:
        _thread.start_new_thread(self._send, (after_s,))

    def _send(self, after_s: float) -> None:
        """On a thread of its own (``_thread``: no lock of the threading module, which the main thread may
        hold): SIGINT to the main thread after ``after_s``. A main thread that holds SIGINT back
        (cac_align.video's writes to ffmpeg) gets it when it lets it through."""
        time.sleep(after_s)
        with self._send_lock:
            self._resend_scheduled = False
            if self._active and not self.stopping:
                self._sent += 1
                signal.pthread_kill(self._main, signal.SIGINT)

    def _unraisable(self, unraisable: Any) -> None:
        """``sys.unraisablehook``: an interrupt this handler raised that a finalizer swallowed is delivered
        again (and not printed); everything else goes to the hook that was there before."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self._raised and self._active and not self.stopping:
            self._raised = False
            self._send_after(0.0)
            return
        self._previous_hook(unraisable)

    def uninstall(self) -> None:
        """Put back the SIGINT handler and the unraisable hook that were there before :func:`install`,
        once no signal this handler sent is still on its way (so none reaches the handler put back)."""
        with self._send_lock:
            self._active = False  # a sender still sleeping sends nothing
        deadline = time.monotonic() + 1.0
        while self._seen < self._sent and time.monotonic() < deadline:
            time.sleep(0.001)  # a signal sent to this thread is taken here, by this (inactive) handler
        self._unmark()
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._previous_hook
        signal.signal(signal.SIGINT, self._previous_handler)


def install() -> CtrlC | None:
    """Make Ctrl-C (SIGINT) stop this process at a safe point (module docstring), whatever SIGINT
    disposition it inherited: a process started in the background by a non-interactive shell (``cmd &``,
    nohup, a CI script) inherits SIGINT *ignored*, and Python then installs no handler of its own, so the
    job would never see a Ctrl-C (or a ``kill -INT``).

    Returns:
        The handler, whose :meth:`CtrlC.uninstall` restores what was there; None off the main thread,
        where signals cannot be set.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = CtrlC()
    handler._previous_hook = sys.unraisablehook
    handler._previous_handler = signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = handler._unraisable
    return handler
