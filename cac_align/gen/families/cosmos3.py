"""The Cosmos 3 family (issue #107): NVIDIA's omni model, text or image to video with its sound, as ``bon`` and the trainers run it.

diffusers 0.42.1's ``Cosmos3OmniPipeline`` (``pipelines/cosmos/pipeline_cosmos3_omni.py``) has **no text encoder**: its
``text_tokenizer`` turns the prompt (after a chat template and two metadata sentences, its duration and its size) into
token ids that ``Cosmos3OmniTransformer`` embeds itself. The transformer has two streams with their own weights in every
layer: a causal one over the text and a bidirectional one over the video's and the sound's latents. The video's VAE is
Wan2.2's (``AutoencoderKLWan``, 48 channels, 16x in space, 4x in time); the sound is generated with the video and decoded
by ``Cosmos3AVAEAudioTokenizer`` to stereo at its ``sampling_rate`` (48,000 Hz, 25 latents a second). A checkpoint's
``model_index.json`` names the pipeline class (:func:`family_for_index`), whatever its folder or hub id is called.

**Best-of-N** runs the pipeline's own ``__call__`` (:meth:`Cosmos3Family.generate`), **one row per call**, each with its
own ``torch.Generator``: the pipeline takes one sample per call (a list of prompts keeps the first), and a list of
generators fails once the sound is on (diffusers draws the sound's noise ``(64, T)`` as if 64 were the batch). Each call
draws the video's noise, then the sound's, from its generator, so a seed names one video and one soundtrack. Text to
video with sound, or image to video (the image's latent frame kept clean, the rest generated) with sound. The frames come
back uint8, the sound float32 ``(2, samples)`` at the sound tokenizer's rate: ``bon`` writes it into the mp4 (AAC) and
beside it (a WAV), as for the other sound families.

**Frame counts** are ``4k + 1`` and nothing else (:meth:`Cosmos3Family.check_settings`): the pipeline does not check
them, its VAE floors any other count to ``4k + 1`` frames while the sound is sized from the count asked, so the video and
its sound would disagree. One frame (text to image) is refused too (below).

**The safety checker.** The pipeline builds NVIDIA's guardrail (``cosmos_guardrail``) when its index says
``enable_safety_checker`` (its default), and its messages call it part of the licence. We follow the checkpoint: its
index decides, and a checkpoint that asks for the guardrail without ``cosmos_guardrail`` installed is refused in one line
(:meth:`Cosmos3Family.load`); with it, bon's frames are the guardrail's (it may blur faces, or stop a video it blocks),
as the release's are. The tiny pipeline is built without it (it would download its own models).

**Training** (``flow-grpo``, ``nft``, ``dpo``; stage 2 of issue #107, docs/cosmos3.md). A step, as ``__call__``'s loop
computes it (:class:`Cosmos3Denoiser`): the transformer has no batch axis, so each row is one packed sequence ``[text |
video | sound]`` (laid out with diffusers' own mRoPE functions) and one forward, two with CFG (the negative prompt's
sequence; ``uncond + g (cond - uncond)`` in float32, one ``g`` for the video and the sound). Flow prediction: ``x0 = x -
sigma v``, so Flow-GRPO's SDE step (an Euler step plus noise) applies as it is. The sound is the side stream ``(64, T_a)``,
stepping on the video's sigmas (the pipeline deep-copies one scheduler for it), deterministic unless ``audio: trained``.

- **The grid** (:func:`trainer_grid`): the release samples with flow UniPC, whose first sigma is ``1 - 1e-6``; the
  square-root noise scale of Flow-GRPO would be ~700 there. The trainers take the same noise levels from diffusers'
  Euler scheduler, which starts at exactly 1, with continuous timesteps ``1000 sigma`` (UniPC gives the transformer
  ``floor(1000 sigma)``): the sampler, the recompute, nft and dpo all give the transformer that one float. At noise 0
  the sampler is the pipeline run with that Euler scheduler, latent for latent (tests/gen/test_cosmos3.py); ``bon``
  stays the release's UniPC.
- **Noise**: each row's generator draws the video's noise, then the sound's (:meth:`Cosmos3Family.initial_latents`),
  then each step's video noise and (trained) sound noise.
- **Image to video**: latent frame 0 is the image's, encoded as the pipeline encodes it (a clip of the image, the
  posterior's mode) and kept clean (``fixed``): not sampled, not scored.
- **The LoRA** adapts the generation stream's attention (``add_q_proj``, ``add_k_proj``, ``add_v_proj``,
  ``to_add_out``); ``audio: trained`` adds the sound's own projections (``audio_proj_in``, ``audio_proj_out``). The
  sound shares every block with the video, so ``audio: frozen`` keeps it out of the loss, not out of the LoRA's effect
  (as MiniMax-H3's). The pipeline has no ``load_lora_weights``: the file loads with ``pipe.transformer.load_lora_adapter``.
- **dpo** encodes a pair's videos with the pipeline's own ``_encode_video`` and trains the video stream; the sound
  input is the pair's noise at its level on silence (zero latents), the same for winner and loser (Kandinsky 6's and
  LTX-2's way: the job has no sound pairs, and a release's sound tokenizer may be decoder-only).

**What is refused, each in one line with its reason:**

- the distilled checkpoints (the "-4Step" repos; a folder diffusers saves says ``_class_name: Cosmos3OmniModularPipeline``
  with ``is_distilled: true``, and runs as its ``Cosmos3DistilledModularPipeline``): a modular pipeline of four fixed
  steps that re-noises each prediction with fresh noise, video only (:func:`family_for_index`);
- text-to-image checkpoints (by name, :data:`REFUSED_HUB_IDS`: their files do not tell them from a video release) and
  one-frame requests (:meth:`Cosmos3Family.check_settings`);
- action conditions (robotics): a prompt line's ``action`` is refused as the prompt file is read
  (:mod:`cac_align.run.input_files`);
- ``repair`` (:func:`regenerator_for_index`) and context parallel (:data:`_NO_CONTEXT_PARALLEL`);
- **FP8**: training (``flow-grpo``, ``nft``, ``dpo``) a checkpoint whose transformer's ``config.json`` has a
  ``quantization_config`` (the release's FP8 weights, ModelOpt's, on a revision of their own), as the recipe is made,
  before any weight loads (:meth:`Cosmos3Family.check_trainable`): a LoRA needs the bf16 weights. ``bon`` loads it as
  diffusers does.

**The release settings** (what a recipe leaves unset takes), from diffusers 0.42.1 (``__call__``'s defaults) and its
Cosmos 3 documentation page (``docs/source/en/api/pipelines/cosmos3.md``, which samples with
``UniPCMultistepScheduler.from_config(..., flow_shift=10.0, use_karras_sigmas=False)``):

| setting | value | source |
| --- | --- | --- |
| size (H x W) | 720 x 1280 | ``__call__``: ``height=None`` -> 720, ``width=None`` -> 1280 |
| frames, fps | 189, 24 | ``__call__``: ``num_frames=None`` -> 189, ``fps=24.0`` |
| steps | 35 | ``__call__``'s ``num_inference_steps`` |
| guidance | 6.0 | ``__call__``'s ``guidance_scale`` (one scale for the video and the sound) |
| shift | 10.0 | the documentation page's scheduler; a checkpoint's own ``scheduler_config.json`` shift counts where it says one |
| negative prompt | "" | ``tokenize_prompt`` encodes "" for None (the page's JSON negative prompt is an asset file it downloads) |
| sound rate | 48,000 Hz | ``sound_tokenizer.config.sampling_rate`` (``Cosmos3AVAEAudioTokenizer``'s default) |

There is no text-length setting (``max_sequence_length`` is refused as not applying): the pipeline reads the whole prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from cac_align.gen.experts import Denoiser
from cac_align.gen.family import NoContextParallel
from cac_align.loading import check_weights_source, resolve_dtype, weights_error

__all__ = ["COSMOS3", "FAMILIES", "NANO", "PIPELINE", "PROMPT_TOKENS", "REFUSED_HUB_IDS", "SUPER", "TINY_COSMOS3", "Cosmos3Denoiser", "Cosmos3Family",
           "build_tiny_cosmos3_pipeline", "family_for_index", "regenerator_for_index", "trainer_grid"]

PIPELINE = "Cosmos3OmniPipeline"
MODULAR_PIPELINE = "Cosmos3OmniModularPipeline"
DISTILLED_PIPELINE = "Cosmos3DistilledModularPipeline"
NANO, SUPER = "nvidia/Cosmos3-Nano", "nvidia/Cosmos3-Super"
ISSUE = "issue #107"
TINY_COSMOS3 = "tiny-random:cosmos3"


def _distilled(said: str) -> str:
    """The refusal of a distilled Cosmos 3, ``said`` as its files (or its name) say it."""
    return (f"{said}: a distilled Cosmos 3, which no job runs: diffusers runs it only as the modular blocks of its "
            f"{DISTILLED_PIPELINE}, 4 fixed steps that re-noise each prediction with fresh noise, with guidance baked in and no "
            f"sound, not as the {PIPELINE} the jobs call; name {NANO} or {SUPER}")


_DISTILLED = _distilled("a 4-step release")
_TEXT_TO_IMAGE = f"a Cosmos 3 text-to-image checkpoint, and every job here makes videos (4k + 1 frames, with sound); name {NANO} or {SUPER}"

# Cosmos 3 releases the jobs refuse, by name before their files are read (cac_align.gen.family reads a family module's
# REFUSED_HUB_IDS), each with its reason: a text-to-image release's index names the same pipeline as a video one
REFUSED_HUB_IDS = {
    "nvidia/Cosmos3-Super-Text2Image-4Step": _DISTILLED,
    "nvidia/Cosmos3-Super-Image2Video-4Step": _DISTILLED,
    "nvidia/Cosmos3-Super-Text2Image": _TEXT_TO_IMAGE,
}

_NO_CONTEXT_PARALLEL = ("parallel.context_parallel must be 1 for Cosmos 3: diffusers 0.42.1 declares no _cp_plan for Cosmos3OmniTransformer "
                        "(its packed text, video and sound sequence cannot be split declaratively; its split lives in an example script "
                        "outside the package); shard it with parallel.shard: fsdp2 instead")


@dataclass(frozen=True)
class Cosmos3Family(NoContextParallel):
    """Cosmos 3 as a :class:`~cac_align.gen.family.GeneratorFamily` (module docstring): ``bon`` runs its pipeline, the
    trainers its denoiser (:class:`Cosmos3Denoiser`) on :func:`trainer_grid`."""

    context_parallel_refusal: ClassVar[str] = _NO_CONTEXT_PARALLEL  # both context-parallel hooks refuse (NoContextParallel)
    name: str
    title: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    pipeline_class: str = PIPELINE
    experts: int = 1
    # the VAE's 16x: the transformer pads an odd latent side to its 2 x 2 patch itself, so 720 (45 latent rows) is a size
    # (the pipeline's check_inputs: multiples of vae.config.scale_factor_spatial)
    spatial_multiple: int = 16
    frame_multiple: int = 4  # the VAE keeps frame 0 and compresses each next 4 into one latent frame
    audio: bool = True
    min_inference_steps: int = 1
    # one FSDP2 unit per decoder layer (the transformer's _no_split_modules), for the trainers' stage
    block_classes: tuple[str, ...] = ("Cosmos3VLTextMoTDecoderLayer",)
    encoder_components: tuple[str, ...] = ()  # no text encoder: the transformer embeds the token ids itself
    image_input: str = "optional"  # text alone, or text and a first frame
    last_image: bool = False
    extra_components: tuple[str, ...] = ()

    # the trainers' LoRA (module docstring, "Training"): the generation stream's attention projections of every layer,
    # which the video and the sound both pass through; the text stream (to_q, to_k, to_v, to_out) never reads them
    lora_target_modules: tuple[str, ...] = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    # added where a recipe trains the sound (audio: trained): the layers only the sound's tokens pass, its input and output
    # projections (the blocks are one stream for both: their attention is in the LoRA above), as MiniMax-H3's
    audio_lora_target_modules: tuple[str, ...] = ("audio_proj_in", "audio_proj_out")
    # the transformer has no batch axis: a row is one packed sequence and one forward (two with CFG), and the VAE decodes one
    # row at a time (decode): the memory plan's activations and its traced decode follow (cac_align.plan)
    one_row_a_forward: bool = True
    vae_one_video: bool = True
    # the trainers' grid may start just short of sigma 1 at pure noise (a checkpoint with use_native_flow_schedule: 0.9999):
    # Flow-GRPO's square-root noise scale then takes its s = 1 form at step 0 (on the usual grid its first sigma is 1.0 itself)
    pure_noise_start: bool = True

    # -- the config --------------------------------------------------------------------
    def check_settings(self, config: Any) -> None:
        """Refuses in one line, as the config is made, a ``num_frames`` the pipeline would not return with its sound
        (module docstring: not ``4k + 1``), and one frame (an image)."""
        n = int(config.num_frames)
        if n < 1:  # the generic check names it
            return
        if n == 1:
            raise ValueError(f"generator.num_frames=1 asks {self.title} for an image (its text-to-image mode), and every job here makes "
                             "videos: set num_frames to 4k + 1 above 1 (the release's: 189)")
        if (n - 1) % self.frame_multiple:
            below = (n - 1) // 4 * 4 + 1
            raise ValueError(f"generator.num_frames={n}: {self.title}'s VAE would make {below} frames while its sound is sized for {n} (the "
                             f"pipeline does not check the count); set num_frames to 4k + 1: {below} or {below + 4}")

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline in ``source`` (a folder or hub id), safetensors only; its VAE and sound tokenizer in ``vae_dtype``.
        The checkpoint's index decides the guardrail (module docstring)."""
        import diffusers

        folder = check_weights_source(source, key)
        try:
            pipe = diffusers.Cosmos3OmniPipeline.from_pretrained(folder, dtype=resolve_dtype(dtype), use_safetensors=True, **(components or {}))
        except ImportError as exc:  # the index asks for the guardrail and cosmos_guardrail is not installed
            from cac_align.config import RecipeError

            raise RecipeError(f"{key}={source!r}: its model_index.json sets enable_safety_checker, and the guardrail it builds needs "
                              "`pip install cosmos_guardrail` (NVIDIA's licence for Cosmos makes the guardrail part of its use); install "
                              f"it ({exc})") from None
        except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
            raise weights_error(source, key, exc) from exc
        if pipe.sound_tokenizer is None or not pipe.transformer.config.sound_gen:
            raise weights_error(source, key, ValueError("it has no sound_tokenizer or its transformer no sound_gen: the jobs make Cosmos 3's "
                                                        "video with its sound (a silent checkpoint is not supported yet)"))
        for name in ("vae", "sound_tokenizer"):
            getattr(pipe, name).to(resolve_dtype(vae_dtype))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def check_trainable(self, name: str, key: str) -> None:
        """Refuses (module docstring, "FP8") a checkpoint whose ``transformer/config.json`` has a ``quantization_config``:
        read from the folder or the hub cache before any weight loads; nothing where the file cannot be read."""
        from cac_align.gen.family import read_model_file

        quantized = (read_model_file(name, "transformer/config.json") or {}).get("quantization_config")
        if quantized:
            method = quantized.get("quant_method", "quantized") if isinstance(quantized, Mapping) else "quantized"
            raise ValueError(f"{key}={name!r}: its transformer/config.json has a quantization_config ({method}: quantized weights such as "
                             "the release's FP8 revision), which the trainers cannot put a LoRA on or take gradients through; name the bf16 "
                             f"weights: the release's revision=main unless its model card names another (`hf download {NANO} --revision main "
                             f"--local-dir DIR`, then {key}=DIR), or a folder of bf16 weights")

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_COSMOS3_BUILDERS[name](seed)

    # -- what the trainers ask (module docstring, "Training") ---------------------------------
    def denoiser(self, pipe: Any) -> "Cosmos3Denoiser":
        return Cosmos3Denoiser(pipe.transformer, self, temporal_compression=int(pipe.vae_scale_factor_temporal))

    def schedule(self, pipe: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainers' grid: the release's noise levels with its first sigma exactly 1 (:func:`trainer_grid`), and its
        timesteps ``1000 sigma`` as floats: ``(sigmas (N + 1,), timesteps (N,))`` float32."""
        from cac_align.gen.generator import scheduler_shift

        return trainer_grid(config.num_inference_steps, scheduler_shift(pipe, config.flow_shift), int(pipe.scheduler.config.num_train_timesteps),
                            native=bool(pipe.config.get("use_native_flow_schedule", False)))

    def _latent_shape(self, pipe: Any, config: Any) -> tuple[int, int, int, int]:
        """``(C, F', H', W')`` of ``config``'s video, as the VAE encodes a clip of its size."""
        return (int(pipe.vae.config.z_dim), (int(config.num_frames) - 1) // pipe.vae_scale_factor_temporal + 1,
                config.height // pipe.vae_scale_factor_spatial, config.width // pipe.vae_scale_factor_spatial)

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each generator's two draws in the pipeline's order (``prepare_latents``): the video's noise ``(1, C, F', H', W')``,
        then the sound's ``(C_s, T_a)``; video ``(B, C, F', H', W')`` and sound ``(B, C_s, T_a)`` float32. The pipeline's VAE
        pass over a video of zeros (to learn the latent shape, its latents then masked away) is not made: nothing it
        computes reaches the noise."""
        from diffusers.utils.torch_utils import randn_tensor

        device = pipe._execution_device
        shape, sound = self._latent_shape(pipe, config), self.side_shape(pipe, config.num_frames, config.fps)
        video, audio = [], []
        for g in generators:
            video.append(randn_tensor((1, *shape), generator=g, device=device, dtype=torch.float32)[0])
            audio.append(randn_tensor(sound, generator=g, device=device, dtype=torch.float32))
        return torch.stack(video), torch.stack(audio)

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: Any) -> tuple[Any, Any]:
        """Each prompt's token ids as the pipeline's ``tokenize_prompt`` makes them (its chat template and the sentences
        naming the clip's duration, fps and size, from ``guidance``): ``ids`` ``(B, PROMPT_TOKENS)`` int64, zero-padded
        so rows of any prompts stack, and ``length`` ``(B,)``; with CFG (a scale other than 1, as the pipeline decides) the
        negative prompt's, one row per prompt (None: the pipeline's "")."""

        size = dict(num_frames=int(guidance["num_frames"]), height=int(guidance["height"]), width=int(guidance["width"]), fps=float(guidance["fps"]))
        rows, negatives = [], []
        for prompt in prompts:
            ids, negative = pipe.tokenize_prompt(prompt, negative_prompt, **size)
            rows.append(ids)
            negatives.append(negative)
        device = pipe._execution_device
        cond = _token_rows(rows, device)
        return cond, (None if float(guidance["guidance_scale"]) == 1.0 else _token_rows(negatives, device))

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """Each row's first frame as the pipeline conditions on it (``prepare_latents``): fitted to the frame
        (``_preprocess_conditioning_image``), repeated into a clip of ``config``'s frames, encoded with the posterior's mode
        (its ``_encode_video``); latent frame 0 is the image's, ``fixed`` ``(B, C, 1, H', W')`` float32."""
        from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import _preprocess_conditioning_image
        from diffusers.utils import load_image

        from cac_align.gen.family import Conditioning

        device = pipe._execution_device
        encoded: dict[Any, torch.Tensor] = {}
        for image in images:
            if image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            if image not in encoded:
                frame = _preprocess_conditioning_image(load_image(image.image), height=config.height, width=config.width).to(device, torch.float32)
                clip = frame.unsqueeze(2).expand(-1, -1, int(config.num_frames), -1, -1).contiguous()
                with torch.no_grad():
                    encoded[image] = pipe._encode_video(clip).float()[:, :, :1]
        return Conditioning(fixed=torch.cat([encoded[image] for image in images]))

    def encode_video(self, pipe: Any, frames: Any) -> torch.Tensor:
        """uint8 frames ``(F, H, W, 3)`` (``4k + 1``) to normalized latents ``(C, F', H', W')`` float32, as the pipeline
        encodes a clip (its ``_encode_video``: the posterior's mode, minus the VAE's mean, times its inverse std)."""
        x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0).to(pipe._execution_device, torch.float32) / 127.5 - 1.0
        with torch.no_grad():
            return pipe._encode_video(x).float()[0]

    def side_frames(self, side: torch.Tensor) -> torch.Tensor:
        """Sound latents ``(B, C_s, T_a)`` as ``(B, T_a, C_s)``: time first (25 latents a second, spread over the clip)."""
        return side.transpose(1, 2)

    def sequence_tokens(self, num_frames: int, height: int, width: int, text_tokens: int = 1024) -> int:
        """Every token of one forward's packed sequence (the memory plan's activations): the video's ``F' x ceil(H' / 2) x
        ceil(W' / 2)`` (the transformer pads an odd latent side), the sound's 25 a second at 24 fps (the release's rate:
        ``ceil(int(F / 24 x 48000) / 1920)``) and up to ``text_tokens`` of text. The release's 720 x 1280 x 189: 48 x 23 x
        40 + 197 + 1024 = 45,381."""
        latent_frames = (num_frames - 1) // self.frame_multiple + 1
        rows, columns = -(-(height // 16) // 2), -(-(width // 16) // 2)
        sound = -(-int(num_frames / 24.0 * 48_000) // 1920)
        return latent_frames * rows * columns + sound + text_tokens

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls of one sample per guidance branch: one a step."""
        return num_inference_steps

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """CFG's scale (``guided=False``: 1), the frame rate (the prompt's duration sentence and the positions read it) and
        the clip's frames and size (the prompt's sentences name them: :meth:`encode_prompts`)."""
        return {"guidance_scale": float(config.guidance_scale) if guided else 1.0, "fps": float(config.fps if fps is None else fps),
                "num_frames": int(config.num_frames), "height": int(config.height), "width": int(config.width)}

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        """``(4, 16, (1, 1, 1))``: the transformer's 2 x 2 patch is left out because it pads an odd latent side itself, so a
        frame side is any multiple of the VAE's 16 (as :attr:`spatial_multiple` says)."""
        return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial, (1, 1, 1)

    def side_shape(self, pipe: Any, num_frames: int, fps: float) -> tuple[int, int]:
        """One video's sound latents ``(C_s, T_a)``: ``T_a = ceil(int(frames / fps x rate) / hop)`` as the pipeline sizes them."""
        tokenizer = pipe.sound_tokenizer
        samples = int(num_frames / float(fps) * tokenizer.config.sampling_rate)
        return int(pipe.transformer.config.sound_dim), -(-samples // tokenizer._hop_size)

    # -- latents and media ------------------------------------------------------------------
    def decode(self, pipe: Any, latents: torch.Tensor, side: Any = None, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Final video latents ``(B, 48, F', H', W')`` to uint8 frames ``(B, F, H, W, 3)``, as the pipeline decodes them:
        divided by the VAE's inverse std, plus its mean, in the VAE's dtype, one row at a time."""
        from cac_align.gen.generator import frames_to_uint8

        vae = pipe.vae
        videos = []
        with torch.no_grad():
            for row in latents:
                z = row[None].to(next(vae.parameters()).device, vae.dtype)
                mean = pipe._vae_latents_mean.to(z).view(1, -1, 1, 1, 1)
                inv_std = pipe._vae_latents_inv_std.to(z).view(1, -1, 1, 1, 1)
                video = vae.decode(z / inv_std + mean).sample.to(latents.dtype)
                videos.append(frames_to_uint8(pipe.video_processor.postprocess_video(video, output_type="pt")))
        return np.concatenate(videos)

    def decode_audio(self, pipe: Any, side: torch.Tensor) -> tuple[np.ndarray, int]:
        """Final sound latents ``(B, C_s, T_a)`` to stereo waveforms float32 ``(B, 2, T_a x hop)`` in [-1, 1] and their rate,
        as the pipeline decodes them (its ``decode_sound``, one row at a time)."""
        with torch.no_grad():
            waves = [pipe.decode_sound(row).float().cpu().numpy() for row in side]
        return np.stack(waves), int(pipe.sound_tokenizer.config.sampling_rate)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """The pipeline's own videos and soundtracks (module docstring): one ``__call__`` per (prompt, seed, image), with its
        own ``torch.Generator``; frames uint8 ``(B, F, H, W, 3)``, sound float32 ``(B, 2, samples)``."""
        from cac_align.gen.family import Generated
        from cac_align.gen.generator import frames_to_uint8

        device = pipe._execution_device
        settings = dict(height=config.height, width=config.width, num_frames=int(config.num_frames), fps=float(config.fps),
                        num_inference_steps=config.num_inference_steps, guidance_scale=float(config.guidance_scale), enable_sound=True,
                        output_type="pt")
        frames, sound = [], []
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            image = None if images is None else images[i]
            if image is not None and image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            if image is not None:
                from diffusers.utils import load_image

                settings["image"] = load_image(image.image)
            else:
                settings.pop("image", None)
            out = pipe(prompt=prompt, negative_prompt=config.negative_prompt, generator=torch.Generator(device=device).manual_seed(int(seed)),
                       **settings)
            frames.append(frames_to_uint8(out.video[None]))
            sound.append(out.sound.float().clamp(-1, 1).cpu().numpy()[None])
        return Generated(np.concatenate(frames), np.concatenate(sound), int(pipe.sound_tokenizer.config.sampling_rate))


# The width the jobs hold a prompt's token ids at, so that any prompts' rows stack (a cache file, a group): the release's
# JSON prompts are some hundreds of tokens after the chat template and the metadata sentences
PROMPT_TOKENS = 4096


def _token_rows(rows: Sequence[Sequence[int]], device: Any) -> Any:
    """Token id lists as a :class:`~cac_align.gen.family.Conditioning`: ``ids`` ``(B, PROMPT_TOKENS)`` zero-padded, ``length`` ``(B,)``."""
    from cac_align.gen.family import Conditioning

    longest = max(len(r) for r in rows)
    if longest > PROMPT_TOKENS:
        raise ValueError(f"a prompt is {longest} tokens after Cosmos 3's chat template and metadata sentences, more than the {PROMPT_TOKENS} the "
                         "trainers hold; shorten it")
    ids = torch.zeros((len(rows), PROMPT_TOKENS), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return Conditioning(ids=ids.to(device), length=torch.tensor([len(r) for r in rows], device=device))


def trainer_grid(steps: int, shift: float, train_timesteps: int = 1000, native: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainers' sigmas ``(N + 1,)`` and timesteps ``(N,)`` (float32): the release's noise levels, an Euler grid.

    The release samples with flow UniPC, which shifts the points ``linspace(1, 1/T, N + 1)[:-1]`` (``native``:
    ``linspace(1 - 1/T, 0, N + 1)[:-1]``, the pipeline's ``use_native_flow_schedule``) by ``s' = k s / (1 + (k - 1) s)``
    and then lowers a first sigma of 1 by 1e-6; Flow-GRPO's square-root noise scale ``a sqrt(s / (1 - s))`` at that
    0.999999 is ~700 at a = 0.7. Here diffusers' ``FlowMatchEulerDiscreteScheduler`` shifts the same points, so the grid
    is UniPC's to float rounding but starts at exactly 1 (the scale's ``s = 1`` case), and its timesteps are the
    continuous ``1000 sigma`` (UniPC's are ``floor(1000 sigma)`` integers): the one timestep the sampler, the
    recompute, nft and dpo (``sigma x 1000``) all give the transformer. Hand-worked, N = 2, shift 10: points 1, 0.5005;
    sigmas 1, 10 x 0.5005 / (1 + 9 x 0.5005) = 0.909256, 0; timesteps 1000, 909.256."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if native:
        points = np.linspace(1.0 - 1.0 / train_timesteps, 0.0, steps + 1)[:-1]
    else:
        points = np.linspace(1.0, 1.0 / train_timesteps, steps + 1)[:-1]
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=train_timesteps, shift=float(shift))
    scheduler.set_timesteps(sigmas=points, device="cpu")
    return scheduler.sigmas.float().cpu(), scheduler.timesteps.float().cpu()


class Cosmos3Denoiser(Denoiser):
    """The velocities of Cosmos 3's video and sound at a step, as ``Cosmos3OmniPipeline.__call__``'s loop computes them
    (module docstring, "Training"): ``denoiser(latents, timestep, cond, negative, guidance, dtype, side)`` -> ``(video
    velocity (B, C, F' - k, H', W'), sound velocity (B, C_s, T_a))`` float32 (``side`` None: the video's alone).

    The transformer has no batch axis: each row is one packed sequence ``[text | video | sound]`` and one forward (two
    with CFG: the negative prompt's sequence, then ``uncond + g (cond - uncond)`` in float32 for both streams). An
    image's ``fixed`` latent frame is put in front of the generated ones, clean: no timestep, no velocity read back.

    Args:
        transformer: the pipeline's ``Cosmos3OmniTransformer``.
        family: the family that built it.
        temporal_compression: the VAE's frames per latent frame (the video positions' time scale).
    """

    def __init__(self, transformer: Any, family: Any, temporal_compression: int = 4):
        super().__init__()
        self.transformer = transformer
        self.family = family
        self.temporal_compression = int(temporal_compression)

    def _sequence(self, ids: torch.Tensor, latent_shape: Sequence[int], fixed: int, sound: int, fps: float) -> tuple[dict[str, Any], int]:
        """One row's packed sequence as the pipeline lays it out (its ``_prepare_text_segment``, ``_prepare_vision_segment``,
        ``_prepare_sound_segment``; positions from diffusers' own mRoPE functions): the transformer's keywords but the
        step's tokens and timesteps, and the count of noisy video tokens."""
        from diffusers.pipelines.cosmos.pipeline_cosmos3_omni import get_3d_mrope_ids_text_tokens, get_3d_mrope_ids_vae_tokens

        config = self.transformer.config
        device = ids.device
        length = int(ids.shape[0])
        modulated = bool(config.enable_fps_modulation)
        text_positions, after_text = get_3d_mrope_ids_text_tokens(length, 0, use_float_positions=modulated)
        start = after_text + config.unified_3d_mrope_temporal_modality_margin  # the video and the sound both start here
        frames, height, width = latent_shape
        patch = config.latent_patch_size
        rows, columns = -(-height // patch), -(-width // patch)
        per_frame, video_tokens = rows * columns, frames * rows * columns
        video_positions, _ = get_3d_mrope_ids_vae_tokens(frames, rows, columns, start, reset_spatial_indices=config.unified_3d_mrope_reset_spatial_ids,
                                                         fps=fps if modulated else None, base_fps=float(config.base_fps),
                                                         temporal_compression_factor=self.temporal_compression)
        noisy = torch.arange(fixed, frames, device=device)
        read = (length + noisy[:, None] * per_frame + torch.arange(per_frame, device=device)).flatten()
        keywords: dict[str, Any] = dict(input_ids=ids, text_indexes=torch.arange(length, device=device), und_len=length,
                                        vision_token_shapes=[(frames, rows, columns)],
                                        vision_sequence_indexes=torch.arange(length, length + video_tokens, device=device),
                                        vision_mse_loss_indexes=read, vision_noisy_frame_indexes=[noisy])
        positions = [text_positions, video_positions]
        total = length + video_tokens
        if sound:
            sound_positions, _ = get_3d_mrope_ids_vae_tokens(sound, 1, 1, start, reset_spatial_indices=config.unified_3d_mrope_reset_spatial_ids,
                                                             fps=float(config.sound_latent_fps) if modulated else None, base_fps=float(config.base_fps),
                                                             temporal_compression_factor=1)
            where = torch.arange(total, total + sound, device=device)
            keywords.update(sound_token_shapes=[(sound, 1, 1)], sound_sequence_indexes=where, sound_mse_loss_indexes=where.clone(),
                            sound_noisy_frame_indexes=[torch.arange(sound, device=device)])
            positions.append(sound_positions)
            total += sound
        keywords.update(position_ids=torch.cat([p.to(device) for p in positions], dim=1), sequence_length=total)
        return keywords, len(noisy) * per_frame

    def _forward(self, ids: torch.Tensor, video: torch.Tensor, sound: Any, timestep: float, fixed: int, fps: float, dtype: Any) -> tuple:
        keywords, noisy = self._sequence(ids, video.shape[2:], fixed, 0 if sound is None else int(sound.shape[1]), fps)
        device = video.device
        if sound is not None:
            keywords.update(sound_tokens=[sound.to(dtype)], sound_timesteps=torch.full((int(sound.shape[1]),), timestep, device=device))
        v, s, _ = self.transformer(vision_tokens=[video.to(dtype)], vision_timesteps=torch.full((noisy,), timestep, device=device), return_dict=False,
                                   **keywords)
        return v[0].float(), None if s is None else s[0].float()

    def forward(self, latents: torch.Tensor, timestep: Any, cond: Any, negative: Any, guidance: Mapping[str, Any], dtype: Any = None,
                side: Any = None) -> Any:
        """The two streams' velocities (class docstring).

        Args:
            latents: the generated video latents ``(B, C, F' - k, H', W')`` float32 (``k``: the frames an image fixes).
            timestep: the schedule's ``1000 sigma``, a scalar or one per row ``(B,)``.
            cond / negative: ``ids`` and ``length`` (:meth:`Cosmos3Family.encode_prompts`; ``cond`` with an image's ``fixed``).
            guidance: ``guidance_scale`` and ``fps`` (:meth:`Cosmos3Family.guidance`).
            side: sound latents ``(B, C_s, T_a)``, or None.
        """
        from cac_align.gen.family import fixed_frames, whole_latents

        dtype = dtype or self.transformer.dtype
        fixed = fixed_frames(cond)
        video = whole_latents(cond, latents)
        batch = video.shape[0]
        times = torch.as_tensor(timestep).reshape(-1).expand(batch)
        scale, fps = float(guidance["guidance_scale"]), float(guidance["fps"])
        guided = negative is not None and scale != 1.0
        videos, sounds = [], []
        for i in range(batch):
            t = float(times[i])  # as the pipeline's t.item(): one number, every noisy token of both streams
            sound = None if side is None else side[i]
            v, s = self._forward(cond.ids[i, : int(cond.length[i])], video[i : i + 1], sound, t, fixed, fps, dtype)
            if guided:
                v_u, s_u = self._forward(negative.ids[i, : int(negative.length[i])], video[i : i + 1], sound, t, fixed, fps, dtype)
                v = v_u + scale * (v - v_u)
                s = None if s is None else s_u + scale * (s - s_u)
            videos.append(v[:, :, fixed:])  # the fixed frame's velocity is 0 (the transformer reads none back): not stepped
            sounds.append(s)
        out = torch.cat(videos)
        return out if side is None else (out, torch.stack(sounds))


# ---------------------------------------------------------------------------------------
# The tiny layout (tiny-random:cosmos3): diffusers' own classes with the release's layout at toy widths
# ---------------------------------------------------------------------------------------
_VOCAB = 1024
_SOUND_DIM = 8


def _tiny_transformer() -> Any:
    """A 2-layer ``Cosmos3OmniTransformer`` of width 32 (4 heads of 8, 2 key/value heads; rotary axes 2 + 1 + 1, half
    the head), the release's latent layout (48 channels in 2 x 2 patches: 192 a token) and its sound stream (25 latents
    a second), a vocabulary of 1,024 ids; the Qwen3 ("silu") layout of the Nano and the Super."""
    from diffusers import Cosmos3OmniTransformer

    from cac_align.gen.tiny import transformer_made

    return transformer_made(lambda: Cosmos3OmniTransformer(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        rope_axes_dim=[2, 1, 1], latent_channel=48, latent_patch_size=2, patch_latent_dim=192, vocab_size=_VOCAB, sound_gen=True,
        sound_dim=_SOUND_DIM, sound_latent_fps=25.0))


def build_tiny_cosmos3_pipeline(seed: int = 0) -> Any:
    """``tiny-random:cosmos3``: ``Cosmos3OmniPipeline`` of diffusers' classes at toy widths, random weights: the transformer
    above; Wan2.2's VAE layout (48 latent channels, 16x in space, 4x in time) at width 16; the sound tokenizer at the
    release's 48 kHz with its decoder strides 2 x 4 x 5 x 6 x 8 (hop 1,920: 25 latents a second); the flow UniPC scheduler
    at shift 10 (the documentation page's); a byte-level BPE tokenizer with Qwen's special tokens and a chat template
    trained here (:func:`cac_align.vlm.tiny.build_tiny_tokenizer`); no guardrail. 32 x 32, 9 frames, 2 steps with CFG and
    sound take well under a second on one CPU thread."""
    from diffusers import AutoencoderKLWan, Cosmos3AVAEAudioTokenizer, Cosmos3OmniPipeline, UniPCMultistepScheduler

    from cac_align.vlm.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(vocab_size=_VOCAB)
    torch.manual_seed(seed)
    transformer = _tiny_transformer()
    vae = AutoencoderKLWan(base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                           is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    sound = Cosmos3AVAEAudioTokenizer(sampling_rate=48_000, vocoder_input_dim=_SOUND_DIM, dec_dim=2, dec_c_mults=(1, 1, 1, 1, 1),
                                      dec_strides=(2, 4, 5, 6, 8), dec_out_channels=2, stereo=True, enc_dim=2, enc_num_blocks=1,
                                      enc_latent_dim=2 * _SOUND_DIM, enc_c_mults=(1, 1, 1), enc_strides=(4, 5, 6), enc_n_fft=64, enc_hop_length=16)
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=10.0, final_sigmas_type="zero",
                                        use_karras_sigmas=False)
    pipe = Cosmos3OmniPipeline(transformer=transformer.eval(), text_tokenizer=tokenizer, vae=vae.eval(), scheduler=scheduler,
                               sound_tokenizer=sound.eval(), enable_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


TINY_COSMOS3_BUILDERS = {TINY_COSMOS3: build_tiny_cosmos3_pipeline}

# -- the family and how a model's files name it ------------------------------------------
COSMOS3 = Cosmos3Family("cosmos3", "Cosmos 3", {
    # diffusers 0.42.1: __call__'s defaults and its Cosmos 3 documentation page's scheduler (module docstring's table)
    "height": 720, "width": 1280, "num_frames": 189, "fps": 24.0, "num_inference_steps": 35, "guidance_scale": 6.0, "flow_shift": 10.0,
}, tiny_names=(TINY_COSMOS3,), hub_ids=(NANO, SUPER))
FAMILIES = (COSMOS3,)


def family_for_index(index: Mapping[str, Any]) -> Cosmos3Family | None:
    """Cosmos 3 from a ``model_index.json`` naming ``Cosmos3OmniPipeline``; None for any other pipeline.

    Raises:
        UnknownGeneratorError: a distilled checkpoint (a ``Cosmos3OmniModularPipeline`` with ``is_distilled: true``, as
            diffusers saves one), or a folder holding only the modular index of ``Cosmos3OmniModularPipeline``, each refused in
            one line with the reason, naming the class its files name.
    """
    name = index.get("_class_name")
    if name == PIPELINE:
        return COSMOS3
    if name in (DISTILLED_PIPELINE, MODULAR_PIPELINE):
        from cac_align.gen.family import UnknownGeneratorError

        if name == DISTILLED_PIPELINE or index.get("is_distilled"):  # a distilled folder as diffusers saves it: the Omni class, is_distilled
            raise UnknownGeneratorError(_distilled(f"a {name}" + (" with is_distilled: true" if index.get("is_distilled") else "")))
        raise UnknownGeneratorError(f"a {MODULAR_PIPELINE} index alone, and the jobs load the release as the {PIPELINE} its "
                                    "model_index.json names: download that file too (the release's repository has both)")
    return None


def regenerator_for_index(index: Mapping[str, Any]) -> None:
    """No repair pipeline: a Cosmos 3 checkpoint named as ``regenerator.name`` is refused in one line saying why; None for
    any other."""
    if index.get("_class_name") in (PIPELINE, MODULAR_PIPELINE, DISTILLED_PIPELINE):
        from cac_align.gen.family import UnknownGeneratorError

        raise UnknownGeneratorError(f"a {index.get('_class_name')}, which keeps only a video's leading latent frames clean (its video to video "
                                    "mode), never the frames after a window: repair cannot regenerate a window with it; name Wan-VACE or an "
                                    "LTX-2 checkpoint as regenerator.name")
    return None
