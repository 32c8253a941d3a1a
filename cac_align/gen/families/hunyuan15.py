"""The HunyuanVideo-1.5 family: Tencent's 8.3B text-to-video and image-to-video models as the
generator jobs run them.

diffusers' ``HunyuanVideo15Pipeline`` (text to video) and ``HunyuanVideo15ImageToVideoPipeline``
(a first frame to video) share one layout: a Qwen2.5-VL text model (its hidden state two layers
from the top, after a chat template whose first 108 tokens are cut off), a ByT5 encoder of the
quoted text in a prompt (the glyphs to draw; zeros when the prompt quotes nothing), one
``HunyuanVideo15Transformer3DModel`` that attends jointly over the video's tokens and the text's,
``AutoencoderKLHunyuanVideo15`` (16x in space, 4x in time: ``4k + 1`` frames, sides multiples of
16; 32 latent channels; a checkpoint whose ``vae/config.json`` says other ratios takes its own:
:func:`cac_align.gen.family.with_own_ratios`), a flow-matching Euler scheduler and a ``ClassifierFreeGuidance`` guider.
The image-to-video pipeline adds a SigLIP vision encoder. The checkpoint's ``model_index.json``
names the pipeline class (:func:`family_for_index`): text-to-video or image-to-video, whatever
the folder or hub id is called.

**A step, as the pipeline computes it** (diffusers 0.42.1
``pipelines/hunyuan_video1_5/pipeline_hunyuan_video1_5.py``, the denoising loop;
:class:`HunyuanVideo15Denoiser`): the transformer reads the noisy latents with, concatenated on the
channel axis, the image's latents and a frame mask (all zeros for text to video; for image to
video the image's latents in latent frame 0 and a mask of ones there), and beside the text the
image's SigLIP tokens (zeros, which the transformer then masks out, for text to video). The
guider gives ``uncond + g (cond - uncond)`` (its default formulation), one forward per prompt row
and one for the negative prompt's row. The image is not a fixed latent frame: every frame is
sampled, so the sampler, the log-probabilities and every loss cover all latent frames.

**Image-to-video** takes the prompt file's ``image`` (a first frame; no last frame), as the Wan
and LTX-2 families take it (:meth:`HunyuanVideo15Family.encode_images`). diffusers' image-to-video
pipeline has no height or width argument: it picks the frame size from the image's aspect ratio
(the closest of its buckets for the transformer's ``target_size``) and centre-crops the image to
it. Here the frame size is the recipe's: the image is cropped to it first, which makes the
pipeline pick that very size when the size is one of its buckets; a size that is not is refused
in one line (:func:`check_bucket`).

**The release settings** (what a recipe leaves unset takes), each with its source:

| setting | value | source |
| --- | --- | --- |
| steps | 50 | diffusers' ``HunyuanVideo15Pipeline.__call__`` default; the authors' ``generate.py`` ``--num_inference_steps`` default |
| frames | 121 | both ``__call__`` defaults; ``generate.py`` ``--video_length`` (it warns that 121 is the best) |
| guidance | 6.0 | diffusers' ``scripts/convert_hunyuan_video1_5_to_diffusers.py`` ``GUIDANCE_CONFIGS`` (480p and 720p, T2V and I2V; the distilled checkpoints: 1.0) |
| shift | the checkpoint's ``scheduler_config.json``; 5.0 where it says none | the same script's ``SCHEDULER_CONFIGS``, which it writes into each checkpoint's scheduler: 5.0 for 480p (720p: 9.0 T2V, 7.0 I2V) |
| frame rate | 24 fps | the authors' ``generate.py`` ``save_video`` (``imageio.mimwrite(path, vid, fps=24)``) |
| negative prompt | "" (empty, with CFG on) | ``generate.py`` ``--negative_prompt`` default; diffusers encodes ``[""]`` when none is given |
| size | 480 x 848 | the 480p transformer's ``target_size`` 640 and ``generate.py``'s default aspect ratio 16:9, through the pipeline's own bucketing (``calculate_default_height_width(9, 16, 640)``) |
| text tokens | 1000 | the pipeline's ``tokenizer_max_length`` (after the template's 108) |

Sources read: the authors' ``generate.py`` at github.com/Tencent-Hunyuan/HunyuanVideo-1.5
(178b8e1), diffusers' conversion script at github.com/huggingface/diffusers (38c42b4), diffusers
0.42.1's pipelines. diffusers' own docs examples write T2V at 15 fps and I2V at 24 fps; the
authors' script writes both at 24, which is taken.

These are the 480p checkpoints' settings (the ones diffusers' docstrings load). A 720p or a
step-distilled checkpoint has the same ``model_index.json``, so it cannot be told apart from it:
its recipe sets ``height: 720`` and ``width: 1280``, and a distilled one ``guidance_scale: 1.0``. The
shift is each checkpoint's own (its scheduler file: diffusers' conversion writes the release's
shift there, 9.0 / 7.0 for 720p; a fine-tune's file decides for it;
:func:`cac_align.gen.family.model_flow_shift`); a recipe's ``flow_shift`` overrides it. A transformer with ``use_meanflow`` (a distilled
image-to-video checkpoint) is refused by the denoiser in one line: its second timestep input is
not modelled here.

**Context parallel is refused** (:meth:`HunyuanVideo15Family.context_parallel_plan`): diffusers
declares no ``_cp_plan`` for this transformer, and its blocks attend jointly over the video and a
text sequence that the forward reorders per sample (valid tokens first) under a per-sample mask.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from cac_align.gen.experts import Denoiser
from cac_align.gen.family import image_runs
from cac_align.loading import check_weights_source, resolve_dtype, weights_error

__all__ = ["FAMILIES", "HUNYUAN15_I2V", "HUNYUAN15_T2V", "HunyuanVideo15Denoiser", "HunyuanVideo15Family", "NEGATIVE_PROMPT", "TINY_HUNYUAN15_BUILDERS",
           "build_tiny_hunyuan15_pipeline", "check_bucket", "family_for_index"]

# The guider settings the denoiser reproduces (ClassifierFreeGuidance's defaults, as diffusers'
# conversion script writes the guider: only guidance_scale set)
_PLAIN_CFG = {"guidance_rescale": 0.0, "use_original_formulation": False, "start": 0.0, "stop": 1.0, "enabled": True}


@dataclass(frozen=True)
class HunyuanVideo15Family:
    """HunyuanVideo-1.5 as a :class:`~cac_align.gen.family.GeneratorFamily` (module docstring).

    Attributes:
        name, title: "hunyuanvideo1.5-t2v" / "hunyuanvideo1.5-i2v" and how messages name them.
        pipeline_class: ``HunyuanVideo15Pipeline`` or ``HunyuanVideo15ImageToVideoPipeline``.
        image_input: "none" (text to video) or "required" (image to video).
    """

    name: str
    title: str
    pipeline_class: str
    image_input: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    experts: int = 1
    spatial_multiple: int = 16  # the VAE's 16x; the transformer's patch is 1
    frame_multiple: int = 4  # the VAE keeps frame 0 and compresses each next 4 into one latent frame
    audio: bool = False
    # the query/key/value/output projections of every attention's video stream (the double-stream
    # blocks' ``attn``; the text stream's are ``add_*_proj``) and of the text token refiner
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    min_inference_steps: int = 1
    # one FSDP2 unit per double-stream block (the first of diffusers' _no_split_modules)
    block_classes: tuple[str, ...] = ("HunyuanVideo15TransformerBlock",)
    encoder_components: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    last_image: bool = False
    # the VAE runs on one video at a time (:meth:`decode`): the memory plan traces it so
    vae_one_video: bool = True
    extra_components: tuple[str, ...] = ()  # every model of its checkpoint is a component of its pipeline class

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline in ``source`` (a folder or hub id), safetensors only; its VAE in ``vae_dtype``."""
        import diffusers

        folder = check_weights_source(source, key)
        try:
            pipe = getattr(diffusers, self.pipeline_class).from_pretrained(folder, dtype=resolve_dtype(dtype), use_safetensors=True, **(components or {}))
        except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
            raise weights_error(source, key, exc) from exc
        pipe.vae.to(resolve_dtype(vae_dtype))
        return pipe

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_HUNYUAN15_BUILDERS[name](seed)

    # -- sampling -------------------------------------------------------------------------
    def denoiser(self, pipe: Any) -> "HunyuanVideo15Denoiser":
        return HunyuanVideo15Denoiser(pipe, self)

    def context_parallel_plan(self, transformer: Any) -> Any:
        """Refused (module docstring): raises ``RecipeError``."""
        from cac_align.config import RecipeError

        raise RecipeError(f"parallel.context_parallel > 1 is not supported for {self.title}: diffusers 0.42.1 declares no _cp_plan for "
                          "HunyuanVideo15Transformer3DModel, whose blocks attend jointly over the video and a per-sample reordered, masked "
                          "text sequence that a split of the video tokens does not cover; set parallel.context_parallel: 1")

    def check_context_parallel(self, config: Any, degree: int, transformer_config: Mapping[str, Any]) -> None:
        """Refuses any ``degree`` above 1 before anything loads (:meth:`context_parallel_plan`)."""
        if degree > 1:
            self.context_parallel_plan(None)

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """``config``'s classifier-free guidance scale (``guided=False``: 1.0, one forward a step).
        Positions do not depend on the frame rate (``fps``)."""
        return {"guidance_scale": float(config.guidance_scale) if guided else 1.0}

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, Any]:
        """Both text encoders' embeddings and masks of ``prompts`` (``embeds``, ``attention_mask``:
        Qwen2.5-VL; ``embeds_2``, ``attention_mask_2``: ByT5), and of the negative prompt with CFG (None: the release's
        empty one), through the pipeline's ``encode_prompt`` with ``max_sequence_length`` Qwen
        tokens (its ``tokenizer_max_length``)."""
        from cac_align.gen.family import Conditioning

        def encode(texts: Sequence[str]) -> Any:
            with torch.no_grad(), _text_length(pipe, max_sequence_length):
                embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(prompt=list(texts), device=pipe._execution_device, dtype=pipe.transformer.dtype,
                                                                    batch_size=len(texts))
            return Conditioning(embeds=embeds, attention_mask=mask, embeds_2=embeds_2, attention_mask_2=mask_2)

        cond = encode(prompts)
        if not _does_cfg(guidance):
            return cond, None
        negative = NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        return cond, encode([negative] * len(prompts))

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """Each row's first frame as ``HunyuanVideo15ImageToVideoPipeline`` conditions on it
        (diffusers 0.42.1, ``__call__`` steps 1-6, ``prepare_cond_latents_and_mask`` and
        ``encode_image``): the image centre-cropped to ``config``'s height x width (the
        pipeline's ``video_processor.resize(..., resize_mode="crop")``; the size must be one of
        its buckets, :func:`check_bucket`), through the VAE (the mode, times ``scaling_factor``) into
        latent frame 0 of ``condition`` with zeros after it and a mask of ones on frame 0; and
        through SigLIP into ``image_embeds``.

        Returns:
            A :class:`~cac_align.gen.family.Conditioning` with ``condition`` ``(B, C + 1, F', H', W')``
            and ``image_embeds`` ``(B, tokens, width)``, float32.
        """
        from diffusers.utils import load_image

        from cac_align.gen.family import Conditioning

        if self.image_input == "none":
            raise ValueError(f"{self.title} is a text-to-video model: it takes no image")
        frames = (config.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        encoded: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}  # a group's rows share an image: encode it once
        for image in images:
            if image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            if image not in encoded:
                encoded[image] = _image_conditioning(pipe, load_image(image.image), config.height, config.width, frames)
        return Conditioning(condition=torch.stack([encoded[image][0] for image in images]),
                            image_embeds=torch.stack([encoded[image][1] for image in images]))

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls (denoising steps) one sample of ``num_inference_steps`` makes: the
        length of :meth:`schedule`'s timesteps (one a step)."""
        return num_inference_steps

    def schedule(self, pipe: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's own: ``linspace(1, 0, N + 1)[:-1]`` through its scheduler (which shifts
        them; diffusers' ``retrieve_timesteps`` of the pipeline's module): ``(sigmas (N + 1,)
        ending at 0, timesteps (N,) = 1000 sigma)``."""
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import retrieve_timesteps

        steps = config.num_inference_steps
        scheduler = copy.deepcopy(pipe.scheduler)
        timesteps, _ = retrieve_timesteps(scheduler, steps, "cpu", sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
        return scheduler.sigmas.float().cpu(), timesteps.float().cpu()

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[torch.Tensor, None]:
        """The pipeline's draws (``prepare_latents``: ``randn_tensor`` per generator in the
        transformer's dtype), as float32 ``(B, C, F', H', W')``."""
        shape = (pipe.num_channels_latents, (config.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
                 config.height // pipe.vae_scale_factor_spatial, config.width // pipe.vae_scale_factor_spatial)
        device, dtype = pipe._execution_device, pipe.transformer.dtype
        return torch.stack([torch.randn(shape, generator=g, device=device, dtype=dtype) for g in generators]).float(), None

    # -- latents and media ------------------------------------------------------------------
    def decode(self, pipe: Any, latents: torch.Tensor, side: Any = None, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Final latents ``(B, C, F', H', W')`` to uint8 frames, as the pipeline decodes them
        (divided by the VAE's ``scaling_factor``), one video at a time: diffusers 0.42.1's
        ``AutoencoderKLHunyuanVideo15`` fails on a batch of two or more (its mid-block attention
        gives a ``(B, L, L)`` causal mask to ``scaled_dot_product_attention`` against ``(B, 1, L, D)``
        queries, which broadcasts the batch against the head axis:
        ``autoencoder_kl_hunyuanvideo15.py`` ``HunyuanVideo15AttnBlock.forward``). The VAE decode draws
        nothing, so ``seeds`` is not read."""
        from cac_align.gen.generator import frames_to_uint8

        vae = pipe.vae
        videos = []
        with torch.no_grad():
            for row in latents:
                z = row[None].to(next(vae.parameters()).device, vae.dtype) / vae.config.scaling_factor
                video = vae.decode(z, return_dict=False)[0]
                videos.append(frames_to_uint8(pipe.video_processor.postprocess_video(video, output_type="pt")))
        return np.concatenate(videos)

    def encode_video(self, pipe: Any, frames: Any) -> torch.Tensor:
        """uint8 frames ``(F, H, W, 3)`` (``F = 4k + 1``) to latents ``(C, F', H', W')`` float32,
        the inverse of :meth:`decode`: the mode of the VAE's latent distribution times its
        ``scaling_factor``, as the image-to-video pipeline encodes its image."""
        vae = pipe.vae
        x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
        with torch.no_grad():
            x = x.to(next(vae.parameters()).device, vae.dtype) / 127.5 - 1.0
            return (vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)[0].float()

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        patch = pipe.transformer.config.patch_size
        return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial, (pipe.transformer.config.patch_size_t, patch, patch)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """The pipeline's videos, one generator per (prompt, seed), with ``config``'s guidance
        scale (given to a copy of the checkpoint's guider) and text length; with ``images``, the
        image-to-video pipeline's, one call per run of rows that share an image, each image
        cropped to ``config``'s size first (module docstring). The pipeline returns its final
        latents, which :meth:`decode` decodes one video at a time (the VAE fails on a batch)."""
        from cac_align.gen.family import Generated
        if images is None and self.image_input == "required":
            raise ValueError(f"{self.title} is an image-to-video model: give each prompt an image")
        device = pipe._execution_device
        generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        negative = NEGATIVE_PROMPT if config.negative_prompt is None else config.negative_prompt
        settings = dict(num_frames=config.num_frames, num_inference_steps=config.num_inference_steps, output_type="latent")
        with _guidance_scale(pipe, config.guidance_scale), _text_length(pipe, config.max_sequence_length):
            if images is None:
                outputs = [pipe(prompt=list(prompts), negative_prompt=[negative] * len(prompts), height=config.height, width=config.width,
                                generator=generators, **settings)]
            else:
                from diffusers.utils import load_image

                outputs = []
                for lo, hi in image_runs(images):
                    image = _cropped(pipe, load_image(images[lo].image), config.height, config.width)
                    outputs.append(pipe(image=image, prompt=list(prompts[lo:hi]), negative_prompt=[negative] * (hi - lo), generator=generators[lo:hi],
                                        **settings))
        latents = torch.cat([output.frames for output in outputs])  # output_type="latent": the final latents
        return Generated(self.decode(pipe, latents))


