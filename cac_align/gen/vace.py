"""The regenerator: Wan-VACE fills a masked part of a video, and we splice it back.

Repair (``cac-align repair``, :mod:`cac_align.jobs.repair`) regenerates only where a judge points:
a :class:`~cac_align.regions.Region` of the video (the window's frames, the dilated boxes) becomes
a pixel mask; :func:`plan_repair` conforms it to what diffusers' ``WanVACEPipeline`` needs and
crops the video in time around it; :func:`regenerate` runs VACE on that segment (``video`` with
the ``mask``: white = generate, black = keep); :func:`splice` puts the result back so that every
pixel outside the mask is the input's own decoded pixel, exactly.

**Wan2.2.** The Wan2.2 VACE is the two-expert A14B's (alibaba-pai's Wan2.2-VACE-Fun-A14B, in
diffusers' layout as ``linoyts/Wan2.2-VACE-Fun-14B-diffusers``): diffusers' ``WanVACEPipeline``
takes its ``transformer_2`` and ``boundary_ratio`` and switches experts itself, as ``WanPipeline``
does; ``guidance_scale_2`` is the low-noise expert's scale. It keeps Wan-2.1's VAE, so everything
below holds for it too. The TI2V-5B has no VACE: its videos are repaired by either VACE (repair
takes any video).

What VACE needs (Wan-2.1's VAE): a frame count of the form ``4k + 1`` and frame sides that are
multiples of 16 (8x VAE x 2x patch). The plan therefore

1. takes the frames the mask touches, widened by ``condition_s`` seconds of kept frames on each
   side (VACE's conditioning: the model sees the unmasked neighbours and continues them);
2. grows that segment to the next ``4k + 1`` frames (to the right, then to the left), repeating
   the last frame when the whole video is shorter (repeats are dropped again after);
3. pads each frame to multiples of 16 by repeating its edge pixels (kept, then cropped off).

A segment shorter than the video is the point of the crop: the denoising cost is frames x steps
(:attr:`RepairPlan.frame_steps`), against a whole new video for Best-of-N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cac_align.loading import check_dtype
from cac_align.regions import Region

__all__ = ["RegeneratorConfig", "RepairPlan", "TINY_VACE_BUILDERS", "build_regenerator", "build_tiny_vace_pipeline", "build_tiny_wan22_vace_a14b_pipeline",
           "feather_alpha", "plan_repair", "regenerate", "splice"]

TINY_VACE = "tiny-random:wan-vace"
TINY_VACE_A14B = "tiny-random:wan22-vace-a14b"
SIZE_MULTIPLE = 16  # Wan's VAE (8) x the transformer's patch (2)
FRAME_MULTIPLE = 4  # Wan's VAE compresses 4 frames into one after the first


@dataclass
class RegeneratorConfig:
    """The video inpainting model and how it samples (defaults: Wan2.1-VACE-1.3B).

    Attributes:
        name: hub id (``Wan-AI/Wan2.1-VACE-1.3B-diffusers``; the Wan2.2 A14B's
            ``linoyts/Wan2.2-VACE-Fun-14B-diffusers``), a local ``save_pretrained`` folder, or
            ``tiny-random:wan-vace`` / ``tiny-random:wan22-vace-a14b`` (tiny random VACEs of the
            two layouts built in-process: meaningless output, for tests and demos of the mechanism).
        dtype: transformer and text-encoder dtype (bf16 on GPU); vae_dtype: Wan recommends float32.
        device: "auto", "cpu", "cuda", ...
        num_inference_steps: denoising steps (Wan's default 50; each costs the segment's frames).
        guidance_scale: classifier-free guidance (Wan's 5.0; VideoX-Fun's Wan2.2-VACE-Fun-A14B
            example, ``examples/wan2.2_vace_fun/predict_v2v_mask.py``: 5.0 on both experts).
        guidance_scale_2: a two-expert VACE's low-noise scale (None: ``guidance_scale``, as the
            pipeline defaults); an error with one transformer.
        negative_prompt: None: Wan's default negative prompt; "": none.
        conditioning_scale: how strongly VACE follows the kept frames (diffusers' default 1.0).
        max_sequence_length: text tokens (Wan: 512).
    """

    name: str = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    device: str = "auto"
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    negative_prompt: str | None = None
    conditioning_scale: float = 1.0
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        check_dtype(self.dtype, "regenerator.dtype")
        check_dtype(self.vae_dtype, "regenerator.vae_dtype")
        if self.num_inference_steps < 1 or self.guidance_scale < 0 or self.conditioning_scale < 0 or (self.guidance_scale_2 or 0) < 0:
            raise ValueError("regenerator: num_inference_steps must be >= 1, guidance_scale, guidance_scale_2 and conditioning_scale >= 0")


def _tiny_vace_transformer() -> Any:
    """A ``WanVACETransformer3DModel`` of the tiny transformer's size with VACE blocks on both layers."""
    from diffusers import WanVACETransformer3DModel

    return WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32,
        freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        vace_layers=[0, 1], vace_in_channels=96,
    ).eval()


