"""The Helios family (issue #106): PKU-YuanGroup's autoregressive text-to-video model, as ``bon`` and ``flow-grpo`` run it.

diffusers 0.42.1's ``HeliosPipeline`` (``pipelines/helios/pipeline_helios.py``) holds Wan-2.1's parts (a UMT5 text
encoder, ``AutoencoderKLWan``: 8x in space, 4x in time, 16 latent channels) around ``HeliosTransformer3DModel``, a
Wan2.1-T2V-14B fine-tune (40 blocks), and ``HeliosScheduler`` (UniPC by default). A checkpoint's ``model_index.json``
names the pipeline class (:func:`family_for_index`), whatever its folder or hub id is called.

**A video is chunks.** The pipeline does not denoise the whole clip at once: it makes chunks of 9 latent frames (33
pixel frames each), one after the other, each with its own full denoising loop (the same schedule every chunk, the
scheduler reset) conditioned on a *history*: the clean final latents of the chunks before it, read at three
resolutions (the last 16, 2 and 1 latent frames, each through its own patch embedding) plus the first latent frame of
the first chunk. Each chunk is decoded by the VAE on its own; the joined frames are cut to ``4k + 1``. So a
``num_frames`` request makes ``K = ceil(num_frames / 33)`` chunks and ``33K`` frames trimmed to ``4k + 1``: 33, 65, 97,
129, 165, ... (:func:`frames_made`). Any other count would come back with a length the recipe did not ask for, so it
is refused in one line naming the two neighbours (:meth:`HeliosFamily.check_settings`, as the config is read).

**Best-of-N.** ``bon`` runs the pipeline's own ``__call__`` (:meth:`HeliosFamily.generate`): text-to-video rows in one
call with one ``torch.Generator`` per row, so a video depends on its prompt and seed only (each row draws its chunks'
noise from its own generator, in chunk order); image-to-video one row per call with one generator (diffusers 0.42.1
draws the image's noise level with ``torch.rand(generator=...)``, which takes one generator, not a list). The image
conditions every chunk's history and is not a frame of the output.

**Flow-GRPO** (docs/helios.md, "Flow-GRPO, chunk by chunk"). The trainers' sampler
(:func:`cac_align.gen.generator.sample_with_log_probs`) runs one loop per chunk (:meth:`HeliosFamily.chunks`), drawing
each chunk's noise (:meth:`HeliosFamily.initial_latents`) and rebuilding its history from the earlier chunks' final
latents (:meth:`HeliosFamily.chunk_conditioning`), which :class:`HeliosDenoiser` reads from the step's conditioning;
every chunk steps the pipeline's own schedule (:meth:`HeliosFamily.schedule`, float64 sigmas). The history is state,
as the prompt is: made by earlier actions without gradient and rebuilt from the record in the training pass, never
trained through. Flow-GRPO's square-root noise scale takes the schedule's first sigma (0.99985) as pure noise
(:attr:`HeliosFamily.pure_noise_start`). A judge's window maps onto latent frames chunk by chunk
(:attr:`HeliosFamily.chunk_frames`; :mod:`cac_align.rl.credit`).

Image to video: the image's posterior mean without the release's noise on it (:meth:`HeliosFamily.encode_images`).

**nft and dpo** train each chunk on the forward process with the history of the video's own clean earlier chunks
(:func:`cac_align.gen.generator.video_conditioning`: teacher forcing, for a sampled video its sampled history); dpo's
cache encodes a video chunk by chunk (:meth:`HeliosFamily.encode_video`) and each step a pair trains one chunk, drawn.

**What does not yet.** ``repair`` is refused in one line (:func:`regenerator_for_index`): Helios has no inpainting
pipeline. Context parallel is refused in one line (diffusers' ``_cp_plan`` for this transformer names 40
blocks by index, and each forward holds the chunk's tokens and the history's). ``HeliosPyramidPipeline`` checkpoints
(Helios-Mid, Helios-Distilled) are recognized and refused for every job in one line (:func:`family_for_index`).

**The release settings** (what a recipe leaves unset takes): the authors' ``infer_helios.py``
(github.com/PKU-YuanGroup/Helios at 09f2e56732bb9e9ff6f58adcb8c1ca6a2ec701fd, its argument defaults) and diffusers
0.42.1's ``HeliosPipeline.__call__``:

| setting | value | source |
| --- | --- | --- |
| size (H x W) | 384 x 640 | ``--height`` / ``--width``; the ``__call__`` defaults too |
| frames | 97 | ``--num_frames 99``, which the pipeline makes into 3 chunks and 97 frames (4k + 1) |
| fps | 24 | ``--fps`` |
| steps | 50 (per chunk) | ``--num_inference_steps``; ``__call__``'s |
| guidance | 5.0 | ``--guidance_scale``; ``__call__``'s |
| negative prompt | the release's English one (:data:`HELIOS_NEGATIVE_PROMPT`) | ``--negative_prompt`` (``__call__`` encodes "" when none is given) |
| text tokens | 512 | ``__call__``'s ``max_sequence_length`` (UMT5, as Wan) |
| chunk, history | 9 latent frames; 16, 2, 1 | ``--num_latent_frames_per_chunk``; the script's ``history_sizes`` (``__call__``'s defaults) |

There is no flow-shift setting: the pipeline gives the scheduler its own sigmas and a shift computed from the chunk's
token count, so a scheduler's ``shift`` is never read (``generator.flow_shift`` is refused as not applying).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from cac_align.gen.experts import Denoiser
from cac_align.gen.family import NoContextParallel
from cac_align.gen.tiny import transformer_made, umt5_text_encoder, word_tokenizer
from cac_align.loading import check_weights_source, resolve_dtype, weights_error

__all__ = ["BASE_CHECKPOINT", "CHUNK_FRAMES", "CHUNK_LATENT_FRAMES", "FAMILIES", "HELIOS", "HELIOS_NEGATIVE_PROMPT", "HISTORY_SIZES", "TINY_HELIOS",
           "HeliosDenoiser", "HeliosFamily", "build_tiny_helios_pipeline", "chunk_count", "history_indices", "family_for_index", "frame_neighbours", "frames_made",
           "regenerator_for_index"]

PIPELINE = "HeliosPipeline"
PYRAMID_PIPELINE = "HeliosPyramidPipeline"
BASE_CHECKPOINT = "BestWishYsh/Helios-Base"
ISSUE = "issue #106"

# The chunk the pipeline denoises at a time (``num_latent_frames_per_chunk``) and the history it reads (``history_sizes``):
# the release's values, which are also HeliosPipeline.__call__'s defaults
CHUNK_LATENT_FRAMES = 9
CHUNK_FRAMES = (CHUNK_LATENT_FRAMES - 1) * 4 + 1  # 33: Wan's VAE decodes a chunk's 9 latent frames to 1 + 8 x 4 frames
HISTORY_SIZES = (16, 2, 1)

# The negative prompt the release samples with (infer_helios.py's --negative_prompt default, at the commit the module
# docstring names): Wan's negative prompt in English.
HELIOS_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall gray, worst quality, "
    "low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people in the background, walking backwards"
)

TINY_HELIOS = "tiny-random:helios"


def chunk_count(num_frames: int) -> int:
    """The chunks ``HeliosPipeline`` makes for a ``num_frames`` request: ``max(1, ceil(num_frames / 33))``."""
    return max(1, math.ceil(num_frames / CHUNK_FRAMES))


def frames_made(num_frames: int) -> int:
    """The frames ``HeliosPipeline`` returns for a ``num_frames`` request: its chunks' 33 frames each, joined and cut
    to the largest ``4k + 1`` (33, 65, 97, 129, 165, 197, ...)."""
    joined = chunk_count(num_frames) * CHUNK_FRAMES
    return (joined - 1) // 4 * 4 + 1


def frame_neighbours(num_frames: int) -> tuple[int | None, int]:
    """The counts Helios makes nearest ``num_frames``: the largest below it (None where there is none) and the
    smallest above it."""
    made = [frames_made(CHUNK_FRAMES * k) for k in range(1, chunk_count(num_frames) + 2)]
    return max((m for m in made if m < num_frames), default=None), min(m for m in made if m > num_frames)


_NO_CONTEXT_PARALLEL = ("parallel.context_parallel must be 1 for Helios: diffusers 0.42.1's _cp_plan for HeliosTransformer3DModel names its "
                        "40 blocks by index and each forward holds the chunk's tokens and its history's, so no split of it is defined here yet "
                        f"({ISSUE}); shard it with parallel.shard: fsdp2 instead")


@dataclass(frozen=True)
class HeliosFamily(NoContextParallel):
    """Helios as a :class:`~cac_align.gen.family.GeneratorFamily` (module docstring): ``bon`` and ``flow-grpo`` run it."""

    context_parallel_refusal: ClassVar[str] = _NO_CONTEXT_PARALLEL  # both context-parallel hooks refuse (NoContextParallel)
    name: str
    title: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    pipeline_class: str = PIPELINE
    experts: int = 1
    spatial_multiple: int = 16  # the VAE's 8x times the transformer's 2 x 2 patch (the pipeline's check_inputs: % 16)
    frame_multiple: int = 4  # every count the pipeline makes is 4k + 1 (check_settings refuses the 4k + 1 it does not make)
    audio: bool = False
    min_inference_steps: int = 1
    # one FSDP2 unit per block (the transformer's _no_split_modules, its _repeated_blocks)
    block_classes: tuple[str, ...] = ("HeliosTransformerBlock",)
    encoder_components: tuple[str, ...] = ("text_encoder",)
    image_input: str = "optional"  # text alone, or text and a first frame (bon only, for now)
    last_image: bool = False
    extra_components: tuple[str, ...] = ()
    negative_prompt: str = HELIOS_NEGATIVE_PROMPT

    # Both attentions' projections of every block, the names Wan's LoRA adapts (HeliosAttention's to_q, to_k, to_v,
    # to_out.0): what flow-grpo's LoRA adapts (lora_target_modules)
    LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
    # flow-grpo's SDE starts at the schedule's first sigma, 0.99985, as at pure noise (module docstring, "Flow-GRPO")
    pure_noise_start: bool = True
    # the VAE restarts every chunk: a judge's window maps onto latent frames chunk by chunk (cac_align.rl.credit), and the
    # memory plan traces the VAE chunk by chunk, as decode and encode_video run it (cac_align.plan.trace)
    chunk_frames: int = CHUNK_FRAMES
    vae_clip_latent_frames: int = CHUNK_LATENT_FRAMES

    @property
    def lora_target_modules(self) -> tuple[str, ...]:
        """:attr:`LORA_TARGETS`, which a trainer's config takes when its recipe leaves ``lora.target_modules`` unset."""
        return self.LORA_TARGETS

    # -- the config --------------------------------------------------------------------
    def check_settings(self, config: Any) -> None:
        """Refuses in one line, as the config is made, a ``num_frames`` the pipeline would not return as asked
        (module docstring: 33, 65, 97, 129, ...), naming the nearest counts it makes."""
        n = int(config.num_frames)
        if frames_made(n) == n:
            return
        below, above = frame_neighbours(n)
        nearest = f"{below} or {above}" if below is not None else str(above)
        raise ValueError(f"generator.num_frames={n}: {self.title} makes chunks of {CHUNK_FRAMES} frames and cuts the joined clip to 4k + 1, "
                         f"so it would return {frames_made(n)} frames, not {n}; set num_frames to {nearest}")

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline in ``source`` (a folder or hub id), safetensors only; its VAE in ``vae_dtype``."""
        import diffusers

        folder = check_weights_source(source, key)
        try:
            pipe = diffusers.HeliosPipeline.from_pretrained(folder, dtype=resolve_dtype(dtype), use_safetensors=True, **(components or {}))
        except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
            raise weights_error(source, key, exc) from exc
        pipe.vae.to(resolve_dtype(vae_dtype))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_HELIOS_BUILDERS[name](seed)

    # -- what flow-grpo asks (module docstring, "Flow-GRPO") ---------------------------------------
    def chunks(self, config: Any) -> int:
        """The denoising loops one video of ``config`` takes: its chunks (:func:`chunk_count`)."""
        return chunk_count(int(config.num_frames))

    def denoiser(self, pipe: Any) -> "HeliosDenoiser":
        return HeliosDenoiser(pipe.transformer, self)

    def schedule(self, pipe: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk's schedule, as ``HeliosPipeline.__call__`` sets it before every chunk: ``N`` sigmas evenly from
        0.999 down, shifted by ``mu`` from the chunk's token count (the scheduler's dynamic shifting), a 0 appended:
        ``(sigmas (N + 1,), timesteps (N,))`` **float64** on the CPU, as the scheduler keeps them (its Euler step rounds
        the float64 difference of two sigmas once; :func:`cac_align.rl.sde.sde_step` does the same with them)."""
        import copy

        import numpy as np
        from diffusers.pipelines.helios.pipeline_helios import calculate_shift

        steps = int(config.num_inference_steps)
        patch = pipe.transformer.config.patch_size
        side = pipe.vae_scale_factor_spatial
        tokens = CHUNK_LATENT_FRAMES * (config.height // side) * (config.width // side) // (patch[0] * patch[1] * patch[2])
        settings = pipe.scheduler.config
        mu = calculate_shift(tokens, settings.get("base_image_seq_len", 256), settings.get("max_image_seq_len", 4096),
                             settings.get("base_shift", 0.5), settings.get("max_shift", 1.15))
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(steps, device="cpu", sigmas=np.linspace(0.999, 0.0, steps + 1)[:-1], mu=mu)
        return scheduler.sigmas.cpu(), scheduler.timesteps.cpu()

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[torch.Tensor, None]:
        """One chunk's initial noise ``(B, C, 9, H / 8, W / 8)`` float32, each row drawn from its own generator as the
        pipeline's ``prepare_latents`` draws it; the sampler asks once per chunk, in chunk order, as the pipeline does."""
        side = pipe.vae_scale_factor_spatial
        shape = (pipe.transformer.config.in_channels, CHUNK_LATENT_FRAMES, config.height // side, config.width // side)
        noise = torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators])
        return noise.to(pipe._execution_device), None

    def chunk_conditioning(self, cond: Any, finals: Sequence[torch.Tensor], like: torch.Tensor) -> Any:
        """``cond`` with the history of the chunk after ``finals`` (the earlier chunks' final latents ``(B, C, 9, h, w)``,
        in order; none for the first chunk), rebuilt as the pipeline keeps it: a buffer of 19 zero frames with each
        chunk's finals appended, its last 16, 2 and 1 frames (``history_long``, ``history_mid``, the 1 of
        ``history_short``), and in front of ``history_short`` the prefix frame: zeros for the first chunk, afterwards the
        first latent frame of the first chunk. Image to video (``cond``'s ``image_latents`` and ``fake_image_latents``:
        :meth:`encode_images`): the buffer's last zero frame is the fake latent and the prefix of every chunk is the
        image's. ``like``: a latent of the chunk (its shape and device). The history is state, as the prompt is: built
        from earlier actions without gradient (module docstring)."""
        from cac_align.gen.family import Conditioning

        batch, channels, _, height, width = like.shape
        total = sum(HISTORY_SIZES)
        start = torch.zeros((batch, channels, total, height, width), dtype=torch.float32, device=like.device)
        image = cond.has("image_latents")
        if image:  # image to video: the image's clip's last latent is the buffer's last frame, the image the prefix of every chunk
            start = torch.cat([start[:, :, :-1], cond.fake_image_latents.to(like.device, torch.float32)], dim=2)
        earlier = [f.to(like.device, torch.float32).detach() for f in finals]
        long_, mid, one = torch.cat([start, *earlier], dim=2)[:, :, -total:].split(list(HISTORY_SIZES), dim=2)
        if image:
            prefix = cond.image_latents.to(like.device, torch.float32)
        else:
            prefix = earlier[0][:, :, :1] if earlier else torch.zeros_like(start[:, :, :1])
        return cond.join(Conditioning(history_short=torch.cat([prefix, one], dim=2), history_mid=mid, history_long=long_))

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """Each row's first frame as the trainers condition on it (docs/helios.md, "Image to video"): ``image_latents``
        ``(B, C, 1, h, w)``, the image encoded alone, and ``fake_image_latents`` ``(B, C, 1, h, w)``, the last latent of
        a 33-frame clip of the repeated image, each the mean of the VAE's posterior, normalized as the pipeline
        normalizes them (``prepare_image_latents``), float32. The pipeline draws a sample of the posterior and then
        noises both at a level drawn in [0.111, 0.135]; the trainers take neither draw (its
        ``add_noise_to_image_latents=False`` path), so the conditioning is a function of the image alone."""
        from diffusers.utils import load_image

        from cac_align.gen.family import Conditioning

        vae = pipe.vae
        device, dtype = next(vae.parameters()).device, vae.dtype
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(device, dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(device, dtype)
        encoded: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        for image in images:
            if image is None:
                raise ValueError(f"{self.title}: every row of an image-to-video batch needs its image")
            if image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            if image in encoded:
                continue
            pixels = pipe.video_processor.preprocess(load_image(image.image), height=config.height, width=config.width).unsqueeze(2).to(device, dtype)
            with torch.no_grad():
                alone = (vae.encode(pixels).latent_dist.mode() - mean) * inv_std
                clip = pixels.repeat(1, 1, CHUNK_FRAMES, 1, 1)
                fake = ((vae.encode(clip).latent_dist.mode() - mean) * inv_std)[:, :, -1:]
            encoded[image] = (alone.float(), fake.float())
        return Conditioning(image_latents=torch.cat([encoded[i][0] for i in images]), fake_image_latents=torch.cat([encoded[i][1] for i in images]))

    def encode_video(self, pipe: Any, frames: Any) -> Any:
        """uint8 frames ``(F, H, W, 3)`` of a video Helios makes (33, 65, 97, ... frames) to latents ``(C, 9K, h, w)``
        float32, the inverse of :meth:`decode`: each 33-frame chunk encoded alone (the VAE restarts at every chunk, as
        the pipeline decodes), the last chunk's cut frames its last frame repeated, the posterior's mean normalized as
        the pipeline normalizes (dpo's latent cache)."""
        import numpy as np

        count = len(frames)
        if frames_made(count) != count:
            raise ValueError(f"{self.title} encodes the videos it makes (33, 65, 97, ... frames: 33-frame chunks cut to 4k + 1), got {count} frames")
        vae = pipe.vae
        chunks = chunk_count(count)
        video = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, F, H, W)
        video = torch.cat([video, video[:, :, -1:].expand(-1, -1, chunks * CHUNK_FRAMES - count, -1, -1)], dim=2)
        parts = []
        with torch.no_grad():
            mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(next(vae.parameters()).device, vae.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(mean)
            for chunk in video.split(CHUNK_FRAMES, dim=2):
                x = chunk.to(mean.device, vae.dtype) / 127.5 - 1.0
                parts.append((vae.encode(x).latent_dist.mode() - mean) * inv_std)
        return torch.cat(parts, dim=2)[0].float()

    def latent_frames(self, num_frames: int) -> int:
        """The latent frames of a ``num_frames`` video, for the memory plan: 9 a chunk (97 frames: 27, where Wan's rule over
        the whole clip gives 25)."""
        return CHUNK_LATENT_FRAMES * chunk_count(num_frames)

    def sequence_tokens(self, num_frames: int, height: int, width: int) -> int:
        """The tokens of one transformer call, for the memory plan (:mod:`cac_align.plan`): a chunk's 9 latent frames in
        1 x 2 x 2 patches and its history's, each part through its own patch (short: 2 frames in 1 x 2 x 2, mid: 2 in
        2 x 4 x 4, long: 16 in 4 x 8 x 8, the sides padded up to the patch), whatever ``num_frames`` is: a forward
        sees one chunk. At 384 x 640: 8,640 + 1,920 + 240 + 240 = 11,040."""
        h, w = height // 8, width // 8
        parts = [(CHUNK_LATENT_FRAMES, (1, 2, 2)), (2, (1, 2, 2)), (HISTORY_SIZES[1], (2, 4, 4)), (HISTORY_SIZES[0], (4, 8, 8))]
        return sum(-(-frames // t) * -(-h // ph) * -(-w // pw) for frames, (t, ph, pw) in parts)

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls of one chunk (every chunk runs the whole schedule)."""
        return num_inference_steps

    # -- sampling (bon) -------------------------------------------------------------------
    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """CFG's scale (``guided=False``: 1, one forward a step); positions do not depend on the frame rate."""
        return {"guidance_scale": float(config.guidance_scale) if guided else 1.0}

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, Any]:
        """UMT5 embeddings ``(B, L, D)`` of ``prompts`` and, with CFG, of the negative prompt (None: the release's), as
        the pipeline's ``encode_prompt`` gives them."""
        from cac_align.gen.family import Conditioning

        guided = guidance["guidance_scale"] > 1.0
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        with torch.no_grad():
            embeds, negative_embeds = pipe.encode_prompt(prompt=list(prompts), negative_prompt=[negative] * len(prompts) if guided else None,
                                                         do_classifier_free_guidance=guided, max_sequence_length=max_sequence_length,
                                                         device=pipe._execution_device)
        return Conditioning(embeds=embeds), (Conditioning(embeds=negative_embeds) if guided else None)

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial, tuple(pipe.transformer.config.patch_size)

    def decode(self, pipe: Any, latents: torch.Tensor, side: Any = None, seeds: Sequence[int] | None = None) -> Any:
        """A video's final latents ``(B, C, 9K, H', W')`` to uint8 frames ``(B, F, H, W, 3)``, as the pipeline decodes
        them: each chunk's 9 latent frames alone (the causal VAE restarts at every chunk: 1 + 8 x 4 = 33 frames),
        un-normalized by the VAE's ``latents_mean`` / ``latents_std``, the chunks joined in time and cut to ``4k + 1``."""
        from cac_align.gen.generator import frames_to_uint8

        vae = pipe.vae
        if latents.shape[2] % CHUNK_LATENT_FRAMES:
            raise ValueError(f"{self.title} decodes whole chunks of {CHUNK_LATENT_FRAMES} latent frames, got {latents.shape[2]}")
        with torch.no_grad():
            z = latents.to(next(vae.parameters()).device, vae.dtype)
            mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(z)
            # divided by the inverse of the std, as the pipeline divides (a product by the std rounds otherwise)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(z)
            chunks = [vae.decode(chunk / inv_std + mean, return_dict=False)[0] for chunk in z.split(CHUNK_LATENT_FRAMES, dim=2)]
            video = torch.cat(chunks, dim=2)
            kept = (video.shape[2] - 1) // pipe.vae_scale_factor_temporal * pipe.vae_scale_factor_temporal + 1
            frames = pipe.video_processor.postprocess_video(video[:, :, :kept], output_type="pt")
        return frames_to_uint8(frames)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """The pipeline's own videos (module docstring), one ``torch.Generator`` per (prompt, seed): text-to-video rows
        in one call, image-to-video one row per call."""
        from cac_align.gen.family import Generated
        from cac_align.gen.generator import frames_to_uint8

        device = pipe._execution_device
        guided = config.guidance_scale > 1.0
        negative = self.negative_prompt if config.negative_prompt is None else config.negative_prompt
        settings = dict(height=config.height, width=config.width, num_frames=int(config.num_frames), num_inference_steps=config.num_inference_steps,
                        guidance_scale=float(config.guidance_scale), max_sequence_length=config.max_sequence_length,
                        num_latent_frames_per_chunk=CHUNK_LATENT_FRAMES, history_sizes=list(HISTORY_SIZES), output_type="pt")
        if images is None:
            generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
            out = pipe(prompt=list(prompts), negative_prompt=[negative] * len(prompts) if guided else None, generator=generators, **settings)
            return Generated(frames_to_uint8(out.frames))
        from diffusers.utils import load_image

        videos = []
        for prompt, seed, image in zip(prompts, seeds, images):
            if image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            out = pipe(prompt=[prompt], image=load_image(image.image), negative_prompt=[negative] if guided else None,
                       generator=torch.Generator(device=device).manual_seed(int(seed)), **settings)
            videos.append(frames_to_uint8(out.frames))
        import numpy as np

        return Generated(np.concatenate(videos))




def history_indices(device: Any = None) -> dict[str, torch.Tensor]:
    """The positions the transformer gives the history and the chunk (``HeliosPipeline.__call__`` with
    ``keep_first_frame``): ``arange(1 + 16 + 2 + 1 + 9)`` split into the prefix, long, mid, 1x and the chunk; the short
    history is the prefix's and the 1x's. Each ``(1, n)`` int64."""
    prefix, long_, mid, one, chunk = torch.arange(1 + sum(HISTORY_SIZES) + CHUNK_LATENT_FRAMES, device=device).split(
        [1, *HISTORY_SIZES, CHUNK_LATENT_FRAMES])
    return {"indices_hidden_states": chunk[None], "indices_latents_history_short": torch.cat([prefix, one])[None],
            "indices_latents_history_mid": mid[None], "indices_latents_history_long": long_[None]}


class HeliosDenoiser(Denoiser):
    """The guided velocity of one chunk's step, as ``HeliosPipeline.__call__``'s loop computes it:
    ``denoiser(latents, timestep, cond, negative, guidance, dtype)`` -> ``(B, C, 9, h, w)``.

    ``cond`` holds the prompts' ``embeds`` and the chunk's history (``history_short``, ``history_mid``,
    ``history_long``: :meth:`HeliosFamily.chunk_conditioning`); the negative pass (CFG) reads the same history.

    Args:
        transformer: the pipeline's ``HeliosTransformer3DModel``.
        family: the family that built it.
    """

    def __init__(self, transformer: Any, family: Any):
        super().__init__()
        self.transformer = transformer
        self.family = family

    def forward(self, latents: torch.Tensor, timestep: Any, cond: Any, negative: Any, guidance: Mapping[str, Any], dtype: Any = None,
                side: Any = None) -> torch.Tensor:
        if not cond.has("history_short"):
            raise ValueError("a Helios step reads its chunk's history: pass cond with history_* (HeliosFamily.chunk_conditioning)")
        dtype = dtype or latents.dtype
        device = latents.device
        t = torch.as_tensor(timestep, device=device)
        t = t.expand(latents.shape[0]) if t.ndim == 0 else t
        inputs = {**history_indices(device), **{f"latents_history_{n}": getattr(cond, f"history_{n}").to(device, dtype) for n in ("short", "mid", "long")}}
        x = latents.to(dtype)

        def velocity(text: Any) -> torch.Tensor:
            return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text.embeds.to(device, dtype), return_dict=False, **inputs)[0]

        v = velocity(cond)
        scale = guidance["guidance_scale"]
        if scale > 1.0:
            v_neg = velocity(negative)
            v = v_neg + scale * (v - v_neg)
        return v.float()


# ---------------------------------------------------------------------------------------
# The tiny layout (tiny-random:helios): diffusers' HeliosPipeline at toy widths, Wan's tiny text side and VAE
# ---------------------------------------------------------------------------------------
def _tiny_transformer() -> Any:
    """A 2-block ``HeliosTransformer3DModel``: 2 heads of 12 (rotary axes 4 + 4 + 4, which must sum to the head width),
    Wan's tiny widths, and the release's switches on (the multi-term memory patches of the history, cross-attention of
    the chunk's tokens only, the history at timestep 0)."""
    from diffusers import HeliosTransformer3DModel

    return transformer_made(lambda: HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32, freq_dim=256,
        ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_dim=(4, 4, 4), has_multi_term_memory_patch=True,
        guidance_cross_attn=True, zero_history_timestep=True, is_amplify_history=False))


