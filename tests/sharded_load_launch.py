"""Run by tests/jobs/test_parallel.py under ``torchrun --nproc_per_node 2`` (CPU, gloo): each process loads
generators as a sharded trainer does (``Layout.load_generator``, the LoRA, ``Layout.apply``: the first
process reads or draws the transformers' weights, the others build them on the meta device and take
their shards from it) and compares everything it then holds, gathered whole, with the same generator
loaded whole in this process the unsharded way (``build_generator``, then the LoRA), bit for bit: every
parameter and buffer of each expert (the frozen base, the LoRA's initial weights, the rope tables a
state dict leaves out) with its dtype, each module's train/eval mode, and every other model of the
pipeline (text encoder, VAE, ...).

    python -m torch.distributed.run --nproc_per_node 2 tests/sharded_load_launch.py OUT NAME:DTYPE ...

Writes ``OUT/load<rank>.json``: per generator, the number of tensors compared and the differences.
"""

import json
import sys
from pathlib import Path

import torch

from cac_align.gen.generator import GeneratorConfig, build_generator, expert_components
from cac_align.gen.lora import LoraSettings, adapted_denoiser
from cac_align.gen.parallel import ParallelSettings, layout_for

out, cases = Path(sys.argv[1]), sys.argv[2:]
torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()


class OnTheCpu:  # what layout_for reads of an Accelerator
    num_processes, process_index, device = torch.distributed.get_world_size(), rank, torch.device("cpu")


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # a collective for a shard


def held(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """Every parameter and buffer (persistent or not) of ``module``, whole, with its owner's training flag."""
    tensors = {}
    for prefix, owner in module.named_modules():
        for name, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is not None:
                tensors[f"{prefix}.{name}"] = (whole(tensor.detach()), owner.training)
    return tensors


layout = layout_for(OnTheCpu(), ParallelSettings(shard="fsdp2"))
report = {}
for case in cases:
    name, dtype = case.rsplit(":", 1)
    config = GeneratorConfig(name=name, dtype=dtype, device="cpu")
    family = config.family
    lora = LoraSettings(rank=4, alpha=8, experts="both" if family.experts == 2 else "high")
    pipe = layout.load_generator(config, torch.device("cpu"))
    denoiser = adapted_denoiser(pipe, family, lora, seed=7)
    layout.apply(denoiser, family, pipe, torch.device("cpu"))
    reference_pipe = build_generator(config)  # today's load, whole, in this process
    reference = adapted_denoiser(reference_pipe, family, lora, seed=7)
    pairs = [(f"expert{i}", got, want) for i, (got, want) in enumerate(zip(denoiser.experts, reference.experts))]
    pairs += [(component, module, reference_pipe.components[component]) for component, module in pipe.components.items()
              if isinstance(module, torch.nn.Module) and component not in expert_components(family)]
    compared, differences = 0, []
    for label, got_module, want_module in pairs:
        got, want = held(got_module), held(want_module)
        if set(got) != set(want):
            differences.append(f"{label}: other tensors {sorted(set(got) ^ set(want))[:3]}")
            continue
        for key, (tensor, training) in want.items():
            other, other_training = got[key]
            compared += 1
            if other.dtype != tensor.dtype or other.shape != tensor.shape or not torch.equal(other, tensor) or other_training != training:
                differences.append(f"{label}.{key}: {other.dtype} {tuple(other.shape)} against {tensor.dtype} {tuple(tensor.shape)}")
    report[case] = {"compared": compared, "differences": differences[:10]}
(out / f"load{rank}.json").write_text(json.dumps(report))
torch.distributed.barrier()  # every process done before any tears its group down (as fsdp_cpu_launch.py)
torch.distributed.destroy_process_group()

