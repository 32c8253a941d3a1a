"""Run by tests/jobs/test_fsdp.py under ``accelerate launch`` with an FSDP config and two CPU processes:
``cac-align train-cac`` (the CLI's own ``main``) with accelerate's FSDP2 on gloo.

accelerate 1.15 turns FSDP on only for GPUs and similar devices: in ``AcceleratorState.__init__``
the FSDP branch sits under ``if self.distributed_type in [MULTI_GPU, MULTI_NPU, ...]``, so on a
machine without one the same config silently runs as plain multi-CPU data parallel
(``MULTI_CPU``; ``Trainer.is_fsdp_enabled`` is False). This script lifts that one gate: when
accelerate has set up MULTI_CPU *with* an FSDP plugin (the config asked for FSDP), the state
becomes FSDP. Everything after it is accelerate's and transformers' own code, unchanged:
``fsdp2_prepare_model`` (``fully_shard`` over the wrap classes the config names), the sharded
optimizer step, and the Trainer's FSDP save (a full state dict gathered to process 0).

Each process also records what ``fsdp2_prepare_model`` returned (parameter types, the elements it
holds, the sharded modules by class) in ``$CAC_FSDP_RECORD/rank<N>.json``, so the test can see the sharding.
"""

import json
import os
from collections import Counter
import sys
from pathlib import Path

import accelerate.accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _init_with_cpu_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # a later AcceleratorState() copies PartialState's shared fields over its own
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


_prepare = accelerate.accelerator.fsdp2_prepare_model


def _prepare_and_record(accelerator, model):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    model = _prepare(accelerator, model)
    params = list(model.parameters())
    record = {
        "distributed_type": str(accelerator.distributed_type),
        "param_types": sorted({type(p).__name__ for p in params}),
        "full_numel": sum(p.numel() for p in params),
        "local_numel": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
        "sharded_modules": dict(Counter(type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule))),
    }
    folder = Path(os.environ["CAC_FSDP_RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
    return model


AcceleratorState.__init__ = _init_with_cpu_fsdp
accelerate.accelerator.fsdp2_prepare_model = _prepare_and_record

from cac_align.cli import main  # noqa: E402

code = main(sys.argv[1:])
# Leave without the interpreter's teardown: with FSDP on gloo, a process sometimes aborts there
# ("terminate called without an active exception", exit -6) after its work is done and written.
import torch.distributed as dist  # noqa: E402

if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
