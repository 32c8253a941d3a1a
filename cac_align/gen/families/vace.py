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

__all__ = ["REGENERATORS", "RegeneratorConfig", "RepairPlan", "TINY_VACE_BUILDERS", "VaceRegenerator", "WAN22_VACE_A14B", "WAN_VACE", "build_regenerator",
           "build_tiny_vace_pipeline", "build_tiny_wan22_vace_a14b_pipeline", "feather_alpha", "plan_repair", "regenerate", "regenerator_for_index",
           "splice"]

TINY_VACE = "tiny-random:wan-vace"
TINY_VACE_A14B = "tiny-random:wan22-vace-a14b"
SIZE_MULTIPLE = 16  # Wan's VAE (8) x the transformer's patch (2)
FRAME_MULTIPLE = 4  # Wan's VAE compresses 4 frames into one after the first


@dataclass
class RegeneratorConfig:
    """The video inpainting model and how it samples (defaults: Wan2.1-VACE-1.3B).

    What the model is comes from its own files (``model_index.json``: a ``WanVACEPipeline``, with
    a ``transformer_2`` for the two-expert Wan2.2 one; :func:`cac_align.gen.family.regenerator_of`).

    Attributes:
        name: hub id (``Wan-AI/Wan2.1-VACE-1.3B-diffusers``; the Wan2.2 A14B's
            ``linoyts/Wan2.2-VACE-Fun-14B-diffusers``; or any copy of them), a local
            ``save_pretrained`` folder, or ``tiny-random:wan-vace`` / ``tiny-random:wan22-vace-a14b``
            (tiny random VACEs of the two layouts built in-process: meaningless output, for tests
            and demos of the mechanism).
        dtype: transformer and text-encoder dtype (bf16 on GPU).
        vae_dtype: the VAE's dtype (Wan recommends float32).
        device: "auto", "cpu", "cuda", ...
        The settings below left unset (null) take the model's own (its family's ``defaults``); one
        the model has no use for (``conditioning_scale`` on LTX-2, ``stg_scale`` on VACE) is an
        error when set.

        num_inference_steps: denoising steps (Wan's default 50; LTX-2: 40; each costs the
            segment's frames).
        guidance_scale: classifier-free guidance (Wan's 5.0; VideoX-Fun's Wan2.2-VACE-Fun-A14B
            example, ``examples/wan2.2_vace_fun/predict_v2v_mask.py``: 5.0 on both experts;
            LTX-2: 3.0).
        guidance_scale_2: a two-expert VACE's low-noise scale (None: ``guidance_scale``, as the
            pipeline defaults); an error with one transformer.
        stg_scale, modality_scale, guidance_rescale: LTX-2's other guidance for the video
            (:class:`~cac_align.gen.generator.GeneratorConfig`), the release's by default.
        audio_guidance_scale, audio_stg_scale, audio_modality_scale, audio_guidance_rescale: the same for its audio.
        stg_blocks: LTX-2: the transformer blocks perturbed by spatio-temporal guidance.
        negative_prompt: None: the model's default negative prompt; "": none.
        conditioning_scale: how strongly VACE follows the kept frames (diffusers' default 1.0).
        max_sequence_length: text tokens (Wan: 512; LTX-2: 1024).
    """

    name: str = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"
    dtype: str = "bfloat16"
    vae_dtype: str = "float32"
    device: str = "auto"
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    stg_scale: float | None = None
    modality_scale: float | None = None
    guidance_rescale: float | None = None
    audio_guidance_scale: float | None = None
    audio_stg_scale: float | None = None
    audio_modality_scale: float | None = None
    audio_guidance_rescale: float | None = None
    stg_blocks: list[int] | None = None
    negative_prompt: str | None = None
    conditioning_scale: float | None = None
    max_sequence_length: int | None = None

    @classmethod
    def unset(cls) -> "RegeneratorConfig":
        """A config whose model settings are all unset, for a job config's default: a recipe
        section then fills them from the model it names (``field(default_factory=...)``; built
        without ``__post_init__``)."""
        import dataclasses

        config = object.__new__(cls)
        for f in dataclasses.fields(cls):
            setattr(config, f.name, f.default)
        return config

    @property
    def family(self) -> Any:
        """The regenerator the model is (:func:`cac_align.gen.family.regenerator_of`: from its own files)."""
        from cac_align.gen.family import regenerator_of

        return regenerator_of(self.name, "regenerator.name")

    def __post_init__(self) -> None:
        from cac_align.config import RecipeError
        from cac_align.gen.family import take_model_settings

        check_dtype(self.dtype, "regenerator.dtype")
        check_dtype(self.vae_dtype, "regenerator.vae_dtype")
        family = self.family
        if self.guidance_scale_2 is not None and family.experts < 2:
            raise RecipeError(f"regenerator.guidance_scale_2={self.guidance_scale_2} is a second expert's scale, and {self.name!r} ({family.title}) has one "
                              "transformer (the Wan2.2 A14B VACE has two); remove it")
        foreign = [key for key in take_model_settings(self, REGENERATOR_SETTINGS, family.defaults) if key != "guidance_scale_2"]
        if foreign:  # unset: the model's own; set but not the model's: an error
            raise RecipeError(f"regenerator.{foreign[0]} does not apply to {self.name!r} ({family.title}); remove it")
        scales = [self.guidance_scale, self.guidance_scale_2, self.conditioning_scale, self.stg_scale, self.modality_scale, self.guidance_rescale,
                  self.audio_guidance_scale, self.audio_stg_scale, self.audio_modality_scale, self.audio_guidance_rescale]
        if self.num_inference_steps < family.min_inference_steps or any(s is not None and s < 0 for s in scales):
            raise ValueError(f"regenerator: num_inference_steps must be >= {family.min_inference_steps} ({family.title}), guidance and conditioning "
                             "scales >= 0")


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

    from cac_align.gen.families.wan import build_tiny_wan_pipeline

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

    from cac_align.gen.families.wan import A14B_BOUNDARY_RATIO, build_tiny_wan22_a14b_pipeline

    base = build_tiny_wan22_a14b_pipeline(seed=seed)
    torch.manual_seed(seed)
    transformer = _tiny_vace_transformer()
    torch.manual_seed(seed + 1)
    transformer_2 = _tiny_vace_transformer()
    pipe = WanVACEPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler, transformer=transformer,
                           transformer_2=transformer_2, boundary_ratio=A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# The settings of a RegeneratorConfig that are the model's own (unset: its family's defaults)
