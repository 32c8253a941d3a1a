"""Ctrl-C stops a job within seconds with its one line and exit status 130, wherever the signal lands
(cac_align/run/interrupts.py): while the job logs from two threads, draws a progress bar and waits on a
thread pool, at several moments; and at the places where Python's own handler lost the interrupt and
left the job running (issue 117: ``synth`` still running 60 s after Ctrl-C on a loaded machine, its
stderr holding a traceback through ``logging/__init__.py``'s lock): inside logging's finalizer of a
handler, inside a ``__del__`` that takes its time, inside a weakref callback.

Each case is a fresh ``cac-align synth`` process (the real CLI, its SIGINT inherited ignored as a
background job's is) whose job is :data:`CHILD`'s ``busy``: it runs until interrupted or for
:data:`RUNS_FOR_S` at most, after which it returns and the process exits 0, so an interrupt that was lost
shows as exit 0 (or as a hang, past :data:`ENDS_WITHIN_S`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import ignore_sigint, stop_process_tree

RUNS_FOR_S = 8.0
ENDS_WITHIN_S = 15.0  # a stop takes ~0.1 s idle; the margin is for a loaded machine
LINE = "cac-align synth: interrupted; rerun the same command to resume: finished videos are kept"

CHILD = r'''
import logging, signal, sys, threading, time, weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cac_align.cli import main
from cac_align.jobs import JobSpec
from cac_align.run.folder import RunFolder

out, point, runs_for_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
MAIN = threading.get_ident()


def signal_main_inside(function):
    """SIGINT to the main thread once its stack is inside `function` (read from another thread)."""
    def watch():
        while True:
            frame = sys._current_frames().get(MAIN)
            while frame is not None and frame.f_code.co_name != function:
                frame = frame.f_back
            if frame is not None:
                signal.pthread_kill(MAIN, signal.SIGINT)
                return
            time.sleep(0.0005)
    threading.Thread(target=watch, daemon=True).start()


class SlowToFinalize:
    def __del__(self):  # like imageio-ffmpeg's writer, closed by the collector, waiting for ffmpeg
        time.sleep(0.3)


def slow_callback(ref):  # a weakref callback of no module the handler knows
    time.sleep(0.3)


class Referent:
    pass


def busy(config):
    RunFolder(config.out_dir, "synth", ["videos"], {}).start()  # a run recorded: the line says how it resumes
    log = logging.getLogger("cac_align.jobs.synth")
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(2) as pool:  # its workers log too; leaving waits for them
        steps(log, pool, tqdm)


def steps(log, pool, tqdm):
    deadline = time.monotonic() + runs_for_s
    (out / "running").touch()
    for step in tqdm(range(10**9), mininterval=0):
        log.info("step %d", step)  # through the CLI's handler, inside logging's locks
        pool.submit(log.info, "worker %d", step).result()
        if point == "logging_finalizer" and step == 50:
            # logging's module lock held by another thread: the handler dropped below waits for it in
            # logging._removeHandlerRef, a weakref callback, when the signal lands
            handler = logging.Handler()
            held = threading.Event()
            def hold():
                with logging._lock:  # the lock _removeHandlerRef takes
                    held.set()
                    time.sleep(0.3)
            threading.Thread(target=hold).start()
            held.wait()
            signal_main_inside("_removeHandlerRef")
            del handler
        if point == "__del__" and step == 50:
            signal_main_inside("__del__")
            SlowToFinalize()
        if point == "weakref_callback" and step == 50:
            signal_main_inside("slow_callback")
            referent = Referent()
            ref = weakref.ref(referent, slow_callback)
            del referent
        logging.Handler()  # dropped at once: logging._removeHandlerRef runs as its finalizer
        if time.monotonic() > deadline:
            return


JobSpec.runner = lambda self: busy
sys.exit(main(["synth", f"out_dir={out}"]))
'''


def _interrupt(tmp_path, point: str, delay_s: float | None) -> tuple[float, str]:
    """Run :data:`CHILD` at ``point``; with ``delay_s``, send it SIGINT that long after its job started
    (else it signals itself). Returns how long it took to end after the signal, and its stderr."""
    out = tmp_path / f"{point}-{delay_s}"
    out.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with open(out / "stderr", "w") as err:  # a file, not a pipe: heavy logging never blocks on a reader
        job = subprocess.Popen([sys.executable, str(script), str(out), point, str(RUNS_FOR_S)], stdout=subprocess.DEVNULL,
                               stderr=err, preexec_fn=ignore_sigint)
        try:
            start = time.monotonic()
            while not (out / "running").exists():
                assert job.poll() is None and time.monotonic() - start < 60, (out / "stderr").read_text()[-3000:]
                time.sleep(0.002)
            if delay_s is not None:
                time.sleep(delay_s)
                job.send_signal(signal.SIGINT)
            sent = time.monotonic()
            try:
                job.wait(timeout=ENDS_WITHIN_S + RUNS_FOR_S)
            except subprocess.TimeoutExpired:
                pass
            took = time.monotonic() - sent
        finally:
            stop_process_tree(job)
    text = (out / "stderr").read_text()
    assert job.returncode == 130, f"{point} {delay_s}: exit {job.returncode} after {took:.1f} s\n{text[-3000:]}"
    return took, text


@pytest.mark.parametrize("point", ["logging_finalizer", "__del__", "weakref_callback"])
def test_ctrl_c_inside_a_finalizer_stops_the_job(tmp_path, point):
    """Python's own handler raised the interrupt inside the finalizer, which swallowed it (a traceback
    "Exception ignored in ...") and the job ran on to its end (exit 0)."""
    took, err = _interrupt(tmp_path, point, None)
    assert took < ENDS_WITHIN_S
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err[-3000:]
    # the progress bar's last state may precede the line on the same terminal line
    assert err.rstrip().splitlines()[-1].endswith(LINE), err[-3000:]


def test_ctrl_c_at_many_moments_of_a_job_that_logs_stops_it(tmp_path):
    """Four moments, from right at its start to 0.2 s into a job logging from three threads: the signal lands in
    logging, tqdm, the pool's submit or its wait nearly every time (12 of 12 moments, when counted), and is raised
    when the job's loop is next on its own line."""
    for delay_s in (0.0, 0.01, 0.05, 0.2):
        took, err = _interrupt(tmp_path, "logging", delay_s)
        assert took < ENDS_WITHIN_S
        assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err[-3000:]
        assert err.rstrip().splitlines()[-1].endswith(LINE), err[-3000:]
