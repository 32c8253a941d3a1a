"""The MiniMax-H3 family: MiniMax's joint text-to-video-and-sound model as the generator jobs run it.

diffusers 0.42.1 runs MiniMax-H3 only as a **modular pipeline** (``MiniMaxH3ModularPipeline`` with
``MiniMaxH3Blocks``, ``diffusers/modular_pipelines/minimax_h3/``): its folder holds a
``modular_model_index.json`` (no ``model_index.json``), whose ``_class_name`` is
``MiniMaxH3ModularPipeline`` (:func:`family_for_index`). Its parts: a Qwen3-VL text encoder read at
``hidden_states[50]`` (so at least 51 layers), ``MiniMaxH3Transformer3DModel`` (and, for the
reference-to-video workflow, a second one, ``transformer_ref``, which the jobs never load),
``AutoencoderKLMiniMaxH3`` (16x in space; time in chunks of 17 frames to 5 latents: ``17n + 5``
frames, ``5n + 2`` latent frames), ``AutoencoderKLMiniMaxH3Audio`` (stereo, 40 latents a second) and
two ``MiniMaxH3Scheduler`` (video shift 12, audio shift 3).

**A step, as the pipeline computes it** (``before_denoise.py``, ``denoise.py``; :class:`MiniMaxH3Denoiser`):
one request is one packed sequence ``[text | audio rows | video rows]`` (the layout of
``MiniMaxH3PrepareLayoutStep.build_packed_sequence``: text rows at their index on the time axis, the
media after them, so a prompt's length moves the media's positions); one transformer forward a
step gives a velocity for every audio and video row, each stream at its own timestep
(``MiniMaxH3SetTimestepsStep.build_row_timesteps``). The checkpoint is guidance-distilled: no
negative prompt, no guidance scale, one forward a step. Our denoiser builds the same sequence with
diffusers' own functions, one sample at a time (the pipeline takes one prompt per call), and returns
the velocities in the convention of the rest of ``gen/`` (``x_next = x + (sigma_next - sigma) v``):
MiniMax-H3's transformer predicts a data-ward velocity (``MiniMaxH3Scheduler.step``:
``x0 = x + sigma v``), so ours is its negative.

**The interface grew** (:mod:`cac_align.gen.family` says why): the audio steps on its own
schedule (:meth:`MiniMaxH3Family.side_sigmas`), and a clip is ``17n + 5`` frames
(:attr:`MiniMaxH3Family.frame_remainder`, 5, where the other families' ``k m + 1`` has 1).
Timesteps: the schedule's ``timesteps`` are the sigmas themselves (the scheduler's
``num_train_timesteps`` is registered as 1, the scale the DPO job multiplies a sigma by), and the
denoiser gives the transformer ``t = 1 - sigma`` as the scheduler does, bit for bit.

**Audio in the jobs**, as LTX-2's (:mod:`cac_align.gen.families.ltx2`): ``bon`` writes the soundtrack into
the mp4 and beside it (``.wav``); ``flow-grpo`` samples the video latents on the SDE and the audio
on its own deterministic (ODE) schedule, without log-probabilities (``audio: trained``: the SDE step on that
schedule, with its own log-probability; docs/audio.md); ``dpo`` trains the video stream,
the audio input being noise at the pair's level on silence (zero latents), the same for both.

**Release settings** (what a recipe leaves unset takes), each with its source in diffusers 0.42.1:

| setting | value | source |
| --- | --- | --- |
| frames, fps | 124 (5 s, the shortest), 24 | ``MiniMaxH3PrepareLayoutStep`` input ``num_frames`` default 124; ``MINIMAX_H3_FPS = 24`` (``modular_pipeline.py``) |
| size (H x W) | 768 x 1344 | the pipeline's own 16:9 canvas: ``resolve_canvas_size(16, 9, 32, canvas_short_edge=768, canvas_max_pixels=768*1344)`` (``PrepareLayoutStep.expected_configs``) |
| steps | 50 | diffusers' ``num_inference_steps`` input template default (``modular_pipeline_utils.py``); grid points, terminal 0 included: 49 forwards |
| guidance, negative prompt | none | guidance-distilled (``MiniMaxH3ModularPipeline`` docstring: "no guider, no negative_prompt and no guidance_scale") |
| shift | 12.0 video, 3.0 audio: the checkpoint's two schedulers (``flow_shift`` does not apply: refused) | ``MiniMaxH3Scheduler`` docstring ("shift=12.0 for video, shift=3.0 for audio") |
| text tokens | up to 512 (``max_sequence_length``; longer prompts are refused, never cut) | ours: the pipeline reads the whole prompt; 512 only sizes the padded conditioning |

**Parallel.** FSDP2 shards one unit per ``MiniMaxH3TransformerBlock`` and ``MiniMaxH3TokenRefinerBlock``
(the transformer's ``_no_split_modules``). Context parallel is refused (:meth:`MiniMaxH3Family.context_parallel_plan`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from cac_align.gen.experts import Denoiser
from cac_align.gen.family import NoContextParallel
from cac_align.loading import check_weights_source, resolve_dtype, weights_error

__all__ = ["FAMILIES", "MINIMAX_H3", "MODULAR_PIPELINE", "MiniMaxH3Denoiser", "MiniMaxH3Family", "audio_sigma", "build_tiny_minimax_h3_pipeline",
           "family_for_index"]

MODULAR_PIPELINE = "MiniMaxH3ModularPipeline"
VIDEO_SHIFT, AUDIO_SHIFT = 12.0, 3.0  # MiniMaxH3Scheduler's docstring: the released checkpoints' two shifts


def audio_sigma(video_sigma: torch.Tensor, video_shift: float, audio_shift: float) -> torch.Tensor:
    """The audio's noise level at the step whose video noise level is ``video_sigma``.

    Both schedules shift the same grid point ``b`` (``MiniMaxH3Scheduler.set_timesteps``:
    ``sigma = s b / (1 + (s - 1) b)``), so ``b = sigma_v / (s_v - (s_v - 1) sigma_v)`` and the
    audio's is ``s_a b / (1 + (s_a - 1) b)``. Hand-worked: ``sigma_v = 12 * 0.5 / 6.5 = 0.923077``
    (b = 0.5) gives ``sigma_a = 1.5 / 2 = 0.75``; 1 gives 1 and 0 gives 0.
    """
    v = video_sigma.double()
    b = v / (video_shift - (video_shift - 1.0) * v)
    return (audio_shift * b / (1.0 + (audio_shift - 1.0) * b)).to(video_sigma.dtype)


def _blocks() -> Any:
    from diffusers.modular_pipelines.minimax_h3 import before_denoise

    return before_denoise


_NO_CONTEXT_PARALLEL = ("parallel.context_parallel must be 1 for MiniMax-H3: its text, audio and video share one packed sequence whose "
                        "positions and per-row timesteps diffusers' context-parallel hooks do not split (the transformer's _cp_plan covers "
                        "hidden_states only); shard it with parallel.shard: fsdp2 instead")


@dataclass(frozen=True)
class MiniMaxH3Family(NoContextParallel):
    """MiniMax-H3 as a :class:`~cac_align.gen.family.GeneratorFamily` (module docstring)."""

    context_parallel_refusal: ClassVar[str] = _NO_CONTEXT_PARALLEL  # both context-parallel hooks refuse (NoContextParallel)
    name: str = "minimax-h3"
    title: str = "MiniMax-H3"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ("tiny-random:minimax-h3",)
    hub_ids: tuple[str, ...] = ("MiniMaxAI/MiniMax-H3",)
    pipeline_class: str = MODULAR_PIPELINE
    experts: int = 1
    spatial_multiple: int = 32  # the VAE's 16x times the transformer's 2x2 patch (the pipeline's canvas_multiple)
    frame_multiple: int = 17  # the VAE encodes 17 frames a chunk into 5 latents ...
    frame_remainder: int = 5  # ... so a clip is 17n + 5 frames (5n + 2 latent frames)
    audio: bool = True
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # where a recipe trains the sound (``audio: trained``): the layers only the audio rows pass, its
    # input and output projections (the blocks are one stream: their attention is every row's, in the LoRA above)
    audio_lora_target_modules: tuple[str, ...] = ("audio_proj_in", "audio_proj_out")
    min_inference_steps: int = 2  # grid points, the terminal 0 included: 2 is one forward
    block_classes: tuple[str, ...] = ("MiniMaxH3TransformerBlock", "MiniMaxH3TokenRefinerBlock")
    extra_components: tuple[str, ...] = ()  # its folder's models are its modular pipeline's components
    # rl/credit.py maps a judge's window onto 1 + 4k latent frames; this VAE's 17n + 5 -> 5n + 2 grid is
    # not mapped yet, so flow-grpo and nft refuse advantage.localize for it in one line
    localized_credit: bool = False
    encoder_components: tuple[str, ...] = ("text_encoder",)
    image_input: str = "none"  # its first/last-frame workflow (fl2va) is not run by the jobs
    unloaded_components: tuple[str, ...] = ("transformer_ref",)  # the reference-to-video transformer: never loaded, never counted
    last_image: bool = False

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, components: Mapping[str, Any] | None = None) -> Any:
        """The modular pipeline in the folder ``source`` (or a hub id in the local cache), with
        the components of the text-to-video workflow, each from the folder's own subfolder as its
        ``modular_model_index.json`` names its class: ``save_pretrained`` records the path it saved
        to in that file, which a copied or renamed folder no longer is, so the recorded path is not
        followed. ``transformer_ref`` (reference-to-video) is not loaded."""
        from diffusers.modular_pipelines import MiniMaxH3Blocks

        folder = check_weights_source(source, key)
        try:
            root = _local_folder(folder)
            index = json.loads((root / "modular_model_index.json").read_text(encoding="utf-8"))
            loaded = dict(components or {})
            for name, entry in index.items():
                if name.startswith("_") or name in loaded or name == "transformer_ref" or not isinstance(entry, list) or entry[1] is None:
                    continue
                loaded[name] = _load_component(root / name, entry[0], entry[1], dtype, vae_dtype, name)
        except (OSError, ValueError) as exc:
            raise weights_error(source, key, exc) from exc
        pipe = MiniMaxH3Blocks().init_pipeline()
        pipe.update_components(**loaded)
        return _with_timestep_scale(pipe)

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return build_tiny_minimax_h3_pipeline(seed)

    # -- what the jobs ask -----------------------------------------------------------------
    def denoiser(self, pipe: Any) -> "MiniMaxH3Denoiser":
        _with_timestep_scale(pipe)  # again, should anything have replaced the scheduler since the pipeline was made
        return MiniMaxH3Denoiser(pipe.transformer, self, audio_shift=float(pipe.audio_scheduler.config.shift), video_shift=float(pipe.scheduler.config.shift))

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """Nothing to guide (guidance-distilled: one forward a step, guided or not); the frame rate."""
        return {"frame_rate": float(config.fps if fps is None else fps)}

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, None]:
        """Each prompt as ``MiniMaxH3TextEncoderStep`` encodes it (its tokens without special
        tokens, Qwen3-VL's ``hidden_states[50]``: diffusers' ``get_qwen3vl_prompt_embeds``), padded
        with zeros to ``max_sequence_length`` rows so prompts stack: ``embeds`` ``(B, L, D)`` and
        ``length`` ``(B,)``. No negative conditioning (guidance-distilled)."""
        from diffusers.modular_pipelines.minimax_h3.encoders import get_qwen3vl_prompt_embeds

        from cac_align.gen.family import Conditioning

        rows, lengths = [], []
        for i, prompt in enumerate(prompts):
            ids = pipe.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > max_sequence_length:
                raise ValueError(f"prompt {i + 1} is {len(ids)} tokens, more than generator.max_sequence_length={max_sequence_length}: "
                                 "raise it or shorten the prompt (MiniMax-H3 reads the whole prompt, it is not cut)")
            with torch.no_grad():
                embeds = get_qwen3vl_prompt_embeds(pipe.text_encoder, pipe.processor, ids, {}, text_encoder_layer=pipe.text_encoder_layer,
                                                   device=pipe._execution_device, dtype=pipe.text_encoder.dtype)[0]
            rows.append(torch.nn.functional.pad(embeds, (0, 0, 0, max_sequence_length - len(ids))))
            lengths.append(len(ids))
        return Conditioning(embeds=torch.stack(rows), length=torch.tensor(lengths, device=rows[0].device)), None

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        raise ValueError(f"{self.title} is run as text-to-video here (its first/last-frame workflow is not)")

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls (denoising steps) one sample of ``num_inference_steps`` makes: the
        length of :meth:`schedule`'s timesteps (its grid's terminal 0 is one of the ``num_inference_steps`` points, so one fewer)."""
        return num_inference_steps - 1

    def schedule(self, pipe: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The video scheduler's own grid (``set_timesteps(num_inference_steps)``: the terminal 0
        is one of the points, so ``N`` points are ``N - 1`` steps): ``(sigmas (N,), timesteps
        (N - 1,))``, the timesteps being the sigmas (module docstring)."""
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(config.num_inference_steps, device="cpu")
        sigmas = scheduler.sigmas.float().cpu()
        return sigmas, sigmas[:-1].clone()

    def side_sigmas(self, pipe: Any, config: Any, sigmas: torch.Tensor) -> torch.Tensor:
        """The audio's noise levels at the video's ``sigmas``: the audio scheduler's own grid
        (``set_timesteps`` with the same count), which the pipeline steps the audio down."""
        scheduler = copy.deepcopy(pipe.audio_scheduler)
        scheduler.set_timesteps(config.num_inference_steps, device="cpu")
        audio = scheduler.sigmas.float()
        if audio.shape != sigmas.shape:
            raise ValueError(f"the audio schedule has {audio.numel()} points and the video's {sigmas.numel()} (a shift collapsed points)")
        return audio.to(sigmas.device)

    def _latent_size(self, pipe: Any, config: Any) -> tuple[int, int, int, int]:
        """``(latent frames, latent height, latent width, audio latents)`` of ``config``'s clip."""
        from diffusers.modular_pipelines.minimax_h3.modular_pipeline import audio_latent_num_frames, video_latent_num_frames

        seconds = config.num_frames / pipe.fps
        if not pipe.min_duration <= seconds <= pipe.max_duration:
            raise ValueError(f"generator.num_frames={config.num_frames} is {seconds:.2f} s at {pipe.fps} fps; {self.title} makes "
                             f"{pipe.min_duration:g} to {pipe.max_duration:g} s (124 to 355 frames, 17n + 5)")
        frames = video_latent_num_frames(config.num_frames, pipe.vae_frames_per_chunk, pipe.vae_latents_per_chunk)
        ratio = pipe.vae_spatial_compression_ratio
        return frames, config.height // ratio, config.width // ratio, audio_latent_num_frames(config.num_frames)

    def latent_frames(self, num_frames: int) -> int:
        """The VAE's latent frames of ``num_frames`` (``17n + 5`` -> ``5n + 2``: 124 -> 37)."""
        return (num_frames - self.frame_remainder) // self.frame_multiple * 5 + 2

    def sequence_tokens(self, num_frames: int, height: int, width: int, text_tokens: int = 512) -> int:
        """Every row of one request's packed sequence (the memory plan's activations): the video's
        ``latent frames x (H / 32) x (W / 32)``, the audio's ``2 x 40`` a second and up to
        ``text_tokens`` of text. The release's 768 x 1344 x 124: 37 x 24 x 42 + 414 + 512 = 38,222."""
        from diffusers.modular_pipelines.minimax_h3.modular_pipeline import audio_latent_num_frames

        video = self.latent_frames(num_frames) * (height // self.spatial_multiple) * (width // self.spatial_multiple)
        return video + 2 * audio_latent_num_frames(num_frames) + text_tokens

    def side_shape(self, pipe: Any, num_frames: int, fps: float) -> tuple[int, int]:
        """One video's audio rows: ``(2 x audio latents, audio channels)``, channel-major (left, then right)."""
        from diffusers.modular_pipelines.minimax_h3.modular_pipeline import audio_latent_num_frames

        return pipe.audio_channels * audio_latent_num_frames(num_frames), pipe.audio_latent_channels

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each generator's draws in the pipeline's order (``MiniMaxH3PrepareLatentsStep``): the video
        noise ``(C, F', H', W')``, then the audio noise in row layout ``(2 A, C_a)``."""
        from diffusers.utils.torch_utils import randn_tensor

        device = pipe._execution_device
        frames, height, width, _ = self._latent_size(pipe, config)
        rows = self.side_shape(pipe, config.num_frames, pipe.fps)
        video, audio = [], []
        for g in generators:
            video.append(randn_tensor((1, pipe.vae_latent_channels, frames, height, width), generator=g, device=device, dtype=torch.float32)[0])
            audio.append(randn_tensor(rows, generator=g, device=device, dtype=torch.float32))
        return torch.stack(video), torch.stack(audio)

    # -- latents and media ------------------------------------------------------------------
    def decode(self, pipe: Any, latents: torch.Tensor, side: Any = None, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Final video latents ``(B, C, F', H', W')`` to uint8 frames, as ``MiniMaxH3VideoDecodeStep``
        decodes them (un-normalize, the VAE, ImageNet pixels back to [0, 1]), one video at a time. The
        VAE draws nothing, so ``seeds`` is not read."""
        from cac_align.gen.generator import frames_to_uint8

        vae = pipe.vae
        device = next(vae.parameters()).device
        mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
        pixel_mean = torch.tensor(pipe.pixel_mean, device=device).view(1, -1, 1, 1, 1)
        pixel_std = torch.tensor(pipe.pixel_std, device=device).view(1, -1, 1, 1, 1)
        out = []
        with torch.no_grad():
            for z in latents:
                video = vae.decode((z[None].to(device) * std + mean).to(vae.dtype), return_dict=False)[0]
                video = (video.float() * pixel_std + pixel_mean).clamp(0, 1)
                out.append(frames_to_uint8(pipe.video_processor.postprocess_video(video, output_type="pt")))
        return np.concatenate(out)

    def side_frames(self, side: torch.Tensor) -> torch.Tensor:
        """Audio rows ``(B, 2 A, C_a)`` (channel-major: the left channel's ``A`` latents, then the
        right's) as ``(B, A, 2 C_a)``: time first, both channels of a latent frame together."""
        batch, rows, channels = side.shape
        return side.reshape(batch, 2, rows // 2, channels).permute(0, 2, 1, 3).flatten(2)

    def decode_audio(self, pipe: Any, side: torch.Tensor) -> tuple[np.ndarray, int]:
        """Final audio rows ``(B, 2 A, C_a)`` to stereo waveforms ``(B, 2, samples)`` float32 and the
        sample rate, as ``MiniMaxH3AfterDenoiseStep`` and ``MiniMaxH3AudioDecodeStep`` do."""
        audio_vae = pipe.audio_vae
        device = next(audio_vae.parameters()).device
        mean = torch.tensor(audio_vae.config.latents_mean, device=device).view(1, -1, 1)
        std = torch.tensor(audio_vae.config.latents_std, device=device).view(1, -1, 1)
        waves = []
        with torch.no_grad():
            for rows in side:
                z = rows.to(device).reshape(pipe.audio_channels, -1, rows.shape[-1]).permute(0, 2, 1)  # (2, C_a, A): the stereo pair as a batch
                wave = audio_vae.decode((z * std + mean).to(audio_vae.dtype), return_dict=False)[0]  # (2, 1, samples)
                waves.append(wave.float().permute(1, 0, 2)[0])
        return torch.stack(waves).clamp(-1, 1).cpu().numpy(), int(pipe.audio_sampling_rate)

    def encode_video(self, pipe: Any, frames: Any) -> torch.Tensor:
        """uint8 frames ``(F, H, W, 3)`` (``17n + 5``) to normalized latents ``(C, F', H', W')``: ImageNet
        pixels as the pipeline's ``encode_vae_condition`` normalizes them, the mode of the VAE's
        posterior (the pipeline samples its keyframes' under seed 42; a training pair is its mode)."""
        vae = pipe.vae
        device = next(vae.parameters()).device
        x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0).to(device, torch.float32) / 255.0
        pixel_mean = torch.tensor(pipe.pixel_mean, device=device).view(1, -1, 1, 1, 1)
        pixel_std = torch.tensor(pipe.pixel_std, device=device).view(1, -1, 1, 1, 1)
        with torch.no_grad():
            z = vae.encode(((x - pixel_mean) / pixel_std).to(vae.dtype), return_dict=False)[0].mode().float()
        mean = torch.tensor(vae.config.latents_mean, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, device=device).view(1, -1, 1, 1, 1)
        return ((z - mean) / std)[0]

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        """``(4, 16, (1, 2, 2))``: the VAE's nominal 4 frames a latent (17 frames to 5 latents a chunk,
        the chunks overlapping: 124 frames are 37 latents), 16 pixels a latent side, the patch."""
        return pipe.vae.temporal_compression_ratio, pipe.vae_spatial_compression_ratio, tuple(pipe.patch_size)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """The modular pipeline's own videos and soundtracks (its blocks whole: text encoder, layout,
        noise, the loop, decoders), one call per (prompt, seed): it takes one prompt a call."""
        from cac_align.gen.family import Generated
        from cac_align.gen.generator import frames_to_uint8

        if images is not None and any(image is not None for image in images):
            return self.encode_images(pipe, config, images)
        frames, audio = [], []
        for prompt, seed in zip(prompts, seeds):
            state = pipe(prompt=prompt, generator=torch.Generator(device=pipe._execution_device).manual_seed(int(seed)),
                         num_inference_steps=config.num_inference_steps, height=config.height, width=config.width,
                         num_frames=config.num_frames, output_type="pt")
            frames.append(frames_to_uint8(state.get("videos")))
            audio.append(state.get("audio").float().clamp(-1, 1).cpu().numpy())
        return Generated(np.concatenate(frames), np.concatenate(audio), int(pipe.audio_sampling_rate))




class MiniMaxH3Denoiser(Denoiser):
    """The velocities of MiniMax-H3's video and audio at a step, as ``MiniMaxH3LoopDenoiser``
    computes them (module docstring): ``denoiser(latents, timestep, cond, None, guidance, dtype,
    side)`` -> ``(video velocity (B, C, F', H', W'), audio velocity (B, 2 A, C_a))``, in the
    convention ``x_next = x + (sigma_next - sigma) v``.

    Args:
        transformer: the pipeline's ``MiniMaxH3Transformer3DModel``.
        family: the family that built it.
        audio_shift: the audio scheduler's shift (its sigma at a step follows from the video's:
            :func:`audio_sigma`).
    """

    def __init__(self, transformer: Any, family: Any, audio_shift: float = AUDIO_SHIFT, video_shift: float | None = None):
        super().__init__()
        self.transformer = transformer
        self.family = family
        self.audio_shift = float(audio_shift)
        self.video_shift = video_shift

    def forward(self, latents: torch.Tensor, timestep: Any, cond: Any, negative: Any, guidance: Mapping[str, Any], dtype: Any = None,
                side: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two streams' velocities.

        Args:
            latents: video ``(B, C, F', H', W')`` float32; side: audio rows ``(B, 2 A, C_a)``.
            timestep: the video's sigma (the schedule's timesteps are sigmas), a scalar or ``(B,)``.
            cond: ``embeds`` ``(B, L, D)`` and ``length`` ``(B,)`` (:meth:`MiniMaxH3Family.encode_prompts`).
        """
        from diffusers.modular_pipelines.minimax_h3.modular_pipeline import MINIMAX_H3_AUDIO_TAG, MINIMAX_H3_TEXT_TAG, MINIMAX_H3_VIDEO_TAG

        if side is None:
            raise ValueError("MiniMax-H3 denoises video and audio together: pass the audio rows (side)")
        steps = _blocks()
        batch, channels, frames, height, width = latents.shape
        patch = tuple(self.transformer.config.patch_size)
        dtype = dtype or latents.dtype
        sigma = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch).cpu()
        shift = self.video_shift or VIDEO_SHIFT
        videos, audios = [], []
        for i in range(batch):
            n = int(cond.length[i])
            tags = torch.full((n,), MINIMAX_H3_TEXT_TAG, dtype=torch.long)
            audio_latents = side.shape[1] // 2
            position_ids, token_tags, video_idx, audio_idx, text_idx, _, _ = steps.MiniMaxH3PrepareLayoutStep.build_packed_sequence(
                tags, frames, height, width, audio_latents, patch, 2, MINIMAX_H3_AUDIO_TAG, MINIMAX_H3_VIDEO_TAG)
            t_video = 1.0 - sigma[i]  # as MiniMaxH3Scheduler's timesteps = 1 - sigmas, in float32
            t_audio = 1.0 - audio_sigma(sigma[i], shift, self.audio_shift)
            unique, where = steps.MiniMaxH3SetTimestepsStep.build_row_timesteps(video_idx, audio_idx, 0, 0, n, float(t_video), float(t_audio), 1.0, 1.0)
            device = latents.device
            rows = steps.patchify_video_latents(latents[i : i + 1], patch)
            v, a = self.transformer(
                hidden_states=rows[None].to(dtype), audio_hidden_states=side[i][None].to(dtype),
                encoder_hidden_states=cond.embeds[i : i + 1, :n].to(device, dtype), timestep=unique.to(device), timestep_indices=where.to(device),
                token_tags=token_tags.to(device), position_ids=position_ids.to(device, torch.float32 if device.type == "mps" else torch.float64),
                video_indices=video_idx.to(device), audio_indices=audio_idx.to(device), text_indices=text_idx.to(device), return_dict=False,
            )
            pt, ph, pw = patch
            v = v[0].float().reshape(frames // pt, height // ph, width // pw, channels, pt, ph, pw).permute(3, 0, 4, 1, 5, 2, 6)
            videos.append(-v.reshape(channels, frames, height, width))  # data-ward -> noise-ward
            audios.append(-a[0].float())
        return torch.stack(videos), torch.stack(audios)


def _with_timestep_scale(pipe: Any) -> Any:
    """Register ``num_train_timesteps = 1`` on the pipeline's schedulers: the jobs' model timestep
    is ``sigma x num_train_timesteps`` (the DPO job), and this family's timesteps are sigmas."""
    for name in ("scheduler", "audio_scheduler"):
        getattr(pipe, name).register_to_config(num_train_timesteps=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _local_folder(folder: str) -> Path:
    """A local folder, or a hub id's snapshot in the local cache (its modular_model_index.json)."""
    path = Path(folder).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    # the reference-to-video transformer (61.7 GB, diffusers' MiniMaxH3Blocks docstring) is never loaded: not downloaded either
    return Path(snapshot_download(folder, ignore_patterns=["transformer_ref/*"]))


def _load_component(path: Path, library: str | None, class_name: str, dtype: str, vae_dtype: str, name: str) -> Any:
    """One component as ``modular_model_index.json`` names it (``[library, class, spec]``), from ``path``."""
    import importlib

    if library is None:
        raise ValueError(f"{name}: no library named for {class_name}")
    if class_name == "TokenizersBackend":  # transformers 5's class for a tokenizer.json-backed tokenizer
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    cls = getattr(importlib.import_module(library), class_name)
    if not hasattr(cls, "from_pretrained"):  # a processor of images built from its config
        return cls.from_config(cls.load_config(str(path))) if hasattr(cls, "from_config") else cls()
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        kind = vae_dtype if name in ("vae", "audio_vae") else dtype
        return cls.from_pretrained(str(path), dtype=resolve_dtype(kind), use_safetensors=True)
    return cls.from_pretrained(str(path))


# ---------------------------------------------------------------------------------------
# The tiny pipeline (tiny-random:minimax-h3): diffusers' classes, small and narrow, not short
# ---------------------------------------------------------------------------------------
def _tiny_qwen3_vl(seed: int) -> tuple[Any, Any, Any]:
    """A 51-layer Qwen3-VL of width 16 (the pipeline reads hidden state 50) with the in-process
    byte-level tokenizer of :mod:`cac_align.vlm.tiny` and a processor built from it."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from cac_align.vlm.tiny import TINY_CHAT_TEMPLATE, _token_ids, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen3VLConfig(
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, deepstack_visual_indexes=[0], num_position_embeddings=144),
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=51, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        tie_word_embeddings=False, **_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    encoder = Qwen3VLForConditionalGeneration(config).eval()
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
                                 video_processor=Qwen3VLVideoProcessor(patch_size=16, merge_size=2), tokenizer=tokenizer,
                                 chat_template=TINY_CHAT_TEMPLATE)
    return tokenizer, encoder, processor


def _tiny_transformer() -> Any:
    """2 blocks and 1 refiner block, 2 heads of 12 (the rope takes 3 axes x 2 x ``rope_freq_dim`` = 12
    of each head), 4 video and 4 audio latent channels, text 16 wide (the tiny Qwen3-VL's)."""
    from diffusers import MiniMaxH3Transformer3DModel

    from cac_align.gen.tiny import transformer_made

    return transformer_made(lambda: MiniMaxH3Transformer3DModel(
        num_attention_heads=2, attention_head_dim=12, hidden_size=24, num_layers=2, num_refiner_layers=1, ffn_dim=32, in_channels=4,
        audio_in_channels=4, patch_size=(1, 2, 2), text_dim=16, freq_dim=16, time_embed_hidden_dim=16, time_embed_dim=8, rope_freq_dim=2))


def build_tiny_minimax_h3_pipeline(seed: int = 0) -> Any:
    """``tiny-random:minimax-h3``: diffusers' ``MiniMaxH3ModularPipeline`` (``MiniMaxH3Blocks``) with
    every part at toy width and the real geometry (16x in space, 17 frames to 5 latents, 124 frames
    at least): frames of 32 x 32 are one 2 x 2 patch a latent frame; the audio VAE hops 4 samples
    (160 Hz, 40 latents a second, as the real one's 800 at 32 kHz); the released shifts (12, 3)."""
    from diffusers import AutoencoderKLMiniMaxH3, AutoencoderKLMiniMaxH3Audio, MiniMaxH3Scheduler
    from diffusers.modular_pipelines import MiniMaxH3Blocks

    tokenizer, encoder, processor = _tiny_qwen3_vl(seed)
    transformer = _tiny_transformer()
    vae = AutoencoderKLMiniMaxH3(latent_channels=4, block_out_channels=(8,) * 6, layers_per_block=1, norm_num_groups=4, decoder_num_layers=1,
                                 decoder_num_attention_heads=2, decoder_attention_head_dim=8, decoder_num_register_tokens=1, decoder_ffn_mult=1,
                                 latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    audio_vae = AutoencoderKLMiniMaxH3Audio(encoder_dim=4, encoder_rates=(2, 2), latent_dim=8, latent_channels=4, num_attention_heads=1, decoder_dim=8,
                                            decoder_rates=(2, 2), decoder_kernel_sizes=(4, 4), resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1,),),
                                            sampling_rate=160, latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = MiniMaxH3Blocks().init_pipeline()
    pipe.update_components(text_encoder=encoder, tokenizer=tokenizer, processor=processor, transformer=transformer, vae=vae.eval(),
                           audio_vae=audio_vae.eval(), scheduler=MiniMaxH3Scheduler(shift=VIDEO_SHIFT),
                           audio_scheduler=MiniMaxH3Scheduler(shift=AUDIO_SHIFT))
    return _with_timestep_scale(pipe)


# -- the family and how a model's files name it ------------------------------------------
MINIMAX_H3 = MiniMaxH3Family(defaults={"height": 768, "width": 1344, "num_frames": 124, "fps": 24.0, "num_inference_steps": 50,
                                       "max_sequence_length": 512})  # no flow_shift: the checkpoint's schedulers' (12.0, 3.0) always
FAMILIES = (MINIMAX_H3,)


def family_for_index(index: Mapping[str, Any]) -> MiniMaxH3Family | None:
    """MiniMax-H3 from a ``modular_model_index.json`` whose ``_class_name`` is
    ``MiniMaxH3ModularPipeline`` (or whose blocks are ``MiniMaxH3Blocks``), else None."""
    if index.get("_class_name") == MODULAR_PIPELINE or index.get("_blocks_class_name") == "MiniMaxH3Blocks":
        return MINIMAX_H3
    return None