REGENERATOR_SETTINGS = ("num_inference_steps", "guidance_scale", "guidance_scale_2", "conditioning_scale", "max_sequence_length", "stg_scale",
                        "modality_scale", "guidance_rescale", "audio_guidance_scale", "audio_stg_scale", "audio_modality_scale",
                        "audio_guidance_rescale", "stg_blocks")
# VACE's: Wan's 50 steps and guidance 5.0, diffusers' conditioning scale 1.0, UMT5's 512 tokens
_VACE_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 5.0, "conditioning_scale": 1.0, "max_sequence_length": 512}

# ``regenerator.name`` -> the builder of that tiny VACE
TINY_VACE_BUILDERS = {TINY_VACE: build_tiny_vace_pipeline, TINY_VACE_A14B: build_tiny_wan22_vace_a14b_pipeline}


@dataclass(frozen=True)
class VaceRegenerator:
    """A Wan-VACE model as repair's regenerator (the Wan family's repair pipeline): what it is
    (one transformer, or the two experts of Wan2.2's A14B) and how it fills a plan.

    Attributes:
        name, title: "wan2.1-vace" / "wan2.2-vace-a14b", and how messages name it.
        experts: 1, or 2 (switching at the checkpoint's ``boundary_ratio``).
        tiny_names, hub_ids: its tiny in-process pipelines and its release checkpoints.
        boxes: it regenerates boxes in space (a pixel mask), not only whole frames.
    """

    name: str
    title: str
    experts: int
    tiny_names: tuple[str, ...]
    hub_ids: tuple[str, ...]
    defaults: Any = None
    pipeline_class: str = "WanVACEPipeline"
    frame_multiple: int = FRAME_MULTIPLE
    spatial_multiple: int = SIZE_MULTIPLE
    boxes: bool = True
    min_inference_steps: int = 1

    def load(self, name: str, *, dtype: str, vae_dtype: str, device: str, key: str) -> Any:
        from cac_align.gen.families.wan import load_wan_pipeline

        return load_wan_pipeline(name, dtype=dtype, vae_dtype=vae_dtype, device=device, key=key, pipeline=self.pipeline_class)

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_VACE_BUILDERS[name](seed)

    def plan(self, region: Region, fps: float, condition_s: float) -> "RepairPlan":
        return plan_repair(region, fps, condition_s, self.frame_multiple, self.spatial_multiple)

    def regenerate(self, pipe: Any, frames: np.ndarray, plan: "RepairPlan", prompt: str, seed: int, config: "RegeneratorConfig") -> np.ndarray:
        return regenerate(pipe, frames, plan, prompt, seed, config)


WAN_VACE = VaceRegenerator("wan2.1-vace", "Wan2.1-VACE", 1, (TINY_VACE,), ("Wan-AI/Wan2.1-VACE-1.3B-diffusers", "Wan-AI/Wan2.1-VACE-14B-diffusers"),
                           _VACE_DEFAULTS)
