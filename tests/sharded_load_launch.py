"""Run by tests/jobs/test_parallel.py under ``torchrun --nproc_per_node 2`` (CPU, gloo): each process loads
generators as a sharded trainer does (``load_generator``, the LoRA, ``apply_parallelism``: the first
process reads or draws the transformers' weights, the others build them on the meta device and take
their shards from it) and compares everything it then holds, gathered whole, with the same generator
loaded whole in this process the unsharded way (``build_generator``, then the LoRA), bit for bit: every
parameter and buffer of each expert (the frozen base, the LoRA's initial weights, the rope tables a
state dict leaves out) with its dtype, each module's train/eval mode, and every other model of the
pipeline (text encoder, VAE, ...).

    python -m torch.distributed.run --nproc_per_node 2 tests/sharded_load_launch.py OUT NAME:DTYPE ...

A generator read from a folder has its prompt encoders as one copy for the node (``parallel.share_encoders``
at its default: the encoders live on the CPU here): each process also reports, per encoder, whether every
tensor it holds is in the shared file, and from ``/proc/self/smaps`` (after both processes have read every
tensor) each shared file's resident and shared kilobytes and whether it is deleted.

Writes ``OUT/load<rank>.json``: per generator, the number of tensors compared and the differences, and
``shared``: encoder -> {"held": every tensor in the file, "rss_kb", "shared_kb", "deleted"}.
"""

import json
import os
import sys
from pathlib import Path

import torch

from cac_align.config import RecipeError
from cac_align.gen.generator import GeneratorConfig, build_generator, expert_components
from cac_align.gen.lora import LoraSettings, adapted_denoiser
from cac_align.gen.parallel import ParallelSettings, apply_parallelism, layout_for, load_generator

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


def mapped_kb(path: str) -> dict:
    """This process's mappings of ``path``: resident and shared kilobytes (its pages that another process
    maps too), and whether the file is deleted."""
    found = {"rss_kb": 0, "shared_kb": 0, "deleted": None}
    inside = False
    with open("/proc/self/smaps") as lines:
        for line in lines:
            fields = line.split()
            if "-" in fields[0] and len(fields[0]) > 8 and ":" not in fields[0]:  # a mapping's first line
                inside = len(fields) >= 6 and fields[5] == path
                if inside:
                    found["deleted"] = fields[-1] == "(deleted)"
            elif inside and fields[0] == "Rss:":
                found["rss_kb"] += int(fields[1])
            elif inside and fields[0] in ("Shared_Clean:", "Shared_Dirty:"):
                found["shared_kb"] += int(fields[1])
    return found


layout = layout_for(OnTheCpu(), ParallelSettings(shard="fsdp2"))
report = {}
for case in cases:
    case_layout = layout
    if ":share_dir=" in case:  # NAME:DTYPE:share_dir=PATH: a folder the shared copy cannot go to, refused on every process
        loaded, _, share_dir = case.partition(":share_dir=")
        case_layout = layout_for(OnTheCpu(), ParallelSettings(shard="fsdp2", share_dir=share_dir))
    name, dtype = (loaded if case_layout is not layout else case).rsplit(":", 1)
    config = GeneratorConfig(name=name, dtype=dtype, device="cpu")
    family = config.family
    lora = LoraSettings(rank=4, alpha=8, experts="both" if family.experts == 2 else "high")
    if case_layout is not layout:
        try:
            load_generator(case_layout, config, torch.device("cpu"))
            report[case] = {"refused": None}
        except RecipeError as exc:
            report[case] = {"refused": str(exc)}
        continue
    pipe = load_generator(layout, config, torch.device("cpu"))
    denoiser = adapted_denoiser(pipe, family, lora, seed=7)
    apply_parallelism(layout, denoiser, family, pipe, torch.device("cpu"))
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
    torch.distributed.barrier()  # both processes have read every tensor: the pages they share are counted so
    shared = {}
    for component in family.encoder_components:
        module, home = pipe.components.get(component), layout.encoder_homes.get(id(pipe.components.get(component)))
        if isinstance(module, torch.nn.Module) and home is not None:
            tensors = [t for _, owner in module.named_modules() for t in [*owner._parameters.values(), *owner._buffers.values()] if t is not None]
            shared[component] = {"held": all(home.holds(t) for t in tensors), **mapped_kb(home.path)}
    report[case] = {"compared": compared, "differences": differences[:10], "shared": shared}
(out / f"load{rank}.json").write_text(json.dumps(report))
torch.distributed.barrier()  # every process done before any tears its group down (as fsdp_cpu_launch.py)
torch.distributed.destroy_process_group()
# Leave without the interpreter's teardown, as fsdp_cpu_launch.py does: with FSDP2 on gloo a process sometimes aborts
# there ("terminate called without an active exception", exit -6; this launch's rank 1 in a CI run of 2026-11-28,
# after its last case's load), once its work is done and written.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)