def build_tiny_vace_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanVACEPipeline``: the tiny Wan's text encoder, VAE and scheduler, and a
    tiny VACE transformer."""
    import torch
    from diffusers import WanVACEPipeline

    from cac_align.gen.tiny import build_tiny_wan_pipeline

    base = build_tiny_wan_pipeline(seed=seed)
    torch.manual_seed(seed)
    transformer = _tiny_vace_transformer()
    pipe = WanVACEPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22_vace_a14b_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanVACEPipeline`` of the Wan2.2-VACE-Fun-A14B's layout: the tiny A14B's
    text encoder, VAE (Wan-2.1's) and scheduler (shift 12), and two tiny VACE experts of their own
    random weights switching at ``boundary_ratio`` 0.875."""
    import torch
    from diffusers import WanVACEPipeline

    from cac_align.gen.tiny import A14B_BOUNDARY_RATIO, build_tiny_wan22_a14b_pipeline

    base = build_tiny_wan22_a14b_pipeline(seed=seed)
    torch.manual_seed(seed)
    transformer = _tiny_vace_transformer()
    torch.manual_seed(seed + 1)
    transformer_2 = _tiny_vace_transformer()
    pipe = WanVACEPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler, transformer=transformer,
                           transformer_2=transformer_2, boundary_ratio=A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ``regenerator.name`` -> the builder of that tiny VACE
TINY_VACE_BUILDERS = {TINY_VACE: build_tiny_vace_pipeline, TINY_VACE_A14B: build_tiny_wan22_vace_a14b_pipeline}


def _expert_kwargs(pipe: Any, config: RegeneratorConfig, key: str = "regenerator") -> dict:
    """``guidance_scale_2`` for the pipeline's call; a clear error when it names a second expert
    the model does not have."""
    from cac_align.config import RecipeError

    if config.guidance_scale_2 is None:
        return {}
    if getattr(pipe, "transformer_2", None) is None:
        raise RecipeError(f"{key}.guidance_scale_2={config.guidance_scale_2} is a second expert's scale, and {config.name!r} has one "
                          "transformer (the Wan2.2 A14B VACE has two); remove it")
    return {"guidance_scale_2": config.guidance_scale_2}


def build_regenerator(config: RegeneratorConfig, key: str = "regenerator") -> Any:
    """The ``WanVACEPipeline`` ``config`` names, on its device (safetensors only); a two-expert
    folder (``transformer_2`` in its ``model_index.json``) loads both experts."""
    from cac_align.gen.wan import load_wan_pipeline
    from cac_align.loading import resolve_device

    device = resolve_device(config.device, f"{key}.device")
    if config.name in TINY_VACE_BUILDERS:
        pipe = TINY_VACE_BUILDERS[config.name]().to(device)
    else:
        pipe = load_wan_pipeline(config.name, dtype=config.dtype, vae_dtype=config.vae_dtype, device=config.device, key=f"{key}.name",
                                 pipeline="WanVACEPipeline")
        pipe.set_progress_bar_config(disable=True)
    _expert_kwargs(pipe, config, key)
    return pipe


# ---------------------------------------------------------------------------------------
# The plan: which frames and pixels, conformed to VACE
# ---------------------------------------------------------------------------------------
@dataclass
class RepairPlan:
    """What one repair regenerates.

    Attributes:
        start, stop: the segment ``[start, stop)`` of the input's frames that VACE sees.
        length: the frames VACE denoises (``4k + 1``; ``>= stop - start``, the rest repeats of
            the last frame).
        height, width: the padded frame size VACE sees (multiples of 16).
        mask: ``(stop - start, H, W)`` bool on the input's own frames: True = regenerate.
        frames: the input frame indices with any masked pixel.
    """

    start: int
    stop: int
    length: int
    height: int
    width: int
    mask: np.ndarray
    frames: list[int]

    def frame_steps(self, steps: int) -> int:
        """Denoising work of one attempt: the frames VACE denoises times the steps."""
        return self.length * steps


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_repair(region: Region, fps: float, condition_s: float = 0.5) -> RepairPlan:
    """The segment, padding and mask that regenerate ``region`` (module docstring, steps 1-3).

    Args:
        region: where to regenerate, on the input video's frames and pixels.
        fps: the input's frame rate (for ``condition_s``).
        condition_s: kept frames on each side of the masked ones, in seconds.
    """
    if region.is_empty:
        raise ValueError("the region covers no frame: nothing to regenerate")
    if condition_s < 0:
        raise ValueError(f"condition_s must be >= 0, got {condition_s}")
    total = region.num_frames
    masked = [int(f) for f in np.flatnonzero(region.frames)]
    margin = int(round(condition_s * fps))
    start, stop = max(0, masked[0] - margin), min(total, masked[-1] + 1 + margin)
    length = (stop - start - 1 + FRAME_MULTIPLE - 1) // FRAME_MULTIPLE * FRAME_MULTIPLE + 1  # the next 4k + 1
    grow = length - (stop - start)
    right = min(grow, total - stop)
    stop += right
    start = max(0, start - (grow - right))  # what is left goes to the left; past frame 0, repeats of the last frame
    mask = np.stack([region.frame_mask(f) > 0 for f in range(start, stop)])
    return RepairPlan(start, stop, length, _round_up(region.height, SIZE_MULTIPLE), _round_up(region.width, SIZE_MULTIPLE), mask, masked)