def build_tiny_helios_pipeline(seed: int = 0) -> Any:
    """``tiny-random:helios``: ``HeliosPipeline`` of diffusers' classes at toy widths (random weights, a word-level
    tokenizer built here, :mod:`cac_align.gen.tiny`), Wan's tiny VAE (8x in space, 4x in time, as the real one) and a
    one-stage ``HeliosScheduler`` with dynamic shifting (the pipeline needs ``stages=1``). 2 prompts x 65 frames
    (2 chunks) at 32 x 32 with 2 steps take well under a second on one CPU thread."""
    from diffusers import AutoencoderKLWan, HeliosPipeline, HeliosScheduler

    tokenizer = word_tokenizer()
    torch.manual_seed(seed)
    text_encoder = umt5_text_encoder(tokenizer)
    transformer = _tiny_transformer()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    scheduler = HeliosScheduler(stage_range=[0, 1], stages=1, use_dynamic_shifting=True)
    for module in (text_encoder, transformer, vae):  # freshly built modules start in train mode (UMT5's dropout)
        module.eval()
    pipe = HeliosPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_HELIOS_BUILDERS = {TINY_HELIOS: build_tiny_helios_pipeline}

# -- the family and how a model's files name it ------------------------------------------
HELIOS = HeliosFamily("helios", "Helios", {
    # infer_helios.py's defaults (module docstring's table); 99 requested frames come back as 97
    "height": 384, "width": 640, "num_frames": 97, "fps": 24.0, "num_inference_steps": 50, "guidance_scale": 5.0, "max_sequence_length": 512,
}, tiny_names=(TINY_HELIOS,), hub_ids=(BASE_CHECKPOINT,))
FAMILIES = (HELIOS,)


