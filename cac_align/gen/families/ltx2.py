"""The LTX-2 family: Lightricks' audio+video model (LTX-2, LTX-2.3, LTX-2.5) as the generator jobs run it.

diffusers' ``LTX2Pipeline`` makes a video and its soundtrack together: a Gemma-3 text encoder and
text connectors give each stream its context; one transformer denoises the video latents and the
audio latents in the same forward, each stream attending to the other; a video VAE (32x in space,
8x in time, causal first frame: ``8k + 1`` frames, sides multiples of 32), an audio VAE and a
vocoder decode them. A checkpoint's ``model_index.json`` names ``LTX2Pipeline``; LTX-2.5 (22B,
2026-08) names a Gemma-4 text encoder (``Gemma4UnifiedForConditionalGeneration``) and a
``duration_head``; of the Gemma-3 ones, the vocoder class tells LTX-2.3 (``LTX2VocoderWithBWE``, 48
kHz) from LTX-2 (``LTX2Vocoder``, 24 kHz). An LTX-2 pipeline of any other release is refused
(:func:`family_for_index`): its settings would be another release's.

**A step, as the pipeline computes it** (diffusers 0.42, ``pipelines/ltx2/pipeline_ltx2.py``, the
denoising loop; :class:`LTX2Denoiser`), on the video tokens (one per latent position: patch 1) and
the audio tokens (one per 40 ms):

- transformer forwards: the conditional one; with CFG (``guidance_scale`` or
  ``audio_guidance_scale`` above 1) batched with the negative prompt's (two rows a sample); with
  spatio-temporal guidance (``stg_scale`` or ``audio_stg_scale`` above 0) one more, self-attention
  skipped in ``stg_blocks``; with modality guidance (``modality_scale`` or ``audio_modality_scale``
  above 1) one more, the audio-video cross-attention off. The release settings run all three:
  **3 transformer calls, 4 sample-forwards a step** (40 steps: 160 a video);
- guidance on the clean-sample predictions ``x0 = x - sigma v`` of each stream, with its own
  scales: ``x0_c + (g - 1)(x0_c - x0_neg) + s (x0_c - x0_stg) + (m - 1)(x0_c - x0_iso)``, then
  rescaled towards ``x0_c``'s standard deviation by ``guidance_rescale`` (diffusers'
  ``rescale_noise_cfg``), and turned back into a velocity;
- as in ``LTX2Pipeline.__call__``, an audio scale left unset or 0 takes the video's value.

**Audio in the jobs.** ``bon`` writes each candidate's soundtrack into its mp4 (AAC) and beside it
(``.wav``); judges read the frames. ``flow-grpo`` samples the video latents on the SDE with
log-probabilities and the audio latents on the deterministic (ODE) path, as Flow-Factory's LTX-2
trainer does (``models/ltx2/ltx2_t2av.py``: its audio is sampled by an ODE scheduler, with no
log-probability and no policy gradient); the recorded audio latents are the transformer's audio input when a step is
recomputed. With ``audio: trained`` (docs/audio.md) the audio latents take the SDE step too, with their
own log-probability, and :data:`AUDIO_BRANCH` joins the LoRA. ``dpo`` trains the video stream on pairs of videos; the transformer's audio input is
the noise of the pair's level on a silent (zero, the latent mean) clean audio, the same for
winner and loser, policy and reference (LTX-2 ships no waveform-to-latent front end). ``repair``
regenerates the judged window through ``LTX2ConditionPipeline``
(:class:`~cac_align.gen.families.ltx2_repair.LTX2Regenerator`, a module of its own): a segment of the
window's latents between a kept clip before it and a keyframe after it
(:func:`~cac_align.gen.families.ltx2_repair.segment_layout`), not the video.

**Image-to-video** (every release: text alone, or text and a first frame; no last frame), as
diffusers' ``LTX2ImageToVideoPipeline`` (0.42.1, ``pipelines/ltx2/pipeline_ltx2_image2video.py``)
animates an image: the image, H.264 re-compressed at the release's CRF (33; LTX-2.5's 18), resized
and encoded by the VAE, is the video's first latent frame (:meth:`LTX2Family.encode_images`: the
conditioning's ``fixed``); at every step the transformer sees it in front of the generated frames
with timestep 0 on its tokens (the audio and the cross-attention's sigma keep the step's ``t``), the
guidance is computed on the whole video, and only the generated frames step
(:class:`LTX2Denoiser`). The sampler, the log-probabilities and every loss cover the generated
frames only. Context parallel does not take an image (:meth:`LTX2Family.context_parallel_plan`).

**Context parallel** (one video's tokens over a group of processes, diffusers' ``enable_parallelism``):
the family's own plan (:meth:`LTX2Family.context_parallel_plan`), not diffusers' (which fails on the
audio+video layout): the video tokens are split and its self-attention runs Ulysses; the audio and
the text are whole on every process and every other attention runs on the process's own tokens,
the video-to-audio one on the video gathered over the group. The video's latent tokens and
``num_attention_heads`` must divide by the degree (:meth:`LTX2Family.check_context_parallel`); the
audio's length need not. tests/ltx2_context_parallel.py pins it against one process.

**The release settings** (what a recipe leaves unset takes; Lightricks' ``ltx_pipelines``
``utils/constants.py``, the model cards, diffusers' ``scripts/convert_ltx2_to_diffusers.py``):

| | LTX-2 (``Lightricks/LTX-2``) | LTX-2.3 (``diffusers/LTX-2.3-Diffusers``) | LTX-2.5 (``Lightricks/LTX-2.5-Diffusers``) |
| --- | --- | --- | --- |
| size (H x W), frames, fps | 512 x 768, 121, 24 | the same | the same (its duration head is not used: jobs set ``num_frames``) |
| steps | 40 | 30 | 30 |
| video guidance: CFG, STG, modality, rescale | 3.0, 1.0, 3.0, 0.7 | the same | the same |
| audio guidance: CFG, STG, modality, rescale | 7.0, 1.0, 3.0, 0.7 | the same | the same |
| STG blocks | [29] | [28] | [28] |
| schedule | sigmas ``linspace(1, 1/N, N)`` shifted by the video's token count (0.95 at 1024 to 2.05 at 4096 tokens), ending at 0.1 | the same | the checkpoint's scheduler config, read as for the others |
| text | Gemma-3-12B, 1024 tokens | the same | Gemma-4-12B (``Gemma4UnifiedForConditionalGeneration``), 1024 tokens |
| video decoder | the VAE | the VAE | the diffusion decoder, one x0 step (its config's ``decoder_num_inference_steps``) |

LTX-2.5's column comes from Lightricks' ``ltx_pipelines`` at 2362161 (2026-08-11, their release 1.2.0,
"Support for LTX 2.5"): ``utils/constants.py``'s ``detect_params`` gives a checkpoint the params of
the newest generation at or above its ``model_version``, from 2.4 on ``LTX_2_4_PARAMS`` (LTX-2.3's
knobs, only the image CRF moved to 18, which diffusers' condition pipeline applies itself from the
text encoder), and ``ltx_core``'s ``text_encoders/gemma/gemma_assets.py`` pads Gemma 3 and Gemma 4
prompts to ``TOKENIZER_MAX_LENGTH = 1024``. Not taken: their distilled pipeline's ancestral (SDE)
Euler sampler from 2.5 on (``distilled.py``; the jobs sample the non-distilled checkpoint).

**LTX-2.5's diffusion decoder** (:mod:`cac_align.gen.families.ltx25_decoder`): from LTX-2.5 on, the video
latents are decoded by a small diffusion model that draws pixel noise. That module says what seeds its
draw (the video's seed), why Flow-GRPO's log-probabilities do not cover it, why ``num_frames`` is
always passed (the duration head is never consulted), and what was not measured at full size.

The Gemma-4 ``prompt_enhancer`` (an optional ``LTX2Pipeline`` component) is never run: the jobs
generate from the prompt file's text as it is, and ``tiny-random:ltx2.5`` leaves it out.

Two notes from diffusers' code: its LTX-2 conversion writes ``perturbed_attn: false``, and then the
STG forward changes nothing (it still runs); its default decode (``decode_timestep`` 0) is used here.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cac_align.gen.experts import Denoiser
from cac_align.gen.family import fixed_frames, image_runs
from cac_align.gen.families.ltx25_decoder import DIFFUSION_DECODER, check_decoder_size, diffusion_decode, load_diffusion_decoder
from cac_align.gen.families.ltx2_tiny import TINY_LTX2_BUILDERS
from cac_align.loading import check_weights_source, resolve_dtype, weights_error

__all__ = ["FAMILIES", "GUIDANCE_KEYS", "LOCAL_ATTENTIONS", "LTX2", "LTX23", "LTX25", "LTX2Denoiser", "LTX2Family", "AUDIO_BRANCH", "VIDEO_BRANCH",
           "conditioning_image", "family_for_index", "first_frame_latents"]

# The video stream's layers of every block: its self-attention, its cross-attention to the text,
# its feed-forward. A LoRA on these trains the video branch; the audio branch's layers
# (``audio_attn1``, ``audio_attn2``, ``audio_ff``) and the cross-modal attentions keep their weights.
VIDEO_BRANCH = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                "ff.net.0.proj", "ff.net.2"]

# The audio stream's layers of every block, which a LoRA adds where a recipe trains the sound (``audio:
# trained``, docs/audio.md "Training the sound"): its self-attention, its cross-attention to the text,
# its feed-forward, and the video-to-audio attention (the audio's queries on the video: its output
# joins the audio stream). The audio-to-video attention writes into the video stream and stays as it is.
AUDIO_BRANCH = ["audio_attn1.to_q", "audio_attn1.to_k", "audio_attn1.to_v", "audio_attn1.to_out.0", "audio_attn2.to_q", "audio_attn2.to_k",
                "audio_attn2.to_v", "audio_attn2.to_out.0", "video_to_audio_attn.to_q", "video_to_audio_attn.to_k", "video_to_audio_attn.to_v",
                "video_to_audio_attn.to_out.0", "audio_ff.net.0.proj", "audio_ff.net.2"]

# Under context parallel these attentions of every block run on each process's own tokens (no
# Ulysses exchange): what they attend to is whole on every process, the video-to-audio attention's
# video once gathered (LTX2Family.context_parallel_plan); the video self-attention (attn1) runs Ulysses
LOCAL_ATTENTIONS = ("attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")

# The guidance settings of a GeneratorConfig that LTX2Pipeline reads, by its own argument names
GUIDANCE_KEYS = ("guidance_scale", "stg_scale", "modality_scale", "guidance_rescale", "audio_guidance_scale", "audio_stg_scale",
                 "audio_modality_scale", "audio_guidance_rescale")


def _require_ltx2() -> None:
    import diffusers

    if not hasattr(diffusers, "LTX2Pipeline"):
        raise ImportError(f"LTX-2 needs diffusers' LTX2Pipeline, which diffusers {diffusers.__version__} does not have; "
                          "install diffusers 0.42 (`pip install 'diffusers>=0.42,<0.43'`)")


@dataclass(frozen=True)
class LTX2Family:
    """LTX-2 as a :class:`~cac_align.gen.family.GeneratorFamily` (module docstring).

    Attributes:
        name, title: "ltx2" / "ltx2.3" and how messages name it.
        defaults: the release settings a recipe may leave unset (module docstring).
        tiny_names, hub_ids: its tiny in-process pipelines and its release checkpoints.
    """

    name: str
    title: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    tiny_names: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    pipeline_class: str = "LTX2Pipeline"
    experts: int = 1
    spatial_multiple: int = 32  # the VAE's 32x; the transformer's patch is 1
    frame_multiple: int = 8  # the VAE keeps frame 0 and compresses each next 8 into one latent frame
    audio: bool = True
    lora_target_modules: tuple[str, ...] = tuple(VIDEO_BRANCH)
    audio_lora_target_modules: tuple[str, ...] = tuple(AUDIO_BRANCH)
    # its schedule stretches the sigmas to end at 0.1, dividing by 1 minus the last one: with one step, 0
    min_inference_steps: int = 2
    # what parallel training shards and splits (cac_align.gen.parallel): diffusers' LTX-2 declares no
    # _no_split_modules, so the block class is named here (accelerate's auto-wrap would make the whole
    # model one unit); Gemma and the connectors encode, then leave the device
    block_classes: tuple[str, ...] = ("LTX2VideoTransformerBlock",)
    encoder_components: tuple[str, ...] = ("text_encoder", "connectors")
    # image-to-video (cac_align.gen.family; module docstring): text alone, or text and a first frame
    # (LTX2ImageToVideoPipeline's); no last frame
    image_input: str = "optional"
    last_image: bool = False
    # LTX-2.5 on: the video is decoded by the diffusion decoder that samples (cac_align.gen.families.ltx25_decoder),
    # kept beside the pipeline as ``pipe.diffusion_decoder``
    diffusion_decoder: bool = False
    # LTX2Pipeline runs its classifier-free guidance's two branches as one batch (``torch.cat([latents] * 2)``), its
    # spatio-temporal and modality guidance as forwards of their own: a sampling forward holds 2 rows a video with CFG
    # (the memory plan of bon and repair, cac_align.plan.sampling)
    guidance_batched: bool = True

    @property
    def extra_components(self) -> tuple[str, ...]:
        """The diffusion decoder's folder, which ``LTX2Pipeline`` does not hold (LTX-2.5 on)."""
        return (DIFFUSION_DECODER,) if self.diffusion_decoder else ()

    # -- loading ------------------------------------------------------------------------
    def load(self, source: str, *, dtype: str, vae_dtype: str, key: str, pipeline: str | None = None,
             components: Mapping[str, Any] | None = None) -> Any:
        """The pipeline in ``source`` (a folder or hub id), safetensors only; its VAEs and vocoder in
        ``vae_dtype``. ``components``: modules to take instead of loading them (a sharded run's
        empty transformer: :func:`cac_align.gen.generator.empty_experts`)."""
        _require_ltx2()
        import diffusers

        folder = check_weights_source(source, key)
        try:
            pipe = getattr(diffusers, pipeline or self.pipeline_class).from_pretrained(folder, dtype=resolve_dtype(dtype), use_safetensors=True,
                                                                                       **(components or {}))
        except (OSError, ValueError) as exc:  # missing files, offline hub, unrecognised folder
            raise weights_error(source, key, exc) from exc
        for name in ("vae", "audio_vae", "vocoder"):
            getattr(pipe, name).to(resolve_dtype(vae_dtype))
        if self.diffusion_decoder:
            pipe.diffusion_decoder = load_diffusion_decoder(source, folder, vae_dtype, key)
        return pipe

    def build_tiny(self, name: str, seed: int = 0) -> Any:
        return TINY_LTX2_BUILDERS[name](seed)

    def check_size(self, pipe: Any, config: Any) -> None:
        """Before sampling (:func:`cac_align.gen.generator.build_generator`): refuses in one line a
        size LTX-2.5's diffusion decoder cannot take, naming the smallest that works
        (:func:`check_decoder_size`, from the decoder's own config); other versions take any."""
        decoder = getattr(pipe, "diffusion_decoder", None) if self.diffusion_decoder else None
        if decoder is not None:
            check_decoder_size(decoder.config, config.num_frames, config.height, config.width, self.title)

    # -- sampling -------------------------------------------------------------------------
    def denoiser(self, pipe: Any) -> "LTX2Denoiser":
        return LTX2Denoiser(pipe.transformer, self)

    def context_parallel_plan(self, transformer: Any) -> dict[str, Any]:
        """The plan given to diffusers' ``enable_parallelism(cp_plan=...)`` (Ulysses) for an
        ``LTX2VideoTransformer3DModel``, with which a context-parallel group computes what one
        process computes, both streams (tests/ltx2_context_parallel.py pins it).

        What is split and what is not (diffusers 0.42.1, ``models/transformers/transformer_ltx2.py``):

        - the **video tokens** are split: the root's ``hidden_states`` (dim 1), the outputs of the
          video rope (``rope``) and of the video side of the cross-modal rope
          (``cross_attn_rope``) along their token dim (1 for ``rope_type="interleaved"``, whose
          cos/sin are ``(B, T, D)``; 2 for ``"split"``, whose are ``(B, H, T, D/H/2)``); the
          video output is gathered at ``proj_out``;
        - the **audio stream stays whole on every rank** (its tokens, its rope, its output): it is
          small (25 tokens a second: 126 for 121 frames at 24 fps), its length then need not
          divide by the degree, and its heads are never split;
        - the **text is not split** (diffusers' own plan splits it and its mask: see below).

        Which attention exchanges what (diffusers' Ulysses, ``attention_dispatch.py:2539-2634``,
        swaps a token split of Q, K, V for a head split with an all-to-all, and back):

        - the video self-attention (``attn1``) runs Ulysses, as diffusers means it to;
        - every other attention runs on the process's own tokens, against keys every process holds
          whole: the text attentions (``attn2``, ``audio_attn2``), the audio self-attention
          (``audio_attn1``), the audio-to-video attention (``audio_to_video_attn``: the process's
          video queries against the whole audio), and the video-to-audio attention
          (``video_to_audio_attn``: the whole audio against the video, gathered over the group
          first, with a backward that sums the processes' gradients: ``_GatherTokens``).

        The processors of those five attentions in every block are replaced by their own class
        with the parallel config kept from the attention (``_OwnTokens``; the video-to-audio one
        gathers, ``_WholeVideoKeys``); their instance attributes are carried over and in one
        process nothing changes. That is what this method does besides returning the plan: call
        it before ``enable_parallelism``.

        Why not Ulysses for them (diffusers 0.42.1):

        - its backward reshapes the key and value gradients with the query's local length
          (``attention_dispatch.py:2628-2631``), so an attention whose queries and keys differ in
          length (every cross-attention here) fails in the backward;
        - the text attentions' mask is laid out per head (``transformer_ltx2.py:175-176``) and
          Ulysses gathers it along the keys only (``attention_dispatch.py:2573-2577``), leaving
          ``heads`` mask rows against ``heads / W`` query heads;
        - its "anything" variant has no backward (``:2846-2852``) and ring attention needs a
          log-sum-exp the native (SDPA) backend does not return (``:875-876``).

        Why not diffusers' ``_cp_plan`` (``transformer_ltx2.py:1125-1136``): it splits the video
        rope with ``expected_dims=3``, which the hook skips with a warning for ``"split"`` rope
        (4-dim cos/sin, ``hooks/context_parallel.py:206-211``), leaving the rope whole against
        split queries (``apply_split_rotary_emb`` fails); it leaves ``cross_attn_rope`` whole, which
        the split video queries of the audio-to-video attention meet; it reads
        ``encoder_attention_mask`` by position when it is not a keyword
        (``hooks/context_parallel.py:74-75``), and it splits the text whose mask Ulysses mishandles.

        Gradients: diffusers' gather at ``proj_out`` hands each rank only its own chunk's gradient
        (``hooks/context_parallel.py:263-266``), and everything held whole (audio, text, time
        embeddings) gets on each rank only what that rank's chunk sends it, so a loss on the
        **video** output gives gradients whose sum over the group is one process's. The audio output
        is whole on every rank: a loss that read it would count its gradient once per rank (no job
        does: flow-grpo and dpo train on the video velocity).

        Not covered: per-token timesteps (a 2-dim ``timestep``, the image-to-video pipelines) and
        ``video_self_attention_mask``, which this plan does not split (the shapes then disagree and
        the forward fails).

        Not with an image (:meth:`encode_images`): the image's first frame makes the video
        tokens' timesteps per token (``(B, T)``, 0 on the image's tokens), and this plan splits the
        tokens but not those timesteps, so each process would modulate its chunk with the wrong
        ones. The jobs refuse context parallel for prompts with images before anything loads.

        Args:
            transformer: the pipeline's ``LTX2VideoTransformer3DModel`` (with or without LoRA).

        Returns:
            diffusers' ``_cp_plan`` format: module name -> ``ContextParallelInput``s / ``ContextParallelOutput``.
        """
        from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

        for block in transformer.transformer_blocks:
            for name in LOCAL_ATTENTIONS:
                attention = getattr(block, name)
                attention.set_processor(_processor_as(_WholeVideoKeys if name == "video_to_audio_attn" else _OwnTokens, attention.processor))
        # the rope modules return (cos, sin): split their outputs along the token dim
        split_rope = transformer.config.rope_type == "split"
        token_dim, dims = (2, 4) if split_rope else (1, 3)
        rope = {index: ContextParallelInput(split_dim=token_dim, expected_dims=dims, split_output=True) for index in (0, 1)}
        return {
            "": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
            "rope": rope,
            "cross_attn_rope": dict(rope),
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }

    def check_context_parallel(self, config: Any, degree: int, transformer_config: Mapping[str, Any]) -> None:
        """Raises ``RecipeError`` naming the setting to change when a context-parallel group of
        ``degree`` processes cannot split this video (:meth:`context_parallel_plan`), before
        anything loads: the video's latent tokens (``latent frames x (height / 32) x (width / 32)``,
        patch 1) and the video self-attention's heads (``num_attention_heads``, the one attention that
        runs Ulysses) must divide by ``degree``. The audio's length and heads need not: the audio
        stream is whole on every process. Prompts with images cannot run context parallel at all
        (:meth:`context_parallel_plan`); the jobs refuse that, not this check.

        Args:
            config: the :class:`~cac_align.gen.generator.GeneratorConfig` (``height``, ``width``,
                ``num_frames`` resolved).
            degree: the context-parallel degree (``parallel.context_parallel``).
            transformer_config: the transformer's ``config.json`` (a mapping, e.g.
                ``pipe.transformer.config``).
        """
        from cac_align.gen.family import check_context_parallel_split

        check_context_parallel_split(self, config, degree, transformer_config, ("num_attention_heads",))

    def guidance(self, config: Any, guided: bool = True, fps: float | None = None) -> dict[str, Any]:
        """``config``'s guidance as ``LTX2Pipeline.__call__`` reads it (an audio scale unset or 0
        takes the video's), the STG blocks, and the frame rate the positions are measured in
        (``fps``, or ``config.fps``); ``guided=False``: every guidance off, one forward a step."""
        frame_rate = float(config.fps if fps is None else fps)
        if not guided:
            return {"guidance_scale": 1.0, "stg_scale": 0.0, "modality_scale": 1.0, "guidance_rescale": 0.0, "audio_guidance_scale": 1.0,
                    "audio_stg_scale": 0.0, "audio_modality_scale": 1.0, "audio_guidance_rescale": 0.0, "stg_blocks": None, "frame_rate": frame_rate}
        video = {key: float(getattr(config, key)) for key in GUIDANCE_KEYS if not key.startswith("audio_")}
        audio = {f"audio_{key}": float(getattr(config, f"audio_{key}") or video[key]) for key in video}
        return {**video, **audio, "stg_blocks": list(config.stg_blocks) if config.stg_blocks else None, "frame_rate": frame_rate}

    def encode_prompts(self, pipe: Any, prompts: Sequence[str], negative_prompt: str | None, guidance: Mapping[str, Any],
                       max_sequence_length: int) -> tuple[Any, Any]:
        """The connectors' video and audio contexts and mask of ``prompts`` (and of the negative
        prompt with CFG: both through the connectors in one batch, negatives first, as the
        pipeline runs them). ``negative_prompt`` None: diffusers' LTX-2 default negative prompt."""
        from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

        from cac_align.gen.family import Conditioning

        cfg = _does_cfg(guidance)
        negative = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        with torch.no_grad():
            embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
                prompt=list(prompts), negative_prompt=[negative] * len(prompts) if cfg else None, do_classifier_free_guidance=cfg,
                max_sequence_length=max_sequence_length, device=pipe._execution_device,
            )
            padding = getattr(pipe.tokenizer, "padding_side", "left")
            if not cfg:
                video, audio, attention = pipe.connectors(embeds, mask, padding_side=padding)
                return Conditioning(embeds=video, audio_embeds=audio, attention_mask=attention), None
            video, audio, attention = pipe.connectors(torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask]), padding_side=padding)
        n = len(prompts)
        return (Conditioning(embeds=video[n:], audio_embeds=audio[n:], attention_mask=attention[n:]),
                Conditioning(embeds=video[:n], audio_embeds=audio[:n], attention_mask=attention[:n]))

    def encode_images(self, pipe: Any, config: Any, images: Sequence[Any]) -> Any:
        """Each row's first frame as ``LTX2ImageToVideoPipeline`` conditions on it (diffusers 0.42.1
        ``pipeline_ltx2_image2video.py``: ``__call__`` step 4 and ``prepare_latents``): the image
        H.264 re-compressed at the release's CRF (:func:`conditioning_image`), resized to
        ``config``'s height x width, encoded by the VAE and normalized (:func:`first_frame_latents`).
        It is the video's first latent frame, ``fixed`` (module docstring, "Image-to-video").

        Args:
            images: one :class:`~cac_align.run.input_files.PromptImage` per row (no ``last_image``:
                :func:`~cac_align.gen.family.check_prompt_images` refuses one first).

        Returns:
            A :class:`~cac_align.gen.family.Conditioning` with ``fixed`` ``(B, C, 1, H', W')``
            float32, normalized latents as the sampler's.
        """
        from diffusers.utils import load_image

        from cac_align.gen.family import Conditioning

        encoded: dict[Any, torch.Tensor] = {}  # a group's rows share an image: encode it once
        for image in images:
            if image.last_image is not None:
                raise ValueError(f"{self.title} takes a first frame only; {image.last_image} was given as the last one")
            if image not in encoded:
                encoded[image] = first_frame_latents(pipe, conditioning_image(pipe, load_image(image.image)), config.height, config.width)
        return Conditioning(fixed=torch.cat([encoded[image] for image in images]))

    def denoising_steps(self, num_inference_steps: int) -> int:
        """The transformer calls (denoising steps) one sample of ``num_inference_steps`` makes: the
        length of :meth:`schedule`'s timesteps (one a step)."""
        return num_inference_steps

    def schedule(self, pipe: Any, config: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's own: ``linspace(1, 1/N, N)`` through its scheduler, shifted by the video's
        token count (diffusers' ``calculate_shift`` and ``retrieve_timesteps`` of the pipeline's
        module); ``(sigmas (N + 1,) ending at 0, timesteps (N,) = 1000 sigma)``."""
        from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift, retrieve_timesteps

        steps = config.num_inference_steps
        frames, height, width = self._latent_size(pipe, config)
        scheduler = copy.deepcopy(pipe.scheduler)
        settings = scheduler.config
        mu = calculate_shift(frames * height * width, settings.get("base_image_seq_len", 1024), settings.get("max_image_seq_len", 4096),
                             settings.get("base_shift", 0.95), settings.get("max_shift", 2.05))
        timesteps, _ = retrieve_timesteps(scheduler, steps, "cpu", None, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return scheduler.sigmas.float().cpu(), timesteps.float().cpu()

    def _latent_size(self, pipe: Any, config: Any) -> tuple[int, int, int]:
        return ((config.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1, config.height // pipe.vae_spatial_compression_ratio,
                config.width // pipe.vae_spatial_compression_ratio)

    def side_shape(self, pipe: Any, num_frames: int, fps: float) -> tuple[int, int]:
        """The packed audio latents' shape for ``num_frames`` at ``fps``: ``(tokens, width)``, one
        token per ``sample_rate / hop / 4`` of a second (25 a second: 126 for 121 frames at 24)."""
        per_second = pipe.audio_sampling_rate / pipe.audio_hop_length / float(pipe.audio_vae_temporal_compression_ratio)
        mel = pipe.audio_vae.config.mel_bins // pipe.audio_vae_mel_compression_ratio
        return round(num_frames / fps * per_second), pipe.audio_vae.config.latent_channels * mel

    def initial_latents(self, pipe: Any, config: Any, generators: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's draws, each generator's video noise then its audio noise: video
        ``(B, C, F', H', W')``, audio packed ``(B, L, C_a M')`` (channel-major tokens)."""
        device = pipe._execution_device
        frames, height, width = self._latent_size(pipe, config)
        channels = pipe.transformer.config.in_channels
        video = torch.stack([torch.randn((channels, frames, height, width), generator=g, device=device, dtype=torch.float32) for g in generators])
        tokens, _ = self.side_shape(pipe, config.num_frames, config.fps)
        mel = pipe.audio_vae.config.mel_bins // pipe.audio_vae_mel_compression_ratio
        audio = torch.stack([torch.randn((pipe.audio_vae.config.latent_channels, tokens, mel), generator=g, device=device, dtype=torch.float32)
                             for g in generators])
        return video, audio.transpose(1, 2).flatten(2, 3)

    # -- latents and media ------------------------------------------------------------------
    def decode(self, pipe: Any, latents: torch.Tensor, side: Any = None, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Final video latents (normalized, ``(B, C, F', H', W')``) to uint8 frames, as the pipeline
        decodes them (its default ``decode_timestep`` 0: a timestep-conditioned VAE gets 0 and the
        latents as they are). LTX-2.5: through its diffusion decoder, sample ``i``'s draw from
        :func:`~cac_align.gen.families.ltx25_decoder.decoder_generator` of ``seeds[i]``, which must then be given."""
        from cac_align.gen.generator import frames_to_uint8

        vae = pipe.vae
        if self.diffusion_decoder:
            if seeds is None or len(seeds) != latents.shape[0]:
                raise ValueError(f"{self.title}'s diffusion decoder samples: give decode one seed per video ({latents.shape[0]}), got {seeds!r}")
            with torch.no_grad():
                z = latents.to(next(vae.parameters()).device, torch.float32)
                mean, std = vae.latents_mean.view(1, -1, 1, 1, 1).to(z), vae.latents_std.view(1, -1, 1, 1, 1).to(z)
                return diffusion_decode(pipe, z * std / vae.config.scaling_factor + mean, seeds)
        with torch.no_grad():
            z = latents.to(next(vae.parameters()).device, pipe.transformer.dtype)
            mean, std = vae.latents_mean.view(1, -1, 1, 1, 1).to(z), vae.latents_std.view(1, -1, 1, 1, 1).to(z)
            z = z * std / vae.config.scaling_factor + mean
            temb = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype) if vae.config.timestep_conditioning else None
            video = vae.decode(z.to(vae.dtype), temb, return_dict=False)[0]
            frames = pipe.video_processor.postprocess_video(video, output_type="pt")
        return frames_to_uint8(frames)

    def side_frames(self, side: torch.Tensor) -> torch.Tensor:
        """Packed audio latents ``(B, L, C_a M')`` as ``(B, L, K)``: time first, one token every
        40 ms of the clip (the tokens are in time order already)."""
        return side

    def decode_audio(self, pipe: Any, side: torch.Tensor) -> tuple[np.ndarray, int]:
        """Final packed audio latents ``(B, L, C_a M')`` to waveforms float32 ``(B, 2, samples)`` in
        [-1, 1] and their sample rate (the vocoder's), as the pipeline decodes them."""
        audio_vae = pipe.audio_vae
        mel_bins = audio_vae.config.mel_bins // pipe.audio_vae_mel_compression_ratio
        with torch.no_grad():
            packed = side.to(next(audio_vae.parameters()).device, torch.float32)
            raw = packed * audio_vae.latents_std.to(packed) + audio_vae.latents_mean.to(packed)
            mel = audio_vae.decode(raw.unflatten(2, (-1, mel_bins)).transpose(1, 2).to(audio_vae.dtype), return_dict=False)[0]
            wave = pipe.vocoder(mel)
        return wave.float().clamp(-1, 1).cpu().numpy(), int(pipe.vocoder.config.output_sampling_rate)

    def encode_video(self, pipe: Any, frames: Any) -> torch.Tensor:
        """uint8 frames ``(F, H, W, 3)`` (``F = 8k + 1``, sides multiples of 32) to normalized
        latents ``(C, F', H', W')`` float32, the inverse of :meth:`decode`: the mode of the VAE's
        latent distribution, normalized as the pipeline normalizes
        (``(z - latents_mean) * scaling_factor / latents_std``)."""
        vae = pipe.vae
        x = torch.as_tensor(np.asarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
        with torch.no_grad():
            x = x.to(next(vae.parameters()).device, vae.dtype) / 127.5 - 1.0
            z = vae.encode(x).latent_dist.mode().float()
            mean, std = vae.latents_mean.view(1, -1, 1, 1, 1).to(z), vae.latents_std.view(1, -1, 1, 1, 1).to(z)
            return ((z - mean) * vae.config.scaling_factor / std)[0]

    def latent_grid(self, pipe: Any) -> tuple[int, int, tuple[int, int, int]]:
        patch = pipe.transformer.config.patch_size
        return pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio, (pipe.transformer.config.patch_size_t, patch, patch)

    def generate(self, pipe: Any, config: Any, prompts: Sequence[str], seeds: Sequence[int], images: Sequence[Any] | None = None) -> Any:
        """``LTX2Pipeline``'s videos and soundtracks, one generator per (prompt, seed); with
        ``images`` (one :class:`~cac_align.run.input_files.PromptImage` per prompt),
        ``LTX2ImageToVideoPipeline``'s on the same components (:func:`_image_to_video`) with the
        same settings, one call per run of consecutive rows that share an image.

        diffusers 0.42.1's image-to-video pipeline takes its CRF re-compression only on one PIL
        image (``check_inputs``), and then indexes that one image per generator
        (``prepare_latents``: ``image[i]``), which fails for a run of two rows or more with a
        generator each. So the image is re-compressed here, with the pipeline's own functions and
        CRF (:func:`conditioning_image`), and given once per row with ``image_crf=0``: what the
        pipeline computes for each row alone (tests/gen/test_ltx2_i2v.py pins it)."""
        from diffusers.pipelines.ltx2.utils import DEFAULT_NEGATIVE_PROMPT

        from cac_align.gen.family import Generated
        from cac_align.gen.generator import frames_to_uint8

        device = pipe._execution_device
        guidance = self.guidance(config)
        negative = DEFAULT_NEGATIVE_PROMPT if config.negative_prompt is None else config.negative_prompt
        generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        # num_frames always given: a duration head (LTX-2.5) is never consulted (cac_align.gen.families.ltx25_decoder);
        # a diffusion decoder decodes the pipeline's latents with each seed's own draw
        settings = dict(height=config.height, width=config.width, num_frames=int(config.num_frames), frame_rate=config.fps,
                        num_inference_steps=config.num_inference_steps, **{key: guidance[key] for key in GUIDANCE_KEYS},
                        spatio_temporal_guidance_blocks=guidance["stg_blocks"], output_type="latent" if self.diffusion_decoder else "pt",
                        max_sequence_length=config.max_sequence_length)
        if images is None:
            outputs = [pipe(prompt=list(prompts), negative_prompt=[negative] * len(prompts), generator=generators, **settings)]
        else:
            from diffusers.utils import load_image

            animate = _image_to_video(pipe)
            outputs = []
            for lo, hi in image_runs(images):
                image = conditioning_image(pipe, load_image(images[lo].image))
                outputs.append(animate(image=[image] * (hi - lo), image_crf=0, prompt=list(prompts[lo:hi]), negative_prompt=[negative] * (hi - lo),
                                       generator=generators[lo:hi], **settings))
        if self.diffusion_decoder:  # the pipeline's latents (denormalized), decoded as its decode pipeline decodes them
            frames = diffusion_decode(pipe, torch.cat([output.frames for output in outputs]), seeds)
            with torch.no_grad():
                mel = pipe.audio_vae.decode(torch.cat([output.audio for output in outputs]).to(pipe.audio_vae.dtype), return_dict=False)[0]
                audio = pipe.vocoder(mel).float().clamp(-1, 1).cpu().numpy()
            return Generated(frames, audio, int(pipe.vocoder.config.output_sampling_rate))
        frames = np.concatenate([frames_to_uint8(output.frames) for output in outputs])
        audio = np.concatenate([output.audio.float().clamp(-1, 1).cpu().numpy() for output in outputs])
        return Generated(frames, audio, int(pipe.vocoder.config.output_sampling_rate))


class _OwnTokens:
    """Mixed into an LTX-2 attention processor class: the attention runs on the tokens the process
    holds, never Ulysses. diffusers' ``enable_parallelism`` gives its parallel config to every
    processor (0.42.1 ``models/modeling_utils.py:1816-1823``) and LTX-2's processors hand it to the
    attention (``transformer_ltx2.py:214``, ``:309``); here it is kept aside (``_context_parallel``)
    and the attention is given None."""

    @property
    def _parallel_config(self) -> None:
        return None

    @_parallel_config.setter
    def _parallel_config(self, value: Any) -> None:
        self.__dict__["_context_parallel"] = value


class _WholeVideoKeys(_OwnTokens):
    """The video-to-audio attention under context parallel: every audio query attends to every video
    token, so the process's chunk of the video (the keys' input, ``encoder_hidden_states``) and of
    its rope (``key_rotary_emb``) are gathered over the group first (:func:`_gather_tokens`), and the
    attention runs on the process's own (whole) audio."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, query_rotary_emb: Any = None, key_rotary_emb: Any = None, **kwargs: Any) -> torch.Tensor:
        config = self.__dict__.get("_context_parallel")
        context = None if config is None else config.context_parallel_config
        if context is not None and context._world_size > 1:
            # the group and the order diffusers' split hook chunks the tokens in (hooks/context_parallel.py:217, :281)
            group = context._flattened_mesh.get_group()
            encoder_hidden_states = _gather_tokens(encoder_hidden_states, 1, group)
            if key_rotary_emb is not None:  # cos, sin: (B, T, D) interleaved, (B, H, T, D / H / 2) split
                key_rotary_emb = tuple(_gather_tokens(x, 1 if x.ndim == 3 else 2, group) for x in key_rotary_emb)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, query_rotary_emb, key_rotary_emb, **kwargs)


class _GatherTokens(torch.autograd.Function):
    """All-gather along ``dim`` whose backward sums every process's gradient of the whole before
    taking this process's chunk (a reduce-scatter): the processes use the gathered tensor in
    different computations (their own audio copies carry their own share of the loss), so each
    chunk's gradient is the sum of theirs. diffusers' ``AllGatherFunction``
    (``hooks/context_parallel.py:254-266``) keeps only the local share, which is right only at the
    output, where every process's gradient of the whole is the same."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.dim, ctx.group = dim, group
        chunks = [torch.empty_like(tensor.contiguous()) for _ in range(dist.get_world_size(group))]
        dist.all_gather(chunks, tensor.contiguous(), group=group)
        return torch.cat(chunks, dim=dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # gloo has no reduce-scatter; the sum, then this process's chunk
        return grad.chunk(dist.get_world_size(ctx.group), dim=ctx.dim)[dist.get_rank(ctx.group)].contiguous(), None, None


def _gather_tokens(tensor: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    return _GatherTokens.apply(tensor, dim, group)


_PROCESSOR_CLASSES: dict[tuple[type, type], type] = {}


def _processor_as(mixin: type, processor: Any) -> Any:
    """``processor`` (an ``LTX2AudioVideoAttnProcessor`` or ``LTX2PerturbedAttnProcessor``) as its
    class with ``mixin`` in front, its instance attributes (an attention backend set on it) carried
    over; one that already is, as it is."""
    if isinstance(processor, mixin):
        return processor
    base = type(processor)
    if (mixin, base) not in _PROCESSOR_CLASSES:
        _PROCESSOR_CLASSES[mixin, base] = type(f"{mixin.__name__.lstrip('_')}{base.__name__}", (mixin, base), {"__module__": __name__})
    converted = object.__new__(_PROCESSOR_CLASSES[mixin, base])
    converted.__dict__.update({key: value for key, value in vars(processor).items() if key != "_parallel_config"})
    return converted


def _does_cfg(guidance: Mapping[str, Any]) -> bool:
    return guidance["guidance_scale"] > 1.0 or guidance["audio_guidance_scale"] > 1.0


# ---------------------------------------------------------------------------------------
# Image-to-video: the first frame as LTX2ImageToVideoPipeline prepares it
# ---------------------------------------------------------------------------------------
def _image_to_video(pipe: Any) -> Any:
    """diffusers' ``LTX2ImageToVideoPipeline`` over ``pipe``'s components, each left in its dtype.

    Two things of diffusers 0.42.1 are worked around, nothing else changed:

    - not ``from_pipe``: it ends with ``new_pipeline.to(dtype=dtype)``, ``dtype`` defaulting to
      float32 (``pipelines/pipeline_utils.py``, ``DiffusionPipeline.from_pipe``), which casts the
      shared transformer and text encoder of a bfloat16 run to float32 in place; the pipeline is
      built from ``pipe.components`` instead (its ``__init__`` takes LTX2Pipeline's components);
    - its ``__call__`` casts the image's pixels to the prompt embeddings' dtype before
      ``prepare_latents`` encodes them, which a float32 VAE beside a bfloat16 text encoder (the
      jobs' default ``vae_dtype``) refuses; :func:`_image_to_video_class` gives the VAE pixels in
      its own dtype (no change where the two agree), as :func:`first_frame_latents` does.
    """
    animate = _image_to_video_class()(**pipe.components)
    animate.set_progress_bar_config(disable=True)
    return animate


@functools.lru_cache(maxsize=1)
def _image_to_video_class() -> type:
    """``LTX2ImageToVideoPipeline`` whose ``prepare_latents`` casts the image to the VAE's dtype
    first (:func:`_image_to_video`); made on first use, diffusers being imported lazily."""
    from diffusers import LTX2ImageToVideoPipeline

    class ImageToVideoPixelsInVaeDtype(LTX2ImageToVideoPipeline):
        def prepare_latents(self, image: Any = None, *args: Any, **kwargs: Any) -> Any:
            return super().prepare_latents(None if image is None else image.to(self.vae.dtype), *args, **kwargs)

    return ImageToVideoPixelsInVaeDtype


def conditioning_image(pipe: Any, image: Any, crf: int | None = None) -> Any:
    """``image`` (a PIL image) as the image-to-video pipeline conditions on it before resizing:
    H.264 re-compressed at ``crf``, by default the release's (diffusers 0.42.1
    ``pipelines/ltx2/utils.py``: ``resolve_default_image_crf`` reads the text encoder, 33 for the
    Gemma-3 releases, 18 for LTX-2.5's Gemma 4; ``apply_image_conditioning_crf`` encodes it as one
    mp4 frame with PyAV and decodes it), so the first frame carries the compression the model saw
    in training. ``crf`` 0: the image as it is (RGB)."""
    import PIL.Image
    from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf, resolve_default_image_crf

    crf = resolve_default_image_crf(pipe.text_encoder) if crf is None else crf
    rgb = image.convert("RGB")
    return rgb if crf == 0 else PIL.Image.fromarray(apply_image_conditioning_crf(np.array(rgb), crf))


def first_frame_latents(pipe: Any, image: Any, height: int, width: int) -> torch.Tensor:
    """The normalized first latent frame of ``image`` (re-compressed already:
    :func:`conditioning_image`), as ``LTX2ImageToVideoPipeline.prepare_latents`` builds its
    ``init_latents``: its ``video_processor.preprocess`` to ``height`` x ``width`` (a **bilinear**
    resize, to [-1, 1]: the image-to-video pipeline's ``__init__`` builds its processor with
    ``resample="bilinear"`` where ``LTX2Pipeline``'s keeps the default Lanczos, so a text-to-video
    pipeline's ``pipe.video_processor`` would resize otherwise), one frame through the VAE, the mode
    of its latent distribution (``retrieve_latents(..., "argmax")``), then ``_normalize_latents``
    with the VAE's ``latents_mean`` and ``latents_std``.

    That normalization is called without the VAE's ``scaling_factor`` (which the pipeline's decode
    divides by); every LTX-2 release's is 1.0, and it is the pipeline's call that is followed. The
    pipeline casts the pixels to the prompt embeddings' dtype; here they take the VAE's (the same
    in a run whose VAE shares the transformer's dtype; a float32 VAE is given float32 pixels).

    Returns:
        ``(1, C, 1, H / 32, W / 32)`` float32 on the pipeline's device.
    """
    from diffusers.pipelines.ltx2.pipeline_ltx2_image2video import LTX2ImageToVideoPipeline, retrieve_latents
    from diffusers.video_processor import VideoProcessor

    vae = pipe.vae
    device = pipe._execution_device
    if isinstance(pipe, LTX2ImageToVideoPipeline):
        processor = pipe.video_processor
    else:  # the image-to-video pipeline's own processor (its __init__)
        processor = VideoProcessor(vae_scale_factor=pipe.vae_spatial_compression_ratio, resample="bilinear")
    with torch.no_grad():
        pixels = processor.preprocess(image, height=height, width=width)  # (1, 3, H, W)
        pixels = pixels.to(next(vae.parameters()).device, vae.dtype).unsqueeze(2)  # one frame
        z = retrieve_latents(vae.encode(pixels), None, "argmax").to(device, torch.float32)
        return LTX2ImageToVideoPipeline._normalize_latents(z, vae.latents_mean, vae.latents_std)


class LTX2Denoiser(Denoiser):
    """The velocities of LTX-2's two streams at a step, as ``LTX2Pipeline`` computes them (module
    docstring): ``denoiser(latents, timestep, cond, negative, guidance, dtype, side)`` ->
    ``(video velocity (B, C, F', H', W'), audio velocity (B, L, C_a M'))``.

    Args:
        transformer: the pipeline's ``LTX2VideoTransformer3DModel``.
        family: the :class:`LTX2Family` that built it.
    """

    def __init__(self, transformer: Any, family: Any):
        super().__init__()
        self.transformer = transformer
        self.family = family

    def _call(self, video: torch.Tensor, audio: torch.Tensor, context: Any, t: torch.Tensor, grid: tuple[int, int, int], fps: float,
              video_t: torch.Tensor | None = None, **perturb: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformer forward over ``video`` (packed) and ``audio`` with ``context``'s rows.
        ``video_t``: the video tokens' own timesteps ``(rows, T)`` (an image's first frame at 0),
        the audio's and the cross-attentions' staying ``t``, as ``LTX2ImageToVideoPipeline``
        passes them; None: ``t`` for all, as ``LTX2Pipeline`` passes it."""
        frames, height, width = grid
        rows = video.shape[0]
        rope, audio_rope = self.transformer.rope, self.transformer.audio_rope
        timesteps = {"timestep": t} if video_t is None else {"timestep": video_t, "audio_timestep": t}
        v, a = self.transformer(
            hidden_states=video, audio_hidden_states=audio, encoder_hidden_states=context.embeds, audio_encoder_hidden_states=context.audio_embeds,
            **timesteps, sigma=t, encoder_attention_mask=context.attention_mask, audio_encoder_attention_mask=context.attention_mask, num_frames=frames,
            height=height, width=width, fps=fps, audio_num_frames=audio.shape[1],
            video_coords=rope.prepare_video_coords(rows, frames, height, width, video.device, fps=fps),
            audio_coords=audio_rope.prepare_audio_coords(rows, audio.shape[1], audio.device), perturbation_mask=None,
            use_cross_timestep=True, return_dict=False, **{"isolate_modalities": False, "spatio_temporal_guidance_blocks": None, **perturb},
        )
        return v.float(), a.float()

    def forward(self, latents: torch.Tensor, timestep: Any, cond: Any, negative: Any, guidance: Mapping[str, Any], dtype: Any = None,
                side: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided velocities (module docstring).

        Animating an image (``cond`` holds ``fixed``, :func:`~cac_align.gen.family.fixed_frames`),
        the step is ``LTX2ImageToVideoPipeline``'s (diffusers 0.42.1
        ``pipeline_ltx2_image2video.py``, the denoising loop): the image's latent frame is put in
        front of ``latents`` and the transformer sees the whole video; its tokens get timestep 0
        (``timestep.unsqueeze(-1) * (1 - conditioning_mask)``), the audio and ``sigma`` the step's
        ``t``; the guidance, its rescale (whose standard deviation is over the whole video's tokens)
        and the conversions between velocity and clean sample are done on the whole video with the
        step's one sigma, as the pipeline does, and the image frame's velocity is dropped (the
        pipeline's scheduler steps ``latents[:, :, 1:]`` only). Without ``fixed``, nothing of this
        runs: the text-to-video step is ``LTX2Pipeline``'s, unchanged.

        Args:
            latents: video ``(B, C, F', H', W')`` float32, the generated frames (without the ones
                ``cond`` fixes); side: audio ``(B, L, C_a M')`` float32.
            timestep: the scheduler's ``t = 1000 sigma``, a scalar (a sampling step) or one per
                sample ``(B,)``.
            cond / negative: :class:`~cac_align.gen.family.Conditioning` (``embeds``,
                ``audio_embeds``, ``attention_mask``; ``cond`` also ``fixed`` ``(B, C, 1, H', W')``
                when it animates an image: :meth:`LTX2Family.encode_images`); negative None
                without CFG.
            guidance: :meth:`LTX2Family.guidance`.
            dtype: the transformer's dtype (inputs are cast to it).

        Returns:
            ``(video velocity (B, C, F', H', W')`` of the generated frames only, ``audio velocity
            (B, L, C_a M'))``.
        """
        if side is None:
            raise ValueError("LTX-2 denoises video and audio together: pass the audio latents (side)")
        fixed = fixed_frames(cond)
        if fixed:  # the whole video: the image's frame, then the generated ones
            latents = torch.cat([cond.fixed.to(latents.device, latents.dtype), latents], dim=2)
        batch, channels, frames, height, width = latents.shape
        grid, fps = (frames, height, width), guidance["frame_rate"]
        x = latents.permute(0, 2, 3, 4, 1).reshape(batch, frames * height * width, channels)  # tokens by frame, row, column
        a = side
        dtype = dtype or latents.dtype
        t = torch.as_tensor(timestep, device=latents.device, dtype=torch.float32).expand(batch)
        sigma = (t / 1000.0).view(batch, 1, 1)
        video_t = None
        if fixed:  # the pipeline's timestep.unsqueeze(-1) * (1 - conditioning_mask): the image's tokens at 0
            moving = torch.ones((frames, height * width), device=latents.device, dtype=torch.float32)
            moving[:fixed] = 0.0
            video_t = t.unsqueeze(-1) * moving.flatten()
        x_in, a_in = x.to(dtype), a.to(dtype)
        if _does_cfg(guidance):
            both = type(cond).cat([negative, cond])  # the text's tensors (the negative's names)
            v, va = self._call(torch.cat([x_in, x_in]), torch.cat([a_in, a_in]), both, torch.cat([t, t]), grid, fps,
                               None if video_t is None else torch.cat([video_t, video_t]))
            (v_neg, v_c), (va_neg, va_c) = v.chunk(2), va.chunk(2)
        else:
            v_c, va_c = self._call(x_in, a_in, cond, t, grid, fps, video_t)
        x0, a0 = x - v_c * sigma, a - va_c * sigma  # each stream's clean-sample prediction
        video, audio = x0, a0
        if _does_cfg(guidance):
            video = video + (guidance["guidance_scale"] - 1) * (x0 - (x - v_neg * sigma))
            audio = audio + (guidance["audio_guidance_scale"] - 1) * (a0 - (a - va_neg * sigma))
        if guidance["stg_scale"] > 0 or guidance["audio_stg_scale"] > 0:  # self-attention skipped in the STG blocks
            v_s, va_s = self._call(x_in, a_in, cond, t, grid, fps, video_t, spatio_temporal_guidance_blocks=guidance["stg_blocks"])
            video = video + guidance["stg_scale"] * (x0 - (x - v_s * sigma))
            audio = audio + guidance["audio_stg_scale"] * (a0 - (a - va_s * sigma))
        if guidance["modality_scale"] > 1 or guidance["audio_modality_scale"] > 1:  # each stream alone: no audio-video attention
            v_m, va_m = self._call(x_in, a_in, cond, t, grid, fps, video_t, isolate_modalities=True)
            video = video + (guidance["modality_scale"] - 1) * (x0 - (x - v_m * sigma))
            audio = audio + (guidance["audio_modality_scale"] - 1) * (a0 - (a - va_m * sigma))
        video, audio = _rescale(video, x0, guidance["guidance_rescale"]), _rescale(audio, a0, guidance["audio_guidance_rescale"])
        v_video, v_audio = (x - video) / sigma, (a - audio) / sigma
        v_video = v_video.reshape(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return v_video[:, :, fixed:], v_audio  # the image's frame is not stepped


def _rescale(guided: torch.Tensor, conditional: torch.Tensor, factor: float) -> torch.Tensor:
    """diffusers' ``rescale_noise_cfg`` (of the pipeline's module) when ``factor > 0``."""
    if factor <= 0:
        return guided
    from diffusers.pipelines.ltx2.pipeline_ltx2 import rescale_noise_cfg

    return rescale_noise_cfg(guided, conditional, guidance_rescale=factor)


_LTX2_SHARED = {"height": 512, "width": 768, "num_frames": 121, "fps": 24.0, "guidance_scale": 3.0, "stg_scale": 1.0, "modality_scale": 3.0,
                "guidance_rescale": 0.7, "audio_guidance_scale": 7.0, "audio_stg_scale": 1.0, "audio_modality_scale": 3.0,
                "audio_guidance_rescale": 0.7, "max_sequence_length": 1024}
LTX2 = LTX2Family("ltx2", "LTX-2", {**_LTX2_SHARED, "num_inference_steps": 40, "stg_blocks": [29]}, tiny_names=("tiny-random:ltx2",),
                  hub_ids=("Lightricks/LTX-2",))
LTX23 = LTX2Family("ltx2.3", "LTX-2.3", {**_LTX2_SHARED, "num_inference_steps": 30, "stg_blocks": [28]}, tiny_names=("tiny-random:ltx2.3",),
                   hub_ids=("diffusers/LTX-2.3-Diffusers", "dg845/LTX-2.3-Diffusers"))
# LTX-2.5's release settings, each from a source (the module docstring's table):
# - steps 30, STG block 28, the guidance above, 512 x 768, 121 frames at 24 fps: Lightricks' ltx_pipelines
#   utils/constants.py at 2362161 (2026-08-11, their "Support for LTX 2.5" release 1.2.0): ``detect_params``
#   gives a checkpoint the params of the newest generation at or above its ``model_version``, and for 2.4
#   on that is ``LTX_2_4_PARAMS`` = LTX-2.3's (30 steps, STG on block 28) with only the image CRF moved
#   (18); an LTX-2.5 checkpoint is version 2.5 (distilled.py there: ``ANCESTRAL_SAMPLER_SINCE_VERSION =
#   (2, 5)``). The same guidance and block are diffusers 0.42.1's LTX-2 modular guider defaults
#   (modular_pipelines/ltx2/denoise.py), which its LTX25ModularPipeline keeps.
# - 1024 text tokens: ltx_core text_encoders/gemma/gemma_assets.py at 2362161, ``TOKENIZER_MAX_LENGTH =
#   1024`` for Gemma 3 and Gemma 4 alike.
LTX25 = LTX2Family("ltx2.5", "LTX-2.5", {**_LTX2_SHARED, "num_inference_steps": 30, "stg_blocks": [28]}, tiny_names=("tiny-random:ltx2.5",),
                   hub_ids=("Lightricks/LTX-2.5-Diffusers",), diffusion_decoder=True)
FAMILIES = (LTX2, LTX23, LTX25)

# The text encoder each release's model_index.json names (diffusers 0.42.1 LTX2Pipeline.__init__ types it
# ``Gemma3ForConditionalGeneration | Gemma4UnifiedForConditionalGeneration``; LTX-2.5's is the Gemma-4 one)
GEMMA3_ENCODER, GEMMA4_ENCODER = "Gemma3ForConditionalGeneration", "Gemma4UnifiedForConditionalGeneration"
LTX2_PIPELINES = ("LTX2Pipeline", "LTX2ConditionPipeline", "LTX2ImageToVideoPipeline")


def _component_class(index: Mapping[str, Any], name: str) -> str | None:
    entry = index.get(name)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def family_for_index(index: Mapping[str, Any]) -> LTX2Family | None:
    """LTX-2, LTX-2.3 or LTX-2.5 from a ``model_index.json``, or None (another pipeline).

    - LTX-2.5: a Gemma-4 text encoder (``Gemma4UnifiedForConditionalGeneration``) or a
      ``duration_head`` (diffusers 0.42.1 ``pipelines/ltx2/duration_head.py``: "Ships from
      LTX-2.5 checkpoints onward"); it also has LTX-2.3's bandwidth-extending vocoder, which
      therefore does not decide alone;
    - otherwise a Gemma-3 text encoder (or none named): LTX-2.3 with ``LTX2VocoderWithBWE`` (48 kHz),
      LTX-2 with ``LTX2Vocoder`` (24 kHz).

    Raises:
        UnknownGeneratorError: an LTX-2 pipeline of no release listed here (another text encoder,
            or a duration head beside Gemma 3): its settings have no source, and another
            release's would be used in silence.
    """
    if index.get("_class_name") not in LTX2_PIPELINES:
        return None
    from cac_align.gen.family import UnknownGeneratorError, has_component

    encoder = _component_class(index, "text_encoder")
    duration_head = has_component(index, "duration_head")
    if encoder == GEMMA4_ENCODER:
        return LTX25
    if encoder not in (None, GEMMA3_ENCODER) or duration_head:
        found = f"text encoder {encoder}" + (" and a duration_head" if duration_head else "")
        raise UnknownGeneratorError(
            f"an LTX-2 pipeline of no release known here ({found}; LTX-2 and LTX-2.3 have {GEMMA3_ENCODER} and no duration head, "
            f"LTX-2.5 {GEMMA4_ENCODER}): its release settings (steps, guidance, STG block) have no source in cac_align, so it is refused "
            "rather than run with another release's; add its family to cac_align/gen/families/ltx2.py"
        )
    return LTX23 if _component_class(index, "vocoder") == "LTX2VocoderWithBWE" else LTX2
