"""LTX-2 animating an image (cac_align.gen.families.ltx2, "Image-to-video"), on the tiny pipelines of its two
layouts against diffusers' own ``LTX2ImageToVideoPipeline`` (0.42.1) on the same modules: the first
frame's latents are the pipeline's (its CRF re-compression, its bilinear resize); with the SDE noise
off our sampler gives the pipeline's final video and audio latents; the image's frame carries no
log-probability and a policy-gradient loss sends no gradient to the transformer's output on its
tokens; ``generate`` with an image is the pipeline's own video and soundtrack, and leaves a bfloat16
transformer beside a float32 VAE as they were."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from cac_align.config import RecipeError
from cac_align.gen.family import Conditioning, check_prompt_images, fixed_frames, whole_latents
from cac_align.gen.generator import GeneratorConfig, build_generator, encode_conditioning, sample_with_log_probs, video_velocity
from cac_align.gen.family import image_runs
from cac_align.gen.families.ltx2 import GUIDANCE_KEYS, LTX2, LTX23, LTX2Denoiser, conditioning_image, first_frame_latents
from cac_align.rl.sde import SDESchedule, flow_grpo_loss
from cac_align.run.input_files import PromptImage

PROMPTS = ["a red ball on the street", "a dog running"]
SEEDS = (11, 12)
LAYOUTS = {"ltx2": "tiny-random:ltx2", "ltx2.3": "tiny-random:ltx2.3"}
# the guidance settings that switch each term off (one conditional forward a step)
NONE = dict(guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=1.0, audio_stg_scale=0.0,
            audio_modality_scale=1.0, audio_guidance_rescale=0.0, stg_blocks=None)
TOL = 1e-5  # test_ltx2.py's: float rounding of a batch of 2 against the pipeline's rows of 1


def _config(name: str, steps: int = 3, **settings) -> GeneratorConfig:
    # the release's guidance (CFG, STG on block 1 of the tiny model's 2, modality, rescale), as test_ltx2.py
    return GeneratorConfig(name=name, dtype="float32", vae_dtype="float32", device="cpu", height=64, width=96, num_frames=17,
                           num_inference_steps=steps, max_sequence_length=32, negative_prompt="blurry", **{"stg_blocks": [1], **settings})


@pytest.fixture(scope="module")
def pipes():
    return {layout: build_generator(_config(name)) for layout, name in LAYOUTS.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two first frames of coloured 8 x 8 blocks, 80 x 120 (resized to 64 x 96): sharp edges, which
    H.264 at CRF 33 visibly changes."""
    folder = tmp_path_factory.mktemp("frames")
    found = []
    for seed in (0, 1):
        blocks = np.random.default_rng(seed).integers(0, 256, size=(10, 15, 3))
        path = folder / f"first-{seed}.png"
        PIL.Image.fromarray(np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)).save(path)
        found.append(PromptImage(image=str(path)))
    return found


def _i2v(pipe):
    from diffusers import LTX2ImageToVideoPipeline

    animate = LTX2ImageToVideoPipeline.from_pipe(pipe)
    animate.set_progress_bar_config(disable=True)
    return animate


def _theirs(pipe, config, image, row, output_type="latent"):
    """The image-to-video pipeline on row ``row`` alone, given the PIL image (its own CRF path): diffusers
    0.42.1 fails on one image with a generator per row for two rows or more (prepare_latents' image[i])."""
    from diffusers.utils import load_image

    guidance = config.family.guidance(config)
    return _i2v(pipe)(image=load_image(image.image), prompt=[PROMPTS[row]], negative_prompt=[config.negative_prompt], height=config.height,
                      width=config.width, num_frames=config.num_frames, frame_rate=config.fps, num_inference_steps=config.num_inference_steps,
                      max_sequence_length=config.max_sequence_length, generator=[torch.Generator().manual_seed(SEEDS[row])], output_type=output_type,
                      spatio_temporal_guidance_blocks=guidance["stg_blocks"], **{k: guidance[k] for k in GUIDANCE_KEYS})


