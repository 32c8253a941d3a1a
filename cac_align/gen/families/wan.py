"""The Wan family: Wan-2.1, Wan2.2's two layouts (TI2V-5B, A14B) and the image-to-video models
(Wan2.1-I2V-14B, Wan2.2-I2V-A14B), as the generator jobs run them.

The text-to-video models are diffusers' ``WanPipeline`` (UMT5 text encoder,
``WanTransformer3DModel``, ``AutoencoderKLWan``, a flow-matching scheduler), the image-to-video
ones its ``WanImageToVideoPipeline`` (the same parts; the transformer reads the image's latents and
a frame mask beside the noise, and Wan2.1-I2V's a CLIP image encoder's tokens beside the text);
what a checkpoint's ``model_index.json`` holds tells them apart (:func:`family_for_index`): a
``transformer_2`` (and ``boundary_ratio``) is an A14B's second, low-noise expert;
``expand_timesteps`` the TI2V-5B's per-token timesteps (under either pipeline class: the same
model, which animates an image or not); an ``image_encoder`` Wan2.1-I2V's CLIP. Real runs name a
hub id or a local copy in a recipe; tests and CI build the tiny pipelines at the end of this
module (the same classes at toy size, random weights, :mod:`cac_align.gen.tiny`'s word-level
tokenizer built in-process). The velocity of a step is :class:`~cac_align.gen.experts.WanDenoiser`'s; the
family's repair pipeline is Wan-VACE (:mod:`cac_align.gen.families.vace`, listed beside this module in
:data:`cac_align.gen.family.FAMILY_MODULES`).

**The models' own settings** (what a recipe leaves unset takes). The Wan2.2 values are the
release's own (github.com/Wan-Video/Wan2.2 ``wan/configs/wan_t2v_A14B.py``, ``wan_ti2v_5B.py``
and ``wan_i2v_A14B.py``), Wan2.1-I2V's its release's (github.com/Wan-Video/Wan2.1
``generate.py``: 40 steps and shift 3.0 for image-to-video at 480p); Wan-2.1's are this package's
defaults since the start (CaC §4.2: 480p, 81 frames, 50 steps; diffusers' guidance 5.0; the
checkpoint scheduler's shift). The commits read are cited beside the values:

| family | size (H x W) | frames | fps | steps | guidance | shift | latent grid (t, h, w) |
| --- | --- | --- | --- | --- | --- | --- | --- |
| Wan-2.1 T2V-1.3B | 480 x 832 | 81 | 16 | 50 | 5.0 | the checkpoint's (3.0) | 4 x 8 x 8 |
| Wan2.2-TI2V-5B | 704 x 1280 | 121 | 24 | 50 | 5.0 | 5.0 | 4 x 16 x 16 |
| Wan2.2-T2V-A14B | 720 x 1280 | 81 | 16 | 40 | 4.0 high-noise, 3.0 low-noise | 12.0 | 4 x 8 x 8 |
| Wan2.1-I2V-14B | 480 x 832 | 81 | 16 | 40 | 5.0 | 3.0 (the release's at 480p; 5.0 at 720p) | 4 x 8 x 8 |
| Wan2.2-I2V-A14B | 720 x 1280 | 81 | 16 | 40 | 3.5 high-noise, 3.5 low-noise | 5.0 | 4 x 8 x 8 |

**Whose shift** (:func:`cac_align.gen.family.model_flow_shift`): a checkpoint's own scheduler file
decides, except where it says the shift diffusers' conversion wrote without the release sampling
at it (``converted_shift``). diffusers' ``scripts/convert_wan_to_diffusers.py`` (github.com/huggingface/diffusers
at 7d5682739a1ee5b25bb9f5a81c573ea7e38d8e22, its ``__main__``) writes ``flow_shift`` 5.0 for the TI2V-5B,
16.0 for the FLF2V and 3.0 for every other model, both A14Bs and both Wan2.1-I2V checkpoints among
them: an A14B whose file says 3.0 samples at its release's 12.0 (T2V) or 5.0 (I2V), a fine-tune
whose file says 8.0 at 8.0; a recipe's ``flow_shift`` overrides both. Wan2.1-I2V's two checkpoints
(480P, 720P) share one layout and so one family, and both files say 3.0: its settings are the
480P's, and a recipe for the 720P sets ``height: 720``, ``width: 1280`` and ``flow_shift: 5.0``
(Wan2.1 ``generate.py`` l.76-79). The releases fit each video to
the image's aspect ratio within that area; here the frame size is the recipe's and the image is
resized to it, as ``WanImageToVideoPipeline`` does. All share Wan-2.1's negative prompt (byte for
byte in the release configs), except Wan2.1-I2V's, which puts "camera shake" in front
(:data:`WAN21_I2V_NEGATIVE_PROMPT`). The A14B-I2V takes a last frame too (the pipeline's
``last_image``); Wan2.1-I2V-14B does not: its transformer has no position embedding for a second
image's CLIP tokens (the FLF2V-14B's has: ``pos_embed_seq_len``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from cac_align.gen.tiny import transformer_made, umt5_text_encoder, word_tokenizer
from cac_align.loading import check_weights_source, resolve_device, resolve_dtype, weights_error

__all__ = [
    "FAMILIES",
    "TINY_WAN",
    "TINY_WAN_VAE",
    "WAN21",
    "WAN22_A14B",
    "WAN22_TI2V",
    "WAN21_I2V",
    "WAN21_I2V_NEGATIVE_PROMPT",
    "WAN22_I2V_A14B",
    "WAN_FPS",
    "WAN_NEGATIVE_PROMPT",
    "WanFamily",
    "build_tiny_wan_pipeline",
    "decode_latents",
    "encode_prompts",
    "encode_video",
    "family_for_index",
    "latent_preview",
    "load_wan_pipeline",
]

# Wan-2.1 writes its videos at 16 fps (diffusers' examples export with fps=16).
WAN_FPS = 16.0

# Wan-2.1's default negative prompt (``sample_neg_prompt`` in the Wan release's shared config);
# the model was tuned with it, so it is the default for classifier-free guidance here.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# Wan2.1-I2V's: "镜头晃动，" ("camera shake, ") in front of the shared one (Wan2.1 wan/configs/wan_i2v_14B.py l.11;
# Wan2.2's image-to-video config keeps the shared one).
WAN21_I2V_NEGATIVE_PROMPT = "镜头晃动，" + WAN_NEGATIVE_PROMPT

# ``generator.name`` of the tiny random pipeline built in-process (meaningless videos).
TINY_WAN = "tiny-random:wan"
# The tiny random pipeline's VAE (:func:`build_tiny_wan_pipeline`; the A14B's and the I2V models' tiny layouts
# share it): ``AutoencoderKLWan``'s settings, as its saved ``vae/config.json`` also says them. Its decode
# barely depends on the latents (:func:`latent_preview`), which is what ``generator.decode: latent_preview``
# is for, and what tells a model with this VAE from a real one.
TINY_WAN_VAE = {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [False, True, True]}


@dataclass(frozen=True)
class WanFamily:
    """A Wan model family (module docstring); a :class:`~cac_align.gen.family.GeneratorFamily`.

    Attributes:
        name: "wan2.1", "wan2.2-ti2v", "wan2.2-a14b", "wan2.1-i2v" or "wan2.2-i2v-a14b"; title:
            "Wan-2.1", ...
        experts: 1, or 2 (a high-noise and a low-noise transformer).
        spatial_multiple: frame sides must be multiples of this (VAE compression x patch size).
        expand_timesteps: per-token timesteps (the TI2V-5B).
        defaults: the ``GeneratorConfig`` settings a recipe may leave unset (module docstring).
        tiny_names, hub_ids: its tiny in-process pipelines and its release checkpoints.
        pipeline_class: ``WanPipeline``, or ``WanImageToVideoPipeline`` (the I2V models).
        negative_prompt: the release's negative prompt (a recipe's ``negative_prompt`` unset).
    """

    name: str
    title: str
    experts: int
    spatial_multiple: int
    expand_timesteps: bool
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    pipeline_class: str = "WanPipeline"
    frame_multiple: int = 4  # Wan's VAE keeps frame 0 and compresses each next 4 into one latent frame
    # the shift diffusers' scripts/convert_wan_to_diffusers.py writes into the checkpoint's scheduler (module
    # docstring): a file that says it samples at the release's shift (cac_align.gen.family.model_flow_shift)
    converted_shift: float | None = None
    audio: bool = False
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # both attentions of every block
    min_inference_steps: int = 1
    # what parallel training shards and splits (cac_align.gen.parallel): one FSDP2 unit per block (diffusers'
    # _no_split_modules), the text encoder that leaves the device once the prompts are encoded
    block_classes: tuple[str, ...] = ("WanTransformerBlock",)
    encoder_components: tuple[str, ...] = ("text_encoder",)
    # image-to-video (cac_align.gen.family): "none", "optional" (the TI2V-5B), "required" (WanImageToVideoPipeline's models)
    image_input: str = "none"
    last_image: bool = False
    extra_components: tuple[str, ...] = ()  # every model of a Wan checkpoint is a component of its pipeline class
    # the negative prompt the release samples with when a recipe leaves generator.negative_prompt unset
    negative_prompt: str = WAN_NEGATIVE_PROMPT

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        return load_wan_pipeline(source, dtype=dtype, vae_dtype=vae_dtype, key=key, pipeline=self.pipeline_class, components=components)

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_WAN_BUILDERS[name](seed=seed)

    def latent_preview_for(self, name: str) -> Callable[..., Any] | None:
        """:func:`latent_preview`, where the model ``name`` decodes with the tiny random VAE
        (:data:`TINY_WAN_VAE`): one of this family's tiny in-process pipelines whose VAE compresses
        as Wan-2.1's does (8x in space, 4x in time: every tiny layout here but the TI2V-5B's), or a
        folder (or hub id) whose ``vae/config.json`` is that VAE's, as ``cac-align make-tiny`` saves
        it. None for every other model: a real VAE's frames are the video, and the preview is not
        (``generator.decode``, :func:`cac_align.gen.generator.video_decode`)."""
        if name in self.tiny_names:
            return latent_preview if self.spatial_multiple == 16 else None  # 8x VAE x 2x2 patches; the TI2V-5B's 48-channel VAE: 32
        from cac_align.gen.family import read_model_file

        vae = read_model_file(name, "vae/config.json") or {}
        tiny = vae.get("_class_name") == "AutoencoderKLWan" and all(vae.get(key) == value for key, value in TINY_WAN_VAE.items())
        return latent_preview if tiny else None

    # -- sampling -------------------------------------------------------------------------
    def denoiser(self, pipe: Any) -> Any:
        from cac_align.gen.experts import WanDenoiser

        return WanDenoiser.from_pipeline(pipe, self)

    def context_parallel_plan(self, transformer: Any) -> Any:
        """diffusers' own ``WanTransformer3DModel._cp_plan``: the rope and the first block's video
        tokens split, the output gathered at ``proj_out``; the text is not split (its cross-attention
        takes each rank's queries against the whole prompt)."""
        return transformer._cp_plan

    def check_context_parallel(self, config: Any, degree: int, transformer_config: Mapping[str, Any]) -> None:
        """Raises ``RecipeError`` naming the setting to change when a context-parallel group of
        ``degree`` processes cannot split this video, before anything loads: its latent tokens
        (``latent frames x (height / s) x (width / s)``, ``s`` the VAE's compression times the
        patch: :attr:`spatial_multiple`) and the self-attention's heads (``num_attention_heads``)
        must divide by ``degree``; the text is not split. ``transformer_config``: the transformer's
        ``config.json`` (the A14B's two experts share their layout)."""
        from cac_align.gen.family import check_context_parallel_split

        check_context_parallel_split(self, config, degree, transformer_config, ("num_attention_heads",))

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """``config``'s classifier-free guidance (the A14B's: both experts'); ``guided=False``:
        none, one forward a step. Wan's positions do not depend on the frame rate (``fps``)."""
        if not guided:
            return {"guidance_scale": 1.0, "guidance_scale_2": None}
        return {"guidance_scale": config.guidance_scale, "guidance_scale_2": config.guidance_scale_2}

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, Any]:
        from cac_align.gen.family import Conditioning

        negative_prompt = self.negative_prompt if negative_prompt is None else negative_prompt
        embeds, negative = encode_prompts(pipe, prompts, negative_prompt, guidance["guidance_scale"], max_sequence_length)
        return Conditioning(embeds=embeds), (Conditioning(embeds=negative) if negative is not None else None)

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """Each image's conditioning as ``WanImageToVideoPipeline`` builds it (diffusers 0.42.1
        ``pipeline_wan_i2v.py``, ``prepare_latents`` and ``encode_image``): the image resized to
        ``config``'s height x width by the pipeline's ``video_processor.preprocess`` (a plain
        resize, no crop), encoded by the VAE (the mode) and normalized. With ``expand_timesteps``
        (the TI2V-5B) that latent frame is ``fixed``; otherwise the ``condition`` channels are the
        frame mask (1 on the given first, and last, frame) and the latents of the image followed by
        black frames (and the last image), and a CLIP image encoder, where the pipeline has one,
        gives ``image_embeds``."""
        from cac_align.gen.family import Conditioning

        if not self.last_image and any(image.last_image for image in images):
            raise ValueError(f"{self.title} takes a first frame only, and an image gives a last_image; drop it")
        rows = [wan_image_conditioning(pipe, config, image, expand_timesteps=self.expand_timesteps) for image in images]
        return Conditioning.stack(rows)

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls (denoising steps) one sample of ``num_inference_steps`` makes: the
        length of :meth:`schedule`'s timesteps (one a step)."""
        return num_inference_steps

    def schedule(self, pipe: Any, config: Any) -> tuple[Any, Any]:
        from cac_align.gen.generator import scheduler_shift
        from cac_align.rl.sde import flow_sigmas

        return flow_sigmas(config.num_inference_steps, scheduler_shift(pipe, config.flow_shift))

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[Any, Any]:
        import torch

        shape = (  # the VAE's latent channels (an image-to-video transformer reads more: the image's, beside)
            pipe.vae.config.z_dim,
            (config.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            config.height // pipe.vae_scale_factor_spatial,
            config.width // pipe.vae_scale_factor_spatial,
        )
        device = pipe._execution_device
        return torch.stack([torch.randn(shape, generator=g, device=device, dtype=torch.float32) for g in generators]), None

    def decode(self, pipe: Any, latents: Any, side: Any = None, seeds: Sequence[int] | None = None) -> Any:
        return decode_latents(pipe, latents)  # Wan's VAE decodes without drawing: the seeds are not needed

    def encode_video(self, pipe: Any, frames: Any) -> Any:
        return encode_video(pipe, frames)

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial, tuple(pipe.transformer.config.patch_size)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """``WanPipeline``'s videos, one generator per (prompt, seed); with ``images``,
        ``WanImageToVideoPipeline``'s (the same modules: :func:`_image_pipeline`), one call per run of
        rows that share an image."""
        import numpy as np
        import torch

        from cac_align.gen.family import Generated, image_runs
        from cac_align.gen.generator import frames_to_uint8

        if images is None and self.image_input == "required":
            raise ValueError(f"{self.title} is an image-to-video model: give each prompt an image")
        device = pipe._execution_device
        generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        negative = self.negative_prompt if config.negative_prompt is None else config.negative_prompt
        if images is not None:
            from diffusers import WanImageToVideoPipeline
            from diffusers.utils import load_image

            animate = pipe if isinstance(pipe, WanImageToVideoPipeline) else _image_pipeline(pipe)
            animate.set_progress_bar_config(disable=True)
            videos = []
            for lo, hi in image_runs(images):
                image = images[lo]
                output = animate(
                    image=load_image(image.image), last_image=load_image(image.last_image) if image.last_image else None,
                    prompt=list(prompts[lo:hi]), negative_prompt=[negative] * (hi - lo) if config.guidance_scale > 1.0 else None,
                    height=config.height, width=config.width, num_frames=config.num_frames, num_inference_steps=config.num_inference_steps,
                    guidance_scale=config.guidance_scale, **({"guidance_scale_2": config.guidance_scale_2} if config.guidance_scale_2 is not None else {}),
                    generator=generators[lo:hi], output_type="pt", max_sequence_length=config.max_sequence_length,
                )
                videos.append(frames_to_uint8(output.frames))
            return Generated(np.concatenate(videos))
        output = pipe(
            prompt=list(prompts),
            negative_prompt=[negative] * len(prompts) if config.guidance_scale > 1.0 else None,
            height=config.height,
            width=config.width,
            num_frames=config.num_frames,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            **({"guidance_scale_2": config.guidance_scale_2} if config.guidance_scale_2 is not None else {}),
            generator=generators,
            output_type="pt",
            max_sequence_length=config.max_sequence_length,
        )
        return Generated(frames_to_uint8(output.frames))  # (B, F, H, W, 3) in [0, 1]


def _image_pipeline(pipe: Any) -> Any:
    """``WanImageToVideoPipeline`` over the same modules as the text-to-video ``pipe`` (the
    TI2V-5B's, whose checkpoint is a ``WanPipeline``), nothing copied or cast: diffusers'
    ``from_pipe`` would end by casting the shared modules to float32 in place (0.42.1
    ``pipeline_utils.py``, ``new_pipeline.to(dtype=dtype)`` with float32 unless given one),
    turning a bf16 run's transformer and text encoder into float32."""
    from diffusers import WanImageToVideoPipeline

    names = ("tokenizer", "text_encoder", "vae", "scheduler", "transformer", "transformer_2")
    modules = {name: getattr(pipe, name, None) for name in names}
    return WanImageToVideoPipeline(**modules, boundary_ratio=pipe.config.get("boundary_ratio"),
                                   expand_timesteps=bool(pipe.config.get("expand_timesteps", False)))


_SHARED = {"flow_shift": None, "max_sequence_length": 512}  # Wan: 512 text tokens (UMT5)

WAN21 = WanFamily("wan2.1", "Wan-2.1", 1, 16, False, {
    **_SHARED, "height": 480, "width": 832, "num_frames": 81, "fps": 16.0, "num_inference_steps": 50, "guidance_scale": 5.0,
}, tiny_names=(TINY_WAN,), hub_ids=("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan-AI/Wan2.1-T2V-14B-Diffusers"))
WAN22_TI2V = WanFamily("wan2.2-ti2v", "Wan2.2-TI2V-5B", 1, 32, True, image_input="optional", defaults={
    # wan_ti2v_5B.py: sample_fps 24, frame_num 121, sample_steps 50, sample_guide_scale 5.0,
    # sample_shift 5.0; its only sizes are 1280 x 704 and 704 x 1280
    **_SHARED, "height": 704, "width": 1280, "num_frames": 121, "fps": 24.0, "num_inference_steps": 50, "guidance_scale": 5.0,
    "flow_shift": 5.0,
}, tiny_names=("tiny-random:wan22-ti2v",), hub_ids=("Wan-AI/Wan2.2-TI2V-5B-Diffusers",), converted_shift=5.0)
WAN22_A14B = WanFamily("wan2.2-a14b", "Wan2.2-A14B", 2, 16, False, {
    # wan_t2v_A14B.py: sample_fps 16, frame_num 81, sample_steps 40, sample_guide_scale
    # (3.0, 4.0) for the (low-, high-)noise experts, sample_shift 12.0, boundary 0.875
    **_SHARED, "height": 720, "width": 1280, "num_frames": 81, "fps": 16.0, "num_inference_steps": 40, "guidance_scale": 4.0,
    "guidance_scale_2": 3.0, "flow_shift": 12.0,
}, tiny_names=("tiny-random:wan22-a14b",), hub_ids=("Wan-AI/Wan2.2-T2V-A14B-Diffusers",), converted_shift=3.0)

# Image-to-video (WanImageToVideoPipeline). The releases read: github.com/Wan-Video/Wan2.1 at
# 9737cba9c1c3c4d04b33fcad41c111989865d315 and github.com/Wan-Video/Wan2.2 at 42bf4cfaa384bc21833865abc2f9e6c0e67233dc.
WAN21_I2V = WanFamily("wan2.1-i2v", "Wan2.1-I2V-14B", 1, 16, False, pipeline_class="WanImageToVideoPipeline", image_input="required",
                      last_image=False,  # its transformer has no position embedding for two images (pos_embed_seq_len: the FLF2V's)
                      encoder_components=("text_encoder", "image_encoder"), negative_prompt=WAN21_I2V_NEGATIVE_PROMPT, defaults={
    # Wan2.1 generate.py l.70-81: i2v samples 40 steps, shift 3.0 at 480 x 832 (5.0 at 720p: set flow_shift with the 720P
    # checkpoint and a 720 x 1280 size); --sample_guide_scale 5.0; frame_num 81; shared_config.py sample_fps 16.
    # The size is the 480P checkpoint's area (configs/__init__.py MAX_AREA_CONFIGS '480*832'), the frame given here whole.
    **_SHARED, "height": 480, "width": 832, "num_frames": 81, "fps": 16.0, "num_inference_steps": 40, "guidance_scale": 5.0,
    "flow_shift": 3.0,
}, tiny_names=("tiny-random:wan21-i2v",), hub_ids=("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"),
    converted_shift=3.0)
WAN22_I2V_A14B = WanFamily("wan2.2-i2v-a14b", "Wan2.2-I2V-A14B", 2, 16, False, pipeline_class="WanImageToVideoPipeline", image_input="required",
                           last_image=True, defaults={
    # Wan2.2 wan/configs/wan_i2v_A14B.py l.34-37: sample_shift 5.0, sample_steps 40, boundary 0.900 (the checkpoint's
    # boundary_ratio), sample_guide_scale (3.5, 3.5) for the (low-, high-)noise experts; shared_config.py l.18-20:
    # sample_fps 16, frame_num 81; generate.py --size default "1280*720" (W*H): 720 x 1280. Shift set here: the diffusers
    # checkpoint's scheduler was converted with 3.0 (scripts/convert_wan_to_diffusers.py), not the release's 5.0.
    **_SHARED, "height": 720, "width": 1280, "num_frames": 81, "fps": 16.0, "num_inference_steps": 40, "guidance_scale": 3.5,
    "guidance_scale_2": 3.5, "flow_shift": 5.0,
}, tiny_names=("tiny-random:wan22-i2v-a14b",), hub_ids=("Wan-AI/Wan2.2-I2V-A14B-Diffusers",), converted_shift=3.0)

FAMILIES = (WAN21, WAN22_TI2V, WAN22_A14B, WAN21_I2V, WAN22_I2V_A14B)


def family_for_index(index: Mapping[str, Any]) -> WanFamily | None:
    """The Wan family a ``model_index.json`` describes (module docstring), or None.

    Raises:
        UnknownGeneratorError: a ``WanImageToVideoPipeline`` of no release listed here (neither a
            second expert, per-token timesteps nor a CLIP image encoder): which release's settings
            apply cannot be told, so it is refused rather than sampled with another's.
    """
    from cac_align.gen.family import UnknownGeneratorError, has_component

    pipeline = index.get("_class_name")
    if pipeline == "WanPipeline":
        if has_component(index, "transformer_2"):
            return WAN22_A14B
        return WAN22_TI2V if index.get("expand_timesteps") else WAN21
    if pipeline == "WanImageToVideoPipeline":
        if has_component(index, "transformer_2"):
            return WAN22_I2V_A14B
        if index.get("expand_timesteps"):
            return WAN22_TI2V  # the TI2V-5B's files loaded as the image-to-video pipeline: the same model
        if has_component(index, "image_encoder"):
            return WAN21_I2V
        raise UnknownGeneratorError(
            "a WanImageToVideoPipeline of no Wan release known here (no transformer_2, no expand_timesteps, no image_encoder; Wan2.2-I2V-A14B "
            "has a transformer_2, Wan2.2-TI2V-5B expand_timesteps, Wan2.1-I2V-14B a CLIP image_encoder): its sampling settings have no "
            "source in cac_align, so it is refused rather than run with another release's; add its family to cac_align/gen/families/wan.py"
        )
    return None


# ---------------------------------------------------------------------------------------
# The pipeline's pieces
# ---------------------------------------------------------------------------------------
def load_wan_pipeline(
    name_or_path: str,
    *,
    dtype: str = "bfloat16",
    vae_dtype: str = "float32",
    key: str = "model",
    pipeline: str = "WanPipeline",
    device: str | None = None,
    components: Mapping[str, Any] | None = None,
) -> Any:
    """Load a Wan pipeline by hub id or local path, safetensors only.

    Args:
        name_or_path: hub id (``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) or a directory written by
            ``save_pretrained``.
        dtype: dtype of the transformer and text encoder.
        vae_dtype: dtype of the VAE; diffusers recommends float32 for Wan's VAE.
        key: recipe key holding ``name_or_path``, named in errors.
        pipeline: the diffusers class of the Wan family to load (``WanVACEPipeline`` for repair's
            regenerator, ``Wan-AI/Wan2.1-VACE-1.3B-diffusers``).
        device: where to put it (None: where it loads, the CPU).
        components: modules to take instead of loading them, by component name (diffusers'
            ``from_pretrained(..., transformer=...)``): a sharded run's empty transformers
            (:func:`cac_align.gen.generator.empty_experts`).
    """
    import diffusers
    from diffusers import AutoencoderKLWan

    source = check_weights_source(name_or_path, key)
    try:
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", dtype=resolve_dtype(vae_dtype), use_safetensors=True)
        pipe = getattr(diffusers, pipeline).from_pretrained(source, vae=vae, dtype=resolve_dtype(dtype), use_safetensors=True, **(components or {}))
    except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
        raise weights_error(name_or_path, key, exc) from exc
    return pipe if device is None else pipe.to(resolve_device(device, key.rsplit(".", 1)[0] + ".device"))


def encode_prompts(pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance_scale: float, max_sequence_length: int) -> tuple[Any, Any]:
    """UMT5 embeddings ``(B, L, D)`` of ``prompts`` (and of the negative prompt when CFG is on), via the pipeline."""
    import torch

    negative = WAN_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
    with torch.no_grad():
        embeds, negative_embeds = pipe.encode_prompt(
            prompt=list(prompts),
            negative_prompt=[negative] * len(prompts) if guidance_scale > 1.0 else None,
            do_classifier_free_guidance=guidance_scale > 1.0,
            max_sequence_length=max_sequence_length,
            device=pipe._execution_device,
        )
    dtype = pipe.transformer.dtype
    return embeds.to(dtype), (negative_embeds.to(dtype) if negative_embeds is not None else None)


def wan_image_conditioning(pipe: Any, config: Any, image: Any, *, expand_timesteps: bool) -> dict[str, Any]:
    """One :class:`~cac_align.run.input_files.PromptImage`'s conditioning tensors (no batch
    dimension) as ``WanImageToVideoPipeline`` builds them (:meth:`WanFamily.encode_images`)."""
    import torch
    from diffusers.utils import load_image

    device = pipe._execution_device
    height, width, frames = config.height, config.width, config.num_frames
    first = load_image(image.image)
    last = load_image(image.last_image) if image.last_image else None
    vae = pipe.vae
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(first, height=height, width=width).to(device, torch.float32).unsqueeze(2)
        if expand_timesteps:
            video = pixels
        else:
            tail = [pipe.video_processor.preprocess(last, height=height, width=width).to(device, torch.float32).unsqueeze(2)] if last else []
            video = torch.cat([pixels, pixels.new_zeros(1, 3, frames - 1 - len(tail), height, width), *tail], dim=2)
        z = vae.encode(video.to(next(vae.parameters()).device, vae.dtype)).latent_dist.mode().to(device, torch.float32)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        z = (z - mean) * inv_std
        if expand_timesteps:
            return {"fixed": z[0]}
        temporal = pipe.vae_scale_factor_temporal
        rows, columns = z.shape[3], z.shape[4]
        mask = torch.zeros(1, 1, frames, rows, columns, device=device)
        mask[:, :, 0] = 1
        if last is not None:
            mask[:, :, -1] = 1
        # the first pixel frame's mask repeated over the first latent frame's ``temporal`` slots
        mask = torch.cat([mask[:, :, :1].repeat_interleave(temporal, dim=2), mask[:, :, 1:]], dim=2)
        mask = mask.view(1, -1, temporal, rows, columns).transpose(1, 2)
        out = {"condition": torch.cat([mask, z], dim=1)[0]}
        encoder = getattr(pipe, "image_encoder", None)
        if encoder is not None and pipe.transformer.config.image_dim is not None:
            out["image_embeds"] = pipe.encode_image(first, device)[0].float()
    return out


def decode_latents(pipe: Any, latents: Any) -> Any:
    """Final latents ``(B, C, F', H', W')`` to uint8 frames ``(B, F, H, W, 3)``, as ``WanPipeline`` decodes."""
    import torch

    from cac_align.gen.generator import frames_to_uint8

    vae = pipe.vae
    with torch.no_grad():
        z = latents.to(next(vae.parameters()).device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        video = vae.decode(z / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="pt")
    return frames_to_uint8(frames)


def encode_video(pipe: Any, frames: Any) -> Any:
    """uint8 frames ``(F, H, W, 3)`` (``F = 4k + 1``) to Wan latents ``(C, F', H', W')`` float32,
    the inverse of :func:`decode_latents`: the mean of the VAE's latent distribution, normalized
    as ``WanPipeline`` normalizes (``(z - latents_mean) / latents_std``)."""
    import numpy as np
    import torch

    vae = pipe.vae
    x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, F, H, W)
    with torch.no_grad():
        x = x.to(next(vae.parameters()).device, vae.dtype) / 127.5 - 1.0
        z = vae.encode(x).latent_dist.mode()
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
        return ((z - mean) * inv_std)[0].float()


def latent_preview(pipe: Any, latents: Any, seeds: Any = None) -> Any:
    """A stand-in for :func:`decode_latents` in toy experiments: uint8 ``(B, 4 (F' - 1) + 1, 8 H',
    8 W', 3)``, the sigmoid of latent channels 0-2 as RGB laid out as Wan's VAE lays out pixels
    (latent frame 0 as pixel frame 0, latent frame k as pixel frames 4k - 3 .. 4k, each latent
    pixel as an 8 x 8 block).

    The tiny random ``AutoencoderKLWan`` decodes to frames that barely depend on the latents (its
    norms normalise them away), so a toy reward on its decode cannot move; this preview keeps what
    the policy changes visible, each latent position owning exactly its pixels. Never for a real
    model: ``generator.decode: latent_preview`` turns it on from a recipe or the command line, on
    the tiny random VAE only (:meth:`WanFamily.latent_preview_for`). Also used by
    ``benchmarks/rl/localized_credit.py`` and the tests that need a reward the tiny policy can move
    (``run(..., decode=latent_preview)``)."""
    import numpy as np
    import torch

    rgb = torch.sigmoid(latents[:, :3].float()).permute(0, 2, 3, 4, 1).cpu().numpy()
    frames = [0] + [k for k in range(1, rgb.shape[1]) for _ in range(4)]
    rgb = np.repeat(np.repeat(rgb[:, frames], 8, axis=2), 8, axis=3)
    return np.round(rgb * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# The tiny layouts (tiny-random:wan, :wan22-ti2v, :wan22-a14b, :wan21-i2v, :wan22-i2v-a14b): diffusers'
# WanPipeline and WanImageToVideoPipeline at toy sizes, random weights (cac_align.gen.tiny's shared parts)
# ---------------------------------------------------------------------------------------
# The A14B's switch: its transformer serves timesteps >= 0.875 * 1000 (Wan2.2's wan_t2v_A14B.py:
# boundary 0.875; the diffusers model_index.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers: boundary_ratio 0.875)
A14B_BOUNDARY_RATIO = 0.875
# Wan2.2-I2V-A14B's switch, later: timesteps >= 0.900 * 1000 (Wan2.2's wan_i2v_A14B.py: boundary 0.900,
# github.com/Wan-Video/Wan2.2 at 42bf4cfaa384bc21833865abc2f9e6c0e67233dc)
I2V_A14B_BOUNDARY_RATIO = 0.9

# Image-to-video through channels: the transformer reads 16 noise + 4 frame-mask + 16 image-latent channels
_I2V_CHANNELS = 16 + 4 + 16
_CLIP_WIDTH = 32  # the tiny CLIP image encoder's width (Wan2.1-I2V's ViT-H/14: 1280), the transformer's image_dim

def _tiny_transformer(channels: int, in_channels: int | None = None, image_dim: int | None = None) -> Any:
    """A 2-block ``WanTransformer3DModel`` (2 heads of 12) on ``channels`` latent channels; an
    image-to-video one reads ``in_channels`` (the noise's, the mask's and the image latents'), and
    Wan2.1-I2V's reads ``image_dim``-wide CLIP tokens through a second key/value projection that
    the image embedder has already lifted to the hidden width (diffusers'
    ``scripts/convert_wan_to_diffusers.py``, "Wan-I2V-14B-480p": ``image_dim`` 1280,
    ``added_kv_proj_dim`` 5120 = 40 heads x 128)."""
    from diffusers import WanTransformer3DModel

    heads, head_dim = 2, 12
    return transformer_made(lambda: WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=in_channels or channels,
        out_channels=channels,
        image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim is not None else None,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ))


def build_tiny_wan22_ti2v_pipeline(seed: int = 0) -> Any:
    """A tiny random pipeline of Wan2.2-TI2V-5B's layout (module docstring), text-to-video.

    Its VAE is the residual one of the 5B (48 latent channels; 2x2 patchify then 8x, so 16x
    spatial compression; 4x in time): frames must be multiples of 32 pixels on each side for the
    transformer's 2x2 patches, and ``num_frames`` ``4k + 1``. The pipeline gives every latent
    token its own timestep (``expand_timesteps``), as diffusers does for the 5B.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = umt5_text_encoder(tokenizer)
    transformer = _tiny_transformer(48)
    vae = AutoencoderKLWan(
        base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # Wan2.2-TI2V-5B samples with shift 5
    for module in (text_encoder, transformer, vae):
        module.eval()
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer,
                       expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22_a14b_pipeline(seed: int = 0) -> Any:
    """A tiny random pipeline of Wan2.2-A14B's layout (module docstring): two experts of the same
    shape with their own random weights, switching at ``boundary_ratio`` 0.875; Wan-2.1's VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    base = build_tiny_wan_pipeline(seed)
    torch.manual_seed(seed + 1)
    transformer_2 = _tiny_transformer(16).eval()
    pipe = WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=12.0),  # Wan2.2-T2V-A14B samples with shift 12
                       transformer=base.transformer, transformer_2=transformer_2, boundary_ratio=A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanPipeline`` that runs on a CPU in seconds.

    2 prompts x 9 frames x 32x32 pixels with 4 steps take a few seconds. The VAE compresses
    time 4x and space 8x like the real one, so ``num_frames`` must be ``4k + 1``.
    """
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = umt5_text_encoder(tokenizer)
    transformer = _tiny_transformer(16)
    vae = AutoencoderKLWan(**TINY_WAN_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    # Freshly built modules start in train mode (UMT5 dropout on); from_pretrained returns eval.
    for module in (text_encoder, transformer, vae):
        module.eval()
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_clip(seed: int) -> tuple[Any, Any]:
    """A 2-layer ``CLIPVisionModel`` (32 wide, 32 x 32 images in 8 x 8 patches: 17 tokens) and the
    ``CLIPImageProcessor`` that feeds it (shortest side to 32, centre crop 32 x 32, CLIP's mean and
    std): the image encoder of Wan2.1-I2V's pipeline (the real one: ViT-H/14, 1280 wide, 224 x 224),
    whose second-to-last hidden state the transformer reads."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=_CLIP_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                               image_size=32, patch_size=8)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return encoder, processor