def _does_cfg(guidance: Mapping[str, Any]) -> bool:
    # the guider's own test (ClassifierFreeGuidance._is_cfg_enabled): a scale of 1 runs the conditional row alone
    return not np.isclose(guidance["guidance_scale"], 1.0)


@contextlib.contextmanager
def _text_length(pipe: Any, tokens: int | None) -> Iterator[None]:
    """Inside: the pipeline keeps ``tokens`` Qwen tokens after its template (its
    ``tokenizer_max_length``, 1000 in the release), the attribute its ``encode_prompt`` reads."""
    previous = pipe.tokenizer_max_length
    pipe.tokenizer_max_length = int(tokens) if tokens is not None else previous
    try:
        yield
    finally:
        pipe.tokenizer_max_length = previous


@contextlib.contextmanager
def _guidance_scale(pipe: Any, scale: float) -> Iterator[None]:
    """Inside: the pipeline's guider is the checkpoint's with ``scale`` (the pipeline has no
    guidance argument; diffusers' ``BaseGuidance.new`` copies a guider with settings changed)."""
    previous = pipe.guider
    pipe.guider = previous.new(guidance_scale=float(scale))
    try:
        yield
    finally:
        pipe.guider = previous


def check_bucket(pipe: Any, height: int, width: int) -> None:
    """Refuse, in one line, a frame size the image-to-video pipeline would not pick for an image
    of that size: diffusers' pipeline chooses ``calculate_default_height_width(image height,
    image width, target_size)`` (the closest of its aspect-ratio buckets), whatever the recipe says."""
    from cac_align.config import RecipeError

    picked = pipe.video_processor.calculate_default_height_width(height, width, pipe.target_size)
    if tuple(int(v) for v in picked) != (height, width):
        raise RecipeError(f"generator.height x width = {height} x {width} is not one of HunyuanVideo-1.5's frame sizes for its target size "
                          f"{pipe.target_size} (its image-to-video pipeline would make {picked[0]} x {picked[1]}): set height: {picked[0]} and "
                          f"width: {picked[1]}")