def _ours(pipe, config, cond, negative, denoiser=None, noise_level=0.0, positions=False):
    family = config.family
    sigmas, timesteps = family.schedule(pipe, config)
    return sample_with_log_probs(pipe, denoiser or family.denoiser(pipe), cond, negative, [torch.Generator().manual_seed(s) for s in SEEDS],
                                 config=config, sigmas=sigmas, timesteps=timesteps, noise_level=noise_level, positions=positions)


def _raw(pipe, trajectory, cond):
    """The final whole video (the image's frame put back) and audio latents, denormalized as the
    pipeline returns them with ``output_type="latent"``: unpacked, ``(B, C, F', H', W')`` and ``(B, C_a, L, M')``."""
    vae, audio_vae = pipe.vae, pipe.audio_vae
    video = whole_latents(cond, trajectory.latents[:, -1])
    video = video * vae.latents_std.view(1, -1, 1, 1, 1) / vae.config.scaling_factor + vae.latents_mean.view(1, -1, 1, 1, 1)
    audio = (trajectory.side[:, -1] * audio_vae.latents_std + audio_vae.latents_mean).unflatten(2, (-1, 4)).transpose(1, 2)
    return video, audio


class _FirstFrameNotHeld(LTX2Denoiser):
    """A control: the image's tokens get the step's timestep, as the generated ones (not 0)."""

    def _call(self, video, audio, context, t, grid, fps, video_t=None, **perturb):
        return super()._call(video, audio, context, t, grid, fps, None if video_t is None else t.unsqueeze(-1).expand_as(video_t), **perturb)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_ode_sampler_is_the_image_to_video_pipelines_own_video_and_audio(layout, pipes, images):
    pipe, config = pipes[layout], _config(LAYOUTS[layout])
    family = config.family
    cond, negative = encode_conditioning(pipe, family, PROMPTS, [images[0]] * 2, config, family.guidance(config))
    assert fixed_frames(cond) == 1 and fixed_frames(negative) == 0
    trajectory = _ours(pipe, config, cond, negative)
    # the generated frames only: 17 frames -> 3 latent frames, of which the image's is not sampled
    assert trajectory.latents.shape == (2, 4, 8, 2, 2, 3) and trajectory.side.shape == (2, 4, 18, 8)
    video, audio = _raw(pipe, trajectory, cond)
    for row in range(2):
        theirs = _theirs(pipe, config, images[0], row)
        assert theirs.frames.shape == (1, 8, 3, 2, 3) and theirs.audio.shape == (1, 2, 18, 4)  # unpacked, denormalized
        torch.testing.assert_close(video[row : row + 1], theirs.frames.float(), rtol=0, atol=TOL)
        torch.testing.assert_close(audio[row : row + 1], theirs.audio.float(), rtol=0, atol=TOL)
    assert (video[:, :, 1:] - video[:, :, :1]).abs().max() > 0.1  # the image's frame is not what was generated after it

    # ... and the comparison can fail: the image's tokens at the step's timestep instead of 0
    other = _raw(pipe, _ours(pipe, config, cond, negative, denoiser=_FirstFrameNotHeld(pipe.transformer, family)), cond)
    assert (other[0][:, :, 1:] - video[:, :, 1:]).abs().max() > 100 * TOL and (other[1] - audio).abs().max() > 100 * TOL
    # ... the image not re-compressed (CRF 0)
    plain = first_frame_latents(pipe, conditioning_image(pipe, PIL.Image.open(images[0].image), crf=0), config.height, config.width)
    unpressed = Conditioning(**{**cond.tensors, "fixed": plain.expand(2, -1, -1, -1, -1)})
    other = _raw(pipe, _ours(pipe, config, unpressed, negative), unpressed)
    assert (other[0] - video).abs().max() > 100 * TOL


