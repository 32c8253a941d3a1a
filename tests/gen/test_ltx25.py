"""LTX-2.5 behind the generator interface (cac_align.gen.families.ltx2), on tiny-random:ltx2.5: diffusers
0.42.1's own LTX2Pipeline with a Gemma-4 text encoder and a duration head, and its diffusion video
decoder (LTX2VideoDiffusionDecoderModel) that samples. With the SDE noise off our sampler steps as
the pipeline does (video and audio); the decoder's draw is named by the video's seed; Flow-GRPO's
log-probabilities are the transformer's latents' alone; num_frames is always passed (the duration
head is never consulted); a folder saved by diffusers' classes under a name nobody lists is read
from its files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cac_align.gen.family import family_of
from cac_align.gen.generator import GeneratorConfig, build_generator, generate_videos, sample_with_log_probs, video_velocity
from cac_align.gen.families.ltx2 import GUIDANCE_KEYS, LTX25
from cac_align.gen.families.ltx25_decoder import decoder_generator
from cac_align.rl.sde import SDESchedule
from cac_align.loading import WeightsNotFoundError

PROMPTS = ["a red ball on the street", "a dog running"]
SEEDS = (11, 12)


def _config(name: str = "tiny-random:ltx2.5", steps: int = 2, **settings) -> GeneratorConfig:
    return GeneratorConfig(name=name, dtype="float32", vae_dtype="float32", device="cpu", height=64, width=96, num_frames=17,
                           num_inference_steps=steps, max_sequence_length=32, negative_prompt="blurry", **{"stg_blocks": [1], **settings})


@pytest.fixture(scope="module")
def pipe():
    return build_generator(_config())


def _ours(pipe, config, noise_level=0.0):
    family = config.family
    guidance = family.guidance(config)
    cond, negative = family.encode_prompts(pipe, PROMPTS, config.negative_prompt, guidance, config.max_sequence_length)
    sigmas, timesteps = family.schedule(pipe, config)
    trajectory = sample_with_log_probs(pipe, family.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS], config=config,
                                       sigmas=sigmas, timesteps=timesteps, noise_level=noise_level)
    return trajectory, cond, negative, guidance


@pytest.mark.slow  # four pipeline runs of tiny-random:ltx2.5, ~13 s of CPU: `pytest -m slow`
def test_the_ode_sampler_is_the_pipelines_own_and_decodes_as_its_decode_pipeline(pipe):
    from diffusers import LTX2VideoDiffusionDecodePipeline

    config = _config()
    assert config.family is LTX25
    trajectory, *_ = _ours(pipe, config)
    guidance = LTX25.guidance(config)
    theirs = pipe(prompt=PROMPTS, negative_prompt=[config.negative_prompt] * 2, height=64, width=96, num_frames=17, frame_rate=24.0,
                  num_inference_steps=2, max_sequence_length=32, generator=[torch.Generator().manual_seed(s) for s in SEEDS], output_type="latent",
                  spatio_temporal_guidance_blocks=guidance["stg_blocks"], **{k: guidance[k] for k in GUIDANCE_KEYS})
    vae, audio_vae = pipe.vae, pipe.audio_vae
    video = trajectory.latents[:, -1] * vae.latents_std.view(1, -1, 1, 1, 1) / vae.config.scaling_factor + vae.latents_mean.view(1, -1, 1, 1, 1)
    assert video.shape == theirs.frames.shape == (2, 8, 3, 2, 3)
    torch.testing.assert_close(video, theirs.frames.float(), rtol=0, atol=1e-5)
    audio = (trajectory.side[:, -1] * audio_vae.latents_std + audio_vae.latents_mean).unflatten(2, (-1, 4)).transpose(1, 2)
    assert audio.shape == theirs.audio.shape == (2, 2, 18, 4)
    torch.testing.assert_close(audio, theirs.audio.float(), rtol=0, atol=1e-5)
    # decoded as diffusers' own LTX2VideoDiffusionDecodePipeline decodes the pipeline's latents, each video's draw from its seed's generator
    frames = LTX25.decode(pipe, trajectory.latents[:, -1], seeds=list(SEEDS))
    decode = LTX2VideoDiffusionDecodePipeline(diffusion_decoder=pipe.diffusion_decoder, scheduler=pipe.scheduler, vae=pipe.vae)
    expected = decode(theirs.frames, generator=[decoder_generator(s) for s in SEEDS], output_type="np", denormalize=False).frames
    expected = np.round(np.clip(np.asarray(expected), 0, 1) * 255).astype(np.uint8)
    assert frames.shape == (2, 17, 64, 96, 3) and np.abs(frames.astype(int) - expected).max() <= 1
    # ... and the comparison can fail: without spatio-temporal guidance (LTX-2.3's perturbed attention) other latents
    other = _ours(pipe, _config(stg_scale=0.0, audio_stg_scale=0.0))[0]
    assert (other.latents[:, -1] - trajectory.latents[:, -1]).abs().max() > 100 * 1e-5
    assert (other.side[:, -1] - trajectory.side[:, -1]).abs().max() > 100 * 1e-5


@pytest.mark.slow  # ~6 s of CPU, and the module's tiny-random:ltx2.5 built once (~15 s with its imports): `pytest -m slow`
def test_a_seed_names_a_video_through_the_decoder_that_samples(pipe):
    latents = torch.randn(1, 8, 3, 2, 3, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1, -1)
    once, again = LTX25.decode(pipe, latents, seeds=[5, 5, 6]), LTX25.decode(pipe, latents[:1], seeds=[5])
    assert np.array_equal(once[0], once[1])  # the same latents and seed: the same video, in any batch
    assert np.abs(once[0].astype(int) - again[0]).max() <= 1  # batch of 3 or 1: float rounding only
    assert np.abs(once[2].astype(int) - once[0]).mean() > 10  # another seed, another draw of the same latents
    with pytest.raises(ValueError, match="diffusion decoder samples: give decode one seed per video"):
        LTX25.decode(pipe, latents)


@pytest.mark.slow  # two SDE samplings and two decodes, ~8 s of CPU: `pytest -m slow`
def test_flow_grpos_log_probs_are_the_transformers_latents_alone(pipe):
    config = _config(steps=2)
    trajectory, cond, negative, guidance = _ours(pipe, config, noise_level=0.7)
    # every recorded log-prob is recomputed from the recorded latents (and audio input) alone: no decoder in it
    transitions = SDESchedule(trajectory.sigmas, 0.7)
    for j in range(2):
        with torch.no_grad():
            v = video_velocity(LTX25.denoiser(pipe), trajectory.latents[:, j], trajectory.timesteps[j], cond, negative, guidance, torch.float32,
                               trajectory.side[:, j])
        assert torch.equal(transitions.step(j, trajectory.latents[:, j], v, prev_sample=trajectory.latents[:, j + 1]).log_prob, trajectory.log_probs[:, j])
    assert trajectory.latents.shape == (2, 3, 8, 3, 2, 3)  # the transformer's latents: no pixel-space draw recorded
    # the decoder runs after the last step: its draw changes the video, never a recorded latent or log-prob
    seen = []
    hook = pipe.diffusion_decoder.register_forward_pre_hook(lambda m, a: seen.append(1))
    try:
        before = _ours(pipe, config, noise_level=0.7)[0]
    finally:
        hook.remove()
    assert not seen and torch.equal(before.log_probs, trajectory.log_probs)
    videos = [LTX25.decode(pipe, trajectory.latents[:, -1], seeds=s) for s in ([1, 2], [3, 4])]
    assert not np.array_equal(videos[0], videos[1])


@pytest.mark.slow  # two pipeline runs, ~5 s of CPU: `pytest -m slow`
def test_num_frames_is_always_passed_and_the_duration_head_never_consulted(pipe):
    assert GeneratorConfig(name="tiny-random:ltx2.5").num_frames == 121  # a recipe that omits it: the release's 5 s at 24 fps
    calls = []
    hook = pipe.duration_head.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        config = _config(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0)
        made = generate_videos(pipe, config, PROMPTS[:1], [3])
        assert made.frames.shape == (1, 17, 64, 96, 3) and made.sample_rate == 48000 and not calls
        # the control: the pipeline left to choose (num_frames None) does consult it, and picks a length of its own
        predicted = pipe(prompt=PROMPTS[0], height=64, width=64, num_frames=None, min_seconds=0.3, max_seconds=0.4, num_inference_steps=2,
                         guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, audio_guidance_scale=1.0, max_sequence_length=32, output_type="latent")
    finally:
        hook.remove()
    assert calls == [1] and predicted.frames.shape[2] == 2  # 9 frames (0.375 s at 24 fps): 2 latent frames


@pytest.mark.slow  # a save, a load and two generations, ~13 s of CPU: `pytest -m slow`
def test_an_ltx25_saved_by_diffusers_classes_under_an_unlisted_hub_id_is_read_and_samples_as_built(pipe, tmp_path, hub_cache):
    folder = tmp_path / "saved"
    pipe.save_pretrained(str(folder))  # LTX2Pipeline's own save: every component but the decoder, which it does not hold
    pipe.diffusion_decoder.save_pretrained(str(folder / "diffusion_decoder"))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "LTX2Pipeline" and index["text_encoder"][1] == "Gemma4UnifiedForConditionalGeneration"
    assert index["duration_head"][1] == "LTX2DurationHead" and index["prompt_enhancer"] == [None, None]
    # as the hub cache holds a downloaded repo (tests/gen/test_family.py's cache_repo): a fine-tune nobody lists
    repo = hub_cache / "models--someone--ltx25-finetune"
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    config = _config("someone/ltx25-finetune")
    assert family_of("someone/ltx25-finetune") is LTX25 and config.family is LTX25
    loaded = build_generator(config)
    assert type(loaded.diffusion_decoder).__name__ == "LTX2VideoDiffusionDecoderModel"
    made, built = generate_videos(loaded, config, PROMPTS[:1], [7]), generate_videos(pipe, _config(), PROMPTS[:1], [7])
    assert np.abs(made.frames.astype(int) - built.frames).max() <= 1  # the same video (float rounding of a reloaded model)
    np.testing.assert_allclose(made.audio, built.audio, rtol=0, atol=1e-5)
    # the memory plan counts the diffusion decoder from its config on the meta device, beside the VAEs
    from cac_align.gen.lora import LoraSettings
    from cac_align.plan.counts import counted_generator

    decoder_parameters = sum(p.numel() for p in pipe.diffusion_decoder.parameters())
    for name in ("tiny-random:ltx2.5", str(folder)):  # built as it is, and from the saved folder's configs
        counts = counted_generator(_config(name), LoraSettings())
        others = {c.name: c.parameters for c in counts.others}
        assert others["diffusion_decoder"] == decoder_parameters and {"vae", "audio_vae", "vocoder"} <= set(others)
        assert "duration_head" in others  # loaded with the checkpoint, never run: resident all the same
    # a checkpoint without its decoder folder is refused in one line, not decoded otherwise
    (folder / "diffusion_decoder" / "config.json").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"LTX-2.5 decodes with its diffusion decoder") as refused:
        build_generator(_config(str(folder)))
    assert "\n" not in str(refused.value)
