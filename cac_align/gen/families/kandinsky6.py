"""The Kandinsky 6 family: kandinskylab's text-or-image to video-with-sound model as the generator jobs run it.

diffusers 0.42.1's ``Kandinsky6TI2VAPipeline`` (``pipelines/kandinsky6/pipeline_kandinsky6_ti2va.py``)
makes a video and its soundtrack in one transformer (``Kandinsky6Transformer3DModel``: text blocks,
then fused blocks in which the video and the audio attend to their text and to each other), from a
Qwen2.5-VL text encoder (its last hidden state, after a chat template whose first 129 tokens are
cut off) and a CLIP text encoder (its pooled output). The video VAE is HunyuanVideo's
(``AutoencoderKLHunyuanVideo``: 8x in space, 4x in time, ``4k + 1`` frames; with the transformer's
2 x 2 patch, sides multiples of 16); the audio VAE (``MMAudioVAE``) decodes the audio latents to a
mel spectrogram and ``MMAudioVocoder`` (BigVGAN) turns it into a mono waveform at the audio VAE's
``sample_rate`` (44,100 Hz; the pipeline's ``audio_sample_rate``). A checkpoint's
``model_index.json`` names ``Kandinsky6TI2VAPipeline`` (:func:`family_for_index`); its scheduler
tells the SFT checkpoints (``FlowMatchEulerDiscreteScheduler``) from the pi-Flow-distilled ones
(``PiflowScheduler``).

**A step, as the pipeline computes it** (the denoising loop; :class:`Kandinsky6Denoiser`): the
transformer reads the video latents in its ``(B, F', H', W', C)`` layout with, concatenated on the
channel axis, a conditioning latent (always zeros) and a mask, and the audio latents ``(B, L,
C_a)``; one forward gives both velocities. With CFG (``guidance_scale`` above 1) a second forward
on the negative prompt, and ``uncond + g (cond - uncond)`` for both streams. The video and the
audio step on the same sigmas (the audio scheduler is a copy of the video's).

**Image-to-video** (text alone, or text and a first frame; no last frame): the pipeline appends
the image's latent frame *after* the generated ones, as a clean tail frame with token type 1, a
mask of ones and the rotary position of frame 0, overwritten by the image at every step and
dropped before decoding. So the image is a transformer input, never a latent frame of the video:
the conditioning's ``reference`` (:meth:`Kandinsky6Family.encode_images`), put back by the
denoiser at each forward, its velocity dropped. The sampler, log-probabilities and losses cover the
generated frames, all of them.

One departure from the pipeline, on purpose: its ``encode_image`` *draws* the image's latents from
the VAE's posterior with the video's generator (before the noise). A trainer's conditioning is one
per prompt and image, shared by a group and recomputed in the update, so a per-sample draw would
be an action no log-probability records. The jobs take the posterior's **mode**, in the sampler
and in ``bon`` alike (``bon`` runs the pipeline with its ``encode_image`` taking the mode:
:func:`reference_latents`), so a seed still names one video and ``bon``'s video is the sampler's
at noise 0 (tests/gen/test_kandinsky6.py pins both).

**Audio in the jobs**, as LTX-2's (:mod:`cac_align.gen.families.ltx2`): the audio latents are the
side stream, stepped on the deterministic (ODE) path by flow-grpo and nft and given back to the
transformer when a step is recomputed; :meth:`Kandinsky6Family.decode_audio` decodes them with the
audio VAE and the vocoder at the audio VAE's rate; ``bon`` writes the soundtrack into the mp4 (AAC)
and beside it (``.wav``); ``dpo`` trains the video stream with the audio input the noise of the
pair's level on silence (zero latents). The LoRA adapts the video branch
(:data:`VIDEO_BRANCH`).

**pi-Flow checkpoints** (``PiflowScheduler``, diffusers 0.42.1 ``schedulers/scheduling_piflow.py``):
the transformer outputs ``n_grid`` clean-sample predictions per channel, and a step integrates a
network-free policy between two grid points of a fixed schedule in up to 128 Euler substeps
(``policy_rollout_fm``). There is no one velocity a step takes, so Flow-GRPO's SDE step (a Gaussian
around one Euler step of the velocity) has no counterpart whose noise-0 limit is the pipeline's
step; and NFT's loss compares velocities at any noise level, where the distilled output is defined
only on its own schedule's segments. Training on a pi-Flow checkpoint is therefore refused in one
line naming the SFT checkpoint (:data:`SFT_CHECKPOINT`): as a trainer's recipe loads (its config asks
the family's :attr:`~Kandinsky6Family.lora_target_modules`), and by the denoiser and the schedule
should a recipe name its LoRA's modules itself. ``bon`` samples it as the release does (16 steps,
guidance 1.0: the pipeline's docstring).

**The release settings** (what a recipe leaves unset takes), each from the authors' README
(github.com/kandinskylab/kandinsky-6 at 00e3344: "Pro defaults are 864x480, 125 frames at 24 fps, 50
steps, and guidance 5.0"; Pro is 29B parameters, Lite 3B) and diffusers 0.42.1's
``pipeline_kandinsky6_ti2va.py``:

| setting | SFT | pi-Flow distilled | source |
| --- | --- | --- | --- |
| size (H x W), frames | 480 x 864, 125 | the same | the README (diffusers' docstring example: 480 x 864, 121; its ``__call__`` defaults 512 x 768, 121) |
| fps | 24 | 24 | the README; ``__call__``'s ``frame_rate=24.0`` (the audio's length follows it) |
| steps | 50 | 16 | the README; ``__call__``'s ``num_inference_steps`` doc ("Use `16` with the distilled checkpoints") |
| guidance | 5.0 | 1.0 | the README; ``__call__``'s ``guidance_scale`` doc ("Must be `1.0` with a PiflowScheduler") |
| text tokens | 1024 | 1024 | ``__call__``'s ``max_sequence_length=1024`` (after the template's 129) |
| negative prompt | the pipeline's ``_DEFAULT_NEGATIVE_PROMPT`` | (no CFG) | ``encode_prompt`` |
| shift | the checkpoint's scheduler | the same | its ``scheduler_config.json``; ``flow_shift`` overrides |
| audio rate | 44,100 Hz | the same | ``audio_vae.config.sample_rate`` (``MMAudioVAE``'s default 44,100) |

An empty ``negative_prompt`` is refused in one line: the pipeline replaces it by its default
(``negative_prompt or self._DEFAULT_NEGATIVE_PROMPT``), so "" could not mean "none" here.

**Repair** is refused in one line (:func:`regenerator_for_index`): the pipeline conditions on one first
frame (a reference frame after the video), not on the frames ``repair`` keeps before and after a window.

**Parallel.** FSDP2 shards one unit per ``Kandinsky6TransformerEncoderBlock`` and
``Kandinsky6FusedTransformerDecoderBlock`` (the transformer's ``_no_split_modules``). Context
parallel is refused in one line: diffusers 0.42.1 declares no ``_cp_plan`` for this transformer.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from cac_align.gen.experts import Denoiser
from cac_align.gen.family import NoContextParallel, image_runs
from cac_align.loading import check_weights_source, resolve_dtype, weights_error

__all__ = ["AUDIO_BRANCH", "FAMILIES", "KANDINSKY6", "KANDINSKY6_DISTILLED", "SFT_CHECKPOINT", "TINY_KANDINSKY6_BUILDERS", "VIDEO_BRANCH", "Kandinsky6Denoiser",
           "Kandinsky6Family", "build_tiny_kandinsky6_pipeline", "family_for_index", "reference_latents", "regenerator_for_index"]

PIPELINE = "Kandinsky6TI2VAPipeline"
SFT_CHECKPOINT = "kandinskylab/Kandinsky-6.0-Pro-5s-Diffusers"

# The video stream's layers of every fused block: its self-attention, its cross-attention to the
# text and its feed-forward. The audio branch (audio_dec_block), the cross-modal attentions and the
# text blocks keep their weights (as LTX-2's LoRA adapts its video branch).
VIDEO_BRANCH = tuple(f"video_dec_block.{attention}.{layer}" for attention in ("self_attention", "cross_attention")
                     for layer in ("to_query", "to_key", "to_value", "out_layer")) + (
    "video_dec_block.feed_forward.net.0.proj", "video_dec_block.feed_forward.net.2")

# The audio stream's layers of every fused block, which a LoRA adds where a recipe trains the sound
# (``audio: trained``, docs/audio.md): its self-attention, its cross-attention to the text and its feed-forward.
AUDIO_BRANCH = tuple(f"audio_dec_block.{attention}.{layer}" for attention in ("self_attention", "cross_attention")
                     for layer in ("to_query", "to_key", "to_value", "out_layer")) + (
    "audio_dec_block.feed_forward.net.0.proj", "audio_dec_block.feed_forward.net.2")

_NO_CONTEXT_PARALLEL = ("parallel.context_parallel must be 1 for Kandinsky 6: diffusers 0.42.1 declares no _cp_plan for "
                        "Kandinsky6Transformer3DModel (its fused blocks attend over the video, the audio and two text branches), so no "
                        "context-parallel split of it is defined; shard it with parallel.shard: fsdp2 instead")


def _no_training(title: str) -> str:
    return (f"{title} samples with PiflowScheduler, whose step integrates a policy of n_grid predictions over substeps (no one velocity a "
            f"step takes): Flow-GRPO's SDE step and NFT's loss are not defined for it, so it is not trained here; train the SFT checkpoint "
            f"(generator.name={SFT_CHECKPOINT}) and sample this one with bon")


@dataclass(frozen=True)
class Kandinsky6Family(NoContextParallel):
    """Kandinsky 6 as a :class:`~cac_align.gen.family.GeneratorFamily` (module docstring).

    Attributes:
        distilled: a pi-Flow-distilled checkpoint (``PiflowScheduler``): ``bon`` only.
    """

    context_parallel_refusal: ClassVar[str] = _NO_CONTEXT_PARALLEL  # both context-parallel hooks refuse (NoContextParallel)
    name: str
    title: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    distilled: bool = False
    pipeline_class: str = PIPELINE
    experts: int = 1
    spatial_multiple: int = 16  # the VAE's 8x times the transformer's 2 x 2 patch (the pipeline's check_inputs)
    frame_multiple: int = 4  # the VAE keeps frame 0 and compresses each next 4 into one latent frame
    audio: bool = True
    min_inference_steps: int = 1
    block_classes: tuple[str, ...] = ("Kandinsky6TransformerEncoderBlock", "Kandinsky6FusedTransformerDecoderBlock")
    encoder_components: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    image_input: str = "optional"
    last_image: bool = False
    extra_components: tuple[str, ...] = ()

    @property
    def lora_target_modules(self) -> tuple[str, ...]:
        """The video branch (:data:`VIDEO_BRANCH`). A pi-Flow checkpoint has none to adapt (module docstring):
        a trainer's config asks this when its recipe leaves ``lora.target_modules`` unset, so the recipe is
        refused as it loads, in one line naming the SFT checkpoint (the denoiser refuses it otherwise)."""
        if self.distilled:
            from cac_align.config import RecipeError

            raise RecipeError(_no_training(self.title))
        return VIDEO_BRANCH

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline in ``source`` (a folder or hub id), safetensors only; its VAEs and vocoder in ``vae_dtype``."""
        import diffusers

        folder = check_weights_source(source, key)
        try:
            pipe = diffusers.Kandinsky6TI2VAPipeline.from_pretrained(folder, dtype=resolve_dtype(dtype), use_safetensors=True, **(components or {}))
        except (OSError, ValueError) as exc:
            raise weights_error(source, key, exc) from exc
        for name in ("vae", "audio_vae", "vocoder"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(resolve_dtype(vae_dtype))
        if pipe.audio_vae is None or pipe.vocoder is None:
            raise weights_error(source, key, ValueError("its audio_vae or vocoder is missing: the jobs make the video's sound"))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_KANDINSKY6_BUILDERS[name](seed)

    # -- what the jobs ask -----------------------------------------------------------------
    def denoiser(self, pipe: Any) -> "Kandinsky6Denoiser":
        self._check_trainable(pipe)
        return Kandinsky6Denoiser(pipe.transformer, self)

    def _check_trainable(self, pipe: Any) -> None:
        from cac_align.config import RecipeError

        if self.distilled or type(pipe.scheduler).__name__ == "PiflowScheduler":
            raise RecipeError(_no_training(self.title))

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """CFG's scale (``guided=False``: 1, one forward a step) and the frame rate the audio's length follows."""
        return {"guidance_scale": float(config.guidance_scale) if guided else 1.0, "frame_rate": float(config.fps if fps is None else fps)}

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, Any]:
        """Each prompt as the pipeline's ``_get_prompt_embeds`` encodes it: ``embeds`` ``(B, L, D)`` (Qwen2.5-VL's last
        hidden state after the template), ``pooled`` ``(B, D2)`` (CLIP's) and ``text_mask`` ``(B, L)`` bool (the pipeline's
        padding mask, all True where it gives none); with CFG the negative prompt's (None: the pipeline's default)."""
        from cac_align.gen.family import Conditioning

        def encode(texts: list[str]) -> Conditioning:
            with torch.no_grad():
                embeds, pooled, mask = pipe._get_prompt_embeds(texts, pipe.tokenizer, pipe.text_encoder, pipe.tokenizer_2, pipe.text_encoder_2,
                                                               max_sequence_length, pipe._execution_device)
            if mask is None:
                mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
            return Conditioning(embeds=embeds, pooled=pooled, text_mask=mask)

        cond = encode(list(prompts))
        if guidance["guidance_scale"] <= 1.0:
            return cond, None
        return cond, encode([_negative(pipe, negative_prompt)] * len(prompts))

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """Each row's first frame as the image-to-video call conditions on it (module docstring): its
        ``reference`` latents ``(B, C, 1, H', W')`` float32 (:func:`reference_latents`)."""
        from diffusers.utils import load_image

        from cac_align.gen.family import Conditioning

        encoded: dict[Any, torch.Tensor] = {}
        for image in images:
            if image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            if image not in encoded:
                encoded[image] = reference_latents(pipe, load_image(image.image), config.height, config.width).float()
        return Conditioning(reference=torch.cat([encoded[image] for image in images]).permute(0, 3, 1, 2).unsqueeze(2))  # (B, C, 1, H', W')

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls (denoising steps) one sample of ``num_inference_steps`` makes: the
        length of :meth:`schedule`'s timesteps (one a step)."""
        return num_inference_steps

    def schedule(self, pipe: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's own (``retrieve_timesteps(scheduler, num_inference_steps)``): ``(sigmas (N + 1,), timesteps (N,))``."""
        from diffusers.pipelines.kandinsky6.pipeline_kandinsky6_ti2va import retrieve_timesteps

        self._check_trainable(pipe)
        scheduler = copy.deepcopy(pipe.scheduler)
        timesteps, _ = retrieve_timesteps(scheduler, config.num_inference_steps, "cpu")
        return scheduler.sigmas.float().cpu(), timesteps.float().cpu()

    def _latent_size(self, pipe: Any, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        ratio = pipe.vae_scale_factor_spatial
        return (num_frames - 1) // pipe.vae_scale_factor_temporal + 1, height // ratio, width // ratio

    def side_shape(self, pipe: Any, num_frames: int, fps: float) -> tuple[int, int]:
        """One video's audio latents ``(L, C_a)``: ``L = ceil(frames / fps x rate / hop)`` as the pipeline sizes
        them (``frames`` of the latent grid: ``(F' - 1) x 4 + 1``), one per ``latent_hop_length`` samples."""
        frames = ((num_frames - 1) // pipe.vae_scale_factor_temporal) * pipe.vae_scale_factor_temporal + 1
        length = math.ceil(frames / float(fps) * pipe.audio_sample_rate / pipe.audio_latent_hop_length)
        return length, int(pipe.transformer.config.in_audio_dim)

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's draws (``prepare_latents``, ``prepare_audio_latents``: each generator's video noise in the
        transformer's layout and dtype, then its audio noise): video ``(B, C, F', H', W')``, audio ``(B, L, C_a)``, float32."""
        frames, height, width = self._latent_size(pipe, config.num_frames, config.height, config.width)
        channels, dtype = pipe.transformer.config.in_visual_dim, pipe.transformer.dtype
        length, audio_channels = self.side_shape(pipe, config.num_frames, config.fps)
        video, audio = [], []
        for g in generators:
            video.append(torch.randn((1, frames, height, width, channels), generator=g, device=g.device, dtype=dtype))
        for g in generators:
            audio.append(torch.randn((1, length, audio_channels), generator=g, device=g.device, dtype=dtype))
        device = pipe._execution_device
        return torch.cat(video).to(device).float().permute(0, 4, 1, 2, 3), torch.cat(audio).to(device).float()

    # -- latents and media ------------------------------------------------------------------
    def decode(self, pipe: Any, latents: torch.Tensor, side: Any = None, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Final video latents ``(B, C, F', H', W')`` to uint8 frames, as the pipeline decodes them
        (``vae.decode(latents / scaling_factor)``, its video processor)."""
        from cac_align.gen.generator import frames_to_uint8

        vae = pipe.vae
        with torch.no_grad():
            z = latents.to(next(vae.parameters()).device, vae.dtype) / vae.config.scaling_factor
            video = vae.decode(z, return_dict=False)[0]
            frames = pipe.video_processor.postprocess_video(video, output_type="pt")
        return frames_to_uint8(frames)

    @property
    def audio_lora_target_modules(self) -> tuple[str, ...]:
        """The audio branch (:data:`AUDIO_BRANCH`), added to the LoRA where the sound is trained; a pi-Flow
        checkpoint trains nothing (:attr:`lora_target_modules` refuses it first)."""
        return AUDIO_BRANCH

    def side_frames(self, side: torch.Tensor) -> torch.Tensor:
        """Audio latents ``(B, L, C_a)`` as ``(B, L, C_a)``: already time first, spread evenly over the clip."""
        return side

    def decode_audio(self, pipe: Any, side: torch.Tensor) -> tuple[np.ndarray, int]:
        """Final audio latents ``(B, L, C_a)`` to mono waveforms float32 ``(B, 1, samples)`` in [-1, 1] and their rate
        (the audio VAE's ``sample_rate``), as the pipeline decodes them (``audio_vae.decode(z / scaling_factor)``, the vocoder)."""
        audio_vae, vocoder = pipe.audio_vae, pipe.vocoder
        with torch.no_grad():
            z = side.to(next(audio_vae.parameters()).device, audio_vae.dtype).permute(0, 2, 1) / audio_vae.config.scaling_factor
            mel = audio_vae.decode(z, return_dict=False)[0]
            wave = vocoder(mel.to(vocoder.dtype), return_dict=False)[0]  # (B, 1, samples)
        return wave.float().clamp(-1, 1).cpu().numpy(), int(pipe.audio_sample_rate)

    def encode_video(self, pipe: Any, frames: Any) -> torch.Tensor:
        """uint8 frames ``(F, H, W, 3)`` (``4k + 1``) to latents ``(C, F', H', W')`` float32 as the sampler's (the VAE's
        posterior mode times its ``scaling_factor``, the inverse of :meth:`decode`)."""
        vae = pipe.vae
        x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
        with torch.no_grad():
            x = x.to(next(vae.parameters()).device, vae.dtype) / 127.5 - 1.0
            return (vae.encode(x).latent_dist.mode().float() * vae.config.scaling_factor)[0]

    def audio_decode(self, modules: Mapping[str, Any], batch: int, num_frames: int, fps: float, dtype: Any) -> tuple[Any, torch.Tensor, list]:
        """What the soundtracks' decode of ``batch`` videos of ``num_frames`` at ``fps`` runs, on the meta device, for the
        memory plan to trace (:func:`cac_align.plan.trace.audio_decode_bytes`): ``(decode, latents, kept)``, the audio
        VAE's decode and the vocoder over copies of the pipeline's own modules in ``dtype``, latents sized as
        :meth:`side_shape` sizes them (one per ``2 x hop_length`` samples of the audio VAE's ``sample_rate``), and the
        modules' own tensors (there before the decode)."""
        resolved = getattr(torch, str(dtype)) if isinstance(dtype, str) else dtype
        # a copy on the meta device, buffers too (MMAudioVAE computes its mel filterbank on the CPU as it is built)
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its warning about casting modules it keeps in float32 says nothing on the meta device
        try:
            audio_vae, vocoder = (copy.deepcopy(modules[name]).to(device="meta", dtype=resolved) for name in ("audio_vae", "vocoder"))
        finally:
            diffusers_logging.set_verbosity(level)
        config = audio_vae.config
        frames = (num_frames - 1) // self.frame_multiple * self.frame_multiple + 1
        length = math.ceil(frames / float(fps) * config.sample_rate / (2 * config.hop_length))  # MMAudioVAE.latent_hop_length
        latents = torch.empty(batch, config.latent_channels, length, device="meta", dtype=resolved)
        kept = [*audio_vae.parameters(), *audio_vae.buffers(), *vocoder.parameters(), *vocoder.buffers()]
        return (lambda z: vocoder(audio_vae.decode(z, return_dict=False)[0], return_dict=False)[0]), latents, kept

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial, tuple(pipe.transformer_patch_size)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """The pipeline's videos and soundtracks, one generator per (prompt, seed); with ``images``, one call per run of
        rows that share an image, the image given once per row (diffusers 0.42.1 fails on one image for two prompts).
        The image's latents are the posterior's mode (module docstring: :func:`reference_latents`)."""
        from cac_align.gen.family import Generated
        from cac_align.gen.generator import frames_to_uint8

        animate = _with_mode_reference(pipe)
        device = pipe._execution_device
        generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        negative = _negative(pipe, config.negative_prompt) if config.guidance_scale > 1.0 else None  # without CFG the pipeline encodes none
        settings = dict(height=config.height, width=config.width, num_frames=int(config.num_frames), frame_rate=float(config.fps),
                        num_inference_steps=config.num_inference_steps, guidance_scale=float(config.guidance_scale),
                        max_sequence_length=config.max_sequence_length, output_type="pt")
        runs = [(0, len(prompts))] if images is None else image_runs(images)
        frames, audio = [], []
        for lo, hi in runs:
            image = None
            if images is not None:
                from diffusers.utils import load_image

                image = [load_image(images[lo].image)] * (hi - lo)
            out = animate(prompt=list(prompts[lo:hi]), image=image, negative_prompt=None if negative is None else [negative] * (hi - lo),
                          generator=generators[lo:hi], **settings)
            frames.append(frames_to_uint8(out.frames))
            audio.append(out.audio.float().clamp(-1, 1).cpu().numpy()[:, None])  # (B, samples) mono -> (B, 1, samples)
        return Generated(np.concatenate(frames), np.concatenate(audio), int(pipe.audio_sample_rate))


def _negative(pipe: Any, negative_prompt: str | None) -> str:
    """The negative prompt the pipeline encodes: its default for None; "" refused (module docstring)."""
    if negative_prompt is None:
        return pipe._DEFAULT_NEGATIVE_PROMPT
    if not negative_prompt.strip():
        raise ValueError("generator.negative_prompt='' cannot turn Kandinsky 6's negative prompt off: its pipeline replaces an empty one by its "
                         "default; leave it unset (the default), give one, or set guidance_scale: 1.0 (no CFG)")
    return negative_prompt


def reference_latents(pipe: Any, image: Any, height: int, width: int) -> torch.Tensor:
    """The image's latents as the pipeline's ``encode_image`` builds them (its video processor's
    ``preprocess`` to ``height`` x ``width``, centre-cropped for a PIL image, through the VAE, times
    its ``scaling_factor``), with the posterior's **mode** where the pipeline draws a sample (module
    docstring). Returns ``(1, H', W', C)`` in the VAE's dtype, on the pipeline's device."""
    import PIL.Image
    from diffusers.pipelines.kandinsky6.pipeline_kandinsky6_ti2va import retrieve_latents

    vae = pipe.vae
    pil = isinstance(image, PIL.Image.Image)
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(image, height=height, width=width, resize_mode="crop" if pil else "default")
        pixels = pixels.to(next(vae.parameters()).device, vae.dtype).unsqueeze(2)
        z = retrieve_latents(vae.encode(pixels), sample_mode="argmax") * vae.config.scaling_factor
    return z[:, :, 0].permute(0, 2, 3, 1).to(pipe._execution_device)


def _with_mode_reference(pipe: Any) -> Any:
    """``Kandinsky6TI2VAPipeline`` over ``pipe``'s components whose ``encode_image`` takes the posterior's mode
    (:func:`reference_latents`) and draws nothing from the generators; everything else the pipeline's own."""
    animate = _mode_reference_class()(**pipe.components)
    animate.set_progress_bar_config(disable=True)
    return animate


@functools.lru_cache(maxsize=1)
def _mode_reference_class() -> type:
    from diffusers import Kandinsky6TI2VAPipeline

    class ReferenceAtItsMode(Kandinsky6TI2VAPipeline):
        def encode_image(self, image: Any, height: int, width: int, device: Any, dtype: Any, num_videos_per_prompt: int = 1,
                         generator: Any = None) -> torch.Tensor:
            rows = image if isinstance(image, list) else [image]
            latents = torch.cat([reference_latents(self, row, height, width) for row in rows]).to(device, dtype)
            return latents.repeat_interleave(num_videos_per_prompt, dim=0)

    return ReferenceAtItsMode


class Kandinsky6Denoiser(Denoiser):
    """The velocities of Kandinsky 6's video and audio at a step, as the pipeline's loop computes them
    (module docstring): ``denoiser(latents, timestep, cond, negative, guidance, dtype, side)`` ->
    ``(video velocity (B, C, F', H', W'), audio velocity (B, L, C_a))``.

    Args:
        transformer: the pipeline's ``Kandinsky6Transformer3DModel``.
        family: the family that built it.
    """

    def __init__(self, transformer: Any, family: Any):
        super().__init__()
        self.transformer = transformer
        self.family = family

    def _inputs(self, latents: torch.Tensor, cond: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """The transformer's video input (``(B, F' [+ 1], H', W', C [x 2 + 1])``) and its reference-frame keywords."""
        x = latents.permute(0, 2, 3, 4, 1)  # (B, F', H', W', C): the transformer's layout
        batch, frames = x.shape[:2]
        extra: dict[str, Any] = {}
        reference = cond.has("reference")
        if reference:  # the image's clean latent frame after the generated ones (the pipeline's tail_cond)
            x = torch.cat([x, cond.reference.to(x.device, x.dtype).permute(0, 2, 3, 4, 1)], dim=1)
            types = torch.zeros((batch, frames + 1), dtype=torch.long, device=x.device)
            types[:, -1] = 1
            patch_t, patch_h, patch_w = self.transformer.config.patch_size
            extra = {"visual_token_type_ids": types, "visual_rope_pos": (
                torch.cat([torch.arange(frames // patch_t, device=x.device), torch.zeros(1, dtype=torch.long, device=x.device)]),
                torch.arange(x.shape[2] // patch_h, device=x.device), torch.arange(x.shape[3] // patch_w, device=x.device))}
        if self.transformer.config.visual_cond:  # [latent | conditioning latent (zeros) | mask]
            mask = torch.zeros((*x.shape[:-1], 1), dtype=x.dtype, device=x.device)
            if reference:
                mask[:, -1] = 1
            x = torch.cat([x, torch.zeros_like(x), mask], dim=-1)
        return x, extra

    def forward(self, latents: torch.Tensor, timestep: Any, cond: Any, negative: Any, guidance: Mapping[str, Any], dtype: Any = None,
                side: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided velocities.

        Args:
            latents: video ``(B, C, F', H', W')`` float32 (the generated frames); side: audio ``(B, L, C_a)``.
            timestep: the scheduler's ``t = 1000 sigma``, a scalar or ``(B,)``.
            cond / negative: ``embeds``, ``pooled``, ``text_mask`` (:meth:`Kandinsky6Family.encode_prompts`); ``cond`` also
                ``reference`` ``(B, C, 1, H', W')`` for image-to-video; negative None without CFG.
        """
        if side is None:
            raise ValueError("Kandinsky 6 denoises video and audio together: pass the audio latents (side)")
        dtype = dtype or latents.dtype
        batch, frames = latents.shape[0], latents.shape[2]
        x, extra = self._inputs(latents, cond)
        t = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).expand(batch)
        audio = side.to(latents.device, dtype)

        def velocity(text: Any) -> tuple[torch.Tensor, torch.Tensor]:
            mask = text.text_mask.to(latents.device)
            return self.transformer(hidden_states=x.to(dtype), audio_hidden_states=audio, encoder_hidden_states=text.embeds.to(latents.device, dtype),
                                    pooled_projections=text.pooled.to(latents.device, dtype), timestep=t,
                                    encoder_attention_mask=None if bool(mask.all()) else mask, return_dict=False, **extra)

        v, a = velocity(cond)
        scale = guidance["guidance_scale"]
        if scale > 1.0:
            v_neg, a_neg = velocity(negative)
            v, a = v_neg + scale * (v - v_neg), a_neg + scale * (a - a_neg)
        return v[:, :frames].float().permute(0, 4, 1, 2, 3), a.float()  # the reference frame's velocity dropped


# ---------------------------------------------------------------------------------------
# The tiny layout (tiny-random:kandinsky6, its pi-Flow twin tiny-random:kandinsky6-distill):
# diffusers' classes at toy widths, the real compressions and audio rate, tokenizers built here
# ---------------------------------------------------------------------------------------
_QWEN_HIDDEN, _CLIP_HIDDEN, _LATENT, _AUDIO_LATENT, _MEL_BINS = 32, 16, 4, 4, 8
# Pre-tokenizes the pipeline's chat template into exactly its 129 cropped tokens (words, a word's
# newline with it, runs of punctuation, lone newlines; the two chat markers whole), so that what is
# left after the crop is the prompt, as with Qwen's own tokenizer.
_QWEN_SPLIT = r"\w+\n?|[^\w\s]+|\n"
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<unk>")


def _qwen_tokenizer() -> Any:
    """A word-level tokenizer over the template's words and the tiny prompts', padding on the right
    (the pipeline crops the template from the front)."""
    import re

    from diffusers.pipelines.kandinsky6.pipeline_kandinsky6_ti2va import _PROMPT_TEMPLATE
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from cac_align.gen.tiny import _TINY_WORDS

    words = re.findall(_QWEN_SPLIT, re.sub(r"<\|im_(start|end)\|>", " ", _PROMPT_TEMPLATE.replace("{}", "")))
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*_QWEN_SPECIALS, *words, *_TINY_WORDS, ".", ",", "!", "?", "'", "-"]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
                                                     pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated")])
    backend.add_special_tokens(list(_QWEN_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<unk>",
                                   padding_side="right", model_max_length=4096,
                                   extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                                         "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})


def _qwen(seed: int) -> tuple[Any, Any]:
    """Qwen2.5-VL of width 32, 2 layers, and its processor over :func:`_qwen_tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from cac_align.vlm.tiny import TINY_CHAT_TEMPLATE, _token_ids

    tokenizer = _qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=_QWEN_HIDDEN, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0]),
        text_config=dict(hidden_size=_QWEN_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        tie_word_embeddings=False, **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2),
                                    video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2), tokenizer=tokenizer,
                                    chat_template=TINY_CHAT_TEMPLATE)
    return encoder, processor


def _clip() -> tuple[Any, Any]:
    """CLIP's text model of width 16 and a character-level ``CLIPTokenizer`` built in-process (77 tokens)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in "abcdefghijklmnopqrstuvwxyz0123456789.,'!?-":
        for token in (character, character + "</w>"):
            vocab.setdefault(token, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=_CLIP_HIDDEN, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return model.eval(), tokenizer


def _transformer(n_grid: int) -> Any:
    """Width 32 (2 heads of 16: rope axes 4 + 6 + 6), 1 text block a branch, 2 fused blocks, the released switches on
    (``text_token_padding``, ``ca_rope``, ``cross_gates``, ``fix_modulation``), image conditioning; pi-Flow: ``n_grid``x outputs."""
    from diffusers import Kandinsky6Transformer3DModel

    from cac_align.gen.tiny import transformer_made

    return transformer_made(lambda: Kandinsky6Transformer3DModel(
        in_visual_dim=_LATENT, out_visual_dim=_LATENT * n_grid, in_text_dim=_QWEN_HIDDEN, in_text_dim2=_CLIP_HIDDEN, time_dim=16, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6), visual_cond=True, in_audio_dim=_AUDIO_LATENT,
        out_audio_dim=_AUDIO_LATENT * n_grid, text_token_padding=True, ca_rope=True, cross_gates=True, fix_modulation=True,
        visual_token_type_num_embeddings=2))


def build_tiny_kandinsky6_pipeline(seed: int = 0, distilled: bool = False) -> Any:
    """``tiny-random:kandinsky6``: ``Kandinsky6TI2VAPipeline`` of diffusers' classes at toy widths, with the real
    compressions (8x in space, 4x in time) and audio front end (44,100 Hz, a 2048-sample FFT, hop 512, latents every
    1024 samples; the vocoder upsamples 8 x 8 x 8 = 512); the video VAE at diffusers' own test widths. ``distilled``:
    ``tiny-random:kandinsky6-distill``, the same with ``PiflowScheduler(n_grid=10)`` and a transformer of 10x outputs."""
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, Kandinsky6TI2VAPipeline, MMAudioVAE, MMAudioVocoder,
                           PiflowScheduler)

    text_encoder, tokenizer = _qwen(seed)
    text_encoder_2, tokenizer_2 = _clip()
    transformer = _transformer(10 if distilled else 1)
    vae = AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=_LATENT, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4)
    audio_vae = MMAudioVAE(mel_bins=_MEL_BINS, latent_channels=_AUDIO_LATENT, hidden_channels=8, channel_multipliers=(1, 2), layers_per_block=1,
                           sample_rate=44_100, n_fft=2048, hop_length=512)
    vocoder = MMAudioVocoder(num_mels=_MEL_BINS, upsample_initial_channel=16, upsample_rates=(8, 8, 8), upsample_kernel_sizes=(16, 16, 16),
                             resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),))
    scheduler = PiflowScheduler(shift=5.0, n_grid=10) if distilled else FlowMatchEulerDiscreteScheduler(shift=5.0)
    pipe = Kandinsky6TI2VAPipeline(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
                                   text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, scheduler=scheduler, audio_vae=audio_vae.eval(),
                                   vocoder=vocoder.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_KANDINSKY6_BUILDERS = {
    "tiny-random:kandinsky6": lambda seed=0: build_tiny_kandinsky6_pipeline(seed),
    "tiny-random:kandinsky6-distill": lambda seed=0: build_tiny_kandinsky6_pipeline(seed, distilled=True),
}

# -- the families and how a model's files name them ----------------------------------------
# kandinskylab/kandinsky-6 README at 00e3344 ("Pro defaults are 864x480, 125 frames at 24 fps, 50 steps, and guidance 5.0"); 1024 text
# tokens: the pipeline's __call__ (module docstring's table)
_RELEASE = {"height": 480, "width": 864, "num_frames": 125, "fps": 24.0, "max_sequence_length": 1024, "flow_shift": None}
KANDINSKY6 = Kandinsky6Family("kandinsky6", "Kandinsky 6", {**_RELEASE, "num_inference_steps": 50, "guidance_scale": 5.0},
                              tiny_names=("tiny-random:kandinsky6",), hub_ids=(SFT_CHECKPOINT, "kandinskylab/Kandinsky-6.0-Lite-5s-Diffusers"))
KANDINSKY6_DISTILLED = Kandinsky6Family("kandinsky6-distill", "Kandinsky 6 (pi-Flow distilled)", {**_RELEASE, "num_inference_steps": 16,
                                                                                                  "guidance_scale": 1.0},
                                        tiny_names=("tiny-random:kandinsky6-distill",), hub_ids=("kandinskylab/Kandinsky-6.0-Pro-distill-5s-Diffusers",),
                                        distilled=True)
FAMILIES = (KANDINSKY6, KANDINSKY6_DISTILLED)


def family_for_index(index: Mapping[str, Any]) -> Kandinsky6Family | None:
    """Kandinsky 6 from a ``model_index.json`` naming ``Kandinsky6TI2VAPipeline``: the pi-Flow-distilled
    family when its scheduler is ``PiflowScheduler``, else the SFT one; None for any other pipeline."""
    if index.get("_class_name") != PIPELINE:
        return None
    scheduler = index.get("scheduler")
    return KANDINSKY6_DISTILLED if isinstance(scheduler, (list, tuple)) and "PiflowScheduler" in scheduler else KANDINSKY6


def regenerator_for_index(index: Mapping[str, Any]) -> None:
    """No repair pipeline: a Kandinsky 6 checkpoint named as ``regenerator.name`` is refused in one line
    saying why (its pipeline takes one first frame, not the frames kept around a window); None for any other."""
    if index.get("_class_name") == PIPELINE:
        from cac_align.gen.family import UnknownGeneratorError

        raise UnknownGeneratorError(f"a {PIPELINE}, which cannot condition on the frames repair keeps around the window (it takes one first frame, "
                                    "as a reference frame after the video, and no other): repair cannot regenerate a window with it; name "
                                    "Wan-VACE or an LTX-2 checkpoint as regenerator.name")
    return None