def _i2v_processor(pipe: Any) -> Any:
    """The image-to-video pipeline's own image processor (its ``__init__``: no resize in
    ``preprocess``, the crop having been done before)."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    if isinstance(pipe, HunyuanVideo15ImageToVideoPipeline):
        return pipe.video_processor
    return HunyuanVideo15ImageProcessor(vae_scale_factor=pipe.vae_scale_factor_spatial, do_resize=False, do_convert_rgb=True)


def _cropped(pipe: Any, image: Any, height: int, width: int) -> Any:
    """``image`` centre-cropped to ``height`` x ``width`` as the pipeline crops it, after
    :func:`check_bucket`."""
    check_bucket(pipe, height, width)
    return _i2v_processor(pipe).resize(image.convert("RGB"), height=height, width=width, resize_mode="crop")


def _image_conditioning(pipe: Any, image: Any, height: int, width: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(condition (C + 1, F', H', W'), image_embeds (tokens, width))`` float32 of one image
    (:meth:`HunyuanVideo15Family.encode_images`)."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5_image2video import HunyuanVideo15ImageToVideoPipeline

    image = _cropped(pipe, image, height, width)
    device = pipe._execution_device
    with torch.no_grad():
        latents = HunyuanVideo15ImageToVideoPipeline._get_image_latents(pipe.vae, _i2v_processor(pipe), image, height, width,
                                                                        next(pipe.vae.parameters()).device).to(device, torch.float32)[0]
        condition = torch.zeros((latents.shape[0] + 1, frames, *latents.shape[2:]), device=device)
        condition[: latents.shape[0], 0] = latents[:, 0]
        condition[-1, 0] = 1.0  # the frame mask: the image's latent frame
        embeds = HunyuanVideo15ImageToVideoPipeline._get_image_embeds(pipe.image_encoder, pipe.feature_extractor, image, device)
    return condition, embeds[0].float()


class HunyuanVideo15Denoiser(Denoiser):
    """The guided velocity of a HunyuanVideo-1.5 step, as the pipeline computes it (module
    docstring): ``denoiser(latents, timestep, cond, negative, guidance, dtype)``.

    Args:
        pipe: the pipeline (its transformer, its guider's settings, its ``vision_num_semantic_tokens``).
        family: the :class:`HunyuanVideo15Family` that built it.

    Raises:
        ValueError: a guider other than plain classifier-free guidance, or a ``use_meanflow``
            transformer (one line each).
    """

    def __init__(self, pipe: Any, family: Any):
        super().__init__()
        guider = pipe.guider
        settings = {key: guider.config.get(key, value) for key, value in _PLAIN_CFG.items()}
        if type(guider).__name__ != "ClassifierFreeGuidance" or settings != _PLAIN_CFG:
            raise ValueError(f"{family.title}: the checkpoint's guider is {type(guider).__name__} with {settings}; the jobs reproduce "
                             f"ClassifierFreeGuidance with {_PLAIN_CFG} only (the release's)")
        if pipe.transformer.config.get("use_meanflow"):
            raise ValueError(f"{family.title}: this transformer has use_meanflow (a distilled image-to-video checkpoint), whose second "
                             "timestep input the jobs do not model; name a non-distilled checkpoint")
        self.transformer = pipe.transformer
        self.family = family
        self.image_tokens = int(pipe.vision_num_semantic_tokens)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, text: Any, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.transformer(hidden_states=x, image_embeds=image_embeds, timestep=t, encoder_hidden_states=text.embeds,
                                encoder_attention_mask=text.attention_mask, encoder_hidden_states_2=text.embeds_2,
                                encoder_attention_mask_2=text.attention_mask_2,
                                return_dict=False)[0].float()

    def forward(self, latents: torch.Tensor, timestep: Any, cond: Any, negative: Any, guidance: Mapping[str, Any], dtype: Any = None,
                side: Any = None) -> torch.Tensor:
        """The guided velocity.

        Args:
            latents: ``(B, C, F', H', W')`` float32.
            timestep: the scheduler's ``t = 1000 sigma``, a scalar or one per sample ``(B,)``.
            cond / negative: :class:`~cac_align.gen.family.Conditioning` (``embeds``, ``attention_mask``,
                ``embeds_2``, ``attention_mask_2``; ``cond`` also ``condition`` and ``image_embeds`` when it
                animates an image: :meth:`HunyuanVideo15Family.encode_images`); negative None
                without CFG. The negative row reads the same image as the prompt's, as in the pipeline.
            guidance: :meth:`HunyuanVideo15Family.guidance`.
            dtype: the transformer's dtype (inputs are cast to it).

        Returns:
            The velocity ``(B, C, F', H', W')`` float32.
        """
        if side is not None:
            raise ValueError("HunyuanVideo-1.5 makes no side latents (audio)")
        batch, channels, frames, height, width = latents.shape
        dtype = dtype or latents.dtype
        if cond.has("condition"):
            condition = cond.condition.to(latents.device, torch.float32)
            image_embeds = cond.image_embeds.to(latents.device, dtype)
        else:  # text to video: zero image latents and mask, zero SigLIP tokens (which the transformer masks out)
            condition = latents.new_zeros((batch, channels + 1, frames, height, width))
            image_embeds = torch.zeros((batch, self.image_tokens, self.transformer.config.image_embed_dim), device=latents.device, dtype=dtype)
        x = torch.cat([latents, condition], dim=1).to(dtype)
        t = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).expand(batch).to(dtype)
        if not _does_cfg(guidance):
            return self._forward(x, t, cond, image_embeds)
        both = type(cond).cat([_text(cond), _text(negative)])  # the prompts' rows, then the negative's
        v = self._forward(torch.cat([x, x]), torch.cat([t, t]), both, torch.cat([image_embeds, image_embeds]))
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + guidance["guidance_scale"] * (v_cond - v_uncond)  # ClassifierFreeGuidance.forward, its default formulation


def _text(cond: Any) -> Any:
    from cac_align.gen.family import Conditioning

    return Conditioning(**{key: cond.tensors[key] for key in ("embeds", "attention_mask", "embeds_2", "attention_mask_2")})


# ---------------------------------------------------------------------------------------
# The families, and which a checkpoint is
# ---------------------------------------------------------------------------------------
# The release settings (module docstring's table, each with its source)
_RELEASE = {"height": 480, "width": 848, "num_frames": 121, "fps": 24.0, "num_inference_steps": 50, "guidance_scale": 6.0, "flow_shift": 5.0,
            "max_sequence_length": 1000}
# the release's negative prompt: none, i.e. the empty prompt with CFG on (the authors' generate.py
# --negative_prompt default ''; diffusers' pipeline encodes [""] when none is given)
NEGATIVE_PROMPT = ""

HUNYUAN15_T2V = HunyuanVideo15Family(
    "hunyuanvideo1.5-t2v", "HunyuanVideo-1.5 (T2V)", "HunyuanVideo15Pipeline", "none", _RELEASE, tiny_names=("tiny-random:hunyuanvideo15",),
    # the diffusers conversions' hub ids: the pipeline's docstring loads the first; the second is the name the checkpoints carry on the hub now
    hub_ids=("hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v", "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v"),
)
HUNYUAN15_I2V = HunyuanVideo15Family(
    "hunyuanvideo1.5-i2v", "HunyuanVideo-1.5 (I2V)", "HunyuanVideo15ImageToVideoPipeline", "required", _RELEASE,
    tiny_names=("tiny-random:hunyuanvideo15-i2v",),
    hub_ids=("hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v", "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_i2v"),
    encoder_components=("text_encoder", "text_encoder_2", "image_encoder"),
)
FAMILIES = (HUNYUAN15_T2V, HUNYUAN15_I2V)


def family_for_index(index: Mapping[str, Any]) -> HunyuanVideo15Family | None:
    """The text-to-video or image-to-video family from a ``model_index.json``'s ``_class_name``, or None."""
    return {family.pipeline_class: family for family in FAMILIES}.get(index.get("_class_name"))


# ---------------------------------------------------------------------------------------
# Tiny random pipelines (offline; diffusers' and transformers' own classes at toy sizes)
# ---------------------------------------------------------------------------------------
# The toy sizes follow diffusers' tests/pipelines/hunyuan_video1_5/test_hunyuan_1_5.py (transformer:
# 2 heads of 8, mlp ratio 2, one refiner layer, rope axes (2, 2, 4); Qwen2.5-VL text 16 wide, 2 layers),
# with 2 blocks (FSDP2 needs more than one unit), the VAE at the release's 16x / 4x compression (8
# channels a level) and target_size 32 (a 32 x 32 frame is one of its buckets). The ByT5 projection is
# 2048 wide whatever the config (transformer_hunyuan_video15.py: HunyuanVideo15ByT5TextProjection(..., 2048, ...)).
_QWEN_WIDTH, _T5_WIDTH, _SIGLIP_WIDTH, _LATENT = 16, 32, 12, 4
_TEMPLATE_TOKENS = 108  # the pipeline's prompt_template_encode_start_idx: the tokens its crop drops
_WORDS = ("a the of in on with and to is are at by from video person man woman dog cat car ball cup red blue green small large slowly quickly "
          "camera scene light water tree sky walking running playing holding street park room").split()
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def _qwen_tokenizer() -> Any:
    """A word-level tokenizer with Qwen's chat tokens and a chat template whose part before the
    user's text is exactly the 108 tokens the pipeline crops (the real template's length there),
    so the kept tokens are the prompt's, as in the release. Built in-process: no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_SPECIALS + ["<unk>", "system", "user", "assistant"] + sorted(set(_WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<|pad|>", eos_token="<|im_end|>",
                                        additional_special_tokens=_SPECIALS[:3], model_max_length=4096)
    # the system turn, padded with <|endoftext|> so that it and the user turn's opening take 108 tokens
    head = "<|im_start|> system {{ messages[0]['content'] }} <|im_end|> "
    tokenizer.chat_template = head + "__PAD__<|im_start|> user {{ messages[1]['content'] }} <|im_end|> {% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline

    system = HunyuanVideo15Pipeline._get_mllm_prompt_embeds.__defaults__[2]  # the pipeline's system message
    used = len(tokenizer(head.replace("{{ messages[0]['content'] }}", system) + "<|im_start|> user")["input_ids"])
    if used > _TEMPLATE_TOKENS:
        raise RuntimeError(f"the tiny template's system turn takes {used} tokens, more than the {_TEMPLATE_TOKENS} the pipeline crops")
    tokenizer.chat_template = tokenizer.chat_template.replace("__PAD__", "<|endoftext|> " * (_TEMPLATE_TOKENS - used))
    return tokenizer


def build_tiny_hunyuan15_pipeline(seed: int = 0, image_to_video: bool = False) -> Any:
    """A tiny random ``HunyuanVideo15Pipeline`` (or ``HunyuanVideo15ImageToVideoPipeline``, with a
    1-layer SigLIP of 32 x 32 images in 8 x 8 patches: 16 tokens 12 wide) of the release's layout:
    2 prompts x 9 frames x 32 x 32 with 2 steps run in well under a second."""
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    from cac_align.gen.tiny import transformer_made

    tokenizer = _qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=_QWEN_WIDTH, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, rope_theta=1000000.0,
        bos_token_id=None, eos_token_id=None))  # Qwen's 151643/151645 lie outside the tiny vocabulary (transformers warned)
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=384, d_model=_T5_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                             relative_attention_num_buckets=8))  # ByT5's 256 bytes + 3 specials + 125 extra ids
    transformer = transformer_made(lambda: HunyuanVideo15Transformer3DModel(
        in_channels=2 * _LATENT + 1, out_channels=_LATENT, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_refiner_layers=1,
        mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=_QWEN_WIDTH, text_embed_2_dim=_T5_WIDTH, image_embed_dim=_SIGLIP_WIDTH,
        rope_axes_dim=(2, 2, 4), target_size=32, task_type="i2v" if image_to_video else "t2v"))
    vae = AutoencoderKLHunyuanVideo15(in_channels=3, out_channels=3, latent_channels=_LATENT, block_out_channels=(8,) * 5, layers_per_block=1,
                                      spatial_compression_ratio=16, temporal_compression_ratio=4, downsample_match_channel=False,
                                      upsample_match_channel=False)
    for module in (text_encoder, text_encoder_2, transformer, vae):
        module.eval()
    parts = dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, text_encoder_2=text_encoder_2,
                 tokenizer_2=ByT5Tokenizer(), scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),  # the 480p release's shift
                 guider=ClassifierFreeGuidance(guidance_scale=6.0))  # the release's (diffusers' conversion script)
    if image_to_video:
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        image_encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=_SIGLIP_WIDTH, intermediate_size=16, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=32, patch_size=8)).eval()
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
        pipe = HunyuanVideo15ImageToVideoPipeline(image_encoder=image_encoder, feature_extractor=processor, **parts)
    else:
        pipe = HunyuanVideo15Pipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ``generator.name`` -> the builder of that tiny HunyuanVideo-1.5
TINY_HUNYUAN15_BUILDERS = {
    "tiny-random:hunyuanvideo15": lambda seed=0: build_tiny_hunyuan15_pipeline(seed),
    "tiny-random:hunyuanvideo15-i2v": lambda seed=0: build_tiny_hunyuan15_pipeline(seed, image_to_video=True),
}
