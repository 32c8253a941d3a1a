"""Run by tests/jobs/test_parallel.py under ``torchrun --nproc_per_node N`` (CPU, gloo): one generator
trainer (``flow-grpo`` or ``dpo``) on a tiny recipe with a ``parallel`` section, recording what the
test compares with one process.

    python -m torch.distributed.run --nproc_per_node 2 tests/parallel_launch.py flow-grpo RECIPE OUT key=value ...

Each process writes into OUT:
- ``record<rank>.json``: its layout (dp/cp ranks), the FSDP2 units per expert, the frozen base's
  elements it holds locally and in all (and its bytes), the largest block's, and the trainable
  parameters' types; and what the generator's transformers brought into its host memory while it
  loaded (``Layout.load_generator``): ``transformer_bytes_built`` (their parameters with real storage
  when a transformer class was constructed: a tiny pipeline's), ``transformer_bytes_read`` (the tensors
  read from a ``transformer*/`` safetensors file) and ``expert_bytes_before_shard`` (the bytes of the
  experts' parameters with real storage when ``Layout.apply`` starts, the LoRA's included);
- ``logprobs<rank>.safetensors`` (flow-grpo): the log-probs of every trajectory it sampled, in order.

``CAC_TEST_REWARD=NAME`` replaces the recipe's reward section with ``{name: NAME}`` (e.g. brightness).

Two switches make the controls the test expects to FAIL its equality:
- ``CAC_TEST_NO_CP_SCALE=1``: the loss is not multiplied by the context-parallel degree;
- ``CAC_TEST_PERTURB_RANK=R``: process R draws other noise (its samples' seeds + 1).

Test-only workaround (not in the product): diffusers 0.42.1's ``ModelMixin._resolve_parallel_config``
computes ``rank % torch.accelerator.device_count()``, which divides by zero on a machine with no
accelerator; here ``torch.accelerator.device_count`` answers 1 on such a machine, so diffusers'
context parallel runs on the CPU with gloo (docs/flow_grpo.md, "Sharding and long videos").
"""

import functools
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

if not torch.accelerator.device_count():
    torch.accelerator.device_count = lambda: 1

from cac_align.config import load_config  # noqa: E402
from cac_align.gen import parallel  # noqa: E402

job, recipe, out, overrides = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
rank = int(os.environ.get("RANK", "0"))
out.mkdir(parents=True, exist_ok=True)
record: dict = {}

if os.environ.get("CAC_TEST_NO_CP_SCALE"):
    parallel.Layout.loss_scale = property(lambda self: 1.0)

_apply = parallel.Layout.apply


def _apply_and_record(self, denoiser, family, pipe=None, device=None):
    from torch.distributed.tensor import DTensor

    before = _real_bytes(denoiser.parameters())
    _apply(self, denoiser, family, pipe, device)

    def local(p):
        return (p.to_local() if isinstance(p, DTensor) else p).numel()

    frozen = [p for p in denoiser.parameters() if not p.requires_grad]
    blocks = [m for e in denoiser.experts for m in parallel.family_blocks(e, family)]
    record.update(
        rank=self.rank, dp_rank=self.dp_rank, cp_rank=self.cp_rank, dp=self.dp, cp=self.cp,
        units=[len(parallel.fsdp_units(e)) for e in denoiser.experts],
        blocks=[len(parallel.family_blocks(e, family)) for e in denoiser.experts],
        frozen_local=sum(local(p) for p in frozen), frozen_total=sum(p.numel() for p in frozen),
        frozen_bytes=sum(p.numel() * p.element_size() for p in frozen), expert_bytes_before_shard=before,
        largest_block=max(sum(p.numel() for p in b.parameters()) for b in blocks),
        trainable_types=sorted({type(p).__name__ for p in denoiser.parameters() if p.requires_grad}),
        frozen_with_grad=sum(p.grad is not None for p in frozen),
    )


parallel.Layout.apply = _apply_and_record


# What the transformers bring into this process's host memory while the generator loads: a transformer
# class constructed with real storage (a tiny pipeline's: diffusers' from_pretrained and from_config
# under the meta device construct it empty), and the tensors read from a transformer's safetensors files
# (diffusers reads each file through safetensors.torch.load_file).
import diffusers  # noqa: E402
import safetensors.torch  # noqa: E402

loading = {"on": False, "built": 0, "read": 0}


def _real_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)


def _counting_init(cls):
    init = cls.__init__

    @functools.wraps(init)  # diffusers' from_config reads the signature of __init__
    def counted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if loading["on"] and type(self) is cls:
            loading["built"] += _real_bytes(self.parameters())

    cls.__init__ = counted


for _cls in (diffusers.WanTransformer3DModel, diffusers.LTX2VideoTransformer3DModel):
    _counting_init(_cls)
_load_file = safetensors.torch.load_file


def _counting_load_file(filename, *args, **kwargs):
    tensors = _load_file(filename, *args, **kwargs)
    if loading["on"] and Path(filename).parent.name.startswith("transformer"):
        loading["read"] += _real_bytes(tensors.values())
    return tensors


safetensors.torch.load_file = _counting_load_file
_load_generator = parallel.Layout.load_generator


def _load_and_record(self, config, device):
    loading.update(on=True, built=0, read=0)
    try:
        return _load_generator(self, config, device)
    finally:
        loading["on"] = False
        record.update(transformer_bytes_built=loading["built"], transformer_bytes_read=loading["read"])


parallel.Layout.load_generator = _load_and_record

if job == "flow-grpo":
    from cac_align.jobs import flow_grpo
    from cac_align.jobs.flow_grpo import FlowGrpoConfig as Config, run

    perturbed = os.environ.get("CAC_TEST_PERTURB_RANK")
    if perturbed is not None and int(perturbed) == rank:
        seed_of = flow_grpo.sample_seed
        flow_grpo.sample_seed = lambda seed, step, index: seed_of(seed, step, index) + 1
    sampled = []
    sample = flow_grpo.sample_with_log_probs

    def recording(*args, **kwargs):
        trajectory = sample(*args, **kwargs)
        if kwargs.get("noise_level", 0) > 0:
            sampled.append(trajectory.log_probs.detach().cpu())
        return trajectory

    flow_grpo.sample_with_log_probs = recording
else:
    from cac_align.jobs.dpo import DpoConfig as Config, run

config = load_config(Config, recipe, [f"out_dir={out}", "log_with=none", *overrides], job=job)
if os.environ.get("CAC_TEST_REWARD"):  # a recipe's reward replaced whole (a toy one: the same scores on 1 or N processes)
    config.reward = {"name": os.environ["CAC_TEST_REWARD"]}
run(config)
if job == "flow-grpo" and sampled:
    save_file({"log_probs": torch.cat(sampled)}, str(out / f"logprobs{rank}.safetensors"))
(out / f"record{rank}.json").write_text(json.dumps(record))