def family_for_index(index: Mapping[str, Any]) -> HeliosFamily | None:
    """Helios from a ``model_index.json`` naming ``HeliosPipeline``; None for any other pipeline.

    Raises:
        UnknownGeneratorError: a ``HeliosPyramidPipeline`` (Helios-Mid, Helios-Distilled), refused for every job in
            one line with the reason.
    """
    name = index.get("_class_name")
    if name == PIPELINE:
        return HELIOS
    if name == PYRAMID_PIPELINE:
        from cac_align.gen.family import UnknownGeneratorError

        which = "Helios-Distilled" if index.get("is_distilled") else "Helios-Mid" if index.get("is_cfg_zero_star") else "Helios-Mid or -Distilled"
        raise UnknownGeneratorError(
            f"a {PYRAMID_PIPELINE} ({which}), which no job runs yet ({ISSUE}): it denoises each chunk in 3 stages of growing size with its "
            "own step list (no generator setting says it), and diffusers 0.42.1 draws a batch's block noise from its first generator only (a "
            f"seed would not name one video); name a {PIPELINE} checkpoint ({BASE_CHECKPOINT})")
    return None


def regenerator_for_index(index: Mapping[str, Any]) -> None:
    """No repair pipeline: a Helios checkpoint named as ``regenerator.name`` is refused in one line saying why; None for
    any other."""
    if index.get("_class_name") in (PIPELINE, PYRAMID_PIPELINE):
        from cac_align.gen.family import UnknownGeneratorError

        raise UnknownGeneratorError(f"a {index.get('_class_name')}, which has no inpainting mode: repair cannot regenerate a window with it "
                                    "(it continues a video chunk by chunk, not between kept frames); name Wan-VACE or an LTX-2 checkpoint as "
                                    "regenerator.name")
    return None
