"""LTX-2.5's diffusion decoder: decoding that samples, beside the LTX-2 family (:mod:`cac_align.gen.families.ltx2`).

The decoder of diffusers 0.42.1 (``models/autoencoders/ltx2_diffusion_decoder.py``,
``pipelines/ltx2/pipeline_ltx2_diffusion_decode.py``, ``modular_pipelines/ltx2/decoders.py``
``LTX2DiffusionVaeDecoderStep``: "from LTX-2.5 on the native default") decodes the same latents
as the VAE (whose encoder the jobs keep: image-to-video, DPO), but it is a diffusion model: it draws
pixel noise (one x0 step in the release) and denoises it conditioned on the latents. ``LTX2Pipeline``
does not hold it (it is no component of that class, and its ``save_pretrained`` would not write it):
a checkpoint keeps it in its ``diffusion_decoder`` folder (:func:`load_diffusion_decoder`), the
family (:data:`~cac_align.gen.families.ltx2.LTX25`) keeps it as ``pipe.diffusion_decoder``, and
decodes the transformer's final latents through diffusers' own ``LTX2VideoDiffusionDecodePipeline``
(:func:`diffusion_decode`); the audio is decoded as before. Three decisions, each pinned by a test (tests/gen/test_ltx25.py):

- **What seeds the decoder's draw: the video's seed.** Video ``i`` decodes with a generator of its
  own, seeded ``derive_seed(seed_i, 25)`` (:func:`decoder_generator`): a stream apart from the one
  the sampler draws the initial noise from, and the same whatever path made the latents (the
  pipeline in ``bon``, the SDE sampler in ``flow-grpo``) and whatever batch the video was in. So a
  seed still names one video: ``bon`` twice with the same seed writes the same videos. The family
  interface grew for it: ``decode`` takes the videos' seeds (:mod:`cac_align.gen.family`).
- **Flow-GRPO's log-probabilities do not cover the decoder's draw.** The policy is the transformer;
  its actions are the SDE steps of the latents, and their log-probabilities, ratios, KL and losses
  are computed on the recorded latents alone. The decoder is frozen and runs after the last step;
  its draw is part of the environment that turns latents into a video, as a VAE's decoding is. A
  reward therefore also scores the decoder's draw (a second source of variance in a group's
  advantages, which the group's several seeds average over), and two groups with the same seeds
  see the same draws.
- **``num_frames`` is always passed; the duration head is never consulted.** ``LTX2Pipeline``
  predicts a clip's length with its ``duration_head`` only when ``num_frames`` is None, one length
  per call (it refuses a batch of prompts): a group or a batch of Best-of-N candidates must share
  one latent shape, and a recipe's frames must be checked (``8k + 1``) before anything loads. A
  recipe that leaves ``num_frames`` unset takes the release's 121 (5 s at 24 fps: the release table
  of :mod:`cac_align.gen.families.ltx2`); the head is loaded with the checkpoint and left unused.

Not measured at full size: diffusers' default attention of the decoder
(``LTX2VideoVaeNeighborhoodAttnProcessor``) is FlexAttention with a block mask, which torch runs
unfused outside ``torch.compile`` (it materializes every query-key score: at 121 x 512 x 768 the last
stage's 3 million tokens cannot), so a real run needs the decoder's flex attention compiled, tiled
decoding (``pipe.diffusion_decoder.enable_tiling()``) or diffusers' NATTEN processor (a GPU kernel
fetched from the Hub with ``kernels``); the tiny decoder's 408 tokens run it unfused on the CPU.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cac_align.loading import resolve_dtype

__all__ = ["DECODER_STREAM", "DIFFUSION_DECODER", "check_decoder_size", "decoder_generator", "decoder_grids", "diffusion_decode",
           "load_diffusion_decoder"]

# The stream a sample's seed gives its decoder draw (cac_align.run.dist.derive_seed(seed, 25)):
# another stream than the sampler's, which draws the initial noise from the seed itself
DECODER_STREAM = 25
DIFFUSION_DECODER = "diffusion_decoder"  # its folder beside model_index.json


def decoder_generator(seed: int, device: Any = "cpu") -> torch.Generator:
    """The generator of the diffusion decoder's noise for the video of ``seed``: seeded with
    ``derive_seed(seed, DECODER_STREAM)``, so the same seed decodes to the same video whatever
    path sampled its latents (the pipeline in ``bon``, the SDE sampler in ``flow-grpo``) and
    whatever batch it was in."""
    from cac_align.run.dist import derive_seed

    return torch.Generator(device=device).manual_seed(derive_seed(int(seed), DECODER_STREAM))


def diffusion_decode(pipe: Any, latents: torch.Tensor, seeds: Sequence[int]) -> np.ndarray:
    """Denormalized video latents ``(B, C, F', H', W')`` (what ``LTX2Pipeline`` returns with
    ``output_type="latent"``) to uint8 frames ``(B, F, H, W, 3)`` through diffusers'
    ``LTX2VideoDiffusionDecodePipeline`` over ``pipe.diffusion_decoder`` (``denormalize=False``),
    video ``i`` drawing its pixel noise from :func:`decoder_generator` of ``seeds[i]`` (diffusers'
    ``randn_tensor`` draws each row from its own generator). The decoder goes where the VAE is on
    first use (it is not one of ``LTX2Pipeline``'s components, which the jobs place; the VAE stays on
    the device where the text encoder may leave it), and draws there."""
    from diffusers import LTX2VideoDiffusionDecodePipeline

    from cac_align.gen.generator import frames_to_uint8

    decoder = pipe.diffusion_decoder
    device = next(pipe.vae.parameters()).device
    if next(decoder.parameters()).device != device:
        decoder.to(device)
    decode = LTX2VideoDiffusionDecodePipeline(diffusion_decoder=decoder, scheduler=pipe.scheduler, vae=pipe.vae)
    decode.set_progress_bar_config(disable=True)
    generators = [decoder_generator(seed, device) for seed in seeds]
    frames = decode(latents.to(device), generator=generators, output_type="pt", denormalize=False).frames
    return frames_to_uint8(frames)


def decoder_grids(decoder_config: Mapping[str, Any], num_frames: int, height: int, width: int) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """``(stage, (T, H, W) grid, kernel)`` of each neighbourhood-attention stage of LTX-2.5's diffusion
    decoder for a video of ``num_frames x height x width``, from its ``config.json``: stages 1-4 run on
    the latent grid (latent frames plus ``(kernel_t // 2) * 2`` trailing copies, ``height /
    spatial_compression_ratio`` x ``width / ...``), each upsampled by its stride after it (a time stride
    of 2 drops the duplicated first frame); stage 5 on the pixels in patches (the trailing copies
    cropped): diffusers 0.42.1 ``LTX2VideoDiffusionDecoder3d``. Each stage needs its grid at least its
    kernel on every axis (diffusers raises "Neighborhood attention requires each spatial dim to be at
    least its kernel size" otherwise)."""
    kernels = [tuple(k) for k in decoder_config["decoder_stage_kernels"]]
    strides = [tuple(s) for s in decoder_config["decoder_upsample_strides"]]
    temporal, spatial = int(decoder_config["temporal_compression_ratio"]), int(decoder_config["spatial_compression_ratio"])
    pad = (kernels[0][0] // 2) * 2
    t, h, w = (num_frames - 1) // temporal + 1 + pad, height // spatial, width // spatial
    grids = []
    for stage, (kernel, (st, sh, sw)) in enumerate(zip(kernels, strides), start=1):
        grids.append((stage, (t, h, w), kernel))
        t, h, w = t * st - (1 if st == 2 else 0), h * sh, w * sw
    grids.append((len(kernels) + 1, (t - pad * temporal, h, w), tuple(decoder_config["decoder_stage5_kernel"])))
    return grids


def check_decoder_size(decoder_config: Mapping[str, Any], num_frames: int, height: int, width: int, title: str = "LTX-2.5") -> None:
    """Raises ``RecipeError`` in one line when a stage of the diffusion decoder (:func:`decoder_grids`)
    would get a grid smaller than its kernel, naming the stage and the smallest height, width and
    frames that work (each axis alone: the least multiple of the decoder's compression that fits every
    stage)."""
    from cac_align.config import RecipeError

    def fits(frames: int, side_h: int, side_w: int, axis: int) -> bool:
        return all(grid[axis] >= kernel[axis] for _, grid, kernel in decoder_grids(decoder_config, frames, side_h, side_w))

    short = [(stage, grid, kernel) for stage, grid, kernel in decoder_grids(decoder_config, num_frames, height, width)
             if any(g < k for g, k in zip(grid, kernel))]
    if not short:
        return
    temporal, spatial = int(decoder_config["temporal_compression_ratio"]), int(decoder_config["spatial_compression_ratio"])
    frames = next(n * temporal + 1 for n in range(4096) if fits(n * temporal + 1, spatial, spatial, 0))
    least_h = next(n * spatial for n in range(1, 4096) if fits(1, n * spatial, spatial, 1))
    least_w = next(n * spatial for n in range(1, 4096) if fits(1, spatial, n * spatial, 2))
    stage, grid, kernel = short[0]
    raise RecipeError(
        f"generator: {title}'s diffusion decoder cannot take {height} x {width} x {num_frames} frames: its stage {stage} attends over "
        f"(T, H, W) = {grid} positions with a {kernel} window (diffusion_decoder/config.json); it takes height >= {least_h}, width >= "
        f"{least_w} and num_frames >= {frames}: set generator.height={max(height, least_h)} generator.width={max(width, least_w)} "
        f"generator.num_frames={max(num_frames, frames)}")


def load_diffusion_decoder(source: str, folder: str, vae_dtype: str, key: str) -> Any:
    """LTX-2.5's ``LTX2VideoDiffusionDecoderModel`` from the ``diffusion_decoder`` folder of ``folder``
    (a local folder or a hub id), in ``vae_dtype``; a one-line error when it has none."""
    from diffusers import LTX2VideoDiffusionDecoderModel

    try:
        decoder = LTX2VideoDiffusionDecoderModel.from_pretrained(folder, subfolder=DIFFUSION_DECODER, dtype=resolve_dtype(vae_dtype),
                                                                 use_safetensors=True)
    except (OSError, ValueError) as exc:
        from cac_align.loading import WeightsNotFoundError

        raise WeightsNotFoundError(f"{key}={source!r}: LTX-2.5 decodes with its diffusion decoder and its '{DIFFUSION_DECODER}' folder cannot be "
                                   f"loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); give a checkpoint with one "
                                   "(LTX2VideoDiffusionDecoderModel.save_pretrained writes it), or download it where there is network") from exc
    return decoder.eval()