def test_the_first_frame_is_the_pipelines_own_latents_compressed_and_resized_as_it_does(pipes, images):
    from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf, resolve_default_image_crf

    pipe, config = pipes["ltx2"], _config(LAYOUTS["ltx2"])
    fixed = LTX2.encode_images(pipe, config, [images[0], images[0], images[1]]).fixed
    assert fixed.shape == (3, 8, 1, 2, 3) and fixed.dtype == torch.float32
    assert torch.equal(fixed[0], fixed[1]) and (fixed[2] - fixed[0]).abs().max() > 0.1  # each row its image
    # the image-to-video pipeline's own: __call__'s re-compression at the Gemma-3 releases' CRF (33), its
    # processor's resize, then prepare_latents (normalized; packed tokens, frame 0 the image's)
    animate = _i2v(pipe)
    assert resolve_default_image_crf(pipe.text_encoder) == 33
    image = PIL.Image.open(images[0].image)
    compressed = PIL.Image.fromarray(apply_image_conditioning_crf(np.array(image.convert("RGB")), 33))
    assert np.abs(np.asarray(compressed, dtype=int) - np.asarray(image.convert("RGB"), dtype=int)).mean() > 1  # H.264 changed it
    pixels = animate.video_processor.preprocess(compressed, height=config.height, width=config.width)
    packed, mask = animate.prepare_latents(pixels, 1, 8, config.height, config.width, config.num_frames, 0.0, torch.float32, torch.device("cpu"),
                                           [torch.Generator().manual_seed(0)], None)
    theirs = animate._unpack_latents(packed, 3, 2, 3)[:, :, :1]
    assert torch.equal(mask[0], torch.tensor([1.0] * 6 + [0.0] * 12))  # the first latent frame's 2 x 3 tokens are held
    assert torch.equal(fixed[:1], theirs)
    # ... and each step matters: without the CRF, or resized as the text-to-video pipeline's processor resizes (Lanczos)
    plain = first_frame_latents(pipe, conditioning_image(pipe, image, crf=0), config.height, config.width)
    assert (plain - theirs).abs().max() > 1e-2
    lanczos = pipe.video_processor.preprocess(compressed, height=config.height, width=config.width)
    with torch.no_grad():
        z = pipe.vae.encode(lanczos.unsqueeze(2)).latent_dist.mode()
    assert (animate._normalize_latents(z, pipe.vae.latents_mean, pipe.vae.latents_std) - theirs).abs().max() > 1e-2

    # every release takes a first frame and no last one
    assert all(family.image_input == "optional" and not family.last_image for family in (LTX2, LTX23))
    check_prompt_images(LTX2, images, "prompts.jsonl")
    with pytest.raises(RecipeError, match="takes a first frame only"):
        check_prompt_images(LTX2, [PromptImage(images[0].image, last_image=images[1].image)], "prompts.jsonl")


def test_the_images_frame_carries_no_log_prob_and_no_gradient(pipes, images):
    pipe = pipes["ltx2"]
    config = _config(LAYOUTS["ltx2"], steps=2, **NONE)
    family = config.family
    guidance = family.guidance(config)
    cfg = dict(guidance, guidance_scale=3.0, audio_guidance_scale=3.0)
    cond, negative = encode_conditioning(pipe, family, PROMPTS, images, config, cfg)  # the negative prompt's too, for the CFG case
    denoiser = family.denoiser(pipe)
    trajectory = _ours(pipe, config, cond, negative, denoiser, noise_level=0.7, positions=True)
    # the recorded latents and per-position log-densities hold the 2 generated latent frames, not the image's
    assert trajectory.latents.shape == (2, 3, 8, 2, 2, 3) and trajectory.log_prob_maps.shape == (2, 2, 2, 2, 3)
    transitions = SDESchedule(trajectory.sigmas, 0.7)
    j = 1
    x, side, x_next = trajectory.latents[:, j], trajectory.side[:, j], trajectory.latents[:, j + 1]

    def gradient_at_the_transformers_output(settings):
        """d(Flow-GRPO loss) / d(the transformer's video output), each forward's ``(rows, tokens, C)``."""
        outputs = []

        def keep(module, args, out):
            out[0].retain_grad()
            outputs.append(out[0])

        hook = pipe.transformer.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                latents = x.clone().requires_grad_(True)  # so the transformer's output carries a graph
                velocity = video_velocity(denoiser, latents, trajectory.timesteps[j], cond, negative, settings, torch.float32, side)
                step = transitions.step(j, latents, velocity, prev_sample=x_next)
                # cac_align.jobs.flow_grpo._update's loss on one step; the first policy step: the recorded log-prob
                loss, _ = flow_grpo_loss(step.log_prob, trajectory.log_probs[:, j], torch.tensor([1.0, -0.5]), clip_range=0.2)
                loss.backward()
        finally:
            hook.remove()
        return [out.grad for out in outputs]

    # the recorded log-prob is recomputed exactly: the image's frame is put in front again, as when sampling
    with torch.no_grad():
        velocity = video_velocity(denoiser, x, trajectory.timesteps[j], cond, negative, guidance, torch.float32, side)
    recomputed = transitions.step(j, x, velocity, prev_sample=x_next, positions=True)
    assert torch.equal(recomputed.log_prob, trajectory.log_probs[:, j]) and torch.equal(recomputed.log_prob_map, trajectory.log_prob_maps[:, j])

    # one conditional forward; then CFG (the negative prompt's rows batched in front): the first latent frame's
    # 2 x 3 = 6 tokens get exactly no gradient, every generated token some
    for settings, rows in ((guidance, 2), (cfg, 4)):
        (grad,) = gradient_at_the_transformers_output(settings)
        assert grad.shape == (rows, 18, 8)
        assert torch.count_nonzero(grad[:, :6]) == 0
        assert (grad[:, 6:].abs().sum(-1) > 0).all()
    # with guidance_rescale the pipeline's rescale takes one standard deviation over the whole video's tokens, the
    # image's with them (rescale_noise_cfg): their outputs then reach the generated frames' velocity, as in the pipeline
    (grad,) = gradient_at_the_transformers_output(dict(cfg, guidance_rescale=0.7))
    assert grad[:, :6].abs().max() > 0


