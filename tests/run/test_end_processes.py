"""How a process of a multi-process run ends (cac_align/run/dist.py end_processes), the one place every job's CLI run
ends its process group (issue #100, item 0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# A one-process gloo group as accelerate makes it (PartialState, env://), a DDP-wrapped model in a reference cycle, then
# end_processes: the group destroyed, accelerate's state forgotten, the cycle collected.
SCRIPT = r"""
import gc, os, sys, weakref
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import PartialState
from cac_align.run.dist import end_processes

acc = Accelerator(cpu=True)
assert dist.is_initialized() and PartialState().num_processes == 1
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
holder = {"model": model}
holder["self"] = holder  # a cycle, as a wrapped model's hooks make one
seen = weakref.ref(model)
del model, holder, acc
end_processes(completed=True)
assert not dist.is_initialized(), "the group outlived the run"
assert seen() is None, "the wrapped model outlived the run"
assert not PartialState._shared_state, "accelerate still names the destroyed group"
end_processes(completed=False)  # a second call (nothing left) is harmless
print("ended")
"""


@pytest.mark.slow  # a fresh process with a group and a run (8.7 s of the default suite's 501 s on 2 busy cores, 2026-11-29): its 5 minutes; .ci/run runs it
def test_end_processes_destroys_the_group_and_collects_the_run_before_the_interpreter_ends(tmp_path):
    import socket

    with socket.socket() as probe:  # a free port for the group's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("ended"), done.stdout[-2000:] + done.stderr[-2000:]


def test_a_command_without_a_group_never_loads_torch_to_end_one():
    done = subprocess.run([sys.executable, "-c", "import sys; from cac_align.run.dist import end_processes; end_processes(); "
                           "print('torch.distributed' in sys.modules)"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]