def build_tiny_wan21_i2v_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanImageToVideoPipeline`` of Wan2.1-I2V-14B's layout (module docstring): the
    text encoder and VAE of :func:`build_tiny_wan_pipeline`, a CLIP image encoder, and one
    transformer that reads 36 channels (16 of noise, 4 of the frame mask, 16 of the image's
    latents) and the image's CLIP tokens."""
    import torch
    from diffusers import WanImageToVideoPipeline

    base = build_tiny_wan_pipeline(seed)
    image_encoder, image_processor = _tiny_clip(seed + 2)
    torch.manual_seed(seed + 3)
    transformer = _tiny_transformer(16, in_channels=_I2V_CHANNELS, image_dim=_CLIP_WIDTH).eval()
    pipe = WanImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
                                   transformer=transformer, image_encoder=image_encoder, image_processor=image_processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22_i2v_a14b_pipeline(seed: int = 0) -> Any:
    """A tiny random ``WanImageToVideoPipeline`` of Wan2.2-I2V-A14B's layout (module docstring): two
    experts that read 36 channels (no CLIP image encoder), switching at ``boundary_ratio`` 0.9, the
    scheduler shifted by the release's 5.0; Wan-2.1's text encoder and VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    base = build_tiny_wan_pipeline(seed)
    torch.manual_seed(seed + 3)
    transformer = _tiny_transformer(16, in_channels=_I2V_CHANNELS).eval()
    transformer_2 = _tiny_transformer(16, in_channels=_I2V_CHANNELS).eval()
    pipe = WanImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),  # Wan2.2-I2V-A14B samples with shift 5
                                   transformer=transformer, transformer_2=transformer_2, boundary_ratio=I2V_A14B_BOUNDARY_RATIO)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ``generator.name`` -> the builder of that tiny pipeline
TINY_WAN_BUILDERS = {
    "tiny-random:wan": build_tiny_wan_pipeline,
    "tiny-random:wan22-ti2v": build_tiny_wan22_ti2v_pipeline,
    "tiny-random:wan22-a14b": build_tiny_wan22_a14b_pipeline,
    "tiny-random:wan21-i2v": build_tiny_wan21_i2v_pipeline,
    "tiny-random:wan22-i2v-a14b": build_tiny_wan22_i2v_a14b_pipeline,
}