def test_generate_with_an_image_is_the_pipelines_own_video_and_soundtrack(pipes, images):
    pipe, config = pipes["ltx2.3"], _config(LAYOUTS["ltx2.3"], steps=2)
    # both rows share the image: one call of two rows (the image given per row, re-compressed once)
    made = LTX2.generate(pipe, config, PROMPTS, SEEDS, images=[images[0]] * 2)
    assert made.frames.shape == (2, 17, 64, 96, 3) and made.frames.dtype == np.uint8 and made.sample_rate == 48000
    for row in range(2):
        theirs = _theirs(pipe, config, images[0], row, output_type="np")
        expected = np.round(np.clip(np.asarray(theirs.frames[0]), 0, 1) * 255).astype(np.uint8)
        assert np.abs(made.frames[row].astype(int) - expected.astype(int)).max() <= 1
        # the tiny vocoder carries its latents into the waveform (gen/families/ltx2_tiny.py), so the two paths' float
        # rounding in the latents (~1e-6; the frames agree to 1 level of 255) reaches it too: within 1e-3 of [-1, 1]
        np.testing.assert_allclose(made.audio[row], theirs.audio[0].float().clamp(-1, 1).numpy(), rtol=0, atol=1e-3)
    # a bfloat16 transformer and text encoder beside a float32 VAE (the jobs' default vae_dtype): the image is
    # encoded in the VAE's dtype, and nothing is cast in place (diffusers' from_pipe would make all of it float32)
    from cac_align.gen.families.ltx2_tiny import build_tiny_ltx2_pipeline

    mixed = build_tiny_ltx2_pipeline(0, "2.3")
    for name in ("transformer", "text_encoder", "connectors"):
        getattr(mixed, name).to(torch.bfloat16)
    dtypes = {name: module.dtype for name, module in mixed.components.items() if isinstance(module, torch.nn.Module)}
    made = LTX2.generate(mixed, config, PROMPTS[:1], SEEDS[:1], images=[images[1]])
    assert made.frames.shape == (1, 17, 64, 96, 3)
    assert {name: module.dtype for name, module in mixed.components.items() if isinstance(module, torch.nn.Module)} == dtypes
    assert dtypes["transformer"] == torch.bfloat16 and dtypes["vae"] == torch.float32
    # the rows' images: one pipeline call per run of consecutive rows sharing one
    a, b = images
    assert image_runs([a, a, b, a]) == [(0, 2), (2, 3), (3, 4)] and image_runs([a]) == [(0, 1)]
