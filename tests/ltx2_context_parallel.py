"""Context parallel (diffusers' Ulysses, ``enable_parallelism``) against one process, on the CPU.

Run by tests/gen/test_context_parallel.py as
``python -m torch.distributed.run --nproc_per_node 2 tests/ltx2_context_parallel.py OUT.json``
(gloo, float32). For the tiny LTX-2 and LTX-2.3 pipelines (the family's own plan,
:meth:`cac_align.gen.families.ltx2.LTX2Family.context_parallel_plan`), the tiny Wan-2.1 (diffusers' own
plan, the reference that is known to work) and two Wan image-to-video cases under the same plan
(Wan2.1-I2V with its image's channels and CLIP tokens; the TI2V-5B animating an image, its fixed
first frame in front), each process:

1. builds the same tiny pipeline, adds the video LoRA and sets its B weights to small random values
   (so the adapter changes the output and its gradients are not all zero);
2. computes the guided velocities of one step in one process (no parallelism yet) and the LoRA
   gradients of a scalar loss on the video velocity;
3. applies the family's plan, checks that this alone changes nothing (LTX-2 swaps some attention
   processors), then enables context parallel over the 2 processes and computes the same again;
4. writes, from rank 0: the largest differences of the velocities (video and audio) and of the
   summed LoRA gradients from one process's, and the control: one rank's gradient alone, which
   must differ (diffusers' output gather gives each rank only its own chunk's gradient); for
   LTX-2 a second control, the gradients with the video-to-audio gather's backward keeping each
   process's own share instead of the sum, which must differ too; and the error diffusers' own
   LTX-2 plan raises on the same call.

The LTX-2.3 case runs at 25 fps so its audio is 17 tokens, which 2 does not divide: the audio stream
is whole on every process.

**Test-only workaround.** diffusers 0.42.1's ``ModelMixin._resolve_parallel_config``
(``models/modeling_utils.py:1719``) computes ``rank % torch.accelerator.device_count()``, which
is a division by zero on a machine without an accelerator; :func:`_one_device_on_a_cpu` makes
``device_count`` say 1 while ``enable_parallelism`` runs, here and nowhere in the product.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist

PROMPTS = ["a red ball on the street", "a dog running"]
SEEDS = (11, 12)
TIMESTEPS = (700.0, 400.0)  # one per sample, as dpo gives them


@contextlib.contextmanager
def _one_device_on_a_cpu():
    """Test-only (module docstring): ``torch.accelerator.device_count()`` at least 1 while diffusers
    resolves its parallel config on a CPU."""
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda *args: max(1, original(*args))
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def _config(name: str, **settings):
    from cac_align.gen.generator import GeneratorConfig

    return GeneratorConfig(name=name, dtype="float32", vae_dtype="float32", device="cpu", num_inference_steps=3, max_sequence_length=32,
                           negative_prompt="blurry", **settings)


def _pipeline_with_lora(config):
    from cac_align.gen.lora import LoraSettings, add_lora

    family = config.family
    pipe = family.build_tiny(config.name, seed=0)
    add_lora(pipe.transformer, LoraSettings(rank=4, alpha=8, target_modules=list(family.lora_target_modules)), seed=0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in sorted(pipe.transformer.named_parameters()):
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return pipe


def _image(folder: str) -> Any:
    """A random 40 x 56 image, the same on every process (each writes its own copy)."""
    import numpy as np
    from PIL import Image

    from cac_align.run.input_files import PromptImage

    path = os.path.join(folder, f"image_rank{dist.get_rank()}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return PromptImage(path)


def _inputs(pipe, config, image=None):
    """Everything a step's denoiser call takes, drawn the same on every process; with ``image``, its
    conditioning beside the prompts' and the generated frames alone as the latents (as the sampler
    gives them)."""
    from cac_align.gen.family import fixed_frames

    family = config.family
    guidance = family.guidance(config)
    cond, negative = family.encode_prompts(pipe, PROMPTS, config.negative_prompt, guidance, config.max_sequence_length)
    latents, side = family.initial_latents(pipe, config, [torch.Generator().manual_seed(s) for s in SEEDS])
    if image is not None:
        cond = cond.join(family.encode_images(pipe, config, [image] * len(PROMPTS)))
        latents = latents[:, :, fixed_frames(cond):]
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))  # the loss: a fixed projection of the video velocity
    return dict(latents=latents, side=side, cond=cond, negative=negative, guidance=guidance, weights=weights)


def _step(denoiser, lora, inputs):
    """The guided velocities at ``TIMESTEPS`` and the LoRA gradients of ``sum(weights * v_video)``."""
    output = denoiser(inputs["latents"], torch.tensor(TIMESTEPS), inputs["cond"], inputs["negative"], inputs["guidance"], dtype=torch.float32,
                      side=inputs["side"])
    video, audio = output if isinstance(output, tuple) else (output, None)
    gradients = torch.autograd.grad((inputs["weights"] * video).sum(), [lora[name] for name in sorted(lora)])
    return video.detach(), None if audio is None else audio.detach(), dict(zip(sorted(lora), gradients))


def _video_tokens(transformer, latents) -> int:
    patch = getattr(transformer.config, "patch_size", 1)
    _, _, frames, height, width = latents.shape
    frames_patch, height_patch, width_patch = patch if isinstance(patch, (tuple, list)) else (1, patch, patch)
    return frames // frames_patch * (height // height_patch) * (width // width_patch)


def _max_diff(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def _case(name: str, mesh, image=None, **settings) -> dict:
    from diffusers import ContextParallelConfig

    from cac_align.gen.family import whole_latents

    config = _config(name, **settings)
    family = config.family
    pipe = _pipeline_with_lora(config)
    transformer, denoiser = pipe.transformer, family.denoiser(pipe)
    lora = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    inputs = _inputs(pipe, config, image)

    # 2. one process
    video, audio, gradients = _step(denoiser, lora, inputs)
    # 3. the family's plan alone changes nothing (LTX-2: the processors that stay local)
    plan = family.context_parallel_plan(transformer)
    video_planned, _, _ = _step(denoiser, lora, inputs)
    with _one_device_on_a_cpu():
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=mesh["ulysses"].size(), mesh=mesh), cp_plan=plan)
    seen = []  # the tokens this process's output layer sees: its chunk, or the plan split nothing
    handle = transformer.proj_out.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    video_cp, audio_cp, gradients_cp = _step(denoiser, lora, inputs)
    handle.remove()

    # 4. the sum over the group is one process's gradient; one rank's alone is not
    summed = {n: g.clone() for n, g in gradients_cp.items()}
    for g in summed.values():
        dist.all_reduce(g, group=mesh["ulysses"].get_group())
    result = {
        "video_tokens": _video_tokens(transformer, whole_latents(inputs["cond"], inputs["latents"])),  # an image's fixed frames too
        "output_tokens_per_process": sorted(set(seen)),
        "audio_tokens": None if inputs["side"] is None else int(inputs["side"].shape[1]),
        "plan_alone_video_max_diff": (video_planned - video).abs().max().item(),
        "video_max_diff": (video_cp - video).abs().max().item(),
        "video_max_abs": video.abs().max().item(),
        "audio_max_diff": None if audio is None else (audio_cp - audio).abs().max().item(),
        "grad_summed_max_diff": _max_diff(summed, gradients),
        "grad_own_rank_max_diff": _max_diff(gradients_cp, gradients),
        "grad_max_abs": max(g.abs().max().item() for g in gradients.values()),
        "lora_parameters": len(lora),
    }
    # the control the group agrees on: every rank's own gradient differs from one process's
    own = torch.tensor([result["grad_own_rank_max_diff"]])
    dist.all_reduce(own, op=dist.ReduceOp.MIN, group=mesh["ulysses"].get_group())
    result["grad_own_rank_max_diff_min_over_ranks"] = own.item()
    if family.audio:
        result["grad_summed_max_diff_gather_without_sum"] = _max_diff(_gradients_without_the_gather_sum(denoiser, lora, inputs, mesh), gradients)
        result["diffusers_plan_error"] = _diffusers_own_plan(config, mesh)
    return result


def _gradients_without_the_gather_sum(denoiser, lora, inputs, mesh) -> dict:
    """The control of LTX-2's video-to-audio gather (``cac_align.gen.families.ltx2._GatherTokens``): its
    backward keeping each process's own share, as diffusers' ``AllGatherFunction`` does, instead of
    the sum over the group; the LoRA gradients summed over the group, as above."""
    from cac_align.gen.families import ltx2

    group = mesh["ulysses"].get_group()

    def own_share(ctx, grad):
        return grad.chunk(dist.get_world_size(group), dim=ctx.dim)[dist.get_rank(group)].contiguous(), None, None

    original = ltx2._GatherTokens.backward
    ltx2._GatherTokens.backward = staticmethod(own_share)
    try:
        _, _, gradients = _step(denoiser, lora, inputs)
    finally:
        ltx2._GatherTokens.backward = original
    for g in gradients.values():
        dist.all_reduce(g, group=group)
    return gradients


def _diffusers_own_plan(config, mesh) -> str | None:
    """What diffusers' ``LTX2VideoTransformer3DModel._cp_plan`` does with the same call: the error
    it raises (None if it ran)."""
    from diffusers import ContextParallelConfig

    pipe = _pipeline_with_lora(config)
    inputs = _inputs(pipe, config)
    with _one_device_on_a_cpu():
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=mesh["ulysses"].size(), mesh=mesh))
    try:
        with torch.no_grad():
            config.family.denoiser(pipe)(inputs["latents"], torch.tensor(TIMESTEPS), inputs["cond"], inputs["negative"], inputs["guidance"],
                                         dtype=torch.float32, side=inputs["side"])
    except Exception as exc:  # noqa: BLE001 - recorded for the test to read
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def main(out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    world = dist.get_world_size()
    # diffusers' ContextParallelConfig.setup takes the "ring" and "ulysses" dims of the mesh it is given
    # (models/_modeling_parallel.py: setup); the data-parallel dim is 1 here
    mesh = init_device_mesh("cpu", (1, 1, world), mesh_dim_names=("dp", "ring", "ulysses"))
    results = {}
    try:
        results["tiny-random:ltx2"] = _case("tiny-random:ltx2", mesh, height=64, width=96, num_frames=17, fps=24.0, stg_blocks=[1])
        results["tiny-random:ltx2.3"] = _case("tiny-random:ltx2.3", mesh, height=64, width=96, num_frames=17, fps=25.0, stg_blocks=[1])
        results["tiny-random:wan"] = _case("tiny-random:wan", mesh, height=32, width=32, num_frames=9)
        # image-to-video: Wan2.1-I2V (36 input channels, the CLIP tokens before the text, both whole on every
        # process); the TI2V-5B animating an image (its fixed first frame in front, its tokens at timestep 0)
        image = _image(os.path.dirname(os.path.abspath(out)))
        results["tiny-random:wan21-i2v"] = _case("tiny-random:wan21-i2v", mesh, image, height=32, width=32, num_frames=9)
        results["tiny-random:wan22-ti2v+image"] = _case("tiny-random:wan22-ti2v", mesh, image, height=64, width=64, num_frames=9)
    except Exception:
        traceback.print_exc()
        dist.destroy_process_group()
        raise
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump({"world": world, "cases": results}, handle, indent=1)
    # every process's queued collectives done before any tears its group down (destroyed at once, a
    # process aborted at exit under load: "terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