WAN22_VACE_A14B = VaceRegenerator("wan2.2-vace-a14b", "Wan2.2-VACE-Fun-A14B", 2, (TINY_VACE_A14B,), ("linoyts/Wan2.2-VACE-Fun-14B-diffusers",),
                                  {**_VACE_DEFAULTS, "guidance_scale_2": None})
REGENERATORS = (WAN_VACE, WAN22_VACE_A14B)


def regenerator_for_index(index: Any) -> VaceRegenerator | None:
    """The Wan-VACE a ``model_index.json`` describes (a ``transformer_2``: the A14B's), or None."""
    from cac_align.gen.family import has_component

    if index.get("_class_name") != "WanVACEPipeline":
        return None
    return WAN22_VACE_A14B if has_component(index, "transformer_2") else WAN_VACE


def build_regenerator(config: RegeneratorConfig, key: str = "regenerator") -> Any:
    """The regenerator pipeline ``config`` names (its family's: ``WanVACEPipeline``, both experts
    of a two-expert folder), on its device (safetensors only)."""
    from cac_align.loading import resolve_device

    device = resolve_device(config.device, f"{key}.device")
    family = config.family
    if config.name in family.tiny_names:
        pipe = family.build_tiny(config.name).to(device)
    else:
        pipe = family.load(config.name, dtype=config.dtype, vae_dtype=config.vae_dtype, device=config.device, key=f"{key}.name")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------
# The plan: which frames and pixels, conformed to VACE
# ---------------------------------------------------------------------------------------
@dataclass
class RepairPlan:
    """What one VACE repair regenerates (LTX-2's, laid out on its latent grid, is
    :class:`cac_align.gen.families.ltx2_repair.LTX2RepairPlan`, with the same fields).

    Attributes:
        start, stop: the segment ``[start, stop)`` of the input's frames that the regenerator
            sees.
        length: the frames it denoises (``4k + 1``; ``>= stop - start``, the rest repeats of the
            last frame).
        height, width: the padded frame size it sees (multiples of 16).
        mask: ``(stop - start, H, W)`` bool on the input's own frames: True = regenerate.
        frames: the input frame indices with any masked pixel.
        fps: the input's frame rate (what a model that reads it, LTX-2, is told).
    """

    start: int
    stop: int
    length: int
    height: int
    width: int
    mask: np.ndarray
    frames: list[int]
    fps: float = 0.0

    def frame_steps(self, steps: int) -> int:
        """Denoising work of one attempt: the frames VACE denoises times the steps."""
        return self.length * steps


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def plan_repair(region: Region, fps: float, condition_s: float = 0.5, frame_multiple: int = FRAME_MULTIPLE,
                size_multiple: int = SIZE_MULTIPLE) -> RepairPlan:
    """The segment, padding and mask that regenerate ``region`` (module docstring, steps 1-3).

    Args:
        region: where to regenerate, on the input video's frames and pixels.
        fps: the input's frame rate (for ``condition_s``).
        condition_s: kept frames on each side of the masked ones, in seconds.
        frame_multiple, size_multiple: the regenerator's frames ``k * frame_multiple + 1`` and
            sides' multiple (VACE: 4 and 16).
    """
    if region.is_empty:
        raise ValueError("the region covers no frame: nothing to regenerate")
    if condition_s < 0:
        raise ValueError(f"condition_s must be >= 0, got {condition_s}")
    total = region.num_frames
    masked = [int(f) for f in np.flatnonzero(region.frames)]
    margin = int(round(condition_s * fps))
    start, stop = max(0, masked[0] - margin), min(total, masked[-1] + 1 + margin)
    length = (stop - start - 1 + frame_multiple - 1) // frame_multiple * frame_multiple + 1  # the next k * frame_multiple + 1
    grow = length - (stop - start)
    right = min(grow, total - stop)
    stop += right
    start = max(0, start - (grow - right))  # what is left goes to the left; past frame 0, repeats of the last frame
    mask = np.stack([region.frame_mask(f) > 0 for f in range(start, stop)])
    return RepairPlan(start, stop, length, _round_up(region.height, size_multiple), _round_up(region.width, size_multiple), mask, masked, float(fps))


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

    from cac_align.gen.generator import frames_to_uint8 as _frames_to_uint8
    from cac_align.gen.families.wan import WAN_NEGATIVE_PROMPT

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
        **({"guidance_scale_2": config.guidance_scale_2} if config.guidance_scale_2 is not None else {}),
        generator=torch.Generator(device=pipe._execution_device).manual_seed(int(seed)),
        output_type="pt",
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