def regenerate(pipe: Any, frames: np.ndarray, plan: RepairPlan, prompt: str, seed: int, config: RegeneratorConfig) -> np.ndarray:
    """VACE's fill of ``plan``'s segment: uint8 ``(stop - start, H, W, 3)`` on the input's grid.

    Args:
        pipe: a ``WanVACEPipeline`` (:func:`build_regenerator`).
        frames: the whole input video, uint8 ``(F, H, W, 3)``.
        plan: from :func:`plan_repair`.
        prompt: what to generate (the original prompt, maybe with the judge's reason).
        seed: the attempt's seed (its own ``torch.Generator``).
    """
    import torch
    from PIL import Image

    from cac_align.gen.wan import WAN_NEGATIVE_PROMPT, _frames_to_uint8

    segment = frames[plan.start : plan.stop]
    height, width = segment.shape[1:3]
    pad = ((0, 0), (0, plan.height - height), (0, plan.width - width))
    repeats = plan.length - len(segment)
    video = np.pad(segment, pad + ((0, 0),), mode="edge")
    mask = np.pad(plan.mask, pad, mode="constant")
    if repeats:  # the whole video is shorter than 4k + 1 frames: repeat its last frame, kept
        video = np.concatenate([video, np.repeat(video[-1:], repeats, axis=0)])
        mask = np.concatenate([mask, np.zeros((repeats, *mask.shape[1:]), dtype=bool)])
    negative = WAN_NEGATIVE_PROMPT if config.negative_prompt is None else config.negative_prompt
    output = pipe(
        prompt=prompt,
        negative_prompt=negative if config.guidance_scale > 1.0 else None,
        video=[Image.fromarray(f) for f in video],
        mask=[Image.fromarray(np.where(m, 255, 0).astype(np.uint8), mode="L") for m in mask],
        conditioning_scale=config.conditioning_scale,
        height=plan.height,
        width=plan.width,
        num_frames=plan.length,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        **_expert_kwargs(pipe, config),
        generator=torch.Generator(device=pipe._execution_device).manual_seed(int(seed)),
        output_type="np",
        max_sequence_length=config.max_sequence_length,
    )
    return _frames_to_uint8(output.frames[0])[: len(segment), :height, :width]


# ---------------------------------------------------------------------------------------
# Splicing the fill back
# ---------------------------------------------------------------------------------------
def feather_alpha(mask: np.ndarray, feather: int) -> np.ndarray:
    """``(..., H, W)`` float32 weights of the generated pixels: 0 outside ``mask``, rising inside
    it to 1 at ``feather`` pixels from its edge (``(d + 1) / (feather + 1)`` for a pixel that
    survives ``d`` 4-neighbour erosions of the mask). ``feather = 0``: the mask itself."""
    mask = np.asarray(mask, dtype=bool)
    alpha = mask.astype(np.float32)
    if feather <= 0:
        return alpha
    inner, depth = mask.copy(), np.zeros(mask.shape, dtype=np.float32)
    for _ in range(feather):
        shrunk = inner.copy()
        shrunk[..., 1:, :] &= inner[..., :-1, :]
        shrunk[..., :-1, :] &= inner[..., 1:, :]
        shrunk[..., :, 1:] &= inner[..., :, :-1]
        shrunk[..., :, :-1] &= inner[..., :, 1:]
        depth += shrunk
        inner = shrunk
    return np.where(mask, np.minimum(1.0, (depth + 1.0) / (feather + 1.0)), 0.0).astype(np.float32)


def splice(frames: np.ndarray, generated: np.ndarray, plan: RepairPlan, feather: int = 0) -> np.ndarray:
    """The input with ``generated`` blended into ``plan``'s mask: uint8 ``(F, H, W, 3)``.

    Every pixel outside the mask is the input's, exactly; inside, ``alpha * generated + (1 -
    alpha) * input`` with :func:`feather_alpha` (rounded), so edges blend over ``feather`` pixels
    inside the mask and never outside it.
    """
    out = np.array(frames, dtype=np.uint8, copy=True)
    alpha = feather_alpha(plan.mask, feather)[..., None]
    segment = out[plan.start : plan.stop].astype(np.float32)
    blended = np.round(alpha * generated.astype(np.float32) + (1.0 - alpha) * segment).astype(np.uint8)
    out[plan.start : plan.stop] = np.where(plan.mask[..., None], blended, out[plan.start : plan.stop])
    return out
