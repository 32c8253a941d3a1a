"""LTX-2's repair pipeline: the judged window regenerated through diffusers' ``LTX2ConditionPipeline``
(the same checkpoint's components), as Wan-VACE is Wan's (:mod:`cac_align.gen.families.vace`).

The condition pipeline keeps whole frames at latent-frame places, so only a segment around the
window is generated, laid out on the latent grid (:func:`segment_layout`): a kept clip before the
window, the window's latents, and a keyframe clip after it (:class:`LTX2Regenerator`); the segment
is spliced back (:func:`cac_align.gen.families.vace.splice`). Each LTX-2 release's checkpoint has
one (:data:`REGENERATORS`, found from its ``model_index.json`` by :func:`regenerator_for_index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

# the module, not its FAMILIES and family_for_index: gen/family.py reads those names of every module it lists,
# and this one lists regenerators only
from cac_align.gen.families import ltx2
from cac_align.gen.families.ltx2 import GUIDANCE_KEYS, LTX2, LTX23, LTX25, LTX2Family
from cac_align.gen.families.ltx2_tiny import TINY_LTX2_BUILDERS
from cac_align.gen.families.vace import RepairPlan
from cac_align.loading import resolve_device

__all__ = ["LTX2Regenerator", "LTX2RepairPlan", "REGENERATORS", "SegmentLayout", "on_grid", "regenerator_for_index", "segment_layout"]

_REGENERATOR_KEYS = ("num_inference_steps", "max_sequence_length", *GUIDANCE_KEYS, "stg_blocks")


def on_grid(available: int, multiple: int = 8) -> int:
    """The longest ``multiple * k + 1`` run of frames that fits in ``available`` (0 when none does)."""
    return (available - 1) // multiple * multiple + 1 if available >= 1 else 0


@dataclass(frozen=True)
class SegmentLayout:
    """What LTX-2 generates to regenerate frames ``first..last`` of a video (:func:`segment_layout`).

    Attributes:
        start: the input frame that is the segment's frame 0.
        length: the frames the pipeline generates (``8k + 1``; the tail may run past the video).
        clips: ``(first input frame, frame count, latent index)`` of each kept clip that conditions
            it: the clip before the window at latent index 0, the keyframe clip after it.
        appended: the keyframe clip's frames, which the pipeline appends as extra tokens.
    """

    start: int
    length: int
    clips: tuple[tuple[int, int, int], ...]
    appended: int


def segment_layout(first: int, last: int, total: int, margin: int, multiple: int = 8) -> SegmentLayout:
    """The segment LTX-2's condition pipeline generates to regenerate frames ``first..last`` of a
    ``total``-frame video, with up to ``margin`` kept frames conditioning each side, on the latent
    grid (latent 0 is pixel frame 0, latent ``j >= 1`` pixel frames ``8 (j - 1) + 1 .. 8 j``).

    From the left, in latent frames:

    1. **the clip before**: the longest ``8a + 1`` run of kept frames ending at ``first - 1``, at
       most ``margin`` (none when ``margin`` is 0 or ``first`` is 0), at latent index 0, which it
       replaces: latents ``0..a``, clean, so the window continues the input's own frames;
    2. **the window**: the latents after it, as many as hold ``last - first + 1`` frames (with no
       clip before, the window starts at latent 0, one frame); up to ``multiple - 1`` frames past
       ``last`` are generated too and dropped by the splice;
    3. **the keyframe after**: the longest ``8j + 1`` run of kept frames from the first pixel frame
       of the next latent, at most ``margin``, appended as extra tokens at that latent index; the
       pipeline places a keyframe only inside the generated latents, so ``j + 1`` more latents
       (``8 (j + 1)`` frames, the tail) are generated under it and dropped.

    Hand-worked (``multiple`` 8): frames 3..8 of 33 with ``margin`` 2: the clip before is frame 2
    (1 frame, ``8 * 0 + 1``), so the segment starts at 2; the 6 window frames take latent 1 (segment
    frames 1..8: input 3..10); the keyframe is input frame 11 (at most 2 frames: 1) at latent index
    2; its tail is latent 2 (8 frames): ``length`` 1 + 8 + 8 = 17, ``appended`` 1.
    """
    if not 0 <= first <= last < total:
        raise ValueError(f"need 0 <= first <= last < total, got first={first}, last={last}, total={total}")
    if margin < 0 or multiple < 1:
        raise ValueError(f"need margin >= 0 and multiple >= 1, got margin={margin}, multiple={multiple}")
    before = on_grid(min(first, margin), multiple)
    start = first - before
    count = last - first + 1
    if before:
        generated = before + multiple * -(-count // multiple)
    else:  # the window starts at latent 0, a single frame
        generated = 1 + multiple * -(-(count - 1) // multiple)
    clips = [(start, before, 0)] if before else []
    after_first = start + generated  # the first pixel frame of the next latent
    after = on_grid(min(total - after_first, margin), multiple) if after_first < total else 0
    length = generated
    if after:
        clips.append((after_first, after, (generated - 1) // multiple + 1))
        length += multiple * ((after - 1) // multiple + 1)
    return SegmentLayout(start, length, tuple(clips), after)


@dataclass
class LTX2RepairPlan(RepairPlan):
    """A :class:`~cac_align.gen.families.vace.RepairPlan` (``start``, ``stop``, ``length``, ``height``,
    ``width``, ``mask``, ``frames``, ``fps``; what :func:`~cac_align.gen.families.vace.splice` reads) with
    LTX-2's kept clips (:class:`SegmentLayout`).

    Attributes:
        start, stop: the input frames ``[start, stop)`` the generated segment lies over.
        length: the frames the pipeline generates (``8k + 1``; past ``stop - start`` when the tail
            runs past the video's end).
        clips, appended: :class:`SegmentLayout`'s.
    """

    clips: tuple[tuple[int, int, int], ...] = ()
    appended: int = 0

    def frame_steps(self, steps: int) -> int:
        """Work of one attempt: every frame the transformer takes in at each step, the generated
        segment's and the appended keyframe's, times the steps."""
        return (self.length + self.appended) * steps


@dataclass(frozen=True)
class LTX2Regenerator:
    """LTX-2 as repair's regenerator, through diffusers' ``LTX2ConditionPipeline`` (the same
    checkpoint's components): only the judged window is generated again, between the kept frames
    that condition it, and spliced back.

    The condition pipeline keeps whole frames at latent-frame places (8 pixel frames each), so:

    - a judge's boxes choose the window, not pixels inside it (``boxes = False``: repair records
      the whole frames it regenerated);
    - the pipeline generates a segment laid out on the latent grid (:func:`segment_layout`): the
      kept clip just before the window at latent index 0 (it replaces those latents), the window's
      latents, and a keyframe clip of the kept frames after the window appended at the next latent
      index over a short generated tail. Its cost is that segment and the keyframe, not the video;
    - the soundtrack is generated anew with the segment and not written: a repaired video is its
      frames (the input's audio is not carried over).

    Every pixel outside the window is then the input's own (:func:`cac_align.gen.families.vace.splice`).
    """

    name: str
    title: str
    family: LTX2Family
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    pipeline_class: str = "LTX2ConditionPipeline"
    experts: int = 1
    frame_multiple: int = 8
    spatial_multiple: int = 32
    boxes: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        return {key: self.family.defaults[key] for key in _REGENERATOR_KEYS}

    @property
    def min_inference_steps(self) -> int:
        return self.family.min_inference_steps

    def load(self, name: str, *, dtype: str, vae_dtype: str, device: str, key: str) -> Any:
        pipe = self.family.load(name, dtype=dtype, vae_dtype=vae_dtype, key=key, pipeline=self.pipeline_class)
        return pipe.to(resolve_device(device, key.rsplit(".", 1)[0] + ".device"))

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        from diffusers import LTX2ConditionPipeline

        pipe = LTX2ConditionPipeline(**TINY_LTX2_BUILDERS[name](seed).components)  # the same modules, as they are
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def plan(self, region: Any, fps: float, condition_s: float) -> LTX2RepairPlan:
        """The segment that regenerates ``region``'s frames (whole frames), with up to
        ``condition_s`` seconds of kept frames conditioning each side (:func:`segment_layout`)."""
        if region.is_empty:
            raise ValueError("the region covers no frame: nothing to regenerate")
        if condition_s < 0:
            raise ValueError(f"condition_s must be >= 0, got {condition_s}")
        masked = [int(f) for f in np.flatnonzero(region.frames)]
        layout = segment_layout(masked[0], masked[-1], region.num_frames, int(round(condition_s * fps)), self.frame_multiple)
        stop = min(region.num_frames, layout.start + layout.length)
        mask = np.stack([region.frame_mask(f) > 0 for f in range(layout.start, stop)])
        size = self.spatial_multiple
        return LTX2RepairPlan(layout.start, stop, layout.length, -(-region.height // size) * size, -(-region.width // size) * size, mask, masked,
                              float(fps), layout.clips, layout.appended)

    def regenerate(self, pipe: Any, frames: np.ndarray, plan: LTX2RepairPlan, prompt: str, seed: int, config: Any) -> np.ndarray:
        """The condition pipeline's segment over ``plan``'s frames: uint8 ``(stop - start, H, W, 3)``."""
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
        from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

        from cac_align.gen.generator import frames_to_uint8

        height, width = frames.shape[1:3]
        pad = ((0, 0), (0, plan.height - height), (0, plan.width - width), (0, 0))  # edge pixels repeated, cropped off after
        conditions = [LTX2VideoCondition(frames=np.pad(frames[first : first + count], pad, mode="edge"), index=index)
                      for first, count, index in plan.clips]
        guidance = self.family.guidance(config, fps=plan.fps)
        output = pipe(
            conditions=conditions or None, prompt=prompt,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT if config.negative_prompt is None else config.negative_prompt,
            height=plan.height, width=plan.width, num_frames=plan.length, frame_rate=plan.fps, num_inference_steps=config.num_inference_steps,
            **{key: guidance[key] for key in GUIDANCE_KEYS}, spatio_temporal_guidance_blocks=guidance["stg_blocks"],
            generator=torch.Generator(device=pipe._execution_device).manual_seed(int(seed)), output_type="pt",
            max_sequence_length=config.max_sequence_length,
        )
        return frames_to_uint8(output.frames[0])[: plan.stop - plan.start, :height, :width]


REGENERATORS = (LTX2Regenerator("ltx2-condition", "LTX-2 (condition pipeline)", LTX2, ("tiny-random:ltx2",), LTX2.hub_ids),
                LTX2Regenerator("ltx2.3-condition", "LTX-2.3 (condition pipeline)", LTX23, ("tiny-random:ltx2.3",), LTX23.hub_ids),
                # LTX-2.5's condition pipeline decodes with the VAE, not its diffusion decoder: no tiny repair of it here
                LTX2Regenerator("ltx2.5-condition", "LTX-2.5 (condition pipeline)", LTX25, (), LTX25.hub_ids))


def regenerator_for_index(index: Mapping[str, Any]) -> LTX2Regenerator | None:
    """The condition-pipeline regenerator of an LTX-2 checkpoint's ``model_index.json``, or None."""
    family = ltx2.family_for_index(index)
    return None if family is None else REGENERATORS[ltx2.FAMILIES.index(family)]
